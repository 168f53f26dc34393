/**
 * Perplexity dense vs oracle vs predicted. Dense runs the ordinary prefill (runtime/cpu). Oracle and predicted run
 * the sparse decode step token by token, so every position goes through the sparse kernels with its own selection
 * (nothing is masked); only the LM head, dense in every mode, is batched over a document's positions.
 *
 * ppl = exp(total NLL / predicted tokens), each document scored as its ids[0..T) (BOS first), predicting ids[1..T).
 */
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import type { OptCheckpoint } from '../../checkpoints/types.js';
import { DejavuError } from '../../common/errors.js';
import { progressBar, workerEnv } from '../../common/progress.js';
import type { Bundle } from '../../export/bundle.js';
import { applyLayerK, type LayerK } from '../../export/layer-k.js';
import { OptModel } from '../cpu/model.js';
import { logSumExp } from '../cpu/ops.js';
import { SparseOptModel, type KvPolicy, type SparseMode } from './model.js';

export interface SparsePplOptions {
  modes: SparseMode[];
  headsFrac?: number;
  mlpK?: number;
  headsK?: number;
  /** Predicted MLP top-k over this many neuron groups (SparseOptions.mlpGroups). */
  mlpGroups?: number;
  /** KV-cache policy of the sparse modes (SparseOptions.kvPolicy; default 'all'). */
  kvPolicy?: KvPolicy;
  quiet?: boolean;
  /** A dense model already loaded (reused for the dense mode). */
  dense?: OptModel;
  /** Worker threads for the sparse modes (documents split between them); 1 = in this thread. */
  threads?: number;
  /** Progress callback (predicted tokens done), used by the worker threads. */
  onTokens?: (n: number) => void;
  /** Per-layer k of the bundle's predictors (null: that block dense), replacing the manifest's (export/layer-k.ts). */
  layerK?: LayerK;
}

export interface ModeResult {
  ppl: number;
  nll: number;
  tokens: number;
  seconds: number;
  /** Average density per layer over all decode steps (1 = dense). */
  mlp_density_per_layer?: number[];
  head_density_per_layer?: number[];
}

/** Mean NLL contributions of one document's logits [T-1][V] for targets ids[1..T). */
function nllOf(logits: Float32Array, ids: Int32Array, V: number, rows: number, firstTarget: number): number {
  let s = 0;
  for (let r = 0; r < rows; r++) s += logSumExp(logits, r * V, V) - logits[r * V + ids[firstTarget + r]];
  return s;
}

/** Dense perplexity through runtime/cpu's prefill. */
export async function densePerplexity(
  ckpt: OptCheckpoint,
  docs: Int32Array[],
  opts: { quiet?: boolean; dense?: OptModel } = {},
): Promise<ModeResult> {
  const model = opts.dense ?? (await OptModel.load(ckpt));
  const V = ckpt.config.vocabSize;
  const t0 = performance.now();
  let nll = 0;
  let tokens = 0;
  const bar = progressBar('ppl dense', docs.reduce((a, d) => a + d.length - 1, 0), 'tok', opts.quiet);
  for (const ids of docs) {
    if (ids.length < 2) continue;
    const logits = model.prefill(ids, { logits: 'all' });
    nll += nllOf(logits, ids, V, ids.length - 1, 1);
    tokens += ids.length - 1;
    bar.increment(ids.length - 1);
  }
  bar.stop();
  return { ppl: Math.exp(nll / tokens), nll, tokens, seconds: (performance.now() - t0) / 1000 };
}

/** Perplexity with the sparse decode step in `mode` ('oracle' or 'predicted'; 'dense' works too, slowly). */
export function sparseModePerplexity(
  ckpt: OptCheckpoint,
  bundle: Bundle,
  docs: Int32Array[],
  mode: SparseMode,
  opts: Omit<SparsePplOptions, 'modes'> = {},
): ModeResult {
  const model = new SparseOptModel(ckpt, opts.layerK ? applyLayerK(bundle, opts.layerK) : bundle, {
    mode,
    headsFrac: opts.headsFrac,
    mlpK: opts.mlpK,
    headsK: opts.headsK,
    mlpGroups: opts.mlpGroups,
    kvPolicy: opts.kvPolicy,
  });
  const c = ckpt.config;
  const V = c.vocabSize;
  const p = c.wordEmbedProjDim;
  const t0 = performance.now();
  let nll = 0;
  let tokens = 0;
  const maxT = docs.reduce((a, d) => Math.max(a, d.length), 0);
  const hidden = new Float32Array(maxT * p);
  const cache = model.newCache(maxT);
  const bar = progressBar(`ppl ${mode}`, docs.reduce((a, d) => a + d.length - 1, 0), 'tok', opts.quiet);
  for (const ids of docs) {
    if (ids.length < 2) continue;
    cache.length = 0;
    const rows = ids.length - 1;
    for (let t = 0; t < rows; t++) {
      hidden.set(model.decodeHidden(ids[t], cache), t * p);
      if ((t & 63) === 63) {
        bar.increment(64);
        opts.onTokens?.(64);
      }
    }
    bar.increment(rows & 63);
    opts.onTokens?.(rows & 63);
    // The LM head is dense in every mode: batched over the document's positions (a GEMM, not T GEMVs).
    const CH = 64;
    for (let r0 = 0; r0 < rows; r0 += CH) {
      const n = Math.min(CH, rows - r0);
      const logits = model.logitsFor(hidden.subarray(r0 * p, (r0 + n) * p), n);
      nll += nllOf(logits, ids, V, n, 1 + r0);
    }
    tokens += rows;
  }
  bar.stop();
  const dens = model.densities();
  return {
    ppl: Math.exp(nll / tokens),
    nll,
    tokens,
    seconds: (performance.now() - t0) / 1000,
    mlp_density_per_layer: dens.mlp,
    head_density_per_layer: dens.heads,
  };
}

