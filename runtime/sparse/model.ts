/**
 * CPU sparse decode (DejaVu): one token at a time, the same math as runtime/cpu/model.ts, but each layer computes only
 * the selected attention heads (their Q rows, their attention, their out_proj columns) and the selected MLP neurons
 * (their fc1 rows and fc2 columns, the latter stored transposed as contiguous rows). Skipped work is never done, not
 * masked.
 *
 * Selection per layer and step, in priority order:
 *   1. explicit index lists passed to decodeStep (the CUDA runtime is compared with this on identical selections);
 *   2. mode 'predicted': top-k of the bundle's low-rank predictor scores (k from the manifest or an override);
 *   3. mode 'oracle': the true top-k at the same k: heads by the L2 norm of their attention output, neurons by their
 *      fc1 activation (this computes the dense quantities first: it measures selection quality, not speed);
 *   4. otherwise (mode 'dense', or a layer the bundle marks dense): all heads / neurons through dense GEMVs.
 *
 * KV-cache policy (docs/sparse-runtime.md), SparseOptions.kvPolicy, the CUDA engine's two policies:
 *  - 'all' (default): K and V are projected and written for ALL heads at every step, even for heads whose attention
 *    is skipped. A head picked later attends over a complete history, so results never depend on which heads earlier
 *    steps picked. The price is the K/V projection rows of skipped heads; bench measures it.
 *  - 'selected': a head skipped at step t computes no K/V at t; its slot is marked invalid (cache.valid, [H][maxLen]
 *    per layer) and masked out whenever that head is picked later; a kept head attends over only the positions where
 *    it was kept, its own included. The oracle computes every head's K/V anyway (it ranks heads by their output over
 *    the full history) and marks only the kept heads valid, so its kept heads see exactly what 'selected' leaves.
 * Either way the cache is the dense runtime's KVCache (a dense prefill can hand over to a sparse decode: positions
 * cached before the first 'selected' step count as valid for every head).
 */
import type { OptCheckpoint, OptConfig, OptWeights } from '../../checkpoints/types.js';
import type { PredictorInput } from '../../common/contracts.js';
import { DejavuError } from '../../common/errors.js';
import type { Bundle, LoadedPredictor } from '../../export/bundle.js';
import { newKVCache, type KVCache } from '../cpu/kv-cache.js';
import { gemm, layerNorm } from '../cpu/ops.js';
import {
  allIndices,
  attendHeads,
  axpyRows,
  gatherAxpyRows,
  gatherGemvRelu,
  gemv,
  gemvRelu,
  headNorms,
  headRowsGemv,
  outProjHeads,
  groupedTopK,
  topK,
  transpose,
  attendHeadsMasked,
} from './kernels.js';
import { predictorScores } from './predictor.js';

export type SparseMode = 'dense' | 'predicted' | 'oracle';

/** KV-cache policies (header comment; runtime/cuda DjOptions::kv_policy). */
export const KV_POLICIES = ['all', 'selected'] as const;
export type KvPolicy = (typeof KV_POLICIES)[number];

/** MLP selections of the predicted mode: one top-k over all neurons, or the grouped top-k (SparseOptions.mlpGroups). */
export const MLP_SELECTIONS = ['exact', 'grouped'] as const;
export type MlpSelection = (typeof MLP_SELECTIONS)[number];

/** A KV cache with, under KV policy 'selected', per layer the [H][maxLen] flags of the positions each head computed. */
export interface SparseKVCache extends KVCache {
  valid?: Uint8Array[];
}

export interface SparseOptions {
  mode: SparseMode;
  /** Overrides the bundle's head k in every layer that has an attention predictor: round(frac * n_heads), >= 1. */
  headsFrac?: number;
  /** Overrides the bundle's neuron k in every layer that has an MLP predictor. */
  mlpK?: number;
  /** Overrides the bundle's head k in every layer that has an attention predictor. */
  headsK?: number;
  /** Predicted mode: each layer's MLP top-k split over this many equal neuron groups (groupedTopK; the CUDA fused
   *  predictors' selection), one number for every layer or one per layer (the CUDA engine's groups differ by layer:
   *  CudaEngine.mlpGroups). Undefined or 1: one top-k over all neurons. */
  mlpGroups?: number | readonly number[];
  /** KV-cache policy (header comment). Default 'all'. */
  kvPolicy?: KvPolicy;
}

