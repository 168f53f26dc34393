import { describe, expect, it } from 'vitest';
import { DejavuError } from '../../common/errors.js';
import { mulberry32, sampleIndices, selectionKind } from '../../datasets/select.js';

describe('seeded sampling', () => {
  it('mulberry32 is reproducible per seed and stays in [0, 1)', () => {
    const a = mulberry32(42);
    const b = mulberry32(42);
    const c = mulberry32(43);
    const xs = Array.from({ length: 1000 }, () => a());
    expect(Array.from({ length: 1000 }, () => b())).toEqual(xs);
    expect(Array.from({ length: 1000 }, () => c())).not.toEqual(xs);
    expect(Math.min(...xs)).toBeGreaterThanOrEqual(0);
    expect(Math.max(...xs)).toBeLessThan(1);
  });

  it('sampleIndices: k distinct sorted indices in range, reproducible, different across seeds', () => {
    const s = sampleIndices(1_000_000, 50, 7);
    expect(s.length).toBe(50);
    expect(new Set(s).size).toBe(50);
    expect([...s].sort((x, y) => x - y)).toEqual(s);
    expect(s[0]).toBeGreaterThanOrEqual(0);
    expect(s[49]).toBeLessThan(1_000_000);
    expect(sampleIndices(1_000_000, 50, 7)).toEqual(s);
    expect(sampleIndices(1_000_000, 50, 8)).not.toEqual(s);
    expect(sampleIndices(5, 10, 1)).toEqual([0, 1, 2, 3, 4]);
    expect(sampleIndices(5, 5, 1)).toEqual([0, 1, 2, 3, 4]);
  });

  it('sampleIndices is uniform: over 4000 seeds every one of 20 indices is drawn about k/n of the time', () => {
    const n = 20;
    const k = 5;
    const counts = new Array<number>(n).fill(0);
    for (let seed = 0; seed < 4000; seed++) for (const i of sampleIndices(n, k, seed)) counts[i]++;
    // expected 1000 each; binomial sd ~27
    for (const c of counts) expect(Math.abs(c - 1000)).toBeLessThan(130);
  });

  it('selectionKind validates and classifies', () => {
    expect(selectionKind({})).toBe('all');
    expect(selectionKind({ docs: 3 })).toBe('first');
    expect(selectionKind({ sample: 3, seed: 1 })).toBe('sample');
    expect(() => selectionKind({ docs: 3, sample: 2 })).toThrow(DejavuError);
    expect(() => selectionKind({ docs: 0 })).toThrow(/--docs must be an integer >= 1/);
    expect(() => selectionKind({ sample: 1.5 })).toThrow(/--sample/);
    expect(() => selectionKind({ sample: 2, seed: 0.5 })).toThrow(/--seed/);
  });
});
