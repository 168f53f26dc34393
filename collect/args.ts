/**
 * collect's arguments in canonical form. The same JSON object is stored in every shard's schema metadata
 * (`dejavu.collect_args`) and in the resume state, and two runs may share an output folder only when it is identical.
 * Flags that do not change the rows (--force, --json) are not part of it.
 */
import { statSync } from 'node:fs';
import { resolve } from 'node:path';
import { DejavuError } from '../common/errors.js';

export interface CollectArgs {
  /** Resolved data files in read order, with their sizes (a changed file changes the rows). */
  data: { path: string; bytes: number }[];
  docs: number | null;
  sample: number | null;
  seed: number | null;
  max_len: number;
  layers: number[];
  shard_tokens: number;
  mlp_topk: number;
  /** Rows per record batch (derived from the dims; recorded because it shapes the file bytes). */
  batch_rows: number;
}

export function dataEntries(files: string[]): CollectArgs['data'] {
  return files.map((f) => {
    const path = resolve(f);
    return { path, bytes: statSync(path).size };
  });
}

/** Names of the top-level keys whose values differ (for the "other arguments" refusal). */
export function diffArgs(a: CollectArgs, b: CollectArgs): string[] {
  const keys = new Set([...Object.keys(a), ...Object.keys(b)]) as Set<keyof CollectArgs>;
  return [...keys].filter((k) => JSON.stringify(a[k]) !== JSON.stringify(b[k]));
}

export function positiveInt(value: string, flag: string, min = 1): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < min) throw new DejavuError(`expected an integer >= ${min}, got '${value}'`, flag);
  return n;
}
