import { DejavuError } from '../common/errors.js';
import type { DocumentSelection } from './types.js';

/** mulberry32: a small, fast, well-mixed 32-bit PRNG; the same seed gives the same stream on every platform. */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * `k` distinct indices out of [0, n), uniformly at random for the given seed, sorted ascending. Floyd's algorithm:
 * k draws and a set of k entries, whatever n is (a shuffle would need memory proportional to n).
 */
export function sampleIndices(n: number, k: number, seed: number): number[] {
  const rand = mulberry32(seed);
  const m = Math.min(k, n);
  const chosen = new Set<number>();
  for (let j = n - m; j < n; j++) {
    const t = Math.floor(rand() * (j + 1));
    chosen.add(chosen.has(t) ? j : t);
  }
  return [...chosen].sort((a, b) => a - b);
}

/** Checks a selection and says which kind it is. `docs` and `sample` exclude each other. */
export function selectionKind(sel: DocumentSelection): 'all' | 'first' | 'sample' {
  const positiveInt = (v: number | undefined) => v === undefined || (Number.isInteger(v) && v >= 1);
  if (!positiveInt(sel.docs)) throw new DejavuError(`--docs must be an integer >= 1, got ${sel.docs}`, '--docs');
  if (!positiveInt(sel.sample)) throw new DejavuError(`--sample must be an integer >= 1, got ${sel.sample}`, '--sample');
  if (sel.seed !== undefined && !Number.isInteger(sel.seed)) throw new DejavuError(`--seed must be an integer, got ${sel.seed}`, '--seed');
  if (sel.docs !== undefined && sel.sample !== undefined) {
    throw new DejavuError('--docs and --sample exclude each other (first N documents, or a random sample of N)', '--sample');
  }
  if (sel.sample !== undefined) return 'sample';
  if (sel.docs !== undefined) return 'first';
  return 'all';
}
