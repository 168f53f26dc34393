/**
 * OPT shapes and the bytes a decode step must move (pure functions). The bandwidth floor of a step is these bytes
 * divided by the copy bandwidth measured on the same GPU in the same run: no implementation can beat it, since
 * every weight it uses must be read from HBM once per token (batch 1: nothing is reused across tokens, and the
 * weights are far larger than L2).
 */
import { DejavuError } from '../../common/errors.js';

export interface Dims {
  vocab: number;
  d: number;
  layers: number;
  heads: number;
  ffn: number;
  maxPos: number;
}

/** Published facebook/opt-* dimensions (config.json of each). */
export const OPT_SHAPES: Record<string, Dims> = {
  'opt-125m': { vocab: 50272, d: 768, layers: 12, heads: 12, ffn: 3072, maxPos: 2048 },
  'opt-1.3b': { vocab: 50272, d: 2048, layers: 24, heads: 32, ffn: 8192, maxPos: 2048 },
  'opt-6.7b': { vocab: 50272, d: 4096, layers: 32, heads: 32, ffn: 16384, maxPos: 2048 },
  'opt-13b': { vocab: 50272, d: 5120, layers: 40, heads: 40, ffn: 20480, maxPos: 2048 },
  'opt-30b': { vocab: 50272, d: 7168, layers: 48, heads: 56, ffn: 28672, maxPos: 2048 },
  'opt-66b': { vocab: 50272, d: 9216, layers: 64, heads: 72, ffn: 36864, maxPos: 2048 },
};

export function shapeDims(name: string): Dims {
  const s = OPT_SHAPES[name];
  if (!s) throw new DejavuError(`unknown shape '${name}' (known: ${Object.keys(OPT_SHAPES).join(', ')})`, '--shape');
  return s;
}

/** Device bytes the engine allocates for weights (fp16 matrices, fp32 vectors), tied LM head. */
export function weightBytes(m: Dims): number {
  const { d, ffn, layers, vocab, maxPos } = m;
  const perLayer = 2 * (4 * d * d + 2 * ffn * d) + 4 * (9 * d + ffn); // + LN (4d), qkv/out/fc2 biases (5d), fc1 bias
  return layers * perLayer + 2 * (vocab * d + (maxPos + 2) * d) + 8 * d;
}

export interface StepSparsity {
  /** heads kept per layer (= heads for dense layers) */
  kH: number[];
  /** neurons kept per layer (= ffn for dense layers) */
  kM: number[];
  /** predictor rank per layer and target (0 = no predictor) */
  rankAttn: number[];
  rankMlp: number[];
  /** 'selected': K/V projected for kept heads only; 'all': for every head */
  kvPolicy: 'selected' | 'all';
}

export interface StepBytes {
  weights: number;
  kv: number;
  predictors: number;
  lmHead: number;
  total: number;
}

/**
 * Bytes one decode step must read/write at context length T (positions attended, the new one included).
 * Dense = no sparsity argument. fp16 matrices, fp32 biases / LayerNorm vectors, fp16 KV cache.
 */
export function stepBytes(m: Dims, T: number, sp?: StepSparsity): StepBytes {
  const { d, ffn, layers, heads, vocab } = m;
  const hd = d / heads;
  let weights = 0;
  let kv = 0;
  let predictors = 0;
  for (let l = 0; l < layers; l++) {
    const kH = sp ? sp.kH[l] : heads;
    const kM = sp ? sp.kM[l] : ffn;
    const kvHeads = sp && sp.kvPolicy === 'selected' ? kH : heads;
    const q = kH * hd * d;
    const kvRows = 2 * kvHeads * hd * d;
    const o = kH * hd * d;
    weights += 2 * (q + kvRows + o + 2 * kM * d); // fp16 rows of q, k, v, out_proj^T, fc1, fc2^T
    weights += 4 * (kH * hd + 2 * kvHeads * hd + d + kM + d + 4 * d); // biases + two LayerNorms (fp32)
    kv += 2 * 2 * kH * hd * T + 2 * 2 * kvHeads * hd; // read K,V of attended heads; write the new row
    if (sp) {
      const ra = sp.rankAttn[l];
      const rm = sp.rankMlp[l];
      if (ra) predictors += 2 * (ra * d + heads * ra);
      if (rm) predictors += 2 * (rm * d + ffn * rm);
    }
  }
  const lmHead = 2 * vocab * d + 4 * vocab + 8 * d; // weights, fp32 logits out, final LayerNorm
  const embed = 2 * 2 * d;
  return { weights, kv, predictors, lmHead, total: weights + kv + predictors + lmHead + embed };
}

/** Average step bytes over `gen` generated tokens after a `prompt`-token context (T = prompt+1 .. prompt+gen). */
export function avgStepBytes(m: Dims, prompt: number, gen: number, sp?: StepSparsity): StepBytes {
  const T = prompt + (gen + 1) / 2; // linear in T, so the mean step is the step at the mean T
  return stepBytes(m, T, sp);
}
