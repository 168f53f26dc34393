import { describe, expect, it } from 'vitest';
import {
  bf16ToF32,
  f16BitsToF32,
  f16Table,
  f16ToF32,
  f32ToBf16,
  f32ToBf16Bits,
  f32ToF16,
  f32ToF16Bits,
} from '../../checkpoints/float16.js';
import { rng } from './helpers/model-folder.js';

const all16 = () => Uint16Array.from({ length: 65536 }, (_, i) => i);
const isNaN16 = (h: number) => (h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0;
const isNaNbf = (h: number) => (h & 0x7f80) === 0x7f80 && (h & 0x7f) !== 0;

describe('fp16', () => {
  it('decodes known values, subnormals, signed zero, Inf and NaN', () => {
    const t = f16Table();
    expect(t[0x3c00]).toBe(1);
    expect(t[0xc000]).toBe(-2);
    expect(t[0x7bff]).toBe(65504); // largest finite
    expect(t[0x0001]).toBe(2 ** -24); // smallest subnormal
    expect(t[0x03ff]).toBe(1023 * 2 ** -24); // largest subnormal
    expect(t[0x0400]).toBe(2 ** -14); // smallest normal
    expect(Object.is(t[0x8000], -0)).toBe(true);
    expect(t[0x7c00]).toBe(Infinity);
    expect(t[0xfc00]).toBe(-Infinity);
    expect(Number.isNaN(t[0x7e00]) && Number.isNaN(t[0xfd01])).toBe(true);
    expect(t[0x3555]).toBeCloseTo(1 / 3, 3);
  });

  it('the table equals the formula for all 65536 bit patterns, and round-trips every one of them', () => {
    const bits = all16();
    const f = f16ToF32(bits);
    const back = f32ToF16(f);
    let mismatches = 0;
    for (let h = 0; h < 65536; h++) {
      const a = f16BitsToF32(h);
      if (!(Object.is(a, f[h]) || (Number.isNaN(a) && Number.isNaN(f[h])))) mismatches++;
      if (isNaN16(h) ? !isNaN16(back[h]) : back[h] !== h) mismatches++;
    }
    expect(mismatches).toBe(0);
  });

  it('rounds fp32 to the nearest fp16, ties to even (checked against a search over all finite halves)', () => {
    // Sorted finite non-negative halves: the reference answer is found by binary search, not bit tricks.
    const vals = Array.from({ length: 0x7c00 }, (_, h) => f16BitsToF32(h));
    const nearest = (x: number): number => {
      const ax = Math.abs(x);
      let lo = 0;
      let hi = vals.length - 1;
      if (ax >= 65520) return (x < 0 ? 0x8000 : 0) | 0x7c00; // >= max + half ulp rounds to Inf
      while (hi - lo > 1) {
        const mid = (lo + hi) >> 1;
        if (vals[mid] <= ax) lo = mid;
        else hi = mid;
      }
      const dl = ax - vals[lo];
      const dh = vals[hi] - ax;
      const h = dl < dh ? lo : dh < dl ? hi : lo % 2 === 0 ? lo : hi;
      return (x < 0 || Object.is(x, -0) ? 0x8000 : 0) | h;
    };
    const r = rng(7);
    const xs: number[] = [];
    // Exact midpoints between neighbours (ties), and points just off them.
    for (let h = 0; h < 0x7bff; h += 37) {
      const mid = (vals[h] + vals[h + 1]) / 2;
      xs.push(mid, -mid, Math.fround(mid * (1 + 2 ** -20)), Math.fround(mid * (1 - 2 ** -20)));
    }
    for (let i = 0; i < 100_000; i++) xs.push(Math.fround((r() - 0.5) * 2 ** (Math.floor(r() * 44) - 28)));
    xs.push(65504, 65519.99, 65520, 1e6, 2 ** -25, 2 ** -25 * 1.0001, 3 * 2 ** -26, 2 ** -26, 1e-10, -0, 0);
    let bad = 0;
    for (const x of xs) {
      const fx = Math.fround(x);
      if (f32ToF16Bits(fx) !== nearest(fx)) bad++;
    }
    expect(bad).toBe(0);
    expect(f32ToF16Bits(2 ** -25)).toBe(0); // tie between 0 and the smallest subnormal goes to even (0)
    expect(f32ToF16Bits(3 * 2 ** -25)).toBe(2); // tie between 1 and 2 subnormal ulps goes to 2
    expect(f32ToF16Bits(65520)).toBe(0x7c00);
    expect(f32ToF16Bits(Infinity)).toBe(0x7c00);
    expect(isNaN16(f32ToF16Bits(NaN))).toBe(true);
  });
});

describe('bf16', () => {
  it('widens exactly and round-trips all 65536 bit patterns (NaN stays NaN)', () => {
    const bits = all16();
    const f = bf16ToF32(bits);
    const back = f32ToBf16(f);
    const fu = new Uint32Array(f.buffer);
    let bad = 0;
    for (let h = 0; h < 65536; h++) {
      if (fu[h] !== h << 16 >>> 0) bad++;
      if (isNaNbf(h) ? !isNaNbf(back[h]) : back[h] !== h) bad++;
    }
    expect(bad).toBe(0);
    expect(f[0x3f80]).toBe(1);
    expect(f[0xff80]).toBe(-Infinity);
  });

  it('rounds fp32 to the nearest bf16, ties to even; NaN never becomes Inf', () => {
    const r = rng(11);
    const u = new Uint32Array(1);
    const f = new Float32Array(u.buffer);
    let bad = 0;
    for (let i = 0; i < 200_000; i++) {
      u[0] = Math.floor(r() * 2 ** 32);
      if (Number.isNaN(f[0]) || !Number.isFinite(f[0])) continue;
      const x = f[0];
      const b = f32ToBf16Bits(x);
      const lo = (u[0] >>> 16) & 0xffff; // truncation (toward zero in magnitude)
      const cand = [lo, (lo + 1) & 0xffff];
      // Rounding past the largest finite bf16 lands on Inf, which IEEE treats as 2^128 for the distance.
      const val = (h: number) => ((h & 0x7fff) === 0x7f80 ? (h & 0x8000 ? -1 : 1) * 2 ** 128 : bf16ToF32(Uint16Array.of(h))[0]);
      const d = cand.map((h) => Math.abs(val(h) - x));
      const want = d[0] < d[1] ? cand[0] : d[1] < d[0] ? cand[1] : cand[0] % 2 === 0 ? cand[0] : cand[1];
      if (b !== want) bad++;
    }
    expect(bad).toBe(0);
    expect(f32ToBf16Bits(1 + 2 ** -8)).toBe(0x3f80); // tie -> even (1.0)
    expect(f32ToBf16Bits(1 + 3 * 2 ** -8)).toBe(0x3f82); // tie -> even (up)
    u[0] = 0x7f800001; // signalling NaN with only a low payload bit: truncation alone would give Inf
    expect(isNaNbf(f32ToBf16Bits(f[0]))).toBe(true);
  });
});
