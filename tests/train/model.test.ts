import { describe, expect, it, beforeAll } from 'vitest';
import { selectBackend } from '../../train/backend.js';
import { DEFAULT_ADAMW, Predictor, exportWeights, unpackBits, type Tf } from '../../train/model.js';
import { Rng } from '../../train/rng.js';

let tf: Tf;
beforeAll(async () => {
  tf = (await selectBackend('wasm')).tf;
});

/** float64 reference of the weighted BCE loss for W1t [d][r], W2t [r][o]. */
function refLoss(x: Float32Array, y: Float32Array, n: number, d: number, r: number, o: number, w1t: Float64Array, w2t: Float64Array): number {
  let p = 0;
  for (const v of y) p += v;
  p = p / y.length + 0.005;
  let L = 0;
  for (let t = 0; t < n; t++) {
    const h = new Float64Array(r);
    for (let k = 0; k < r; k++) for (let i = 0; i < d; i++) h[k] += x[t * d + i] * w1t[i * r + k];
    for (let j = 0; j < o; j++) {
      let z = 0;
      for (let k = 0; k < r; k++) z += h[k] * w2t[k * o + j];
      const yy = y[t * o + j];
      const w = yy ? 1 : p;
      L += w * (Math.max(z, 0) - z * yy + Math.log1p(Math.exp(-Math.abs(z))));
    }
  }
  return L / (n * o);
}

