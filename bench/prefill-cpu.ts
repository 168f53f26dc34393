/**
 * CPU prefill throughput of the dense OPT model: 512-token sequences of real text (c4mini validation, concatenated
 * and cut into [BOS] + 511-token windows), logits for every position (what perplexity needs), all cores (one
 * tfjs-wasm worker per core) and, for reference, one worker. Model: $DEJAVU_BENCH_MODEL or the opt-mini fixture.
 */
import { existsSync } from 'node:fs';
import { availableParallelism, cpus, getPriority, loadavg } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { log } from '../common/progress.js';
import { PrefillPool } from '../runtime/cpu/pool.js';

const SEQ_LEN = 512;
const ROUNDS = 3;

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..'); // dist/bench -> repo root
const fixtures = process.env.DEJAVU_FIXTURES ?? resolve(root, '..', 'shared', 'fixtures');

async function sequences(modelDir: string, count: number, vocab: number): Promise<Int32Array[]> {
  const data = join(fixtures, 'c4mini', 'c4mini-validation.00000-of-00001.json.gz');
  const out: Int32Array[] = [];
  if (existsSync(data) && existsSync(join(modelDir, 'tokenizer.json'))) {
    const { loadTokenizer, readDocuments } = await import('../datasets/index.js');
    const tok = await loadTokenizer(modelDir);
    const bos = tok.bosId ?? 2;
    let buf: number[] = [];
    for await (const doc of readDocuments([data])) {
      const ids = tok.encode(doc.text);
      for (const id of ids) if (id !== bos) buf.push(id);
      while (buf.length >= SEQ_LEN - 1 && out.length < count) {
        out.push(Int32Array.from([bos, ...buf.slice(0, SEQ_LEN - 1)]));
        buf = buf.slice(SEQ_LEN - 1);
      }
      if (out.length >= count) return out;
    }
  }
  // No text available: deterministic pseudo-random ids (the cost of a dense prefill does not depend on the ids).
  let s = 12345;
  while (out.length < count) {
    out.push(Int32Array.from({ length: SEQ_LEN }, () => ((s = (s * 1103515245 + 12345) >>> 0) >>> 8) % vocab));
  }
  return out;
}

interface Measured {
  /** Wall-clock tokens/s of each round. */
  rounds: number[];
  median: number;
  /** Tokens per CPU-second of this process (all its threads), median round: what one core gives when it is ours. */
  tokensPerCpuS: number;
  /** CPU-seconds / wall-seconds of the median round: ~workers on an idle machine, less when others share the cores. */
  cpuUtilization: number;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/** Throughput of `pool` over `seqs` (all submitted at once), median over ROUNDS after a warm-up. */
async function measure(pool: PrefillPool, seqs: Int32Array[]): Promise<Measured> {
  await Promise.all(Array.from({ length: pool.size }, (_, i) => pool.prefill(seqs[i % seqs.length]))); // warm-up
  const rounds: number[] = [];
  const perCpu: number[] = [];
  const util: number[] = [];
  for (let r = 0; r < ROUNDS; r++) {
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    await Promise.all(seqs.map((s) => pool.prefill(s, 'all')));
    const sec = (performance.now() - t0) / 1000;
    const c = process.cpuUsage(c0);
    const cpuSec = (c.user + c.system) / 1e6;
    rounds.push(Math.round((seqs.length * SEQ_LEN) / sec));
    perCpu.push(Math.round((seqs.length * SEQ_LEN) / cpuSec));
    util.push(Number((cpuSec / sec).toFixed(2)));
  }
  const m = median(rounds);
  const i = rounds.indexOf(m);
  return { rounds, median: m, tokensPerCpuS: perCpu[i], cpuUtilization: util[i] };
}

export async function run(): Promise<Record<string, unknown>> {
  const modelDir = process.env.DEJAVU_BENCH_MODEL ?? join(fixtures, 'opt-mini');
  const cores = availableParallelism();
  const load0 = loadavg()[0];
  const all = await PrefillPool.create(modelDir, { workers: cores });
  log(`   backend: ${all.backend}`);
  const seqs = await sequences(modelDir, 4 * all.size, 8192);
  const multi = await measure(all, seqs);
  await all.close();
  log(`   ${all.size} worker(s): ${multi.median} tokens/s (rounds ${multi.rounds.join(', ')}; ${multi.tokensPerCpuS} tokens/cpu-s, cpu utilisation ${multi.cpuUtilization})`);
  const one = await PrefillPool.create(modelDir, { workers: 1 });
  const single = await measure(one, seqs.slice(0, 4));
  await one.close();
  log(`   1 worker: ${single.median} tokens/s (rounds ${single.rounds.join(', ')}; ${single.tokensPerCpuS} tokens/cpu-s)`);
  return {
    tokens_per_s: multi.median,
    seq_len: SEQ_LEN,
    sequences: seqs.length,
    cores,
    workers: all.size,
    backend: all.backend,
    logits: 'all positions',
    rounds_tokens_per_s: multi.rounds,
    tokens_per_cpu_s: multi.tokensPerCpuS,
    cpu_utilization: multi.cpuUtilization,
    single_worker_tokens_per_s: single.median,
    single_worker_rounds: single.rounds,
    single_worker_tokens_per_cpu_s: single.tokensPerCpuS,
    // Other processes on the machine during the run (1-minute load average before and after): context for the figures.
    load_avg_1m: [Number(load0.toFixed(2)), Number(loadavg()[0].toFixed(2))],
    // The scheduling priority the bench ran at (`nice` value; 0 = default). On a shared machine a negative value is
    // how the bench gets its cores while other jobs keep running.
    nice: getPriority(),
    model: modelDir.split(/[\\/]/).slice(-1)[0],
    cpu: cpus()[0]?.model ?? 'unknown',
    node: process.version,
  };
}
