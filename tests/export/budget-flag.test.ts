/** `--ppl-budget`: a percentage or a fraction below 1 (cli/commands/export.ts parseBudget). */
import { describe, expect, it } from 'vitest';
import { parseBudget } from '../../cli/commands/export.js';

describe('parseBudget', () => {
  it('reads 1% and 0.01 alike, and 0%', () => {
    expect(parseBudget('1%')).toBeCloseTo(0.01, 12);
    expect(parseBudget('0.01')).toBe(0.01);
    expect(parseBudget('2.5%')).toBeCloseTo(0.025, 12);
    expect(parseBudget('0%')).toBe(0);
  });
  it('refuses a bare number of 1 or more (1 would be 100%), negatives and text, naming the flag', () => {
    expect(() => parseBudget('1')).toThrow(/--ppl-budget.*ambiguous: write a percentage \(1%\)/);
    expect(() => parseBudget('-1%')).toThrow(/--ppl-budget/);
    expect(() => parseBudget('abc')).toThrow(/--ppl-budget/);
  });
});
