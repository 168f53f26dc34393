import { describe, expect, it } from 'vitest';
import { topKBits, labelBytes } from '../../train/data.js';
import { MetricsAccumulator, selectDescending, selectionScore } from '../../train/metrics.js';
import { f16Table } from '../../checkpoints/float16.js';
import { f32ToF16 } from '../../checkpoints/float16.js';
import { isValidationDoc, Rng, hashSeed } from '../../train/rng.js';

const pack = (rows: number[][], out: number): Uint8Array => {
  const lb = labelBytes(out);
  const b = new Uint8Array(rows.length * lb);
  rows.forEach((r, t) => r.forEach((j) => (b[t * lb + (j >>> 3)] |= 1 << (j & 7))));
  return b;
};

describe('metrics', () => {
  it('recall, precision, F1, active counts and k95/k99 on a hand-made example', () => {
    const out = 10;
    const acc = new MetricsAccumulator(out);
    // token 0: positives {0,1,2,3}; scores rank them 1st, 2nd, 3rd and 6th.
    // token 1: positives {9}; scored highest.
    const s0 = [0.9, 0.8, 0.7, 0.2, 0.6, 0.5, 0.1, 0.05, 0.3, 0.0];
    const s1 = [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.95];
    acc.add(Float32Array.from([...s0, ...s1]), pack([[0, 1, 2, 3], [9]], out), 2);
    const m = acc.result();
    // threshold 0.5: token 0 predicts {0,1,2,4,5} -> tp 3, fp 2, fn 1; token 1 predicts {9} -> tp 1.
    expect(m.recall).toBeCloseTo(4 / 5);
    expect(m.precision).toBeCloseTo(4 / 6);
    expect(m.f1).toBeCloseTo((2 * 0.8 * (4 / 6)) / (0.8 + 4 / 6));
    expect(m.true_active).toBeCloseTo(2.5);
    expect(m.predicted_active).toBeCloseTo(3);
    // token 0: ceil(0.95*4) = 4 positives needed -> down to score 0.2 -> 7 outputs (0.9,0.8,0.7,0.6,0.5,0.3,0.2);
    // token 1: 1 output. Mean over tokens = 4.
    expect(m.k95).toBeCloseTo(4);
    expect(m.k99).toBeCloseTo(4);
  });

  it('k95 < k99 when 95% of positives need fewer outputs', () => {
    const out = 40;
    const acc = new MetricsAccumulator(out);
    const scores = new Float32Array(out);
    const pos: number[] = [];
    for (let j = 0; j < 20; j++) {
      pos.push(j);
      scores[j] = 0.9 - j * 0.001; // 20 positives ranked first...
    }
    scores[19] = 0.01; // ...except the last, ranked below every negative
    for (let j = 20; j < out; j++) scores[j] = 0.5;
    acc.add(scores, pack([pos], out), 1);
    const m = acc.result();
    expect(m.k95).toBe(19); // ceil(0.95*20) = 19 positives: the first 19
    expect(m.k99).toBe(40); // all 20: everything
  });

  it('selectDescending returns the sorted-descending value at every index and partitions around it', () => {
    const rng = new Rng(11);
    for (const n of [1, 2, 3, 7, 64, 257]) {
      for (const kind of ['distinct', 'ties', 'nan']) {
        const a = Float32Array.from({ length: n }, () => {
          if (kind === 'nan' && rng.next() < 0.1) return NaN;
          return kind === 'ties' ? Math.floor(rng.next() * 4) / 4 : rng.next();
        });
        const want = Float32Array.from(a).sort().reverse(); // NaN first, as the accumulator's sort had it
        for (let k = 0; k < n; k++) {
          const b = Float32Array.from(a);
          const v = selectDescending(b, k, 0, n - 1);
          expect(Object.is(v, want[k]), `${kind} n ${n} k ${k}`).toBe(true);
          // a[0..k] are the k + 1 largest: as a multiset, the first k + 1 of the descending sort.
          expect([...b.subarray(0, k + 1)].sort().join()).toBe([...want.subarray(0, k + 1)].sort().join());
        }
      }
    }
  });

  it('k95 and k99 match the sort-based definition on random scores with ties', () => {
    const out = 300;
    const n = 40;
    const rng = new Rng(5);
    // Scores on a coarse grid, so many ties; ~40% positives.
    const scores = Float32Array.from({ length: n * out }, () => Math.round(rng.next() * 20) / 20);
    const rows = Array.from({ length: n }, () => Array.from({ length: out }, (_, j) => j).filter(() => rng.next() < 0.4));
    const acc = new MetricsAccumulator(out);
    acc.add(scores, pack(rows, out), n);
    const m = acc.result();
    let s95 = 0;
    let s99 = 0;
    for (let t = 0; t < n; t++) {
      const s = scores.subarray(t * out, (t + 1) * out);
      const sorted = Float32Array.from(rows[t], (j) => s[j]).sort().reverse();
      const P = rows[t].length;
      const k = (q: number) => s.filter((v) => v >= sorted[Math.ceil(q * P) - 1]).length;
      s95 += k(0.95);
      s99 += k(0.99);
    }
    expect(m.k95).toBeCloseTo(s95 / n, 9);
    expect(m.k99).toBeCloseTo(s99 / n, 9);
  });

  it('an all-positive predictor never beats a useful one under F-beta selection', () => {
    for (const p of [0.05, 0.1, 0.33]) {
      const allPos = selectionScore({ recall: 1, precision: p }, 2);
      const useful = selectionScore({ recall: 0.9, precision: Math.min(1, 3 * p) }, 2);
      expect(useful).toBeGreaterThan(allPos);
    }
    expect(selectionScore({ recall: 0, precision: 0 }, 2)).toBe(0);
  });
});

describe('labels and split', () => {
  it('topKBits picks the k largest head norms, ties to the lower index', () => {
    const t = f16Table();
    const norms = f32ToF16(Float32Array.from([1, 5, 3, 5, 0.5, 2]));
    const out = new Uint8Array(1);
    topKBits(norms, 0, 6, 2, t, out, 0, new Float32Array(6));
    expect(out[0]).toBe(0b001010); // heads 1 and 3
    topKBits(norms, 0, 6, 1, t, out, 0, new Float32Array(6));
    expect(out[0]).toBe(0b000010); // tie 5 = 5: head 1
    topKBits(norms, 0, 6, 4, t, out, 0, new Float32Array(6));
    expect(out[0]).toBe(0b101110);
  });

  it('the validation split is per document, seeded, and near the asked fraction', () => {
    const docs = Array.from({ length: 2000 }, (_, i) => i);
    const a = docs.filter((d) => isValidationDoc(d, 0, 0.1));
    const b = docs.filter((d) => isValidationDoc(d, 0, 0.1));
    const c = docs.filter((d) => isValidationDoc(d, 1, 0.1));
    expect(a).toEqual(b);
    expect(a).not.toEqual(c);
    expect(a.length).toBeGreaterThan(150);
    expect(a.length).toBeLessThan(250);
  });

  it('seeded RNG streams are reproducible and distinct', () => {
    const r1 = new Rng(hashSeed(3, 'epoch', 'layer_01.mlp', 0));
    const r2 = new Rng(hashSeed(3, 'epoch', 'layer_01.mlp', 0));
    const r3 = new Rng(hashSeed(3, 'epoch', 'layer_01.mlp', 1));
    const s = (r: Rng) => Array.from({ length: 5 }, () => r.next());
    const x = s(r1);
    expect(s(r2)).toEqual(x);
    expect(s(r3)).not.toEqual(x);
  });
});
