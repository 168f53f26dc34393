/**
 * CPU decode benchmark, dense vs sparse, batch 1, one thread: per-token latency, the per-block split (attention, MLP,
 * LM head, predictors), tokens/s, the memory-traffic floor, Amdahl's law for sparsifying only the MLP, and the cost
 * of KV policy 'all' (K/V rows written for every head, docs/sparse-runtime.md). The sparse step runs the KV policy
 * and MLP selection asked for (--kv-policy, --mlp-select / --mlp-groups; defaults 'all' and 'exact').
 *
 * Dense and sparse run the same code (runtime/sparse/model.ts; dense = plain GEMVs over the PyTorch layouts), in
 * alternating rounds from the same prefilled prompt, so machine noise hits both alike; the median round is reported.
 * runtime/cpu's own decodeStep is timed too, as a check that the dense baseline is not a straw man.
 *
 * Selections: with a bundle, the predictors pick (their cost is inside the sparse step and reported as `predictors`);
 * with --density only, each step gets a fresh seeded random set of k heads / neurons per layer, generated outside the
 * timed region (kernel cost alone, no predictor); grouped, each of G equal neuron groups gets its share of k at random.
 */
import { loadOptCheckpoint } from '../../checkpoints/opt-checkpoint.js';
import type { OptCheckpoint } from '../../checkpoints/types.js';
import { DejavuError } from '../../common/errors.js';
import { log, progressBar } from '../../common/progress.js';
import { loadBundle, type Bundle } from '../../export/bundle.js';
import { describeRecordedQuality, recordedQualityJson } from '../../export/quality.js';
import { OptModel } from '../cpu/model.js';
import type { KVCache } from '../cpu/kv-cache.js';
import { gemv, headRowsGemv } from './kernels.js';
import { SparseOptModel, zeroTimes, type BlockTimes, type KvPolicy, type Selection } from './model.js';

export interface CpuBenchOptions {
  model: string;
  bundle?: string;
  density?: { mlp: number; heads: number };
  prompt: number;
  gen: number;
  /** Alternating dense/sparse rounds (median reported). */
  rounds?: number;
  /** KV-cache policy of the sparse step (default 'all'). */
  kvPolicy?: KvPolicy;
  /** MLP selection 'grouped' over this many neuron groups (undefined: exact top-k). */
  mlpGroups?: number;
  quiet?: boolean;
  /** A checkpoint already in memory (the demo passes it to skip a reload). */
  ckpt?: OptCheckpoint;
}

const F32 = 4;

