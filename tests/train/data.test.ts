import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { countSplit, trainBatches, validationBatches } from '../../train/data.js';
import { planJobs } from '../../train/jobs.js';
import { isValidationDoc } from '../../train/rng.js';
import { openShardSet, readAligned, type ShardSet } from '../../train/shard-reader.js';
import { writeSyntheticShards } from './synthetic.js';

let tmp: string;
let set: ShardSet;
beforeAll(async () => {
  tmp = mkdtempSync(join(tmpdir(), 'dejavu-data-'));
  await writeSyntheticShards({ dir: join(tmp, 's'), docs: 30, tokens: 10, docsPerShard: 7 });
  set = await openShardSet(join(tmp, 's'));
});
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const key = (x: Float32Array, i: number, d: number) => Array.from(x.subarray(i * d, i * d + 3)).join(',');

describe('shard streaming', () => {
  it('opens the folder: layers, shards, rows, dims, fingerprint', () => {
    expect(set.layers).toEqual([0, 1, 2]);
    expect(set.shards).toHaveLength(5); // 30 docs / 7 per shard
    expect(set.rows.reduce((a, b) => a + b, 0)).toBe(300);
    expect(set.dims).toEqual({ dModel: 16, nHeads: 4, ffnDim: 24, topK: 0 });
    expect(set.fingerprint).toBe('f'.repeat(64));
  });

  it('pairs rows across layers by index', async () => {
    let n = 0;
    for await (const [a, b] of readAligned(set, 2, [{ layer: 0, columns: ['att_in'] }, { layer: 2, columns: ['head_norm'] }])) {
      expect(Array.from(a.doc)).toEqual(Array.from(b.doc));
      expect(a.cols.get('att_in')!.width).toBe(16);
      expect(b.cols.get('head_norm')!.width).toBe(4);
      n += a.rows;
    }
    expect(n).toBe(set.rows[2]);
  });

  it('an epoch streams every training token exactly once through a small buffer, and no validation token', async () => {
    const split = { seed: 4, valFrac: 0.3 };
    const [job] = planJobs([1], set.layers, ['attn'], set.dims, { headFrac: 0.5, mlpInput: 'mlp_in' });
    const counts = await countSplit(set, job, split);
    expect(counts.train + counts.val).toBe(300);
    expect(counts.trainPositives).toBe(counts.train * 2); // top 2 of 4 heads per token
    const valDocs = Array.from({ length: 30 }, (_, i) => i).filter((d) => isValidationDoc(d, 4, 0.3));
    expect(counts.val).toBe(valDocs.length * 10);

    const seen = (async (epochSeed: number) => {
      const keys: string[] = [];
      for await (const b of trainBatches(set, job, { batch: 16, bufferRows: 20, inputNorm: 'none', split, epochSeed })) {
        expect(b.n).toBeLessThanOrEqual(16);
        for (let i = 0; i < b.n; i++) keys.push(key(b.x, i, 16));
      }
      return keys;
    });
    const e0 = await seen(1);
    const e0again = await seen(1);
    const e1 = await seen(2);
    expect(e0).toHaveLength(counts.train);
    expect(new Set(e0).size).toBe(counts.train);
    expect(e0again).toEqual(e0); // seeded
    expect(e1).not.toEqual(e0); // reshuffled per epoch
    expect([...e1].sort()).toEqual([...e0].sort());

    const val: string[] = [];
    for await (const b of validationBatches(set, job, { batch: 16, inputNorm: 'none', split })) for (let i = 0; i < b.n; i++) val.push(key(b.x, i, 16));
    expect(val).toHaveLength(counts.val);
    const trainSet = new Set(e0);
    expect(val.filter((k) => trainSet.has(k))).toEqual([]);
  });

  it('layernorm input preprocessing gives zero-mean unit-variance rows', async () => {
    const [job] = planJobs([2], set.layers, ['mlp'], set.dims, { headFrac: 0.3, mlpInput: 'mlp_in' });
    for await (const b of validationBatches(set, job, { batch: 8, inputNorm: 'layernorm', split: { seed: 0, valFrac: 0.5 } })) {
      const r = b.x.subarray(0, 16);
      const mean = r.reduce((a, v) => a + v, 0) / 16;
      const varr = r.reduce((a, v) => a + (v - mean) ** 2, 0) / 16;
      expect(mean).toBeCloseTo(0, 5);
      expect(varr).toBeCloseTo(1, 3);
      break;
    }
  });
});
