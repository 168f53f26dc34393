import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SafetensorsFile } from '../../checkpoints/safetensors.js';
import { selectBackend } from '../../train/backend.js';
import type { Tf } from '../../train/model.js';
import { DEFAULTS, train, type TrainOptions } from '../../train/trainer.js';
import { writeSyntheticShards } from './synthetic.js';

let tmp: string;
let tf: Tf;
let shards: string;

const opts = (out: string, over: Partial<TrainOptions> = {}): TrainOptions => ({
  ...DEFAULTS,
  shards,
  out,
  rank: 8,
  epochs: 6,
  batch: 64,
  lr: 1e-2,
  valFrac: 0.25,
  bufferRows: 256,
  patience: 10,
  quiet: true,
  resume: false,
  ...over,
});

beforeAll(async () => {
  tmp = mkdtempSync(join(tmpdir(), 'dejavu-train-'));
  shards = (await writeSyntheticShards({ dir: join(tmp, 'shards'), docs: 48, tokens: 24, docsPerShard: 16 })).dir;
  tf = (await selectBackend('wasm')).tf;
});
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe('train on synthetic shards with planted structure', () => {
  it('learns MLP and lookahead attention labels far above chance, writes the output contract', async () => {
    const out = join(tmp, 'out');
    const r = await train(tf, 'wasm', opts(out));
    const mlp = r.layers.filter((l) => l.target === 'mlp');
    const attn = r.layers.filter((l) => l.target === 'attn');
    expect(mlp.map((l) => l.layer)).toEqual([0, 1, 2]);
    expect(attn.map((l) => l.layer)).toEqual([1, 2]); // layer 0 attention stays dense
    for (const l of mlp) {
      expect(l.recall).toBeGreaterThan(0.8);
      expect(l.precision).toBeGreaterThan(1.5 * l.positive_rate);
      expect(l.k99).toBeLessThan(2 * l.true_active);
    }
    for (const l of attn) {
      expect(l.true_active).toBe(1); // round(0.3 * 4) = 1
      expect(l.recall).toBeGreaterThan(0.7);
    }
    const metrics = JSON.parse(readFileSync(join(out, 'metrics.json'), 'utf8'));
    expect(metrics.model_fingerprint).toBe('f'.repeat(64));
    expect(Object.keys(metrics.layers[0])).toEqual(expect.arrayContaining(['layer', 'target', 'recall', 'precision', 'f1', 'true_active', 'predicted_active', 'k95', 'k99']));
    const f = SafetensorsFile.open(join(out, 'layer_01.attn.safetensors'));
    expect(f.info('w1').shape).toEqual([8, 16]);
    expect(f.info('w2').shape).toEqual([4, 8]);
    expect(f.metadata).toMatchObject({ target: 'attn', layer: '1', input: 'att_in', lookahead: '1', rank: '8', model_fingerprint: 'f'.repeat(64) });
    f.close();
  });
});
