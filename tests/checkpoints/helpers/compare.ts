/** Array comparisons for tests: vitest's deep toEqual walks millions of elements slowly, these are plain loops. */

/** Index of the first element whose bits differ (NaN-safe), or -1 when the arrays are identical. */
export function firstBitDiff(a: Float32Array, b: Float32Array): number {
  if (a.length !== b.length) return Math.min(a.length, b.length);
  const ua = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const ub = new Uint32Array(b.buffer, b.byteOffset, b.length);
  for (let i = 0; i < ua.length; i++) if (ua[i] !== ub[i]) return i;
  return -1;
}

/** ||a-b||_2 / ||b||_2 over the whole tensor (b = reference), the project's "relative error". */
export function relErr(a: Float32Array, b: Float32Array): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    const d = a[i] - b[i];
    num += d * d;
    den += b[i] * b[i];
  }
  return Math.sqrt(num) / Math.sqrt(den);
}

/** Largest |a-b| / max(|b|, floor): an elementwise bound for rounding tolerances. */
export function maxRelDiff(a: Float32Array, b: Float32Array, floor: number): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]) / Math.max(Math.abs(b[i]), floor));
  return m;
}

import type { OptWeights } from '../../../checkpoints/types.js';

/** Every array of an OptWeights with a readable label, in a fixed order. */
export function weightArrays(w: OptWeights): [string, Float32Array][] {
  const out: [string, Float32Array][] = [
    ['embedTokens', w.embedTokens],
    ['embedPositions', w.embedPositions],
    ['lmHead', w.lmHead],
  ];
  if (w.projectIn) out.push(['projectIn', w.projectIn]);
  if (w.projectOut) out.push(['projectOut', w.projectOut]);
  if (w.finalLnW) out.push(['finalLnW', w.finalLnW]);
  if (w.finalLnB) out.push(['finalLnB', w.finalLnB]);
  w.layers.forEach((l, i) => {
    for (const [k, v] of Object.entries(l)) out.push([`layers.${i}.${k}`, v as Float32Array]);
  });
  return out;
}

/** Labels of arrays whose bits differ between two weight sets (empty when identical). */
export function diffWeights(a: OptWeights, b: OptWeights): string[] {
  const wa = weightArrays(a);
  const wb = new Map(weightArrays(b));
  const bad: string[] = [];
  if (wa.length !== wb.size) bad.push(`array count ${wa.length} vs ${wb.size}`);
  for (const [k, v] of wa) {
    const o = wb.get(k);
    if (!o || firstBitDiff(v, o) !== -1) bad.push(k);
  }
  return bad;
}