/** Explicit per-layer selections for one step (null/undefined entry = use the mode's rule for that layer). */
export interface Selection {
  heads?: (Int32Array | null | undefined)[];
  neurons?: (Int32Array | null | undefined)[];
}

/** Per-block wall time of decode steps, accumulated when `timing` is on (ms). */
export interface BlockTimes {
  embed: number;
  predictors: number;
  attn_ln: number;
  kv: number;
  attention: number;
  mlp: number;
  lm_head: number;
  steps: number;
}

export function zeroTimes(): BlockTimes {
  return { embed: 0, predictors: 0, attn_ln: 0, kv: 0, attention: 0, mlp: 0, lm_head: 0, steps: 0 };
}

interface LayerPrepared {
  /** out_proj^T [d_in][d_out]: a head's input columns as contiguous rows. */
  oT: Float32Array;
  /** fc2^T [ffn][d]: a neuron's output weights as one contiguous row. */
  fc2T: Float32Array;
}

const LN_EPS = 1e-5;

export class SparseOptModel {
  readonly config: OptConfig;
  readonly weights: OptWeights;
  /** k per layer for heads / neurons; null = dense in predicted and oracle modes. */
  readonly headK: (number | null)[];
  readonly mlpK: (number | null)[];
  /** Neuron groups of the predicted MLP top-k, per layer (1: global). */
  readonly mlpGroups: readonly number[];
  /** Selections actually used by the last step (per layer; null = dense). */
  readonly lastHeads: (Int32Array | null)[];
  readonly lastNeurons: (Int32Array | null)[];
  /** Sum over steps of k/n per layer (densities), for eval's average per-layer densities. */
  readonly headDensitySum: Float64Array;
  readonly mlpDensitySum: Float64Array;
  densitySteps = 0;
  timing = false;
  times: BlockTimes = zeroTimes();

  private readonly prep: LayerPrepared[];
  private readonly predictorsBySource: Record<PredictorInput, LoadedPredictor[][]>;
  private readonly scores: { attn: Float32Array[]; mlp: Float32Array[] };
  // scratch
  private readonly x: Float32Array;
  private readonly h: Float32Array;
  private readonly q: Float32Array;
  private readonly headOut: Float32Array;
  private readonly tmp: Float32Array;
  private readonly act: Float32Array;
  private readonly normsBuf: Float32Array;
  private readonly topScratch: Float32Array;
  private readonly predHidden: Float32Array;
  private readonly predIn: Float32Array;
  private readonly allHeads: Int32Array;
  private readonly allNeurons: Int32Array;
  private readonly headIdx: Int32Array[];
  private readonly neuronIdx: Int32Array[];
  private attnScores = new Float32Array(0);
  private attnPos = new Int32Array(0);
  /** KV policy 'selected' (header comment). */
  readonly kvSelected: boolean;
  private readonly final: Float32Array;

