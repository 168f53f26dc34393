import { describe, expect, it } from 'vitest';
import {
  allIndices,
  attendHeads,
  gatherAxpyRows,
  gatherGemvRelu,
  gemv,
  headNorms,
  headRowsGemv,
  outProjHeads,
  groupedTopK,
  topK,
  transpose,
} from '../../runtime/sparse/kernels.js';

/** Seeded uniform(-1, 1) values (mulberry32) so failures reproduce. */
function rand(n: number, seed: number): Float32Array {
  let s = seed >>> 0;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    out[i] = ((t ^ (t >>> 14)) >>> 0) / 2 ** 31 - 1;
  }
  return out;
}

function relErr(a: Float32Array, b: Float32Array): number {
  let num = 0,
    den = 0;
  for (let i = 0; i < b.length; i++) {
    num += (a[i] - b[i]) ** 2;
    den += b[i] ** 2;
  }
  return Math.sqrt(num / den);
}

/** Naive dense references, written independently of the kernels (plain nested loops, float64 sums). */
function refLinear(W: Float32Array, rows: number, cols: number, x: Float32Array, b?: Float32Array): Float32Array {
  const y = new Float32Array(rows);
  for (let r = 0; r < rows; r++) {
    let s = b ? b[r] : 0;
    for (let c = 0; c < cols; c++) s += W[r * cols + c] * x[c];
    y[r] = s;
  }
  return y;
}

function pickSorted(n: number, k: number, seed: number): Int32Array {
  const r = rand(n, seed);
  const order = Array.from({ length: n }, (_, i) => i).sort((a, b) => r[a] - r[b]);
  return Int32Array.from(order.slice(0, k).sort((a, b) => a - b));
}

describe('sparse kernels vs dense reference', () => {
  const d = 48,
    ffn = 200;

  it('gathered fc1 + gathered fc2^T equals the dense MLP with the other neurons zeroed', () => {
    const W1 = rand(ffn * d, 1),
      b1 = rand(ffn, 2),
      W2 = rand(d * ffn, 3),
      x = rand(d, 4);
    const idx = pickSorted(ffn, 37, 5);
    // Reference: dense fc1, relu, zero the unselected neurons, dense fc2.
    const h = refLinear(W1, ffn, d, x, b1).map((v) => Math.max(v, 0));
    const keep = new Set(idx);
    for (let i = 0; i < ffn; i++) if (!keep.has(i)) h[i] = 0;
    const yRef = refLinear(W2, d, ffn, h);

    const a = gatherGemvRelu(W1, d, x, idx, idx.length, b1, new Float32Array(idx.length));
    for (let j = 0; j < idx.length; j++) expect(a[j]).toBeCloseTo(h[idx[j]], 5);
    const y = gatherAxpyRows(transpose(W2, d, ffn), d, idx, idx.length, a, new Float32Array(d));
    expect(relErr(y, yRef)).toBeLessThan(1e-6);
  });

  it('all neurons selected reproduces the dense MLP exactly up to rounding', () => {
    const W1 = rand(ffn * d, 11),
      b1 = rand(ffn, 12),
      W2 = rand(d * ffn, 13),
      x = rand(d, 14);
    const yRef = refLinear(W2, d, ffn, refLinear(W1, ffn, d, x, b1).map((v) => Math.max(v, 0)));
    const idx = allIndices(ffn);
    const a = gatherGemvRelu(W1, d, x, idx, ffn, b1, new Float32Array(ffn));
    const y = gatherAxpyRows(transpose(W2, d, ffn), d, idx, ffn, a, new Float32Array(d));
    expect(relErr(y, yRef)).toBeLessThan(1e-6);
    expect(relErr(gemv(W1, ffn, d, x, new Float32Array(ffn), b1), refLinear(W1, ffn, d, x, b1))).toBeLessThan(1e-6);
  });

  it('attention restricted to selected heads matches dense attention on those heads, others untouched', () => {
    const H = 6,
      hd = 8,
      dm = H * hd,
      T = 13,
      maxT = 20;
    const Wq = rand(dm * dm, 21),
      bq = rand(dm, 22),
      Wo = rand(dm * dm, 23),
      x = rand(dm, 24);
    const kc = rand(maxT * dm, 25),
      vc = rand(maxT * dm, 26);
    const heads = Int32Array.from([1, 4, 5]);
    const scale = 1 / Math.sqrt(hd);

    const qRef = refLinear(Wq, dm, dm, x, bq);
    const q = new Float32Array(dm).fill(123);
    headRowsGemv(Wq, bq, dm, hd, x, heads, heads.length, q);
    for (let h = 0; h < H; h++)
      for (let i = 0; i < hd; i++) {
        const c = h * hd + i;
        if (heads.includes(h)) expect(q[c]).toBeCloseTo(qRef[c], 5);
        else expect(q[c]).toBe(123);
      }

    // Dense reference attention per head, then zero unselected heads, then dense out_proj.
    const oRef = new Float32Array(dm);
    for (const h of heads) {
      const s: number[] = [];
      for (let t = 0; t < T; t++) {
        let v = 0;
        for (let i = 0; i < hd; i++) v += qRef[h * hd + i] * kc[t * dm + h * hd + i];
        s.push(v * scale);
      }
      const m = Math.max(...s);
      const e = s.map((v) => Math.exp(v - m));
      const z = e.reduce((p, c) => p + c, 0);
      for (let i = 0; i < hd; i++) {
        let v = 0;
        for (let t = 0; t < T; t++) v += (e[t] / z) * vc[t * dm + h * hd + i];
        oRef[h * hd + i] = v;
      }
    }
    const yRef = refLinear(Wo, dm, dm, oRef);

    const o = attendHeads(q, kc, vc, T, dm, hd, heads, heads.length, scale, new Float32Array(T), new Float32Array(dm));
    for (const h of heads) for (let i = 0; i < hd; i++) expect(o[h * hd + i]).toBeCloseTo(oRef[h * hd + i], 5);
    const y = outProjHeads(transpose(Wo, dm, dm), dm, hd, o, heads, heads.length, new Float32Array(dm));
    expect(relErr(y, yRef)).toBeLessThan(1e-5);
    const n = headNorms(oRef, H, hd);
    expect(n[0]).toBe(0);
    expect(n[1]).toBeGreaterThan(0);
  });
});

