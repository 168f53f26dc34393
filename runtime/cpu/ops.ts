/**
 * Typed-array kernels for the OPT forward pass: pure functions over row-major Float32Arrays, no allocation in the hot
 * loops, no I/O. The dense decode step and the JS prefill fallback use them; the sparse runtime reuses the gather
 * kernels (`gemvRows`, `gemvCols`). Weights follow PyTorch's nn.Linear layout: W is [out][in], y = x W^T + b.
 *
 * Accumulation is fp32 (like PyTorch on CPU); the dot products use four independent accumulators, which both breaks
 * the dependency chain for V8 and keeps the rounding close to a blocked BLAS.
 */

/** Dot product of a[aOff .. aOff+n) and b[bOff .. bOff+n). */
export function dot(a: Float32Array, aOff: number, b: Float32Array, bOff: number, n: number): number {
  let s0 = 0;
  let s1 = 0;
  let s2 = 0;
  let s3 = 0;
  let i = 0;
  const n4 = n - (n % 4);
  for (; i < n4; i += 4) {
    s0 += a[aOff + i] * b[bOff + i];
    s1 += a[aOff + i + 1] * b[bOff + i + 1];
    s2 += a[aOff + i + 2] * b[bOff + i + 2];
    s3 += a[aOff + i + 3] * b[bOff + i + 3];
  }
  for (; i < n; i++) s0 += a[aOff + i] * b[bOff + i];
  return s0 + s1 + (s2 + s3);
}

/**
 * y[o] = b[o] + x . W[o] for o < nOut: a matrix-vector product with W [nOut][nIn] (batch-1 decode).
 * `x` starts at xOff, `y` at yOff, so rows of larger buffers can be used without subarray(). Four output rows per
 * pass share each load of x (measured 2.8 vs 1.9 GFLOP/s for one row at a time, 8192 x 384).
 */
export function gemv(
  x: Float32Array,
  W: Float32Array,
  b: Float32Array | undefined,
  nIn: number,
  nOut: number,
  y: Float32Array,
  xOff = 0,
  yOff = 0,
): void {
  let o = 0;
  for (; o + 4 <= nOut; o += 4) {
    const w0 = o * nIn;
    const w1 = w0 + nIn;
    const w2 = w1 + nIn;
    const w3 = w2 + nIn;
    let s0 = 0;
    let s1 = 0;
    let s2 = 0;
    let s3 = 0;
    for (let i = 0; i < nIn; i++) {
      const xi = x[xOff + i];
      s0 += W[w0 + i] * xi;
      s1 += W[w1 + i] * xi;
      s2 += W[w2 + i] * xi;
      s3 += W[w3 + i] * xi;
    }
    y[yOff + o] = s0 + (b ? b[o] : 0);
    y[yOff + o + 1] = s1 + (b ? b[o + 1] : 0);
    y[yOff + o + 2] = s2 + (b ? b[o + 2] : 0);
    y[yOff + o + 3] = s3 + (b ? b[o + 3] : 0);
  }
  for (; o < nOut; o++) y[yOff + o] = dot(x, xOff, W, o * nIn, nIn) + (b ? b[o] : 0);
}

/**
 * Y [T][nOut] = X [T][nIn] W^T + b. Four rows of X share each pass over a row of W, so W streams through cache a
 * quarter as often as with T independent gemv calls.
 */
export function gemm(
  X: Float32Array,
  W: Float32Array,
  b: Float32Array | undefined,
  T: number,
  nIn: number,
  nOut: number,
  Y: Float32Array,
): void {
  let t = 0;
  for (; t + 4 <= T; t += 4) {
    const x0 = t * nIn;
    const x1 = x0 + nIn;
    const x2 = x1 + nIn;
    const x3 = x2 + nIn;
    for (let o = 0; o < nOut; o++) {
      const w = o * nIn;
      let s0 = 0;
      let s1 = 0;
      let s2 = 0;
      let s3 = 0;
      for (let i = 0; i < nIn; i++) {
        const wi = W[w + i];
        s0 += X[x0 + i] * wi;
        s1 += X[x1 + i] * wi;
        s2 += X[x2 + i] * wi;
        s3 += X[x3 + i] * wi;
      }
      const bo = b ? b[o] : 0;
      Y[t * nOut + o] = s0 + bo;
      Y[(t + 1) * nOut + o] = s1 + bo;
      Y[(t + 2) * nOut + o] = s2 + bo;
      Y[(t + 3) * nOut + o] = s3 + bo;
    }
  }
  for (; t < T; t++) gemv(X, W, b, nIn, nOut, Y, t * nIn, t * nOut);
}

/**
 * Row gather: y[r] = b[rows[r]] + x . W[rows[r]] for r < count. Computes only the selected outputs of a Linear
 * (e.g. the active fc1 neurons, or the q/k/v rows of the selected heads). Output is packed: y[r], not y[rows[r]].
 */
export function gemvRows(
  x: Float32Array,
  W: Float32Array,
  b: Float32Array | undefined,
  nIn: number,
  rows: Int32Array,
  count: number,
  y: Float32Array,
): void {
  for (let r = 0; r < count; r++) {
    const o = rows[r];
    y[r] = dot(x, 0, W, o * nIn, nIn) + (b ? b[o] : 0);
  }
}

/**
 * Column gather with W stored transposed, Wt [nIn][nOut] (row j = input j's column): y[o] = b[o] + sum_r
 * xs[r] * Wt[cols[r]][o]. The sparse MLP's fc2 (only active neurons contribute) and out_proj over the selected heads;
 * `xs` is packed (xs[r] belongs to input cols[r]). Reading whole rows of Wt keeps the access contiguous.
 */
