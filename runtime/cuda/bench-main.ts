/**
 * Standalone CUDA bench entry for the GPU machine, whose pruned node_modules has koffi, cli-progress and commander
 * but not the rest of the CLI: node dist/runtime/cuda/bench-main.js --shape opt-13b [the options of
 * `dejavu bench --device cuda`] [--reps N] [--out FILE]   (FILE gets the JSON too)
 * The options are defined once, in cli/commands/bench.ts (addCudaBenchOptions); runCudaBench backs both entries.
 */
import { writeFileSync } from 'node:fs';
import { Command } from 'commander';
import { addCudaBenchOptions, cudaBenchOptions, positiveInt, type CudaBenchFlags } from '../../cli/commands/bench.js';
import { DejavuError, fsErrorToDejavu } from '../../common/errors.js';
import { runCudaBench, type CudaBenchOptions } from './bench.js';

export type BenchMainOptions = CudaBenchOptions & { out?: string };

/** The command bench-main parses: `dejavu bench`'s CUDA options plus --reps and --out. */
export function benchMainCommand(): Command {
  const cmd = new Command('bench-main').description('CUDA decode bench (dejavu bench --device cuda without the rest of the CLI)');
  return addCudaBenchOptions(cmd)
    .option('--seed <n>', 'seed of the random weights and prompt', positiveInt('--seed'))
    .option('--reps <n>', 'timed repetitions per mode, median reported', positiveInt('--reps'), 3)
    .option('--out <file>', 'also write the JSON to FILE');
}

/**
 * argv (without node and the script) -> runCudaBench's options. Bad flags throw (commander's own errors are
 * CommanderError, with the message it has already printed to stderr; value errors are DejavuError naming the flag).
 */
export function parseArgs(argv: string[]): BenchMainOptions {
  const cmd = benchMainCommand().exitOverride();
  cmd.parse(argv, { from: 'user' });
  const f = cmd.opts<CudaBenchFlags & { seed?: number; reps: number; out?: string }>();
  return { ...cudaBenchOptions(f), seed: f.seed, reps: f.reps, out: f.out };
}

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  const r = await runCudaBench(o);
  if (o.out) {
    try {
      writeFileSync(o.out, JSON.stringify(r, null, 2) + '\n');
    } catch (e) {
      throw fsErrorToDejavu(e, o.out) ?? e;
    }
  }
  console.log(JSON.stringify(r, null, o.json ? undefined : 2));
}

if (process.argv[1] && import.meta.url.endsWith(process.argv[1].split('/').pop()!)) {
  main().catch((e) => {
    if ((e as { code?: string }).code?.startsWith('commander.')) process.exit((e as { exitCode?: number }).exitCode ?? 1);
    const bad = e instanceof DejavuError ? e : fsErrorToDejavu(e);
    process.stderr.write(`${bad ? `error: ${bad.message}` : (e as Error).stack}\n`);
    process.exit(1);
  });
}
