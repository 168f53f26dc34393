/**
 * `npm run bench train-memory`: shows that `dejavu train`'s memory is bounded by the batch and the shuffle buffer,
 * not by the data. Collects opt-mini shards of 200 and 400 c4mini-train docs (--max-len 512, layers 1-2), trains the
 * same small configuration on each (wasm, one thread, rank 128, MLP of layers 1-2) and reports each run's peak RSS
 * (the child process's own maxRSS, read at its exit) and the growth from 200 to 400 docs (acceptance: < 10%).
 *
 * Env: DEJAVU_BENCH_TRAIN_MEMORY_WORK (a folder to keep the shards in and resume from; default a temporary folder,
 * deleted afterwards), DEJAVU_BENCH_TRAIN_MEMORY_EPOCHS (default 2).
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const cli = fileURLToPath(new URL('../cli/main.js', import.meta.url));
// Prints the process's peak RSS (KiB on Linux) as the last stderr line, whatever way the CLI exits.
const rssHook = `data:text/javascript,process.on('exit',()=>process.stderr.write('MAXRSS_KIB '+process.resourceUsage().maxRSS+'\\n'))`;

function runCli(args: string[]): { seconds: number; max_rss_mib: number; stdout: string } {
  const t0 = performance.now();
  const r = spawnSync(process.execPath, ['--import', rssHook, cli, ...args], { encoding: 'utf8', maxBuffer: 1 << 28 });
  const m = /MAXRSS_KIB (\d+)/.exec(r.stderr);
  if (r.status !== 0 || !m) throw new Error(`dejavu ${args[0]} failed (${r.status}): ${r.stderr.trim().split('\n').slice(-3).join(' | ')}`);
  return { seconds: Math.round(performance.now() - t0) / 1000, max_rss_mib: Math.round((Number(m[1]) / 1024) * 10) / 10, stdout: r.stdout };
}

export async function run(): Promise<Record<string, unknown>> {
  const model = resolve('examples/opt-mini');
  const data = resolve('examples/c4mini/c4mini-train-first400.json.gz');
  const epochs = process.env.DEJAVU_BENCH_TRAIN_MEMORY_EPOCHS ?? '2';
  const keep = process.env.DEJAVU_BENCH_TRAIN_MEMORY_WORK;
  const work = keep ? resolve(keep) : mkdtempSync(join(tmpdir(), 'dejavu-bench-train-memory-'));
  mkdirSync(work, { recursive: true });
  const runs: Record<string, unknown>[] = [];
  try {
    for (const docs of [200, 400]) {
      const shards = join(work, `shards-${docs}`);
      const collectArgs = ['collect', '--model', model, '--data', data, '--docs', String(docs), '--max-len', '512', '--layers', '1-2', '--shard-tokens', '16384', '--out', shards, '--json', '--quiet'];
      const c = runCli(collectArgs);
      const collected = JSON.parse(c.stdout) as { tokens: number; shards: number; bytes: number };
      const out = join(work, `train-${docs}`);
      const trainArgs = ['train', '--shards', shards, '--out', out, '--backend', 'wasm', '--workers', '1', '--epochs', epochs, '--rank', '128', '--target', 'mlp', '--layers', '1-2', '--force', '--json', '--quiet'];
      const t = runCli(trainArgs);
      const metrics = JSON.parse(t.stdout) as { layers: { layer: number; k99: number; true_active: number }[] };
      process.stderr.write(`  ${docs} docs: ${collected.tokens} tokens, ${collected.shards} shards, ${(collected.bytes / 2 ** 20).toFixed(0)} MiB; train peak RSS ${t.max_rss_mib} MiB, ${t.seconds} s\n`);
      runs.push({
        docs,
        tokens: collected.tokens,
        shard_files: collected.shards,
        shard_mib: Math.round(collected.bytes / 2 ** 20),
        collect_command: `dejavu ${collectArgs.join(' ')}`,
        train_command: `dejavu ${trainArgs.join(' ')}`,
        train_seconds: t.seconds,
        train_peak_rss_mib: t.max_rss_mib,
        layers: metrics.layers.map((l) => ({ layer: l.layer, k99: l.k99, true_active: l.true_active })),
      });
    }
  } finally {
    if (!keep) rmSync(work, { recursive: true, force: true });
  }
  const [a, b] = runs as { train_peak_rss_mib: number }[];
  const growth = (b.train_peak_rss_mib - a.train_peak_rss_mib) / a.train_peak_rss_mib;
  return {
    device: 'cpu',
    what: 'peak RSS of dejavu train on opt-mini shards of 200 and 400 c4mini-train docs, same settings',
    runs,
    rss_growth_200_to_400: Math.round(growth * 10000) / 10000,
    bound: '< 0.10',
    pass: growth < 0.1,
  };
}