export function gemvCols(
  xs: Float32Array,
  Wt: Float32Array,
  b: Float32Array | undefined,
  nOut: number,
  cols: Int32Array,
  count: number,
  y: Float32Array,
): void {
  if (b) y.set(b.subarray(0, nOut));
  else y.fill(0, 0, nOut);
  for (let r = 0; r < count; r++) {
    const a = xs[r];
    if (a === 0) continue;
    const w = cols[r] * nOut;
    for (let o = 0; o < nOut; o++) y[o] += a * Wt[w + o];
  }
}

/** [rows][cols] -> [cols][rows] (e.g. an nn.Linear weight [out][in] to [in][out]). */
export function transpose(W: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    const base = r * cols;
    for (let c = 0; c < cols; c++) out[c * rows + r] = W[base + c];
  }
  return out;
}

/**
 * LayerNorm over the last axis of X [T][d] (biased variance, as torch.nn.LayerNorm), written to Y (may alias X).
 * `w`/`b` absent = no elementwise affine. Mean and variance are accumulated in float64 (two passes): cheap next to the
 * matmuls and removes any doubt about cancellation in wide models.
 */
export function layerNorm(
  X: Float32Array,
  T: number,
  d: number,
  w: Float32Array | undefined,
  b: Float32Array | undefined,
  Y: Float32Array,
  eps = 1e-5,
): void {
  for (let t = 0; t < T; t++) {
    const o = t * d;
    let mean = 0;
    for (let i = 0; i < d; i++) mean += X[o + i];
    mean /= d;
    let v = 0;
    for (let i = 0; i < d; i++) {
      const c = X[o + i] - mean;
      v += c * c;
    }
    const inv = 1 / Math.sqrt(v / d + eps);
    for (let i = 0; i < d; i++) {
      const n = (X[o + i] - mean) * inv;
      Y[o + i] = w ? n * w[i] + (b ? b[i] : 0) : n;
    }
  }
}

/** In-place ReLU over x[0 .. n). */
export function reluInPlace(x: Float32Array, n = x.length): void {
  for (let i = 0; i < n; i++) if (!(x[i] > 0)) x[i] = 0;
}

/** a[i] += b[i] for i < n. */
export function addInPlace(a: Float32Array, b: Float32Array, n = a.length): void {
  for (let i = 0; i < n; i++) a[i] += b[i];
}

/** Numerically stable softmax of x[off .. off+n) in place. */
export function softmaxInPlace(x: Float32Array, off: number, n: number): void {
  let m = -Infinity;
  for (let i = 0; i < n; i++) if (x[off + i] > m) m = x[off + i];
  let s = 0;
  for (let i = 0; i < n; i++) {
    const e = Math.exp(x[off + i] - m);
    x[off + i] = e;
    s += e;
  }
  const inv = 1 / s;
  for (let i = 0; i < n; i++) x[off + i] *= inv;
}

/**
 * log-sum-exp of x[off .. off+n), in float64. The NLL of target y at a position is logSumExp(row) - row[y].
 */
export function logSumExp(x: Float32Array, off: number, n: number): number {
  let m = -Infinity;
  for (let i = 0; i < n; i++) if (x[off + i] > m) m = x[off + i];
  let s = 0;
  for (let i = 0; i < n; i++) s += Math.exp(x[off + i] - m);
  return m + Math.log(s);
}

/**
 * Causal multi-head attention of T new queries against a key/value history.
 * Q [T][d] (already scaled by 1/sqrt(headDim)); K, V [>= past+T][d] hold the `past` cached positions followed by the
 * T new ones; query t sits at absolute position past+t and sees keys 0 .. past+t. Out [T][d]: head h in columns
 * h*hd .. (h+1)*hd-1 (concatenated, before out_proj). `scores` is scratch of at least past+T floats.
 * `heads` (optional, packed list of `nHeads` head indices) restricts the work to those heads; the other heads' output
 * columns are left untouched (the sparse runtime zeroes or skips them).
 */
export function attention(
  Q: Float32Array,
  K: Float32Array,
  V: Float32Array,
  T: number,
  past: number,
  numHeads: number,
  headDim: number,
  Out: Float32Array,
  scores: Float32Array,
  heads?: Int32Array,
  nHeads = heads ? heads.length : numHeads,
): void {
  const d = numHeads * headDim;
  for (let t = 0; t < T; t++) {
    const n = past + t + 1;
    for (let hi = 0; hi < nHeads; hi++) {
      const h = heads ? heads[hi] : hi;
      const qo = t * d + h * headDim;
      for (let j = 0; j < n; j++) scores[j] = dot(Q, qo, K, j * d + h * headDim, headDim);
      softmaxInPlace(scores, 0, n);
      const oo = t * d + h * headDim;
      for (let c = 0; c < headDim; c++) Out[oo + c] = 0;
      for (let j = 0; j < n; j++) {
        const p = scores[j];
        const vo = j * d + h * headDim;
        for (let c = 0; c < headDim; c++) Out[oo + c] += p * V[vo + c];
      }
    }
  }
}

/** L2 norm of each head's slice of a [T][numHeads*headDim] head-output buffer: [T][numHeads] (collect's head_norm). */
export function headNorms(heads: Float32Array, T: number, numHeads: number, headDim: number): Float32Array {
  const out = new Float32Array(T * numHeads);
  const d = numHeads * headDim;
  for (let t = 0; t < T; t++) {
    for (let h = 0; h < numHeads; h++) {
      const o = t * d + h * headDim;
      out[t * numHeads + h] = Math.sqrt(dot(heads, o, heads, o, headDim));
    }
  }
  return out;
}
