/**
 * Sparse decode kernels: pure functions on typed arrays, batch 1, fp32. Each kernel touches only the weight rows it
 * is given, so skipped heads and neurons cost no memory traffic (the point of contextual sparsity on a memory-bound
 * decode). Row-major layouts throughout; `cols` is the length of one row.
 *
 * Layouts the callers prepare once at load time:
 *  - fc1 W [ffn][d] as in PyTorch: a neuron is one contiguous row.
 *  - fc2 stored TRANSPOSED, fc2T [ffn][d]: a neuron's output weights are one contiguous row, so the gathered fc2 is a
 *    sum of k scaled rows (axpy) instead of k strided column reads.
 *  - out_proj stored TRANSPOSED, oT [d_in][d_out]: head h's input columns h*hd..(h+1)*hd-1 become hd contiguous rows.
 *  - KV cache per layer as runtime/cpu's KVCache: [maxLen][d], head h in columns h*hd..(h+1)*hd-1 (so a dense
 *    prefill and a sparse decode share one cache). Attention for a subset of heads reads only those heads' columns.
 */

// dot and transpose live with the dense ops (runtime/cpu/ops.ts): shared so both runtimes multiply identically, and
// re-exported for the sparse model's load-time fc2ᵀ / out_projᵀ.
import { dot } from '../cpu/ops.js';
export { dot, transpose } from '../cpu/ops.js';

/** y[o] += alpha * x[xOff + o] for o < n (y at yOff). */
export function axpy(alpha: number, x: Float32Array, xOff: number, y: Float32Array, yOff: number, n: number): void {
  let i = 0;
  const n4 = n - (n & 3);
  for (; i < n4; i += 4) {
    y[yOff + i] += alpha * x[xOff + i];
    y[yOff + i + 1] += alpha * x[xOff + i + 1];
    y[yOff + i + 2] += alpha * x[xOff + i + 2];
    y[yOff + i + 3] += alpha * x[xOff + i + 3];
  }
  for (; i < n; i++) y[yOff + i] += alpha * x[xOff + i];
}

/**
 * Dot products of four rows of W (at offsets o0..o3) with x[0..n): each x value is loaded once for four rows, and
 * eight independent accumulators keep the FP pipeline busy. Results in dot4Out[0..3].
 */
const dot4Out = new Float64Array(4);
function dot4(W: Float32Array, o0: number, o1: number, o2: number, o3: number, x: Float32Array, n: number): void {
  let a0 = 0,
    a1 = 0,
    a2 = 0,
    a3 = 0,
    b0 = 0,
    b1 = 0,
    b2 = 0,
    b3 = 0;
  let i = 0;
  const n2 = n - (n & 1);
  for (; i < n2; i += 2) {
    const x0 = x[i];
    const x1 = x[i + 1];
    a0 += W[o0 + i] * x0;
    a1 += W[o1 + i] * x0;
    a2 += W[o2 + i] * x0;
    a3 += W[o3 + i] * x0;
    b0 += W[o0 + i + 1] * x1;
    b1 += W[o1 + i + 1] * x1;
    b2 += W[o2 + i + 1] * x1;
    b3 += W[o3 + i + 1] * x1;
  }
  if (i < n) {
    const x0 = x[i];
    a0 += W[o0 + i] * x0;
    a1 += W[o1 + i] * x0;
    a2 += W[o2 + i] * x0;
    a3 += W[o3 + i] * x0;
  }
  dot4Out[0] = a0 + b0;
  dot4Out[1] = a1 + b1;
  dot4Out[2] = a2 + b2;
  dot4Out[3] = a3 + b3;
}

/** Dense GEMV: out[r] = W[r] . x + (bias[r]) for r < rows. W is [rows][cols]. */
export function gemv(
  W: Float32Array,
  rows: number,
  cols: number,
  x: Float32Array,
  out: Float32Array,
  bias?: Float32Array,
): Float32Array {
  let r = 0;
  for (; r + 4 <= rows; r += 4) {
    dot4(W, r * cols, (r + 1) * cols, (r + 2) * cols, (r + 3) * cols, x, cols);
    out[r] = dot4Out[0] + (bias ? bias[r] : 0);
    out[r + 1] = dot4Out[1] + (bias ? bias[r + 1] : 0);
    out[r + 2] = dot4Out[2] + (bias ? bias[r + 2] : 0);
    out[r + 3] = dot4Out[3] + (bias ? bias[r + 3] : 0);
  }
  for (; r < rows; r++) out[r] = dot(W, r * cols, x, 0, cols) + (bias ? bias[r] : 0);
  return out;
}

