/**
 * The upper bound on worker threads (collect and train `--workers`, eval `--workers`/`--threads`): no more than the
 * cores, and no more than the memory holds when each worker keeps its own copy of the model. A request above the
 * bound is clamped to it with a warning (the results never depend on the worker count, only the speed does).
 * Pure given a `Machine`; `thisMachine()` reads the real one.
 */
import { availableParallelism, freemem, totalmem } from 'node:os';
import type { OptConfig } from '../checkpoints/types.js';

export interface Machine {
  cores: number;
  /** Bytes the workers may take: free memory, or what is left under a cgroup limit when that is lower. */
  availableBytes: number;
}

export function thisMachine(): Machine {
  let available = freemem();
  const limit = (process as { constrainedMemory?: () => number | undefined }).constrainedMemory?.() ?? 0;
  if (limit > 0 && limit < totalmem()) available = Math.min(available, Math.max(0, limit - process.memoryUsage().rss));
  return { cores: availableParallelism(), availableBytes: available };
}

/** Workers may use this share of the available memory (the main thread, the OS and estimation error keep the rest). */
const MEMORY_SHARE = 0.8;

export function gib(bytes: number): string {
  return bytes >= 2 ** 30 ? `${(bytes / 2 ** 30).toFixed(1)} GiB` : `${Math.max(1, Math.round(bytes / 2 ** 20))} MiB`;
}

export interface WorkerCap {
  /** The workers to start. */
  workers: number;
  /** The largest count this machine allows. */
  max: number;
  /** Set when a requested count was lowered (one line, for stderr). */
  warning?: string;
}

/**
 * How many workers to start: `requested` (a flag's value; undefined = as many as allowed), at most the cores and
 * `MEMORY_SHARE` of the available memory divided by `perWorkerBytes` (at least 1: one worker is what the command
 * needs to run at all).
 */
export function capWorkers(requested: number | undefined, flag: string, perWorkerBytes: number, m: Machine): WorkerCap {
  const byCores = Math.max(1, m.cores);
  const byMemory = Math.max(1, Math.floor((MEMORY_SHARE * m.availableBytes) / Math.max(1, perWorkerBytes)));
  const max = Math.min(byCores, byMemory);
  if (requested === undefined) return { workers: max, max };
  if (requested <= max) return { workers: requested, max };
  const why = byMemory < byCores
    ? `each worker needs about ${gib(perWorkerBytes)} and ${gib(m.availableBytes)} of memory is available`
    : `${byCores} core${byCores === 1 ? '' : 's'}`;
  return { workers: max, max, warning: `${flag} ${requested} is more than this machine can run (${why}): using ${max}` };
}

/** Weights of an OPT model (every matrix, embedding and bias; what a worker holds in fp32). */
export function optParamCount(c: OptConfig): number {
  const d = c.hiddenSize;
  const perLayer = 4 * d * d + 2 * d * c.ffnDim + 9 * d + c.ffnDim;
  const embed = c.vocabSize * c.wordEmbedProjDim + (c.maxPositionEmbeddings + 2) * d;
  const head = c.tieWordEmbeddings ? 0 : c.vocabSize * c.wordEmbedProjDim;
  const proj = c.wordEmbedProjDim !== d ? 2 * d * c.wordEmbedProjDim : 0;
  return c.numLayers * perLayer + embed + head + proj;
}

/**
 * Memory of one forward worker (collect, eval): the model in fp32 plus one document of `maxLen` tokens in flight
 * (its logits and per-layer activations). An estimate, on the high side.
 */
export function forwardWorkerBytes(c: OptConfig, maxLen: number): number {
  const weights = 4 * optParamCount(c);
  const activations = 4 * maxLen * (c.vocabSize + 2 * c.ffnDim + 8 * c.hiddenSize);
  return weights + activations;
}
