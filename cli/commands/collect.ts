/** `dejavu collect`: argument parsing and the closing summary; the work is in collect/collect.ts. */
import type { Command } from 'commander';
import { SHARD_MANIFEST_FILE } from '../../common/contracts.js';
import { parseIntFlag } from '../args.js';

interface Flags {
  model: string;
  data: string[];
  out?: string;
  dryRun?: boolean;
  docs?: string;
  sample?: string;
  seed?: string;
  maxLen: string;
  layers: string;
  shardTokens: string;
  mlpTopk: string;
  force?: boolean;
  json?: boolean;
  workers?: string;
  device: string;
}

/**
 * Forward threads: the --workers asked for (default: as many as allowed), at most the cores and the model copies the
 * memory holds (common/workers.ts); a lowered request is said on stderr.
 */
async function workerCount(model: string, maxLen: number, requested: number | undefined): Promise<number> {
  const { join } = await import('node:path');
  const { parseOptConfig } = await import('../../checkpoints/opt-config.js');
  const { capWorkers, forwardWorkerBytes, thisMachine } = await import('../../common/workers.js');
  let perWorker = 0;
  try {
    const config = parseOptConfig(join(model, 'config.json'));
    perWorker = forwardWorkerBytes(config, Math.min(maxLen, config.maxPositionEmbeddings));
  } catch {
    // collect itself reports a bad model folder, after the cheaper checks of the data and output paths.
  }
  const cap = capWorkers(requested, '--workers', perWorker, thisMachine());
  if (cap.warning) (await import('../../common/progress.js')).warn(cap.warning);
  return cap.workers;
}