/** Dense GEMV + bias + ReLU (the dense fc1). */
export function gemvRelu(
  W: Float32Array,
  rows: number,
  cols: number,
  x: Float32Array,
  bias: Float32Array | undefined,
  out: Float32Array,
): Float32Array {
  gemv(W, rows, cols, x, out, bias);
  for (let r = 0; r < rows; r++) if (!(out[r] > 0)) out[r] = 0;
  return out;
}

/**
 * Gathered fc1: out[j] = relu(W[idx[j]] . x + bias[idx[j]]) for j < k. The output is COMPACT (k values, in the order
 * of idx), ready for gatherAxpyRows with the same idx. Four gathered rows share each pass over x, as in gemv.
 */
export function gatherGemvRelu(
  W: Float32Array,
  cols: number,
  x: Float32Array,
  idx: Int32Array,
  k: number,
  bias: Float32Array | undefined,
  out: Float32Array,
): Float32Array {
  let j = 0;
  for (; j + 4 <= k; j += 4) {
    const r0 = idx[j],
      r1 = idx[j + 1],
      r2 = idx[j + 2],
      r3 = idx[j + 3];
    dot4(W, r0 * cols, r1 * cols, r2 * cols, r3 * cols, x, cols);
    const v0 = dot4Out[0] + (bias ? bias[r0] : 0);
    const v1 = dot4Out[1] + (bias ? bias[r1] : 0);
    const v2 = dot4Out[2] + (bias ? bias[r2] : 0);
    const v3 = dot4Out[3] + (bias ? bias[r3] : 0);
    out[j] = v0 > 0 ? v0 : 0;
    out[j + 1] = v1 > 0 ? v1 : 0;
    out[j + 2] = v2 > 0 ? v2 : 0;
    out[j + 3] = v3 > 0 ? v3 : 0;
  }
  for (; j < k; j++) {
    const r = idx[j];
    const v = dot(W, r * cols, x, 0, cols) + (bias ? bias[r] : 0);
    out[j] = v > 0 ? v : 0;
  }
  return out;
}

/**
 * Gathered fc2 over rows of fc2^T: y += sum_j a[j] * WT[idx[j]] for j < k. WT is [ffn][d]. Zero activations (ReLU
 * outputs) are skipped: they contribute exactly nothing.
 */
export function gatherAxpyRows(
  WT: Float32Array,
  cols: number,
  idx: Int32Array,
  k: number,
  a: Float32Array,
  y: Float32Array,
): Float32Array {
  for (let j = 0; j < k; j++) {
    const aj = a[j];
    if (aj !== 0) axpy(aj, WT, idx[j] * cols, y, 0, cols);
  }
  return y;
}

/** Dense fc2 through its transposed layout: y += sum_r a[r] * WT[r] over all rows. */
export function axpyRows(WT: Float32Array, rows: number, cols: number, a: Float32Array, y: Float32Array): Float32Array {
  for (let r = 0; r < rows; r++) {
    const ar = a[r];
    if (ar !== 0) axpy(ar, WT, r * cols, y, 0, cols);
  }
  return y;
}


/**
 * Projection rows of the selected heads: for each head h in heads[0..k), out[h*hd + i] = W[h*hd + i] . x + b[h*hd+i]
 * (i < hd). Rows of unselected heads in `out` are left untouched. W is [d][d] (q, k or v projection).
 */
export function headRowsGemv(
  W: Float32Array,
  bias: Float32Array | undefined,
  d: number,
  hd: number,
  x: Float32Array,
  heads: Int32Array,
  k: number,
  out: Float32Array,
): Float32Array {
  for (let j = 0; j < k; j++) {
    const r0 = heads[j] * hd;
    // A head's rows are contiguous: one dense GEMV over the [hd][d] block.
    gemv(W.subarray(r0 * d, (r0 + hd) * d), hd, d, x, out.subarray(r0, r0 + hd), bias?.subarray(r0, r0 + hd));
  }
  return out;
}

/**
 * Single-query attention for the selected heads over T cached positions (the new token's K/V already written at
 * position T-1). Cache layout [maxLen][d] (runtime/cpu KVCache), head h at columns h*hd. q holds the (unscaled)
 * queries, head h at q[h*hd..]; out[h*hd..] gets the head's output, other heads' columns are left untouched.
 * `scores` is scratch of length >= T.
 */