  constructor(
    ckpt: Pick<OptCheckpoint, 'config' | 'weights'>,
    readonly bundle: Bundle | undefined,
    readonly opts: SparseOptions = { mode: bundle ? 'predicted' : 'dense' },
  ) {
    const c = (this.config = ckpt.config);
    const w = (this.weights = ckpt.weights);
    const d = c.hiddenSize;
    const H = c.numHeads;
    const ffn = c.ffnDim;
    const n = c.numLayers;
    if (opts.mode !== 'dense' && !bundle) throw new DejavuError(`sparse mode '${opts.mode}' needs a bundle`, '--bundle');
    if (bundle) {
      const m = bundle.manifest.model;
      if (m.n_layers !== n || m.d_model !== d || m.n_heads !== H || m.ffn_dim !== ffn) {
        throw new DejavuError('bundle dims do not match the model', bundle.dir);
      }
    }
    this.prep = w.layers.map((L) => ({ oT: transpose(L.oW, d, d), fc2T: transpose(L.fc2W, d, ffn) }));

    const headsOverride =
      opts.headsK ?? (opts.headsFrac !== undefined ? Math.max(1, Math.min(H, Math.round(opts.headsFrac * H))) : undefined);
    if (opts.headsFrac !== undefined && !(opts.headsFrac > 0 && opts.headsFrac <= 1)) {
      throw new DejavuError(`heads fraction ${opts.headsFrac} must be in (0, 1]`, '--heads-frac');
    }
    for (const [name, v, max] of [
      ['--heads-k', opts.headsK, H],
      ['--mlp-k', opts.mlpK, ffn],
    ] as const) {
      if (v !== undefined && !(Number.isInteger(v) && v >= 1 && v <= max)) {
        throw new DejavuError(`${v} must be an integer in 1..${max}`, name);
      }
    }
    const policy = opts.kvPolicy ?? 'all';
    if (!KV_POLICIES.includes(policy)) throw new DejavuError(`'${policy}' is not a KV policy (${KV_POLICIES.join(', ')})`, '--kv-policy');
    this.kvSelected = policy === 'selected';
    const groups = opts.mlpGroups ?? 1;
    if (typeof groups !== 'number' && groups.length !== n) {
      throw new DejavuError(`${groups.length} values for ${n} layers`, '--mlp-groups');
    }
    for (const g of typeof groups === 'number' ? [groups] : groups) {
      if (!(Number.isInteger(g) && g >= 1 && g <= ffn)) {
        throw new DejavuError(`${g} must be an integer in 1..${ffn} (the MLP width)`, '--mlp-groups');
      }
    }
    this.mlpGroups = typeof groups === 'number' ? new Array<number>(n).fill(groups) : [...groups];
    // k = everything is dense: the dense GEMV path, and the predictor is not run at all.
    this.headK = Array.from({ length: n }, (_, l) => {
      const p = bundle?.attn[l];
      const k = p ? (headsOverride ?? p.k) : null;
      return k === H ? null : k;
    });
    this.mlpK = Array.from({ length: n }, (_, l) => {
      const p = bundle?.mlp[l];
      const k = p ? (opts.mlpK ?? p.k) : null;
      return k === ffn ? null : k;
    });

    // Predictors grouped by the hidden state they read, so each runs as soon as its input exists.
    this.predictorsBySource = { att_in: [], mlp_in: [] };
    for (let l = 0; l < n; l++) {
      this.predictorsBySource.att_in.push([]);
      this.predictorsBySource.mlp_in.push([]);
    }
    let maxRank = 1;
    for (const p of [...(bundle?.attn ?? []), ...(bundle?.mlp ?? [])]) {
      if (!p || (p.target === 'mlp' ? this.mlpK : this.headK)[p.layer] === null) continue;
      this.predictorsBySource[p.input][p.sourceLayer].push(p);
      maxRank = Math.max(maxRank, p.rank);
    }
    this.scores = {
      attn: Array.from({ length: n }, () => new Float32Array(H)),
      mlp: Array.from({ length: n }, () => new Float32Array(ffn)),
    };

    this.x = new Float32Array(d);
    this.h = new Float32Array(d);
    this.q = new Float32Array(d);
    this.headOut = new Float32Array(d);
    this.tmp = new Float32Array(d);
    this.act = new Float32Array(ffn);
    this.normsBuf = new Float32Array(H);
    this.topScratch = new Float32Array(Math.max(ffn, H));
    this.predHidden = new Float32Array(maxRank);
    this.predIn = new Float32Array(d);
    this.allHeads = allIndices(H);
    this.allNeurons = allIndices(ffn);
    this.headIdx = Array.from({ length: n }, () => new Int32Array(H));
    this.neuronIdx = Array.from({ length: n }, () => new Int32Array(ffn));
    this.lastHeads = new Array(n).fill(null);
    this.lastNeurons = new Array(n).fill(null);
    this.headDensitySum = new Float64Array(n);
    this.mlpDensitySum = new Float64Array(n);
    this.final = new Float32Array(c.wordEmbedProjDim);
  }

  newCache(maxLen = this.config.maxPositionEmbeddings): SparseKVCache {
    const cache: SparseKVCache = newKVCache(this.config.numLayers, this.config.hiddenSize, maxLen);
    if (this.kvSelected) ensureValidity(cache, this.config.numHeads);
    return cache;
  }

  /** One decode step: logits [V] of token `id` at position cache.length; appends its K/V (all heads) to the cache. */
  decodeStep(id: number, cache: KVCache, sel?: Selection): Float32Array {
    const hidden = this.decodeHidden(id, cache, sel);
    const t0 = this.timing ? performance.now() : 0;
    const c = this.config;
    const logits = new Float32Array(c.vocabSize);
    gemv(this.weights.lmHead, c.vocabSize, c.wordEmbedProjDim, hidden, logits);
    if (this.timing) this.times.lm_head += performance.now() - t0;
    return logits;
  }

