/**
 * CudaEngine: an OPT model resident on the GPU (fp16 weights), its KV cache, and one CUDA graph per decode mode.
 * Weights come from a checkpoint (real model) or a hash fill on the GPU (shape benchmarks). Sparsity comes from a
 * bundle's predictors, from random predictors at a given density (shape benchmarks), or from explicit selections.
 * No tfjs / apache-arrow anywhere on this path (the GPU machine carries only koffi).
 */
import { collapsedRank, collapsePredictor } from '../sparse/collapse.js';
import type { OptCheckpoint } from '../../checkpoints/types.js';
import type { Bundle } from '../../export/bundle.js';
import type { Dims } from './floor.js';
import { mlpInputSource, type MlpInput } from '../../common/mlp-input.js';
import { TAP, TENSOR, type CudaLib, type CudaOptions, type Mode, type TapRows } from './lib.js';

const MLP_INPUT_TEXT: Record<MlpInput, string> = {
  att_in: 'att_in of layer l',
  prev_att_in: 'att_in of layer l-1 (lookahead, with the heads; layer 0 its own)',
  prev_mlp_in: 'mlp_in of layer l-1 (lookahead; layer 0 its own)',
  mlp_in: 'mlp_in of layer l',
};

/** What the sparse graph does in each layer (kH = heads / kM = ffn means dense). */
export interface SparsityPlan {
  kH: number[];
  kM: number[];
  rankAttn: number[];
  rankMlp: number[];
  /** Human-readable: where the predictors read from. */
  source: string;
}

export class CudaEngine {
  private destroyed = false;
  private tapsLayers = 0;

  private constructor(
    readonly lib: CudaLib,
    private readonly h: unknown,
    readonly dims: Dims,
    readonly maxT: number,
  ) {}

  /** Options left out take their defaults (lib.ts DEFAULT_CUDA_OPTIONS: auto path, exact top-k, KV of every head). */
  static create(lib: CudaLib, dims: Dims, maxT: number, eps = 1e-5, options: Partial<CudaOptions> = {}): CudaEngine {
    const h = lib.create(
      { vocab: dims.vocab, d: dims.d, layers: dims.layers, heads: dims.heads, ffn: dims.ffn, maxPos: dims.maxPos, maxT, eps },
      options,
    );
    return new CudaEngine(lib, h, dims, maxT);
  }

  /** The engine's dimensions of a model (any OPT variant). */
  static dimsOf(ckpt: Pick<OptCheckpoint, 'config' | 'dir'>): Dims {
    const c = ckpt.config;
    return { vocab: c.vocabSize, d: c.hiddenSize, layers: c.numLayers, heads: c.numHeads, ffn: c.ffnDim, maxPos: c.maxPositionEmbeddings };
  }

  /**
   * Why the streamed kernels, and so the grouped top-k, cannot take this model, or undefined. They take pre-LN OPT
   * with a final LayerNorm and no project_in/out (every released OPT but opt-350m); every form decodes on the
   * portable kernels with the exact top-k.
   */
  static streamedProblem(c: OptCheckpoint['config']): string | undefined {
    const why = [
      !c.doLayerNormBefore && 'post-LayerNorm blocks (do_layer_norm_before: false)',
      c.wordEmbedProjDim !== c.hiddenSize && `project_in/out (word_embed_proj_dim ${c.wordEmbedProjDim} != hidden_size ${c.hiddenSize})`,
      !c.hasFinalLayerNorm && 'no final LayerNorm',
    ].filter(Boolean);
    return why.length
      ? `the grouped top-k runs inside the streamed kernels, which take pre-LN OPT with a final LayerNorm and no projections; this model has ${why.join(', ')} (it decodes on the portable kernels with the exact top-k)`
      : undefined;
  }

  fillRandom(seed: number): void {
    this.lib.fillRandom(this.h, seed);
  }

