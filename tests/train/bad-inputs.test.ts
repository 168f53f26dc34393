import { spawnSync } from 'node:child_process';
import { copyFileSync, cpSync, existsSync, mkdtempSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DejavuError } from '../../common/errors.js';
import { selectBackend } from '../../train/backend.js';
import { nonEmptyValFrac } from '../../train/data.js';
import type { Tf } from '../../train/model.js';
import { hashSeed, isValidationDoc } from '../../train/rng.js';
import { openShardSet } from '../../train/shard-reader.js';
import { DEFAULTS, train, type TrainOptions } from '../../train/trainer.js';
import { REPO_ROOT } from '../helpers/fixtures.js';
import { writeSyntheticShards } from './synthetic.js';

let tmp: string;
let tf: Tf;
let good: string;

const opts = (shards: string, out: string, over: Partial<TrainOptions> = {}): TrainOptions => ({
  ...DEFAULTS,
  shards,
  out,
  rank: 4,
  epochs: 2,
  batch: 32,
  lr: 1e-2,
  valFrac: 0.25,
  bufferRows: 64,
  quiet: true,
  resume: false,
  ...over,
});

beforeAll(async () => {
  tmp = mkdtempSync(join(tmpdir(), 'dejavu-bad-'));
  good = (await writeSyntheticShards({ dir: join(tmp, 'good'), docs: 24, tokens: 16, docsPerShard: 8 })).dir;
  tf = (await selectBackend('wasm')).tf;
});
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe('bad shard folders', () => {
  it('shards from two different models mixed: a DejavuError naming the file and both fingerprints', async () => {
    const other = (await writeSyntheticShards({ dir: join(tmp, 'other'), docs: 24, tokens: 16, docsPerShard: 8, fingerprint: 'a'.repeat(64) })).dir;
    const mixed = join(tmp, 'mixed');
    cpSync(good, mixed, { recursive: true });
    copyFileSync(join(other, 'layer_01', 'shard_00001.arrow'), join(mixed, 'layer_01', 'shard_00001.arrow'));
    const err = await openShardSet(mixed).catch((e) => e);
    expect(err).toBeInstanceOf(DejavuError);
    expect(err.message).toContain(join(mixed, 'layer_01', 'shard_00001.arrow'));
    expect(err.message).toMatch(/two different models.*aaaaaaaa.*ffffffff/);
    await expect(train(tf, 'wasm', opts(mixed, join(tmp, 'out-mixed')))).rejects.toThrow(/two different models/);
  });

  it('a truncated shard: a DejavuError naming the file, before any training', async () => {
    const cut = join(tmp, 'cut');
    cpSync(good, cut, { recursive: true });
    const f = join(cut, 'layer_02', 'shard_00000.arrow');
    truncateSync(f, Math.floor(statSync(f).size * 0.6));
    const err = await openShardSet(cut).catch((e) => e);
    expect(err).toBeInstanceOf(DejavuError);
    expect(err.message).toContain(f);
    expect(err.message).toMatch(/truncated/);
    const out = join(tmp, 'out-cut');
    await expect(train(tf, 'wasm', opts(cut, out))).rejects.toThrow(/truncated/);
    expect(existsSync(join(out, 'metrics.json'))).toBe(false);
  });

  it('not an Arrow file, a missing shard in one layer, a layer folder mislabelled', async () => {
    const junk = join(tmp, 'junk');
    cpSync(good, junk, { recursive: true });
    const f = join(junk, 'layer_00', 'shard_00002.arrow');
    const bytes = readFileSync(f);
    bytes.write('NOTARR', 0, 'latin1');
    writeFileSync(f, bytes);
    await expect(openShardSet(junk)).rejects.toThrow(/not an Arrow IPC file/);

    const missing = join(tmp, 'missing');
    cpSync(good, missing, { recursive: true });
    rmSync(join(missing, 'layer_02', 'shard_00001.arrow'));
    await expect(openShardSet(missing)).rejects.toThrow(/layer_02: has shards/);

    const moved = join(tmp, 'moved');
    cpSync(good, moved, { recursive: true });
    copyFileSync(join(moved, 'layer_01', 'shard_00000.arrow'), join(moved, 'layer_02', 'shard_00000.arrow'));
    await expect(openShardSet(moved)).rejects.toThrow(/schema says layer 1 but the file is under layer_02/);
    await expect(openShardSet(join(tmp, 'nope'))).rejects.toThrow(/shard folder not found/);

    // A collection that never finished: no manifest.json (collect writes it last), or one not marked complete.
    const unfinished = join(tmp, 'unfinished');
    cpSync(good, unfinished, { recursive: true });
    rmSync(join(unfinished, 'manifest.json'));
    await expect(openShardSet(unfinished)).rejects.toThrow(/no manifest.json: the collection is not complete/);
    writeFileSync(join(unfinished, 'manifest.json'), JSON.stringify({ complete: false }));
    await expect(openShardSet(unfinished)).rejects.toThrow(/not complete/);
  });

  it('a layer with no positive labels is skipped with a reason; the others are trained', async () => {
    const dead = (await writeSyntheticShards({ dir: join(tmp, 'dead'), docs: 24, tokens: 16, docsPerShard: 8, deadMlpLayers: [1] })).dir;
    const out = join(tmp, 'out-dead');
    const r = await train(tf, 'wasm', opts(dead, out, { target: 'mlp' }));
    expect(r.layers.map((l) => l.layer)).toEqual([0, 2]);
    expect(r.skipped).toHaveLength(1);
    expect(r.skipped[0]).toMatchObject({ layer: 1, target: 'mlp' });
    expect(r.skipped[0].reason).toMatch(/no positive labels/);
    expect(existsSync(join(out, 'layer_01.mlp.safetensors'))).toBe(false);
    const metrics = JSON.parse(readFileSync(join(out, 'metrics.json'), 'utf8'));
    expect(metrics.skipped[0].layer).toBe(1);
    expect(metrics.layers.map((l: { layer: number }) => l.layer)).toEqual([0, 2]);
  });

  it('bad --layers specs and a validation split with no documents', async () => {
    await expect(train(tf, 'wasm', opts(good, join(tmp, 'out-l5'), { layers: '1,5' }))).rejects.toThrow(/--layers: layer 5 is not in the shards \(they hold layers 0-2\)/);
    await expect(train(tf, 'wasm', opts(good, join(tmp, 'out-noval'), { valFrac: 0, layers: '1', target: 'mlp' }))).rejects.toThrow(/no validation tokens/);
    await expect(train(tf, 'wasm', opts(good, join(tmp, 'out-l0'), { layers: '0', target: 'attn' }))).rejects.toThrow(/nothing to train/);
  });

  it('a split no document falls in (few documents, a small --val-frac) holds out the first document by hash', async () => {
    const set = await openShardSet(good);
    const docs = Array.from({ length: 24 }, (_, i) => i);
    const hashes = docs.map((d) => hashSeed(7, 'val', d));
    const lowest = docs[hashes.indexOf(Math.min(...hashes))];
    const tiny = Math.min(...hashes) / 4294967296 / 2;  // below every document's hash: an empty split as asked
    const frac = await nonEmptyValFrac(set, { seed: 7, valFrac: tiny });
    expect(docs.filter((d) => isValidationDoc(d, 7, frac))).toEqual([lowest]);
    expect(await nonEmptyValFrac(set, { seed: 7, valFrac: 0.5 })).toBe(0.5);  // a split with documents stays as asked
    expect(await nonEmptyValFrac(set, { seed: 7, valFrac: 0 })).toBe(0);      // 0 is asked for: no validation (error above)
    const out = join(tmp, 'out-tiny-val');
    const r = await train(tf, 'wasm', opts(good, out, { seed: 7, valFrac: tiny, layers: '1', target: 'mlp', epochs: 1 }));
    expect(r.layers).toHaveLength(1);
    expect(r.args.val_frac).toBe(frac);
    expect((r.args.auto as { val_frac: { requested: number } }).val_frac.requested).toBe(tiny);
  });

  // Worker threads (the compiled CLI: they load dist/train/worker.js) train with the fraction the main thread resolved.
  const cli = join(REPO_ROOT, 'dist', 'cli', 'main.js');
  it.skipIf(!existsSync(cli))('the same with --workers 2 (dejavu train)', async () => {
    const set = await openShardSet(good);
    const min = Math.min(...Array.from({ length: 24 }, (_, d) => hashSeed(7, 'val', d)));
    const tiny = min / 4294967296 / 2;
    const out = join(tmp, 'out-tiny-val-workers');
    const r = spawnSync(process.execPath, [cli, 'train', '--shards', good, '--out', out, '--seed', '7', '--val-frac', String(tiny), '--layers', '1',
      '--epochs', '1', '--rank', '4', '--batch', '32', '--workers', '2', '--backend', 'wasm', '--json'], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    const m = JSON.parse(r.stdout);
    expect(m.layers).toHaveLength(2);
    expect(m.args.val_frac).toBe(await nonEmptyValFrac(set, { seed: 7, valFrac: tiny }));
  }, 60_000);
});
