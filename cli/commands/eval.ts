/**
 * `dejavu eval ppl`: perplexity of an OPT model on C4 documents. Argument parsing, the progress bar and the summary;
 * the scoring loop is runtime/cpu/perplexity.ts, which takes any per-document scorer (dense CPU pool here; a sparse
 * bundle can plug in its own scorer the same way).
 */
import { Option, type Command } from 'commander';
import { parseIntFlag } from '../args.js';
import type { BundleCliFlags } from '../../runtime/sparse/eval.js';

interface PplFlags extends BundleCliFlags {
  docs?: string;
  sample?: string;
  seed: string;
  maxLen?: string;
  workers?: string;
  threads?: string;
  backend: string;
  dumpIds?: string;
  device: string;
  batchTokens?: string;
  path?: string;
}

/** Flags that only mean something with --bundle (given without it they would be silently ignored). */
const BUNDLE_FLAGS = [
  ['headsFrac', '--heads-frac'],
  ['mlpK', '--mlp-k'],
  ['headsK', '--heads-k'],
  ['mlpGroups', '--mlp-groups'],
  ['mlpSelect', '--mlp-select'],
  ['kvPolicy', '--kv-policy'],
  ['modes', '--modes'],
] as const;

/**
 * Worker threads: --workers (or its old name --threads, with a notice), default and upper bound the cores and the
 * model copies memory holds (common/workers.ts), and no more than the documents when their count is known.
 */
async function workerCount(
  f: PplFlags,
  config: import('../../checkpoints/types.js').OptConfig,
  maxLen: number,
  knownDocs: number | undefined,
): Promise<number> {
  const { DejavuError } = await import('../../common/errors.js');
  const { capWorkers, forwardWorkerBytes, thisMachine } = await import('../../common/workers.js');
  const { warn } = await import('../../common/progress.js');
  if (f.threads !== undefined) {
    if (f.workers !== undefined) throw new DejavuError('--threads is the old name of --workers; give only --workers', '--threads');
    warn('--threads is deprecated; use --workers');
  }
  const flag = f.workers !== undefined ? '--workers' : '--threads';
  const value = f.workers ?? f.threads;
  const requested = value !== undefined ? parseIntFlag(value, flag) : undefined;
  const cap = capWorkers(requested, flag, forwardWorkerBytes(config, maxLen), thisMachine());
  if (cap.warning) warn(cap.warning);
  // Fewer workers than documents would idle; each worker loads its own model copy.
  return Math.min(cap.workers, knownDocs ?? Infinity);
}

