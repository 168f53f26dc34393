/**
 * `npm run bench train-wasm`: training throughput for one opt-mini layer on the wasm backend (this machine's CPU,
 * tfjs-wasm is single-threaded in Node): the MLP predictor 384 -> 256 -> 1536 and the attention predictor
 * 384 -> 256 -> 12 at batch 1024 (what the acceptance run uses), plus the MLP step without the BatchMatMul
 * transpose fix for comparison.
 */
import { cpus, loadavg } from 'node:os';
import { patchWasmBatchMatMul, selectBackend } from '../train/backend.js';
import { benchTrainStep } from './train-step.js';

export async function run(): Promise<Record<string, unknown>> {
  const load0 = loadavg()[0];
  const b = await selectBackend('wasm');
  const tf = b.tf;
  const mlp = await benchTrainStep(tf, { d: 384, r: 256, out: 1536, batch: 1024, steps: 30, warmup: 3 });
  const attn = await benchTrainStep(tf, { d: 384, r: 256, out: 12, batch: 1024, steps: 30, warmup: 3 });
  // Without the fix: put the stock kernel back for a few steps.
  const patched = tf.getKernel('BatchMatMul', 'wasm')!;
  const stock = (patched as unknown as { stock?: typeof patched }).stock;
  let unpatched: unknown = null;
  if (stock) {
    tf.unregisterKernel('BatchMatMul', 'wasm');
    tf.registerKernel(stock);
    unpatched = await benchTrainStep(tf, { d: 384, r: 256, out: 1536, batch: 1024, steps: 3, warmup: 1 });
    tf.unregisterKernel('BatchMatMul', 'wasm');
    tf.registerKernel(patched);
    patchWasmBatchMatMul(tf);
  }
  return {
    device: `${cpus()[0]?.model ?? 'cpu'} (${cpus().length} cores; tfjs-wasm uses 1 thread per process)`,
    backend: b.description,
    // The CPU is shared with other jobs on this machine: the 1-minute load average before and after the run says
    // how much of it this benchmark had (2 cores: load 1 = one idle core left).
    load_average_1m: { before: Math.round(load0 * 100) / 100, after: Math.round(loadavg()[0] * 100) / 100 },
    mlp,
    attn,
    mlp_without_transpose_fix: unpatched,
  };
}
