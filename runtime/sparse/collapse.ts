/**
 * A predictor whose rank exceeds its output count is a wasteful factorisation: scores = w2 · (w1 · f(x)) with
 * w2 [n][r], w1 [r][d] is the linear map W = w2 · w1 [n][d] of rank <= n, whatever r is. DejaVu-style heads
 * predictors (n = heads, e.g. 40 at OPT-13B) trained at rank 128 read 128 rows of w1 where n rows carry the same
 * map. collapsePredictor returns the same map at rank r' = n rounded up to `multiple` (the CUDA kernels take ranks
 * in multiples of 8): w1' = W padded with zero rows, w2' = [I | 0]. Exact in real arithmetic; W is formed in
 * fp32 (the CUDA engine then stores it as fp16, as it stores any w1).
 */
export interface FactoredPredictor {
  w1f: Float32Array; // [rank][d]
  w2f: Float32Array; // [n][rank]
  rank: number;
}

export function collapsedRank(n: number, multiple = 8): number {
  return Math.ceil(n / multiple) * multiple;
}

export function collapsePredictor(p: FactoredPredictor, n: number, d: number, multiple = 8): FactoredPredictor {
  const r2 = collapsedRank(n, multiple);
  if (p.rank <= r2) return p;
  if (p.w1f.length !== p.rank * d || p.w2f.length !== n * p.rank)
    throw new Error(`collapsePredictor: w1 ${p.w1f.length} / w2 ${p.w2f.length} values do not match rank ${p.rank}, n ${n}, d ${d}`);
  const w1 = new Float32Array(r2 * d);
  for (let i = 0; i < n; i++) {
    const row = w1.subarray(i * d, (i + 1) * d);
    for (let r = 0; r < p.rank; r++) {
      const c = p.w2f[i * p.rank + r];
      if (c === 0) continue;
      const src = p.w1f.subarray(r * d, (r + 1) * d);
      for (let j = 0; j < d; j++) row[j] += c * src[j];
    }
  }
  const w2 = new Float32Array(n * r2);
  for (let i = 0; i < n; i++) w2[i * r2 + i] = 1;
  return { w1f: w1, w2f: w2, rank: r2 };
}
