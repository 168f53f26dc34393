import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { OptCheckpoint, OptConfig } from '../../checkpoints/types.js';
import { writeSafetensors, type TensorToWrite } from '../../checkpoints/safetensors.js';
import { f16ToF32, f32ToF16 } from '../../checkpoints/float16.js';
import {
  BUNDLE_FORMAT,
  BUNDLE_VERSION,
  loadBundle,
  readManifest,
  tensorName,
  writeBundle,
  type BundleManifest,
} from '../../export/bundle.js';

const dims = { n_layers: 3, d_model: 8, n_heads: 2, head_dim: 4, ffn_dim: 16 };
const FP = 'f'.repeat(64);

function fakeCkpt(fingerprint = FP, over: Partial<OptConfig> = {}): OptCheckpoint {
  const config = { numLayers: 3, hiddenSize: 8, numHeads: 2, headDim: 4, ffnDim: 16, ...over } as OptConfig;
  const weights = {} as OptCheckpoint['weights'];
  return { dir: '/models/fake', config, weights, fingerprint, architectureFingerprint: 'e'.repeat(64), weightsSha256: '1'.repeat(64), format: 'test' };
}

function values(n: number, seed: number): Float32Array {
  return Float32Array.from({ length: n }, (_, i) => Math.sin(seed * 1000 + i) * 0.5);
}

/** Layer 0 dense; layers 1..2 with an mlp predictor (rank 3) and an attn lookahead predictor (rank 2). */
function sampleBundle(): { manifest: BundleManifest; tensors: Record<string, TensorToWrite> } {
  const tensors: Record<string, TensorToWrite> = {};
  const layers: BundleManifest['layers'] = [];
  for (let l = 0; l < 3; l++) {
    if (l === 0) {
      layers.push({ layer: 0, mlp: { dense: true, reason: 'no predictor' }, attn: { dense: true, reason: 'no predictor' } });
      continue;
    }
    const entry = (target: 'mlp' | 'attn', rank: number, out: number, k: number, lookahead: number) => {
      tensors[tensorName(l, target, 'w1')] = { dtype: 'F16', shape: [rank, 8], data: values(rank * 8, l * 10 + rank) };
      tensors[tensorName(l, target, 'w2')] = { dtype: 'F16', shape: [out, rank], data: values(out * rank, l * 20 + rank) };
      return {
        dense: false as const,
        input: (target === 'mlp' ? 'mlp_in' : 'att_in') as 'mlp_in' | 'att_in',
        lookahead,
        rank,
        k,
        k_rule: 'k99',
        input_norm: 'none' as const,
        w1: tensorName(l, target, 'w1'),
        w2: tensorName(l, target, 'w2'),
        metrics: { recall: 0.9, k99: k },
      };
    };
    layers.push({ layer: l, mlp: entry('mlp', 3, 16, 4, 0), attn: entry('attn', 2, 2, 1, 1) });
  }
  const manifest: BundleManifest = {
    format: BUNDLE_FORMAT,
    version: BUNDLE_VERSION,
    model_fingerprint: FP,
    model: dims,
    dtype: 'float16',
    created: '2026-01-01T00:00:00Z',
    source: {},
    layers,
  };
  return { manifest, tensors };
}

