/** `dejavu collect`: argument parsing and the closing summary; the work is in collect/collect.ts. */
import type { Command } from 'commander';
import { SHARD_MANIFEST_FILE } from '../../common/contracts.js';
import { positiveInt } from '../../collect/args.js';

interface Flags {
  model: string;
  data: string[];
  out: string;
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
}

export function register(program: Command): void {
  program
    .command('collect')
    .description('run C4 documents through the model and write per-layer Arrow shards (docs/shards.md)')
    .requiredOption('--model <dir>', 'Hugging Face OPT model folder')
    .requiredOption('--data <paths...>', 'C4 files (json.gz, jsonl, parquet), folders or globs')
    .requiredOption('--out <dir>', 'output folder (resumed when rerun with the same arguments)')
    .option('--docs <n>', 'the first N documents in file order')
    .option('--sample <n>', 'a seeded random sample of N documents (read in file order)')
    .option('--seed <s>', 'seed for --sample', '0')
    .option('--max-len <n>', 'tokens per document, BOS included', '2048')
    .option('--layers <spec>', "layers to record: 'all' or e.g. 0,3-5", 'all')
    .option('--shard-tokens <n>', 'tokens per shard (shards hold whole documents)', '65536')
    .option('--mlp-topk <k>', 'also store the top-K fc1 activations and their indices per token (0 = off)', '0')
    .option('--workers <n>', 'forward threads, one document each (default: the number of cores; the rows do not depend on it)')
    .option('--force', 'replace an output folder collected from another model or with other arguments')
    .option('--json', 'print one JSON object on stdout')
    .action(async (f: Flags) => {
      const { collect, DEFAULT_MAX_LEN } = await import('../../collect/collect.js');
      const { log } = await import('../../common/progress.js');
      if (f.docs !== undefined && f.sample !== undefined) {
        const { DejavuError } = await import('../../common/errors.js');
        throw new DejavuError('use --docs or --sample, not both', '--docs');
      }
      const r = await collect({
        model: f.model,
        data: f.data,
        out: f.out,
        docs: f.docs !== undefined ? positiveInt(f.docs, '--docs') : undefined,
        sample: f.sample !== undefined ? positiveInt(f.sample, '--sample') : undefined,
        seed: f.sample !== undefined ? positiveInt(f.seed ?? '0', '--seed', 0) : undefined,
        maxLen: f.maxLen !== undefined ? positiveInt(f.maxLen, '--max-len') : DEFAULT_MAX_LEN,
        layers: f.layers,
        shardTokens: positiveInt(f.shardTokens, '--shard-tokens'),
        mlpTopk: positiveInt(f.mlpTopk, '--mlp-topk', 0),
        force: f.force,
        workers: f.workers !== undefined ? positiveInt(f.workers, '--workers') : undefined,
        quiet: false,
      });
      const m = r.manifest;
      const tokPerS = r.secondsThisRun > 0 ? r.tokensThisRun / r.secondsThisRun : 0;
      log(
        `collected ${m.docs} docs, ${m.tokens} tokens, ${m.layers.length} layers x ${m.num_shards} shards, ` +
          `${(m.bytes / 2 ** 20).toFixed(1)} MiB in ${m.seconds.toFixed(1)} s` +
          (r.shardsResumed ? ` (${r.shardsResumed} shards kept from an earlier run)` : '') +
          (r.tokensThisRun ? `; this run ${Math.round(tokPerS)} tok/s` : ''),
      );
      log(`bytes per token per layer: ${m.bytes_per_token_per_layer} (row data ${m.row_bytes}, bound ${m.bound_bytes_per_token_per_layer})`);
      log(m.layers.map((l, i) => `  layer ${String(l).padStart(2, '0')}: ${m.bytes_per_token_by_layer[i]} B/token`).join('\n'));
      if (m.skipped_lines) log(`skipped ${m.skipped_lines} malformed lines/rows, e.g. ${m.skipped_examples[0]}`);
      log(`-> ${f.out}/${SHARD_MANIFEST_FILE}`);
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
            tokens_per_second: Math.round(tokPerS * 10) / 10,
            shards_resumed: r.shardsResumed,
            skipped_lines: m.skipped_lines,
            out: f.out,
          }),
        );
      }
    });
}
