/**
 * `npm run bench [name...]`: runs the CPU benchmarks and writes each result as JSON to bench/results/<name>.json
 * (bench/results/<name>-<tag>.json with $DEJAVU_BENCH_TAG set; bench/result-name.ts), overwriting the previous run.
 * Each benchmark module exports `run(): Promise<object>`; register it in BENCHES below.
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { writeJsonAtomic } from '../common/atomic.js';
import { DejavuError } from '../common/errors.js';
import { resultFileName } from './result-name.js';

type Bench = { name: string; description: string; load: () => Promise<{ run: () => Promise<Record<string, unknown>> }> };

const BENCHES: Bench[] = [
  // helpers: add { name, description, load: () => import('./x.js') } entries here
  { name: 'train-wasm', description: 'train step samples/s, one opt-mini layer (384->256->1536, ->12), batch 1024, tfjs-wasm', load: () => import('./train-wasm.js') },
  { name: 'train-webgpu', description: 'train step samples/s, 4096->1024->16384 at batch 1024, tfjs-webgpu (needs a GPU)', load: () => import('./train-webgpu.js') },
  { name: 'train-memory', description: 'dejavu train peak RSS on opt-mini shards of 200 vs 400 c4mini-train docs (bounded by the batch, not the data)', load: () => import('./train-memory.js') },
  { name: 'collect-cpu', description: 'dejavu collect tokens/s and peak RSS, opt-mini, --docs 500 --max-len 2048 on c4mini-train', load: () => import('./collect-cpu.js') },
  { name: 'collect-write', description: "collect's shard writing at OPT-6.7B row size: writer threads vs write-then-hash on one thread, beside the disk and SHA-256 rates", load: () => import('./collect-write.js') },
  { name: 'decode-cpu', description: 'CPU decode ms/token dense vs sparse (MLP 10%, heads 100%/50%), per block, Amdahl bound, KV policy cost, opt-mini', load: () => import('./decode-cpu.js') },
  { name: 'prefill-cpu', description: 'dense CPU prefill tokens/s, opt-mini, 512-token sequences', load: () => import('./prefill-cpu.js') },
];

const wanted = process.argv.slice(2);
const selected = wanted.length ? BENCHES.filter((b) => wanted.includes(b.name)) : BENCHES;
if (wanted.length && selected.length !== wanted.length) {
  console.error(`unknown benchmark; available: ${BENCHES.map((b) => b.name).join(', ')}`);
  process.exit(2);
}
// Bad input (a bad tag, an unwritable bench/results) is one line and exit 1, as in the CLI.
function fail(e: unknown): never {
  if (!(e instanceof DejavuError)) throw e;
  console.error(`error: ${e.message}`);
  process.exit(1);
}
const tag = process.env.DEJAVU_BENCH_TAG;
try {
  resultFileName('x', tag); // checked before any benchmark runs, so a bad tag costs nothing
} catch (e) {
  fail(e);
}
const outDir = join(process.cwd(), 'bench', 'results');
try {
  mkdirSync(outDir, { recursive: true });
} catch (e) {
  fail(new DejavuError(`cannot create the results folder (${(e as NodeJS.ErrnoException).code ?? String(e)})`, outDir));
}
/** The command line that reruns one benchmark as configured now (its DEJAVU_* settings first), for the JSON. */
function benchCommand(name: string): string {
  const env = Object.entries(process.env)
    .filter(([k, v]) => (k.startsWith('DEJAVU_BENCH_') || k === 'DEJAVU_FIXTURES') && v)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([k, v]) => `${k}=${v}`);
  return [...env, 'npm run bench', name].join(' ');
}
for (const b of selected) {
  console.error(`== ${b.name}: ${b.description}`);
  const result = await (await b.load()).run();
  const date = new Date().toISOString().slice(0, 10);
  const file = join(outDir, resultFileName(b.name, tag));
  try {
    writeJsonAtomic(file, { bench: b.name, date, bench_command: benchCommand(b.name), ...result });
  } catch (e) {
    fail(e);
  }
  console.error(`   -> ${file}`);
  console.log(JSON.stringify({ bench: b.name, ...result }));
}