export async function runCpuBench(opts: CpuBenchOptions): Promise<Record<string, unknown>> {
  const ckpt = opts.ckpt ?? (await loadOptCheckpoint(opts.model, { quiet: opts.quiet }));
  const c = ckpt.config;
  const { numLayers: nL, numHeads: H, ffnDim: ffn, hiddenSize: d, headDim: hd } = c;
  if (!(opts.prompt >= 1) || !(opts.gen >= 1)) throw new DejavuError('--prompt and --gen must be >= 1');
  if (opts.prompt + opts.gen > c.maxPositionEmbeddings) {
    throw new DejavuError(`--prompt + --gen = ${opts.prompt + opts.gen} exceeds max_position_embeddings ${c.maxPositionEmbeddings}`);
  }
  const bundle: Bundle | undefined = opts.bundle ? loadBundle(opts.bundle, ckpt) : undefined;
  if (!bundle && !opts.density) throw new DejavuError('give --bundle B or --density mlp=F,heads=F', '--density');
  const density = opts.density;
  if (density) {
    for (const [k, v] of Object.entries(density)) {
      if (!(v > 0 && v <= 1)) throw new DejavuError(`${k}=${v} must be in (0, 1]`, '--density');
    }
  }
  const mlpK = density ? Math.max(1, Math.round(density.mlp * ffn)) : undefined;
  const headsK = density ? Math.max(1, Math.round(density.heads * H)) : undefined;

  const kvPolicy = opts.kvPolicy ?? 'all';
  const G = opts.mlpGroups;
  if (G !== undefined && !(Number.isInteger(G) && G >= 1 && G <= ffn)) throw new DejavuError(`${G} must be an integer in 1..${ffn} (the MLP width)`, '--mlp-groups');
  const denseModel = new SparseOptModel(ckpt, undefined, { mode: 'dense' });
  const sparseModel = bundle
    ? new SparseOptModel(ckpt, bundle, { mode: 'predicted', mlpK, headsK, kvPolicy, mlpGroups: G })
    : new SparseOptModel(ckpt, undefined, { mode: 'dense', kvPolicy });
  const ref = await OptModel.load(ckpt, { backend: 'js' });

  // Prompt: BOS + seeded pseudo-random ids; prefilled once by the dense runtime and copied per round (shared KV layout).
  const rng = mulberry32(1234);
  const promptIds = Int32Array.from({ length: opts.prompt }, (_, i) => (i === 0 ? c.bosTokenId : 4 + Math.floor(rng() * (c.vocabSize - 4))));
  const maxLen = opts.prompt + opts.gen;
  const base = ref.newCache(maxLen);
  ref.prefill(promptIds, { cache: base, logits: 'none' });
  const fresh = (): KVCache => ({ ...base, k: base.k.map((a) => a.slice()), v: base.v.map((a) => a.slice()), length: base.length });

  const randomSel = (): Selection | undefined => {
    if (bundle || !density) return undefined;
    return {
      heads: headsK! < H ? Array.from({ length: nL }, () => randomSubset(H, headsK!, rng)) : undefined,
      neurons: mlpK! < ffn ? Array.from({ length: nL }, () => (G ? groupedRandomSubset(ffn, mlpK!, G, rng) : randomSubset(ffn, mlpK!, rng))) : undefined,
    };
  };

  /** Greedy-decode `gen` tokens; returns ms per token (wall of the decode calls only). */
  const decode = (m: SparseOptModel, sparse: boolean): number => {
    const cache = fresh();
    let id = promptIds[promptIds.length - 1];
    let ms = 0;
    for (let g = 0; g < opts.gen; g++) {
      const sel = sparse ? randomSel() : undefined;
      const t0 = performance.now();
      const logits = m.decodeStep(id, cache, sel);
      ms += performance.now() - t0;
      id = argmax(logits);
    }
    return ms / opts.gen;
  };
  const decodeRef = (): number => {
    const cache = fresh();
    let id = promptIds[promptIds.length - 1];
    const t0 = performance.now();
    for (let g = 0; g < opts.gen; g++) id = argmax(ref.decodeStep(id, cache));
    return (performance.now() - t0) / opts.gen;
  };

  // Warm-up (JIT), then alternating timed rounds.
  denseModel.timing = sparseModel.timing = false;
  decode(denseModel, false);
  decode(sparseModel, true);
  const rounds = opts.rounds ?? 5;
  const denseMs: number[] = [];
  const sparseMs: number[] = [];
  const refMs: number[] = [];
  const denseBlocks: BlockTimes[] = [];
  const sparseBlocks: BlockTimes[] = [];
  const bar = progressBar('bench cpu', rounds, 'rounds', opts.quiet);
  for (let r = 0; r < rounds; r++) {
    for (const [m, sparse, out, blocks] of [
      [denseModel, false, denseMs, denseBlocks],
      [sparseModel, true, sparseMs, sparseBlocks],
    ] as const) {
      m.times = zeroTimes();
      m.timing = true;
      out.push(decode(m, sparse));
      m.timing = false;
      blocks.push(m.times);
    }
    refMs.push(decodeRef());
    bar.increment();
  }
  bar.stop();

  const dMs = median(denseMs);
  const sMs = median(sparseMs);
  const dB = perToken(medianBlocks(denseBlocks));
  const sB = perToken(medianBlocks(sparseBlocks));
  const dens = sparseModel.densities();
  const mlpDensity = mean(dens.mlp);
  const headDensity = mean(dens.heads);

  // Memory-traffic floor: bytes that must be read per token (fp32 weights, KV history at the mean context length).
  const ctx = opts.prompt + (opts.gen - 1) / 2;
  const lmBytes = c.vocabSize * c.wordEmbedProjDim * F32;
  const denseBytes = nL * (4 * d * d + 2 * d * ffn + 2 * ctx * d) * F32 + lmBytes;
  let sparseBytes = lmBytes;
  for (let l = 0; l < nL; l++) {
    const hk = dens.heads[l] * H;
    const nk = dens.mlp[l] * ffn;
    // K/V projection rows: every head's under policy 'all', the kept heads' under 'selected'.
    const kvRows = kvPolicy === 'all' ? d : hk * hd;
    sparseBytes += (2 * kvRows * d + 2 * hk * hd * d + 2 * ctx * hk * hd + 2 * nk * d) * F32;
  }
  if (bundle) {
    for (const p of [...bundle.mlp, ...bundle.attn]) if (p) sparseBytes += p.rank * (d + p.out) * F32;
  }
  const bw = measureReadBandwidth();
  const floorMs = (denseBytes / bw) * 1e3;
  const sparseFloorMs = (sparseBytes / bw) * 1e3;

  const mlpSpeedup = dB.mlp / sB.mlp;
  const mlpWithPred = dB.mlp / (sB.mlp + sB.predictors);
  const amdahl = amdahlMlp(dB.mlp / dMs, mlpDensity, mlpSpeedup, mlpWithPred);

  const kv = measureKvPolicy(ckpt, dens.heads, kvPolicy);

  const round3 = (v: number) => Math.round(v * 1000) / 1000;
  const blocks = (b: BlockTimes) => ({
    embed: round3(b.embed),
    attention: round3(b.attn_ln + b.kv + b.attention),
    attention_kv_projection: round3(b.kv),
    mlp: round3(b.mlp),
    predictors: round3(b.predictors),
    lm_head: round3(b.lm_head),
  });
  const result = {
    device: 'cpu',
    threads: 1,
    model: ckpt.dir,
    model_fingerprint: ckpt.fingerprint,
    bundle: bundle?.dir ?? null,
    selection: bundle ? 'predicted (bundle predictors, top-k)' : 'seeded random k per layer per step (no predictor)',
    kv_policy: kvPolicy,
    mlp_selection: G !== undefined ? 'grouped' : 'exact',
    mlp_groups: G ?? 1,
    prompt: opts.prompt,
    gen: opts.gen,
    rounds,
    mlp_density: round3(mlpDensity),
    head_density: round3(headDensity),
    mlp_density_per_layer: dens.mlp.map(round3),
    head_density_per_layer: dens.heads.map(round3),
    dense: { ms_per_token: round3(dMs), tokens_per_s: round3(1000 / dMs), blocks_ms_per_token: blocks(dB), rounds_ms: denseMs.map(round3) },
    sparse: { ms_per_token: round3(sMs), tokens_per_s: round3(1000 / sMs), blocks_ms_per_token: blocks(sB), rounds_ms: sparseMs.map(round3) },
    speedup: round3(dMs / sMs),
    mlp_block_speedup: round3(mlpSpeedup),
    mlp_block_speedup_incl_predictors: round3(mlpWithPred),
    amdahl: Object.fromEntries(Object.entries(amdahl).map(([k, v]) => [k, typeof v === 'number' ? round3(v) : v])),
    floor_ms: round3(floorMs),
    sparse_floor_ms: round3(sparseFloorMs),
    floor: {
      dense_bytes_per_token: Math.round(denseBytes),
      sparse_bytes_per_token: Math.round(sparseBytes),
      read_bandwidth_gb_s: round3(bw / 1e9),
      note: 'bytes that must be read per token (fp32 weights touched + KV history at the mean context) / measured single-thread streaming read bandwidth',
    },
    kv_policy_cost: kv,
    dense_runtime_cpu: { ms_per_token: round3(median(refMs)), note: 'runtime/cpu OptModel.decodeStep, same tokens' },
  };
  if (!opts.quiet) log(`cpu bench: dense ${round3(dMs)} ms/token, sparse ${round3(sMs)} ms/token, speedup ${round3(dMs / sMs)}x`);
  // The quality the bundle recorded at export (export --ppl-budget / --calib-data), beside this speed.
  const recorded = bundle ? recordedQualityJson(bundle.manifest) : undefined;
  if (recorded && bundle) {
    if (!opts.quiet) log(describeRecordedQuality(bundle.manifest) ?? '');
    return { ...result, recorded_quality: recorded };
  }
  return result;
}

