/**
 * `npm run bench [name...]`: runs the CPU benchmarks and writes each result as JSON under bench/results/.
 * Each benchmark module exports `run(): Promise<object>`; register it in BENCHES below.
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { writeJsonAtomic } from '../common/atomic.js';

type Bench = { name: string; description: string; load: () => Promise<{ run: () => Promise<Record<string, unknown>> }> };

const BENCHES: Bench[] = [
  // helpers: add { name, description, load: () => import('./x.js') } entries here
  { name: 'train-wasm', description: 'train step samples/s, one opt-mini layer (384->256->1536, ->12), batch 1024, tfjs-wasm', load: () => import('./train-wasm.js') },
  { name: 'train-webgpu', description: 'train step samples/s, 4096->1024->16384 at batch 1024, tfjs-webgpu (needs a GPU)', load: () => import('./train-webgpu.js') },
  { name: 'collect-cpu', description: 'dejavu collect tokens/s and peak RSS, opt-mini, --docs 500 --max-len 2048 on c4mini-train', load: () => import('./collect-cpu.js') },
  { name: 'decode-cpu', description: 'CPU decode ms/token dense vs sparse (MLP 10%, heads 100%/50%), per block, Amdahl bound, KV policy cost, opt-mini', load: () => import('./decode-cpu.js') },
  { name: 'prefill-cpu', description: 'dense CPU prefill tokens/s, opt-mini, 512-token sequences', load: () => import('./prefill-cpu.js') },
];

const wanted = process.argv.slice(2);
const selected = wanted.length ? BENCHES.filter((b) => wanted.includes(b.name)) : BENCHES;
if (wanted.length && selected.length !== wanted.length) {
  console.error(`unknown benchmark; available: ${BENCHES.map((b) => b.name).join(', ')}`);
  process.exit(2);
}
const outDir = join(process.cwd(), 'bench', 'results');
mkdirSync(outDir, { recursive: true });
for (const b of selected) {
  console.error(`== ${b.name}: ${b.description}`);
  const result = await (await b.load()).run();
  const date = new Date().toISOString().slice(0, 10);
  const file = join(outDir, `${b.name}-${date}.json`);
  writeJsonAtomic(file, { bench: b.name, date, ...result });
  console.error(`   -> ${file}`);
  console.log(JSON.stringify({ bench: b.name, ...result }));
}