export function register(program: Command): void {
  const evalCmd = program.command('eval').description('evaluate a model');
  evalCmd
    .command('ppl')
    .description('perplexity = exp(total NLL / predicted tokens); each document scored as [BOS] + its first max-len - 1 tokens')
    .requiredOption('--model <dir>', 'Hugging Face OPT model folder')
    .requiredOption('--data <paths...>', 'C4 files (json.gz, jsonl, parquet), folders or globs')
    .option('--docs <n>', 'the first N documents in file order')
    .option('--sample <n>', 'a seeded random sample of N documents (scored in file order)')
    .option('--seed <s>', 'seed for --sample', '0')
    .option('--max-len <n>', 'tokens per document, BOS included (default: max_position_embeddings)')
    .option('--workers <n>', 'worker threads, one document each (default and upper bound: the cores, and as many model copies as memory holds)')
    .addOption(new Option('--threads <n>', 'deprecated: the old name of --workers').hideHelp())
    .option('--backend <b>', 'CPU prefill backend: auto, wasm (tfjs-wasm) or js (typed arrays)', 'auto')
    .option('--json', 'print one JSON object on stdout: {ppl, tokens, docs, seconds, tokens_per_s}')
    .option('--bundle <dir>', 'sparse: dense, oracle and predicted perplexity with this bundle (runtime/sparse/eval.ts)')
    .option('--heads-frac <f>', 'with --bundle: keep round(F*H) heads in layers with an attention predictor')
    .option('--mlp-k <n>', 'with --bundle: neurons kept per layer with an MLP predictor (default: the bundle k)')
    .option('--heads-k <n>', 'with --bundle: heads kept per layer with an attention predictor (default: the bundle k)')
    .option('--mlp-groups <g>', 'with --bundle: predicted MLP top-k split over G equal neuron groups, as the CUDA fused predictors select (default 1: one top-k)')
    .option('--mlp-select <how>', 'with --bundle: predicted MLP neurons by exact top-k (default) or grouped (needs --mlp-groups G; --mlp-groups alone implies grouped)')
    .option('--kv-policy <p>', "with --bundle: all (default: every head's K/V every step) or selected (a skipped head computes no K/V; its slots are masked when it is picked later, as the CUDA engine)")
    .option('--dump-ids <file>', 'also write the scored documents\' token ids to FILE as JSON ({max_len, docs: [[ids]]}), e.g. for bench/oracle_heads_reference.py')
    .option('--modes <list>', 'with --bundle: comma-separated subset of dense,oracle,predicted (default: all three)')
    .option('--device <d>', 'cpu, or cuda: the GPU engine that `dejavu bench --device cuda` times (weights streamed to the GPU in fp16)', 'cpu')
    .option('--batch-tokens <n>', 'with --device cuda: tokens per prefill batch, documents packed (default max(max-len, 4096))')
    .option('--path <p>', 'with --device cuda: decode kernels auto (default), streamed or portable')
    .action(async (f: PplFlags) => {
      const { DejavuError } = await import('../../common/errors.js');
      const { log, progressBar } = await import('../../common/progress.js');
      const { join } = await import('node:path');
      const { parseOptConfig } = await import('../../checkpoints/opt-config.js');
      const { createReadStats, describeSkips, loadTokenizer, readDocuments } = await import('../../datasets/index.js');

      if (f.docs !== undefined && f.sample !== undefined) throw new DejavuError('use --docs or --sample, not both', '--docs');
      if (!['auto', 'wasm', 'js'].includes(f.backend)) throw new DejavuError(`expected auto, wasm or js, got '${f.backend}'`, '--backend');
      if (!f.bundle) {
        const given = BUNDLE_FLAGS.filter(([key]) => f[key] !== undefined).map(([, flag]) => flag);
        if (given.length === 1) throw new DejavuError('only applies with --bundle (sparse perplexity); add --bundle B or drop it', given[0]);
        if (given.length > 1) throw new DejavuError(`${given.join(', ')} only apply with --bundle (sparse perplexity); add --bundle B or drop them`);
      }
      const docs = f.docs !== undefined ? parseIntFlag(f.docs, '--docs') : undefined;
      const sample = f.sample !== undefined ? parseIntFlag(f.sample, '--sample') : undefined;
      const seed = parseIntFlag(f.seed, '--seed', 0);
      const config = parseOptConfig(join(f.model, 'config.json'));
      const maxLen = f.maxLen !== undefined ? parseIntFlag(f.maxLen, '--max-len', 2) : config.maxPositionEmbeddings;
      if (maxLen > config.maxPositionEmbeddings) {
        throw new DejavuError(`${maxLen} exceeds the model's max_position_embeddings (${config.maxPositionEmbeddings})`, '--max-len');
      }
      if (!['cpu', 'cuda'].includes(f.device)) throw new DejavuError(`expected cpu or cuda, got '${f.device}'`, '--device');
      if (f.device !== 'cuda')
        for (const [key, flag] of [['batchTokens', '--batch-tokens'], ['path', '--path']] as const)
          if (f[key] !== undefined) throw new DejavuError('only applies with --device cuda', flag);
      const workers = f.device === 'cuda' ? 1 : await workerCount(f, config, maxLen, docs ?? sample);
      if (f.dumpIds) {
        const { tokenizeDocs } = await import('../../runtime/sparse/eval.js');
        const { writeFileAtomic } = await import('../../common/atomic.js');
        const sel = docs !== undefined ? { docs } : sample !== undefined ? { sample, seed } : {};
        const ids = await tokenizeDocs(f.model, f.data, sel, maxLen);
        writeFileAtomic(f.dumpIds, JSON.stringify({ model: f.model, data: f.data, max_len: maxLen, docs: ids.map((a) => Array.from(a)) }) + '\n');
        log(`token ids of ${ids.length} documents written to ${f.dumpIds}`);
      }
      if (f.device === 'cuda') return evalOnGpu(f, docs !== undefined ? { docs } : sample !== undefined ? { sample, seed } : {}, maxLen);
      const { PrefillPool } = await import('../../runtime/cpu/pool.js');
      const { encodeDocuments, perplexity } = await import('../../runtime/cpu/perplexity.js');
      if (f.bundle) {
        const { runBundleCli } = await import('../../runtime/sparse/eval.js');
        return runBundleCli(f, { selection: docs !== undefined ? { docs } : sample !== undefined ? { sample, seed } : {}, maxLen, threads: workers });
      }

      const tokenizer = await loadTokenizer(f.model);
      const stats = createReadStats();
      const selection = docs !== undefined ? { docs } : sample !== undefined ? { sample, seed } : {};
      // Fewer workers than documents would idle; each worker loads its own model copy.
      const pool = await PrefillPool.create(f.model, { workers, backend: f.backend as 'auto' | 'wasm' | 'js' });
      log(`model ${f.model}: ${config.numLayers} layers, d=${config.hiddenSize}; prefill on ${pool.backend}`);
      const known = docs ?? sample;
      const bar = progressBar('eval ppl', known ?? 1, 'docs');
      let result;
      try {
        result = await perplexity(encodeDocuments(readDocuments(f.data, selection, stats), tokenizer, maxLen), (ids) => pool.score(ids), {
          concurrency: pool.size,
          onDoc: ({ docs: n, tokens, seconds }) => {
            if (known === undefined) bar.setTotal(n + 1);
            bar.update(n, { info: `| ${tokens.toLocaleString('en-US')} tok, ${Math.round(tokens / seconds).toLocaleString('en-US')} tok/s` });
          },
        });
      } finally {
        bar.stop();
        await pool.close();
      }
      const skips = describeSkips(stats);
      if (skips) log(skips);
      if (result.tokens === 0) throw new DejavuError('no predicted tokens (every document is empty or max-len is 1)', '--data');
      const r = {
        ppl: result.ppl,
        tokens: result.tokens,
        docs: result.docs,
        seconds: Number(result.seconds.toFixed(3)),
        tokens_per_s: Math.round(result.tokens_per_s),
      };
      if (f.json) {
        console.log(JSON.stringify(r));
      } else {
        console.log(`perplexity  ${r.ppl.toFixed(4)}`);
        console.log(`tokens      ${r.tokens.toLocaleString('en-US')} predicted (BOS not predicted), max-len ${maxLen}`);
        console.log(`documents   ${r.docs}`);
        console.log(`speed       ${r.tokens_per_s.toLocaleString('en-US')} tokens/s (${r.seconds.toFixed(1)} s, ${pool.backend})`);
      }
    });
}

