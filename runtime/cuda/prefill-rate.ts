/**
 * The CUDA prefill's speed against what the card's fp16 GEMMs reach (bench --device cuda --prefill-len L). FLOPs of a
 * token: 2 x the matmul parameters (LM head and projections included) + 2 x layers x d x T for causal attention at
 * sequence length T; the reference is one cuBLAS GEMM at M = L tokens, N = ffn, K = d, timed in the same run.
 */
import type { OptConfig } from '../../checkpoints/types.js';
import type { CudaEngine } from './engine.js';

/** FLOPs the prefill spends per token of a T-token sequence (pure). */
export function prefillFlopsPerToken(c: Pick<OptConfig, 'hiddenSize' | 'ffnDim' | 'numLayers' | 'vocabSize' | 'wordEmbedProjDim'>, T: number): number {
  const d = c.hiddenSize, e = c.wordEmbedProjDim;
  const matmul = c.numLayers * (4 * d * d + 2 * c.ffnDim * d) + c.vocabSize * e + (e !== d ? 2 * d * e : 0);
  return 2 * matmul + 2 * c.numLayers * d * T;
}

export interface PrefillRate {
  seq_len: number;
  tokens_per_s: number;
  ms_per_sequence: number;
  flops_per_token: number;
  tflops: number;
  gemm: { m: number; n: number; k: number; ms: number; tflops: number };
  fraction_of_gemm_rate: number;
}

const r3 = (x: number) => Math.round(x * 1000) / 1000;

/** Time `reps` prefills of one `len`-token sequence (after a warm-up) and the reference GEMM on the same engine. */
export function measurePrefill(
  eng: CudaEngine,
  c: Pick<OptConfig, 'hiddenSize' | 'ffnDim' | 'numLayers' | 'vocabSize' | 'wordEmbedProjDim'>,
  len: number,
  reps = 5,
  seed = 1,
): PrefillRate {
  let s = seed >>> 0;
  const ids = Int32Array.from({ length: len }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s % c.vocabSize;
  });
  eng.prefill([ids]);  // warm-up: workspace, cuBLAS handle and heuristics
  const ts: number[] = [];
  for (let r = 0; r < reps; r++) {
    const t0 = performance.now();
    eng.prefill([ids]);
    ts.push(performance.now() - t0);
  }
  ts.sort((a, b) => a - b);
  const ms = ts[Math.floor(ts.length / 2)];
  const flops = prefillFlopsPerToken(c, len);
  const tps = len / (ms / 1000);
  const g = { m: len, n: c.ffnDim, k: c.hiddenSize };
  const gms = eng.gemmMs(g.m, g.n, g.k, 10);
  const gemmTflops = (2 * g.m * g.n * g.k) / (gms / 1000) / 1e12;
  const tflops = (tps * flops) / 1e12;
  return {
    seq_len: len,
    tokens_per_s: Math.round(tps),
    ms_per_sequence: r3(ms),
    flops_per_token: flops,
    tflops: r3(tflops),
    gemm: { ...g, ms: r3(gms), tflops: r3(gemmTflops) },
    fraction_of_gemm_rate: r3(tflops / gemmTflops),
  };
}
