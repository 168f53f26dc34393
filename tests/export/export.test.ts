import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { writeSafetensors } from '../../checkpoints/safetensors.js';
import type { OptCheckpoint, OptConfig } from '../../checkpoints/types.js';
import { loadBundle } from '../../export/bundle.js';
import { exportBundle, predictorFile } from '../../export/export.js';

const FP = 'a'.repeat(64);
const ckpt: OptCheckpoint = {
  dir: '/models/fake',
  config: { numLayers: 3, hiddenSize: 8, numHeads: 4, headDim: 2, ffnDim: 32 } as OptConfig,
  weights: {} as OptCheckpoint['weights'],
  fingerprint: FP,
  architectureFingerprint: 'e'.repeat(64),
  weightsSha256: '1'.repeat(64),
  format: 'test',
};

const root = mkdtempSync(join(tmpdir(), 'dejavu-export-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));
let n = 0;

/** A train output folder: mlp predictors for layers 0-2 (rank 4, mlp_in), attn for layers 1-2 (rank 3, att_in@l-1). */
function trainOutput(edit?: { skipFile?: string; fingerprint?: string; rankOverride?: number }): string {
  const dir = join(root, `p${n++}`);
  mkdirSync(dir);
  const layers: Record<string, unknown>[] = [];
  for (let l = 0; l < 3; l++) {
    for (const target of ['mlp', 'attn'] as const) {
      if (target === 'attn' && l === 0) continue;
      const rank = target === 'mlp' ? 4 : 3;
      const out = target === 'mlp' ? 32 : 4;
      const file = predictorFile(dir, l, target);
      layers.push({ layer: l, target, recall: 0.9, precision: 0.5, f1: 0.6, true_active: 3, predicted_active: 5, k95: 5.2 + l, k99: target === 'mlp' ? 9.01 + l : 2.5, tokens: 100 });
      if (edit?.skipFile === `${l}.${target}`) continue;
      const r = edit?.rankOverride ?? rank;
      writeSafetensors(
        file,
        {
          w1: { dtype: 'F32', shape: [r, 8], data: Float32Array.from({ length: r * 8 }, (_, i) => i / 100) },
          w2: { dtype: 'F32', shape: [out, rank], data: Float32Array.from({ length: out * rank }, (_, i) => -i / 100) },
        },
        {
          target,
          layer: String(l),
          input: target === 'mlp' ? 'mlp_in' : 'att_in',
          lookahead: target === 'mlp' ? '0' : '1',
          rank: String(rank),
          model_fingerprint: edit?.fingerprint ?? FP,
          input_norm: 'layernorm',
        },
      );
    }
  }
  writeFileSync(join(dir, 'metrics.json'), JSON.stringify({ model_fingerprint: FP, args: { rank: 4 }, layers }));
  return dir;
}

describe('dejavu export', () => {
  it('chooses k from k99 (ceil), records inputs/lookahead/rank/metrics, marks untrained targets dense', () => {
    const out = join(root, 'bundle-a');
    const s = exportBundle({ predictors: trainOutput(), out }, ckpt);
    expect(s.layers[0].attn).toEqual({ dense: true });
    expect(s.layers[1].mlp).toMatchObject({ k: 11, rank: 4, input: 'mlp_in', lookahead: 0, k_rule: 'k99' });
    expect(s.layers[2].attn).toMatchObject({ k: 3, rank: 3, input: 'att_in', lookahead: 1 });
    const b = loadBundle(out, ckpt);
    expect(b.attn[0]).toBeNull();
    expect(b.mlp[2]!.k).toBe(12);
    expect(b.mlp[2]!.input_norm).toBe('layernorm');
    expect(b.attn[1]!.sourceLayer).toBe(0);
    expect(b.mlp[1]!.metrics.k99).toBeCloseTo(10.01, 6);
    expect(b.manifest.layers[0].attn).toEqual({ dense: true, reason: 'no predictor trained' });
    // fp16 storage of the fp32 training weights
    expect(b.mlp[0]!.w1f[5]).toBeCloseTo(0.05, 3);
  });

  it('--recall 0.95 uses k95; --mlp-k/--heads-k fix k', () => {
    const p = trainOutput();
    const s95 = exportBundle({ predictors: p, out: join(root, 'bundle-b'), recall: 0.95 }, ckpt);
    expect(s95.layers[0].mlp).toMatchObject({ k: 6, k_rule: 'k95' });
    const sf = exportBundle({ predictors: p, out: join(root, 'bundle-c'), mlpK: 3, headsK: 2 }, ckpt);
    expect(sf.layers[2].mlp).toMatchObject({ k: 3, k_rule: 'fixed' });
    expect(sf.layers[1].attn).toMatchObject({ k: 2, k_rule: 'fixed' });
    const sl = exportBundle({ predictors: p, out: join(root, 'bundle-d'), layers: '1-2', mlpK: 5 }, ckpt);
    expect(sl.layers[0].mlp).toEqual({ dense: true });
    expect(sl.layers[1].mlp).toMatchObject({ k: 5 });
    expect(loadBundle(join(root, 'bundle-d'), ckpt).manifest.layers[0].mlp).toEqual({ dense: true, reason: 'left dense by --layers 1-2' });
    expect(() => exportBundle({ predictors: p, out: join(root, 'x'), layers: '7' }, ckpt)).toThrow(/--layers: layer 7 is out of range: the model has 3 layers \(0-2\)/);
    expect(() => exportBundle({ predictors: p, out: join(root, 'x'), recall: 0.9 }, ckpt)).toThrow(/--recall: 0.9 is not supported/);
    expect(() => exportBundle({ predictors: p, out: join(root, 'x'), headsK: 5 }, ckpt)).toThrow(/--heads-k: 5 must be an integer in 1\.\.4/);
  });

  it('refuses predictors of another model, incomplete training and bad shapes, naming the file', () => {
    const other = { ...ckpt, fingerprint: 'b'.repeat(64) };
    expect(() => exportBundle({ predictors: trainOutput(), out: join(root, 'x') }, other)).toThrow(/metrics\.json: predictors for another model or other weights: model_fingerprint a{16}… recorded here, b{16}… for \/models\/fake/);
    expect(() => exportBundle({ predictors: trainOutput({ fingerprint: 'c'.repeat(64) }), out: join(root, 'x') }, ckpt)).toThrow(
      /layer_00\.mlp\.safetensors: a predictor for another model or other weights: model_fingerprint c{16}… recorded here, a{16}… for/,
    );
    expect(() => exportBundle({ predictors: trainOutput({ skipFile: '2.attn' }), out: join(root, 'x') }, ckpt)).toThrow(
      /layer_02\.attn\.safetensors: metrics\.json lists layer 2 attn but its predictor file is missing/,
    );
    expect(() => exportBundle({ predictors: trainOutput({ rankOverride: 5 }), out: join(root, 'x') }, ckpt)).toThrow(
      /layer_00\.mlp\.safetensors: tensor w1 has shape \[5, 8\], expected \[4, 8\]/,
    );
    expect(() => exportBundle({ predictors: join(root, 'none'), out: join(root, 'x') }, ckpt)).toThrow(/none: predictors folder not found/);
  });

  it('refuses predictor weights that are not finite or beyond fp16, naming the file and tensor', () => {
    for (const [bad, shown] of [[NaN, 'NaN'], [1e6, '1000000']] as const) {
      const p = trainOutput();
      const file = predictorFile(p, 1, 'mlp');
      const w2 = Float32Array.from({ length: 32 * 4 }, () => 0.1);
      w2[7] = bad;
      writeSafetensors(
        file,
        { w1: { dtype: 'F32', shape: [4, 8], data: new Float32Array(32) }, w2: { dtype: 'F32', shape: [32, 4], data: w2 } },
        { target: 'mlp', layer: '1', input: 'mlp_in', lookahead: '0', rank: '4', model_fingerprint: FP, input_norm: 'layernorm' },
      );
      const out = join(root, `nonfinite-${shown}`);
      expect(() => exportBundle({ predictors: p, out }, ckpt)).toThrow(`${file}: tensor w2 holds ${shown} at index 7`);
      expect(existsSync(out)).toBe(false);
    }
  });
});
