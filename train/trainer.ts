/**
 * `dejavu train`: shards -> one low-rank predictor per (layer, target), with per-epoch validation, checkpoint
 * selection, early stopping, atomic checkpoints and resume. Output per docs/ARCHITECTURE.md ("Predictors").
 */
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { writeSafetensors } from '../checkpoints/safetensors.js';
import { writeJsonAtomic } from '../common/atomic.js';
import {
  METRICS_FILE,
  parseLayers,
  predictorFileName,
  type InputNorm,
  type MetricsEntry,
  type PredictorFileMeta,
  type PredictorMetrics,
  type Target,
  type TrainMetrics,
} from '../common/contracts.js';
import { DejavuError, rethrowFs } from '../common/errors.js';
import { log, progressBar } from '../common/progress.js';
import { loadCheckpoint, saveCheckpoint, type Checkpoint, type JobState } from './checkpoint.js';
import { SCHEDULE_DEFAULTS, autoBatch, autoRank, type AutoInt } from './auto.js';
import { countSplit, countTrainRows, labelBytes, nonEmptyValFrac, trainBatches, validationBatches, type SplitCounts } from './data.js';
import { jobName, planJobs, type Job, type MlpInput } from './jobs.js';
import { MetricsAccumulator, selectionScore } from './metrics.js';
import { DEFAULT_ADAMW, Predictor, exportWeights, unpackBits, type Tf } from './model.js';
import { hashSeed } from './rng.js';
import { guardOutput } from './output.js';
import { openShardSet, type ShardSet } from './shard-reader.js';

export interface TrainOptions {
  shards: string;
  out: string;
  target: 'mlp' | 'attn' | 'both';
  layers?: string;
  /** Low-rank width; `auto`: from the model width (train/auto.ts autoRank). */
  rank: AutoInt;
  epochs: number;
  /** Batch in tokens; `auto`: from the training rows (train/auto.ts autoBatch). */
  batch: AutoInt;
  lr: number;
  weightDecay: number;
  headFrac: number;
  mlpInput: MlpInput;
  inputNorm: InputNorm;
  seed: number;
  valFrac: number;
  /** Shuffle buffer in rows; 0 = auto: 65,536 rows or 256 MiB of compact rows, whichever is smaller. */
  bufferRows: number;
  selectBeta: number;
  patience: number;
  resume: boolean;
  /** Delete an earlier run's predictors, checkpoints and metrics.json in `out` first (train/output.ts). */
  force?: boolean;
  quiet?: boolean;
  /** No progress bar (worker threads: several bars would interleave on one terminal); epoch logs stay. */
  noProgress?: boolean;
  /** Called after each epoch's checkpoint is on disk (tests use it to simulate a kill). */
  onEpochEnd?: (job: string, epochsDone: number) => void;
}

/** TrainOptions with `auto` resolved to numbers (prepareRun): what jobs, checkpoints and metrics.json see. */
export type ResolvedOptions = Omit<TrainOptions, 'rank' | 'batch'> & { rank: number; batch: number };

/**
 * Train's defaults, the settings the demo runs with too: rank and batch chosen from the model width and the data
 * (train/auto.ts), up to 10 epochs with early stopping after 3 without a better F-beta, AdamW at 1e-3.
 */
export const DEFAULTS = {
  target: 'both' as const,
  ...SCHEDULE_DEFAULTS,
  weightDecay: 0.01,
  headFrac: 0.3,
  mlpInput: 'mlp_in' as MlpInput,
  inputNorm: 'layernorm' as InputNorm,
  seed: 0,
  valFrac: 0.1,
  bufferRows: 0,
  selectBeta: 2,
};

/** The shuffle buffer of one job in rows (see TrainOptions.bufferRows). */
export function bufferRowsFor(job: Job, o: { bufferRows: number }): number {
  if (o.bufferRows > 0) return o.bufferRows;
  const rowBytes = 2 * job.inDim + labelBytes(job.outDim);
  return Math.max(1, Math.min(65536, Math.floor((256 * 2 ** 20) / rowBytes)));
}

/**
 * Memory of one training worker thread, estimated on the high side for its largest job: its tfjs instance, the
 * shuffle buffer, the predictor with its AdamW moments and best weights, and one batch's tensors.
 */
