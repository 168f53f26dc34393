/**
 * The guard of train's output folder, run before any training: a folder holding an earlier run is continued only with
 * --resume and the same settings (checked against metrics.json and every job's checkpoint up front), replaced only
 * with --force, and otherwise refused, so no stale predictor of another run is left beside the new ones.
 */
import { existsSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { METRICS_FILE, predictorOfFileName } from '../common/contracts.js';
import { DejavuError, rethrowFs } from '../common/errors.js';
import { readCheckpointState, settingsMismatch } from './checkpoint.js';

/**
 * metrics.json `args` a resumed run may change: more epochs or patience extend training; the shards folder may have
 * moved (its model fingerprint is compared instead); `auto` only says how rank and batch were chosen (the numbers
 * themselves are compared, so `--rank auto` and the rank it chose written out are the same run).
 */
const MAY_CHANGE = new Set(['epochs', 'patience', 'shards', 'auto']);

/** What an earlier train run left in `out`: metrics.json, predictor files and checkpoints (names relative to out). */
export function earlierOutput(out: string): string[] {
  if (!existsSync(out)) return [];
  const found: string[] = [];
  for (const f of readdirSync(out).sort()) {
    if (f === METRICS_FILE || predictorOfFileName(f)) found.push(f);
  }
  const ck = join(out, 'checkpoints');
  if (existsSync(ck) && statSync(ck).isDirectory()) {
    for (const f of readdirSync(ck).sort()) if (predictorOfFileName(f)) found.push(`checkpoints/${f}`);
  }
  return found;
}

const short = (files: string[]) => (files.length > 4 ? `${files.slice(0, 4).join(', ')} and ${files.length - 4} more` : files.join(', '));

export interface GuardOptions {
  out: string;
  resume: boolean;
  force?: boolean;
  /** metrics.json `args` of this run (argsRecord). */
  args: Record<string, unknown>;
  fingerprint: string;
  /** Job name -> the settings key its checkpoint must carry. */
  keys: Map<string, string>;
}

/**
 * Checks (and with --force clears) the output folder before any training. Throws a DejavuError naming the folder or
 * file when the run would mix with an earlier one.
 */
export function guardOutput(o: GuardOptions): void {
  if (o.force && o.resume) throw new DejavuError('use --resume (continue the run in --out) or --force (start over), not both', '--force');
  if (existsSync(o.out) && !statSync(o.out).isDirectory()) throw new DejavuError('exists and is not a folder (--out names the output folder)', o.out);
  const found = earlierOutput(o.out);
  if (found.length === 0) return;
  if (o.force) {
    clearOutput(o.out, found);
    return;
  }
  if (!o.resume) {
    throw new DejavuError(
      `holds the output of an earlier train run (${short(found)}); use --resume to continue it with the same settings, ` +
        'or --force to delete those files and start over',
      o.out,
    );
  }
  checkResume(o, found);
}

/** --force: metrics.json first (the folder then reads as no finished run), then predictors and checkpoints. */
function clearOutput(out: string, found: string[]): void {
  const order = [...found].sort((a, b) => Number(b === METRICS_FILE) - Number(a === METRICS_FILE));
  for (const f of order) {
    try {
      rmSync(join(out, f), { force: true });
    } catch (e) {
      rethrowFs(e, join(out, f));
    }
  }
}

function checkResume(o: GuardOptions, found: string[]): void {
  const mpath = join(o.out, METRICS_FILE);
  if (existsSync(mpath)) {
    let m: { model_fingerprint?: unknown; args?: Record<string, unknown> };
    try {
      m = JSON.parse(readFileSync(mpath, 'utf8'));
    } catch (e) {
      throw new DejavuError(`invalid JSON (${(e as Error).message}); use --force to start over`, mpath);
    }
    if (typeof m.model_fingerprint === 'string' && m.model_fingerprint !== o.fingerprint) {
      throw new DejavuError(
        `was trained on shards of another model (fingerprint ${m.model_fingerprint.slice(0, 16)}…, these shards ${o.fingerprint.slice(0, 16)}…); use --force to start over`,
        mpath,
      );
    }
    if (m.args && typeof m.args === 'object') {
      const diff = Object.keys({ ...m.args, ...o.args })
        .filter((k) => !MAY_CHANGE.has(k) && JSON.stringify(m.args![k]) !== JSON.stringify(o.args[k]))
        .map((k) => `${k} ${JSON.stringify(m.args![k])} -> ${JSON.stringify(o.args[k])}`);
      if (diff.length) {
        throw new DejavuError(
          `was written with other settings (${diff.join(', ')}); --resume needs the same ones (only --epochs and --patience may change): rerun with them, or use --force to start over`,
          mpath,
        );
      }
    }
  }
  // Files of jobs this run does not plan would be left stale beside its own.
  const names = new Set(o.keys.keys());
  const foreign = found.filter((f) => f !== METRICS_FILE && !names.has(f.replace(/^checkpoints\//, '').replace(/\.safetensors$/, '')));
  if (foreign.length) {
    throw new DejavuError(
      `holds ${short(foreign)}, which this run does not train (other --layers or --target?); --resume needs the same settings, or use --force to start over`,
      o.out,
    );
  }
  for (const [name, key] of o.keys) {
    const state = readCheckpointState(o.out, name);
    if (state && state.key !== key) throw settingsMismatch(o.out, name, state.key, key);
  }
}
