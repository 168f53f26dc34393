/**
 * `dejavu eval ppl --device cuda`: perplexity on the GPU with exactly the engine `dejavu bench --device cuda` times.
 * Dense: the prefill (whole documents on tensor cores, packed into batches), the NLL reduced on the GPU (only one
 * float per token comes back). With a bundle, predicted: teacher-forced decode through the sparse CUDA graph, token by
 * token from position 0 (as runtime/sparse/ppl.ts does on the CPU), under the KV policy and MLP selection given; and
 * oracle: the same decode with the true top-k at the same k per layer (the CPU runtime's mode 'oracle', engine.cu
 * dj_oracle_nll: eager kernels, not the timed graph), under the same KV policy.
 *
 * ppl = exp(total NLL / predicted tokens), each document scored as its ids[0..T) (BOS first), predicting ids[1..T).
 */
import { DejavuError } from '../../common/errors.js';
import { log, progressBar } from '../../common/progress.js';
import type { CudaEngine, SparsityPlan } from './engine.js';
import { MLP_SELECTIONS, KV_POLICIES, loadCudaLib, type CudaLib, type CudaOptions } from './lib.js';
import { loadModelToGpu, type LoadStats } from './load.js';

export interface PplFigure {
  ppl: number;
  nll: number;
  tokens: number;
  seconds: number;
  tokens_per_s: number;
}

const figure = (nll: number, tokens: number, seconds: number): PplFigure => ({
  ppl: Math.exp(nll / tokens),
  nll,
  tokens,
  seconds: Number(seconds.toFixed(3)),
  tokens_per_s: Math.round(tokens / seconds),
});

/** Documents (by index, in order) packed into prefill batches of at most `batchTokens` tokens; a longer one alone. */
export function packBatches(lengths: number[], batchTokens: number): number[][] {
  const out: number[][] = [];
  let cur: number[] = [];
  let n = 0;
  lengths.forEach((len, i) => {
    if (cur.length && n + len > batchTokens) {
      out.push(cur);
      cur = [];
      n = 0;
    }
    cur.push(i);
    n += len;
  });
  if (cur.length) out.push(cur);
  return out;
}

/** Dense perplexity through the prefill. */
export function prefillPerplexity(eng: CudaEngine, docs: Int32Array[], batchTokens: number, quiet = false): PplFigure {
  const scored = docs.filter((d) => d.length >= 2);
  const total = scored.reduce((a, d) => a + d.length - 1, 0);
  const bar = progressBar('ppl dense (gpu prefill)', total, 'tok', quiet);
  const t0 = performance.now();
  let nll = 0;
  for (const batch of packBatches(scored.map((d) => d.length), batchTokens)) {
    const seqs = batch.map((i) => scored[i]);
    const rows = eng.prefill(seqs);
    for (let r = 0; r < rows.length; r++) nll += rows[r];  // each sequence's last row holds 0
    bar.increment(seqs.reduce((a, d) => a + d.length - 1, 0));
  }
  bar.stop();
  return figure(nll, total, (performance.now() - t0) / 1000);
}

/**
 * Perplexity by teacher-forced decode, one document at a time: through a decode graph ('dense' or 'sparse'), or with
 * the oracle's selections ('oracle', CudaEngine.oracleNll).
 */
export function decodePerplexity(eng: CudaEngine, docs: Int32Array[], mode: 'dense' | 'sparse' | 'oracle', quiet = false): PplFigure {
  const scored = docs.filter((d) => d.length >= 2);
  const total = scored.reduce((a, d) => a + d.length - 1, 0);
  const bar = progressBar(`ppl ${mode === 'sparse' ? 'predicted' : mode} (gpu decode)`, total, 'tok', quiet);
  const t0 = performance.now();
  let nll = 0;
  for (const ids of scored) {
    eng.setPrompt(ids);
    const rows = mode === 'oracle' ? eng.oracleNll(ids.length - 1) : eng.decodeNll(mode, ids.length - 1);
    for (let r = 0; r < rows.length; r++) nll += rows[r];
    bar.increment(ids.length - 1);
  }
  bar.stop();
  return figure(nll, total, (performance.now() - t0) / 1000);
}

export interface CudaEvalOptions {
  model: string;
  docs: Int32Array[];
  maxLen: number;
  bundle?: string;
  /**
   * Modes with a bundle: dense (prefill), oracle (the true top-k at the bundle's k) and predicted (sparse decode
   * graph), all three by default; dense alone without one.
   */
  modes?: ('dense' | 'oracle' | 'predicted' | 'decode-dense')[];
  kvPolicy?: CudaOptions['kvPolicy'];
  mlpSelect?: CudaOptions['selection'];
  path?: CudaOptions['path'];
  headsK?: number;
  mlpK?: number;
  headsFrac?: number;
  batchTokens?: number;
  quiet?: boolean;
  /** The loaded library (default: loadCudaLib()). */
  lib?: CudaLib;
}

