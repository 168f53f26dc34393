/** Small, valid report inputs written to a folder: 3 layers, eval at 3 head densities, a 2 x 2 bench sweep. */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export interface Written {
  predictors: string;
  bundle: string;
  evalFile: string;
  benchFile: string;
  sweepFile: string;
}

export function writeInputs(dir: string): Written {
  const predictors = join(dir, 'predictors');
  const bundle = join(dir, 'bundle');
  mkdirSync(predictors, { recursive: true });
  mkdirSync(bundle, { recursive: true });
  const entry = (layer: number, target: 'mlp' | 'attn', active: number, out: number) => ({
    layer, target, recall: 0.9 + layer / 100, precision: 0.6 + layer / 50, f1: 0.7, true_active: active, predicted_active: active * 1.2,
    k95: active * 1.1, k99: active * 1.4, tokens: 500, out, history: [],
  });
  const layers = [entry(0, 'mlp', 120, 1536), entry(1, 'mlp', 80, 1536), entry(2, 'mlp', 60, 1536), entry(1, 'attn', 4, 12), entry(2, 'attn', 3, 12)];
  writeFileSync(join(predictors, 'metrics.json'), JSON.stringify({ model_fingerprint: 'f', args: {}, backend: 'wasm', layers, skipped: [], seconds: 1 }));
  const dense = { dense: true, reason: 'left dense' };
  const pred = (k: number) => ({ dense: false, input: 'mlp_in', lookahead: 0, rank: 8, k, k_rule: 'fixed' });
  writeFileSync(
    join(bundle, 'manifest.json'),
    JSON.stringify({
      format: 'dejavu-bundle', version: 1, model_fingerprint: 'f',
      model: { n_layers: 3, d_model: 384, n_heads: 12, head_dim: 32, ffn_dim: 1536 },
      layers: [{ layer: 0, mlp: dense, attn: dense }, { layer: 1, mlp: pred(230), attn: pred(9) }, { layer: 2, mlp: pred(230), attn: pred(6) }],
    }),
  );
  const evalRun = (heads: number, predicted: number) => ({
    dense: { ppl: 60.9 }, oracle: { ppl: 61 + (1 - heads) * 20, delta_vs_dense: 0.01 }, predicted: { ppl: predicted, delta_vs_dense: 0.02 },
    mlp_density: 0.29, head_density: heads, docs: 12, tokens: 3000,
  });
  const evalFile = join(dir, 'eval.json');
  writeFileSync(evalFile, JSON.stringify({ runs: { h1: evalRun(1, 61.1), h75: evalRun(0.75, 66), h5: evalRun(0.5, 77) } }));
  const bench = (mlp: number, heads: number, sparse: number) => ({
    device: 'cpu', mlp_density: mlp, head_density: heads, dense: { ms_per_token: 11.5 }, sparse: { ms_per_token: sparse }, floor_ms: 7, sparse_floor_ms: 4,
  });
  const benchFile = join(dir, 'bench.json');
  writeFileSync(benchFile, JSON.stringify(bench(0.15, 1, 8.1)));
  const sweepFile = join(dir, 'sweep.json');
  writeFileSync(sweepFile, JSON.stringify({ runs: { a: bench(0.1, 1, 7.1), b: bench(0.1, 0.5, 5.8), c: bench(0.25, 1, 9.4), d: bench(0.25, 0.5, 7.9) } }));
  return { predictors, bundle, evalFile, benchFile, sweepFile };
}