  /** Logits [T][V] for T final hidden states [T][wordEmbedProjDim] (the LM head, blocked over tokens). */
  logitsFor(hidden: Float32Array, T: number): Float32Array {
    const c = this.config;
    const out = new Float32Array(T * c.vocabSize);
    gemm(hidden, this.weights.lmHead, undefined, T, c.wordEmbedProjDim, c.vocabSize, out);
    return out;
  }

  /**
   * One decode step up to the LM head: returns the final hidden state [wordEmbedProjDim] (after the final LayerNorm
   * and project_out), in a buffer reused by the next call.
   */
  decodeHidden(id: number, cache: KVCache, sel?: Selection): Float32Array {
    const c = this.config;
    const w = this.weights;
    const d = c.hiddenSize;
    const H = c.numHeads;
    const hd = c.headDim;
    const ffn = c.ffnDim;
    const pos = cache.length;
    if (pos + 1 > cache.maxLen) throw new DejavuError(`KV cache holds ${cache.maxLen} positions; ${pos + 1} needed`);
    if (pos + 1 > c.maxPositionEmbeddings) {
      throw new DejavuError(`position ${pos} exceeds max_position_embeddings ${c.maxPositionEmbeddings}`);
    }
    if (!Number.isInteger(id) || id < 0 || id >= c.vocabSize) {
      throw new DejavuError(`token id ${id} outside the vocabulary (0..${c.vocabSize - 1})`);
    }
    const timing = this.timing;
    const T = this.times;
    let t0 = timing ? performance.now() : 0;
    const lap = (key: keyof BlockTimes) => {
      const t = performance.now();
      T[key] += t - t0;
      t0 = t;
    };
    const bias = (b: Float32Array) => (c.enableBias && b.length ? b : undefined);
    const affine = c.layerNormElementwiseAffine;
    const preLN = c.doLayerNormBefore;
    const scale = 1 / Math.sqrt(hd);
    const mode = this.opts.mode;
    const x = this.x;
    const h = this.h;

    // Embedding (+ project_in) + learned position (offset 2).
    const p = c.wordEmbedProjDim;
    if (w.projectIn) {
      gemv(w.projectIn, d, p, w.embedTokens.subarray(id * p, (id + 1) * p), x);
    } else {
      x.set(w.embedTokens.subarray(id * d, (id + 1) * d));
    }
    const po = (pos + 2) * d;
    for (let i = 0; i < d; i++) x[i] += w.embedPositions[po + i];
    if (this.attnScores.length < pos + 1) {
      this.attnScores = new Float32Array(Math.max(2 * (pos + 1), 64));
      this.attnPos = new Int32Array(this.attnScores.length);
    }
    const valid = this.kvSelected ? ensureValidity(cache, H) : undefined;
    if (timing) lap('embed');

    for (let l = 0; l < c.numLayers; l++) {
      const L = w.layers[l];
      const P = this.prep[l];

      // ---- attention block ----
      this.runPredictors('att_in', l, x);
      if (timing) lap('predictors');
      const hin = preLN ? (layerNorm(x, 1, d, affine ? L.attnLnW : undefined, L.attnLnB, h, LN_EPS), h) : x;
      if (timing) lap('attn_ln');
      const kRow = cache.k[l].subarray(pos * d, (pos + 1) * d);
      const vRow = cache.v[l].subarray(pos * d, (pos + 1) * d);
      const validL = valid?.[l];
      const kc = cache.k[l];
      const vc = cache.v[l];

      // Heads chosen before the layer runs (explicit, predicted): under policy 'selected' only they get K/V rows.
      let heads: Int32Array;
      let nh: number;
      const explicitH = sel?.heads?.[l];
      const kH = this.headK[l];
      let chosen: Int32Array | null = null;
      if (explicitH) chosen = checkSel(explicitH, H, `heads for layer ${l}`);
      else if (mode === 'predicted' && kH !== null) chosen = topK(this.scores.attn[l], H, kH, this.headIdx[l], this.topScratch).subarray(0, kH);
      if (chosen) {
        heads = chosen;
        nh = heads.length;
        if (validL) {
          headRowsGemv(L.kW, bias(L.kB), d, hd, hin, heads, nh, kRow);
          headRowsGemv(L.vW, bias(L.vB), d, hd, hin, heads, nh, vRow);
        } else {
          gemv(L.kW, d, d, hin, kRow, bias(L.kB));
          gemv(L.vW, d, d, hin, vRow, bias(L.vB));
        }
        if (timing) lap('kv');
        headRowsGemv(L.qW, bias(L.qB), d, hd, hin, heads, nh, this.q);
        if (validL) {
          markValid(validL, cache.maxLen, pos, H, heads, nh);
          attendHeadsMasked(this.q, kc, vc, pos + 1, d, hd, heads, nh, scale, validL, cache.maxLen, this.attnScores, this.attnPos, this.headOut);
        } else {
          attendHeads(this.q, kc, vc, pos + 1, d, hd, heads, nh, scale, this.attnScores, this.headOut);
        }
      } else {
        // Every head's K/V: policy 'all', a dense layer, or the oracle (it ranks heads over the full history).
        gemv(L.kW, d, d, hin, kRow, bias(L.kB));
        gemv(L.vW, d, d, hin, vRow, bias(L.vB));
        if (timing) lap('kv');
        // Dense attention (also the oracle's first half: every head's output, to rank them by norm).
        gemv(L.qW, d, d, hin, this.q, bias(L.qB));
        attendHeads(this.q, kc, vc, pos + 1, d, hd, this.allHeads, H, scale, this.attnScores, this.headOut);
        if (mode === 'oracle' && kH !== null) {
          headNorms(this.headOut, H, hd, this.normsBuf);
          heads = topK(this.normsBuf, H, kH, this.headIdx[l], this.topScratch).subarray(0, kH);
          nh = kH;
          if (validL) {
            // Policy 'selected': the kept heads' attention again, over only the positions where each was kept.
            markValid(validL, cache.maxLen, pos, H, heads, nh);
            attendHeadsMasked(this.q, kc, vc, pos + 1, d, hd, heads, nh, scale, validL, cache.maxLen, this.attnScores, this.attnPos, this.headOut);
          }
        } else {
          heads = this.allHeads;
          nh = H;
          if (validL) markValid(validL, cache.maxLen, pos, H, heads, nh);
        }
      }
      const attnOut = this.tmp;
      if (nh === H && !explicitH && heads === this.allHeads) {
        gemv(L.oW, d, d, this.headOut, attnOut, bias(L.oB));
      } else {
        const ob = bias(L.oB);
        if (ob) attnOut.set(ob);
        else attnOut.fill(0);
        outProjHeads(P.oT, d, hd, this.headOut, heads, nh, attnOut);
      }
      for (let i = 0; i < d; i++) x[i] += attnOut[i];
      if (!preLN) layerNorm(x, 1, d, affine ? L.attnLnW : undefined, L.attnLnB, x, LN_EPS);
      this.lastHeads[l] = nh === H ? null : heads;
      this.headDensitySum[l] += nh / H;
      if (timing) lap('attention');

      // ---- MLP block ----
      this.runPredictors('mlp_in', l, x);
      if (timing) lap('predictors');
      const min = preLN ? (layerNorm(x, 1, d, affine ? L.mlpLnW : undefined, L.mlpLnB, h, LN_EPS), h) : x;
      const mlpOut = this.tmp;
      const fb = bias(L.fc2B);
      const explicitN = sel?.neurons?.[l];
      const kN = this.mlpK[l];
      let neurons: Int32Array | null = null;
      if (explicitN) {
        neurons = checkSel(explicitN, ffn, `neurons for layer ${l}`);
        gatherGemvRelu(L.fc1W, d, min, neurons, neurons.length, bias(L.fc1B), this.act);
      } else if (mode === 'predicted' && kN !== null) {
        neurons = groupedTopK(this.scores.mlp[l], ffn, kN, this.mlpGroups[l], this.neuronIdx[l], this.topScratch).subarray(0, kN);
        gatherGemvRelu(L.fc1W, d, min, neurons, kN, bias(L.fc1B), this.act);
      } else if (mode === 'oracle' && kN !== null) {
        // True top-k by activation: the dense fc1 first (measurement only), then the selected neurons' values compacted.
        gemvRelu(L.fc1W, ffn, d, min, bias(L.fc1B), this.act);
        neurons = topK(this.act, ffn, kN, this.neuronIdx[l], this.topScratch).subarray(0, kN);
        for (let j = 0; j < kN; j++) this.act[j] = this.act[neurons[j]]; // ascending indices: j <= neurons[j], safe in place
      }
      if (neurons) {
        if (fb) mlpOut.set(fb);
        else mlpOut.fill(0);
        gatherAxpyRows(P.fc2T, d, neurons, neurons.length, this.act, mlpOut);
        this.mlpDensitySum[l] += neurons.length / ffn;
      } else {
        gemvRelu(L.fc1W, ffn, d, min, bias(L.fc1B), this.act);
        gemv(L.fc2W, d, ffn, this.act, mlpOut, fb);
        this.mlpDensitySum[l] += 1;
      }
      for (let i = 0; i < d; i++) x[i] += mlpOut[i];
      if (!preLN) layerNorm(x, 1, d, affine ? L.mlpLnW : undefined, L.mlpLnB, x, LN_EPS);
      this.lastNeurons[l] = neurons;
      if (timing) lap('mlp');
    }
    cache.length = pos + 1;
    this.densitySteps++;

    let y = x;
    if (c.hasFinalLayerNorm) {
      layerNorm(x, 1, d, affine ? w.finalLnW : undefined, w.finalLnB, h, LN_EPS);
      y = h;
    }
    if (w.projectOut) gemv(w.projectOut, p, d, y, this.final);
    else this.final.set(y);
    if (timing) {
      lap('lm_head');
      T.steps++;
    }
    return this.final;
  }

