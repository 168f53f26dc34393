/**
 * THE OPT model definition (decoder-only, as Hugging Face's OPTForCausalLM): collect, eval and the sparse runtime all
 * run it; nothing else re-implements the forward pass.
 *
 *   x = embed_tokens(ids) [-> project_in] + embed_positions(2 + position)
 *   per layer (pre-LN):  x += out_proj(attn(LN1(x)));  x += fc2(relu(fc1(LN2(x))))
 *   per layer (post-LN): x = LN1(x + out_proj(attn(x))); x = LN2(x + fc2(relu(fc1(x))))
 *   [final LN] [-> project_out] -> lm_head
 *
 * Two implementations of the same math: typed arrays (ops.ts; decode steps, short inputs, and prefill when tfjs is
 * unavailable) and tfjs-wasm (tfjs-forward.ts; prefill, where XNNPACK matmuls are ~10x faster than JS loops). tfjs
 * is imported lazily in load(), never at module top level (the CUDA bench shares this file on a machine without it).
 */
import type { OptConfig, OptWeights } from '../../checkpoints/types.js';
import { DejavuError } from '../../common/errors.js';
import type { ForwardHooks } from '../hooks.js';
import { newKVCache, type KVCache } from './kv-cache.js';
import { addInPlace, attention, gemm, layerNorm, reluInPlace } from './ops.js';
import type { LogitsMode, TfjsForward } from './tfjs-forward.js';

export type { KVCache } from './kv-cache.js';
export type { LogitsMode } from './tfjs-forward.js';

/** 'auto' = tfjs-wasm for prefill when it loads (and the weights fit its 32-bit heap), else typed arrays. */
export type CpuBackend = 'auto' | 'wasm' | 'js';

export interface PrefillOptions {
  hooks?: ForwardHooks;
  /** Continue this sequence's cache (positions start at cache.length); it receives the new K/V and grows by T. */
  cache?: KVCache;
  /** 'all' (default): [T][V]; 'last': [V] of the last position; 'none': an empty array (hooks only). */
  logits?: LogitsMode;
}

const LN_EPS = 1e-5;
/** Inputs shorter than this go through the typed-array path even with tfjs loaded (upload/launch overhead wins). */
const WASM_MIN_TOKENS = 8;
/** wasm32 addresses 4 GiB; tfjs also needs activations there. Larger weight sets use the typed-array path. */
const WASM_MAX_WEIGHT_BYTES = 2.5 * 2 ** 30;

export class OptModel {
  /** 'tfjs-wasm (simd, 1 thread)' or 'js (typed arrays)': what prefill runs on. Decode always uses typed arrays. */
  readonly backend: string;

  private constructor(
    readonly config: OptConfig,
    readonly weights: OptWeights,
    private readonly wasm: TfjsForward | undefined,
    backend: string,
  ) {
    this.backend = backend;
  }

  static async load(
    ckpt: { config: OptConfig; weights: OptWeights },
    opts: { backend?: CpuBackend } = {},
  ): Promise<OptModel> {
    const { config, weights } = ckpt;
    validate(config, weights);
    let want = opts.backend ?? (process.env.DEJAVU_CPU_BACKEND as CpuBackend | undefined) ?? 'auto';
    if (want !== 'auto' && want !== 'wasm' && want !== 'js') {
      throw new DejavuError(`unknown CPU backend '${want}' (expected auto, wasm or js)`, 'DEJAVU_CPU_BACKEND');
    }
    const bytes = 4 * weightCount(config);
    if (want === 'auto' && bytes > WASM_MAX_WEIGHT_BYTES) want = 'js';
    if (want === 'js') return new OptModel(config, weights, undefined, 'js (typed arrays)');
    try {
      const { initWasmBackend, describeWasm } = await import('./wasm-backend.js');
      const { TfjsForward } = await import('./tfjs-forward.js');
      const tf = await initWasmBackend();
      return new OptModel(config, weights, new TfjsForward(tf, config, weights), describeWasm(tf));
    } catch (e) {
      if (want === 'wasm') throw e;
      process.stderr.write(`warning: tfjs wasm backend unavailable (${(e as Error).message}); using typed arrays\n`);
      return new OptModel(config, weights, undefined, 'js (typed arrays)');
    }
  }

  /** Frees the tfjs tensors (the typed-array weights belong to the checkpoint). */
  dispose(): void {
    this.wasm?.dispose();
  }

