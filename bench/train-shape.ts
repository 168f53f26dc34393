/**
 * Training throughput for one layer of a real OPT shape, synthetic data of that shape, on any train backend:
 *
 *   node dist/bench/train-shape.js [--shape opt-6.7b] [--backend auto|webgpu|wasm|cpu] [--rank R] [--batch B]
 *                                  [--steps N] [--out FILE.json]
 *
 * Times the step `dejavu train` runs (train/model.ts, through bench/train-step.ts: per-step upload of fp32 inputs and
 * packed labels, the trainer's sync pattern) for the layer's two predictors, MLP (d -> rank -> ffn) and attention
 * (d -> rank -> heads), at train's defaults unless given: `--rank auto` for the shape's d (1000 from OPT-6.7B on) and the
 * batch `--batch auto` gives at real scale (1024, from 262,144 training tokens on; train/auto.ts). Prints one JSON object (device,
 * date, command, backend line, samples/s per predictor and for the layer: both predictors over the same rows) and
 * writes it to --out. The backend is chosen as train chooses it (`auto`: WebGPU with a hardware adapter, else wasm);
 * wasm runs one thread per process (train's --workers N trains N predictors at once, one per thread).
 */
import { writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { backendLine, selectBackend, stepGflop, webGpuTooSmall, type BackendName, BACKENDS } from '../train/backend.js';
import { AUTO, autoRank } from '../train/auto.js';
import { benchTrainStep, type StepBenchResult } from './train-step.js';

/** d, heads, ffn of the released OPT models (and the vendored opt-mini). */
export const TRAIN_SHAPES: Record<string, { d: number; heads: number; ffn: number }> = {
  'opt-mini': { d: 384, heads: 12, ffn: 1536 },
  'opt-1.3b': { d: 2048, heads: 32, ffn: 8192 },
  'opt-6.7b': { d: 4096, heads: 32, ffn: 16384 },
  'opt-13b': { d: 5120, heads: 40, ffn: 20480 },
  'opt-30b': { d: 7168, heads: 56, ffn: 28672 },
};

export interface TrainShapeOptions {
  shape: string;
  backend: BackendName;
  /** Default: train's auto rank for the shape's d. */
  rank?: number;
  /** Default: train's auto batch at real scale (1024). */
  batch?: number;
  /** Timed steps per predictor (default: 40 on a GPU backend, 4 MLP / 8 attention on the CPU ones). */
  steps?: number;
}

export async function runTrainShape(o: TrainShapeOptions): Promise<Record<string, unknown>> {
  const s = TRAIN_SHAPES[o.shape];
  if (!s) throw new Error(`unknown --shape '${o.shape}' (one of ${Object.keys(TRAIN_SHAPES).join(', ')})`);
  const rank = o.rank ?? autoRank(s.d);
  const batch = o.batch ?? AUTO.batchMax;
  // As train chooses: `auto` takes WebGPU only for steps big enough to pay its per-step cost.
  const shapes = [{ inDim: s.d, outDim: s.ffn }, { inDim: s.d, outDim: s.heads }];
  const b = await selectBackend(o.backend, { skipWebGpu: webGpuTooSmall(stepGflop(shapes, rank, batch)) });
  const gpu = b.name === 'webgpu' || b.name === 'node-gpu';
  const one = (out: number, cpuSteps: number): Promise<StepBenchResult> =>
    benchTrainStep(b.tf, { d: s.d, r: rank, out, batch, steps: o.steps ?? (gpu ? 40 : cpuSteps), warmup: gpu ? 5 : 1 });
  const mlp = await one(s.ffn, 4);
  const attn = await one(s.heads, 8);
  const layer = Math.round(1 / (1 / mlp.samples_per_s + 1 / attn.samples_per_s));
  return {
    bench: 'train-shape',
    date: new Date().toISOString(),
    command: `node ${process.argv.slice(1).join(' ')}`,
    device: gpu ? b.description : `${cpus()[0]?.model ?? 'cpu'} (${cpus().length} cores; ${b.description})`,
    backend: b.name,
    backend_line: backendLine(b),
    node: process.version,
    shape: { name: o.shape, ...s },
    rank,
    batch,
    rank_and_batch_are_train_defaults: rank === autoRank(s.d) && batch === AUTO.batchMax,
    // One layer's two predictors over the same rows, one after the other (what train does per layer and token).
    layer_samples_per_s: layer,
    mlp,
    attn,
    ...(gpu ? {} : { note: 'one thread of this CPU; train --workers N trains N predictors at once, one per thread' }),
  };
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const { values } = parseArgs({
    options: {
      shape: { type: 'string', default: 'opt-6.7b' },
      backend: { type: 'string', default: 'auto' },
      rank: { type: 'string' },
      batch: { type: 'string' },
      steps: { type: 'string' },
      out: { type: 'string' },
    },
  });
  const int = (flag: string, v: string | undefined): number | undefined => {
    if (v === undefined) return undefined;
    if (!/^[1-9][0-9]*$/.test(v)) {
      process.stderr.write(`error: --${flag} must be a positive integer, got '${v}'\n`);
      process.exit(2);
    }
    return Number(v);
  };
  if (!BACKENDS.includes(values.backend as BackendName)) {
    process.stderr.write(`error: --backend must be one of ${BACKENDS.join(', ')}\n`);
    process.exit(2);
  }
  const r = await runTrainShape({
    shape: values.shape!,
    backend: values.backend as BackendName,
    rank: int('rank', values.rank),
    batch: int('batch', values.batch),
    steps: int('steps', values.steps),
  });
  const text = JSON.stringify(r, null, 2) + '\n';
  if (values.out) writeFileSync(values.out, text);
  process.stdout.write(text);
  process.exit(0);
}
