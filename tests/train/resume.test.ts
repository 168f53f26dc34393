import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SafetensorsFile } from '../../checkpoints/safetensors.js';
import { selectBackend } from '../../train/backend.js';
import type { Tf } from '../../train/model.js';
import type { TrainMetrics } from '../../common/contracts.js';
import { DEFAULTS, prepareRun, train, type TrainOptions } from '../../train/trainer.js';
import { loadCheckpoint, readCheckpointState, saveCheckpoint } from '../../train/checkpoint.js';
import { writeSyntheticShards } from './synthetic.js';

let tmp: string;
let tf: Tf;
let shards: string;

const opts = (out: string, over: Partial<TrainOptions> = {}): TrainOptions => ({
  ...DEFAULTS,
  shards,
  out,
  target: 'both',
  layers: '1-2',
  rank: 6,
  epochs: 4,
  batch: 32,
  lr: 1e-2,
  valFrac: 0.25,
  bufferRows: 100,
  patience: 10,
  quiet: true,
  resume: false,
  ...over,
});

/** Metrics without timings (seconds differ run to run). */
const strip = (r: TrainMetrics) => r.layers.map((l) => ({ ...l, history: l.history.map((h) => ({ ...h, seconds: 0 })) }));
const weights = (out: string, name: string) => {
  const f = SafetensorsFile.open(join(out, `${name}.safetensors`));
  const w = [f.readFloat32('w1'), f.readFloat32('w2')];
  f.close();
  return w;
};

beforeAll(async () => {
  tmp = mkdtempSync(join(tmpdir(), 'dejavu-resume-'));
  shards = (await writeSyntheticShards({ dir: join(tmp, 'shards'), docs: 32, tokens: 20, docsPerShard: 10 })).dir;
  tf = (await selectBackend('wasm')).tf;
});
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe('determinism and resume', () => {
  it('the same seed twice gives the same metrics and weights; another seed does not', async () => {
    const a = await train(tf, 'wasm', opts(join(tmp, 'a')));
    const b = await train(tf, 'wasm', opts(join(tmp, 'b')));
    const c = await train(tf, 'wasm', opts(join(tmp, 'c'), { seed: 1 }));
    expect(strip(b)).toEqual(strip(a));
    expect(weights(join(tmp, 'b'), 'layer_01.mlp')).toEqual(weights(join(tmp, 'a'), 'layer_01.mlp'));
    expect(strip(c)).not.toEqual(strip(a));
  });

  it('a run killed mid-job and resumed matches an uninterrupted run', async () => {
    const full = await train(tf, 'wasm', opts(join(tmp, 'full')));
    const out = join(tmp, 'killed');
    // Kill during the second job (layer_01.attn) after its 2nd epoch: layer_01.mlp is finished, attn is half done.
    await expect(
      train(tf, 'wasm', opts(out, { onEpochEnd: (job, e) => { if (job === 'layer_01.attn' && e === 2) throw new Error('killed'); } })),
    ).rejects.toThrow('killed');
    expect(existsSync(join(out, 'layer_01.mlp.safetensors'))).toBe(true);
    expect(existsSync(join(out, 'layer_01.attn.safetensors'))).toBe(false);
    const seen: string[] = [];
    const resumed = await train(tf, 'wasm', opts(out, { resume: true, onEpochEnd: (job, e) => seen.push(`${job}@${e}`) }));
    // The finished job is not retrained; the killed one continues at epoch 3.
    expect(seen.filter((s) => s.startsWith('layer_01.mlp'))).toEqual([]);
    expect(seen.filter((s) => s.startsWith('layer_01.attn'))).toEqual(['layer_01.attn@3', 'layer_01.attn@4']);
    const A = strip(full);
    const B = strip(resumed);
    expect(B.map((l) => [l.layer, l.target])).toEqual(A.map((l) => [l.layer, l.target]));
    for (let i = 0; i < A.length; i++) {
      for (const k of ['recall', 'precision', 'f1', 'k95', 'k99', 'predicted_active'] as const) expect(B[i][k]).toBeCloseTo(A[i][k], 5);
    }
    const [w1a] = weights(join(tmp, 'full'), 'layer_01.attn');
    const [w1b] = weights(out, 'layer_01.attn');
    let maxDiff = 0;
    for (let i = 0; i < w1a.length; i++) maxDiff = Math.max(maxDiff, Math.abs(w1a[i] - w1b[i]));
    expect(maxDiff).toBeLessThan(1e-5);
    const metrics = JSON.parse(readFileSync(join(out, 'metrics.json'), 'utf8'));
    expect(metrics.layers).toHaveLength(4);
  });

  it('resuming finished jobs opens no shard and reports the same metrics; a checkpoint without counts is counted again', async () => {
    const out = join(tmp, 'skip');
    const first = await train(tf, 'wasm', opts(out));
    const resumeWithCount = async () => {
      const run = await prepareRun(opts(out, { resume: true }), 'wasm');
      let opened = 0;
      const set = { ...run.set, path: (l: number, sh: number) => (opened++, run.set.path(l, sh)) };
      const r = await train(tf, 'wasm', opts(out, { resume: true }), { ...run, set });
      return { r, opened };
    };
    const again = await resumeWithCount();
    expect(again.opened).toBe(0);
    expect(strip(again.r)).toEqual(strip(first));
    // A finished checkpoint as written before the counts were kept: its job's labels are read once more.
    const name = 'layer_01.mlp';
    const ck = loadCheckpoint(out, name, readCheckpointState(out, name)!.key)!;
    delete ck.state.counts;
    saveCheckpoint(out, name, ck, { d: 16, r: 6, out: 24 });
    expect(readCheckpointState(out, name)!.counts).toBeUndefined();
    const old = await resumeWithCount();
    expect(old.opened).toBeGreaterThan(0);
    expect(strip(old.r)).toEqual(strip(first));
  });

  it('resume refuses a checkpoint written with other settings', async () => {
    const out = join(tmp, 'other');
    await train(tf, 'wasm', opts(out, { layers: '1', target: 'mlp', epochs: 1 }));
    await expect(train(tf, 'wasm', opts(out, { layers: '1', target: 'mlp', rank: 5, resume: true }))).rejects.toThrow(/other settings/);
  });

  it('resume with more epochs continues a finished job instead of restarting', async () => {
    const out = join(tmp, 'more');
    await train(tf, 'wasm', opts(out, { layers: '2', target: 'mlp', epochs: 2 }));
    const seen: number[] = [];
    const r = await train(tf, 'wasm', opts(out, { layers: '2', target: 'mlp', epochs: 3, resume: true, onEpochEnd: (_j, e) => seen.push(e) }));
    expect(seen).toEqual([3]);
    expect(r.layers[0].epochs_run).toBe(3);
  });
});
