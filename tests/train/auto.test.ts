/**
 * `--rank auto` / `--batch auto` (train's defaults): the two rules as pure functions, and a run with them records the
 * numbers they chose in metrics.json's args, so --resume with those numbers written out is the same run.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SafetensorsFile } from '../../checkpoints/safetensors.js';
import { AUTO, SCHEDULE_DEFAULTS, autoBatch, autoRank } from '../../train/auto.js';
import { selectBackend } from '../../train/backend.js';
import { countSplit } from '../../train/data.js';
import { planJobs } from '../../train/jobs.js';
import type { Tf } from '../../train/model.js';
import { openShardSet } from '../../train/shard-reader.js';
import { DEFAULTS, settingsText, train, type TrainOptions } from '../../train/trainer.js';
import { writeSyntheticShards } from './synthetic.js';

describe('auto rank and batch (pure)', () => {
  it('rank: a multiple of 64 near d/3, in 64..1000', () => {
    expect(autoRank(16)).toBe(64); // tiny models: the floor
    expect(autoRank(384)).toBe(128); // opt-mini
    expect(autoRank(768)).toBe(256); // OPT-125M
    expect(autoRank(1024)).toBe(320); // OPT-350M
    expect(autoRank(2048)).toBe(704); // OPT-1.3B
    expect(autoRank(2560)).toBe(832); // OPT-2.7B
    expect(autoRank(4096)).toBe(1000); // OPT-6.7B: DejaVu's rank
    expect(autoRank(12288)).toBe(1000); // OPT-175B
    for (let d = 1; d <= 20000; d += 37) {
      const r = autoRank(d);
      expect(r % 64 === 0 || r === 1000).toBe(true);
      expect(r).toBeGreaterThanOrEqual(AUTO.rankMin);
      expect(r).toBeLessThanOrEqual(AUTO.rankMax);
      if (r > AUTO.rankMin && r < AUTO.rankMax) expect(Math.abs(r - d / 3)).toBeLessThanOrEqual(32);
    }
    expect(() => autoRank(0)).toThrow();
  });

  it('batch: the largest power of two in 128..1024 with >= 256 steps an epoch', () => {
    expect(autoBatch(0)).toBe(128);
    expect(autoBatch(27_000)).toBe(128); // the demo's opt-mini shards: ~210 steps an epoch
    expect(autoBatch(65_535)).toBe(128);
    expect(autoBatch(65_536)).toBe(256);
    expect(autoBatch(78_354)).toBe(256); // the acceptance run's 200 docs x 512
    expect(autoBatch(131_072)).toBe(512);
    expect(autoBatch(262_143)).toBe(512);
    expect(autoBatch(262_144)).toBe(1024); // real scale: 1024 as before
    expect(autoBatch(10_000_000)).toBe(1024);
    for (let rows = 0; rows < 2_000_000; rows += 4099) {
      const b = autoBatch(rows);
      expect([128, 256, 512, 1024]).toContain(b);
      if (b > 128) expect(rows / b).toBeGreaterThanOrEqual(AUTO.minSteps);
      if (b < 1024) expect(rows / (2 * b)).toBeLessThan(AUTO.minSteps);
    }
  });

  it('train defaults: auto rank and batch, 10 epochs, lr 1e-3, patience 3', () => {
    expect(SCHEDULE_DEFAULTS).toEqual({ rank: 'auto', epochs: 10, batch: 'auto', lr: 1e-3, patience: 3 });
    expect(DEFAULTS).toMatchObject(SCHEDULE_DEFAULTS);
  });
});

let tmp: string;
let tf: Tf;
let shards: string;

beforeAll(async () => {
  tmp = mkdtempSync(join(tmpdir(), 'dejavu-train-auto-'));
  shards = (await writeSyntheticShards({ dir: join(tmp, 'shards'), docs: 40, tokens: 20, docsPerShard: 10 })).dir;
  tf = (await selectBackend('wasm')).tf;
});
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe('a run at the auto defaults', () => {
  const opts = (out: string, over: Partial<TrainOptions> = {}): TrainOptions => ({
    ...DEFAULTS,
    shards,
    out,
    target: 'mlp',
    layers: '1',
    epochs: 1,
    valFrac: 0.25,
    quiet: true,
    resume: false,
    ...over,
  });

  it('records the resolved numbers in args and the predictor; --resume with them written out is the same run', async () => {
    const out = join(tmp, 'auto');
    const r = await train(tf, 'wasm', opts(out));
    const set = await openShardSet(shards);
    const [job] = planJobs([1], set.layers, ['mlp'], set.dims, { headFrac: 0.3, mlpInput: 'mlp_in' });
    const rows = (await countSplit(set, job, { seed: 0, valFrac: 0.25 })).train;
    expect(r.args).toMatchObject({ rank: autoRank(set.dims.dModel), batch: autoBatch(rows), auto: { rank: { d_model: set.dims.dModel }, batch: { train_rows: rows } } });
    expect(JSON.parse(readFileSync(join(out, 'metrics.json'), 'utf8')).args).toEqual(r.args);
    expect(r.layers[0].rank).toBe(autoRank(set.dims.dModel));
    const f = SafetensorsFile.open(join(out, 'layer_01.mlp.safetensors'));
    expect(f.metadata.rank).toBe(String(autoRank(set.dims.dModel)));
    f.close();
    expect(settingsText(r.args)).toBe(`rank 64 (auto, d ${set.dims.dModel}), batch 128 (auto, ${rows} training tokens), up to 1 epoch, lr 0.001, patience 3`);
    // The same numbers given explicitly resume the run (more epochs); other numbers are refused.
    const more = await train(tf, 'wasm', opts(out, { rank: 64, batch: 128, epochs: 2, resume: true }));
    expect(more.layers[0].epochs_run).toBe(2);
    expect(more.args).not.toHaveProperty('auto');
    await expect(train(tf, 'wasm', opts(out, { rank: 32, epochs: 3, resume: true }))).rejects.toThrow(/rank 64 -> 32/);
  });

  it('explicit numbers are used as given, with no auto record', async () => {
    const out = join(tmp, 'explicit');
    const r = await train(tf, 'wasm', opts(out, { rank: 6, batch: 32 }));
    expect(r.args).toMatchObject({ rank: 6, batch: 32 });
    expect(r.args).not.toHaveProperty('auto');
    expect(settingsText(r.args)).toBe('rank 6, batch 32, up to 1 epoch, lr 0.001, patience 3');
  });
});