export function attendHeads(
  q: Float32Array,
  kCache: Float32Array,
  vCache: Float32Array,
  T: number,
  d: number,
  hd: number,
  heads: Int32Array,
  k: number,
  scale: number,
  scores: Float32Array,
  out: Float32Array,
): Float32Array {
  for (let j = 0; j < k; j++) {
    const qOff = heads[j] * hd;
    // Scores, four positions per pass so each q value is loaded once for four keys; hd is short (32..128), so the
    // loops are written out rather than calling dot() per position.
    let t = 0;
    for (; t + 4 <= T; t += 4) {
      const k0 = t * d + qOff;
      const k1 = k0 + d;
      const k2 = k1 + d;
      const k3 = k2 + d;
      let s0 = 0,
        s1 = 0,
        s2 = 0,
        s3 = 0;
      for (let i = 0; i < hd; i++) {
        const qi = q[qOff + i];
        s0 += qi * kCache[k0 + i];
        s1 += qi * kCache[k1 + i];
        s2 += qi * kCache[k2 + i];
        s3 += qi * kCache[k3 + i];
      }
      scores[t] = s0 * scale;
      scores[t + 1] = s1 * scale;
      scores[t + 2] = s2 * scale;
      scores[t + 3] = s3 * scale;
    }
    for (; t < T; t++) scores[t] = dot(q, qOff, kCache, t * d + qOff, hd) * scale;
    let max = -Infinity;
    for (let t = 0; t < T; t++) if (scores[t] > max) max = scores[t];
    let sum = 0;
    for (let t = 0; t < T; t++) {
      const e = Math.exp(scores[t] - max);
      scores[t] = e;
      sum += e;
    }
    const inv = 1 / sum;
    // Weighted sum of values: eight output columns at a time held in registers across all positions (accumulating
    // into memory instead costs a load and a store per multiply-add).
    let i = 0;
    for (; i + 8 <= hd; i += 8) {
      let a0 = 0,
        a1 = 0,
        a2 = 0,
        a3 = 0,
        a4 = 0,
        a5 = 0,
        a6 = 0,
        a7 = 0;
      for (let t = 0; t < T; t++) {
        const p = scores[t];
        const vo = t * d + qOff + i;
        a0 += p * vCache[vo];
        a1 += p * vCache[vo + 1];
        a2 += p * vCache[vo + 2];
        a3 += p * vCache[vo + 3];
        a4 += p * vCache[vo + 4];
        a5 += p * vCache[vo + 5];
        a6 += p * vCache[vo + 6];
        a7 += p * vCache[vo + 7];
      }
      const o = qOff + i;
      out[o] = a0 * inv;
      out[o + 1] = a1 * inv;
      out[o + 2] = a2 * inv;
      out[o + 3] = a3 * inv;
      out[o + 4] = a4 * inv;
      out[o + 5] = a5 * inv;
      out[o + 6] = a6 * inv;
      out[o + 7] = a7 * inv;
    }
    for (; i < hd; i++) {
      let a = 0;
      for (let t = 0; t < T; t++) a += scores[t] * vCache[t * d + qOff + i];
      out[qOff + i] = a * inv;
    }
  }
  return out;
}


/**
 * attendHeads under KV policy "selected" (runtime/cuda k_attention's semantics): head h attends only over the
 * positions t < T with valid[h * maxLen + t] = 1, the positions where its K/V were computed; the others are masked
 * out of the softmax entirely. `valid` is one layer's [H][maxLen] flags; the caller marks the current position of
 * every head it runs, so a kept head always sees at least itself. `pos` is scratch of length >= T.
 */
export function attendHeadsMasked(
  q: Float32Array,
  kCache: Float32Array,
  vCache: Float32Array,
  T: number,
  d: number,
  hd: number,
  heads: Int32Array,
  k: number,
  scale: number,
  valid: Uint8Array,
  maxLen: number,
  scores: Float32Array,
  pos: Int32Array,
  out: Float32Array,
): Float32Array {
  for (let j = 0; j < k; j++) {
    const h = heads[j];
    const qOff = h * hd;
    const vb = h * maxLen;
    // The positions this head was computed at, then the same softmax-weighted sum as attendHeads over those only.
    let n = 0;
    for (let t = 0; t < T; t++) if (valid[vb + t]) pos[n++] = t;
    let max = -Infinity;
    for (let u = 0; u < n; u++) {
      const s = dot(q, qOff, kCache, pos[u] * d + qOff, hd) * scale;
      scores[u] = s;
      if (s > max) max = s;
    }
    let sum = 0;
    for (let u = 0; u < n; u++) {
      const e = Math.exp(scores[u] - max);
      scores[u] = e;
      sum += e;
    }
    const inv = n ? 1 / sum : 0;
    for (let i = 0; i < hd; i++) {
      let a = 0;
      for (let u = 0; u < n; u++) a += scores[u] * vCache[pos[u] * d + qOff + i];
      out[qOff + i] = a * inv;
    }
  }
  return out;
}

/**
 * out_proj contribution of the selected heads through oT = out_proj^T [d_in][d_out]: y += sum over the heads' input
 * columns c of headOut[c] * oT[c]. The caller adds the bias once.
 */
