import { beforeAll, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { loadOptCheckpoint } from '../../checkpoints/opt-checkpoint.js';
import type { OptCheckpoint } from '../../checkpoints/types.js';
import { loadBundle, type Bundle } from '../../export/bundle.js';
import { OptModel } from '../../runtime/cpu/model.js';
import { attendHeads, attendHeadsMasked } from '../../runtime/sparse/kernels.js';
import { SparseOptModel, type KvPolicy, type SparseKVCache } from '../../runtime/sparse/model.js';
import { HAVE_FIXTURES, OPT_MINI, REPO_ROOT } from '../helpers/fixtures.js';
import { referenceHeads, referenceLogits } from './heads-reference.js';

function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let num = 0,
    den = 0;
  for (let i = 0; i < b.length; i++) {
    num += (a[i] - b[i]) ** 2;
    den += b[i] ** 2;
  }
  return Math.sqrt(num / den);
}

function rand(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32 - 0.5;
  };
}

describe('attendHeadsMasked (KV policy selected)', () => {
  const T = 9,
    H = 4,
    hd = 8,
    d = H * hd,
    maxLen = 12;
  const r = rand(7);
  const q = Float32Array.from({ length: d }, r);
  const K = Float32Array.from({ length: maxLen * d }, r);
  const V = Float32Array.from({ length: maxLen * d }, r);
  const heads = Int32Array.from([0, 2, 3]);
  const scale = 1 / Math.sqrt(hd);

  it('with every position valid it is attendHeads', () => {
    const valid = new Uint8Array(H * maxLen).fill(1);
    const a = attendHeadsMasked(q, K, V, T, d, hd, heads, 3, scale, valid, maxLen, new Float32Array(T), new Int32Array(T), new Float32Array(d));
    const b = attendHeads(q, K, V, T, d, hd, heads, 3, scale, new Float32Array(T), new Float32Array(d));
    expect(relErr(a, b)).toBeLessThan(1e-6);
  });

  it('holes: each head attends over only its valid positions (explicit-mask softmax in float64)', () => {
    const valid = new Uint8Array(H * maxLen);
    // Head h valid at t unless (t + h) % 3 == 1, and always at T-1 (its own position); garbage beyond T must not count.
    for (let h = 0; h < H; h++) for (let t = 0; t < maxLen; t++) valid[h * maxLen + t] = (t + h) % 3 === 1 && t !== T - 1 ? 0 : 1;
    // Masked slots hold values that would dominate the softmax if they leaked.
    const K2 = K.slice();
    for (let h = 0; h < H; h++) for (let t = 0; t < T; t++) if (!valid[h * maxLen + t]) for (let i = 0; i < hd; i++) K2[t * d + h * hd + i] = 50 * q[h * hd + i];
    const out = attendHeadsMasked(q, K2, V, T, d, hd, heads, 3, scale, valid, maxLen, new Float32Array(T), new Int32Array(T), new Float32Array(d));
    for (const h of heads) {
      const s: number[] = [];
      for (let t = 0; t < T; t++) {
        let v = 0;
        for (let i = 0; i < hd; i++) v += q[h * hd + i] * K2[t * d + h * hd + i];
        s.push(valid[h * maxLen + t] ? v * scale : -Infinity);
      }
      const m = Math.max(...s);
      const e = s.map((v) => Math.exp(v - m));
      const z = e.reduce((a, b) => a + b, 0);
      const ref = Array.from({ length: hd }, (_, i) => e.reduce((a, p, t) => a + (p / z) * V[t * d + h * hd + i], 0));
      expect(relErr(out.subarray(h * hd, (h + 1) * hd), ref)).toBeLessThan(1e-6);
    }
    // And the mask matters: unmasked attention over the same cache differs.
    const open = attendHeads(q, K2, V, T, d, hd, heads, 3, scale, new Float32Array(T), new Float32Array(d));
    expect(relErr(open, out)).toBeGreaterThan(1e-2);
  });
});

// BOS + ids spread over the vocabulary.
const IDS = Int32Array.from({ length: 14 }, (_, i) => (i === 0 ? 2 : ((i * 2654435761) >>> 0) % 8192));
// Head h kept at step t in layer l unless (t + 2h + l) % 3 == 0: every head is skipped at some steps and picked again
// later (holes in its K/V history); 8 of 12 heads on average.
const schedule = (t: number, l: number, H: number) => Array.from({ length: H }, (_, h) => h).filter((h) => (t + 2 * h + l) % 3 !== 0);

