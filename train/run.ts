/**
 * The train command's driver: picks the backend (printed), runs the jobs (in this thread, or spread over worker
 * threads, each with its own tfjs instance: tfjs-wasm runs one thread per instance in Node, so on a 2-core machine two
 * workers train two predictors at once), prints the metrics table and, with --json, the report on stdout.
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { METRICS_FILE, type MetricsEntry, type Target, type TrainMetrics } from '../common/contracts.js';
import { log } from '../common/progress.js';
import { DejavuError } from '../common/errors.js';
import { selectBackend, type BackendName } from './backend.js';
import { jobName } from './jobs.js';
import { argsRecord, formatTable, planFromShards, train, writeMetrics, type TrainOptions } from './trainer.js';

export interface RunOptions extends TrainOptions {
  backend: BackendName;
  workers: number;
  json: boolean;
}

async function trainInWorkers(o: RunOptions): Promise<TrainMetrics> {
  const t0 = performance.now();
  const { set, jobs } = await planFromShards(o);
  mkdirSync(o.out, { recursive: true });
  // Biggest predictors first, so the last job to finish is a small one.
  const queue = [...jobs].sort((a, b) => b.outDim - a.outDim || a.layer - b.layer);
  const n = Math.min(o.workers, queue.length);
  const report: TrainMetrics = { model_fingerprint: set.fingerprint, args: argsRecord(o), backend: '', layers: [], skipped: [], seconds: 0 };
  log(`train: ${jobs.length} predictors on ${n} worker threads, backend ${o.backend}`);
  const { backend: _b, workers: _w, json: _j, ...trainOpts } = o;
  await Promise.all(
    Array.from({ length: n }, (_, wi) => new Promise<void>((resolve, reject) => {
      const w = new Worker(new URL('./worker.js', import.meta.url), { workerData: { options: { ...trainOpts, noProgress: true }, backend: o.backend } });
      const next = () => {
        const job = queue.shift();
        if (job) w.postMessage({ job });
        else w.postMessage({ exit: true });
      };
      w.on('message', (m: { ready?: string; result?: MetricsEntry | { skipped: string }; job?: { layer: number; target: Target }; error?: { message: string; dejavu: boolean } }) => {
        if (m.ready) {
          if (wi === 0) report.backend = m.ready;
          log(`worker ${wi}: backend ${m.ready}`);
          next();
        } else if (m.error) {
          reject(m.error.dejavu ? new DejavuError(m.error.message) : new Error(m.error.message));
          void w.terminate();
        } else if (m.result && m.job) {
          if ('skipped' in m.result) {
            log(`${jobName(m.job)}: skipped: ${m.result.skipped}`);
            report.skipped.push({ layer: m.job.layer, target: m.job.target, reason: m.result.skipped });
          } else report.layers.push(m.result);
          report.seconds = Math.round((performance.now() - t0) / 10) / 100;
          writeMetrics(o.out, report);
          next();
        }
      });
      w.on('error', reject);
      w.on('exit', () => resolve());
    })),
  );
  report.seconds = Math.round((performance.now() - t0) / 10) / 100;
  writeMetrics(o.out, report);
  return report;
}

export async function runTrain(o: RunOptions): Promise<TrainMetrics> {
  let report: TrainMetrics;
  if (o.workers > 1) {
    report = await trainInWorkers(o);
  } else {
    const b = await selectBackend(o.backend);
    for (const s of b.skipped) log(`backend skipped: ${s}`);
    log(`backend: ${b.description}`);
    report = await train(b.tf, b.description, o);
  }
  log(formatTable(report));
  log(`metrics: ${join(o.out, METRICS_FILE)} (${report.seconds} s)`);
  if (o.json) process.stdout.write(JSON.stringify(report) + '\n');
  return report;
}
