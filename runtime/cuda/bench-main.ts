/**
 * Standalone CUDA bench entry (no commander): node dist/runtime/cuda/bench-main.js --shape opt-13b
 *   [--model DIR [--bundle B]] [--density mlp=0.05,heads=0.2] [--prompt 128] [--gen 128] [--rank 128] [--mlp-input att_in|prev_att_in|prev_mlp_in|mlp_in]
 *   [--mlp-select exact|grouped] [--json]
 *   [--out FILE]   (FILE gets the JSON too)
 * The same function backs `dejavu bench --device cuda`.
 */
import { writeFileSync } from 'node:fs';
import { DejavuError } from '../../common/errors.js';
import { runCudaBench, type CudaBenchOptions } from './bench.js';

export function parseDensity(s: string): { mlp: number; heads: number } {
  const out = { mlp: 1, heads: 1 };
  for (const part of s.split(',')) {
    const [k, v] = part.split('=');
    const x = Number(v);
    if ((k !== 'mlp' && k !== 'heads') || !Number.isFinite(x)) throw new DejavuError(`'${part}': expected mlp=F,heads=F`, '--density');
    out[k] = x;
  }
  return out;
}

export function parseArgs(argv: string[]): CudaBenchOptions & { out?: string } {
  const o: CudaBenchOptions & { out?: string } = { prompt: 128, gen: 128, json: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => {
      const v = argv[++i];
      if (v === undefined) throw new DejavuError('missing value', a);
      return v;
    };
    const int = () => {
      const v = Number(next());
      if (!Number.isInteger(v)) throw new DejavuError(`expected an integer`, a);
      return v;
    };
    switch (a) {
      case '--shape': o.shape = next(); break;
      case '--model': o.model = next(); break;
      case '--bundle': o.bundle = next(); break;
      case '--density': o.density = parseDensity(next()); break;
      case '--prompt': o.prompt = int(); break;
      case '--gen': o.gen = int(); break;
      case '--rank': o.rank = int(); break;
      case '--mlp-input': o.mlpInput = next() as CudaBenchOptions['mlpInput']; break;
      case '--mlp-select': o.mlpSelect = next() as CudaBenchOptions['mlpSelect']; break;
      case '--seed': o.seed = int(); break;
      case '--reps': o.reps = int(); break;
      case '--json': o.json = true; break;
      case '--out': o.out = next(); break;
      default: throw new DejavuError(`unknown argument`, a);
    }
  }
  return o;
}

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  const r = await runCudaBench(o);
  const text = JSON.stringify(r, null, o.json ? undefined : 2);
  if (o.out) writeFileSync(o.out, JSON.stringify(r, null, 2) + '\n');
  console.log(text);
}

if (process.argv[1] && import.meta.url.endsWith(process.argv[1].split('/').pop()!)) {
  main().catch((e) => {
    process.stderr.write(`${e instanceof DejavuError ? e.message : (e as Error).stack}\n`);
    process.exit(1);
  });
}
