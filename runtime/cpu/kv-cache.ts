/**
 * The per-layer key/value history of one sequence. `k[l]` and `v[l]` are [maxLen][d] fp32, row p = position p (keys
 * after k_proj, values after v_proj, unscaled); rows 0 .. length-1 are valid. One cache belongs to one sequence.
 */
export interface KVCache {
  /** Number of cached positions (the next token's position index). */
  length: number;
  readonly maxLen: number;
  readonly d: number;
  readonly k: Float32Array[];
  readonly v: Float32Array[];
}

export function newKVCache(numLayers: number, d: number, maxLen: number): KVCache {
  const k: Float32Array[] = [];
  const v: Float32Array[] = [];
  for (let l = 0; l < numLayers; l++) {
    k.push(new Float32Array(maxLen * d));
    v.push(new Float32Array(maxLen * d));
  }
  return { length: 0, maxLen, d, k, v };
}
