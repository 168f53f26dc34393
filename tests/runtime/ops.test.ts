/** The typed-array kernels against plain float64 loops. */
import { describe, expect, it } from 'vitest';
import { attention, gemm, gemv, gemvCols, gemvRows, headNorms, layerNorm, logSumExp, softmaxInPlace, transpose } from '../../runtime/cpu/ops.js';
import { randn, relErr } from './util.js';

function naiveLinear(X: Float32Array, W: Float32Array, b: Float32Array | undefined, T: number, nIn: number, nOut: number): number[] {
  const y: number[] = [];
  for (let t = 0; t < T; t++) for (let o = 0; o < nOut; o++) {
    let s = b ? b[o] : 0;
    for (let i = 0; i < nIn; i++) s += X[t * nIn + i] * W[o * nIn + i];
    y.push(s);
  }
  return y;
}

describe('ops', () => {
  it('gemm / gemv = X W^T + b (row counts not a multiple of 4, odd widths)', () => {
    const [T, nIn, nOut] = [7, 13, 9];
    const X = randn(T * nIn, 1);
    const W = randn(nOut * nIn, 2);
    const b = randn(nOut, 3);
    const Y = new Float32Array(T * nOut);
    gemm(X, W, b, T, nIn, nOut, Y);
    expect(relErr(Y, naiveLinear(X, W, b, T, nIn, nOut))).toBeLessThan(1e-6);
    const y = new Float32Array(nOut);
    gemv(X, W, undefined, nIn, nOut, y, 3 * nIn);
    expect(relErr(y, naiveLinear(X.subarray(3 * nIn, 4 * nIn), W, undefined, 1, nIn, nOut))).toBeLessThan(1e-6);
  });

  it('gemvRows computes only the selected outputs; gemvCols sums only the selected inputs', () => {
    const [nIn, nOut] = [11, 10];
    const x = randn(nIn, 4);
    const W = randn(nOut * nIn, 5);
    const b = randn(nOut, 6);
    const full = naiveLinear(x, W, b, 1, nIn, nOut);
    const rows = Int32Array.from([7, 2, 9]);
    const yr = new Float32Array(3);
    gemvRows(x, W, b, nIn, rows, 3, yr);
    expect(relErr(yr, [full[7], full[2], full[9]])).toBeLessThan(1e-6);

    const cols = Int32Array.from([0, 5, 8, 10]);
    const xs = Float32Array.from(cols, (c) => x[c]);
    const masked = new Float32Array(nIn);
    cols.forEach((c) => (masked[c] = x[c]));
    const y = new Float32Array(nOut);
    gemvCols(xs, transpose(W, nOut, nIn), b, nOut, cols, cols.length, y);
    expect(relErr(y, naiveLinear(masked, W, b, 1, nIn, nOut))).toBeLessThan(1e-6);
  });

  it('layerNorm, softmax and logSumExp', () => {
    const d = 6;
    const x = randn(2 * d, 7, 3);
    const w = randn(d, 8);
    const bb = randn(d, 9);
    const y = new Float32Array(2 * d);
    layerNorm(x, 2, d, w, bb, y);
    for (let t = 0; t < 2; t++) {
      const row = Array.from(x.subarray(t * d, (t + 1) * d));
      const m = row.reduce((a, v) => a + v, 0) / d;
      const v = row.reduce((a, u) => a + (u - m) ** 2, 0) / d;
      const want = row.map((u, i) => ((u - m) / Math.sqrt(v + 1e-5)) * w[i] + bb[i]);
      expect(relErr(y.subarray(t * d, (t + 1) * d), want)).toBeLessThan(1e-6);
    }
    const s = Float32Array.from([1000, 1001, 999]);
    expect(logSumExp(s, 0, 3)).toBeCloseTo(1000 + Math.log(1 + Math.E + 1 / Math.E), 4);
    softmaxInPlace(s, 0, 3);
    expect(s[0] + s[1] + s[2]).toBeCloseTo(1, 6);
    expect(s[1] / s[0]).toBeCloseTo(Math.E, 4);
  });

  it('attention: causal over a cache with past positions; a head subset leaves the other heads untouched', () => {
    const [H, hd, past, T] = [3, 4, 5, 3];
    const d = H * hd;
    const Q = randn(T * d, 10);
    const K = randn((past + T) * d, 11);
    const V = randn((past + T) * d, 12);
    const out = new Float32Array(T * d);
    attention(Q, K, V, T, past, H, hd, out, new Float32Array(past + T));
    const want: number[] = [];
    for (let t = 0; t < T; t++) for (let h = 0; h < H; h++) {
      const sc: number[] = [];
      for (let j = 0; j <= past + t; j++) {
        let s = 0;
        for (let c = 0; c < hd; c++) s += Q[t * d + h * hd + c] * K[j * d + h * hd + c];
        sc.push(s);
      }
      const m = Math.max(...sc);
      const e = sc.map((s) => Math.exp(s - m));
      const z = e.reduce((a, b) => a + b, 0);
      for (let c = 0; c < hd; c++) want.push(e.reduce((a, p, j) => a + (p / z) * V[j * d + h * hd + c], 0));
    }
    expect(relErr(out, want)).toBeLessThan(1e-6);
    const part = new Float32Array(T * d).fill(7);
    attention(Q, K, V, T, past, H, hd, part, new Float32Array(past + T), Int32Array.from([2]));
    for (let t = 0; t < T; t++) {
      expect(Array.from(part.subarray(t * d, t * d + 2 * hd))).toEqual(new Array(2 * hd).fill(7));
      expect(relErr(part.subarray(t * d + 2 * hd, (t + 1) * d), out.subarray(t * d + 2 * hd, (t + 1) * d))).toBeLessThan(1e-7);
    }
    const n = headNorms(out, T, H, hd);
    expect(n[1]).toBeCloseTo(Math.hypot(...out.subarray(hd, 2 * hd)), 5);
  });
});