export function outProjHeads(
  oT: Float32Array,
  d: number,
  hd: number,
  headOut: Float32Array,
  heads: Int32Array,
  k: number,
  y: Float32Array,
): Float32Array {
  for (let j = 0; j < k; j++) {
    const c0 = heads[j] * hd;
    for (let c = c0; c < c0 + hd; c++) {
      const a = headOut[c];
      if (a !== 0) axpy(a, oT, c * d, y, 0, d);
    }
  }
  return y;
}

/** L2 norm of each head's slice of x (hd values per head): the oracle's head importance. */
export function headNorms(x: Float32Array, H: number, hd: number, out: Float32Array = new Float32Array(H)): Float32Array {
  for (let h = 0; h < H; h++) out[h] = Math.sqrt(dot(x, h * hd, x, h * hd, hd));
  return out;
}

/** An identity selection 0..n-1 (dense as a selection). */
export function allIndices(n: number): Int32Array {
  const a = new Int32Array(n);
  for (let i = 0; i < n; i++) a[i] = i;
  return a;
}

/**
 * Indices of the k largest scores, written to out[0..k) in ASCENDING INDEX order (sequential weight-row access).
 * Ties at the threshold go to the lower index, so the result is deterministic. NaN scores rank lowest.
 * O(n) expected: quickselect on a scratch copy finds the k-th largest value, then one pass collects.
 * `scratch` must have length >= n.
 */
export function topK(
  scores: Float32Array,
  n: number,
  k: number,
  out: Int32Array,
  scratch: Float32Array = new Float32Array(n),
): Int32Array {
  if (k <= 0) return out;
  if (k >= n) {
    for (let i = 0; i < n; i++) out[i] = i;
    return out;
  }
  for (let i = 0; i < n; i++) {
    const s = scores[i];
    scratch[i] = s === s ? s : -Infinity;
  }
  const thr = kthLargest(scratch, n, k);
  // Count strictly-greater values; the rest of the k slots go to values equal to thr, lowest index first.
  let greater = 0;
  for (let i = 0; i < n; i++) {
    const s = scores[i] === scores[i] ? scores[i] : -Infinity;
    if (s > thr) greater++;
  }
  let ties = k - greater;
  let j = 0;
  for (let i = 0; i < n && j < k; i++) {
    const s = scores[i] === scores[i] ? scores[i] : -Infinity;
    if (s > thr) out[j++] = i;
    else if (s === thr && ties > 0) {
      out[j++] = i;
      ties--;
    }
  }
  return out;
}

/**
 * Top-k split over `groups` equal groups of consecutive rows (the CUDA fused predictors' selection, docs/cuda.md v24):
 * group g holds rows [g*per, min(n, (g+1)*per)) with per = ceil(n / groups) and takes the top
 * floor(k*r1/n) - floor(k*r0/n) of its own rows, so the counts add up to k and follow the group sizes. Each block
 * of the GPU kernel selects its group alone, with no pass over all n scores. groups <= 1 is topK. Output in
 * ascending index order (groups are consecutive and each is sorted), ties to the lower index.
 */
export function groupedTopK(
  scores: Float32Array,
  n: number,
  k: number,
  groups: number,
  out: Int32Array,
  scratch: Float32Array = new Float32Array(n),
): Int32Array {
  if (groups <= 1 || k <= 0 || k >= n) return topK(scores, n, k, out, scratch);
  const per = Math.ceil(n / groups);
  for (let r0 = 0; r0 < n; r0 += per) {
    const r1 = Math.min(n, r0 + per);
    const o0 = Math.floor((k * r0) / n), o1 = Math.floor((k * r1) / n);
    if (o1 === o0) continue;
    const part = out.subarray(o0, o1);
    topK(scores.subarray(r0, r1), r1 - r0, o1 - o0, part, scratch);
    for (let j = 0; j < part.length; j++) part[j] += r0;
  }
  return out;
}

/** The k-th largest value of a[0..n) (1-based k), reordering a in place (Hoare-style quickselect). */
function kthLargest(a: Float32Array, n: number, k: number): number {
  let lo = 0;
  let hi = n - 1;
  const target = k - 1; // position in descending order
  while (lo < hi) {
    // Median of three as the pivot keeps sorted or constant inputs from going quadratic.
    const mid = (lo + hi) >>> 1;
    const p = median3(a[lo], a[mid], a[hi]);
    let i = lo;
    let j = hi;
    while (i <= j) {
      while (a[i] > p) i++;
      while (a[j] < p) j--;
      if (i <= j) {
        const t = a[i];
        a[i] = a[j];
        a[j] = t;
        i++;
        j--;
      }
    }
    if (target <= j) hi = j;
    else if (target >= i) lo = i;
    else return a[target];
  }
  return a[target];
}

function median3(a: number, b: number, c: number): number {
  if (a > b) [a, b] = [b, a];
  if (b > c) b = c;
  return a > b ? a : b;
}
