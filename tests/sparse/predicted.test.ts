import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadOptCheckpoint } from '../../checkpoints/opt-checkpoint.js';
import type { TensorToWrite } from '../../checkpoints/safetensors.js';
import type { OptCheckpoint } from '../../checkpoints/types.js';
import { BUNDLE_FORMAT, BUNDLE_VERSION, loadBundle, tensorName, writeBundle, type Bundle, type BundleManifest } from '../../export/bundle.js';
import { OptModel } from '../../runtime/cpu/model.js';
import { topK } from '../../runtime/sparse/kernels.js';
import { SparseOptModel } from '../../runtime/sparse/model.js';
import { predictorScores } from '../../runtime/sparse/predictor.js';
import { sparseModePerplexity, densePerplexity } from '../../runtime/sparse/ppl.js';
import { runBundlePpl } from '../../runtime/sparse/eval.js';
import { loadTokenizer } from '../../datasets/tokenizer.js';
import { C4_VALID_JSON, HAVE_FIXTURES, OPT_MINI } from '../helpers/fixtures.js';

function rand(n: number, seed: number, scale: number): Float32Array {
  let s = seed >>> 0;
  return Float32Array.from({ length: n }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return (s / 2 ** 32 - 0.5) * scale;
  });
}

const IDS = Int32Array.from({ length: 20 }, (_, i) => (i === 0 ? 2 : (i * 7919 + 13) % 8192));

describe('predictor application', () => {
  it('scores = w2 (w1 LN(x)) and top-k of them', () => {
    const d = 16,
      r = 3,
      out = 10;
    const w1f = rand(r * d, 1, 1),
      w2f = rand(out * r, 2, 1),
      x = rand(d, 3, 4);
    const s = predictorScores({ w1f, w2f, rank: r, out, input_norm: 'layernorm' }, x, new Float32Array(d), new Float32Array(r), new Float32Array(out));
    const mean = x.reduce((a, b) => a + b, 0) / d;
    const sd = Math.sqrt(x.reduce((a, b) => a + (b - mean) ** 2, 0) / d + 1e-5);
    const xn = Array.from(x, (v) => (v - mean) / sd);
    for (let o = 0; o < out; o++) {
      let want = 0;
      for (let j = 0; j < r; j++) {
        let h = 0;
        for (let i = 0; i < d; i++) h += w1f[j * d + i] * xn[i];
        want += w2f[o * r + j] * h;
      }
      expect(s[o]).toBeCloseTo(want, 4);
    }
  });
});