describe.skipIf(!HAVE_FIXTURES)('KV policies on opt-mini against the direct reference', () => {
  let ckpt: OptCheckpoint;
  let bundle: Bundle;

  beforeAll(async () => {
    ckpt = await loadOptCheckpoint(OPT_MINI, { quiet: true });
    bundle = loadBundle(join(REPO_ROOT, 'examples', 'opt-mini-bundle'), ckpt);
  });

  const explicitRun = (policy: KvPolicy) => {
    const { numLayers: n, numHeads: H } = ckpt.config;
    const model = new SparseOptModel(ckpt, undefined, { mode: 'dense', kvPolicy: policy });
    const cache = model.newCache(32);
    return Array.from(IDS, (id, t) => model.decodeStep(id, cache, { heads: Array.from({ length: n }, (_, l) => Int32Array.from(schedule(t, l, H))) }));
  };

  it.each(['all', 'selected'] as const)('explicit selections with holes, policy %s: the reference logits (<= 1e-4)', (policy) => {
    const H = ckpt.config.numHeads;
    const ref = referenceHeads(ckpt, IDS, { explicit: (t, l) => schedule(t, l, H) }, policy);
    const got = explicitRun(policy);
    for (let t = 0; t < IDS.length; t++) expect(relErr(got[t], referenceLogits(ckpt, ref.hidden[t]))).toBeLessThanOrEqual(1e-4);
  });

  it('the two policies differ on the same selections (the masks are not vacuous)', () => {
    const a = explicitRun('all');
    const s = explicitRun('selected');
    expect(relErr(s[IDS.length - 1], a[IDS.length - 1])).toBeGreaterThan(1e-3);
  });

  it.each(['all', 'selected'] as const)('oracle heads (half of them, MLP dense), policy %s: the reference logits and kept heads', (policy) => {
    const { numLayers: n, numHeads: H, ffnDim: ffn } = ckpt.config;
    const model = new SparseOptModel(ckpt, bundle, { mode: 'oracle', headsFrac: 0.5, mlpK: ffn, kvPolicy: policy });
    const ref = referenceHeads(ckpt, IDS, { oracleK: (l) => (l === 0 ? null : 6) }, policy);
    const cache = model.newCache(32);
    for (let t = 0; t < IDS.length; t++) {
      const logits = model.decodeStep(IDS[t], cache);
      expect(relErr(logits, referenceLogits(ckpt, ref.hidden[t]))).toBeLessThanOrEqual(1e-4);
      for (let l = 0; l < n; l++) {
        const heads = model.lastHeads[l];
        expect(heads ? Array.from(heads) : Array.from({ length: H }, (_, i) => i)).toEqual(ref.kept[t][l]);
      }
    }
    expect(model.densities().mlp.every((v) => v === 1)).toBe(true);
  });

  it('a reused cache (length reset) forgets the previous sequence\'s validity flags', () => {
    const { numLayers: n, numHeads: H } = ckpt.config;
    const model = new SparseOptModel(ckpt, undefined, { mode: 'dense', kvPolicy: 'selected' });
    const sel = (t: number) => ({ heads: Array.from({ length: n }, (_, l) => Int32Array.from(schedule(t, l, H))) });
    const other = (t: number) => ({ heads: Array.from({ length: n }, () => Int32Array.from([t % H])) });
    const reused = model.newCache(32);
    for (let t = 0; t < 10; t++) model.decodeStep(IDS[t], reused, other(t));
    reused.length = 0;
    const fresh = model.newCache(32);
    for (let t = 0; t < IDS.length; t++) {
      const a = model.decodeStep(IDS[t], reused, sel(t)).slice();
      const b = model.decodeStep(IDS[t], fresh, sel(t));
      expect(a).toEqual(b);
    }
  });

  it('a dense prefill hands over: its positions count as valid for every head', async () => {
    const { numLayers: n, numHeads: H } = ckpt.config;
    const dense = await OptModel.load(ckpt, { backend: 'js' });
    const cache: SparseKVCache = dense.newCache(32);
    dense.prefill(IDS.subarray(0, 8), { cache, logits: 'none' });
    const model = new SparseOptModel(ckpt, undefined, { mode: 'dense', kvPolicy: 'selected' });
    const ref = referenceHeads(ckpt, IDS, { explicit: (t, l) => (t < 8 ? null : schedule(t, l, H)) }, 'selected');
    for (let t = 8; t < IDS.length; t++) {
      const logits = model.decodeStep(IDS[t], cache, { heads: Array.from({ length: n }, (_, l) => Int32Array.from(schedule(t, l, H))) });
      expect(relErr(logits, referenceLogits(ckpt, ref.hidden[t]))).toBeLessThanOrEqual(1e-4);
    }
  });

  it('predicted mode under policy selected replays bit-identically through explicit selections', () => {
    const pred = new SparseOptModel(ckpt, bundle, { mode: 'predicted', headsFrac: 0.5, kvPolicy: 'selected' });
    const replay = new SparseOptModel(ckpt, bundle, { mode: 'predicted', headsFrac: 0.5, kvPolicy: 'selected' });
    const c1 = pred.newCache(32);
    const c2 = replay.newCache(32);
    for (let t = 0; t < IDS.length; t++) {
      const a = pred.decodeStep(IDS[t], c1).slice();
      const heads = pred.lastHeads.map((h) => (h ? h.slice() : null));
      const neurons = pred.lastNeurons.map((x) => (x ? x.slice() : null));
      const b = replay.decodeStep(IDS[t], c2, { heads, neurons });
      expect(b).toEqual(a);
    }
    expect(pred.densities().heads.slice(1).every((v) => v === 0.5)).toBe(true);
  });

  it('refuses an unknown KV policy in one line naming the flag', () => {
    expect(() => new SparseOptModel(ckpt, undefined, { mode: 'dense', kvPolicy: 'lazy' as KvPolicy })).toThrow(/--kv-policy.*not a KV policy|not a KV policy/);
  });
});