export function trainWorkerBytes(jobs: Job[], o: { bufferRows: number; rank: number; batch: number }): number {
  const TFJS_INSTANCE = 128 * 2 ** 20;
  let most = 0;
  for (const job of jobs) {
    const buffer = bufferRowsFor(job, o) * (2 * job.inDim + labelBytes(job.outDim));
    const weights = 8 * 4 * (job.inDim * o.rank + o.rank * job.outDim);
    const batch = 4 * 4 * o.batch * (job.inDim + o.rank + job.outDim);
    most = Math.max(most, buffer + weights + batch);
  }
  return TFJS_INSTANCE + most;
}

/** The settings a checkpoint is bound to (not epochs or patience: a resumed run may extend training). */
function settingsKey(set: ShardSet, job: Job, o: ResolvedOptions): string {
  return JSON.stringify({
    fp: set.fingerprint,
    job: [job.layer, job.target, job.inputColumn, job.inputLayer, job.k],
    rank: o.rank,
    batch: o.batch,
    lr: o.lr,
    wd: o.weightDecay,
    seed: o.seed,
    val: o.valFrac,
    buf: bufferRowsFor(job, o),
    norm: o.inputNorm,
    beta: o.selectBeta,
  });
}

function round(x: number, digits = 6): number {
  const p = 10 ** digits;
  return Math.round(x * p) / p;
}

async function evaluate(tf: Tf, p: Predictor, set: ShardSet, job: Job, o: ResolvedOptions): Promise<PredictorMetrics> {
  const acc = new MetricsAccumulator(job.outDim);
  const split = { seed: o.seed, valFrac: o.valFrac };
  for await (const b of validationBatches(set, job, { batch: o.batch, inputNorm: o.inputNorm, split })) {
    const x = tf.tensor2d(b.x, [b.n, job.inDim]);
    const s = p.predict(x);
    const scores = (await s.data()) as Float32Array;
    tf.dispose([x, s]);
    acc.add(scores, b.bits, b.n);
  }
  return acc.result();
}

/** A finished job's entry in metrics.json: its best epoch's validation metrics, the split's sizes and its history. */
function jobResult(job: Job, o: ResolvedOptions, state: JobState, counts: SplitCounts): MetricsEntry {
  const m = state.bestMetrics!;
  return {
    layer: job.layer,
    target: job.target,
    recall: round(m.recall),
    precision: round(m.precision),
    f1: round(m.f1),
    true_active: round(m.true_active, 4),
    predicted_active: round(m.predicted_active, 4),
    k95: round(m.k95, 4),
    k99: round(m.k99, 4),
    tokens: m.tokens,
    input: job.inputColumn,
    lookahead: job.lookahead,
    input_layer: job.inputLayer,
    rank: o.rank,
    input_norm: o.inputNorm,
    out: job.outDim,
    k_label: job.target === 'attn' ? job.k : null,
    best_epoch: state.bestEpoch + 1,
    epochs_run: state.epoch,
    train_tokens: counts.train,
    val_tokens: counts.val,
    positive_rate: round(counts.trainPositives / (counts.train * job.outDim)),
    history: state.history,
  };
}

