/**
 * The prefill forward pass on tfjs (wasm backend): the same math as model.ts's typed-array path, expressed as tfjs ops
 * so the large matmuls run in XNNPACK. Weights are uploaded once, transposed to [in][out], because the wasm
 * BatchMatMul is 12-50x slower with a transposed operand (measured: 2.2 vs 28 GFLOP/s). q, k and v are three matmuls
 * (one fused [d][3d] matmul plus a tfjs split measured slower). The 1/sqrt(headDim) scaling is folded into the q
 * weights and bias.
 *
 * Only `import type` from tfjs here: the module object arrives through the constructor (see wasm-backend.ts).
 */
import type * as TF from '@tensorflow/tfjs-core';
import type { OptConfig, OptWeights } from '../../checkpoints/types.js';
import type { ForwardHooks } from '../hooks.js';
import type { KVCache } from './kv-cache.js';
import { transpose } from './ops.js';

type Tf = typeof TF;
type T2 = TF.Tensor2D;

interface LayerTensors {
  attnLnW?: TF.Tensor1D;
  attnLnB?: TF.Tensor1D;
  qWT: T2; // [d][d], scaled by 1/sqrt(headDim)
  qB?: TF.Tensor1D;
  kWT: T2;
  kB?: TF.Tensor1D;
  vWT: T2;
  vB?: TF.Tensor1D;
  oWT: T2; // [d][d]
  oB?: TF.Tensor1D;
  mlpLnW?: TF.Tensor1D;
  mlpLnB?: TF.Tensor1D;
  fc1WT: T2; // [d][ffn]
  fc1B?: TF.Tensor1D;
  fc2WT: T2; // [ffn][d]
  fc2B?: TF.Tensor1D;
}

export type LogitsMode = 'all' | 'last' | 'none';

const LN_EPS = 1e-5;
/** Query block of the attention (see attention()). */
const ATT_BLOCK = (() => {
  const n = Number(process.env.DEJAVU_ATT_BLOCK ?? 256); // override only for measurements
  return Number.isInteger(n) && n > 0 ? n : 256;
})();

export class TfjsForward {
  private readonly layers: LayerTensors[] = [];
  private readonly projectInT?: T2;
  private readonly projectOutT?: T2;
  private readonly finalLnW?: TF.Tensor1D;
  private readonly finalLnB?: TF.Tensor1D;
  private readonly hasFinalLn: boolean;
  private readonly lmHeadT: T2;

  constructor(
    private readonly tf: Tf,
    private readonly config: OptConfig,
    weights: OptWeights,
  ) {
    const c = config;
    const d = c.hiddenSize;
    const p = c.wordEmbedProjDim;
    const bias = (b: Float32Array) => (c.enableBias && b.length ? tf.tensor1d(b) : undefined);
    const lnW = (w: Float32Array) => (c.layerNormElementwiseAffine ? tf.tensor1d(w) : undefined);
    const lnB = (b: Float32Array) => (c.layerNormElementwiseAffine ? tf.tensor1d(b) : undefined);
    const wT = (W: Float32Array, out: number, inn: number) => tf.tensor2d(transpose(W, out, inn), [inn, out]);
    const scale = 1 / Math.sqrt(c.headDim);
    for (const L of weights.layers) {
      const qW = L.qW.map((w) => w * scale);
      const qB = L.qB.map((w) => w * scale);
      this.layers.push({
        attnLnW: lnW(L.attnLnW),
        attnLnB: lnB(L.attnLnB),
        qWT: wT(qW, d, d),
        qB: bias(qB),
        kWT: wT(L.kW, d, d),
        kB: bias(L.kB),
        vWT: wT(L.vW, d, d),
        vB: bias(L.vB),
        oWT: wT(L.oW, d, d),
        oB: bias(L.oB),
        mlpLnW: lnW(L.mlpLnW),
        mlpLnB: lnB(L.mlpLnB),
        fc1WT: wT(L.fc1W, c.ffnDim, d),
        fc1B: bias(L.fc1B),
        fc2WT: wT(L.fc2W, d, c.ffnDim),
        fc2B: bias(L.fc2B),
      });
    }
    if (weights.projectIn) this.projectInT = wT(weights.projectIn, d, p);
    if (weights.projectOut) this.projectOutT = wT(weights.projectOut, p, d);
    this.hasFinalLn = c.hasFinalLayerNorm;
    if (c.hasFinalLayerNorm && weights.finalLnW && weights.finalLnB) {
      this.finalLnW = lnW(weights.finalLnW);
      this.finalLnB = lnB(weights.finalLnB);
    }
    this.lmHeadT = wT(weights.lmHead, c.vocabSize, p);
  }