describe.skipIf(!HAVE_FIXTURES)('predicted and oracle modes on opt-mini (random predictors)', () => {
  let ckpt: OptCheckpoint;
  let bundle: Bundle;
  const root = mkdtempSync(join(tmpdir(), 'dejavu-pred-'));
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  beforeAll(async () => {
    ckpt = await loadOptCheckpoint(OPT_MINI, { quiet: true });
    const c = ckpt.config;
    const tensors: Record<string, TensorToWrite> = {};
    const layers: BundleManifest['layers'] = [];
    for (let l = 0; l < c.numLayers; l++) {
      if (l === 0) {
        layers.push({ layer: 0, mlp: { dense: true, reason: 'test' }, attn: { dense: true, reason: 'test' } });
        continue;
      }
      const entry = (target: 'mlp' | 'attn', out: number, k: number) => {
        const w1 = tensorName(l, target, 'w1');
        const w2 = tensorName(l, target, 'w2');
        tensors[w1] = { dtype: 'F16', shape: [8, c.hiddenSize], data: rand(8 * c.hiddenSize, l * 2 + 1, 0.2) };
        tensors[w2] = { dtype: 'F16', shape: [out, 8], data: rand(out * 8, l * 2 + 2, 0.2) };
        return {
          dense: false as const,
          input: (target === 'mlp' ? 'mlp_in' : 'att_in') as 'mlp_in' | 'att_in',
          lookahead: target === 'mlp' ? 0 : 1,
          rank: 8,
          k,
          k_rule: 'fixed',
          input_norm: 'layernorm' as const,
          w1,
          w2,
          metrics: {},
        };
      };
      layers.push({ layer: l, mlp: entry('mlp', c.ffnDim, 200), attn: entry('attn', c.numHeads, 6) });
    }
    const dir = join(root, 'bundle');
    writeBundle(
      dir,
      {
        format: BUNDLE_FORMAT,
        version: BUNDLE_VERSION,
        model_fingerprint: ckpt.fingerprint,
        model: { n_layers: c.numLayers, d_model: c.hiddenSize, n_heads: c.numHeads, head_dim: c.headDim, ffn_dim: c.ffnDim },
        dtype: 'float16',
        created: 'test',
        source: {},
        layers,
      },
      tensors,
    );
    bundle = loadBundle(dir, ckpt);
  });

  it('predicted mode keeps k per layer, and replaying its selections explicitly gives the same logits', () => {
    const m = new SparseOptModel(ckpt, bundle, { mode: 'predicted' });
    const replay = new SparseOptModel(ckpt, undefined, { mode: 'dense' });
    const c1 = m.newCache(32);
    const c2 = replay.newCache(32);
    for (const id of IDS) {
      const a = m.decodeStep(id, c1);
      expect(m.lastNeurons[0]).toBeNull();
      expect(m.lastNeurons[3]!.length).toBe(200);
      expect(m.lastHeads[2]!.length).toBe(6);
      const sel = { heads: m.lastHeads.map((h) => h?.slice()), neurons: m.lastNeurons.map((n) => n?.slice()) };
      const b = replay.decodeStep(id, c2, sel);
      expect(Array.from(b)).toEqual(Array.from(a));
    }
    const d = m.densities();
    expect(d.mlp[0]).toBe(1);
    expect(d.mlp[1]).toBeCloseTo(200 / 1536, 9);
    expect(d.heads[5]).toBeCloseTo(0.5, 9);
  });

  it('mlpGroups splits the MLP top-k over equal neuron groups with fixed quotas (the CUDA grouped selection)', () => {
    const G = 8, n = ckpt.config.ffnDim, k = 200, per = Math.ceil(n / G);
    const grouped = new SparseOptModel(ckpt, bundle, { mode: 'predicted', mlpGroups: G });
    const global = new SparseOptModel(ckpt, bundle, { mode: 'predicted' });
    const c1 = grouped.newCache(32);
    const c2 = global.newCache(32);
    let differ = 0;
    for (const id of IDS) {
      grouped.decodeStep(id, c1);
      global.decodeStep(id, c2);
      for (let l = 1; l < ckpt.config.numLayers; l++) {
        const got = Array.from(grouped.lastNeurons[l]!);
        for (let r0 = 0; r0 < n; r0 += per) {
          const r1 = Math.min(n, r0 + per);
          expect(got.filter((v) => v >= r0 && v < r1).length).toBe(Math.floor((k * r1) / n) - Math.floor((k * r0) / n));
        }
        differ += Number(got.join() !== Array.from(global.lastNeurons[l]!).join());
      }
    }
    expect(differ).toBeGreaterThan(0);
    expect(() => new SparseOptModel(ckpt, bundle, { mode: 'predicted', mlpGroups: 0 })).toThrow(/--mlp-groups/);
  });

  it('mlpGroups per layer (the CUDA engine\'s G differs by layer): each layer its own quotas; wrong length or value refused', () => {
    const L = ckpt.config.numLayers, n = ckpt.config.ffnDim, k = 200;
    const Gs = Array.from({ length: L }, (_, l) => [1, 3, 8, 16, 5, 2][l % 6]);
    const m = new SparseOptModel(ckpt, bundle, { mode: 'predicted', mlpGroups: Gs });
    const c = m.newCache(8);
    for (const id of IDS.slice(0, 4)) {
      m.decodeStep(id, c);
      for (let l = 1; l < L; l++) {
        // layer l's own G's quotas (G = 1: the global top-k, no quota beyond k)
        const got = Array.from(m.lastNeurons[l]!), per = Math.ceil(n / Gs[l]);
        for (let r0 = 0; r0 < n; r0 += per) {
          const r1 = Math.min(n, r0 + per);
          expect(got.filter((v) => v >= r0 && v < r1).length).toBe(Math.floor((k * r1) / n) - Math.floor((k * r0) / n));
        }
      }
    }
    expect(() => new SparseOptModel(ckpt, bundle, { mode: 'predicted', mlpGroups: [2, 2] })).toThrow(/2 values for 6 layers/);
    expect(() => new SparseOptModel(ckpt, bundle, { mode: 'predicted', mlpGroups: Gs.map((g, l) => (l === 3 ? 0.5 : g)) })).toThrow(
      /0\.5 must be an integer.*--mlp-groups|--mlp-groups.*0\.5 must be an integer/,
    );
  });

  it('the attention selection at layer l is the top-k of the predictor applied to layer l-1 input', () => {
    // Layer 1's heads come from att_in of layer 0 = the embedding + position of the token, known without running.
    const m = new SparseOptModel(ckpt, bundle, { mode: 'predicted' });
    const cache = m.newCache(4);
    m.decodeStep(IDS[0], cache);
    const d = ckpt.config.hiddenSize;
    const x = new Float32Array(d);
    for (let i = 0; i < d; i++) x[i] = ckpt.weights.embedTokens[IDS[0] * d + i] + ckpt.weights.embedPositions[2 * d + i];
    const p = bundle.attn[1]!;
    const s = predictorScores(p, x, new Float32Array(d), new Float32Array(p.rank), new Float32Array(p.out));
    expect(Array.from(m.lastHeads[1]!)).toEqual(Array.from(topK(s, p.out, p.k, new Int32Array(p.k))));
  });

  it('oracle and predicted perplexity run through the sparse step; k = everything reproduces dense', async () => {
    const tok = await loadTokenizer(OPT_MINI);
    const docs = [
      tok.encode('The city council met on Tuesday evening to discuss the new budget for the public library and the parks.'),
      tok.encode('Preheat the oven to 350 degrees. Mix the flour, sugar and butter in a large bowl until smooth.'),
    ];
    const dense = await densePerplexity(ckpt, docs, { quiet: true, dense: await OptModel.load(ckpt, { backend: 'js' }) });
    const full = sparseModePerplexity(ckpt, bundle, docs, 'oracle', { quiet: true, mlpK: 1536, headsK: 12 });
    expect(Math.abs(full.ppl / dense.ppl - 1)).toBeLessThan(1e-5);
    expect(full.tokens).toBe(dense.tokens);
    const oracle = sparseModePerplexity(ckpt, bundle, docs, 'oracle', { quiet: true, mlpK: 150 });
    const pred = sparseModePerplexity(ckpt, bundle, docs, 'predicted', { quiet: true, mlpK: 150 });
    // Random predictors pick poorly: worse than the oracle at the same k.
    expect(pred.ppl).toBeGreaterThan(oracle.ppl);
    expect(oracle.mlp_density_per_layer![2]).toBeCloseTo(150 / 1536, 9);
  });

  it('eval ppl --bundle result has the documented keys (dense/oracle/predicted, densities)', async () => {
    const r = (await runBundlePpl({ model: OPT_MINI, bundle: bundle.dir, data: [C4_VALID_JSON], selection: { docs: 2 }, maxLen: 24, quiet: true, ckpt, loadedBundle: bundle })) as Record<string, any>;
    for (const m of ['dense', 'oracle', 'predicted']) expect(r[m].ppl).toBeGreaterThan(1);
    expect(r.tokens).toBe(2 * 23);
    expect(r.docs).toBe(2);
    expect(r.mlp_density).toBeCloseTo((1 + 5 * (200 / 1536)) / 6, 4);
    expect(r.head_density).toBeCloseTo((1 + 5 * 0.5) / 6, 4);
    expect(r.oracle.delta_vs_dense).toBeCloseTo(r.oracle.ppl / r.dense.ppl - 1, 3);
  });
});