/**
 * Amdahl's law for sparsifying only the MLP block (everything else keeps its dense time), whole-token speedup
 * 1 / ((1 - s) + s / m) for a dense MLP share s and an MLP speedup m:
 *  - limit_mlp_free: m -> infinity, 1 / (1 - s): the bound no MLP-only sparsity can pass;
 *  - at_proportional_mlp_speedup: m = 1 / density, the MLP time scaling with the neurons kept. An estimate, not a
 *    bound: a sparse working set that fits in cache can run faster than in proportion, so the measured speedup may
 *    exceed it;
 *  - at_measured_mlp_speedup, ..._incl_predictors: m as measured (the predictors' time added to the sparse MLP's).
 */
export function amdahlMlp(share: number, mlpDensity: number, mlpSpeedup: number, mlpSpeedupInclPredictors: number): Record<string, number | string> {
  const at = (m: number) => 1 / (1 - share + share / m);
  return {
    dense_mlp_share: share,
    limit_mlp_free: 1 / (1 - share),
    proportional_mlp_speedup: 1 / mlpDensity,
    at_proportional_mlp_speedup: at(1 / mlpDensity),
    measured_mlp_speedup: mlpSpeedup,
    at_measured_mlp_speedup: at(mlpSpeedup),
    at_measured_mlp_speedup_incl_predictors: at(mlpSpeedupInclPredictors),
    note: 'whole-token speedup if only the MLP block gets faster by m: 1 / ((1 - share) + share / m); limit_mlp_free is the bound (m -> inf), the proportional figure (m = 1/density) is an estimate the measured m can pass',
  };
}

