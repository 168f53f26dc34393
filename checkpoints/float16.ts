/**
 * IEEE binary16 (fp16) and bfloat16 <-> fp32 conversion on raw bit patterns. Pure functions, no I/O.
 *
 * fp16 -> fp32 goes through a 65536-entry table (built once, 256 KiB): a table lookup is faster than bit surgery in a
 * loop over millions of weights, and it is exact by construction. fp32 -> fp16 and fp32 -> bf16 round to nearest,
 * ties to even (what torch's `.half()` / `.bfloat16()` do), so a round trip through our writers matches torch.
 */

// Scratch views for reinterpreting one float's bits without allocating.
const scratchF32 = new Float32Array(1);
const scratchU32 = new Uint32Array(scratchF32.buffer);

/** fp16 bits -> the exact fp32 value (every fp16 value is representable in fp32). */
export function f16BitsToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24; // zero or subnormal
  if (exp === 0x1f) {
    if (mant === 0) return sign * Infinity;
    // NaN: keep the payload (shifted into fp32's wider mantissa) so NaN bits survive a round trip.
    scratchU32[0] = ((h & 0x8000) << 16) | 0x7f800000 | (mant << 13);
    return scratchF32[0];
  }
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

let table: Float32Array | undefined;

/** The 65536-entry fp16 -> fp32 table, built on first use. */
export function f16Table(): Float32Array {
  if (!table) {
    table = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) table[h] = f16BitsToF32(h);
  }
  return table;
}

/** Convert fp16 bit patterns to fp32 (into `out` when given). */
export function f16ToF32(bits: Uint16Array, out: Float32Array = new Float32Array(bits.length)): Float32Array {
  const t = f16Table();
  // Copy through a Uint32 view of the table: copying bits avoids canonicalising NaN payloads via a float register.
  const tu = new Uint32Array(t.buffer);
  const ou = new Uint32Array(out.buffer, out.byteOffset, out.length);
  for (let i = 0; i < bits.length; i++) ou[i] = tu[bits[i]];
  return out;
}

/** fp32 bit pattern -> fp16 bits, round to nearest even; overflow -> Inf, NaN stays NaN (quiet, payload kept). */
export function f32BitsToF16(b: number): number {
  const sign = (b >>> 16) & 0x8000;
  const exp = (b >>> 23) & 0xff;
  const mant = b & 0x7fffff;
  if (exp === 0xff) return mant ? sign | 0x7e00 | (mant >>> 13) : sign | 0x7c00;
  const e = exp - 127 + 15; // rebias
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    // Result is an fp16 subnormal (or zero): value / 2^-24, with the implicit bit made explicit.
    const shift = 14 - e;
    if (shift > 24) return sign; // below half the smallest subnormal: rounds to (signed) zero
    const full = mant | 0x800000;
    const m = full >>> shift;
    const rem = full & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    // A carry out of the subnormal range lands exactly on the smallest normal (0x0400), which is correct.
    return sign | (rem > half || (rem === half && m & 1) ? m + 1 : m);
  }
  let h = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  // A carry out of the mantissa bumps the exponent; from the top exponent it lands on Inf (0x7c00), as it should.
  if (rem > 0x1000 || (rem === 0x1000 && h & 1)) h++;
  return sign | h;
}

/** One fp32 value -> fp16 bits (round to nearest even). */
export function f32ToF16Bits(x: number): number {
  scratchF32[0] = x;
  return f32BitsToF16(scratchU32[0]);
}

/** Convert fp32 values to fp16 bit patterns (round to nearest even). */
export function f32ToF16(src: Float32Array, out: Uint16Array = new Uint16Array(src.length)): Uint16Array {
  const su = new Uint32Array(src.buffer, src.byteOffset, src.length);
  for (let i = 0; i < src.length; i++) out[i] = f32BitsToF16(su[i]);
  return out;
}

/** bf16 is the top half of an fp32, so widening is a 16-bit shift of the bits. */
export function bf16ToF32(bits: Uint16Array, out: Float32Array = new Float32Array(bits.length)): Float32Array {
  const ou = new Uint32Array(out.buffer, out.byteOffset, out.length);
  for (let i = 0; i < bits.length; i++) ou[i] = bits[i] << 16;
  return out;
}

/** fp32 bit pattern -> bf16 bits, round to nearest even; NaN stays NaN (forced quiet so truncation cannot make Inf). */
export function f32BitsToBf16(b: number): number {
  if ((b & 0x7f800000) === 0x7f800000 && b & 0x7fffff) return ((b >>> 16) | 0x40) & 0xffff;
  const lsb = (b >>> 16) & 1;
  // b is at most 0xff800000 here, so the sum stays below 2^32 and >>> is exact.
  return ((b + 0x7fff + lsb) >>> 16) & 0xffff;
}

/** One fp32 value -> bf16 bits (round to nearest even). */
export function f32ToBf16Bits(x: number): number {
  scratchF32[0] = x;
  return f32BitsToBf16(scratchU32[0]);
}

/** Convert fp32 values to bf16 bit patterns (round to nearest even). */
export function f32ToBf16(src: Float32Array, out: Uint16Array = new Uint16Array(src.length)): Uint16Array {
  const su = new Uint32Array(src.buffer, src.byteOffset, src.length);
  for (let i = 0; i < src.length; i++) out[i] = f32BitsToBf16(su[i]);
  return out;
}
