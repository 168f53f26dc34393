/**
 * Shards, predictors and bundles are bound to the weights, not only to the architecture (issue 28 D3): a checkpoint
 * of the same architecture with one changed weight may not resume another model's collect, export its predictors or
 * load its bundle; artifacts written before weights were hashed are refused with how to rebuild them.
 */
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadOptCheckpoint } from '../../checkpoints/opt-checkpoint.js';
import { writeSafetensors } from '../../checkpoints/safetensors.js';
import type { OptCheckpoint } from '../../checkpoints/types.js';
import { collect } from '../../collect/collect.js';
import { loadBundle } from '../../export/bundle.js';
import { exportBundle } from '../../export/export.js';
import { REPO_ROOT } from '../helpers/fixtures.js';
import { treeSnapshot } from '../helpers/tree.js';

const EXAMPLE = join(REPO_ROOT, 'examples', 'opt-mini');
const EXAMPLE_BUNDLE = join(REPO_ROOT, 'examples', 'opt-mini-bundle');
const TEXT = join(REPO_ROOT, 'examples', 'c4mini', 'c4mini-validation.00000-of-00001.json.gz');
const savedCache = process.env.DEJAVU_CACHE_DIR;

let root: string;
let a: OptCheckpoint; // a copy of examples/opt-mini
let b: OptCheckpoint; // the same with one weight changed

/** Copy the example model; with `flip`, change one fp16 value of layer 0's fc1.weight (one mantissa bit). */
function copyModel(dir: string, flip: boolean): void {
  mkdirSync(dir);
  for (const f of readdirSync(EXAMPLE)) copyFileSync(join(EXAMPLE, f), join(dir, f));
  if (!flip) return;
  const p = join(dir, 'model.safetensors');
  const buf = readFileSync(p);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8'));
  const begin: number = header['model.decoder.layers.0.fc1.weight']?.data_offsets[0] ?? header['decoder.layers.0.fc1.weight'].data_offsets[0];
  buf[8 + n + begin + 1] ^= 0x01;
  writeFileSync(p, buf);
}


beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), 'dejavu-weights-binding-'));
  process.env.DEJAVU_CACHE_DIR = join(root, 'cache');
  copyModel(join(root, 'a'), false);
  copyModel(join(root, 'b'), true);
  a = await loadOptCheckpoint(join(root, 'a'), { quiet: true });
  b = await loadOptCheckpoint(join(root, 'b'), { quiet: true });
});
afterAll(() => {
  if (savedCache === undefined) delete process.env.DEJAVU_CACHE_DIR;
  else process.env.DEJAVU_CACHE_DIR = savedCache;
  rmSync(root, { recursive: true, force: true });
});