/** Trains one job to completion (or resumes it). Returns its result, or a skip reason. */
export async function trainJob(tf: Tf, set: ShardSet, job: Job, o: ResolvedOptions): Promise<MetricsEntry | { skipped: string }> {
  const name = jobName(job);
  const split = { seed: o.seed, valFrac: o.valFrac };
  const key = settingsKey(set, job, o);
  const shapes = { d: job.inDim, r: o.rank, out: job.outDim };
  const outFile = join(o.out, predictorFileName(job.layer, job.target));
  const opt = { ...DEFAULT_ADAMW, lr: o.lr, weightDecay: o.weightDecay };

  let ck: Checkpoint | undefined = o.resume ? loadCheckpoint(o.out, name, key) : undefined;
  if (ck?.state.done) {
    // A finished job is skipped unless this run asks for more epochs (and early stopping had not fired).
    const more = ck.state.epoch < o.epochs && ck.state.badEpochs < o.patience;
    if (more || !existsSync(outFile)) ck.state.done = false;
    else {
      log(`${name}: already trained (resume), best epoch ${ck.state.bestEpoch + 1} of ${ck.state.epoch}`);
      // The checkpoint holds the split's counts, so a finished job is skipped without a pass over the shards
      // (seconds per job at OPT-1.3B scale); a checkpoint written before it kept them is counted below.
      if (ck.state.counts) return jobResult(job, o, ck.state, ck.state.counts);
    }
  }
  const counts = ck?.state.counts ?? (await countSplit(set, job, split));
  if (counts.train === 0) throw new DejavuError(`${name}: no training tokens (every document fell in the validation split; lower --val-frac)`, o.shards);
  if (counts.val === 0) throw new DejavuError(`${name}: no validation tokens (${counts.train} training tokens; raise --val-frac or collect more documents)`, o.shards);
  if (counts.trainPositives === 0) {
    return { skipped: `no positive labels in ${counts.train} training tokens (the ${job.target} of layer ${job.layer} is never active: nothing to predict; keep it dense or drop it)` };
  }
  if (ck?.state.done) return jobResult(job, o, ck.state, counts);

  let predictor: Predictor;
  let state: JobState;
  let best: { w1t: Float32Array; w2t: Float32Array };
  if (ck) {
    predictor = new Predictor(tf, job.inDim, o.rank, job.outDim, ck.weights, opt);
    state = { ...ck.state, counts };
    best = ck.best;
    if (!state.done) log(`${name}: resuming after epoch ${state.epoch} (step ${state.step})`);
  } else {
    predictor = Predictor.fresh(tf, job.inDim, o.rank, job.outDim, hashSeed(o.seed, 'init', name), opt);
    state = { epoch: 0, step: 0, bestEpoch: -1, bestScore: -1, bestMetrics: null, badEpochs: 0, history: [], done: false, key, counts };
    best = { w1t: new Float32Array(0), w2t: new Float32Array(0) };
  }

  try {
    while (!state.done && state.epoch < o.epochs && state.badEpochs < o.patience) {
      const e = state.epoch;
      const t0 = performance.now();
      const bar = progressBar(`${name} epoch ${e + 1}/${o.epochs}`, counts.train, 'tok', o.quiet || o.noProgress);
      // Loss: computed every 8th step, read back asynchronously (at most two reads in flight), so the host never
      // waits for the device inside the loop except to bound how far it runs ahead.
      const pending: Promise<number>[] = [];
      let lossSum = 0;
      let lossN = 0;
      let done = 0;
      let stepInEpoch = 0;
      const stream = trainBatches(set, job, {
        batch: o.batch,
        bufferRows: bufferRowsFor(job, o),
        inputNorm: o.inputNorm,
        split,
        epochSeed: hashSeed(o.seed, 'epoch', name, e),
      });
      for await (const b of stream) {
        const x = tf.tensor2d(b.x, [b.n, job.inDim]);
        const y = unpackBits(tf, b.bits, b.n, job.outDim, predictor.pow2);
        const loss = predictor.trainStep(x, y, o.lr, stepInEpoch % 8 === 0);
        tf.dispose([x, y]);
        if (loss) {
          pending.push(loss.data().then((v) => (loss.dispose(), v[0] as number)));
          if (pending.length > 2) {
            lossSum += await pending.shift()!;
            lossN++;
          }
        }
        // A macrotask turn per step lets WebGPU (Dawn) deliver its completion callbacks, so freed buffers recycle.
        await new Promise<void>((r) => setImmediate(r));
        stepInEpoch++;
        done += b.n;
        bar.update(done);
      }
      bar.stop();
      for (const v of await Promise.all(pending.splice(0))) {
        lossSum += v;
        lossN++;
      }
      const meanLoss = lossN > 0 ? lossSum / lossN : null;
      const m = await evaluate(tf, predictor, set, job, o);
      const score = selectionScore(m, o.selectBeta);
      const weights = await predictor.state();
      if (score > state.bestScore + 1e-9) {
        state.bestScore = score;
        state.bestEpoch = e;
        state.bestMetrics = m;
        state.badEpochs = 0;
        best = { w1t: weights.w1t, w2t: weights.w2t };
      } else {
        state.badEpochs++;
      }
      const seconds = (performance.now() - t0) / 1000;
      state.history.push({ epoch: e + 1, loss: meanLoss === null ? null : round(meanLoss), score: round(score), recall: round(m.recall), precision: round(m.precision), seconds: round(seconds, 2) });
      state.epoch = e + 1;
      state.step = weights.step;
      if (!o.quiet) {
        log(
          `${name} epoch ${e + 1}: loss ${meanLoss?.toFixed(4) ?? '-'}  val recall ${m.recall.toFixed(4)} precision ${m.precision.toFixed(4)} ` +
            `F${o.selectBeta} ${score.toFixed(4)}  k99 ${m.k99.toFixed(1)}/${job.outDim} (true ${m.true_active.toFixed(1)})  ${seconds.toFixed(1)} s` +
            (state.badEpochs === 0 ? '  *best' : ''),
        );
      }
      saveCheckpoint(o.out, name, { state, weights, best }, shapes);
      o.onEpochEnd?.(name, state.epoch);
    }

    if (!state.done) {
      const w = exportWeights(best, job.inDim, o.rank, job.outDim);
      try {
        writeSafetensors(
          outFile,
          {
            w1: { dtype: 'F32', shape: [o.rank, job.inDim], data: w.w1 },
            w2: { dtype: 'F32', shape: [job.outDim, o.rank], data: w.w2 },
          },
          {
            target: job.target,
            layer: String(job.layer),
            input: job.inputColumn,
            lookahead: String(job.lookahead),
            rank: String(o.rank),
            model_fingerprint: set.fingerprint,
            input_norm: o.inputNorm,
            ...(job.target === 'attn' ? { k_label: String(job.k) } : {}),
          } satisfies PredictorFileMeta,
        );
      } catch (e) {
        rethrowFs(e, outFile);
      }
      state.done = true;
      const weights = await predictor.state();
      saveCheckpoint(o.out, name, { state, weights, best }, shapes);
    }
  } finally {
    predictor.dispose();
  }

  return jobResult(job, o, state, counts);
}

