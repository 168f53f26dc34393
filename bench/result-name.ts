/**
 * The file a benchmark's result is written to under bench/results/: `<bench>.json`, or `<bench>-<tag>.json` for a
 * named configuration ($DEJAVU_BENCH_TAG, e.g. `1thread`). No date in the name: rerunning a benchmark overwrites the
 * file the docs cite (the date is inside the JSON), so bench/results never accumulates superseded runs.
 */
import { DejavuError } from '../common/errors.js';

const TAG = /^[a-z0-9][a-z0-9.-]*$/;

export function resultFileName(bench: string, tag?: string): string {
  if (tag === undefined || tag === '') return `${bench}.json`;
  if (!TAG.test(tag)) throw new DejavuError(`'${tag}' is not a result tag (lower-case letters, digits, '.', '-')`, 'DEJAVU_BENCH_TAG');
  return `${bench}-${tag}.json`;
}