  newCache(maxLen = this.config.maxPositionEmbeddings): KVCache {
    return newKVCache(this.config.numLayers, this.config.hiddenSize, maxLen);
  }

  /** Forward over `ids` (continuing `opts.cache` if given). Returns logits [T][V], [V] for 'last', or [] for 'none'. */
  prefill(ids: Int32Array | number[], opts: PrefillOptions = {}): Float32Array {
    const T = ids.length;
    if (T === 0) throw new DejavuError('prefill of an empty sequence');
    const cache = opts.cache;
    const past = cache ? cache.length : 0;
    this.checkRoom(T, past, cache);
    const logits = opts.logits ?? 'all';
    if (this.wasm && T >= WASM_MIN_TOKENS) {
      const emb = this.embedTokens(ids);
      return this.wasm.forward(emb, this.positions(T, past), T, past, cache, opts.hooks, logits);
    }
    return this.forwardJs(ids, cache ?? newKVCache(this.config.numLayers, this.config.hiddenSize, T), opts.hooks, logits);
  }

  /** One decode step: logits [V] of token `id` at position cache.length; appends its K/V to the cache. */
  decodeStep(id: number, cache: KVCache, hooks?: ForwardHooks): Float32Array {
    this.checkRoom(1, cache.length, cache);
    return this.forwardJs([id], cache, hooks, 'last');
  }

  private checkRoom(T: number, past: number, cache: KVCache | undefined): void {
    const c = this.config;
    if (past + T > c.maxPositionEmbeddings) {
      throw new DejavuError(
        `sequence of ${past + T} positions exceeds max_position_embeddings ${c.maxPositionEmbeddings}`,
      );
    }
    if (cache && past + T > cache.maxLen) {
      throw new DejavuError(`KV cache holds ${cache.maxLen} positions; ${past + T} needed`);
    }
  }

  /** Token embeddings [T][wordEmbedProjDim] (before project_in). */
  private embedTokens(ids: ArrayLike<number>): Float32Array {
    const c = this.config;
    const p = c.wordEmbedProjDim;
    const out = new Float32Array(ids.length * p);
    for (let t = 0; t < ids.length; t++) {
      const id = ids[t];
      if (!Number.isInteger(id) || id < 0 || id >= c.vocabSize) {
        throw new DejavuError(`token id ${id} at index ${t} outside the vocabulary (0..${c.vocabSize - 1})`);
      }
      out.set(this.weights.embedTokens.subarray(id * p, (id + 1) * p), t * p);
    }
    return out;
  }

  /** Position embeddings [T][d] for positions past .. past+T-1 (OPT's learned table is offset by 2). */
  private positions(T: number, past: number): Float32Array {
    const d = this.config.hiddenSize;
    return this.weights.embedPositions.slice((2 + past) * d, (2 + past + T) * d);
  }

