import { describe, expect, it } from 'vitest';
import { collapsedRank, collapsePredictor } from '../../runtime/sparse/collapse.js';
import { predictorScores } from '../../runtime/sparse/predictor.js';

function rand(n: number, seed: number): Float32Array {
  let s = seed >>> 0;
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    a[i] = s / 2 ** 32 - 0.5;
  }
  return a;
}

describe('collapsePredictor: a rank above the output count becomes the same map at rank ~n', () => {
  const d = 24;
  for (const norm of ['none', 'layernorm'] as const) {
    it(`keeps the scores (input_norm ${norm}) and shrinks rank 32 to 16 for 12 outputs`, () => {
      const n = 12, rank = 32;
      const p = { w1f: rand(rank * d, 1), w2f: rand(n * rank, 2), rank };
      const c = collapsePredictor(p, n, d);
      expect(c.rank).toBe(16);
      expect(c.w1f.length).toBe(16 * d);
      expect(c.w2f.length).toBe(n * 16);
      for (let t = 0; t < 5; t++) {
        const x = rand(d, 10 + t);
        const ref = predictorScores({ ...p, out: n, input_norm: norm }, x, new Float32Array(d), new Float32Array(rank), new Float32Array(n));
        const got = predictorScores({ ...c, out: n, input_norm: norm }, x, new Float32Array(d), new Float32Array(16), new Float32Array(n));
        let num = 0, den = 0;
        for (let i = 0; i < n; i++) { num += (got[i] - ref[i]) ** 2; den += ref[i] ** 2; }
        expect(Math.sqrt(num / den)).toBeLessThan(1e-5);
      }
    });
  }

  it('leaves a predictor whose rank is at most n (rounded up to 8) as it is', () => {
    const p = { w1f: rand(16 * d, 3), w2f: rand(12 * 16, 4), rank: 16 };
    expect(collapsePredictor(p, 12, d)).toBe(p);
    const m = { w1f: rand(8 * d, 5), w2f: rand(100 * 8, 6), rank: 8 };
    expect(collapsePredictor(m, 100, d)).toBe(m);
    expect(collapsedRank(40)).toBe(40);
    expect(collapsedRank(12)).toBe(16);
  });

  it('refuses weights whose sizes do not match the rank', () => {
    expect(() => collapsePredictor({ w1f: rand(31 * d, 7), w2f: rand(12 * 32, 8), rank: 32 }, 12, d)).toThrow(/rank 32/);
  });
});