describe('topK', () => {
  it('returns the k largest in ascending index order, matching a full sort', () => {
    for (const [n, k, seed] of [
      [1536, 154, 1],
      [100, 1, 2],
      [100, 99, 3],
      [12, 6, 4],
      [7, 7, 5],
    ]) {
      const s = rand(n, seed);
      const got = Array.from(topK(s, n, k, new Int32Array(k)));
      const want = Array.from({ length: n }, (_, i) => i)
        .sort((a, b) => s[b] - s[a] || a - b)
        .slice(0, k)
        .sort((a, b) => a - b);
      expect(got).toEqual(want);
    }
  });

  it('breaks ties toward the lower index and ranks NaN lowest', () => {
    const s = Float32Array.from([1, 2, 2, 2, 0, NaN, 2]);
    expect(Array.from(topK(s, 7, 3, new Int32Array(3)))).toEqual([1, 2, 3]);
    const c = new Float32Array(50).fill(0.5);
    expect(Array.from(topK(c, 50, 4, new Int32Array(4)))).toEqual([0, 1, 2, 3]);
    const nan = Float32Array.from([NaN, -5, NaN]);
    expect(Array.from(topK(nan, 3, 1, new Int32Array(1)))).toEqual([1]);
  });
});

describe('groupedTopK', () => {
  // Reference written from the definition: group g = rows [g*per, ..), per = ceil(n/G), count floor(k*r1/n) - floor(k*r0/n).
  const ref = (s: Float32Array, n: number, k: number, G: number): number[] => {
    const per = Math.ceil(n / G);
    const out: number[] = [];
    for (let r0 = 0; r0 < n; r0 += per) {
      const r1 = Math.min(n, r0 + per);
      const c = Math.floor((k * r1) / n) - Math.floor((k * r0) / n);
      const idx = Array.from({ length: r1 - r0 }, (_, i) => r0 + i).sort((a, b) => s[b] - s[a] || a - b);
      out.push(...idx.slice(0, c).sort((a, b) => a - b));
    }
    return out;
  };
  it('takes each group\'s share of k from its own rows, in ascending index order', () => {
    for (const [n, k, G, seed] of [
      [20480, 1024, 128, 1],
      [1536, 77, 10, 2],
      [1536, 77, 7, 3],
      [100, 9, 8, 4],
      [10, 3, 16, 5],
    ]) {
      const s = rand(n, seed);
      const got = Array.from(groupedTopK(s, n, k, G, new Int32Array(k)));
      expect(got).toEqual(ref(s, n, k, G));
      expect(got.length).toBe(k);
      for (let i = 1; i < k; i++) expect(got[i]).toBeGreaterThan(got[i - 1]);
    }
  });
  it('differs from the global top-k when the large scores crowd one group; G = 1 is the global top-k', () => {
    const s = Float32Array.from([9, 8, 7, 6, 1, 2, 3, 4]);
    expect(Array.from(groupedTopK(s, 8, 4, 2, new Int32Array(4)))).toEqual([0, 1, 6, 7]);
    expect(Array.from(groupedTopK(s, 8, 4, 1, new Int32Array(4)))).toEqual([0, 1, 2, 3]);
  });
});
