/**
 * weights_sha256 and the model fingerprint built on it (checkpoints/weights-hash.ts, fingerprint.ts): one changed
 * weight changes the fingerprint but not the architecture part; the same tensors in another container or layout hash
 * the same; the cache is used (a hit does not re-hash), keyed by the files' metadata, and an unusable cache folder
 * (a file where it should be, a corrupt entry) never fails a load.
 */
import { readdirSync, readFileSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { fingerprintMismatch } from '../../checkpoints/fingerprint.js';
import { loadOptCheckpoint } from '../../checkpoints/opt-checkpoint.js';
import { cacheRoot, weightsCacheDir } from '../../checkpoints/weights-hash.js';
import { buildTorchZip, type BinTensor } from './helpers/pickle-writer.js';
import {
  encodeAs,
  removeTempDirs,
  tempDir,
  tinyConfigJson,
  tinyModel,
  writeConfig,
  writeSafetensorsFolder,
  writeShardedFolder,
  type ModelTensor,
  type TinyConfig,
} from './helpers/model-folder.js';

const CFG: TinyConfig = { vocab: 40, hidden: 16, proj: 16, heads: 2, layers: 2, ffn: 32, maxPos: 24, preLN: true, finalLN: true, lmHead: false };
const savedCache = process.env.DEJAVU_CACHE_DIR;
let cache: string;

beforeEach(() => {
  cache = tempDir('cache');
  process.env.DEJAVU_CACHE_DIR = cache;
});
afterEach(() => {
  if (savedCache === undefined) delete process.env.DEJAVU_CACHE_DIR;
  else process.env.DEJAVU_CACHE_DIR = savedCache;
});
afterAll(removeTempDirs);

function folder(label: string, write: (dir: string) => void, config = tinyConfigJson(CFG)): string {
  const dir = tempDir(label);
  writeConfig(dir, config);
  write(dir);
  return dir;
}

const load = (dir: string) => loadOptCheckpoint(dir, { quiet: true });

/** The model with one value of one tensor changed (an exactly representable step, so F16 keeps it). */
function withOneChange(t: ModelTensor[], name: string): ModelTensor[] {
  return t.map((x) => {
    if (x.name !== name) return x;
    const data = Float32Array.from(x.data);
    data[3] += 0.125;
    return { ...x, data };
  });
}

describe('weights_sha256 in the model fingerprint', () => {
  it('one changed weight: same architecture fingerprint, other weights_sha256 and fingerprint; a mismatch names both', async () => {
    const t = tinyModel(CFG);
    const a = await load(folder('a', (d) => writeSafetensorsFolder(d, t, 'F16')));
    const b = await load(folder('b', (d) => writeSafetensorsFolder(d, withOneChange(t, 'decoder.layers.1.fc2.weight'), 'F16')));
    expect(a.weightsSha256).toMatch(/^[0-9a-f]{64}$/);
    expect(b.architectureFingerprint).toBe(a.architectureFingerprint);
    expect(b.weightsSha256).not.toBe(a.weightsSha256);
    expect(b.fingerprint).not.toBe(a.fingerprint);
    // Loading again (from the cache) gives the same identity.
    expect((await load(a.dir)).fingerprint).toBe(a.fingerprint);

    const rec = { fingerprint: a.fingerprint, weightsSha256: a.weightsSha256, model: a.dir };
    expect(fingerprintMismatch('shards', rec, a, 'fix', 'rebuild')).toBeNull();
    const msg = fingerprintMismatch('shards', rec, b, 'use --force', 'rebuild');
    expect(msg).toBe(
      `shards for other weights: weights_sha256 ${a.weightsSha256.slice(0, 16)}… recorded here (model ${a.dir}), ` +
        `${b.weightsSha256.slice(0, 16)}… in ${b.dir}; use --force`,
    );
    // An artifact from before weights were hashed carries the architecture fingerprint alone: refused with the hint.
    expect(fingerprintMismatch('a bundle', { fingerprint: a.architectureFingerprint }, b, 'fix', 'rebuild it so')).toMatch(
      /^a bundle from before fingerprints covered the weights: model_fingerprint [0-9a-f]{16}… recorded here is .*'s architecture alone \(no weights_sha256\): the weights behind it are unknown; rebuild it so$/,
    );
    // A changed dtype with the same recorded weight bytes is another architecture.
    expect(fingerprintMismatch('shards', { fingerprint: 'f'.repeat(64), weightsSha256: b.weightsSha256 }, b, 'fix', 'x')).toMatch(
      /^shards for another architecture \(config or dtypes\): model_fingerprint f{16}… recorded here, [0-9a-f]{16}… for /,
    );
  });

  it('the same tensors in another container or layout hash the same: sharded safetensors, a strided pytorch_model.bin view', async () => {
    const t = tinyModel(CFG);
    const one = await load(folder('one', (d) => writeSafetensorsFolder(d, t, 'BF16')));
    const sharded = await load(folder('sh', (d) => writeShardedFolder(d, t, 'BF16', 3, '')));
    expect(sharded.weightsSha256).toBe(one.weightsSha256);
    expect(sharded.fingerprint).toBe(one.fingerprint);
    // fc1.weight [32][16] stored transposed and viewed with strides [1, 32]: its row-major bytes are what is hashed.
    const rec: Record<string, BinTensor> = {};
    t.forEach((x, i) => (rec[`model.${x.name}`] = { dtype: 'BF16', shape: x.shape, storage: encodeAs(x.data, 'BF16'), key: `s${i}` }));
    const fc1 = t.find((x) => x.name === 'decoder.layers.0.fc1.weight')!;
    const tr = new Float32Array(fc1.data.length);
    for (let o = 0; o < 32; o++) for (let i = 0; i < 16; i++) tr[i * 32 + o] = fc1.data[o * 16 + i];
    rec['model.decoder.layers.0.fc1.weight'] = { dtype: 'BF16', shape: [32, 16], stride: [1, 32], storage: encodeAs(tr, 'BF16'), key: 'tr' };
    const bin = await load(folder('bin', (d) => writeFileSync(join(d, 'pytorch_model.bin'), buildTorchZip(rec))));
    expect(bin.weightsSha256).toBe(one.weightsSha256);
    // Another dtype is other bytes (and another architecture fingerprint).
    const f32 = await load(folder('f32', (d) => writeSafetensorsFolder(d, t, 'F32')));
    expect(f32.weightsSha256).not.toBe(one.weightsSha256);
  });
});

describe('the weights hash cache', () => {
  it('is under DEJAVU_CACHE_DIR, else XDG_CACHE_HOME/dejavu, else ~/.cache/dejavu', () => {
    expect(cacheRoot({ DEJAVU_CACHE_DIR: '/c' })).toBe('/c');
    expect(cacheRoot({ XDG_CACHE_HOME: '/x' })).toBe('/x/dejavu');
    expect(cacheRoot({ XDG_CACHE_HOME: 'relative' })).toMatch(/\.cache\/dejavu$/); // the XDG spec ignores relative paths
    expect(cacheRoot({})).toMatch(/\.cache\/dejavu$/);
  });

  it('a hit is used without hashing; a changed file (mtime) misses and is hashed again', async () => {
    const dir = folder('hit', (d) => writeSafetensorsFolder(d, tinyModel(CFG), 'F16'));
    const first = await load(dir);
    const entries = readdirSync(weightsCacheDir()).filter((f) => f.endsWith('.json'));
    expect(entries).toHaveLength(1);
    const entryPath = join(weightsCacheDir(), entries[0]);
    const entry = JSON.parse(readFileSync(entryPath, 'utf8'));
    expect(entry.weights_sha256).toBe(first.weightsSha256);
    // A planted value comes back: the second load took the cache's word and did not hash the tensors.
    writeFileSync(entryPath, JSON.stringify({ ...entry, weights_sha256: 'c'.repeat(64) }));
    const second = await load(dir);
    expect(second.weightsSha256).toBe('c'.repeat(64));
    // Touching the weights file changes the key: hashed again, the true value.
    const later = new Date(Date.now() + 5000);
    utimesSync(join(dir, 'model.safetensors'), later, later);
    expect((await load(dir)).weightsSha256).toBe(first.weightsSha256);
  });

  it('an unusable cache folder never fails a load: a file where the folder should be, a file in place of weights/, a corrupt entry', async () => {
    const dir = folder('ro', (d) => writeSafetensorsFolder(d, tinyModel(CFG), 'F16'));
    const truth = (await load(dir)).weightsSha256;
    // A corrupt entry is ignored, then replaced.
    const entry = join(weightsCacheDir(), readdirSync(weightsCacheDir()).find((f) => f.endsWith('.json'))!);
    writeFileSync(entry, '{"format": "dejavu-weights-cache/1", "weights_sha');
    expect((await load(dir)).weightsSha256).toBe(truth);
    expect(JSON.parse(readFileSync(entry, 'utf8')).weights_sha256).toBe(truth);
    // The cache root is a file (mkdir fails with ENOTDIR/EEXIST): no caching, same result.
    const file = join(tempDir('cachefile'), 'not-a-folder');
    writeFileSync(file, 'x');
    process.env.DEJAVU_CACHE_DIR = file;
    expect((await load(dir)).weightsSha256).toBe(truth);
    expect(readFileSync(file, 'utf8')).toBe('x');
    // weights/ is a file inside a usable cache root.
    const root = tempDir('cacheroot');
    writeFileSync(join(root, 'weights'), 'y');
    process.env.DEJAVU_CACHE_DIR = root;
    expect((await load(dir)).weightsSha256).toBe(truth);
    expect(readdirSync(root)).toEqual(['weights']);
  });
});
