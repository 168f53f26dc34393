/**
 * The train command's driver: picks the backend (printed), runs the jobs (in this thread, or spread over worker
 * threads, each with its own tfjs instance: tfjs-wasm runs one thread per instance in Node, so on a 2-core machine two
 * workers train two predictors at once), prints the metrics table and, with --json, the report on stdout.
 */
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { METRICS_FILE, type MetricsEntry, type Target, type TrainMetrics } from '../common/contracts.js';
import { log, progressBar, warn, workerEnv } from '../common/progress.js';
import { DejavuError } from '../common/errors.js';
import { backendLine, preferContainerVulkanDriver, selectBackend, stepGflop, webGpuTooSmall, type BackendName } from './backend.js';
import { capWorkers, thisMachine, type Machine } from '../common/workers.js';
import { addResult, formatTable, prepareRun, settingsText, train, trainWorkerBytes, writeMetrics, type TrainOptions } from './trainer.js';

export interface RunOptions extends TrainOptions {
  backend: BackendName;
  workers: number;
  json: boolean;
  /** Where the metrics table goes without --json: stdout for `dejavu train` (its result), stderr inside the demo. */
  table?: 'stdout' | 'stderr';
}

async function trainInWorkers(request: RunOptions, machine: Machine): Promise<TrainMetrics> {
  const t0 = performance.now();
  // `auto` rank and batch (and a validation fraction raised from an empty split) resolved here, once: the workers
  // get numbers.
  const { jobs, report, o: resolved } = await prepareRun(request, '');
  const o = { ...request, rank: resolved.rank, batch: resolved.batch, valFrac: resolved.valFrac };
  // Biggest predictors first, so the last job to finish is a small one.
  const queue = [...jobs].sort((a, b) => b.outDim - a.outDim || a.layer - b.layer);
  const cap = capWorkers(o.workers, '--workers', trainWorkerBytes(jobs, o), machine);
  if (cap.warning) warn(cap.warning);
  const n = Math.min(cap.workers, queue.length);
  log(`train: ${jobs.length} predictors on ${n} worker thread${n === 1 ? '' : 's'}, backend ${o.backend}; ${settingsText(report.args)}`);
  const { backend: _b, workers: _w, json: _j, table: _t, ...trainOpts } = o;
  const skipWebGpu = o.backend === 'auto' ? webGpuTooSmall(stepGflop(jobs, o.rank, o.batch)) : undefined;
  // The workers train silently (noProgress); the main thread shows predictors done, rate and ETA (plain lines off a
  // terminal).
  const bar = progressBar('train', jobs.length, 'predictors', o.quiet);
  // Worker 0 chooses the backend; the others start once it has, with the backend it chose: `auto` probes WebGPU once,
  // not once per worker.
  if (o.backend === 'auto' || o.backend === 'webgpu') preferContainerVulkanDriver(); // here: the workers' Dawn reads the process's environment
  let startOthers: (backend: BackendName) => void = () => {};
  const start = (wi: number, backend: BackendName): Promise<void> =>
    new Promise<void>((resolve, reject) => {
      const w = new Worker(new URL('./worker.js', import.meta.url), { workerData: { options: { ...trainOpts, noProgress: true }, backend, skipWebGpu }, env: workerEnv() });
      const next = () => {
        const job = queue.shift();
        if (job) w.postMessage({ job });
        else w.postMessage({ exit: true });
      };
      w.on('message', (m: { ready?: string; name?: BackendName; line?: string; result?: MetricsEntry | { skipped: string }; job?: { layer: number; target: Target }; error?: { message: string; dejavu: boolean } }) => {
        if (m.ready) {
          // Every worker runs the backend worker 0 chose: one line for all.
          if (wi === 0) {
            report.backend = m.ready;
            log(`${m.line ?? `backend: ${m.ready}`} (each of ${n} workers)`);
            startOthers(m.name ?? o.backend);
          }
          next();
        } else if (m.error) {
          reject(m.error.dejavu ? new DejavuError(m.error.message) : new Error(m.error.message));
          void w.terminate();
        } else if (m.result && m.job) {
          addResult(report, m.job, m.result);
          bar.increment();
          report.seconds = Math.round((performance.now() - t0) / 10) / 100;
          writeMetrics(o.out, report);
          next();
        }
      });
      w.on('error', reject);
      w.on('exit', () => resolve());
    });
  const others = new Promise<unknown>((resolve, reject) => {
    startOthers = (backend) => void Promise.all(Array.from({ length: n - 1 }, (_, i) => start(i + 1, backend))).then(resolve, reject);
  });
  await Promise.all([start(0, o.backend), others]).finally(() => bar.stop());
  report.seconds = Math.round((performance.now() - t0) / 10) / 100;
  writeMetrics(o.out, report);
  return report;
}

/**
 * Trains, then prints the result: with --json the report as one line on stdout, else the metrics table and where
 * metrics.json is (on `o.table`, default stderr). `machine` bounds --workers (tests inject one).
 */
export async function runTrain(o: RunOptions, machine: Machine = thisMachine()): Promise<TrainMetrics> {
  let report: TrainMetrics;
  if (o.workers > 1) {
    report = await trainInWorkers(o, machine);
  } else {
    const run = await prepareRun(o, '');
    const skipWebGpu = o.backend === 'auto' ? webGpuTooSmall(stepGflop(run.jobs, run.o.rank, run.o.batch)) : undefined;
    const b = await selectBackend(o.backend, { skipWebGpu });
    log(backendLine(b));
    run.report.backend = b.description;
    report = await train(b.tf, b.description, o, run);
  }
  if (o.json) process.stdout.write(JSON.stringify(report) + '\n');
  else {
    const text = `${formatTable(report)}\nmetrics: ${join(o.out, METRICS_FILE)} (${report.seconds} s; ${settingsText(report.args)})`;
    if (o.table === 'stdout') process.stdout.write(text + '\n');
    else log(text);
  }
  return report;
}
