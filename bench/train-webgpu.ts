/**
 * `npm run bench train-webgpu` (on a machine with a GPU), or standalone on the device machine:
 *   node dist/bench/train-webgpu.js OUT.json
 * Training throughput of the hand-written step (train/model.ts) on tfjs-backend-webgpu over Dawn for the DejaVu
 * OPT-6.7B-like predictor shape 4096 -> 1024 -> 16384 at batch 1024 (target >= 30k samples/s; a model.fit reference
 * got 11.3k), plus batch 4096 and a larger deferred-submit batch to show where the remaining time goes.
 */
import { writeFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { selectBackend } from '../train/backend.js';
import { benchTrainStep } from './train-step.js';

export async function run(): Promise<Record<string, unknown>> {
  const b = await selectBackend('webgpu');
  const tf = b.tf;
  const shape = { d: 4096, r: 1024, out: 16384 };
  const runs: Record<string, unknown>[] = [];
  const one = async (label: string, batch: number, steps: number, flags: Record<string, number> = {}, preuploaded = false) => {
    for (const [k, v] of Object.entries(flags)) tf.env().set(k, v);
    const r = await benchTrainStep(tf, { ...shape, batch, steps, warmup: 5, preuploaded });
    runs.push({ label, flags, ...r });
    process.stderr.write(`${label}: ${JSON.stringify(r)}\n`);
  };
  await one('batch 1024', 1024, 60);
  await one('batch 1024, deferred submit 64', 1024, 60, { WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE: 64 });
  await one('batch 1024, deferred submit 64, data already on the GPU', 1024, 60, {}, true);
  await one('batch 4096, deferred submit 64', 4096, 20);
  const main = runs[0] as { samples_per_s: number };
  return {
    device: b.description,
    target_samples_per_s: 30000,
    reference_model_fit_samples_per_s: 11300,
    samples_per_s: main.samples_per_s,
    runs,
  };
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const result = { bench: 'train-webgpu', date: new Date().toISOString(), ...(await run()) };
  const text = JSON.stringify(result, null, 2) + '\n';
  if (process.argv[2]) writeFileSync(process.argv[2], text);
  process.stdout.write(text);
  process.exit(0);
}