  dispose(): void {
    const all: (TF.Tensor | undefined)[] = [this.projectInT, this.projectOutT, this.finalLnW, this.finalLnB, this.lmHeadT];
    for (const L of this.layers) all.push(...Object.values(L));
    for (const t of all) t?.dispose();
  }

  private layerNorm(x: T2, w?: TF.Tensor1D, b?: TF.Tensor1D): T2 {
    const tf = this.tf;
    const mean = tf.mean(x, -1, true);
    const xc = tf.sub(x, mean);
    const variance = tf.mean(tf.square(xc), -1, true);
    let y = tf.mul(xc, tf.rsqrt(tf.add(variance, LN_EPS))) as T2;
    if (w) y = tf.mul(y, w);
    if (b) y = tf.add(y, b);
    return y;
  }

  /**
   * Additive causal masks, one per query block: block b covers queries b*B .. and keys 0 .. min(Tk, past+(b+1)*B);
   * only its last B columns can be masked. Query t (absolute past+t) sees keys 0 .. past+t.
   */
  private causalMasks(T: number, past: number): T2[] {
    const masks: T2[] = [];
    for (let t0 = 0; t0 < T; t0 += ATT_BLOCK) {
      const rows = Math.min(ATT_BLOCK, T - t0);
      const end = past + t0 + rows;
      const m = new Float32Array(rows * end);
      for (let r = 0; r < rows; r++) m.fill(-1e30, r * end + past + t0 + r + 1, (r + 1) * end);
      masks.push(this.tf.tensor2d(m, [rows, end]));
    }
    return masks;
  }

  /**
   * Causal attention with per-head 2-D matmuls (the wasm BatchMatMul with a batch dimension is ~7x slower than one
   * 2-D matMul per head: measured 172 vs 25 ms for 12 heads x 512^2 x 32). Queries go in blocks of ATT_BLOCK so a
   * block only multiplies against the keys it can see (256: skips 25% of the T^2 work at T=512). Each (head, block)
   * also pays a fixed ~0.3 ms (operand uploads, XNNPACK packing a fresh operand ~90 us per matMul, mask add, softmax),
   * so 128-query blocks (37.5% skipped) come out slower by the per-op timings; 512 (nothing skipped) too. The per-head
   * operands are cut out on the JS side: tfjs Slice/Unpack cost ~0.1 ms per call (measured ~100 ms per prefill).
   * Q [T][d] (pre-scaled), K/V [Tk][d] with Tk = past+T (typed arrays). Returns the head outputs [T][d].
   */
  private attention(Q: Float32Array, K: Float32Array, V: Float32Array, T: number, past: number, masks: T2[]): Float32Array {
    const tf = this.tf;
    const H = this.config.numHeads;
    const hd = this.config.headDim;
    const d = H * hd;
    const Tk = past + T;
    const out = new Float32Array(T * d);
    const qb = new Float32Array(ATT_BLOCK * hd);
    const kt = new Float32Array(hd * Tk);
    const vh = new Float32Array(Tk * hd);
    for (let h = 0; h < H; h++) {
      const col = h * hd;
      for (let j = 0; j < Tk; j++) for (let c = 0; c < hd; c++) vh[j * hd + c] = V[j * d + col + c];
      for (let b = 0, t0 = 0; t0 < T; b++, t0 += ATT_BLOCK) {
        const rows = Math.min(ATT_BLOCK, T - t0);
        const end = past + t0 + rows;
        for (let r = 0; r < rows; r++) for (let c = 0; c < hd; c++) qb[r * hd + c] = Q[(t0 + r) * d + col + c];
        // K^T of the visible keys, [hd][end], row-major.
        for (let c = 0; c < hd; c++) for (let j = 0; j < end; j++) kt[c * end + j] = K[j * d + col + c];
        const o = tf.tidy(() => {
          const q = tf.tensor2d(qb.subarray(0, rows * hd), [rows, hd]);
          const k = tf.tensor2d(kt.subarray(0, hd * end), [hd, end]);
          const v = tf.tensor2d(vh.subarray(0, end * hd), [end, hd]);
          const p = tf.softmax(tf.add(tf.matMul(q, k), masks[b]));
          return tf.matMul(p, v);
        });
        const oa = o.dataSync() as Float32Array;
        o.dispose();
        for (let r = 0; r < rows; r++) out.set(oa.subarray(r * hd, (r + 1) * hd), (t0 + r) * d + col);
      }
    }
    return out;
  }