  /** Upload a checkpoint's fp32 weights (converted to fp16 and re-laid-out by the library). */
  uploadCheckpoint(ckpt: Pick<OptCheckpoint, 'config' | 'weights'>): void {
    const w = ckpt.weights;
    const { d, ffn } = this.dims;
    const up = (t: number, l: number, a: Float32Array | undefined, n: number, fill = 0) =>
      this.lib.upload(this.h, t, l, a && a.length ? a : new Float32Array(n).fill(fill));
    up(TENSOR.embed, 0, w.embedTokens, 0);
    up(TENSOR.positions, 0, w.embedPositions, 0);
    up(TENSOR.lnfW, 0, w.finalLnW, d, 1);
    up(TENSOR.lnfB, 0, w.finalLnB, d);
    if (w.lmHead !== w.embedTokens) up(TENSOR.lmHead, 0, w.lmHead, 0);
    w.layers.forEach((L, l) => {
      up(TENSOR.ln1W, l, L.attnLnW, d, 1); up(TENSOR.ln1B, l, L.attnLnB, d);
      up(TENSOR.qW, l, L.qW, 0); up(TENSOR.qB, l, L.qB, d);
      up(TENSOR.kW, l, L.kW, 0); up(TENSOR.kB, l, L.kB, d);
      up(TENSOR.vW, l, L.vW, 0); up(TENSOR.vB, l, L.vB, d);
      up(TENSOR.oW, l, L.oW, 0); up(TENSOR.oB, l, L.oB, d);
      up(TENSOR.ln2W, l, L.mlpLnW, d, 1); up(TENSOR.ln2B, l, L.mlpLnB, d);
      up(TENSOR.fc1W, l, L.fc1W, 0); up(TENSOR.fc1B, l, L.fc1B, ffn);
      up(TENSOR.fc2W, l, L.fc2W, 0); up(TENSOR.fc2B, l, L.fc2B, d);
    });
  }

  /** The model's form (before uploads): see CudaLib.setVariant. */
  setVariant(v: { preLn: boolean; finalLn: boolean; embedDim: number; untiedHead: boolean }): void {
    this.lib.setVariant(this.h, v);
  }

  /** One checkpoint tensor in its stored dtype, converted to the engine's layout on the GPU. */
  uploadRaw(tensor: number, layer: number, bytes: Uint8Array, dtype: 'F32' | 'F16' | 'BF16', n: number): void {
    this.lib.uploadRaw(this.h, tensor, layer, bytes, dtype, n);
  }

  /**
   * Prefill whole sequences (each from position 0). Returns per row the NLL of the next token of its sequence (0 on
   * each sequence's last row); `logits` [rows][vocab] when asked (tests). fillKv: one sequence whose K/V fill the
   * decode cache; decode continues at position len - 1.
   */
  prefill(seqs: Int32Array[], opts: { logits?: Float32Array; fillKv?: boolean } = {}): Float32Array {
    const lens = Int32Array.from(seqs, (s) => s.length);
    const tokens = new Int32Array(lens.reduce((a, b) => a + b, 0));
    let o = 0;
    for (const s of seqs) {
      tokens.set(s, o);
      o += s.length;
    }
    const nll = new Float32Array(tokens.length);
    this.lib.prefill(this.h, tokens, lens, { nll, logits: opts.logits }, opts.fillKv ?? false);
    return nll;
  }

  /** Teacher-forced decode of `steps` tokens (the prompt set by setPrompt holds them): the NLL of each next token. */
  decodeNll(mode: Mode, steps: number): Float32Array {
    const nll = new Float32Array(steps);
    this.lib.decodeNll(this.h, mode, steps, nll);
    return nll;
  }

  /**
   * Teacher-forced decode with the oracle's selections (the CPU runtime's mode 'oracle', engine.cu dj_oracle_nll): in
   * each layer whose k is below H / ffn, the k heads with the largest attention-output norm and the k largest
   * activations, under the engine's KV policy; the NLL of each next token. Eager kernels: no build() needed.
   */
  oracleNll(steps: number): Float32Array {
    const nll = new Float32Array(steps);
    this.lib.oracleNll(this.h, steps, nll);
    return nll;
  }

  /** The oracle's picks of its last step in `layer` (kH heads, kM neurons, ascending). */
  oracleSelection(layer: number, kH: number, kM: number): { heads: Int32Array; neurons: Int32Array } {
    const heads = new Int32Array(kH);
    const neurons = new Int32Array(kM);
    this.lib.oracleSelection(this.h, layer, heads, neurons);
    return { heads, neurons };
  }

  /**
   * Collect's taps of `layers`, pipelined through two pinned host slots (see CudaLib.tapsOpen): open once for the
   * longest sequence, then begin a sequence in a slot and wait for its rows (views valid until the next begin into
   * that slot). runtime/cuda/taps.ts alternates the slots.
   */
  openTaps(layers: number[], maxTokens: number): void {
    this.lib.tapsOpen(this.h, Int32Array.from(layers), maxTokens);
    this.tapsLayers = layers.length;
  }

