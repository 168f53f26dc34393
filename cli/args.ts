/**
 * Number flags, parsed the same way by every command. Integers must be written as integers (`100`, not `1e2` or
 * `100.0`): a count written otherwise is more likely a mistake than a wish. Errors name the flag.
 */
import { DejavuError } from '../common/errors.js';

/** An integer written as digits, >= min (and <= max when given). */
export function parseIntFlag(value: string, flag: string, min = 1, max?: number): number {
  const s = value.trim();
  const n = Number(s);
  if (!/^\d+$/.test(s) || !Number.isSafeInteger(n) || n < min || (max !== undefined && n > max)) {
    const range = max === undefined ? `>= ${min}` : `in ${min}..${max}`;
    throw new DejavuError(`expected an integer ${range} written as digits, got '${value}'`, flag);
  }
  return n;
}

export interface NumberBounds {
  /** Inclusive lower bound. */
  min?: number;
  /** Exclusive lower bound (e.g. a learning rate: > 0). */
  above?: number;
  /** Inclusive upper bound. */
  max?: number;
}

/** A finite decimal number within bounds. */
export function parseNumberFlag(value: string, flag: string, b: NumberBounds = {}): number {
  const s = value.trim();
  const x = s === '' ? NaN : Number(s);
  const ok = Number.isFinite(x) && (b.min === undefined || x >= b.min) && (b.above === undefined || x > b.above) && (b.max === undefined || x <= b.max);
  if (!ok) {
    const lo = b.above !== undefined ? `> ${b.above}` : b.min !== undefined ? `>= ${b.min}` : '';
    const hi = b.max !== undefined ? `<= ${b.max}` : '';
    const range = [lo, hi].filter(Boolean).join(' and ');
    throw new DejavuError(`expected a number${range ? ` ${range}` : ''}, got '${value}'`, flag);
  }
  return x;
}

/** Commander option parsers (`.option('--rank <r>', '...', intArg('--rank'), 1000)`). */
export const intArg = (flag: string, min = 1, max?: number) => (v: string): number => parseIntFlag(v, flag, min, max);
export const numArg = (flag: string, b: NumberBounds = {}) => (v: string): number => parseNumberFlag(v, flag, b);
