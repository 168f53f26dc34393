/**
 * The predictor: Linear(d -> r, no bias) -> Linear(r -> out, no bias) -> sigmoid, and its training step.
 *
 * The step is hand-written rather than taped: the gradient of two bias-free linear layers under sigmoid + weighted
 * BCE is three matmuls, so we skip tfjs' tape (and its registry of gradient kernels, which tfjs-core does not load
 * under Node ESM without the tfjs union package). Fewer ops also means fewer kernel launches on WebGPU and no host
 * sync per step: the loss stays on the device until the caller reads it.
 *
 * Internal layout is transposed w.r.t. PyTorch: W1t [d][r], W2t [r][out], so the forward needs no transposes
 * (h = x W1t, z = h W2t). getWeights() returns the PyTorch layout the output contract fixes (w1 [r][d], w2 [out][r]).
 *
 * Loss (DejaVu): per batch, p = mean(y) + 0.005; weight = 1 for positives, p for negatives;
 * L = mean(weight * BCE(sigmoid(z), y)). dL/dz = weight * (sigmoid(z) - y) / (n * out).
 * AdamW as PyTorch's torch.optim.AdamW (decoupled weight decay, bias-corrected moments).
 */
import type * as TF from '@tensorflow/tfjs-core';
import { Rng } from './rng.js';

export type Tf = typeof TF;

export interface AdamWConfig {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
}

export const DEFAULT_ADAMW: AdamWConfig = { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01 };

/** The state a checkpoint holds, host side, internal (transposed) layout. */
export interface PredictorState {
  w1t: Float32Array;
  w2t: Float32Array;
  m1: Float32Array;
  v1: Float32Array;
  m2: Float32Array;
  v2: Float32Array;
  step: number;
}

/** PyTorch nn.Linear's default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), from our seeded RNG. */
export function initWeights(d: number, r: number, out: number, seed: number): { w1t: Float32Array; w2t: Float32Array } {
  const rng = new Rng(seed);
  const w1t = new Float32Array(d * r);
  const w2t = new Float32Array(r * out);
  const b1 = 1 / Math.sqrt(d);
  const b2 = 1 / Math.sqrt(r);
  for (let i = 0; i < w1t.length; i++) w1t[i] = (2 * rng.next() - 1) * b1;
  for (let i = 0; i < w2t.length; i++) w2t[i] = (2 * rng.next() - 1) * b2;
  return { w1t, w2t };
}

/** [rows][cols] -> [cols][rows] */
export function transpose(a: Float32Array, rows: number, cols: number): Float32Array {
  const t = new Float32Array(a.length);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) t[j * rows + i] = a[i * cols + j];
  return t;
}

/**
 * Packed label bytes [n][ceil(out/8)] (LSB first) -> 0/1 fp32 [n][out]. On WebGPU the bytes are expanded on the
 * device: 4x less host->device traffic than fp32 0/1 (bytes travel as int32), and the host never touches the bits.
 */
export function unpackBits(tf: Tf, bits: Uint8Array, n: number, out: number, pow2: TF.Tensor1D): TF.Tensor2D {
  const nb = (out + 7) >>> 3;
  if (tf.getBackend() !== 'webgpu') {
    // CPU backends: a JS loop is ~100x faster than tfjs-wasm's broadcasting int32 floorDiv/mod (~0.5 s for
    // 1024 x 1536 labels), and the upload is a memcpy anyway.
    const y = new Float32Array(n * out);
    const full = out >>> 3;
    for (let t = 0; t < n; t++) {
      const bo = t * nb;
      let yo = t * out;
      // Unrolled per byte: this loop touches every label of every batch.
      for (let i = 0; i < full; i++, yo += 8) {
        const b = bits[bo + i];
        y[yo] = b & 1;
        y[yo + 1] = (b >>> 1) & 1;
        y[yo + 2] = (b >>> 2) & 1;
        y[yo + 3] = (b >>> 3) & 1;
        y[yo + 4] = (b >>> 4) & 1;
        y[yo + 5] = (b >>> 5) & 1;
        y[yo + 6] = (b >>> 6) & 1;
        y[yo + 7] = b >>> 7;
      }
      for (let j = full << 3; j < out; j++) y[t * out + j] = (bits[bo + (j >>> 3)] >>> (j & 7)) & 1;
    }
    return tf.tensor2d(y, [n, out]);
  }
  return tf.tidy(() => {
    const b = tf.tensor3d(Int32Array.from(bits.subarray(0, n * nb)), [n, nb, 1], 'int32');
    const y = tf.reshape(tf.cast(tf.mod(tf.floorDiv(b, pow2), 2), 'float32'), [n, nb * 8]) as TF.Tensor2D;
    return nb * 8 === out ? y : (tf.slice(y, [0, 0], [n, out]) as TF.Tensor2D);
  });
}

export class Predictor {
  readonly w1t: TF.Variable;
  readonly w2t: TF.Variable;
  private readonly m1: TF.Variable;
  private readonly v1: TF.Variable;
  private readonly m2: TF.Variable;
  private readonly v2: TF.Variable;
  step: number;
  /** [1, 2, 4, ..., 128] for unpackBits. */
  readonly pow2: TF.Tensor1D;