/** Load the model onto the GPU, score the documents, free the GPU. The result states its whole configuration. */
export async function runCudaPerplexity(o: CudaEvalOptions): Promise<Record<string, unknown>> {
  const kvPolicy = o.kvPolicy ?? 'all';
  const selection = o.mlpSelect ?? 'exact';
  if (!KV_POLICIES.includes(kvPolicy)) throw new DejavuError(`'${kvPolicy}': expected all or selected`, '--kv-policy');
  if (!MLP_SELECTIONS.includes(selection)) throw new DejavuError(`'${selection}': expected exact or grouped`, '--mlp-select');
  const modes = o.modes ?? (o.bundle ? ['dense', 'oracle', 'predicted'] : ['dense']);
  for (const m of ['oracle', 'predicted'] as const)
    if (modes.includes(m) && !o.bundle) throw new DejavuError(`${m} perplexity needs --bundle`, '--modes');
  const maxDoc = o.docs.reduce((a, d) => Math.max(a, d.length), 0);
  if (maxDoc < 2) throw new DejavuError('no predicted tokens (every document is empty or max-len is 1)', '--data');
  const batchTokens = o.batchTokens ?? Math.max(o.maxLen, 4096);
  if (batchTokens < maxDoc) throw new DejavuError(`${batchTokens} is below the longest document (${maxDoc} tokens)`, '--batch-tokens');
  if (o.bundle && selection === 'grouped') {
    const { readManifest, groupedSelectionProblem } = await import('../../export/bundle.js');
    const why = groupedSelectionProblem(readManifest(o.bundle));
    if (why) throw new DejavuError(why, o.bundle);
  }

  const lib = o.lib ?? (await loadCudaLib());
  const info = lib.deviceInfo();
  log(`device: ${info.name} (${info.sms} SMs, ${(info.memBytes / 2 ** 30).toFixed(1)} GiB)`);
  const decodes = modes.some((m) => m !== 'dense');
  const { engine, dims, stats, model } = await loadModelToGpu(lib, o.model, {
    maxT: maxDoc,
    prefillTokens: modes.includes('dense') ? batchTokens : 0,
    options: { path: o.path ?? 'auto', selection, kvPolicy },
  });
  try {
    log(`loaded ${stats.tensors} tensors (${(stats.bytes / 1e9).toFixed(2)} GB, ${stats.dtypes.join('/')}) in ${stats.seconds.toFixed(1)} s`);
    let plan: SparsityPlan | undefined;
    if (o.bundle) {
      const { loadBundle } = await import('../../export/bundle.js');
      const b = loadBundle(o.bundle, model);
      const headsK = o.headsK ?? (o.headsFrac !== undefined ? Math.max(1, Math.round(o.headsFrac * dims.heads)) : undefined);
      plan = engine.applyBundle(b, { headsK, mlpK: o.mlpK });
    }
    // The graphs serve predicted and decode-dense; the oracle's eager kernels need none.
    const graphs = modes.includes('predicted') || modes.includes('decode-dense');
    if (graphs) engine.build();
    const out: Record<string, unknown> = {
      device: info.name,
      model: o.model,
      bundle: o.bundle ?? null,
      docs: o.docs.filter((d) => d.length >= 2).length,
      max_len: o.maxLen,
      kv_policy: kvPolicy,
      mlp_selection: selection,
      path: decodes ? engine.path() : null,
      load: { ...stats, seconds: Number(stats.seconds.toFixed(2)) } satisfies LoadStats,
    };
    if (plan) {
      out.heads_k_per_layer = plan.kH;
      out.mlp_k_per_layer = plan.kM;
      if (graphs) out.mlp_groups_per_layer = plan.kM.map((_, l) => engine.mlpGroups(l));
    }
    if (modes.includes('dense')) out.dense = { ...prefillPerplexity(engine, o.docs, batchTokens, o.quiet), batch_tokens: batchTokens };
    if (modes.includes('decode-dense')) out.decode_dense = decodePerplexity(engine, o.docs, 'dense', o.quiet);
    if (modes.includes('oracle') && plan) {
      // The true top-k over all heads / neurons (G = 1 whatever --mlp-select says), at the same k, same KV policy.
      out.oracle = {
        ...decodePerplexity(engine, o.docs, 'oracle', o.quiet),
        kv_policy: kvPolicy,
        selection: 'exact',
        mlp_groups_per_layer: plan.kM.map(() => 1),
      };
    }
    if (modes.includes('predicted')) out.predicted = decodePerplexity(engine, o.docs, 'sparse', o.quiet);
    const dense = out.dense as PplFigure | undefined;
    for (const m of ['oracle', 'predicted'] as const) {
      const f = out[m] as PplFigure | undefined;
      if (dense && f) out[`${m}_vs_dense`] = Number((f.ppl / dense.ppl - 1).toFixed(5));
    }
    return out;
  } finally {
    engine.destroy();
  }
}
