/**
 * `npm run bench collect-cpu`: `dejavu collect` on opt-mini over c4mini-train (`--docs 500 --max-len 2048` by
 * default, ~450k tokens, ~4.8 GB of shards) on this CPU. Reports tokens/s (wall and per CPU-second, since a shared
 * 2-core machine's wall clock depends on its neighbours), peak RSS, and RSS samples along the run to show that memory
 * does not grow with the number of documents. Shards go to a temporary folder that is deleted afterwards.
 *
 * Env: DEJAVU_BENCH_COLLECT_DOCS (default 500), DEJAVU_BENCH_COLLECT_WORKERS (forward threads, default the number
 * of cores), DEJAVU_BENCH_COLLECT_OUT (parent folder, default the OS temp dir), DEJAVU_FIXTURES (default
 * ../shared/fixtures).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { availableParallelism, cpus, loadavg, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { collect } from '../collect/collect.js';

export async function run(): Promise<Record<string, unknown>> {
  const fixtures = process.env.DEJAVU_FIXTURES ?? resolve(process.cwd(), '..', 'shared', 'fixtures');
  const docs = Number(process.env.DEJAVU_BENCH_COLLECT_DOCS ?? 500);
  const workers = Number(process.env.DEJAVU_BENCH_COLLECT_WORKERS ?? availableParallelism());
  const out = mkdtempSync(join(process.env.DEJAVU_BENCH_COLLECT_OUT ?? tmpdir(), 'dejavu-bench-collect-'));
  const samples: { docs: number; tokens: number; rss_mib: number; heap_mib: number }[] = [];
  const mib = (b: number) => Math.round((b / 2 ** 20) * 10) / 10;
  const load0 = loadavg();
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  try {
    const r = await collect({
      model: join(fixtures, 'opt-mini'),
      data: [join(fixtures, 'c4mini', 'c4mini-train.00000-of-00001.json.gz')],
      out,
      docs,
      maxLen: 2048,
      workers,
      quiet: false,
      onDocument: (p) => {
        if (p.docs % 25 === 0 || p.docs === 1) {
          const m = process.memoryUsage();
          samples.push({ docs: p.docs, tokens: p.tokens, rss_mib: mib(m.rss), heap_mib: mib(m.heapUsed) });
          process.stderr.write(`  ${p.docs} docs, ${p.tokens} tokens, rss ${mib(m.rss)} MiB\n`);
        }
      },
    });
    const seconds = (performance.now() - t0) / 1000;
    const cpu = process.cpuUsage(cpu0);
    const cpuSeconds = (cpu.user + cpu.system) / 1e6;
    const m = r.manifest;
    const rss = samples.map((s) => s.rss_mib);
    return {
      device: `${cpus()[0]?.model ?? 'cpu'} (${cpus().length} cores)`,
      command: `dejavu collect --model opt-mini --data c4mini-train --docs ${docs} --max-len 2048 --workers ${workers} (all ${m.layers.length} layers)`,
      workers,
      docs: m.docs,
      tokens: m.tokens,
      seconds: Math.round(seconds * 10) / 10,
      tokens_per_second: Math.round((m.tokens / seconds) * 10) / 10,
      cpu_seconds: Math.round(cpuSeconds * 10) / 10,
      tokens_per_cpu_second: Math.round((m.tokens / cpuSeconds) * 10) / 10,
      peak_rss_mib: mib(process.resourceUsage().maxRSS * 1024),
      rss_first_sample_mib: rss[0],
      rss_max_sample_mib: Math.max(...rss),
      rss_last_sample_mib: rss[rss.length - 1],
      rss_samples: samples,
      shards: m.num_shards,
      bytes: m.bytes,
      gib: Math.round((m.bytes / 2 ** 30) * 100) / 100,
      bytes_per_token_per_layer: m.bytes_per_token_per_layer,
      bound_bytes_per_token_per_layer: m.bound_bytes_per_token_per_layer,
      load_average_start: load0.map((x) => Math.round(x * 100) / 100),
      load_average_end: loadavg().map((x) => Math.round(x * 100) / 100),
    };
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
}
