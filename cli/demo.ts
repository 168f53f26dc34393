/**
 * `dejavu demo`: the whole pipeline in-process: collect -> train -> export -> eval ppl -> bench -> report
 * (report.html), ending with one summary table of every stage's time and result. By default on the example vendored
 * under examples/ (opt-mini + a c4mini subset), sized to finish within 10 minutes on 2 CPU cores (6 min measured, training at
 * train's defaults: bench/results/train-defaults-opt-mini.json); `--model DIR --data
 * FILES` runs it on a user's model, and `--device cuda` runs collect (the taps from the CUDA prefill), eval (dense and
 * predicted perplexity from the CUDA prefill and sparse graph) and bench on the GPU engine; train chooses its backend as
 * always (WebGPU when Dawn finds a GPU, else wasm), export runs on the CPU. Every stage writes
 * under the work folder (by default in the OS temp folder), and a rerun with the same settings resumes collect and
 * train from what is there.
 */
import { existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadOptCheckpoint } from '../checkpoints/opt-checkpoint.js';
import { writeJsonAtomic } from '../common/atomic.js';
import { DejavuError } from '../common/errors.js';
import { log } from '../common/progress.js';
import { loadBundle } from '../export/bundle.js';
import { exportBundle } from '../export/export.js';
import { writeReport } from '../report/report.js';
import { runCpuBench } from '../runtime/sparse/bench-cpu.js';
import { runBundlePpl } from '../runtime/sparse/eval.js';

export interface DemoOptions {
  work: string;
  /** examples/ folder (default: found next to the installed package). */
  examples?: string;
  trainDocs: number;
  maxLen: number;
  /** Predictor rank, epochs and batch; by default train's (rank and batch auto, 10 epochs). */
  rank?: number;
  epochs?: number;
  batch?: number;
  evalDocs: number;
  workers: number;
  /** MLP density kept in layers 1 to L-1. */
  mlpDensity: number;
  /** A model folder instead of examples/opt-mini (with `data`). */
  model?: string;
  /** C4 files collected from (with `model`; default examples' c4mini-train subset). */
  data?: string[];
  /** C4 files scored by eval (default examples' c4mini validation file). */
  evalData?: string[];
  /** Where eval and bench run (default cpu). */
  device?: 'cpu' | 'cuda';
  quiet?: boolean;
}

/** The demo's data size and workers; training runs at train's defaults (train/trainer.ts DEFAULTS). */
export const DEMO_DEFAULTS = { trainDocs: 120, maxLen: 256, evalDocs: 12, workers: 2, mlpDensity: 0.15 };

/** The default work folder: under the OS temp folder (stable across runs, so a rerun resumes). */
export function defaultDemoWork(): string {
  return join(tmpdir(), 'dejavu-demo');
}

/** The examples/ folder: walk up from this module (dist/cli or cli) to the package root. */
export function findExamples(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++) {
    const cand = join(dir, 'examples');
    if (existsSync(join(cand, 'opt-mini', 'config.json'))) return cand;
    dir = dirname(dir);
  }
  throw new DejavuError('examples/opt-mini not found next to the package (pass --examples DIR)', 'examples');
}