describe('one changed weight, same architecture', () => {
  it('the two checkpoints share the architecture fingerprint but not the model fingerprint', () => {
    expect(b.architectureFingerprint).toBe(a.architectureFingerprint);
    expect(b.weightsSha256).not.toBe(a.weightsSha256);
    expect(b.fingerprint).not.toBe(a.fingerprint);
  });

  it('collect: resuming a folder of the other weights is refused, naming both, and changes nothing', async () => {
    const out = join(root, 'shards');
    const opts = { data: [TEXT], out, docs: 4, maxLen: 16, shardTokens: 16, layers: '0,1', workers: 1, quiet: true };
    const first = await collect({ ...opts, model: a.dir });
    expect(first.manifest.num_shards).toBeGreaterThan(1);
    expect(first.manifest.weights_sha256).toBe(a.weightsSha256);
    expect(first.manifest.model_fingerprint).toBe(a.fingerprint);
    // An interrupted run: the last shard and the manifest gone, the state not complete.
    const statePath = join(out, 'collect-state.json');
    const state = JSON.parse(readFileSync(statePath, 'utf8'));
    expect(state).toMatchObject({ model_fingerprint: a.fingerprint, weights_sha256: a.weightsSha256, model: a.dir });
    const last = state.shards.length - 1;
    state.complete = false;
    writeFileSync(statePath, JSON.stringify(state));
    rmSync(join(out, 'manifest.json'));
    for (const l of ['layer_00', 'layer_01']) rmSync(join(out, l, `shard_${String(last).padStart(5, '0')}.arrow`));
    const before = treeSnapshot(out);
    await expect(collect({ ...opts, model: b.dir })).rejects.toThrow(
      new RegExp(
        `^${statePath}: shards for other weights: weights_sha256 ${a.weightsSha256.slice(0, 16)}… recorded here \\(model ${a.dir}\\), ` +
          `${b.weightsSha256.slice(0, 16)}… in ${b.dir}; use --force to replace them, or another --out$`,
      ),
    );
    expect(treeSnapshot(out)).toEqual(before);
    // The right weights resume it.
    const resumed = await collect({ ...opts, model: a.dir });
    expect(resumed.shardsResumed).toBe(last);
    expect(resumed.manifest.shards).toEqual(first.manifest.shards);
  });

  it('collect: a folder written before weights were hashed is refused with how to rebuild it', async () => {
    const out = join(root, 'old-shards');
    const opts = { data: [TEXT], out, docs: 1, maxLen: 8, layers: '0', workers: 1, quiet: true, model: a.dir };
    await collect(opts);
    const statePath = join(out, 'collect-state.json');
    const state = JSON.parse(readFileSync(statePath, 'utf8'));
    // What an older dejavu wrote: the architecture-only fingerprint, no weights_sha256 or model.
    state.model_fingerprint = a.architectureFingerprint;
    delete state.weights_sha256;
    delete state.model;
    writeFileSync(statePath, JSON.stringify(state));
    await expect(collect(opts)).rejects.toThrow(
      /collect-state\.json: shards from before fingerprints covered the weights: .*\(no weights_sha256\): the weights behind it are unknown; rebuild them with --force/,
    );
    expect((await collect({ ...opts, force: true })).manifest.model_fingerprint).toBe(a.fingerprint);
  });

  it('bundles: the example bundle loads for its weights (in any folder) and is refused for the changed ones', () => {
    expect(loadBundle(EXAMPLE_BUNDLE, a).manifest.weights_sha256).toBe(a.weightsSha256);
    expect(() => loadBundle(EXAMPLE_BUNDLE, b)).toThrow(
      new RegExp(
        `^${EXAMPLE_BUNDLE}/manifest\\.json: a bundle for other weights: weights_sha256 ${a.weightsSha256.slice(0, 16)}… recorded here ` +
          `\\(model examples/opt-mini\\), ${b.weightsSha256.slice(0, 16)}… in ${b.dir}; use the bundle exported for this model`,
      ),
    );
  });

  it('bundles: one exported before weights were hashed is refused with how to rebuild it', () => {
    const dir = join(root, 'old-bundle');
    mkdirSync(dir);
    copyFileSync(join(EXAMPLE_BUNDLE, 'predictors.safetensors'), join(dir, 'predictors.safetensors'));
    const m = JSON.parse(readFileSync(join(EXAMPLE_BUNDLE, 'manifest.json'), 'utf8'));
    m.model_fingerprint = a.architectureFingerprint;
    delete m.weights_sha256;
    writeFileSync(join(dir, 'manifest.json'), JSON.stringify(m));
    expect(() => loadBundle(dir, a)).toThrow(
      /manifest\.json: a bundle from before fingerprints covered the weights: .*; rebuild it from this model: dejavu collect, train and export/,
    );
  });

  it('export: predictors of the other weights are refused, naming both', () => {
    const p = join(root, 'pred');
    mkdirSync(p);
    const { hiddenSize: d, ffnDim: ffn } = a.config;
    writeSafetensors(
      join(p, 'layer_01.mlp.safetensors'),
      {
        w1: { dtype: 'F32', shape: [4, d], data: Float32Array.from({ length: 4 * d }, (_, i) => Math.sin(i) / 10) },
        w2: { dtype: 'F32', shape: [ffn, 4], data: Float32Array.from({ length: ffn * 4 }, (_, i) => Math.cos(i) / 10) },
      },
      { target: 'mlp', layer: '1', input: 'mlp_in', lookahead: '0', rank: '4', model_fingerprint: a.fingerprint, input_norm: 'layernorm' },
    );
    const entry = { layer: 1, target: 'mlp', recall: 0.9, precision: 0.5, f1: 0.6, true_active: 100, predicted_active: 150, k95: 120, k99: 140, tokens: 1000 };
    const metrics = { model_fingerprint: a.fingerprint, args: {}, backend: 'test', complete: true, planned: [{ layer: 1, target: 'mlp' }], layers: [entry], skipped: [], seconds: 0 };
    writeFileSync(join(p, 'metrics.json'), JSON.stringify(metrics));
    expect(exportBundle({ predictors: p, out: join(root, 'bundle-a') }, a).model_fingerprint).toBe(a.fingerprint);
    expect(() => exportBundle({ predictors: p, out: join(root, 'bundle-b') }, b)).toThrow(
      new RegExp(
        `^${p}/metrics\\.json: predictors for another model or other weights: model_fingerprint ${a.fingerprint.slice(0, 16)}… recorded here, ` +
          `${b.fingerprint.slice(0, 16)}… for ${b.dir} \\(weights_sha256 ${b.weightsSha256.slice(0, 16)}…\\); export with the --model the shards were collected from$`,
      ),
    );
    expect(JSON.parse(readFileSync(join(root, 'bundle-a', 'manifest.json'), 'utf8')).weights_sha256).toBe(a.weightsSha256);
  });
});
