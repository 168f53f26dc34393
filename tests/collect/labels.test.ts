import { describe, expect, it } from 'vitest';
import { headNorms, maskBytes, packActive, topK, unpackActive } from '../../collect/labels.js';

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

describe('packActive', () => {
  it('puts neuron 8i+j at bit j of byte i (LSB first)', () => {
    const act = new Float32Array(16);
    act[0] = 1; // byte 0 bit 0
    act[3] = 0.5; // byte 0 bit 3
    act[9] = 2; // byte 1 bit 1
    act[15] = 1e-30; // byte 1 bit 7: any positive value counts
    act[4] = -1; // negative: inactive
    const out = new Uint8Array(2);
    packActive(act, 1, 16, out);
    expect(Array.from(out)).toEqual([0b00001001, 0b10000010]);
  });

  it('matches a bit-by-bit reference for ffn not a multiple of 8, several rows, at an offset', () => {
    const r = rng(1);
    for (const ffn of [1, 7, 8, 9, 19, 64, 1536]) {
      const T = 5;
      const act = Float32Array.from({ length: T * ffn }, () => (r() < 0.3 ? r() : r() < 0.5 ? 0 : -r()));
      const nb = maskBytes(ffn);
      const out = new Uint8Array(3 + T * nb).fill(0xee);
      packActive(act, T, ffn, out, 3);
      expect(Array.from(out.subarray(0, 3))).toEqual([0xee, 0xee, 0xee]); // nothing before the offset touched
      for (let t = 0; t < T; t++) {
        const bits = unpackActive(out, ffn, 3 + t * nb);
        for (let n = 0; n < ffn; n++) expect(bits[n]).toBe(act[t * ffn + n] > 0 ? 1 : 0);
        // Padding bits of the last byte stay 0.
        if (ffn % 8) expect(out[3 + t * nb + nb - 1] >>> ffn % 8).toBe(0);
      }
    }
  });
});

describe('topK', () => {
  it('returns the K largest, descending, lower index first on ties', () => {
    const act = Float32Array.from([0, 3, 1, 3, 0, 5, 0, 0]);
    const vals = new Float32Array(4);
    const idx = new Int32Array(4);
    topK(act, 1, 8, 4, vals, idx);
    expect(Array.from(vals)).toEqual([5, 3, 3, 1]);
    expect(Array.from(idx)).toEqual([5, 1, 3, 2]);
    topK(Float32Array.from([0, 0, 0, 0, 0]), 1, 5, 3, vals, idx); // all equal: the first K indices
    expect(Array.from(idx.subarray(0, 3))).toEqual([0, 1, 2]);
  });

  it('agrees with a full sort on random rows', () => {
    const r = rng(7);
    const T = 6, ffn = 300, K = 17;
    const act = Float32Array.from({ length: T * ffn }, () => (r() < 0.2 ? r() : 0));
    const vals = new Float32Array((T + 1) * K);
    const idx = new Int32Array((T + 1) * K);
    topK(act, T, ffn, K, vals, idx, 1);
    for (let t = 0; t < T; t++) {
      const want = Array.from({ length: ffn }, (_, i) => i)
        .sort((a, b) => act[t * ffn + b] - act[t * ffn + a] || a - b)
        .slice(0, K);
      expect(Array.from(idx.subarray((t + 1) * K, (t + 2) * K))).toEqual(want);
      expect(Array.from(vals.subarray((t + 1) * K, (t + 2) * K))).toEqual(want.map((i) => act[t * ffn + i]));
    }
  });
});

describe('headNorms', () => {
  it('is the L2 norm of each head slice', () => {
    // T=2, H=2, headDim=2: rows [3,4 | 0,1] and [1,0 | 6,8]
    const heads = Float32Array.from([3, 4, 0, 1, 1, 0, 6, 8]);
    const out = new Float32Array(6);
    headNorms(heads, 2, 2, 2, out, 1);
    expect(Array.from(out)).toEqual([0, 0, 5, 1, 1, 10]);
  });
});
