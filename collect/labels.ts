/**
 * The per-token labels collect derives from the runtime's hook arrays. Pure functions over row-major [T][...] arrays;
 * each writes into a caller-owned output at a row offset so rows go straight into a shard chunk without copies.
 */

/** Bytes of one token's `mlp_active` bitmask. */
export function maskBytes(ffn: number): number {
  return (ffn + 7) >>> 3;
}

/**
 * Bitmask of `act > 0` for T rows of `ffn` activations, least significant bit first: neuron 8*i + j is bit j of byte
 * i (numpy's `np.unpackbits(..., bitorder='little')`). Padding bits of the last byte are 0. Writes T rows of
 * maskBytes(ffn) bytes into `out` starting at byte `outOffset`.
 */
export function packActive(act: Float32Array, T: number, ffn: number, out: Uint8Array, outOffset = 0): void {
  const nb = maskBytes(ffn);
  const full = ffn >>> 3;
  for (let t = 0; t < T; t++) {
    const a = t * ffn;
    const o = outOffset + t * nb;
    for (let i = 0; i < full; i++) {
      const b = a + (i << 3);
      // Unrolled: this runs ffn/8 times per token per layer, the hottest loop of collect after the forward itself.
      out[o + i] =
        (act[b] > 0 ? 1 : 0) |
        (act[b + 1] > 0 ? 2 : 0) |
        (act[b + 2] > 0 ? 4 : 0) |
        (act[b + 3] > 0 ? 8 : 0) |
        (act[b + 4] > 0 ? 16 : 0) |
        (act[b + 5] > 0 ? 32 : 0) |
        (act[b + 6] > 0 ? 64 : 0) |
        (act[b + 7] > 0 ? 128 : 0);
    }
    if (full < nb) {
      let byte = 0;
      for (let j = 0; (full << 3) + j < ffn; j++) if (act[a + (full << 3) + j] > 0) byte |= 1 << j;
      out[o + full] = byte;
    }
  }
}

/** Inverse of packActive for one row: 0/1 per neuron (for tests and readers). */
export function unpackActive(bits: Uint8Array, ffn: number, offset = 0): Uint8Array {
  const out = new Uint8Array(ffn);
  for (let n = 0; n < ffn; n++) out[n] = (bits[offset + (n >>> 3)] >>> (n & 7)) & 1;
  return out;
}

/**
 * Top-K activations per row, largest first; ties keep the lower neuron index first (so the result is deterministic).
 * Writes K values (fp32) and K indices per row into `vals`/`idx` at row offset `rowOffset`.
 */
export function topK(
  act: Float32Array,
  T: number,
  ffn: number,
  K: number,
  vals: Float32Array,
  idx: Int32Array,
  rowOffset = 0,
): void {
  for (let t = 0; t < T; t++) {
    const a = t * ffn;
    const o = (rowOffset + t) * K;
    let n = 0; // filled entries, kept sorted descending in vals[o..o+n)
    for (let i = 0; i < ffn; i++) {
      const v = act[a + i];
      // Strict '>' against the current minimum: an equal later neuron never displaces an earlier one.
      if (n === K && !(v > vals[o + K - 1])) continue;
      let p = n < K ? n++ : K - 1;
      while (p > 0 && v > vals[o + p - 1]) {
        vals[o + p] = vals[o + p - 1];
        idx[o + p] = idx[o + p - 1];
        p--;
      }
      vals[o + p] = v;
      idx[o + p] = i;
    }
  }
}

/** L2 norm of each head's slice of T rows of concatenated head outputs [T][H*headDim], into `out` [T][H] at row offset. */
export function headNorms(
  heads: Float32Array,
  T: number,
  H: number,
  headDim: number,
  out: Float32Array,
  rowOffset = 0,
): void {
  const d = H * headDim;
  for (let t = 0; t < T; t++) {
    for (let h = 0; h < H; h++) {
      const b = t * d + h * headDim;
      let s = 0; // float64 accumulation: the norm is exact to fp32 before the fp16 rounding
      for (let c = 0; c < headDim; c++) s += heads[b + c] * heads[b + c];
      out[(rowOffset + t) * H + h] = Math.sqrt(s);
    }
  }
}