  beginTaps(slot: 0 | 1, ids: Int32Array): void {
    this.lib.tapsBegin(this.h, slot, ids);
  }

  waitTaps(slot: 0 | 1): Promise<TapRows> {
    return this.lib.tapsWait(this.h, slot, { layers: this.tapsLayers, d: this.dims.d, heads: this.dims.heads, ffn: this.dims.ffn });
  }

  /** Milliseconds of one fp16 cuBLAS GEMM at M x N x K (the prefill's GEMMs), median of `reps`. */
  gemmMs(m: number, n: number, k: number, reps = 10): number {
    return this.lib.gemmMs(this.h, m, n, k, reps);
  }

  /** Predictors of a bundle (k per layer from the manifest unless overridden). */
  applyBundle(bundle: Bundle, over: { headsK?: number; mlpK?: number } = {}): SparsityPlan {
    const { layers, heads, ffn } = this.dims;
    const plan: SparsityPlan = { kH: [], kM: [], rankAttn: [], rankMlp: [], source: `bundle ${bundle.dir}` };
    for (let l = 0; l < layers; l++) {
      const a = bundle.attn[l];
      const m = bundle.mlp[l];
      let kH = heads;
      let kM = ffn;
      // A rank above the output count adds bytes, not expressiveness: the same map at rank ~n (runtime/sparse/collapse.ts).
      let rankA = 0;
      let rankM = 0;
      if (a) {
        const c = collapsePredictor(a, heads, this.dims.d);
        kH = Math.min(heads, over.headsK ?? a.k);
        this.lib.setPredictor(this.h, l, 0, TAP[a.input], a.sourceLayer, c.w1f, c.w2f, c.rank, kH, a.input_norm === 'layernorm');
        rankA = c.rank;
      }
      if (m) {
        const c = collapsePredictor(m, ffn, this.dims.d);
        kM = Math.min(ffn, over.mlpK ?? m.k);
        this.lib.setPredictor(this.h, l, 1, TAP[m.input], m.sourceLayer, c.w1f, c.w2f, c.rank, kM, m.input_norm === 'layernorm');
        rankM = c.rank;
      }
      this.lib.setK(this.h, l, kH, kM);
      plan.kH.push(kH);
      plan.kM.push(kM);
      plan.rankAttn.push(rankA);
      plan.rankMlp.push(rankM);
    }
    return plan;
  }

  /**
   * Random fp16 predictors at a density (shape benchmarks): attention heads of layer l predicted from att_in of
   * layer l-1 (DejaVu's lookahead; layer 0 from its own). MLP neurons of layer l from `mlpInput` (train's
   * `--mlp-input`): `att_in` of layer l (default: the chain runs beside the attention block), `prev_att_in` = att_in
   * of layer l-1 (the heads' tap: one chain for both, with a layer and a half to finish), `prev_mlp_in` = mlp_in of
   * layer l-1 (a layer to finish), or `mlp_in` of layer l (the chain sits between attention and MLP). Layer 0's
   * lookahead taps read its own point.
   */
  randomPredictors(density: { mlp: number; heads: number }, rank: number, mlpInput: MlpInput = 'att_in'): SparsityPlan {
    const { layers, heads, ffn } = this.dims;
    // A trained predictor of any rank above its output count collapses to rank ~n (applyBundle does it), so the
    // random ones stand for that form: heads at min(rank, 40 at 13B).
    const rankH = Math.min(rank, collapsedRank(heads));
    const rankM = Math.min(rank, collapsedRank(ffn));
    const kH = Math.max(1, Math.min(heads, Math.round(density.heads * heads)));
    const kM = Math.max(1, Math.min(ffn, Math.round(density.mlp * ffn)));
    const plan: SparsityPlan = {
      kH: [], kM: [], rankAttn: [], rankMlp: [],
      source: `random predictors: attn from att_in of layer l-1 (lookahead), mlp from ${MLP_INPUT_TEXT[mlpInput]}`,
    };
    for (let l = 0; l < layers; l++) {
      const sparseH = kH < heads;
      const sparseM = kM < ffn;
      if (sparseH) this.lib.setPredictor(this.h, l, 0, TAP.att_in, Math.max(0, l - 1), null, null, rankH, kH, false);
      const src = mlpInputSource(mlpInput, l);
      if (sparseM) this.lib.setPredictor(this.h, l, 1, TAP[src.column], src.layer, null, null, rankM, kM, false);
      this.lib.setK(this.h, l, kH, kM);
      plan.kH.push(kH);
      plan.kM.push(kM);
      plan.rankAttn.push(sparseH ? rankH : 0);
      plan.rankMlp.push(sparseM ? rankM : 0);
    }
    return plan;
  }