/**
 * Resolves `--rank auto` and `--batch auto` for this shard set, and a validation split that would be empty. `auto`
 * says what each resolved value was chosen from (recorded in metrics.json's args; not compared on --resume, where
 * the numbers are).
 */
export async function resolveOptions(o: TrainOptions, set: ShardSet): Promise<{ o: ResolvedOptions; auto: Record<string, unknown> }> {
  const auto: Record<string, unknown> = {};
  let rank = o.rank;
  let batch = o.batch;
  // Every split holds out at least one document (data.ts nonEmptyValFrac); the fraction used is recorded.
  const valFrac = await nonEmptyValFrac(set, { seed: o.seed, valFrac: o.valFrac });
  if (valFrac !== o.valFrac) {
    auto.val_frac = { requested: o.valFrac, reason: `no document of this collection fell in a ${o.valFrac} split; the first by hash is held out` };
    o = { ...o, valFrac };
  }
  if (rank === 'auto') {
    rank = autoRank(set.dims.dModel);
    auto.rank = { d_model: set.dims.dModel };
  }
  if (batch === 'auto') {
    const rows = await countTrainRows(set, { seed: o.seed, valFrac: o.valFrac });
    batch = autoBatch(rows);
    auto.batch = { train_rows: rows };
  }
  return { o: { ...o, rank, batch }, auto };
}

/** The settings in effect, from metrics.json's args, for the logs: `rank 128 (auto, d 384), batch 128 (auto, ...) ...`. */
export function settingsText(args: Record<string, unknown>): string {
  const auto = (args.auto ?? {}) as { rank?: { d_model: number }; batch?: { train_rows: number } };
  const rank = `rank ${String(args.rank)}${auto.rank ? ` (auto, d ${auto.rank.d_model})` : ''}`;
  const batch = `batch ${String(args.batch)}${auto.batch ? ` (auto, ${auto.batch.train_rows.toLocaleString('en-US')} training tokens)` : ''}`;
  return `${rank}, ${batch}, up to ${String(args.epochs)} epoch${args.epochs === 1 ? '' : 's'}, lr ${String(args.lr)}, patience ${String(args.patience)}`;
}

export function argsRecord(o: ResolvedOptions, auto: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    shards: o.shards,
    target: o.target,
    layers: o.layers ?? 'all',
    rank: o.rank,
    epochs: o.epochs,
    batch: o.batch,
    lr: o.lr,
    weight_decay: o.weightDecay,
    head_frac: o.headFrac,
    mlp_input: o.mlpInput,
    input_norm: o.inputNorm,
    seed: o.seed,
    val_frac: o.valFrac,
    buffer_rows: o.bufferRows || 'auto',
    select_beta: o.selectBeta,
    patience: o.patience,
    ...(Object.keys(auto).length ? { auto } : {}),
  };
}

export async function planFromShards(o: TrainOptions): Promise<{ set: ShardSet; jobs: Job[] }> {
  const set = await openShardSet(o.shards);
  const layers = parseLayers(o.layers, set.layers);
  const targets: Target[] = o.target === 'both' ? ['mlp', 'attn'] : [o.target];
  const jobs = planJobs(layers, set.layers, targets, set.dims, { headFrac: o.headFrac, mlpInput: o.mlpInput });
  if (jobs.length === 0) throw new DejavuError('nothing to train (attention of layer 0 stays dense; pick other layers or --target mlp)', '--layers');
  return { set, jobs };
}

