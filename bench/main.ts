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