const root = mkdtempSync(join(tmpdir(), 'dejavu-bundle-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));
let n = 0;
function written(edit?: (m: BundleManifest, t: Record<string, TensorToWrite>) => void): string {
  const dir = join(root, `b${n++}`);
  const { manifest, tensors } = sampleBundle();
  edit?.(manifest, tensors);
  writeBundle(dir, manifest, tensors);
  return dir;
}

describe('bundle round trip', () => {
  it('loads what writeBundle wrote, fp16 weights as fp32, dense layers as null', () => {
    const dir = written();
    const b = loadBundle(dir, fakeCkpt());
    expect(b.mlp[0]).toBeNull();
    expect(b.attn[0]).toBeNull();
    const p = b.attn[2]!;
    expect(p.sourceLayer).toBe(1);
    expect(p.out).toBe(2);
    expect(p.w2f.length).toBe(4);
    const want = f16ToF32(f32ToF16(values(16 * 3, 1 * 20 + 3)));
    expect(Array.from(b.mlp[1]!.w2f)).toEqual(Array.from(want));
    expect(readManifest(dir).layers[1].mlp).toMatchObject({ dense: false, k: 4, rank: 3 });
  });
});

describe('bundle errors name the file and the problem', () => {
  it('wrong model: fingerprint differs', () => {
    const dir = written();
    expect(() => loadBundle(dir, fakeCkpt('0'.repeat(64)))).toThrow(/manifest\.json.*another model/);
  });

  it('wrong model: dims differ even with the same fingerprint', () => {
    const dir = written();
    expect(() => loadBundle(dir, fakeCkpt(FP, { ffnDim: 32 }))).toThrow(/manifest\.json: model\.ffn_dim is 16 but/);
  });

  it('wrong shapes: a predictor tensor of the wrong shape', () => {
    const dir = written((_, t) => {
      t[tensorName(2, 'mlp', 'w2')] = { dtype: 'F16', shape: [15, 3], data: values(45, 0) };
    });
    expect(() => loadBundle(dir, fakeCkpt())).toThrow(/predictors\.safetensors: tensor layers\.2\.mlp\.w2 has shape \[15, 3\], expected \[16, 3\]/);
  });

  it('wrong shapes: rank in the manifest disagrees with the tensors', () => {
    const dir = written((m) => {
      (m.layers[1].attn as { rank: number }).rank = 5;
    });
    expect(() => loadBundle(dir)).toThrow(/layers\.1\.attn\.w1 has shape \[2, 8\], expected \[5, 8\]/);
  });

  it('wrong dtype: fp32 predictor tensors are refused', () => {
    const dir = written((_, t) => {
      t[tensorName(1, 'mlp', 'w1')].dtype = 'F32';
    });
    expect(() => loadBundle(dir)).toThrow(/layers\.1\.mlp\.w1 is F32, expected F16/);
  });

  it('missing file: predictors.safetensors', () => {
    const dir = written();
    rmSync(join(dir, 'predictors.safetensors'));
    expect(() => loadBundle(dir)).toThrow(/predictors\.safetensors: missing predictors\.safetensors/);
  });

  it('missing file: manifest.json, and a missing folder', () => {
    const dir = written();
    rmSync(join(dir, 'manifest.json'));
    expect(() => loadBundle(dir)).toThrow(/manifest\.json: missing manifest\.json/);
    expect(() => loadBundle(join(root, 'nope'))).toThrow(/nope: bundle folder not found/);
  });

  it('missing tensor named by the manifest', () => {
    const dir = written((_, t) => {
      delete t[tensorName(2, 'attn', 'w1')];
    });
    expect(() => loadBundle(dir)).toThrow(/missing tensor layers\.2\.attn\.w1 \(layer 2 attn predictor\)/);
  });

  it('unknown format version, and not a bundle at all', () => {
    const dir = written((m) => {
      m.version = 2;
    });
    expect(() => loadBundle(dir)).toThrow(/manifest\.json: unknown bundle format version 2 \(this dejavu reads version 1/);
    const other = written();
    const path = join(other, 'manifest.json');
    writeFileSync(path, JSON.stringify({ ...JSON.parse(readFileSync(path, 'utf8')), format: 'something-else' }));
    expect(() => loadBundle(other)).toThrow(/not a dejavu bundle/);
    writeFileSync(path, '{"format": ');
    expect(() => loadBundle(other)).toThrow(/manifest\.json: invalid JSON/);
  });

  it('k out of range and bad lookahead are refused', () => {
    const dir = written((m) => {
      (m.layers[1].mlp as { k: number }).k = 17;
    });
    expect(() => loadBundle(dir)).toThrow(/layers\[1\]\.mlp\.k is 17, expected an integer in 1\.\.16/);
    const dir2 = written((m) => {
      (m.layers[1].attn as { lookahead: number }).lookahead = 2;
    });
    expect(() => loadBundle(dir2)).toThrow(/layers\[1\]\.attn\.lookahead is 2/);
  });

  it('tensors from another export: fingerprint in the safetensors metadata differs', () => {
    const dir = written();
    const { tensors } = sampleBundle();
    writeSafetensors(join(dir, 'predictors.safetensors'), tensors, { model_fingerprint: 'e'.repeat(64) });
    expect(() => loadBundle(dir)).toThrow(/differs from manifest\.json/);
  });
});

describe('non-finite predictor weights', () => {
  it('loadBundle refuses a NaN or Inf weight, naming the file and the tensor', () => {
    for (const bad of [NaN, Infinity]) {
      const { manifest, tensors } = sampleBundle();
      const name = tensorName(2, 'mlp', 'w2');
      (tensors[name].data as Float32Array)[5] = bad;
      const dir = join(root, `nonfinite-${bad}`);
      writeBundle(dir, manifest, tensors);
      expect(() => loadBundle(dir, fakeCkpt())).toThrow(
        `${join(dir, 'predictors.safetensors')}: tensor layers.2.mlp.w2 holds ${bad} at index 5 (layer 2 mlp predictor; re-export the bundle)`,
      );
    }
  });
});