  /** The typed-array forward pass (same math as TfjsForward.forward). */
  private forwardJs(ids: ArrayLike<number>, cache: KVCache, hooks: ForwardHooks | undefined, logits: LogitsMode): Float32Array {
    const c = this.config;
    const w = this.weights;
    const T = ids.length;
    const d = c.hiddenSize;
    const ffn = c.ffnDim;
    const past = cache.length;
    const preLN = c.doLayerNormBefore;
    const affine = c.layerNormElementwiseAffine;
    const bias = (b: Float32Array) => (c.enableBias && b.length ? b : undefined);
    const scale = 1 / Math.sqrt(c.headDim);

    const emb = this.embedTokens(ids);
    let x: Float32Array;
    if (w.projectIn) {
      x = new Float32Array(T * d);
      gemm(emb, w.projectIn, undefined, T, c.wordEmbedProjDim, d, x);
    } else {
      x = emb;
    }
    addInPlace(x, this.positions(T, past), T * d);

    const h = new Float32Array(T * d);
    const q = new Float32Array(T * d);
    const heads = new Float32Array(T * d);
    const tmp = new Float32Array(T * d);
    const act = new Float32Array(T * ffn);
    const scores = new Float32Array(past + T);

    for (let l = 0; l < c.numLayers; l++) {
      const L = w.layers[l];
      hooks?.attIn?.(l, x, T);
      const hin = preLN ? (layerNorm(x, T, d, affine ? L.attnLnW : undefined, L.attnLnB, h, LN_EPS), h) : x;
      gemm(hin, L.qW, bias(L.qB), T, d, d, q);
      for (let i = 0; i < T * d; i++) q[i] *= scale;
      gemm(hin, L.kW, bias(L.kB), T, d, d, cache.k[l].subarray(past * d, (past + T) * d));
      gemm(hin, L.vW, bias(L.vB), T, d, d, cache.v[l].subarray(past * d, (past + T) * d));
      attention(q, cache.k[l], cache.v[l], T, past, c.numHeads, c.headDim, heads, scores);
      hooks?.headOut?.(l, heads, T);
      gemm(heads, L.oW, bias(L.oB), T, d, d, tmp);
      addInPlace(x, tmp, T * d);
      if (!preLN) layerNorm(x, T, d, affine ? L.attnLnW : undefined, L.attnLnB, x, LN_EPS);

      hooks?.mlpIn?.(l, x, T);
      const min = preLN ? (layerNorm(x, T, d, affine ? L.mlpLnW : undefined, L.mlpLnB, h, LN_EPS), h) : x;
      gemm(min, L.fc1W, bias(L.fc1B), T, d, ffn, act);
      reluInPlace(act, T * ffn);
      hooks?.fc1Act?.(l, act, T);
      gemm(act, L.fc2W, bias(L.fc2B), T, ffn, d, tmp);
      addInPlace(x, tmp, T * d);
      if (!preLN) layerNorm(x, T, d, affine ? L.mlpLnW : undefined, L.mlpLnB, x, LN_EPS);
    }
    cache.length = past + T;
    if (logits === 'none') return new Float32Array(0);

    const rows = logits === 'last' ? 1 : T;
    let y = logits === 'last' ? x.slice((T - 1) * d, T * d) : x;
    if (c.hasFinalLayerNorm) {
      layerNorm(y, rows, d, affine ? w.finalLnW : undefined, w.finalLnB, y, LN_EPS);
    }
    if (w.projectOut) {
      const p = new Float32Array(rows * c.wordEmbedProjDim);
      gemm(y, w.projectOut, undefined, rows, d, c.wordEmbedProjDim, p);
      y = p;
    }
    const out = new Float32Array(rows * c.vocabSize);
    gemm(y, w.lmHead, undefined, rows, c.wordEmbedProjDim, c.vocabSize, out);
    return out;
  }
}

function weightCount(c: OptConfig): number {
  const d = c.hiddenSize;
  const perLayer = 4 * d * d + 2 * d * c.ffnDim;
  const proj = c.wordEmbedProjDim !== d ? 2 * d * c.wordEmbedProjDim : 0;
  return c.numLayers * perLayer + c.vocabSize * c.wordEmbedProjDim * 2 + proj;
}

/** Shape checks that turn a loader/model mismatch into a readable error instead of NaNs or a crash mid-forward. */
function validate(c: OptConfig, w: OptWeights): void {
  const expect = (name: string, a: Float32Array | undefined, n: number) => {
    if (!a) throw new DejavuError(`weights lack ${name}`);
    if (a.length !== n) throw new DejavuError(`${name} has ${a.length} values, config implies ${n}`);
  };
  const d = c.hiddenSize;
  const p = c.wordEmbedProjDim;
  if (c.numHeads * c.headDim !== d) throw new DejavuError(`numHeads*headDim (${c.numHeads}*${c.headDim}) != hiddenSize ${d}`);
  if (w.layers.length !== c.numLayers) throw new DejavuError(`${w.layers.length} layers in weights, config says ${c.numLayers}`);
  expect('embed_tokens', w.embedTokens, c.vocabSize * p);
  if (w.embedPositions.length < (c.maxPositionEmbeddings + 2) * d) {
    throw new DejavuError(`embed_positions has ${w.embedPositions.length} values, need ${(c.maxPositionEmbeddings + 2) * d}`);
  }
  expect('lm_head', w.lmHead, c.vocabSize * p);
  if (p !== d) {
    expect('project_in', w.projectIn, d * p);
    expect('project_out', w.projectOut, p * d);
  }
  if (c.hasFinalLayerNorm && c.layerNormElementwiseAffine) {
    expect('final_layer_norm.weight', w.finalLnW, d);
    expect('final_layer_norm.bias', w.finalLnB, d);
  }
  w.layers.forEach((L, l) => {
    const n = `layers.${l}.`;
    for (const [k, a] of [['q', L.qW], ['k', L.kW], ['v', L.vW], ['out', L.oW]] as const) expect(`${n}${k}_proj.weight`, a, d * d);
    expect(`${n}fc1.weight`, L.fc1W, c.ffnDim * d);
    expect(`${n}fc2.weight`, L.fc2W, d * c.ffnDim);
  });
}