/**
 * What the eager KV policy adds per token: the K and V rows of the heads a step skips. Every head's rows are the same
 * [hd][d] GEMV, so that is the all-heads K/V time of each layer times the fraction of its heads skipped (0 exactly
 * when no head is skipped). Computed this way rather than as the difference of two separately timed loops, which on a
 * busy machine is noise of the same size as the cost and was clamped to 0.
 */
export function kvPolicyExtraMs(kvAllHeadsMsPerLayer: number[], headsKept: number[], H: number): number {
  return kvAllHeadsMsPerLayer.reduce((a, ms, l) => a + (ms * (H - headsKept[l])) / H, 0);
}

/**
 * The KV policy's price, per token over all layers: the K and V projections for every head (what the runtime does),
 * timed on one hidden state, and the share of it spent on skipped heads (kvPolicyExtraMs). The selected-heads-only
 * loop is timed too, interleaved with the all-heads one, as a cross-check.
 */
function measureKvPolicy(ckpt: OptCheckpoint, headDensity: number[], kvPolicy: KvPolicy): Record<string, unknown> {
  const c = ckpt.config;
  const { hiddenSize: d, headDim: hd, numHeads: H, numLayers: nL } = c;
  const x = Float32Array.from({ length: d }, (_, i) => Math.sin(i));
  const out = new Float32Array(d);
  const kept = Array.from({ length: nL }, (_, l) => Math.max(1, Math.min(H, Math.round(headDensity[l] * H))));
  const heads = kept.map((k) => Int32Array.from({ length: k }, (_, j) => j));
  const all = () => {
    for (const L of ckpt.weights.layers) {
      gemv(L.kW, d, d, x, out, L.kB);
      gemv(L.vW, d, d, x, out, L.vB);
    }
  };
  const sel = () => {
    ckpt.weights.layers.forEach((L, l) => {
      headRowsGemv(L.kW, L.kB, d, hd, x, heads[l], heads[l].length, out);
      headRowsGemv(L.vW, L.vB, d, hd, x, heads[l], heads[l].length, out);
    });
  };
  const reps = 40;
  const time = (f: () => void) => {
    const t0 = performance.now();
    for (let i = 0; i < reps; i++) f();
    return (performance.now() - t0) / reps;
  };
  for (let i = 0; i < 20; i++) {
    all();
    sel();
  }
  // Interleaved rounds, medians: machine noise hits both loops alike.
  const allMs: number[] = [];
  const selMs: number[] = [];
  for (let r = 0; r < 5; r++) {
    allMs.push(time(all));
    selMs.push(time(sel));
  }
  const allMed = median(allMs);
  const extra = kvPolicyExtraMs(new Array<number>(nL).fill(allMed / nL), kept, H);
  const r = (v: number) => Math.round(v * 1e4) / 1e4;
  return {
    policy: "what policy 'all' (K/V projected and cached for all heads every step) costs over 'selected' (K/V of the kept heads only)",
    paid_by_sparse_step: kvPolicy === 'all',
    heads_kept_fraction: r(kept.reduce((a, k) => a + k, 0) / (nL * H)),
    kv_all_heads_ms_per_token: r(allMed),
    extra_ms_per_token: r(extra),
    kv_selected_heads_only_ms_per_token: r(median(selMs)),
    note: 'extra = all-heads K/V time x the fraction of K/V rows that belong to skipped heads (GEMV time is linear in rows); kv_selected_heads_only is timed as a cross-check',
  };
}