export function register(program: Command): void {
  program
    .command('collect')
    .description('run C4 documents through the model and write per-layer Arrow shards (docs/shards.md)')
    .requiredOption('--model <dir>', 'Hugging Face OPT model folder')
    .requiredOption('--data <paths...>', 'C4 files (json.gz, jsonl, parquet), folders or globs')
    .option('--out <dir>', 'output folder (resumed when rerun with the same arguments); required unless --dry-run')
    .option('--docs <n>', 'the first N documents in file order')
    .option('--sample <n>', 'a seeded random sample of N documents (read in file order)')
    .option('--seed <s>', 'seed for --sample', '0')
    .option('--max-len <n>', 'tokens per document, BOS included', '2048')
    .option('--layers <spec>', "layers to record: 'all' or e.g. 0,3-5", 'all')
    .option('--shard-tokens <n>', 'tokens per shard (shards hold whole documents)', '65536')
    .option('--mlp-topk <k>', 'also store the top-K fc1 activations and their indices per token (0 = off)', '0')
    .option('--workers <n>', 'forward threads, one document each (default and upper bound: the cores, and as many model copies as memory holds; the rows do not depend on it)')
    .option('--device <d>', 'cpu (default: worker threads) or cuda (the GPU engine: weights streamed to the GPU in fp16, the taps computed during its prefill; same shards)', 'cpu')
    .option('--force', 'replace an output folder collected from another model or with other arguments')
    .option('--dry-run', 'run the forward with its taps over the documents and write nothing: the tokens/s of the model side alone (to compare with the disk)')
    .option('--json', 'print one JSON object on stdout')
    .action(async (f: Flags) => {
      const { collect, DEFAULT_MAX_LEN } = await import('../../collect/collect.js');
      const { debug, log } = await import('../../common/progress.js');
      const { describeSkips } = await import('../../datasets/index.js');
      if (f.docs !== undefined && f.sample !== undefined) {
        const { DejavuError } = await import('../../common/errors.js');
        throw new DejavuError('use --docs or --sample, not both', '--docs');
      }
      const maxLen = f.maxLen !== undefined ? parseIntFlag(f.maxLen, '--max-len') : DEFAULT_MAX_LEN;
      if (f.device !== 'cpu' && f.device !== 'cuda') {
        const { DejavuError } = await import('../../common/errors.js');
        throw new DejavuError(`expected cpu or cuda, got '${f.device}'`, '--device');
      }
      const workers = f.device === 'cuda'
        ? f.workers !== undefined ? parseIntFlag(f.workers, '--workers') : undefined
        : await workerCount(f.model, maxLen, f.workers !== undefined ? parseIntFlag(f.workers, '--workers') : undefined);
      const common = {
        model: f.model,
        data: f.data,
        docs: f.docs !== undefined ? parseIntFlag(f.docs, '--docs') : undefined,
        sample: f.sample !== undefined ? parseIntFlag(f.sample, '--sample') : undefined,
        seed: f.sample !== undefined ? parseIntFlag(f.seed ?? '0', '--seed', 0) : undefined,
        maxLen,
        layers: f.layers,
        mlpTopk: parseIntFlag(f.mlpTopk, '--mlp-topk', 0),
        workers,
        device: f.device as 'cpu' | 'cuda',
        quiet: false,
      };
      if (f.dryRun) {
        const { DejavuError } = await import('../../common/errors.js');
        if (f.out !== undefined || f.force) throw new DejavuError('a dry run writes nothing; drop --out and --force', '--dry-run');
        const { collectDryRun } = await import('../../collect/dry-run.js');
        const r = await collectDryRun(common);
        const summary = `dry run: ${r.docs} docs, ${r.tokens} tokens through ${r.forward} in ${r.seconds.toFixed(1)} s: ` +
          `${Math.round(r.tokens_per_second)} tok/s (load ${r.load_seconds.toFixed(1)} s; nothing written)`;
        if (f.json) {
          log(summary);
          console.log(JSON.stringify(r));
        } else process.stdout.write(summary + '\n');
        return;
      }
      if (f.out === undefined) {
        const { DejavuError } = await import('../../common/errors.js');
        throw new DejavuError("required option '--out <dir>' not specified", '--out');
      }
      const r = await collect({
        ...common,
        out: f.out,
        shardTokens: parseIntFlag(f.shardTokens, '--shard-tokens'),
        force: f.force,
      });
      const m = r.manifest;
      const rate = r.tokensPerSecond === null ? 'no time recorded' : `${Math.round(r.tokensPerSecond)} tok/s`;
      // The summary is the command's result: on stdout, like eval's and train's; beside --json's object, on stderr.
      const summary = [
        `collected ${m.docs} docs, ${m.tokens} tokens, ${m.layers.length} layers x ${m.num_shards} shards, ` +
          `${(m.bytes / 2 ** 20).toFixed(1)} MiB in ${m.seconds.toFixed(1)} s` +
          (r.alreadyComplete
            ? ` (already complete, nothing collected now; ${rate} when collected)`
            : (r.shardsResumed ? ` (${r.shardsResumed} shards kept from an earlier run)` : '') + `; this run ${rate}`),
        `bytes per token per layer: ${m.bytes_per_token_per_layer} (row data ${m.row_bytes}, bound ${m.bound_bytes_per_token_per_layer})`,
      ];
      debug(m.layers.map((l, i) => `  layer ${String(l).padStart(2, '0')}: ${m.bytes_per_token_by_layer[i]} B/token`).join('\n'));
      const skips = describeSkips({
        documents: m.docs,
        files: m.files,
        skipped: m.skipped_lines,
        skippedExamples: m.skipped_examples,
        replaced: m.replaced_lines,
        replacedExamples: m.replaced_examples,
      });
      if (skips) summary.push(skips);
      summary.push(`-> ${f.out}/${SHARD_MANIFEST_FILE}`);
      if (f.json) log(summary.join('\n'));
      else process.stdout.write(summary.join('\n') + '\n');
      if (f.json) {
        console.log(
          JSON.stringify({
            docs: m.docs,
            tokens: m.tokens,
            bytes_per_token_per_layer: m.bytes_per_token_per_layer,
            seconds: m.seconds,
            shards: m.num_shards,
            layers: m.layers.length,
            bytes: m.bytes,
            bytes_per_token_by_layer: m.bytes_per_token_by_layer,
            bound_bytes_per_token_per_layer: m.bound_bytes_per_token_per_layer,
            tokens_per_second: r.tokensPerSecond,
            run_seconds: Math.round(r.runSeconds * 1000) / 1000,
            run_tokens_per_second: r.runSeconds > 0 ? Math.round((r.tokensThisRun / r.runSeconds) * 10) / 10 : null,
            forward_wait_seconds: Math.round(r.forwardWaitSeconds * 1000) / 1000,
            already_complete: r.alreadyComplete,
            shards_resumed: r.shardsResumed,
            skipped_lines: m.skipped_lines,
            replaced_lines: m.replaced_lines,
            out: f.out,
          }),
        );
      }
    });
}
