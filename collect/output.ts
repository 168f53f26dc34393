/**
 * The output folder: layout, resume state, refusal of foreign contents, lock, cleanup. Everything collect writes at
 * the top level goes through writeJsonAtomic; shards through ArrowFileWriter (temp + rename).
 *
 *   OUT/manifest.json            written once, when the collection is complete
 *   OUT/collect-state.json       resume record, rewritten after every finished shard
 *   OUT/layer_XX/shard_NNNNN.arrow
 */
import { createHash } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, readSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { writeJsonAtomic } from '../common/atomic.js';
import { layerDirName, layerOfDirName, shardFileName, shardIndexOfFileName, SHARD_MANIFEST_FILE } from '../common/contracts.js';
import { DejavuError } from '../common/errors.js';
import { acquireLock as takeLock } from '../common/lock.js';
import { fingerprintMismatch, type ModelIdentity } from '../checkpoints/fingerprint.js';
import { diffArgs, type CollectArgs } from './args.js';

export const STATE_FILE = 'collect-state.json';
export const LOCK_FILE = '.collect.lock';
const STATE_FORMAT = 'dejavu-collect-state/1';

export const shardPath = (out: string, layer: number, index: number) => join(out, layerDirName(layer), shardFileName(index));

export interface ShardRecord {
  index: number;
  rows: number;
  docs: number;
  first_doc: number;
  last_doc: number;
  /** Selected documents consumed (in reading order) once this shard is done: where the next shard starts. */
  consumed_end: number;
  /** File size per collected layer, in `args.layers` order. */
  bytes: number[];
  /** Hex SHA-256 of each layer's file, in `args.layers` order (absent in states written before checksums). */
  sha256?: string[];
}

export interface CollectState {
  format: string;
  model_fingerprint: string;
  /** Absent in folders written before weights were hashed (those are refused). */
  weights_sha256?: string;
  /** The model folder (resolved), named in messages. */
  model?: string;
  args: CollectArgs;
  shards: ShardRecord[];
  complete: boolean;
  /** Collection time summed over all runs that contributed shards. */
  seconds: number;
  /** Malformed lines/rows the reader skipped (set when complete). */
  skipped_lines?: number;
  skipped_examples?: string[];
  /** Lines/rows kept with characters replaced by U+FFFD (not UTF-8) (set when complete). */
  replaced_lines?: number;
  replaced_examples?: string[];
}

/** Create the folder and prove it is writable before any expensive work. */
export function ensureWritable(out: string): void {
  try {
    if (existsSync(out) && !statSync(out).isDirectory()) throw new Error('exists and is not a folder');
    mkdirSync(out, { recursive: true });
    const probe = join(out, `.probe.${process.pid}.tmp`);
    writeFileSync(probe, '');
    rmSync(probe);
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    throw new DejavuError(`cannot write the output folder (${err.code ?? err.message})`, out);
  }
}

function readJson(path: string): unknown {
  try {
    return JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    throw new DejavuError(`unreadable (${(e as Error).message}); use --force to start over`, path);
  }
}

const ours = (name: string) => name === STATE_FILE || name === SHARD_MANIFEST_FILE || name === LOCK_FILE || layerOfDirName(name) !== null;

/** Remove everything collect owns in `out` (for --force); other files are left alone. */
export function clearOutput(out: string): void {
  // The lock is this run's own (taken before).
  for (const name of readdirSync(out)) if (ours(name) && name !== LOCK_FILE) rmSync(join(out, name), { recursive: true, force: true });
}

/** A folder with no visible file but temp files (`.*.tmp`); false for anything else, a file included. */
function holdsNoShard(dir: string): boolean {
  try {
    return readdirSync(dir).every((n) => /^\..*\.tmp$/.test(n));
  } catch {
    return false;
  }
}

/**
 * Decide what an existing output folder means for this run: the state to resume from (null = start fresh), or a
 * refusal when it belongs to another model or other arguments (unless `force`, which clears it).
 */