export async function runDemo(o: DemoOptions): Promise<Record<string, unknown>> {
  if ((o.model === undefined) !== (o.data === undefined)) throw new DejavuError('give --model and --data together (the model and the C4 files to collect from)', o.model ? '--data' : '--model');
  const device = o.device ?? 'cpu';
  if (device !== 'cpu' && device !== 'cuda') throw new DejavuError(`expected cpu or cuda, got '${device as string}'`, '--device');
  const ex = o.model && o.evalData ? undefined : (o.examples ?? findExamples());
  const model = o.model ?? join(ex!, 'opt-mini');
  const trainData = o.data ?? [join(ex!, 'c4mini', 'c4mini-train-first400.json.gz')];
  const validData = o.evalData ?? [join(ex!, 'c4mini', 'c4mini-validation.00000-of-00001.json.gz')];
  for (const p of [model, ...trainData, ...validData]) if (!existsSync(p)) throw new DejavuError(o.model ? 'not found' : 'missing example file', p);
  const work = resolve(o.work);
  mkdirSync(work, { recursive: true });
  const paths = { shards: join(work, 'shards'), predictors: join(work, 'predictors'), bundle: join(work, 'bundle') };
  const files = { eval: join(work, 'eval.json'), bench: join(work, 'bench.json'), report: join(work, 'report.html') };
  // A rerun with the same settings resumes collect and train; other settings start over (stale stages removed).
  // Train's defaults are part of the settings: a version that changes them starts the demo's train over.
  const { DEFAULTS } = await import('../train/trainer.js');
  const trainSettings = { rank: o.rank ?? DEFAULTS.rank, epochs: o.epochs ?? DEFAULTS.epochs, batch: o.batch ?? DEFAULTS.batch, lr: DEFAULTS.lr, patience: DEFAULTS.patience };
  const args = { trainDocs: o.trainDocs, maxLen: o.maxLen, train: trainSettings, model, data: trainData };
  const argsPath = join(work, 'demo-args.json');
  let prev: unknown = null;
  try {
    prev = JSON.parse(readFileSync(argsPath, 'utf8'));
  } catch {
    prev = null;
  }
  if (JSON.stringify(prev) !== JSON.stringify(args)) {
    for (const p of Object.values(paths)) rmSync(p, { recursive: true, force: true });
  }
  writeJsonAtomic(argsPath, args);
  const stages: { stage: string; seconds: number; result: string }[] = [];
  const t00 = performance.now();
  const timed = async <T>(stage: string, f: () => Promise<T>, describe: (r: T) => string): Promise<T> => {
    log(`\n== ${stage}`);
    const t0 = performance.now();
    const r = await f();
    const seconds = Math.round((performance.now() - t0) / 100) / 10;
    stages.push({ stage, seconds, result: describe(r) });
    log(`== ${stage}: ${seconds} s`);
    return r;
  };

  const { collect } = await import('../collect/collect.js');
  const col = await timed(
    'collect',
    // With --device cuda the taps come from the GPU engine's prefill (a real model's forward on the CPU takes hours).
    () => collect({ model, data: trainData, out: paths.shards, docs: o.trainDocs, maxLen: o.maxLen, quiet: o.quiet, ...(device === 'cuda' ? { device } : {}) }),
    (r) => `${r.manifest.docs} docs, ${r.manifest.tokens} tokens x ${r.manifest.layers.length} layers`,
  );

  const { runTrain } = await import('../train/run.js');
  const tr = await timed(
    'train',
    () =>
      // Train's defaults: rank and batch resolve from the model width and the demo's data (train/auto.ts).
      runTrain({
        ...DEFAULTS,
        shards: paths.shards,
        out: paths.predictors,
        target: 'both',
        rank: trainSettings.rank,
        epochs: trainSettings.epochs,
        batch: trainSettings.batch,
        resume: true,
        backend: 'auto',
        workers: o.workers,
        json: false,
        quiet: o.quiet,
      }),
    (r) => {
      const mlp = r.layers.filter((l) => l.target === 'mlp');
      const rec = mlp.reduce((a, l) => a + l.recall, 0) / Math.max(1, mlp.length);
      return `${r.layers.length} predictors (rank ${String(r.args.rank)}, batch ${String(r.args.batch)}), mean MLP recall ${rec.toFixed(3)}`;
    },
  );

  const ckpt = await loadOptCheckpoint(model, { quiet: true });
  // The MLP is where contextual sparsity pays (docs/sparse-runtime.md): fixed MLP density in layers 1..L-1, layer 0
  // (the least sparse) dense; eval and bench keep attention dense so the figures isolate the MLP.
  const mlpK = Math.round(o.mlpDensity * ckpt.config.ffnDim);
  const layers = `1-${ckpt.config.numLayers - 1}`;
  const ex1 = await timed(
    'export',
    async () => exportBundle({ predictors: paths.predictors, out: paths.bundle, layers, mlpK, recall: 0.99 }, ckpt),
    (r) => `layers ${layers}: MLP k=${mlpK} (${(100 * o.mlpDensity).toFixed(0)}%), heads k99; layer 0 dense`,
  );
  const bundle = loadBundle(paths.bundle, ckpt);
  const pct = (x: number) => `${(100 * x).toFixed(2)}%`;

  const ppl = await timed(
    device === 'cuda' ? 'eval ppl (gpu)' : 'eval ppl',
    async (): Promise<Record<string, unknown>> => {
      if (device === 'cpu')
        return runBundlePpl({
          model,
          bundle: paths.bundle,
          data: validData,
          selection: { docs: o.evalDocs },
          maxLen: o.maxLen,
          headsFrac: 1,
          quiet: o.quiet,
          threads: o.workers,
          ckpt,
          loadedBundle: bundle,
        });
      // Dense from the CUDA prefill, oracle (the true top-k at the bundle's k) by the GPU's oracle decode, predicted
      // from the sparse graph the bench times: the three modes the CPU reports.
      const { tokenizeDocs } = await import('../runtime/sparse/eval.js');
      const { runCudaPerplexity } = await import('../runtime/cuda/eval-ppl.js');
      const docs = await tokenizeDocs(model, validData, { docs: o.evalDocs }, o.maxLen);
      const r = await runCudaPerplexity({
        model, docs, maxLen: o.maxLen, bundle: paths.bundle, headsFrac: 1, modes: ['dense', 'oracle', 'predicted'], quiet: o.quiet,
      });
      const dense = (r.dense as { ppl: number }).ppl;
      for (const m of ['dense', 'oracle', 'predicted']) {
        const f = r[m] as { ppl: number; delta_vs_dense?: number };
        f.delta_vs_dense = f.ppl / dense - 1;
      }
      return r;
    },
    (r) => {
      const has = (m: string) => r[m] !== undefined;
      const g = (m: string) => (r[m] as { ppl: number }).ppl.toFixed(2);
      const d = (m: string) => pct((r[m] as { delta_vs_dense: number }).delta_vs_dense);
      return `${r.docs} validation docs: dense ${g('dense')}${has('oracle') ? `, oracle ${g('oracle')} (${d('oracle')})` : ''}, predicted ${g('predicted')} (${d('predicted')})`;
    },
  );

  const bench = await timed(
    device === 'cuda' ? 'bench cuda' : 'bench cpu',
    async (): Promise<Record<string, unknown>> => {
      if (device === 'cpu')
        return runCpuBench({ model, bundle: paths.bundle, density: { mlp: o.mlpDensity, heads: 1 }, prompt: 64, gen: 32, rounds: 3, quiet: o.quiet, ckpt });
      const { runCudaBench } = await import('../runtime/cuda/bench.js');
      return runCudaBench({ model, bundle: paths.bundle, density: { mlp: o.mlpDensity, heads: 1 }, prompt: 128, gen: 128, json: !!o.quiet });
    },
    (r) => `dense ${(r.dense as { ms_per_token: number }).ms_per_token} ms/token, sparse ${(r.sparse as { ms_per_token: number }).ms_per_token} ms/token (${r.speedup}x)`,
  );
  // The full results, as `dejavu eval ppl --json` / `dejavu bench --json` print them, for the report (and for reruns
  // of `dejavu report` with other inputs).
  writeJsonAtomic(files.eval, ppl);
  writeJsonAtomic(files.bench, bench);

  const report = await timed(
    'report',
    async () =>
      writeReport({
        out: files.report,
        title: o.model ? `dejavu demo: ${model}` : 'dejavu demo: opt-mini on c4mini',
        predictors: paths.predictors,
        bundle: paths.bundle,
        evals: [files.eval],
        benches: [files.bench],
      }),
    (r) => `${r.charts.length} charts -> report.html`,
  );

  const summary = {
    work,
    model,
    device,
    seconds: Math.round((performance.now() - t00) / 100) / 10,
    stages,
    collect: { docs: col.manifest.docs, tokens: col.manifest.tokens },
    train: tr.layers.map((l) => ({ layer: l.layer, target: l.target, recall: l.recall, precision: l.precision, k99: l.k99 })),
    export: ex1,
    ppl,
    report: report.out,
    bench: {
      dense_ms_per_token: (bench.dense as { ms_per_token: number }).ms_per_token,
      sparse_ms_per_token: (bench.sparse as { ms_per_token: number }).ms_per_token,
      speedup: bench.speedup,
      ...(device === 'cpu'
        ? { mlp_block_speedup: bench.mlp_block_speedup, mlp_density: bench.mlp_density, head_density: bench.head_density }
        : { density: bench.density, kv_policy: bench.kv_policy, mlp_selection: bench.mlp_selection, device: bench.device }),
    },
  };
  writeJsonAtomic(join(work, 'summary.json'), summary);
  return summary;
}

/** The closing table. */
export function formatDemo(s: Awaited<ReturnType<typeof runDemo>>): string {
  const stages = s.stages as { stage: string; seconds: number; result: string }[];
  const lines = ['', `dejavu demo: ${String(s.model)} (eval and bench on ${String(s.device)})`, '', 'stage           seconds  result'];
  for (const st of stages) lines.push(`${st.stage.padEnd(16)}${String(st.seconds).padStart(7)}  ${st.result}`);
  lines.push(
    `${'total'.padEnd(16)}${String(s.seconds).padStart(7)}`,
    '',
    `work folder: ${s.work} (summary.json, eval.json, bench.json, bundle/, predictors/, shards/)`,
    `report: ${s.report} (open it in a browser)`,
  );
  return lines.join('\n');
}
