/**
 * The OPT variants opt-mini does not exercise (post-LN, project_in/out, no final LayerNorm, no LN affine, no biases),
 * on tiny random configs, against an independent float64 implementation written here with plain loops straight from
 * Hugging Face's modeling_opt.py. Needs no fixtures.
 */
import { afterAll, describe, expect, it } from 'vitest';
import type { LayerWeights, OptConfig, OptWeights } from '../../checkpoints/types.js';
import { OptModel } from '../../runtime/cpu/model.js';
import { randn, relErr } from './util.js';

function makeConfig(over: Partial<OptConfig>): OptConfig {
  return {
    vocabSize: 40,
    hiddenSize: 16,
    numLayers: 2,
    numHeads: 4,
    headDim: 4,
    ffnDim: 24,
    maxPositionEmbeddings: 32,
    wordEmbedProjDim: 16,
    doLayerNormBefore: true,
    activation: 'relu',
    enableBias: true,
    layerNormElementwiseAffine: true,
    hasFinalLayerNorm: true,
    tieWordEmbeddings: true,
    bosTokenId: 2,
    eosTokenId: 2,
    padTokenId: 1,
    dtype: 'float32',
    ...over,
  };
}

function makeWeights(c: OptConfig, seed: number): OptWeights {
  let s = seed;
  const mat = (out: number, inn: number) => randn(out * inn, s++, 1.2 / Math.sqrt(inn));
  const vec = (n: number, std = 0.2) => (c.enableBias ? randn(n, s++, std) : new Float32Array(0));
  const lnW = (n: number) => randn(n, s++, 0.2).map((v) => 1 + v);
  const lnB = (n: number) => randn(n, s++, 0.2);
  const d = c.hiddenSize;
  const p = c.wordEmbedProjDim;
  const layers: LayerWeights[] = [];
  for (let l = 0; l < c.numLayers; l++) {
    layers.push({
      attnLnW: lnW(d),
      attnLnB: lnB(d),
      qW: mat(d, d),
      qB: vec(d),
      kW: mat(d, d),
      kB: vec(d),
      vW: mat(d, d),
      vB: vec(d),
      oW: mat(d, d),
      oB: vec(d),
      mlpLnW: lnW(d),
      mlpLnB: lnB(d),
      fc1W: mat(c.ffnDim, d),
      fc1B: vec(c.ffnDim),
      fc2W: mat(d, c.ffnDim),
      fc2B: vec(d),
    });
  }
  const embedTokens = randn(c.vocabSize * p, s++, 1);
  return {
    embedTokens,
    embedPositions: randn((c.maxPositionEmbeddings + 2) * d, s++, 0.5),
    projectIn: p !== d ? mat(d, p) : undefined,
    projectOut: p !== d ? mat(p, d) : undefined,
    finalLnW: c.hasFinalLayerNorm ? lnW(d) : undefined,
    finalLnB: c.hasFinalLayerNorm ? lnB(d) : undefined,
    lmHead: embedTokens,
    layers,
  };
}

// ---- independent float64 reference (plain loops; arrays of numbers) ----
type Vec = number[];
function linear(W: Float32Array, b: Float32Array | undefined, x: Vec, out: number): Vec {
  const inn = x.length;
  const y: Vec = [];
  for (let o = 0; o < out; o++) {
    let s = b && b.length ? b[o] : 0;
    for (let i = 0; i < inn; i++) s += W[o * inn + i] * x[i];
    y.push(s);
  }
  return y;
}
function ln(x: Vec, w: Float32Array | undefined, b: Float32Array | undefined, affine: boolean): Vec {
  const n = x.length;
  const mean = x.reduce((a, v) => a + v, 0) / n;
  const variance = x.reduce((a, v) => a + (v - mean) ** 2, 0) / n;
  return x.map((v, i) => {
    const z = (v - mean) / Math.sqrt(variance + 1e-5);
    return affine ? z * w![i] + b![i] : z;
  });
}
function reference(c: OptConfig, W: OptWeights, ids: number[]): number[][] {
  const d = c.hiddenSize;
  const p = c.wordEmbedProjDim;
  const hd = c.headDim;
  const scale = 1 / Math.sqrt(hd);
  const T = ids.length;
  let xs: Vec[] = ids.map((id, t) => {
    let e: Vec = Array.from(W.embedTokens.subarray(id * p, (id + 1) * p));
    if (W.projectIn) e = linear(W.projectIn, undefined, e, d);
    return e.map((v, i) => v + W.embedPositions[(t + 2) * d + i]);
  });
  for (const L of W.layers) {
    const h1 = xs.map((x) => (c.doLayerNormBefore ? ln(x, L.attnLnW, L.attnLnB, c.layerNormElementwiseAffine) : x));
    const q = h1.map((h) => linear(L.qW, L.qB, h, d).map((v) => v * scale));
    const k = h1.map((h) => linear(L.kW, L.kB, h, d));
    const v = h1.map((h) => linear(L.vW, L.vB, h, d));
    const att: Vec[] = [];
    for (let t = 0; t < T; t++) {
      const o: Vec = new Array(d).fill(0);
      for (let head = 0; head < c.numHeads; head++) {
        const sc: Vec = [];
        for (let j = 0; j <= t; j++) {
          let s = 0;
          for (let i = 0; i < hd; i++) s += q[t][head * hd + i] * k[j][head * hd + i];
          sc.push(s);
        }
        const m = Math.max(...sc);
        const e = sc.map((s) => Math.exp(s - m));
        const z = e.reduce((a, b) => a + b, 0);
        for (let j = 0; j <= t; j++) for (let i = 0; i < hd; i++) o[head * hd + i] += (e[j] / z) * v[j][head * hd + i];
      }
      att.push(o);
    }
    xs = xs.map((x, t) => {
      const a = linear(L.oW, L.oB, att[t], d);
      let y = x.map((xi, i) => xi + a[i]);
      if (!c.doLayerNormBefore) y = ln(y, L.attnLnW, L.attnLnB, c.layerNormElementwiseAffine);
      const h2 = c.doLayerNormBefore ? ln(y, L.mlpLnW, L.mlpLnB, c.layerNormElementwiseAffine) : y;
      const f = linear(L.fc1W, L.fc1B, h2, c.ffnDim).map((u) => Math.max(0, u));
      const m = linear(L.fc2W, L.fc2B, f, d);
      let z = y.map((yi, i) => yi + m[i]);
      if (!c.doLayerNormBefore) z = ln(z, L.mlpLnW, L.mlpLnB, c.layerNormElementwiseAffine);
      return z;
    });
  }
  return xs.map((x) => {
    let h = c.hasFinalLayerNorm ? ln(x, W.finalLnW, W.finalLnB, c.layerNormElementwiseAffine) : x;
    if (W.projectOut) h = linear(W.projectOut, undefined, h, p);
    return linear(W.lmHead, undefined, h, c.vocabSize);
  });
}

