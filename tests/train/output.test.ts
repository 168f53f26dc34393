/**
 * The guard of train's output folder (train/output.ts) and what export makes of an unfinished run: no stale
 * predictors of an earlier run beside new ones, --resume with changed settings refused before any work, and a killed
 * run's folder refused by export unless --partial.
 */
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { OptCheckpoint, OptConfig } from '../../checkpoints/types.js';
import { exportBundle } from '../../export/export.js';
import { selectBackend } from '../../train/backend.js';
import type { Tf } from '../../train/model.js';
import { DEFAULTS, train, type TrainOptions } from '../../train/trainer.js';
import { writeSyntheticShards } from './synthetic.js';
import { treeSnapshot } from '../helpers/tree.js';

let tmp: string;
let tf: Tf;
let shards: string;
let fingerprint: string;

const opts = (out: string, over: Partial<TrainOptions> = {}): TrainOptions => ({
  ...DEFAULTS,
  shards,
  out,
  target: 'mlp',
  layers: '1-2',
  rank: 4,
  epochs: 2,
  batch: 32,
  lr: 1e-2,
  valFrac: 0.25,
  bufferRows: 100,
  patience: 10,
  quiet: true,
  resume: false,
  ...over,
});


/** The checkpoint loader's view of the synthetic model (3 layers, d 16, 4 heads, ffn 24; synthetic.ts defaults). */
const ckpt = (): OptCheckpoint => ({
  dir: '/models/synthetic',
  config: { numLayers: 3, hiddenSize: 16, numHeads: 4, headDim: 4, ffnDim: 24 } as OptConfig,
  weights: {} as OptCheckpoint['weights'],
  fingerprint,
  format: 'test',
});

beforeAll(async () => {
  tmp = mkdtempSync(join(tmpdir(), 'dejavu-train-out-'));
  const s = await writeSyntheticShards({ dir: join(tmp, 'shards'), docs: 24, tokens: 16, docsPerShard: 8 });
  shards = s.dir;
  fingerprint = JSON.parse(readFileSync(join(shards, 'manifest.json'), 'utf8')).model_fingerprint;
  tf = (await selectBackend('wasm')).tf;
});
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe('train output folder', () => {
  it('a rerun on a subset without --resume or --force is refused, naming the folder; nothing is touched', async () => {
    const out = join(tmp, 'subset');
    await train(tf, 'wasm', opts(out));
    const before = treeSnapshot(out, { mtime: true });
    const seen: string[] = [];
    await expect(train(tf, 'wasm', opts(out, { layers: '1', onEpochEnd: (j) => seen.push(j) }))).rejects.toThrow(
      new RegExp(`^${out}: holds the output of an earlier train run \\(layer_01\\.mlp\\.safetensors, layer_02\\.mlp\\.safetensors, metrics\\.json, .*\\); use --resume .* or --force`),
    );
    expect(seen).toEqual([]);
    expect(treeSnapshot(out, { mtime: true })).toEqual(before);
  });

  it('--force deletes the earlier predictors, so the folder holds only this run and exports', async () => {
    const out = join(tmp, 'force');
    await train(tf, 'wasm', opts(out));
    writeFileSync(join(out, 'notes.txt'), 'mine');
    const r = await train(tf, 'wasm', opts(out, { layers: '1', force: true }));
    expect(r.layers.map((l) => l.layer)).toEqual([1]);
    expect(readdirSync(out).sort()).toEqual(['checkpoints', 'layer_01.mlp.safetensors', 'metrics.json', 'notes.txt']);
    expect(readdirSync(join(out, 'checkpoints'))).toEqual(['layer_01.mlp.safetensors']);
    const m = JSON.parse(readFileSync(join(out, 'metrics.json'), 'utf8'));
    expect(m.complete).toBe(true);
    expect(m.planned).toEqual([{ layer: 1, target: 'mlp' }]);
    const s = exportBundle({ predictors: out, out: join(tmp, 'force-bundle') }, ckpt());
    expect(s.layers.map((l) => 'dense' in l.mlp)).toEqual([true, false, true]);
  });

  it('--resume and --force together are refused', async () => {
    await expect(train(tf, 'wasm', opts(join(tmp, 'both'), { resume: true, force: true }))).rejects.toThrow(/--force: use --resume .* or --force .*, not both/);
  });

  it('--out that is a file is refused, naming it', async () => {
    const file = join(tmp, 'a-file');
    writeFileSync(file, 'x');
    await expect(train(tf, 'wasm', opts(file))).rejects.toThrow(`${file}: exists and is not a folder`);
    expect(readFileSync(file, 'utf8')).toBe('x');
  });

  it('--resume with other settings is refused before any training, and metrics.json is not rewritten', async () => {
    const out = join(tmp, 'resume-changed');
    // A run killed after its first predictor: layer_01.mlp done, layer_02.mlp one epoch in.
    await expect(
      train(tf, 'wasm', opts(out, { epochs: 3, onEpochEnd: (j, e) => { if (j === 'layer_02.mlp' && e === 1) throw new Error('killed'); } })),
    ).rejects.toThrow('killed');
    const before = treeSnapshot(out, { mtime: true });
    for (const change of [{ lr: 2e-2 }, { headFrac: 0.5, target: 'both' as const }, { layers: '1' }, { seed: 3 }]) {
      const seen: string[] = [];
      await expect(train(tf, 'wasm', opts(out, { epochs: 3, resume: true, ...change, onEpochEnd: (j) => seen.push(j) })), JSON.stringify(change)).rejects.toThrow(
        /metrics\.json: was written with other settings \(.*->.*\); --resume needs the same ones/,
      );
      expect(seen).toEqual([]);
      expect(treeSnapshot(out, { mtime: true })).toEqual(before);
    }
    // More epochs is a legitimate resume.
    const r = await train(tf, 'wasm', opts(out, { epochs: 4, resume: true }));
    expect(r.complete).toBe(true);
  });

  it('without metrics.json args, every checkpoint is still checked before any training', async () => {
    const out = join(tmp, 'resume-ckpt');
    await expect(
      train(tf, 'wasm', opts(out, { target: 'both', layers: '1', epochs: 3, onEpochEnd: (j, e) => { if (j === 'layer_01.attn' && e === 1) throw new Error('killed'); } })),
    ).rejects.toThrow('killed');
    // As a metrics.json written before train recorded its args: only the checkpoints tell the settings.
    const mpath = join(out, 'metrics.json');
    const m = JSON.parse(readFileSync(mpath, 'utf8'));
    delete m.args;
    writeFileSync(mpath, JSON.stringify(m));
    const before = treeSnapshot(out, { mtime: true });
    const seen: string[] = [];
    // --head-frac changes only the attention job's settings: before, the MLP job resumed and trained first.
    await expect(train(tf, 'wasm', opts(out, { target: 'both', layers: '1', epochs: 3, headFrac: 0.75, resume: true, onEpochEnd: (j) => seen.push(j) }))).rejects.toThrow(
      /checkpoints\/layer_01\.attn\.safetensors: checkpoint was written with other settings/,
    );
    expect(seen).toEqual([]);
    expect(treeSnapshot(out, { mtime: true })).toEqual(before);
  });
});