  private linear(x: T2, WT: T2, b?: TF.Tensor1D, relu = false): T2 {
    return this.tf.fused.matMul({ a: x, b: WT, bias: b, activation: relu ? 'relu' : 'linear' }) as T2;
  }

  /**
   * emb [T][wordEmbedProjDim]: token embeddings (gathered on the JS side); pos [T][d]: position embeddings.
   * `cache` (optional) holds `past` positions already and receives this call's K/V at rows past .. past+T-1.
   */
  forward(
    emb: Float32Array,
    pos: Float32Array,
    T: number,
    past: number,
    cache: KVCache | undefined,
    hooks: ForwardHooks | undefined,
    logits: LogitsMode,
  ): Float32Array {
    const tf = this.tf;
    const c = this.config;
    const d = c.hiddenSize;
    const H = c.numHeads;
    const hd = c.headDim;
    const Tk = past + T;
    const preLN = c.doLayerNormBefore;

    let x = tf.tidy(() => {
      let e = tf.tensor2d(emb, [T, c.wordEmbedProjDim]);
      if (this.projectInT) e = tf.matMul(e, this.projectInT);
      return tf.add(e, tf.tensor2d(pos, [T, d])) as T2;
    });
    const masks = this.causalMasks(T, past);

    for (let l = 0; l < this.layers.length; l++) {
      const L = this.layers[l];
      const next = tf.tidy(() => {
        if (hooks?.attIn) hooks.attIn(l, x.dataSync() as Float32Array, T);
        const h = preLN ? this.layerNorm(x, L.attnLnW, L.attnLnB) : x;
        const q = this.linear(h, L.qWT, L.qB);
        const k = this.linear(h, L.kWT, L.kB);
        const v = this.linear(h, L.vWT, L.vB);
        let kAll = k.dataSync() as Float32Array;
        let vAll = v.dataSync() as Float32Array;
        if (cache) {
          cache.k[l].set(kAll, past * d);
          cache.v[l].set(vAll, past * d);
          kAll = cache.k[l].subarray(0, Tk * d);
          vAll = cache.v[l].subarray(0, Tk * d);
        }
        const headsArr = this.attention(q.dataSync() as Float32Array, kAll, vAll, T, past, masks);
        if (hooks?.headOut) hooks.headOut(l, headsArr, T);
        const heads = tf.tensor2d(headsArr, [T, d]);
        let y = tf.add(x, this.linear(heads, L.oWT, L.oB)) as T2;
        if (!preLN) y = this.layerNorm(y, L.attnLnW, L.attnLnB);
        if (hooks?.mlpIn) hooks.mlpIn(l, y.dataSync() as Float32Array, T);
        const h2 = preLN ? this.layerNorm(y, L.mlpLnW, L.mlpLnB) : y;
        const act = this.linear(h2, L.fc1WT, L.fc1B, true);
        if (hooks?.fc1Act) hooks.fc1Act(l, act.dataSync() as Float32Array, T);
        let z = tf.add(y, this.linear(act, L.fc2WT, L.fc2B)) as T2;
        if (!preLN) z = this.layerNorm(z, L.mlpLnW, L.mlpLnB);
        return z;
      });
      x.dispose();
      x = next;
    }
    for (const m of masks) m.dispose();
    if (cache) cache.length = Tk;
    if (logits === 'none') {
      x.dispose();
      return new Float32Array(0);
    }
    const out = tf.tidy(() => {
      let h: T2 = logits === 'last' ? tf.slice(x, [T - 1, 0], [1, d]) : x;
      if (this.hasFinalLn) {
        h = this.layerNorm(h, this.finalLnW, this.finalLnB);
      }
      if (this.projectOutT) h = tf.matMul(h, this.projectOutT);
      return tf.matMul(h, this.lmHeadT);
    });
    x.dispose();
    const data = out.dataSync() as Float32Array;
    out.dispose();
    return data;
  }
}