/**
 * Everything before the first training step: plan the jobs, guard the output folder (train/output.ts: an earlier
 * run is refused, resumed with the same settings, or cleared with --force), create it, and write a metrics.json
 * marked incomplete when there is none yet, so a run killed before its first predictor is still seen as unfinished.
 */
export async function prepareRun(request: TrainOptions, backend: string): Promise<{ set: ShardSet; jobs: Job[]; report: TrainMetrics; o: ResolvedOptions }> {
  const { set, jobs } = await planFromShards(request);
  const { o, auto } = await resolveOptions(request, set);
  const args = argsRecord(o, auto);
  const keys = new Map(jobs.map((j) => [jobName(j), settingsKey(set, j, o)]));
  guardOutput({ out: o.out, resume: o.resume, force: o.force, args, fingerprint: set.fingerprint, keys });
  try {
    mkdirSync(o.out, { recursive: true });
  } catch (e) {
    rethrowFs(e, o.out);
  }
  const report: TrainMetrics = {
    model_fingerprint: set.fingerprint,
    args,
    backend,
    complete: false,
    planned: jobs.map((j) => ({ layer: j.layer, target: j.target })).sort((a, b) => a.layer - b.layer || a.target.localeCompare(b.target)),
    layers: [],
    skipped: [],
    seconds: 0,
  };
  if (!existsSync(join(o.out, METRICS_FILE))) writeMetrics(o.out, report);
  return { set, jobs, report, o };
}

/** Records one finished job in the report; complete once every planned job is trained or skipped. */
export function addResult(report: TrainMetrics, job: { layer: number; target: Target }, r: MetricsEntry | { skipped: string }): void {
  if ('skipped' in r) {
    log(`${jobName(job)}: skipped: ${r.skipped}`);
    report.skipped.push({ layer: job.layer, target: job.target, reason: r.skipped });
  } else report.layers.push(r);
  report.complete = report.layers.length + report.skipped.length === report.planned.length;
}

/** Writes metrics.json from the results so far (atomically; also after each job, so a killed run keeps its metrics). */
export function writeMetrics(out: string, report: TrainMetrics): void {
  // Layer order, attn before mlp, whatever order the jobs (or workers) finished in.
  report.layers.sort((a, b) => a.layer - b.layer || a.target.localeCompare(b.target));
  report.skipped.sort((a, b) => a.layer - b.layer || a.target.localeCompare(b.target));
  writeJsonAtomic(join(out, METRICS_FILE), report);
}

/** Runs every job in this process, one after the other; `prepared`: prepareRun's result when the caller has it. */
export async function train(tf: Tf, backend: string, request: TrainOptions, prepared?: Awaited<ReturnType<typeof prepareRun>>): Promise<TrainMetrics> {
  const t0 = performance.now();
  const { set, jobs, report, o } = prepared ?? (await prepareRun(request, backend));
  if (!o.quiet) log(`train: ${jobs.length} predictors (${jobs.map(jobName).join(', ')}) on ${backend}; shards ${set.shards.length} x ${set.layers.length} layers, ${set.rows.reduce((a, b) => a + b, 0)} tokens; ${settingsText(report.args)}`);
  for (const job of jobs) {
    addResult(report, job, await trainJob(tf, set, job, o));
    report.seconds = round((performance.now() - t0) / 1000, 2);
    writeMetrics(o.out, report);
  }
  return report;
}

/** The metrics table (stderr). */
export function formatTable(r: TrainMetrics): string {
  const head = ['layer', 'target', 'recall', 'precision', 'f1', 'true_act', 'pred_act', 'k95', 'k99', 'out', 'best_ep'];
  const rows = [...r.layers]
    .sort((a, b) => a.layer - b.layer || a.target.localeCompare(b.target))
    .map((l) => [String(l.layer), l.target, l.recall.toFixed(4), l.precision.toFixed(4), l.f1.toFixed(4), l.true_active.toFixed(1), l.predicted_active.toFixed(1), l.k95.toFixed(1), l.k99.toFixed(1), String(l.out), `${l.best_epoch}/${l.epochs_run}`]);
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padStart(widths[i])).join('  ');
  const lines = [line(head), ...rows.map(line)];
  for (const s of r.skipped) lines.push(`layer ${s.layer} ${s.target}: skipped (${s.reason})`);
  return lines.join('\n');
}
