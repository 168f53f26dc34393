/**
 * CPU decode latency, dense vs sparse (runtime/sparse/bench-cpu.ts), one thread, batch 1, prompt 128 + 128 generated:
 *  - mlp=0.1, heads=1.0: the acceptance point (MLP block >= 5x, whole token >= 1.5x; Amdahl bound beside it);
 *  - mlp=0.1, heads=0.5: attention sparsity too, and the measured cost of the KV policy (K/V rows of skipped heads);
 *  - with $DEJAVU_BENCH_BUNDLE: the bundle's predictors select (cost included), at MLP 10% / heads 100% and at the
 *    bundle's own k.
 * Model: $DEJAVU_BENCH_MODEL or the vendored examples/opt-mini.
 */
import { cpus } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { runCpuBench } from '../runtime/sparse/bench-cpu.js';
import { loadOptCheckpoint } from '../checkpoints/opt-checkpoint.js';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..'); // dist/bench -> repo root

export async function run(): Promise<Record<string, unknown>> {
  const model = process.env.DEJAVU_BENCH_MODEL ?? join(root, 'examples', 'opt-mini');
  const ckpt = await loadOptCheckpoint(model, { quiet: true });
  const common = { model, prompt: 128, gen: 128, rounds: 5, ckpt };
  const runs: Record<string, unknown> = {};
  runs['mlp0.1_heads1.0'] = await runCpuBench({ ...common, density: { mlp: 0.1, heads: 1.0 } });
  runs['mlp0.1_heads0.5'] = await runCpuBench({ ...common, density: { mlp: 0.1, heads: 0.5 } });
  const bundle = process.env.DEJAVU_BENCH_BUNDLE;
  if (bundle) {
    // The bundle's predictors pick the neurons (their cost included); heads dense, as in the acceptance point.
    runs['bundle_mlp0.1_heads1.0'] = await runCpuBench({ ...common, bundle, density: { mlp: 0.1, heads: 1.0 } });
    runs.bundle_own_k = await runCpuBench({ ...common, bundle });
  }
  return { cpu: cpus()[0]?.model ?? 'unknown', cores: cpus().length, node: process.version, model, runs };
}
