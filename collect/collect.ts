/**
 * `dejavu collect`: documents -> tokens -> the runtime's forward hooks -> per-layer Arrow shards (docs/shards.md).
 *
 * Shards hold whole documents, packed greedily in reading order: a shard is closed before the document that would
 * take it past --shard-tokens (a document longer than that gets a shard of its own). Record batches inside a shard
 * are packed the same way with a fixed row capacity. Both boundaries are a pure function of the token counts, so a
 * resumed run (which skips the documents of finished shards and recomputes the rest) writes the same bytes as an
 * uninterrupted one.
 *
 * Memory: per forward thread, weights + the runtime's activations for one document (<= max_len tokens); up to two
 * documents' rows per thread in flight; one chunk of `batch_rows` rows per collected layer. Nothing grows with the
 * number of documents.
 */
import { mkdirSync, rmSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join, resolve } from 'node:path';
import type { OptCheckpoint } from '../checkpoints/types.js';
import { layerDirName, parseLayers, shardFileName, SHARD_MANIFEST_FILE, type ShardDims } from '../common/contracts.js';
import { DejavuError } from '../common/errors.js';
import { writeJsonAtomic } from '../common/atomic.js';
import { log, progressBar, progressEnabled, type Progress } from '../common/progress.js';
import { dataEntries, type CollectArgs } from './args.js';
import { ArrowFileWriter } from './arrow-file.js';
import { LayerChunk } from './chunk.js';
import type { LayerRows } from './doc-rows.js';
import type { CudaLib } from '../runtime/cuda/lib.js';
import { cudaForward, inThreadForward, workerForward, workersAvailable, type DocForward, type ModelInfo } from './forward.js';
import {
  acquireLock,
  ensureWritable,
  finishedShards,
  newState,
  openOutput,
  removeStale,
  saveState,
  shardPath,
  type CollectState,
  type ShardRecord,
} from './output.js';
import { rowBytes, shardSchema } from './schema.js';

export interface CollectOptions {
  model: string;
  data: string[];
  out: string;
  docs?: number;
  sample?: number;
  seed?: number;
  maxLen?: number;
  /** 'all' or e.g. '0,3-5' */
  layers?: string;
  shardTokens?: number;
  mlpTopk?: number;
  force?: boolean;
  /** Forward threads (default: the number of cores); 1 = in the main thread. Not part of the arguments: same rows. */
  workers?: number;
  /** Where the forward runs: cpu (default; worker threads) or cuda (the GPU engine's prefill, one engine). */
  device?: 'cpu' | 'cuda';
  /** No progress bar, no summary lines (the CLI's --json still prints its object). */
  quiet?: boolean;
  /** Called after every document (benchmarks sample memory here). */
  onDocument?: (p: { docs: number; tokens: number; shards: number }) => void;
  /** With device cuda: the CUDA library (default: the one `npm run build:cuda` built; tests pass a stand-in). */
  cudaLib?: CudaLib;
}

export interface CollectManifest {
  format: 'dejavu-shards/1';
  complete: true;
  model_fingerprint: string;
  /** The weights part of the fingerprint (checkpoints/weights-hash.ts), for messages naming what differs. */
  weights_sha256: string;
  model: string;
  args: CollectArgs;
  layers: number[];
  d_model: number;
  n_heads: number;
  ffn_dim: number;
  mlp_topk: number;
  docs: number;
  tokens: number;
  num_shards: number;
  /** `bytes[j]` and `sha256[j]` (hex SHA-256, verified by train's reader) are layer `layers[j]`'s file's. */
  shards: { file: string; rows: number; docs: number; first_doc: number; last_doc: number; bytes: number[]; sha256: string[] }[];
  bytes: number;
  /** Total shard bytes / (tokens x collected layers): what a token costs on disk per layer, framing included. */
  bytes_per_token_per_layer: number;
  /** The same per layer, in `layers` order. */
  bytes_per_token_by_layer: number[];
  /** Column bytes of one row, and the bound 2*d*2 + 2*H + ceil(ffn/8) + 16 (+ 6*K with --mlp-topk K). */
  row_bytes: number;
  bound_bytes_per_token_per_layer: number;
  seconds: number;
  skipped_lines: number;
  skipped_examples: string[];
  /** Lines/rows kept with characters replaced by U+FFFD (bytes that are not UTF-8), and a few "file:line" examples. */
  replaced_lines: number;
  replaced_examples: string[];
  files: string[];
}