function perToken(b: BlockTimes): BlockTimes {
  const n = Math.max(1, b.steps);
  const out = zeroTimes();
  for (const k of Object.keys(b) as (keyof BlockTimes)[]) out[k] = k === 'steps' ? b.steps : b[k] / n;
  return out;
}

/** Block times of the round whose total is the median (keeps the split consistent with one real round). */
function medianBlocks(bs: BlockTimes[]): BlockTimes {
  const tot = (b: BlockTimes) => b.embed + b.predictors + b.attn_ln + b.kv + b.attention + b.mlp + b.lm_head;
  const sorted = [...bs].sort((a, b) => tot(a) - tot(b));
  return sorted[Math.floor(sorted.length / 2)];
}

/** Single-thread streaming read bandwidth (bytes/s): best of a few sums over a buffer far larger than the caches. */
export function measureReadBandwidth(bytes = 256 * 2 ** 20): number {
  const a = new Float32Array(bytes / 4);
  for (let i = 0; i < a.length; i += 1024) a[i] = i;
  let best = Infinity;
  let sink = 0;
  for (let r = 0; r < 4; r++) {
    const t0 = performance.now();
    let s0 = 0,
      s1 = 0,
      s2 = 0,
      s3 = 0;
    for (let i = 0; i < a.length; i += 4) {
      s0 += a[i];
      s1 += a[i + 1];
      s2 += a[i + 2];
      s3 += a[i + 3];
    }
    sink += s0 + s1 + s2 + s3;
    best = Math.min(best, performance.now() - t0);
  }
  // Use the sums so the loop cannot be optimised away.
  if (sink === -1) log('');
  return bytes / (best / 1000);
}

export function argmax(x: Float32Array): number {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i] > x[best]) best = i;
  return best;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

function mean(xs: number[]): number {
  return xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);
}

/** k indices split over G equal groups of consecutive rows with groupedTopK's quotas, random within each group. */
export function groupedRandomSubset(n: number, k: number, G: number, rng: () => number): Int32Array {
  if (G <= 1 || k >= n) return randomSubset(n, k, rng);
  const per = Math.ceil(n / G);
  const out: number[] = [];
  for (let r0 = 0; r0 < n; r0 += per) {
    const r1 = Math.min(n, r0 + per);
    const q = Math.floor((k * r1) / n) - Math.floor((k * r0) / n);
    for (const i of randomSubset(r1 - r0, q, rng)) out.push(r0 + i);
  }
  return Int32Array.from(out);
}

/** k distinct indices of 0..n-1, ascending (partial Fisher-Yates). */
function randomSubset(n: number, k: number, rng: () => number): Int32Array {
  const a = Int32Array.from({ length: n }, (_, i) => i);
  for (let i = 0; i < k; i++) {
    const j = i + Math.floor(rng() * (n - i));
    const t = a[i];
    a[i] = a[j];
    a[j] = t;
  }
  return a.slice(0, k).sort();
}

export function mulberry32(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}