  /** Run every predictor that reads hidden state `input` of layer `layer`, filling the scores of its target layer. */
  private runPredictors(input: PredictorInput, layer: number, x: Float32Array): void {
    if (this.opts.mode !== 'predicted') return;
    for (const pr of this.predictorsBySource[input][layer]) {
      const out = pr.target === 'mlp' ? this.scores.mlp[pr.layer] : this.scores.attn[pr.layer];
      predictorScores(pr, x, this.predIn, this.predHidden, out);
    }
  }

  /** Average per-layer densities since construction (or the last resetDensities). */
  densities(): { mlp: number[]; heads: number[] } {
    const n = Math.max(1, this.densitySteps);
    return {
      mlp: Array.from(this.mlpDensitySum, (s) => s / n),
      heads: Array.from(this.headDensitySum, (s) => s / n),
    };
  }

  resetDensities(): void {
    this.mlpDensitySum.fill(0);
    this.headDensitySum.fill(0);
    this.densitySteps = 0;
  }
}

/**
 * The validity flags of a cache under KV policy 'selected', created on first use: positions already cached (a dense
 * prefill, every head computed) count as valid for every head.
 */
export function ensureValidity(cache: SparseKVCache, H: number): Uint8Array[] {
  const n = cache.maxLen * H;
  if (!cache.valid || cache.valid.length !== cache.k.length || cache.valid.some((v) => v.length !== n)) {
    cache.valid = cache.k.map(() => {
      const v = new Uint8Array(n);
      for (let h = 0; h < H; h++) v.fill(1, h * cache.maxLen, h * cache.maxLen + cache.length);
      return v;
    });
  }
  return cache.valid;
}

/** Position `pos` of one layer's flags: 1 for the heads that computed K/V there, 0 for every other head. */
export function markValid(valid: Uint8Array, maxLen: number, pos: number, H: number, heads: Int32Array, nh: number): void {
  for (let h = 0; h < H; h++) valid[h * maxLen + pos] = 0;
  for (let j = 0; j < nh; j++) valid[heads[j] * maxLen + pos] = 1;
}

/** An explicit selection must be distinct, in-range indices (ascending order is not required). */
function checkSel(idx: Int32Array, n: number, what: string): Int32Array {
  if (idx.length === 0 || idx.length > n) throw new DejavuError(`${what}: ${idx.length} indices, expected 1..${n}`);
  const seen = new Uint8Array(n);
  for (const i of idx) {
    if (!(i >= 0 && i < n)) throw new DejavuError(`${what}: index ${i} outside 0..${n - 1}`);
    if (seen[i]) throw new DejavuError(`${what}: index ${i} repeated`);
    seen[i] = 1;
  }
  return idx;
}