export function openOutput(out: string, model: ModelIdentity, args: CollectArgs, force: boolean): CollectState | null {
  const statePath = join(out, STATE_FILE);
  const manifestPath = join(out, SHARD_MANIFEST_FILE);
  if (force) {
    clearOutput(out);
    return null;
  }
  let prev: { model_fingerprint?: unknown; weights_sha256?: unknown; model?: unknown; args?: unknown } | null = null;
  let from = statePath;
  if (existsSync(statePath)) prev = readJson(statePath) as CollectState;
  else if (existsSync(manifestPath)) {
    prev = readJson(manifestPath) as typeof prev;
    from = manifestPath;
  }
  if (!prev) {
    // Layer folders holding no finished shard (empty, or only temp files) are what a run stopped before its first
    // shard left when the state was written later than the folders: nothing to keep, nothing to refuse.
    const names = readdirSync(out).filter((n) => ours(n) && n !== LOCK_FILE);
    const leftovers = names.filter((n) => layerOfDirName(n) !== null && holdsNoShard(join(out, n)));
    const foreign = names.filter((n) => !leftovers.includes(n));
    if (foreign.length) {
      throw new DejavuError(`holds ${foreign.join(', ')} but no ${STATE_FILE}; use --force to replace them`, out);
    }
    for (const n of leftovers) rmSync(join(out, n), { recursive: true, force: true });
    return null;
  }
  const differs = fingerprintMismatch(
    'shards',
    { fingerprint: prev.model_fingerprint, weightsSha256: prev.weights_sha256, model: prev.model },
    model,
    'use --force to replace them, or another --out',
    'rebuild them with --force (or use another --out)',
  );
  if (differs) throw new DejavuError(differs, from);
  const differ = diffArgs(prev.args as CollectArgs, args);
  if (differ.length) {
    const show = (a: unknown, k: string) => JSON.stringify((a as Record<string, unknown>)?.[k]);
    throw new DejavuError(
      `was collected with other arguments (${differ.map((k) => `${k}: ${show(prev!.args, k)} there, ${show(args, k)} now`).join('; ')}); ` +
        'rerun with the same arguments to resume, --force to replace them, or another --out',
      out,
    );
  }
  if (from === manifestPath) return null; // a manifest without state (state deleted by hand): redo, same arguments
  const state = prev as CollectState;
  if (state.format !== STATE_FORMAT || !Array.isArray(state.shards)) {
    throw new DejavuError(`not a ${STATE_FORMAT} file; use --force to start over`, statePath);
  }
  return state;
}

/**
 * The finished prefix of `state.shards`: every layer's file present with the recorded size. A record from before
 * checksums gets them here, from the files (one read of those shards, once).
 */
export function finishedShards(out: string, state: CollectState): ShardRecord[] {
  const done: ShardRecord[] = [];
  for (const s of state.shards) {
    const ok = state.args.layers.every((l, i) => {
      const p = shardPath(out, l, s.index);
      return existsSync(p) && statSync(p).size === s.bytes[i];
    });
    if (!ok) break;
    done.push(s.sha256 ? s : { ...s, sha256: state.args.layers.map((l) => sha256OfFile(shardPath(out, l, s.index))) });
  }
  return done;
}

/** Hex SHA-256 of a file, read in 4 MiB pieces. */
export function sha256OfFile(path: string): string {
  const hash = createHash('sha256');
  const buf = Buffer.alloc(4 * 2 ** 20);
  const fd = openSync(path, 'r');
  try {
    for (let n; (n = readSync(fd, buf, 0, buf.length, null)) > 0; ) hash.update(buf.subarray(0, n));
  } finally {
    closeSync(fd);
  }
  return hash.digest('hex');
}

export function newState(model: ModelIdentity, args: CollectArgs): CollectState {
  return {
    format: STATE_FORMAT,
    model_fingerprint: model.fingerprint,
    weights_sha256: model.weightsSha256,
    model: resolve(model.dir),
    args,
    shards: [],
    complete: false,
    seconds: 0,
  };
}

export function saveState(out: string, state: CollectState): void {
  writeJsonAtomic(join(out, STATE_FILE), state);
}

/** Temp files of interrupted runs (hidden `.name.PID.tmp`) and shards past `fromIndex` (to be rewritten). */
export function removeStale(out: string, layers: number[], fromIndex: number): void {
  for (const name of readdirSync(out)) if (/^\..*\.tmp$/.test(name)) rmSync(join(out, name), { force: true });
  for (const l of layers) {
    const dir = join(out, layerDirName(l));
    if (!existsSync(dir)) continue;
    for (const name of readdirSync(dir)) {
      const index = shardIndexOfFileName(name);
      if (/^\..*\.tmp$/.test(name) || (index !== null && index >= fromIndex)) rmSync(join(dir, name), { force: true });
    }
  }
}

/** One writer per folder: a second collect on the same OUT would interleave shards (common/lock.ts). */
export function acquireLock(out: string): () => void {
  return takeLock(join(out, LOCK_FILE), { what: 'collect', folder: out });
}
