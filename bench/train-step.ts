/**
 * Training-step throughput of one predictor (shared by bench/train-wasm.ts and bench/train-webgpu.ts): the same
 * step `dejavu train` runs (train/model.ts), including the per-step host -> device upload of a batch (fp32 inputs,
 * packed label bytes), with the trainer's sync pattern (loss read back asynchronously every 16 steps, at most two
 * reads in flight; the event loop gets a turn every step so WebGPU buffers recycle). Reports samples/s.
 */
import { DEFAULT_ADAMW, Predictor, unpackBits, type Tf } from '../train/model.js';
import { Rng } from '../train/rng.js';

export interface StepBenchOptions {
  d: number;
  r: number;
  out: number;
  batch: number;
  steps: number;
  warmup: number;
  /** Distinct host batches cycled through (fresh data each step, not one cached tensor). */
  pool?: number;
  /** Upload the pool once and reuse the device tensors: isolates the step from host -> device traffic. */
  preuploaded?: boolean;
}

export interface StepBenchResult {
  shape: string;
  batch: number;
  steps: number;
  seconds: number;
  ms_per_step: number;
  samples_per_s: number;
  /** fwd + bwd matmul FLOPs per second (6 * batch * (d*r + r*out) per step). */
  matmul_tflops: number;
  cpu_seconds: number;
  samples_per_cpu_s: number;
  /** The timed steps' window, ms since the Unix epoch (several threads' windows are compared with it). */
  window_ms: [number, number];
}

const tick = () => new Promise<void>((r) => setImmediate(r));

export async function benchTrainStep(tf: Tf, o: StepBenchOptions): Promise<StepBenchResult> {
  const rng = new Rng(1);
  const nb = (o.out + 7) >>> 3;
  const pool = Array.from({ length: o.pool ?? 4 }, () => ({
    x: Float32Array.from({ length: o.batch * o.d }, () => 2 * rng.next() - 1),
    // ~10% positives, like a sparse MLP layer.
    bits: Uint8Array.from({ length: o.batch * nb }, () => {
      let b = 0;
      for (let j = 0; j < 8; j++) if (rng.next() < 0.1) b |= 1 << j;
      return b;
    }),
  }));
  const p = Predictor.fresh(tf, o.d, o.r, o.out, 7, DEFAULT_ADAMW);
  const resident = o.preuploaded ? pool.map((b) => ({ x: tf.tensor2d(b.x, [o.batch, o.d]), y: unpackBits(tf, b.bits, o.batch, o.out, p.pow2) })) : [];
  const pending: Promise<number>[] = [];
  const step = async (i: number) => {
    const b = pool[i % pool.length];
    const r = resident[i % pool.length];
    const x = r ? r.x : tf.tensor2d(b.x, [o.batch, o.d]);
    const y = r ? r.y : unpackBits(tf, b.bits, o.batch, o.out, p.pow2);
    const loss = p.trainStep(x, y, 1e-3, i % 16 === 0);
    if (!r) tf.dispose([x, y]);
    if (loss) {
      pending.push(loss.data().then((v) => (loss.dispose(), v[0] as number)));
      if (pending.length > 2) await pending.shift();
    }
    await tick();
  };
  for (let i = 0; i < o.warmup; i++) await step(i);
  await Promise.all(pending.splice(0));
  const t0 = performance.now();
  const c0 = process.cpuUsage();
  const start = performance.timeOrigin + t0;
  for (let i = 0; i < o.steps; i++) await step(i);
  await Promise.all(pending.splice(0));
  await p.w2t.data(); // the last step's update has finished
  const seconds = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(c0);
  const cpuSeconds = (cpu.user + cpu.system) / 1e6;
  p.dispose();
  for (const r of resident) tf.dispose([r.x, r.y]);
  const flops = 6 * o.batch * (o.d * o.r + o.r * o.out) * o.steps;
  return {
    shape: `${o.d}->${o.r}->${o.out}`,
    batch: o.batch,
    steps: o.steps,
    seconds: Math.round(seconds * 1000) / 1000,
    ms_per_step: Math.round((seconds / o.steps) * 1e5) / 100,
    samples_per_s: Math.round((o.batch * o.steps) / seconds),
    // This process's CPU time over the timed steps: on a shared machine, samples per CPU-second is what the code
    // does with the CPU it gets (wall-clock samples/s also depends on the neighbours' load).
    cpu_seconds: Math.round(cpuSeconds * 1000) / 1000,
    samples_per_cpu_s: Math.round((o.batch * o.steps) / cpuSeconds),
    matmul_tflops: Math.round((flops / seconds / 1e12) * 1000) / 1000,
    window_ms: [Math.round(start), Math.round(start + seconds * 1000)],
  };
}
