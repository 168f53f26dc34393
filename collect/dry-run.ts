/**
 * `dejavu collect --dry-run`: the forward with its taps over the selected documents, in collect's order and with as
 * many documents in flight, and nothing written: the rate the model side of collect reaches alone (on the GPU: the
 * prefill with taps, the copies to pinned host memory included), to set beside the disk's.
 */
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { parseLayers, type ShardDims } from '../common/contracts.js';
import { DejavuError } from '../common/errors.js';
import { log } from '../common/progress.js';
import { DEFAULT_MAX_LEN, type CollectOptions } from './collect.js';
import { cudaForward, inThreadForward, workerForward, workersAvailable, type DocForward, type GpuInfo } from './forward.js';
import { rowBytes } from './schema.js';

export type DryRunOptions = Pick<CollectOptions, 'model' | 'data' | 'docs' | 'sample' | 'seed' | 'maxLen' | 'layers' | 'mlpTopk' | 'workers' | 'device' | 'quiet'>;

export interface DryRunResult {
  device: 'cpu' | 'cuda';
  forward: string;
  docs: number;
  tokens: number;
  layers: number;
  /** Column bytes of one row: what a token would cost per layer on disk before Arrow's framing. */
  row_bytes: number;
  /** Model load and set-up. */
  load_seconds: number;
  /** From the first document read to the last document's rows in hand. */
  seconds: number;
  tokens_per_second: number;
  gpu?: GpuInfo;
}

export async function collectDryRun(opts: DryRunOptions): Promise<DryRunResult> {
  const t0 = performance.now();
  const maxLen = opts.maxLen ?? DEFAULT_MAX_LEN;
  const device = opts.device ?? 'cpu';
  if (device !== 'cpu' && device !== 'cuda') throw new DejavuError(`expected cpu or cuda, got '${device as string}'`, '--device');
  if (opts.docs !== undefined && opts.sample !== undefined) throw new DejavuError('use --docs or --sample, not both', '--docs');
  const { resolveInputs, readDocuments, createReadStats, loadTokenizer } = await import('../datasets/index.js');
  const files = resolveInputs(opts.data);
  const { parseOptConfig } = await import('../checkpoints/opt-config.js');
  const c = parseOptConfig(join(opts.model, 'config.json'));
  if (maxLen < 1 || maxLen > c.maxPositionEmbeddings)
    throw new DejavuError(`must be 1..${c.maxPositionEmbeddings} (the model's max_position_embeddings), got ${maxLen}`, '--max-len');
  const layers = parseLayers(opts.layers ?? 'all', c.numLayers);
  const dims: ShardDims = { dModel: c.hiddenSize, nHeads: c.numHeads, ffnDim: c.ffnDim, topK: opts.mlpTopk ?? 0 };
  let forward: DocForward;
  let gpu: GpuInfo | undefined;
  if (device === 'cuda') {
    if (opts.workers !== undefined) throw new DejavuError('the GPU runs one engine; --workers is for --device cpu', '--workers');
    ({ forward, gpu } = await cudaForward(opts.model, layers, dims, maxLen));
  } else {
    const { loadOptCheckpoint } = await import('../checkpoints/opt-checkpoint.js');
    const ckpt = await loadOptCheckpoint(opts.model, { quiet: opts.quiet });
    const threads = opts.workers ?? availableParallelism();
    forward = threads > 1 && workersAvailable() ? await workerForward(ckpt, layers, dims, threads) : await inThreadForward(ckpt, layers, dims);
  }
  try {
    if (!opts.quiet) log(`forward: ${forward.describe} (dry run: nothing is written)`);
    const tokenizer = await loadTokenizer(opts.model);
    const selection = { docs: opts.docs, sample: opts.sample, seed: opts.sample !== undefined ? (opts.seed ?? 0) : undefined };
    const tRun = performance.now();
    const loadSeconds = (tRun - t0) / 1000;
    let docs = 0;
    let tokens = 0;
    // As collect: 2 x parallel documents in flight, received in reading order.
    const inflight: Promise<unknown>[] = [];
    for await (const doc of readDocuments(files, selection, createReadStats())) {
      const ids = tokenizer.encode(doc.text, maxLen);
      if (ids.length === 0) continue;
      const job = forward.rows(ids);
      job.catch(() => {});
      inflight.push(job);
      docs++;
      tokens += ids.length;
      if (inflight.length >= 2 * forward.parallel) await inflight.shift();
    }
    while (inflight.length) await inflight.shift();
    const seconds = (performance.now() - tRun) / 1000;
    return {
      device,
      forward: forward.describe,
      docs,
      tokens,
      layers: layers.length,
      row_bytes: rowBytes(dims),
      load_seconds: Math.round(loadSeconds * 1000) / 1000,
      seconds: Math.round(seconds * 1000) / 1000,
      tokens_per_second: seconds > 0 ? Math.round((tokens / seconds) * 10) / 10 : 0,
      ...(gpu ? { gpu } : {}),
    };
  } finally {
    await forward.close();
  }
}