describe('predictor step', () => {
  it('hand-written gradients match finite differences of the weighted BCE', async () => {
    const [n, d, r, o] = [6, 5, 3, 7];
    const rng = new Rng(3);
    const x = Float32Array.from({ length: n * d }, () => 2 * rng.next() - 1);
    const y = Float32Array.from({ length: n * o }, () => (rng.next() < 0.3 ? 1 : 0));
    const p = Predictor.fresh(tf, d, r, o, 11, DEFAULT_ADAMW);
    const st = await p.state();
    const xt = tf.tensor2d(x, [n, d]);
    const yt = tf.tensor2d(y, [n, o]);
    const { g1, g2, loss } = tf.tidy(() => {
      const g = p.lossAndGrads(xt, yt, true);
      return { g1: tf.keep(g.gW1t), g2: tf.keep(g.gW2t), loss: tf.keep(g.loss!) };
    });
    const G1 = await g1.data();
    const G2 = await g2.data();
    const w1 = Float64Array.from(st.w1t);
    const w2 = Float64Array.from(st.w2t);
    expect((await loss.data())[0]).toBeCloseTo(refLoss(x, y, n, d, r, o, w1, w2), 5);
    const eps = 1e-6;
    for (const [w, G] of [[w1, G1], [w2, G2]] as const) {
      for (let i = 0; i < w.length; i++) {
        const keep = w[i];
        w[i] = keep + eps;
        const up = refLoss(x, y, n, d, r, o, w1, w2);
        w[i] = keep - eps;
        const down = refLoss(x, y, n, d, r, o, w1, w2);
        w[i] = keep;
        expect(G[i]).toBeCloseTo((up - down) / (2 * eps), 5);
      }
    }
    tf.dispose([xt, yt, g1, g2, loss]);
    p.dispose();
  });

  it('one AdamW step equals the PyTorch AdamW formula', async () => {
    const [n, d, r, o] = [4, 3, 2, 5];
    const rng = new Rng(5);
    const x = tf.tensor2d(Float32Array.from({ length: n * d }, () => 2 * rng.next() - 1), [n, d]);
    const y = tf.tensor2d(Float32Array.from({ length: n * o }, () => (rng.next() < 0.4 ? 1 : 0)), [n, o]);
    const opt = { ...DEFAULT_ADAMW, lr: 0.01, weightDecay: 0.1 };
    const p = Predictor.fresh(tf, d, r, o, 2, opt);
    const before = await p.state();
    const g = tf.tidy(() => tf.keep(p.lossAndGrads(x, y, false).gW1t));
    const G = await g.data();
    p.trainStep(x, y, opt.lr, false);
    const after = await p.state();
    for (let i = 0; i < G.length; i++) {
      // step 1: m = (1-b1) g, v = (1-b2) g^2; mhat = g, vhat = g^2 -> update = lr * g / (|g| + eps)
      const m = (1 - opt.beta1) * G[i];
      const v = (1 - opt.beta2) * G[i] * G[i];
      const denom = Math.sqrt(v) / Math.sqrt(1 - opt.beta2) + opt.eps;
      const want = before.w1t[i] * (1 - opt.lr * opt.weightDecay) - (opt.lr / (1 - opt.beta1)) * (m / denom);
      expect(after.w1t[i]).toBeCloseTo(want, 6);
      expect(after.m1[i]).toBeCloseTo(m, 7);
    }
    expect(after.step).toBe(1);
    tf.dispose([x, y, g]);
    p.dispose();
    expect(tf.memory().numTensors).toBe(0);
  });

  it('unpackBits expands LSB-first label bytes on the device, including a partial last byte', async () => {
    const out = 11;
    const bits = Uint8Array.from([0b10000001, 0b00000101, 0b11111111, 0b00000010]); // 2 rows x 2 bytes
    const pow2 = tf.tensor1d([1, 2, 4, 8, 16, 32, 64, 128], 'int32');
    const y = unpackBits(tf, bits, 2, out, pow2);
    expect(y.shape).toEqual([2, out]);
    expect(Array.from(await y.data())).toEqual([1, 0, 0, 0, 0, 0, 0, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 0]);
    tf.dispose([y, pow2]);
  });

  it('exportWeights returns the contract layout w1 [r][d], w2 [out][r]', () => {
    const w1t = Float32Array.from([1, 2, 3, 4, 5, 6]); // [d=3][r=2]
    const w2t = Float32Array.from([1, 2, 3, 4, 5, 6, 7, 8]); // [r=2][out=4]
    const { w1, w2 } = exportWeights({ w1t, w2t }, 3, 2, 4);
    expect(Array.from(w1)).toEqual([1, 3, 5, 2, 4, 6]);
    expect(Array.from(w2)).toEqual([1, 5, 2, 6, 3, 7, 4, 8]);
  });

  it('the wasm BatchMatMul transpose fix gives the same products as the stock kernel', async () => {
    const rng = new Rng(9);
    const a = tf.tensor2d(Float32Array.from({ length: 6 * 4 }, () => rng.next()), [6, 4]);
    const b = tf.tensor2d(Float32Array.from({ length: 6 * 5 }, () => rng.next()), [6, 5]);
    const c = tf.tensor2d(Float32Array.from({ length: 5 * 4 }, () => rng.next()), [5, 4]);
    const patched = tf.getKernel('BatchMatMul', 'wasm') as unknown as { patched?: boolean };
    expect(patched.patched).toBe(true);
    const ref = (A: Float32Array, ra: number, ca: number, B: Float32Array, cb: number, tA: boolean, tB: boolean) => {
      // explicit loops over logical (possibly transposed) operands
      const m = tA ? ca : ra;
      const k = tA ? ra : ca;
      const out = new Float32Array(m * cb);
      for (let i = 0; i < m; i++)
        for (let j = 0; j < cb; j++) {
          let s = 0;
          for (let q = 0; q < k; q++) s += (tA ? A[q * ca + i] : A[i * ca + q]) * (tB ? B[j * k + q] : B[q * cb + j]);
          out[i * cb + j] = s;
        }
      return out;
    };
    const aT_b = tf.matMul(a, b, true, false); // [4][5]
    const want1 = ref(await a.data() as Float32Array, 6, 4, await b.data() as Float32Array, 5, true, false);
    Array.from(await aT_b.data()).forEach((v, i) => expect(v).toBeCloseTo(want1[i], 5));
    const a_cT = tf.matMul(a, c, false, true); // [6][5]
    const want2 = ref(await a.data() as Float32Array, 6, 4, await c.data() as Float32Array, 5, false, true);
    Array.from(await a_cT.data()).forEach((v, i) => expect(v).toBeCloseTo(want2[i], 5));
    tf.dispose([a, b, c, aT_b, a_cT]);
  });
});
