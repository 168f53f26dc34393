/**
 * Training throughput for one layer of a real OPT shape, synthetic data of that shape, on any train backend:
 *
 *   node dist/bench/train-shape.js [--shape opt-6.7b] [--backend auto|webgpu|wasm|cpu] [--rank R] [--batch B]
 *                                  [--steps N] [--workers W] [--out FILE.json]
 *
 * Times the step `dejavu train` runs (train/model.ts, through bench/train-step.ts: per-step upload of fp32 inputs and
 * packed labels, the trainer's sync pattern) for the layer's two predictors, MLP (d -> rank -> ffn) and attention
 * (d -> rank -> heads), at train's defaults unless given: `--rank auto` for the shape's d (1000 from OPT-6.7B on) and the
 * batch `--batch auto` gives at real scale (1024, from 262,144 training tokens on; train/auto.ts). Prints one JSON object (device,
 * date, command, backend line, samples/s per predictor and for the layer: both predictors over the same rows) and
 * writes it to --out. The backend is chosen as train chooses it (`auto`: WebGPU with a hardware adapter, else wasm);
 * wasm runs one thread per process (train's --workers N trains N predictors at once, one per thread).
 * `--workers W` runs W copies at once, each in its own worker thread with its own tfjs and backend (one Dawn device
 * each on WebGPU), as `dejavu train --workers W` does: MLP on all of them, then attention; each target's aggregate
 * samples/s is all workers' samples over the span from the first timed step to the last.
 */
import { writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
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
  /** Copies run at once in worker threads (default 1: this thread). */
  workers?: number;
}

/** The shape's dims, and the rank and batch: train's defaults unless given. */
function resolveShape(o: TrainShapeOptions) {
  const s = TRAIN_SHAPES[o.shape];
  if (!s) throw new Error(`unknown --shape '${o.shape}' (one of ${Object.keys(TRAIN_SHAPES).join(', ')})`);
  return { s, rank: o.rank ?? autoRank(s.d), batch: o.batch ?? AUTO.batchMax };
}

/** The backend train would pick for this shape, and a runner of one predictor's step bench on it. */
async function shapeBench(o: TrainShapeOptions) {
  const { s, rank, batch } = resolveShape(o);
  const shapes = [{ inDim: s.d, outDim: s.ffn }, { inDim: s.d, outDim: s.heads }];
  const b = await selectBackend(o.backend, { skipWebGpu: webGpuTooSmall(stepGflop(shapes, rank, batch)) });
  const gpu = b.name === 'webgpu' || b.name === 'node-gpu';
  const run = (target: 'mlp' | 'attn'): Promise<StepBenchResult> =>
    benchTrainStep(b.tf, {
      d: s.d,
      r: rank,
      out: target === 'mlp' ? s.ffn : s.heads,
      batch,
      steps: o.steps ?? (gpu ? 40 : target === 'mlp' ? 4 : 8),
      warmup: gpu ? 5 : 1,
    });
  return { b, gpu, run };
}

/** Both predictors' step benches in `workers` threads at once; per target, the aggregate over the common span. */
async function inWorkers(o: TrainShapeOptions, workers: number) {
  const threads = Array.from({ length: workers }, () => new Worker(new URL(import.meta.url), { workerData: { trainShape: o } }));
  const next = (w: Worker) =>
    new Promise<{ ready?: { name: string; backend: string; line: string; gpu: boolean }; result?: StepBenchResult; error?: string }>((resolve, reject) => {
      w.once('message', resolve);
      w.once('error', reject);
    });
  try {
    const ready = await Promise.all(threads.map(next));
    const failed = ready.find((m) => m.error);
    if (failed) throw new Error(failed.error);
    const phase = async (target: 'mlp' | 'attn') => {
      const got = threads.map(next);
      for (const w of threads) w.postMessage({ target });
      const rs = await Promise.all(got);
      const bad = rs.find((m) => m.error);
      if (bad) throw new Error(bad.error);
      const per = rs.map((m) => m.result!);
      const span = (Math.max(...per.map((r) => r.window_ms[1])) - Math.min(...per.map((r) => r.window_ms[0]))) / 1000;
      const samples = per.reduce((a, r) => a + r.batch * r.steps, 0);
      return { aggregate_samples_per_s: Math.round(samples / span), span_seconds: Math.round(span * 1000) / 1000, per_worker: per };
    };
    const mlp = await phase('mlp');
    const attn = await phase('attn');
    return { ready: ready[0].ready!, mlp, attn };
  } finally {
    await Promise.all(threads.map((w) => w.terminate()));
  }
}