/**
 * sparseModePerplexity over `threads` worker threads, each with its own model copy, documents dealt out longest first
 * to the least-loaded worker. Sums are exact regardless of the split: NLL adds up, and densities are averaged per
 * decode step (one step per predicted token). Falls back to this thread when threads <= 1 or when running from the
 * TypeScript sources (no compiled worker script).
 */
export async function parallelSparsePerplexity(
  ckpt: OptCheckpoint,
  bundle: Bundle,
  docs: Int32Array[],
  mode: SparseMode,
  opts: Omit<SparsePplOptions, 'modes'>,
): Promise<ModeResult> {
  const script = fileURLToPath(new URL('./ppl-worker.js', import.meta.url));
  const threads = Math.min(opts.threads ?? 1, docs.length);
  if (threads <= 1 || !existsSync(script)) return sparseModePerplexity(ckpt, bundle, docs, mode, opts);
  const parts: Int32Array[][] = Array.from({ length: threads }, () => []);
  const load = new Array(threads).fill(0);
  for (const d of [...docs].sort((a, b) => b.length - a.length)) {
    const w = load.indexOf(Math.min(...load));
    parts[w].push(d);
    load[w] += d.length;
  }
  const t0 = performance.now();
  const bar = progressBar(`ppl ${mode} (${threads} threads)`, docs.reduce((a, d) => a + d.length - 1, 0), 'tok', opts.quiet);
  const results = await Promise.all(
    parts.map(
      (part) =>
        new Promise<ModeResult>((resolve, reject) => {
          const w = new Worker(script, {
            workerData: { modelDir: ckpt.dir, bundleDir: bundle.dir, mode, docs: part, headsFrac: opts.headsFrac, mlpK: opts.mlpK, headsK: opts.headsK, mlpGroups: opts.mlpGroups, kvPolicy: opts.kvPolicy, layerK: opts.layerK },
            env: workerEnv(),
          });
          w.on('message', (m: { progress?: number; result?: ModeResult; error?: string; dejavu?: boolean }) => {
            if (m.progress) bar.increment(m.progress);
            else if (m.result) resolve(m.result);
            else if (m.error) reject(m.dejavu ? new DejavuError(m.error) : new Error(m.error));
          });
          w.on('error', reject);
          w.on('exit', (code) => {
            if (code !== 0) reject(new Error(`ppl worker exited with code ${code}`));
          });
        }),
    ),
  );
  bar.stop();
  const tokens = results.reduce((a, r) => a + r.tokens, 0);
  const nll = results.reduce((a, r) => a + r.nll, 0);
  const avg = (key: 'mlp_density_per_layer' | 'head_density_per_layer') =>
    results[0][key]!.map((_, l) => results.reduce((a, r) => a + r[key]![l] * r.tokens, 0) / tokens);
  return {
    ppl: Math.exp(nll / tokens),
    nll,
    tokens,
    seconds: (performance.now() - t0) / 1000,
    mlp_density_per_layer: avg('mlp_density_per_layer'),
    head_density_per_layer: avg('head_density_per_layer'),
  };
}

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);
const r4 = (v: number) => Math.round(v * 1e4) / 1e4;

/**
 * Dense, oracle and predicted perplexity side by side (the `dejavu eval ppl --bundle` result). Densities are the
 * averages over decode steps per layer of the predicted mode (oracle uses the same k, hence the same densities).
 */
export async function bundlePerplexity(
  ckpt: OptCheckpoint,
  bundle: Bundle,
  docs: Int32Array[],
  opts: SparsePplOptions,
): Promise<Record<string, unknown>> {
  const out: Record<string, unknown> = {};
  let densSrc: ModeResult | undefined;
  for (const mode of opts.modes) {
    const r = mode === 'dense' ? await densePerplexity(ckpt, docs, opts) : await parallelSparsePerplexity(ckpt, bundle, docs, mode, opts);
    out[mode] = { ppl: r4(r.ppl), tokens: r.tokens, seconds: r4(r.seconds) };
    if (r.mlp_density_per_layer && (!densSrc || mode === 'predicted')) densSrc = r;
  }
  const dense = out.dense as { ppl: number } | undefined;
  for (const mode of ['oracle', 'predicted']) {
    const m = out[mode] as { ppl: number; delta_vs_dense?: number } | undefined;
    if (m && dense) m.delta_vs_dense = r4(m.ppl / dense.ppl - 1);
  }
  if (densSrc) {
    out.mlp_density = r4(mean(densSrc.mlp_density_per_layer!));
    out.head_density = r4(mean(densSrc.head_density_per_layer!));
    out.mlp_density_per_layer = densSrc.mlp_density_per_layer!.map(r4);
    out.head_density_per_layer = densSrc.head_density_per_layer!.map(r4);
  }
  out.docs = docs.length;
  out.tokens = docs.reduce((a, d) => a + Math.max(0, d.length - 1), 0);
  out.heads_frac = opts.headsFrac ?? null;
  out.mlp_k = opts.mlpK ?? null;
  out.heads_k = opts.headsK ?? null;
  out.kv_policy = opts.kvPolicy ?? 'all';
  out.mlp_selection = opts.mlpGroups !== undefined ? 'grouped' : 'exact';
  out.mlp_groups = opts.mlpGroups ?? 1;
  out.bundle = bundle.dir;
  out.threads = opts.threads ?? 1;
  return out;
}
