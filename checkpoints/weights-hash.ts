/**
 * `weights_sha256`: the content hash of the weights a model computes with, the part of the model fingerprint that
 * binds shards, predictors and bundles to the weight values (fingerprint.ts holds the architecture part).
 *
 * It hashes tensor bytes, not file bytes: SHA-256 of each tensor the model reads, its bytes as stored (dtype,
 * little-endian, row-major), then SHA-256 of the sorted list of (canonical name, dtype, shape, tensor hash). So the
 * same weights in another container (one safetensors file, sharded safetensors, pytorch_model.bin, `model.` prefix
 * or not) give the same hash, as the architecture part already did, while one changed value changes it. Per-tensor
 * hashes make the result independent of the order the loader reads tensors in, so hashing rides on the one read
 * that loading does anyway: the files are streamed once.
 *
 * Hashing costs ~1-2 GB/s of one core (node:crypto), so the result is cached per weight files in the user's cache
 * folder, keyed by each file's real path, size, mtime, ctime and inode (model folders may be read-only, so never
 * beside the model). An unusable cache (missing, read-only, a file where the folder should be, a corrupt entry) only
 * means hashing without caching: it never fails a command.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, realpathSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { isAbsolute, join, resolve } from 'node:path';
import { threadId } from 'node:worker_threads';
import type { StDtype } from './safetensors.js';

const HASH_FORMAT = 'dejavu-weights/1';
const CACHE_FORMAT = 'dejavu-weights-cache/1';

/** The dejavu cache root: DEJAVU_CACHE_DIR, else $XDG_CACHE_HOME/dejavu, else ~/.cache/dejavu. */
export function cacheRoot(env: NodeJS.ProcessEnv = process.env): string {
  if (env.DEJAVU_CACHE_DIR) return env.DEJAVU_CACHE_DIR;
  const xdg = env.XDG_CACHE_HOME;
  // The XDG spec says a relative XDG_CACHE_HOME is invalid and must be ignored.
  return join(xdg && isAbsolute(xdg) ? xdg : join(homedir(), '.cache'), 'dejavu');
}

/** Where weights hashes are cached. */
export function weightsCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  return join(cacheRoot(env), 'weights');
}

export interface HashedTensor {
  /** Canonical name (no `model.` prefix). */
  name: string;
  dtype: StDtype;
  shape: number[];
  /** Hex SHA-256 of the tensor's stored bytes. */
  sha256: string;
}

export function tensorSha256(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/** Combine per-tensor hashes (any order) into weights_sha256. */
export function combineTensorHashes(tensors: HashedTensor[]): string {
  const list = [...tensors]
    .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
    .map((t) => [t.name, t.dtype, t.shape, t.sha256]);
  return createHash('sha256').update(JSON.stringify({ format: HASH_FORMAT, tensors: list })).digest('hex');
}

/**
 * The cache key of a set of weight files and the tensors read from them, or null when a file cannot be stat'ed
 * (then there is no caching). Stored names are part of it because config.json decides which tensors are read.
 */
export function weightsCacheKey(files: string[], storedNames: string[]): string | null {
  try {
    const stats = [...new Set(files.map((f) => realpathSync(f)))].sort().map((p) => {
      const s = statSync(p, { bigint: true });
      return [p, String(s.size), String(s.mtimeNs), String(s.ctimeNs), String(s.ino)];
    });
    const key = JSON.stringify({ format: CACHE_FORMAT, files: stats, tensors: [...storedNames].sort() });
    return createHash('sha256').update(key).digest('hex');
  } catch {
    return null;
  }
}

/** The cached weights_sha256 for `key`, or undefined (no entry, unreadable, or not a hash). */
export function readCachedWeightsHash(key: string | null, dir = weightsCacheDir()): string | undefined {
  if (!key) return undefined;
  try {
    const e = JSON.parse(readFileSync(join(dir, `${key}.json`), 'utf8')) as { format?: unknown; key?: unknown; weights_sha256?: unknown };
    if (e.format !== CACHE_FORMAT || e.key !== key || typeof e.weights_sha256 !== 'string') return undefined;
    return /^[0-9a-f]{64}$/.test(e.weights_sha256) ? e.weights_sha256 : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Record a hash; false when the cache folder cannot take it (read-only, full, a file in the way). The entry is
 * renamed into place from a name unique to this thread, so collect's worker threads may write it together.
 */
export function writeCachedWeightsHash(key: string | null, sha256: string, files: string[], dir = weightsCacheDir()): boolean {
  if (!key) return false;
  const final = join(dir, `${key}.json`);
  const tmp = join(dir, `.${key}.${process.pid}.${threadId}.${randomBytes(4).toString('hex')}.tmp`);
  try {
    mkdirSync(dir, { recursive: true });
    writeFileSync(tmp, JSON.stringify({ format: CACHE_FORMAT, key, weights_sha256: sha256, files: files.map((f) => resolve(f)) }) + '\n');
    renameSync(tmp, final);
    return true;
  } catch {
    try {
      rmSync(tmp, { force: true });
    } catch {
      // the folder itself is unusable; nothing was left behind
    }
    return false;
  }
}