export interface CollectResult {
  manifest: CollectManifest;
  /** Shards written by this run (0 when the folder was already complete). */
  shardsWritten: number;
  /** Shards found finished and kept. */
  shardsResumed: number;
  /** Tokens pushed through the model by this run, and its wall time. */
  tokensThisRun: number;
  secondsThisRun: number;
  /** The folder was complete before this run, which collected nothing. */
  alreadyComplete: boolean;
  /**
   * Tokens per second of this run; for an already complete folder, of the runs that produced it (manifest tokens /
   * seconds). null when there is no such figure (no time recorded).
   */
  tokensPerSecond: number | null;
  /**
   * Seconds from this run's first document to its last shard committed (fsync'd) and the manifest written: the model
   * load and set-up excluded (0 when the folder was already complete).
   */
  runSeconds: number;
  /** Of runSeconds, the time spent waiting for the forward's rows (near 0: the writer, not the model, set the pace). */
  forwardWaitSeconds: number;
}

export const DEFAULT_SHARD_TOKENS = 65536;
export const DEFAULT_MAX_LEN = 2048;
/** Target size of one layer's pending record batch; the batch also always holds at least one max_len document. */
const CHUNK_BYTES = 8 * 2 ** 20;

export function batchRowsFor(dims: ShardDims, maxLen: number, shardTokens: number): number {
  return Math.max(maxLen, Math.min(shardTokens, Math.floor(CHUNK_BYTES / rowBytes(dims))));
}