export async function runTrainShape(o: TrainShapeOptions): Promise<Record<string, unknown>> {
  const workers = o.workers ?? 1;
  const { s, rank, batch } = resolveShape(o);
  const head = {
    bench: 'train-shape',
    date: new Date().toISOString(),
    command: `node ${process.argv.slice(1).join(' ')}`,
  };
  const tail = {
    node: process.version,
    shape: { name: o.shape, ...s },
    rank,
    batch,
    rank_and_batch_are_train_defaults: rank === autoRank(s.d) && batch === AUTO.batchMax,
  };
  if (workers > 1) {
    const r = await inWorkers(o, workers);
    return {
      ...head,
      device: r.ready.gpu ? r.ready.backend : `${cpus()[0]?.model ?? 'cpu'} (${cpus().length} cores; ${r.ready.backend})`,
      backend: r.ready.name,
      backend_line: r.ready.line,
      workers,
      ...tail,
      layer_samples_per_s: Math.round(1 / (1 / r.mlp.aggregate_samples_per_s + 1 / r.attn.aggregate_samples_per_s)),
      mlp: r.mlp,
      attn: r.attn,
    };
  }
  const { b, gpu, run } = await shapeBench(o);
  const mlp = await run('mlp');
  const attn = await run('attn');
  const layer = Math.round(1 / (1 / mlp.samples_per_s + 1 / attn.samples_per_s));
  return {
    ...head,
    device: gpu ? b.description : `${cpus()[0]?.model ?? 'cpu'} (${cpus().length} cores; ${b.description})`,
    backend: b.name,
    backend_line: backendLine(b),
    ...tail,
    layer_samples_per_s: layer,
    mlp,
    attn,
    ...(gpu ? {} : { note: 'one thread of this CPU; train --workers N trains N predictors at once, one per thread' }),
  };
}

// A worker of `--workers W`: picks its backend, says so, then runs each target it is sent.
if (!isMainThread && (workerData as { trainShape?: TrainShapeOptions } | null)?.trainShape) {
  const port = parentPort!;
  try {
    const { b, gpu, run } = await shapeBench((workerData as { trainShape: TrainShapeOptions }).trainShape);
    port.on('message', (m: { target: 'mlp' | 'attn' }) => {
      run(m.target).then(
        (result) => port.postMessage({ result }),
        (e: Error) => port.postMessage({ error: e.message }),
      );
    });
    port.postMessage({ ready: { name: b.name, backend: b.description, line: backendLine(b), gpu } });
  } catch (e) {
    port.postMessage({ error: (e as Error).message });
  }
}

if (isMainThread && process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const { values } = parseArgs({
    options: {
      shape: { type: 'string', default: 'opt-6.7b' },
      backend: { type: 'string', default: 'auto' },
      rank: { type: 'string' },
      batch: { type: 'string' },
      steps: { type: 'string' },
      workers: { type: 'string' },
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
  if (!TRAIN_SHAPES[values.shape!]) {
    process.stderr.write(`error: --shape must be one of ${Object.keys(TRAIN_SHAPES).join(', ')}, got '${values.shape}'\n`);
    process.exit(2);
  }
  const r = await runTrainShape({
    shape: values.shape!,
    backend: values.backend as BackendName,
    rank: int('rank', values.rank),
    batch: int('batch', values.batch),
    steps: int('steps', values.steps),
    workers: int('workers', values.workers),
  });
  const text = JSON.stringify(r, null, 2) + '\n';
  if (values.out) writeFileSync(values.out, text);
  process.stdout.write(text);
  process.exit(0);
}
