/**
 * The OPT forward pass against Hugging Face's fp32 outputs for opt-mini (reference.safetensors), on both CPU backends:
 * logits of s0/s1 and, for s0, every layer's hook tensors. Relative error = ||a-b|| / ||b|| over the whole tensor.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { loadOptCheckpoint } from '../../checkpoints/opt-checkpoint.js';
import { SafetensorsFile } from '../../checkpoints/safetensors.js';
import type { OptCheckpoint } from '../../checkpoints/types.js';
import { OptModel } from '../../runtime/cpu/model.js';
import { headNorms } from '../../runtime/cpu/ops.js';
import { HAVE_FIXTURES, OPT_MINI } from '../helpers/fixtures.js';
import { relErr } from './util.js';

const TOL = 1e-4;

describe.skipIf(!HAVE_FIXTURES)('opt-mini vs Hugging Face reference', () => {
  let ckpt: OptCheckpoint;
  let ref: SafetensorsFile;
  const models: Record<string, OptModel> = {};
  const ids = (s: string) => Int32Array.from(ref.readInt32(`${s}.ids`));

  beforeAll(async () => {
    ckpt = await loadOptCheckpoint(OPT_MINI, { quiet: true });
    ref = SafetensorsFile.open(join(OPT_MINI, 'reference.safetensors'));
    models.js = await OptModel.load(ckpt, { backend: 'js' });
    models.wasm = await OptModel.load(ckpt, { backend: 'wasm' });
  });
  afterAll(() => {
    ref?.close();
    models.wasm?.dispose();
  });

  for (const backend of ['wasm', 'js']) {
    it(`${backend}: logits of s0 and s1 (first 16 positions) match <= 1e-4`, () => {
      const m = models[backend];
      const V = m.config.vocabSize;
      for (const s of ['s0', 's1']) {
        const want = ref.readFloat32(`${s}.logits16`);
        expect(want.length).toBe(16 * V);
        const got = m.prefill(ids(s)).subarray(0, 16 * V);
        const e = relErr(got, want);
        console.log(`[${backend}] ${s}.logits16 rel err ${e.toExponential(2)}`);
        expect(e).toBeLessThanOrEqual(TOL);
      }
    });

    it(`${backend}: every layer's att_in, mlp_in, head_norm, fc1_relu for s0 match <= 1e-4`, () => {
      const m = models[backend];
      const { numLayers, numHeads, headDim } = m.config;
      const got: Record<string, Float32Array> = {};
      m.prefill(ids('s0'), {
        logits: 'none',
        hooks: {
          attIn: (l, x) => void (got[`layer${l}.att_in`] = x.slice()),
          mlpIn: (l, x) => void (got[`layer${l}.mlp_in`] = x.slice()),
          headOut: (l, h, T) => void (got[`layer${l}.head_norm`] = headNorms(h, T, numHeads, headDim)),
          fc1Act: (l, a) => void (got[`layer${l}.fc1_relu`] = a.slice()),
        },
      });
      let worst = 0;
      for (let l = 0; l < numLayers; l++) {
        for (const k of ['att_in', 'mlp_in', 'head_norm', 'fc1_relu']) {
          const want = ref.readFloat32(`s0.layer${l}.${k}`);
          const g = got[`layer${l}.${k}`];
          expect(g, `layer${l}.${k}`).toBeDefined();
          expect(g.length, `layer${l}.${k} size`).toBe(want.length);
          const e = relErr(g, want);
          worst = Math.max(worst, e);
          expect(e, `layer${l}.${k}`).toBeLessThanOrEqual(TOL);
        }
      }
      console.log(`[${backend}] s0 hooks: worst rel err over ${numLayers} layers x 4 tensors ${worst.toExponential(2)}`);
    });
  }

  it('KV-cache decode reproduces prefill logits at every position of s0 (64 tokens)', () => {
    const ids0 = ids('s0');
    const V = ckpt.config.vocabSize;
    const full = models.wasm.prefill(ids0); // [64][V]
    const m = models.js;
    const cache = m.newCache(64);
    let worst = 0;
    for (let t = 0; t < ids0.length; t++) {
      const row = m.decodeStep(ids0[t], cache);
      expect(cache.length).toBe(t + 1);
      const e = relErr(row, full.subarray(t * V, (t + 1) * V));
      worst = Math.max(worst, e);
      expect(e, `position ${t}`).toBeLessThanOrEqual(TOL);
    }
    console.log(`decode vs prefill: worst per-position rel err ${worst.toExponential(2)} over ${ids0.length} positions`);
  });

  it('prefill continuing a cache (40 + 24 tokens, wasm and js) matches one 64-token prefill', () => {
    const ids0 = ids('s0');
    const V = ckpt.config.vocabSize;
    const full = models.js.prefill(ids0);
    for (const backend of ['wasm', 'js']) {
      const m = models[backend];
      const cache = m.newCache(64);
      const a = m.prefill(ids0.subarray(0, 40), { cache });
      expect(cache.length).toBe(40);
      const b = m.prefill(ids0.subarray(40), { cache });
      expect(cache.length).toBe(64);
      expect(relErr(a, full.subarray(0, 40 * V))).toBeLessThanOrEqual(TOL);
      expect(relErr(b, full.subarray(40 * V))).toBeLessThanOrEqual(TOL);
      const last = m.prefill(ids0.subarray(0, 64), { logits: 'last' });
      expect(relErr(last, full.subarray(63 * V))).toBeLessThanOrEqual(TOL);
    }
  });
});