export async function collect(opts: CollectOptions): Promise<CollectResult> {
  const t0 = performance.now();
  const out = resolve(opts.out);
  const maxLen = opts.maxLen ?? DEFAULT_MAX_LEN;
  const shardTokens = opts.shardTokens ?? DEFAULT_SHARD_TOKENS;
  const topk = opts.mlpTopk ?? 0;
  if (opts.docs !== undefined && opts.sample !== undefined) throw new DejavuError('use --docs or --sample, not both', '--docs');

  // Cheap checks first: a bad data path or output folder should not cost a model load.
  const { resolveInputs, readDocuments, createReadStats, loadTokenizer } = await import('../datasets/index.js');
  const files = resolveInputs(opts.data);
  ensureWritable(out);

  const device = opts.device ?? 'cpu';
  if (device !== 'cpu' && device !== 'cuda') throw new DejavuError(`expected cpu or cuda, got '${device as string}'`, '--device');
  if (device === 'cuda' && opts.workers !== undefined) throw new DejavuError('the GPU runs one engine; --workers is for --device cpu', '--workers');
  // The weights are needed in this thread only without workers; with workers this reference is dropped before they
  // load their own copies, so the model's weights are held N times, not N + 1. On the GPU they never reach the host
  // as fp32: the config is read here and the weights are streamed to the GPU below.
  let loaded: OptCheckpoint | undefined;
  let c: OptCheckpoint['config'];
  if (device === 'cuda') {
    const { parseOptConfig } = await import('../checkpoints/opt-config.js');
    c = parseOptConfig(join(opts.model, 'config.json'));
  } else {
    const { loadOptCheckpoint } = await import('../checkpoints/opt-checkpoint.js');
    loaded = await loadOptCheckpoint(opts.model, { quiet: opts.quiet });
    c = loaded.config;
  }
  if (maxLen < 1 || maxLen > c.maxPositionEmbeddings) {
    throw new DejavuError(`must be 1..${c.maxPositionEmbeddings} (the model's max_position_embeddings), got ${maxLen}`, '--max-len');
  }
  const layers = parseLayers(opts.layers ?? 'all', c.numLayers);
  if (topk < 0 || topk > c.ffnDim) throw new DejavuError(`must be 0..${c.ffnDim} (ffn_dim), got ${topk}`, '--mlp-topk');
  const dims: ShardDims = { dModel: c.hiddenSize, nHeads: c.numHeads, ffnDim: c.ffnDim, topK: topk };
  const batchRows = batchRowsFor(dims, maxLen, shardTokens);
  let gpu: { forward: DocForward; model: ModelInfo } | undefined;
  if (device === 'cuda') gpu = await cudaForward(opts.model, layers, dims, maxLen, opts.cudaLib);
  const ckpt: ModelInfo = gpu
    ? gpu.model
    : { dir: loaded!.dir, config: c, fingerprint: loaded!.fingerprint, architectureFingerprint: loaded!.architectureFingerprint, weightsSha256: loaded!.weightsSha256 };
  const args: CollectArgs = {
    data: dataEntries(files),
    docs: opts.docs ?? null,
    sample: opts.sample ?? null,
    seed: opts.sample !== undefined ? (opts.seed ?? 0) : null,
    max_len: maxLen,
    layers,
    shard_tokens: shardTokens,
    mlp_topk: topk,
    batch_rows: batchRows,
  };

  const release = acquireLock(out);
  const writers: ArrowFileWriter[] = [];
  let forward: DocForward | undefined;
  // An interrupt between documents: drop the open temp files so no partial shard survives, then exit as killed.
  const onSignal = (sig: NodeJS.Signals) => {
    for (const w of writers) w.abort();
    release();
    process.stderr.write(`\ninterrupted (${sig}); rerun the same command to resume\n`);
    process.exit(sig === 'SIGINT' ? 130 : 143);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    const prev = openOutput(out, ckpt, args, opts.force ?? false);
    const state: CollectState = prev ?? newState(ckpt, args);
    // The state goes to disk before any layer_* folder (with the first row, so a run that yields no row leaves
    // nothing behind): a run stopped before its first shard is finished resumes like any other.
    let stateOnDisk = prev !== null;
    const done = prev ? finishedShards(out, prev) : [];
    const resumedAll = prev?.complete && done.length === prev.shards.length;
    if (resumedAll) {
      if (!opts.quiet) log(`${out}: already complete (${done.length} shards); nothing to do`);
      if (done.some((s, i) => s !== prev.shards[i])) {
        state.shards = done; // checksums added to the records of an older state
        saveState(out, state);
      }
      const manifest = buildManifest(ckpt, state);
      writeJsonAtomic(join(out, SHARD_MANIFEST_FILE), manifest);
      const tokensPerSecond = manifest.seconds > 0 ? Math.round((manifest.tokens / manifest.seconds) * 10) / 10 : null;
      return { manifest, shardsWritten: 0, shardsResumed: done.length, tokensThisRun: 0, secondsThisRun: 0, alreadyComplete: true, tokensPerSecond, runSeconds: 0, forwardWaitSeconds: 0 };
    }
    state.shards = [...done]; // a copy: `done` stays the list of shards kept from earlier runs
    state.complete = false;
    rmSync(join(out, SHARD_MANIFEST_FILE), { force: true });
    removeStale(out, layers, done.length);
    const skipDocs = done.length ? done[done.length - 1].consumed_end : 0;
    if (done.length && !opts.quiet) {
      log(`resuming: ${done.length} finished shards kept (${skipDocs} documents), continuing from shard ${done.length}`);
    }

    const tokenizer = await loadTokenizer(opts.model);
    const threads = opts.workers ?? availableParallelism();
    if (gpu) {
      forward = gpu.forward;
      gpu = undefined;
    } else if (threads > 1 && workersAvailable()) {
      loaded = undefined;
      forward = await workerForward(ckpt, layers, dims, threads);
    } else {
      forward = await inThreadForward(loaded!, layers, dims);
      loaded = undefined;
    }
    if (!opts.quiet) log(`forward: ${forward.describe}`);

    const chunks = layers.map(() => new LayerChunk(dims, batchRows));
    const schemas = layers.map((l) => shardSchema(dims, { modelFingerprint: ckpt.fingerprint, layer: l, collectArgs: args }));

    // The shard being written (all layers at once).
    let cur: Omit<ShardRecord, 'consumed_end' | 'bytes'> | null = null;
    const flush = () => {
      chunks.forEach((ch, i) => {
        if (ch.rows) writers[i].write(ch.toBatch(schemas[i]));
        ch.reset();
      });
    };
    const closeShard = (consumedEnd: number) => {
      flush();
      const bytes = ArrowFileWriter.commitAll(writers);
      const sha256 = writers.map((w) => w.sha256);
      writers.length = 0;
      state.shards.push({ ...cur!, consumed_end: consumedEnd, bytes, sha256 });
      state.seconds = (prev?.seconds ?? 0) + (performance.now() - t0) / 1000;
      saveState(out, state); // after every layer's rename: a crash in between redoes this shard, same bytes
      cur = null;
    };

    const stats = createReadStats();
    const selection = { docs: opts.docs, sample: opts.sample, seed: opts.sample !== undefined ? (opts.seed ?? 0) : undefined };
    // The bar counts documents (ETA) and shows tokens/s; without --docs/--sample a quick pass counts the documents.
    const showBar = progressEnabled(opts.quiet); // a bar on a terminal, plain lines elsewhere (common/progress.ts)
    let total = opts.docs ?? opts.sample;
    if (total === undefined && showBar) {
      total = 0;
      for await (const _ of readDocuments(files, {}, createReadStats())) total++;
    }
    const bar: Progress = progressBar('collect', Math.max(0, (total ?? 0) - skipDocs), 'docs', !showBar);
    const tRun = performance.now();
    let ordinal = 0;
    let tokensRun = 0;
    let docsRun = 0;
    let shardsWritten = 0;
    // Documents in flight on the forward threads, consumed strictly in reading order: shard and batch boundaries
    // are decided here, in order, so they do not depend on which thread finished first.
    type Job = { index: number; ordinal: number; T: number; rows: Promise<LayerRows[]> };
    const inflight: Job[] = [];
    let waited = 0;
    const consume = async (job: Job) => {
      const tw = performance.now();
      const rows = await job.rows;
      waited += performance.now() - tw;
      const T = job.T;
      if (cur && cur.rows + T > shardTokens) {
        closeShard(job.ordinal);
        shardsWritten++;
      }
      if (!cur) {
        if (!stateOnDisk) {
          saveState(out, state);
          stateOnDisk = true;
        }
        const index = state.shards.length;
        cur = { index, rows: 0, docs: 0, first_doc: job.index, last_doc: job.index };
        for (let i = 0; i < layers.length; i++) {
          mkdirSync(join(out, layerDirName(layers[i])), { recursive: true });
          writers.push(ArrowFileWriter.create(shardPath(out, layers[i], index), schemas[i]));
        }
      }
      if (!chunks[0].fits(T)) flush();
      chunks.forEach((ch, i) => ch.append(job.index, T, rows[i]));
      cur.rows += T;
      cur.docs++;
      cur.last_doc = job.index;
      tokensRun += T;
      docsRun++;
      const s = (performance.now() - tRun) / 1000;
      bar.increment(1, { info: `| ${tokensRun.toLocaleString('en-US')} tok, ${Math.round(tokensRun / s)} tok/s, shard ${cur.index}` });
      opts.onDocument?.({ docs: docsRun, tokens: tokensRun, shards: state.shards.length });
    };
    for await (const doc of readDocuments(files, selection, stats)) {
      const o = ordinal++;
      if (o < skipDocs) continue;
      const ids = tokenizer.encode(doc.text, maxLen);
      if (ids.length === 0) continue; // only without a BOS and with empty text: no token, no row
      const job: Job = { index: doc.index, ordinal: o, T: ids.length, rows: forward.rows(ids) };
      job.rows.catch(() => {}); // rejections surface when consumed, in order
      inflight.push(job);
      // Two documents per thread keep every thread busy while this one writes.
      if (inflight.length >= 2 * forward.parallel) await consume(inflight.shift()!);
    }
    while (inflight.length) await consume(inflight.shift()!);
    bar.stop();
    if (cur) {
      closeShard(ordinal);
      shardsWritten++;
    }
    if (state.shards.length === 0) throw new DejavuError(`no tokens: every selected document was empty`, files.join(', '));
    state.complete = true;
    state.seconds = (prev?.seconds ?? 0) + (performance.now() - t0) / 1000;
    state.skipped_lines = stats.skipped;
    state.skipped_examples = stats.skippedExamples;
    state.replaced_lines = stats.replaced;
    state.replaced_examples = stats.replacedExamples;
    saveState(out, state);
    const manifest = buildManifest(ckpt, state);
    writeJsonAtomic(join(out, SHARD_MANIFEST_FILE), manifest);
    const secondsThisRun = (performance.now() - t0) / 1000;
    return {
      manifest,
      shardsWritten,
      shardsResumed: done.length,
      tokensThisRun: tokensRun,
      secondsThisRun,
      alreadyComplete: false,
      tokensPerSecond: secondsThisRun > 0 ? Math.round((tokensRun / secondsThisRun) * 10) / 10 : null,
      runSeconds: (performance.now() - tRun) / 1000,
      forwardWaitSeconds: waited / 1000,
    };
  } catch (e) {
    for (const w of writers) w.abort();
    throw e;
  } finally {
    await forward?.close();
    process.removeListener('SIGINT', onSignal);
    process.removeListener('SIGTERM', onSignal);
    release();
  }
}