  constructor(
    private readonly tf: Tf,
    readonly d: number,
    readonly r: number,
    readonly out: number,
    init: PredictorState,
    readonly opt: AdamWConfig,
  ) {
    const v = (a: Float32Array, shape: [number, number]) => {
      const t = tf.tensor2d(a, shape);
      const variable = tf.variable(t, true);
      t.dispose(); // the variable holds its own reference to the data
      return variable;
    };
    this.w1t = v(init.w1t, [d, r]);
    this.w2t = v(init.w2t, [r, out]);
    this.m1 = v(init.m1, [d, r]);
    this.v1 = v(init.v1, [d, r]);
    this.m2 = v(init.m2, [r, out]);
    this.v2 = v(init.v2, [r, out]);
    this.step = init.step;
    this.pow2 = tf.tensor1d([1, 2, 4, 8, 16, 32, 64, 128], 'int32');
  }

  static fresh(tf: Tf, d: number, r: number, out: number, seed: number, opt: AdamWConfig): Predictor {
    const { w1t, w2t } = initWeights(d, r, out, seed);
    return new Predictor(tf, d, r, out, { w1t, w2t, m1: new Float32Array(d * r), v1: new Float32Array(d * r), m2: new Float32Array(r * out), v2: new Float32Array(r * out), step: 0 }, opt);
  }

  /** Sigmoid scores [n][out]. */
  predict(x: TF.Tensor2D): TF.Tensor2D {
    const tf = this.tf;
    return tf.tidy(() => tf.sigmoid(tf.matMul(tf.matMul(x, this.w1t), this.w2t)) as TF.Tensor2D);
  }

  /**
   * One AdamW step on (x [n][d], y [n][out] 0/1). Returns the batch loss as a device scalar when `withLoss` (the
   * caller decides when to read it; reading forces a sync), else null.
   */
  trainStep(x: TF.Tensor2D, y: TF.Tensor2D, lr: number, withLoss: boolean): TF.Scalar | null {
    const tf = this.tf;
    this.step++;
    const { beta1, beta2, eps, weightDecay } = this.opt;
    const bc1 = 1 - Math.pow(beta1, this.step);
    const bc2 = 1 - Math.pow(beta2, this.step);
    return tf.tidy(() => {
      const { loss, gW1t, gW2t } = this.lossAndGrads(x, y, withLoss);
      this.adamw(this.w1t, this.m1, this.v1, gW1t, lr, bc1, bc2, eps, weightDecay, beta1, beta2);
      this.adamw(this.w2t, this.m2, this.v2, gW2t, lr, bc1, bc2, eps, weightDecay, beta1, beta2);
      return (loss ? tf.keep(loss) : null) as TF.Scalar;
    });
  }

  /** Weighted-BCE loss (when asked) and its gradients w.r.t. W1t and W2t. Call inside a tidy. */
  lossAndGrads(x: TF.Tensor2D, y: TF.Tensor2D, withLoss: boolean): { loss: TF.Scalar | null; gW1t: TF.Tensor; gW2t: TF.Tensor } {
    const tf = this.tf;
    const n = x.shape[0];
    const h = tf.matMul(x, this.w1t); // [n][r]
    const z = tf.matMul(h, this.w2t); // [n][out]
    const p = tf.add(tf.mean(y), 0.005);
    const wgt = tf.add(tf.mul(y, tf.sub(1, p)), p); // 1 for positives, p for negatives
    const g = tf.mul(tf.mul(wgt, tf.sub(tf.sigmoid(z), y)), 1 / (n * this.out)); // dL/dz
    let loss: TF.Scalar | null = null;
    if (withLoss) {
      // Stable BCE with logits: max(z,0) - z*y + log(1 + exp(-|z|))
      const bce = tf.add(tf.sub(tf.relu(z), tf.mul(z, y)), tf.softplus(tf.neg(tf.abs(z))));
      loss = tf.mean(tf.mul(wgt, bce)) as TF.Scalar;
    }
    const gW2t = tf.matMul(h, g, true, false); // [r][out]
    const dh = tf.matMul(g, this.w2t, false, true); // [n][r]
    const gW1t = tf.matMul(x, dh, true, false); // [d][r]
    return { loss, gW1t, gW2t };
  }

  private adamw(w: TF.Variable, m: TF.Variable, v: TF.Variable, g: TF.Tensor, lr: number, bc1: number, bc2: number, eps: number, wd: number, b1: number, b2: number): void {
    const tf = this.tf;
    const m2 = tf.add(tf.mul(m, b1), tf.mul(g, 1 - b1));
    const v2 = tf.add(tf.mul(v, b2), tf.mul(tf.square(g), 1 - b2));
    const denom = tf.add(tf.div(tf.sqrt(v2), Math.sqrt(bc2)), eps);
    // PyTorch order: decay first (p *= 1 - lr*wd), then p -= lr/bc1 * m/denom.
    const w2 = tf.sub(tf.mul(w, 1 - lr * wd), tf.mul(tf.div(m2, denom), lr / bc1));
    m.assign(m2);
    v.assign(v2);
    w.assign(w2);
  }

  /** Host copy of the full state (for checkpoints). */
  async state(): Promise<PredictorState> {
    const read = async (t: TF.Tensor) => new Float32Array((await t.data()) as Float32Array);
    return {
      w1t: await read(this.w1t),
      w2t: await read(this.w2t),
      m1: await read(this.m1),
      v1: await read(this.v1),
      m2: await read(this.m2),
      v2: await read(this.v2),
      step: this.step,
    };
  }

  dispose(): void {
    for (const t of [this.w1t, this.w2t, this.m1, this.v1, this.m2, this.v2, this.pow2]) t.dispose();
  }
}

/** Output layout of the contract: w1 [r][d], w2 [out][r]. */
export function exportWeights(s: { w1t: Float32Array; w2t: Float32Array }, d: number, r: number, out: number): { w1: Float32Array; w2: Float32Array } {
  return { w1: transpose(s.w1t, d, r), w2: transpose(s.w2t, r, out) };
}