const VARIANTS: [string, Partial<OptConfig>][] = [
  // opt-350m's shape: post-LN, word_embed_proj_dim != hidden_size, no final LayerNorm.
  ['post-LN + project_in/out, no final LN', { doLayerNormBefore: false, wordEmbedProjDim: 12, hasFinalLayerNorm: false }],
  ['pre-LN + project_in/out + final LN', { wordEmbedProjDim: 12 }],
  ['post-LN, no LN affine, no biases', { doLayerNormBefore: false, hasFinalLayerNorm: false, layerNormElementwiseAffine: false, enableBias: false }],
];

describe('OPT variants vs an independent float64 reference', () => {
  const loaded: OptModel[] = [];
  afterAll(() => loaded.forEach((m) => m.dispose()));

  VARIANTS.forEach(([name, over], vi) => {
    it(`${name}: prefill (wasm, js) and decode match <= 1e-5`, async () => {
      const c = makeConfig(over);
      const W = makeWeights(c, 1000 * (vi + 1));
      const ids = [2, 17, 5, 39, 11, 0, 23, 8, 31, 4, 19, 26]; // 12 tokens: above the wasm path's minimum length
      const want = reference(c, W, ids).flat();
      for (const backend of ['wasm', 'js'] as const) {
        const m = await OptModel.load({ config: c, weights: W }, { backend });
        loaded.push(m);
        const e = relErr(m.prefill(ids), want);
        console.log(`[${name}] ${backend} prefill rel err ${e.toExponential(2)}`);
        expect(e).toBeLessThanOrEqual(1e-5);
      }
      const m = await OptModel.load({ config: c, weights: W }, { backend: 'js' });
      const cache = m.newCache(ids.length);
      const rows: number[] = [];
      for (const id of ids) rows.push(...m.decodeStep(id, cache));
      const e = relErr(rows, want);
      console.log(`[${name}] decode rel err ${e.toExponential(2)}`);
      expect(e).toBeLessThanOrEqual(1e-5);
    });
  });

  it('long inputs: several attention query blocks, with and without cached positions, match the reference', async () => {
    const c = makeConfig({ maxPositionEmbeddings: 640, wordEmbedProjDim: 12 });
    const W = makeWeights(c, 4242);
    const ids = Array.from({ length: 600 }, (_, i) => (i * 17 + 3) % c.vocabSize);
    const want = reference(c, W, ids).flat();
    const m = await OptModel.load({ config: c, weights: W }, { backend: 'wasm' });
    loaded.push(m);
    expect(relErr(m.prefill(ids), want)).toBeLessThanOrEqual(1e-5);
    const cache = m.newCache(600);
    const a = m.prefill(ids.slice(0, 300), { cache });
    const b = m.prefill(ids.slice(300), { cache });
    const e = relErr([...a, ...b], want);
    console.log(`600 tokens as 300 + 300 cached: rel err ${e.toExponential(2)}`);
    expect(e).toBeLessThanOrEqual(1e-5);
  });

  it('rejects weights whose shapes disagree with the config, and tokens outside the vocabulary', async () => {
    const c = makeConfig({});
    const W = makeWeights(c, 7);
    await expect(OptModel.load({ config: { ...c, numLayers: 3 }, weights: W }, { backend: 'js' })).rejects.toThrow(/layers/);
    await expect(
      OptModel.load({ config: c, weights: { ...W, embedTokens: W.embedTokens.subarray(1) } }, { backend: 'js' }),
    ).rejects.toThrow(/embed_tokens/);
    const m = await OptModel.load({ config: c, weights: W }, { backend: 'js' });
    expect(() => m.prefill([1, 40])).toThrow(/outside the vocabulary/);
    expect(() => m.prefill(new Array(33).fill(1))).toThrow(/max_position_embeddings/);
  });
});