function buildManifest(ckpt: ModelInfo, state: CollectState): CollectManifest {
  const c = ckpt.config;
  const a = state.args;
  const dims: ShardDims = { dModel: c.hiddenSize, nHeads: c.numHeads, ffnDim: c.ffnDim, topK: a.mlp_topk };
  const tokens = state.shards.reduce((s, x) => s + x.rows, 0);
  const perLayer = a.layers.map((_, i) => state.shards.reduce((s, x) => s + x.bytes[i], 0));
  const bytes = perLayer.reduce((s, x) => s + x, 0);
  const round = (x: number) => Math.round(x * 1000) / 1000;
  return {
    format: 'dejavu-shards/1',
    complete: true,
    model_fingerprint: ckpt.fingerprint,
    weights_sha256: ckpt.weightsSha256,
    model: resolve(ckpt.dir),
    args: a,
    layers: a.layers,
    d_model: c.hiddenSize,
    n_heads: c.numHeads,
    ffn_dim: c.ffnDim,
    mlp_topk: a.mlp_topk,
    docs: state.shards.reduce((s, x) => s + x.docs, 0),
    tokens,
    num_shards: state.shards.length,
    shards: state.shards.map((s) => ({
      file: shardFileName(s.index),
      rows: s.rows,
      docs: s.docs,
      first_doc: s.first_doc,
      last_doc: s.last_doc,
      bytes: s.bytes,
      sha256: s.sha256 ?? [],
    })),
    bytes,
    bytes_per_token_per_layer: round(bytes / (tokens * a.layers.length)),
    bytes_per_token_by_layer: perLayer.map((b) => round(b / tokens)),
    row_bytes: rowBytes(dims),
    bound_bytes_per_token_per_layer: 2 * c.hiddenSize * 2 + 2 * c.numHeads + Math.ceil(c.ffnDim / 8) + 16 + 6 * a.mlp_topk,
    seconds: round(state.seconds),
    skipped_lines: state.skipped_lines ?? 0,
    skipped_examples: state.skipped_examples ?? [],
    replaced_lines: state.replaced_lines ?? 0,
    replaced_examples: state.replaced_examples ?? [],
    files: a.data.map((d) => d.path),
  };
}