/**
 * `eval ppl --device cuda`: dense perplexity from the GPU prefill; with --bundle, oracle (the true top-k at the same
 * k, eager kernels) and predicted (the sparse decode graph) by teacher-forced decode on the GPU.
 */
async function evalOnGpu(f: PplFlags, selection: import('../../datasets/index.js').DocumentSelection, maxLen: number): Promise<void> {
  const { DejavuError } = await import('../../common/errors.js');
  const { log } = await import('../../common/progress.js');
  const { createReadStats, describeSkips, loadTokenizer, readDocuments } = await import('../../datasets/index.js');
  const { runCudaPerplexity } = await import('../../runtime/cuda/eval-ppl.js');
  for (const [key, flag, why] of [
    ['mlpGroups', '--mlp-groups', 'the GPU picks G from its kernel grid and reports it (mlp_groups_per_layer); give --mlp-select grouped'],
    ['workers', '--workers', 'the GPU runs one engine'],
    ['threads', '--threads', 'the GPU runs one engine'],
  ] as const)
    // --workers 1 is what one engine is anyway (the CPU runs' commands carry it), so it is taken as said.
    if (f[key] !== undefined && !(key === 'workers' && f[key] === '1')) throw new DejavuError(`not with --device cuda: ${why}`, flag);
  if (f.backend !== 'auto') throw new DejavuError('a CPU prefill backend; not with --device cuda', '--backend');
  const modes = f.modes?.split(',').map((m) => m.trim());
  for (const m of modes ?? [])
    if (m !== 'dense' && m !== 'oracle' && m !== 'predicted') throw new DejavuError(`unknown mode '${m}' (dense, oracle, predicted)`, '--modes');
  const tokenizer = await loadTokenizer(f.model);
  const stats = createReadStats();
  const docs: Int32Array[] = [];
  for await (const doc of readDocuments(f.data, selection, stats)) docs.push(tokenizer.encode(doc.text, maxLen));
  const skips = describeSkips(stats);
  if (skips) log(skips);
  const num = (v: string | undefined, flag: string, min: number) => {
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) throw new DejavuError(`${v}: expected an integer >= ${min}`, flag);
    return n;
  };
  const headsFrac = f.headsFrac !== undefined ? Number(f.headsFrac) : undefined;
  if (headsFrac !== undefined && !(headsFrac > 0 && headsFrac <= 1)) throw new DejavuError(`${f.headsFrac}: expected a fraction in (0, 1]`, '--heads-frac');
  const r = await runCudaPerplexity({
    model: f.model,
    docs,
    maxLen,
    bundle: f.bundle,
    modes: modes as ('dense' | 'oracle' | 'predicted')[] | undefined,
    kvPolicy: f.kvPolicy as 'all' | 'selected' | undefined,
    mlpSelect: f.mlpSelect as 'exact' | 'grouped' | undefined,
    path: f.path as 'auto' | 'streamed' | 'portable' | undefined,
    headsK: num(f.headsK, '--heads-k', 1),
    mlpK: num(f.mlpK, '--mlp-k', 1),
    headsFrac,
    batchTokens: num(f.batchTokens, '--batch-tokens', 2),
  });
  if (f.json) {
    console.log(JSON.stringify(r));
    return;
  }
  type Fig = { ppl: number; tokens: number; tokens_per_s: number };
  const dense = r.dense as Fig | undefined;
  const oracle = r.oracle as Fig | undefined;
  const pred = r.predicted as Fig | undefined;
  const load = r.load as { seconds: number };
  const vs = (m: Fig) => (dense ? ` (${m.ppl >= dense.ppl ? '+' : ''}${((m.ppl / dense.ppl - 1) * 100).toFixed(2)}% vs dense)` : '');
  console.log(`device      ${r.device} (load ${load.seconds} s)`);
  if (dense) console.log(`dense       ${dense.ppl.toFixed(4)}  (${dense.tokens.toLocaleString('en-US')} tokens, ${dense.tokens_per_s.toLocaleString('en-US')} tok/s prefill)`);
  if (oracle) console.log(`oracle      ${oracle.ppl.toFixed(4)}${vs(oracle)}  kv ${r.kv_policy}, true top-k, ${oracle.tokens_per_s.toLocaleString('en-US')} tok/s decode`);
  if (pred) console.log(`predicted   ${pred.ppl.toFixed(4)}${vs(pred)}  kv ${r.kv_policy}, ${r.mlp_selection} top-k, ${r.path} path, ${pred.tokens_per_s.toLocaleString('en-US')} tok/s decode`);
  const hk = r.heads_k_per_layer as number[] | undefined;
  const mk = r.mlp_k_per_layer as number[] | undefined;
  if (hk && mk) console.log(`k per layer heads ${hk.join(',')}, neurons ${mk.join(',')}`);
}
