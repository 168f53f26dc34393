/**
 * export to a quality budget end to end on opt-mini (examples/): a train-output folder rebuilt from the att_in example
 * bundle's predictors (layer 5 only, to stay small), 2 calibration docs x 32 tokens from the documents its
 * stand-in shards record, so the overlap check has something to find. Checks the manifest's quality record, the
 * impossible budget (densest bundle), what eval prints, the report's charts and `--recall` with --calib-data.
 */
import { mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadOptCheckpoint } from '../../checkpoints/opt-checkpoint.js';
import { writeSafetensors } from '../../checkpoints/safetensors.js';
import type { OptCheckpoint } from '../../checkpoints/types.js';
import { exportMeasured, exportToBudget, type CalibrationOptions } from '../../export/budget.js';
import { loadBundle, readManifest } from '../../export/bundle.js';
import { predictorFile } from '../../export/export.js';
import { describeRecordedQuality, type QualityRecord } from '../../export/quality.js';
import { writeReport } from '../../report/report.js';
import { formatBundlePpl, runBundlePpl } from '../../runtime/sparse/eval.js';
import { REPO_ROOT } from '../helpers/fixtures.js';

const MODEL = join(REPO_ROOT, 'examples', 'opt-mini');
const BUNDLE = join(REPO_ROOT, 'examples', 'opt-mini-bundle-att-in');
const TRAIN_TEXT = join(REPO_ROOT, 'examples', 'c4mini', 'c4mini-train-first400.json.gz');

const root = mkdtempSync(join(tmpdir(), 'dejavu-budget-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));
let ckpt: OptCheckpoint;
const pred = join(root, 'pred');

/** A train output folder holding the example bundle's predictors (fp32), its shards manifest naming 3 train docs. */
function predictorsFromBundle(): void {
  const b = loadBundle(BUNDLE, ckpt);
  const shards = join(root, 'shards');
  mkdirSync(shards, { recursive: true });
  mkdirSync(pred, { recursive: true });
  writeFileSync(join(shards, 'manifest.json'), JSON.stringify({ complete: true, args: { data: [{ path: TRAIN_TEXT, bytes: statSync(TRAIN_TEXT).size }], docs: 3, sample: null, seed: null } }));
  const layers: Record<string, unknown>[] = [];
  for (const p of [...b.mlp, ...b.attn]) {
    if (!p) continue;
    writeSafetensors(
      predictorFile(pred, p.layer, p.target),
      { w1: { dtype: 'F32', shape: [p.rank, 384], data: p.w1f }, w2: { dtype: 'F32', shape: [p.out, p.rank], data: p.w2f } },
      { target: p.target, layer: String(p.layer), input: p.input, lookahead: String(p.lookahead), rank: String(p.rank), model_fingerprint: ckpt.fingerprint, input_norm: p.input_norm },
    );
    layers.push({ layer: p.layer, target: p.target, ...p.metrics });
  }
  writeFileSync(join(pred, 'metrics.json'), JSON.stringify({ model_fingerprint: ckpt.fingerprint, args: { shards }, complete: true, layers }));
}

const calib = (o: Partial<CalibrationOptions> = {}): CalibrationOptions => ({ model: MODEL, data: [TRAIN_TEXT], docs: 2, maxLen: 32, quiet: true, threads: 1, ...o });

describe('export --ppl-budget on opt-mini', () => {
  beforeAll(async () => {
    ckpt = await loadOptCheckpoint(MODEL, { quiet: true });
    predictorsFromBundle();
  });

  it('records the budget, calibration, measured ppl, KV policy, selection and per-layer k; within budget', async () => {
    const out = join(root, 'b5');
    const s = await exportToBudget({ predictors: pred, out, layers: '5' }, 0.05, calib(), ckpt);
    const q = readManifest(out).quality as unknown as QualityRecord;
    expect(q).toEqual(s.quality);
    expect(q.budget).toBe(0.05);
    expect(q.calibration).toMatchObject({ data: [TRAIN_TEXT], docs: 2, max_len: 32, selection: { docs: 2 } });
    expect(q.calibration.tokens).toBe(62);
    expect(q.kv_policy).toBe('all');
    expect(q.mlp_selection).toBe('exact');
    expect(q.delta).toBeLessThanOrEqual(0.05);
    expect(q.predicted_ppl).toBeCloseTo(q.dense_ppl * (1 + q.delta), 2);
    expect(q.layers.map((L) => L.layer)).toEqual([0, 1, 2, 3, 4, 5]);
    expect(q.layers.slice(0, 5).every((L) => L.mlp_k === null && L.heads_k === null)).toBe(true);
    // The manifest's layer entries carry the same k (rule "budget"), the measured bytes are below dense when sparse.
    const m = readManifest(out);
    for (const L of q.layers) {
      const e = m.layers[L.layer].mlp;
      expect(e.dense ? null : e.k).toBe(L.mlp_k);
      if (!e.dense) expect(e.k_rule).toBe('budget');
    }
    expect(q.bytes_per_token.bundle).toBeLessThanOrEqual(q.bytes_per_token.dense);
    expect(q.search!.units).toHaveLength(2);
    expect(q.search!.path[0].estimate).toBe(0);
    expect(q.search!.evaluations).toBeGreaterThan(0);
    // Both calibration docs are among the 3 documents the (stand-in) shards were collected from.
    expect(q.overlap).toMatchObject({ checked: true, overlap: 2, calibration_docs: 2, training_docs: 3 });

    // eval prints the recorded quality beside its own figures.
    const r = await runBundlePpl({ model: MODEL, bundle: out, data: [TRAIN_TEXT], selection: { docs: 1 }, maxLen: 16, modes: ['predicted'], quiet: true, ckpt });
    expect(formatBundlePpl(r)).toContain(`bundle's ${describeRecordedQuality(m)}`);
    expect((r.recorded_quality as { budget: number }).budget).toBe(0.05);

    // The report draws the chosen k and the frontier.
    const rep = writeReport({ out: join(root, 'r.html'), bundle: out });
    expect(rep.charts).toEqual(['bundle-density', 'bundle-k', 'budget-frontier']);
  }, 240_000);

  it('an impossible budget (0%) ends with the densest bundle and says so', async () => {
    const out = join(root, 'b0');
    const s = await exportToBudget({ predictors: pred, out, layers: '4-5' }, 0, calib({ docs: 1 }), ckpt);
    expect(s.quality.met).toBe(false);
    expect(s.quality.message).toMatch(/only the dense model meets it; the bundle keeps every layer dense \(the densest bundle\)/);
    expect(s.quality.delta).toBe(0);
    expect(readManifest(out).layers.every((L) => L.mlp.dense && L.attn.dense)).toBe(true);
    expect(describeRecordedQuality(readManifest(out))).toMatch(/not met: densest bundle/);
  }, 120_000);

  it('--recall with --calib-data records the cost of the k99 bundle (no budget), KV selected', async () => {
    const out = join(root, 'k99');
    const s = await exportMeasured({ predictors: pred, out, layers: '5' }, calib({ docs: 1, kvPolicy: 'selected' }), ckpt);
    expect(s.quality.budget).toBeNull();
    expect(s.quality.kv_policy).toBe('selected');
    expect(s.quality.layers[5]).toEqual({ layer: 5, mlp_k: 286, heads_k: 8 });
    expect(readManifest(out).layers[5].mlp).toMatchObject({ k: 286, k_rule: 'k99' });
    expect(s.quality.predicted_ppl).toBeGreaterThan(0);
  }, 120_000);
});