  /** k of one layer (kH = heads / kM = ffn: that block keeps everything); effective at the next build(). */
  setK(layer: number, kH: number, kM: number): void {
    this.lib.setK(this.h, layer, kH, kM);
  }

  setSelection(layer: number, heads: Int32Array, neurons: Int32Array): void {
    this.lib.setSelection(this.h, layer, heads, neurons);
  }

  getSelection(layer: number, kH: number, kM: number): { heads: Int32Array; neurons: Int32Array } {
    const heads = new Int32Array(kH);
    const neurons = new Int32Array(kM);
    this.lib.getSelection(this.h, layer, heads, neurons);
    return { heads, neurons };
  }

  /** Neuron groups of layer's MLP selection on the GPU (SparseOptions.mlpGroups for the CPU's same rule). After build. */
  mlpGroups(layer: number): number {
    return this.lib.mlpGroups(this.h, layer);
  }

  /** Replaces every option (those left out take their defaults); effective at the next build(). */
  setOptions(options: Partial<CudaOptions>): void {
    this.lib.setOptions(this.h, options);
  }

  /** The path the engine runs: 'streamed' or 'portable' (an 'auto' request resolved for this GPU and shape). */
  path(): 'streamed' | 'portable' {
    return this.lib.path(this.h);
  }

  /** Capture the graphs (after weights, k and predictors). */
  build(): void {
    this.lib.build(this.h);
  }

  kernelsPerStep(mode: Mode): number {
    return this.lib.graphKernels(this.h, mode);
  }

  /** Prompt tokens (forced while pos < prompt length); resets the position and the KV validity. */
  setPrompt(ids: ArrayLike<number>): void {
    this.lib.setPrompt(this.h, Int32Array.from(ids));
  }

  setPos(pos: number): void {
    this.lib.setPos(this.h, pos);
  }

  /** Current position and the token history (prompt + generated). */
  state(): { pos: number; tokens: Int32Array } {
    const tokens = new Int32Array(this.maxT + 1);
    const pos = this.lib.getState(this.h, tokens);
    return { pos, tokens: tokens.subarray(0, pos + 1) };
  }

  logits(): Float32Array {
    const out = new Float32Array(this.dims.vocab);
    this.lib.getLogits(this.h, out);
    return out;
  }

  /** `steps` decode steps of `mode` (graph replays); device milliseconds. */
  run(mode: Mode, steps: number): number {
    return this.lib.run(this.h, mode, steps);
  }

  /** Per-kernel-kind device ms of `steps` eager steps (see engine.cu dj_profile). */
  profile(mode: Mode, steps: number): Record<string, number> {
    return this.lib.profile(this.h, mode, steps);
  }

  destroy(): void {
    if (!this.destroyed) this.lib.destroy(this.h);
    this.destroyed = true;
  }

  /**
   * k per layer at a density over the predictors already set (`plan`: what randomPredictors or applyBundle returned):
   * a layer with a heads (neurons) predictor keeps max(1, round(density x heads (ffn))) of them, one without stays
   * dense. No weights or predictors move; effective at the next build(). A predictor once set runs in every sparse
   * step, also at density 1: a layer is timed without its predictor only before that predictor is set.
   */
  setDensity(plan: SparsityPlan, density: { mlp: number; heads: number }): SparsityPlan {
    const { layers, heads, ffn } = this.dims;
    const kH = Math.max(1, Math.min(heads, Math.round(density.heads * heads)));
    const kM = Math.max(1, Math.min(ffn, Math.round(density.mlp * ffn)));
    const out: SparsityPlan = { ...plan, kH: [], kM: [] };
    for (let l = 0; l < layers; l++) {
      const h = plan.rankAttn[l] > 0 ? kH : heads;
      const m = plan.rankMlp[l] > 0 ? kM : ffn;
      this.lib.setK(this.h, l, h, m);
      out.kH.push(h);
      out.kM.push(m);
    }
    return out;
  }
}