describe('export of an unfinished train run', () => {
  let killed: string;
  beforeAll(async () => {
    killed = join(tmp, 'killed');
    await expect(
      train(tf, 'wasm', opts(killed, { onEpochEnd: (j, e) => { if (j === 'layer_02.mlp' && e === 1) throw new Error('killed'); } })),
    ).rejects.toThrow('killed');
  });

  it('is refused, listing the predictors not trained yet; nothing is written', () => {
    const m = JSON.parse(readFileSync(join(killed, 'metrics.json'), 'utf8'));
    expect(m.complete).toBe(false);
    const out = join(tmp, 'killed-bundle');
    expect(() => exportBundle({ predictors: killed, out }, ckpt())).toThrow(
      `${killed}: is from a train run that did not finish: layer_02.mlp is not trained yet; finish it with \`dejavu train ... --resume\``,
    );
    expect(existsSync(out)).toBe(false);
  });

  it('--partial exports the finished predictors and keeps the others dense, saying which', () => {
    const s = exportBundle({ predictors: killed, out: join(tmp, 'partial-bundle'), partial: true }, ckpt());
    expect(s.unfinished).toEqual(['layer_02.mlp']);
    expect('dense' in s.layers[1].mlp).toBe(false);
    expect(s.layers[2].mlp).toEqual({ dense: true });
    const manifest = JSON.parse(readFileSync(join(tmp, 'partial-bundle', 'manifest.json'), 'utf8'));
    expect(manifest.layers[2].mlp.reason).toMatch(/training unfinished/);
  });

  it('--layers leaving the unfinished layer out exports without --partial', () => {
    const s = exportBundle({ predictors: killed, out: join(tmp, 'layer1-bundle'), layers: '1' }, ckpt());
    expect(s.unfinished).toEqual([]);
  });

  it('an older metrics.json (no complete flag) is caught by the checkpoint not marked done', () => {
    const mpath = join(killed, 'metrics.json');
    const m = JSON.parse(readFileSync(mpath, 'utf8'));
    delete m.complete;
    delete m.planned;
    const old = join(tmp, 'killed-old');
    // Copy the folder with the older metrics.json.
    rmSync(old, { recursive: true, force: true });
    for (const f of ['layer_01.mlp.safetensors', 'checkpoints/layer_01.mlp.safetensors', 'checkpoints/layer_02.mlp.safetensors']) {
      const dst = join(old, f);
      rmSync(dst, { force: true });
      mkdirSync(join(dst, '..'), { recursive: true });
      writeFileSync(dst, readFileSync(join(killed, f)));
    }
    writeFileSync(join(old, 'metrics.json'), JSON.stringify(m));
    expect(() => exportBundle({ predictors: old, out: join(tmp, 'old-bundle') }, ckpt())).toThrow(/layer_02\.mlp is not trained yet/);
  });
});
