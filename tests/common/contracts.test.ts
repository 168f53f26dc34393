/** common/contracts.ts: what it may import, the names it fixes, the --layers grammar and the metrics.json reader. */
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  layerDirName,
  layerOfDirName,
  parseLayers,
  parseMetrics,
  predictorFileName,
  predictorName,
  predictorOfFileName,
  shardFileName,
  shardIndexOfFileName,
  type TrainMetrics,
} from '../../common/contracts.js';
import { DejavuError } from '../../common/errors.js';
import { readMetrics } from '../../export/export.js';

const ROOT = resolve(dirname(new URL(import.meta.url).pathname), '../..');

/**
 * The static and dynamic imports reachable from `entry` (repo-relative), read from the sources: the repo files visited
 * and the packages (bare specifiers) they name. Type-only imports count too, to stay on the safe side.
 */
function importGraph(entry: string): { files: string[]; packages: Set<string> } {
  const files: string[] = [];
  const packages = new Set<string>();
  const todo = [resolve(ROOT, entry)];
  const seen = new Set<string>();
  while (todo.length) {
    const file = todo.pop()!;
    if (seen.has(file)) continue;
    seen.add(file);
    files.push(relative(ROOT, file));
    const src = readFileSync(file, 'utf8').replace(/\/\*[\s\S]*?\*\//g, '').replace(/^\s*\/\/.*$/gm, '');
    const specs = [
      ...src.matchAll(/\b(?:import|export)\s[^;'"]*?\bfrom\s*['"]([^'"]+)['"]/g),
      ...src.matchAll(/\bimport\s*['"]([^'"]+)['"]/g),
      ...src.matchAll(/\bimport\(\s*['"]([^'"]+)['"]\s*\)/g),
    ].map((m) => m[1]);
    for (const spec of specs) {
      if (!spec.startsWith('.')) {
        packages.add(spec);
        continue;
      }
      const target = resolve(dirname(file), spec).replace(/\.js$/, '.ts');
      if (!existsSync(target)) throw new Error(`${relative(ROOT, file)} imports ${spec}, which resolves to no .ts file`);
      todo.push(target);
    }
  }
  return { files, packages };
}

describe('contracts module', () => {
  it('reaches no apache-arrow and no tfjs: only node built-ins and common/', () => {
    const g = importGraph('common/contracts.ts');
    expect(g.files).toContain('common/errors.ts');
    for (const f of g.files) expect(f.startsWith('common/')).toBe(true);
    for (const p of g.packages) {
      expect(p).not.toMatch(/apache-arrow|@tensorflow/);
      expect(p.startsWith('node:')).toBe(true);
    }
  });

  it('the import walk does see a package when one is reached (so the check above can fail)', () => {
    expect(importGraph('collect/schema.ts').packages.has('apache-arrow')).toBe(true);
    expect(importGraph('train/shard-reader.ts').packages.has('apache-arrow')).toBe(true);
  });

  it('holds the only definition of each contract in the sources', () => {
    const dirs = ['cli', 'common', 'checkpoints', 'datasets', 'runtime', 'collect', 'train', 'export', 'bench'];
    const copies: Record<string, RegExp> = {
      'shard format string': /['"`]dejavu-shard\/1['"`]/,
      'layer_XX name': /`layer_\$\{/,
      'parseLayers function': /^\s*(?:export\s+)?function parseLayers\b/m,
      'ShardDims type': /^\s*(?:export\s+)?(?:interface\s+ShardDims\b|type\s+ShardDims\s*=)/m,
      'Target type': /^\s*(?:export\s+)?type\s+Target\s*=/m,
      'PredictorInput type': /^\s*(?:export\s+)?type\s+PredictorInput\s*=/m,
    };
    const found: string[] = [];
    const walk = (dir: string) => {
      for (const name of readdirSync(dir)) {
        const p = join(dir, name);
        if (statSync(p).isDirectory()) walk(p);
        else if (p.endsWith('.ts') && relative(ROOT, p) !== join('common', 'contracts.ts')) {
          const src = readFileSync(p, 'utf8');
          for (const [what, re] of Object.entries(copies)) if (re.test(src)) found.push(`${relative(ROOT, p)}: ${what}`);
        }
      }
    };
    for (const d of dirs) if (existsSync(join(ROOT, d))) walk(join(ROOT, d));
    expect(found).toEqual([]);
  });

  it('names layer folders, shard files and predictor files, and reads the names back', () => {
    expect(layerDirName(3)).toBe('layer_03');
    expect(layerDirName(123)).toBe('layer_123');
    expect(layerOfDirName('layer_07')).toBe(7);
    expect(layerOfDirName('layer_123')).toBe(123);
    expect(layerOfDirName('layer_x')).toBeNull();
    expect(layerOfDirName('layer_03.tmp')).toBeNull();
    expect(shardFileName(12)).toBe('shard_00012.arrow');
    expect(shardIndexOfFileName('shard_00012.arrow')).toBe(12);
    expect(shardIndexOfFileName('.shard_00012.arrow.4242.tmp')).toBeNull();
    expect(predictorName(2, 'mlp')).toBe('layer_02.mlp');
    expect(predictorFileName(11, 'attn')).toBe('layer_11.attn.safetensors');
    expect(predictorOfFileName(predictorFileName(11, 'attn'))).toEqual({ layer: 11, target: 'attn' });
    expect(predictorOfFileName('layer_02.mlp.safetensors')).toEqual({ layer: 2, target: 'mlp' });
    expect(predictorOfFileName('layer_02.heads.safetensors')).toBeNull();
    expect(predictorOfFileName('.layer_02.mlp.safetensors.77.tmp')).toBeNull();
  });
});

describe('parseLayers', () => {
  it('reads all (or no flag), lists and ranges, sorted without duplicates', () => {
    expect(parseLayers('all', 4)).toEqual([0, 1, 2, 3]);
    expect(parseLayers(' all ', 2)).toEqual([0, 1]);
    expect(parseLayers(undefined, 3)).toEqual([0, 1, 2]);
    expect(parseLayers('0,3-5', 6)).toEqual([0, 3, 4, 5]);
    expect(parseLayers(' 5, 1-2 ,2', 6)).toEqual([1, 2, 5]);
    expect(parseLayers('all', [4, 1, 2])).toEqual([1, 2, 4]);
    expect(parseLayers('1-2,4', [0, 1, 2, 4])).toEqual([1, 2, 4]);
  });

  it('refuses layers the model lacks, naming --layers and the layer count', () => {
    expect(() => parseLayers('6', 6)).toThrow(/^--layers: layer 6 is out of range: the model has 6 layers \(0-5\)$/);
    expect(() => parseLayers('2-9', 6)).toThrow(/--layers: layer 9 is out of range/);
    // A huge range is refused before it is enumerated.
    expect(() => parseLayers('0-999999999999', 6)).toThrow(/layer 999999999999 is out of range/);
  });

  it('refuses layers the shards lack, holes included, naming the layers they hold', () => {
    expect(() => parseLayers('5', [0, 1, 2])).toThrow(/^--layers: layer 5 is not in the shards \(they hold layers 0-2\)$/);
    expect(() => parseLayers('0-4', [0, 1, 4])).toThrow(/^--layers: layers 2, 3 are not in the shards \(they hold layers 0-1, 4\)$/);
  });

  it('refuses reversed ranges, malformed parts and empty lists', () => {
    expect(() => parseLayers('3-1', 6)).toThrow(/^--layers: range 3-1 is reversed$/);
    expect(() => parseLayers('2-1', [0, 1, 2])).toThrow(/range 2-1 is reversed/);
    expect(() => parseLayers('a', 6)).toThrow(/--layers: 'a' is not a layer index or range/);
    expect(() => parseLayers('1-x', [0, 1, 2])).toThrow(/'1-x' is not a layer index/);
    expect(() => parseLayers('1,,2', 6)).toThrow(/'' is not a layer index/);
    expect(() => parseLayers('-1', 6)).toThrow(DejavuError);
    expect(() => parseLayers('', 6)).toThrow(DejavuError);
  });
});

/** metrics.json as train writes it (typed: a change of the contract type shows here). */
function trainMetrics(): TrainMetrics {
  const entry = (layer: number, target: 'mlp' | 'attn') => ({
    layer,
    target,
    recall: 0.99,
    precision: 0.4,
    f1: 0.57,
    true_active: 12.5,
    predicted_active: 30,
    k95: 20.5,
    k99: 28.25,
    tokens: 400,
    input: target === 'mlp' ? ('mlp_in' as const) : ('att_in' as const),
    lookahead: target === 'mlp' ? 0 : 1,
    input_layer: target === 'mlp' ? layer : layer - 1,
    rank: 8,
    input_norm: 'layernorm' as const,
    out: target === 'mlp' ? 64 : 4,
    k_label: target === 'mlp' ? null : 2,
    best_epoch: 2,
    epochs_run: 3,
    train_tokens: 3600,
    val_tokens: 400,
    positive_rate: 0.2,
    history: [{ epoch: 1, loss: 0.3, score: 0.8, recall: 0.9, precision: 0.4, seconds: 1.5 }],
  });
  return {
    model_fingerprint: 'f'.repeat(64),
    args: { rank: 8 },
    backend: 'wasm',
    layers: [entry(1, 'attn'), entry(1, 'mlp')],
    skipped: [{ layer: 0, target: 'mlp', reason: 'no positive labels' }],
    seconds: 12.5,
  };
}

describe('metrics.json (parseMetrics)', () => {
  const P = '/p/metrics.json';
  const bad = (edit: (m: Record<string, any>) => void) => {
    const m = JSON.parse(JSON.stringify(trainMetrics()));
    edit(m);
    return () => parseMetrics(m, P);
  };

  it('accepts what train writes', () => {
    const m = parseMetrics(JSON.parse(JSON.stringify(trainMetrics())), P);
    expect(m.model_fingerprint).toBe('f'.repeat(64));
    expect(m.args).toEqual({ rank: 8 });
    expect(m.layers.map((e) => [e.layer, e.target, e.k99, e.k_label])).toEqual([
      [1, 'attn', 28.25, 2],
      [1, 'mlp', 28.25, null],
    ]);
  });

  it('names the file and the missing or wrong key', () => {
    expect(() => parseMetrics([], P)).toThrow(/^\/p\/metrics\.json: the top level is \[\], expected a JSON object$/);
    expect(bad((m) => delete m.model_fingerprint)).toThrow(/^\/p\/metrics\.json: model_fingerprint is missing, expected a string$/);
    expect(bad((m) => (m.args = 3))).toThrow(/: args is 3, expected an object$/);
    expect(bad((m) => (m.layers = {}))).toThrow(/: layers is \{\}, expected an array$/);
    expect(bad((m) => delete m.layers[1].k99)).toThrow(/^\/p\/metrics\.json: layers\[1\]\.k99 is missing, expected a number >= 0$/);
    expect(bad((m) => (m.layers[0].k95 = '20'))).toThrow(/: layers\[0\]\.k95 is "20", expected a number >= 0$/);
    expect(bad((m) => (m.layers[0].target = 'heads'))).toThrow(/: layers\[0\]\.target is "heads", expected "mlp" or "attn"$/);
    expect(bad((m) => (m.layers[0].layer = -1))).toThrow(/: layers\[0\]\.layer is -1, expected an integer >= 0$/);
    expect(bad((m) => (m.layers[1].tokens = 1.5))).toThrow(/: layers\[1\]\.tokens is 1\.5, expected an integer >= 0$/);
    expect(bad((m) => (m.layers[1].k_label = 'x'))).toThrow(/: layers\[1\]\.k_label is "x", expected a number or null$/);
    expect(bad((m) => (m.layers[1] = 'x'))).toThrow(/: layers\[1\] is "x", expected an object$/);
    expect(bad((m) => (m.layers[1].target = 'attn'))).toThrow(/: layers\[1\] repeats layers\[0\] \(layer 1 attn\)$/);
    expect(bad((m) => (m.model_fingerprint = 'x'.repeat(100)))).not.toThrow();
    expect(bad((m) => (m.layers[0].recall = { a: 'y'.repeat(100) }))).toThrow(/recall is \{"a":"y+\.\.\., expected a number/);
  });
});

describe('export reads metrics.json through the validating reader', () => {
  const root = mkdtempSync(join(tmpdir(), 'dejavu-contracts-'));
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  it('refuses a metrics.json without k99, naming the file and the key', () => {
    const m = trainMetrics() as unknown as { layers: Record<string, unknown>[] };
    delete m.layers[0].k99;
    writeFileSync(join(root, 'metrics.json'), JSON.stringify(m));
    expect(() => readMetrics(root)).toThrow(new DejavuError('layers[0].k99 is missing, expected a number >= 0', join(root, 'metrics.json')));
  });
});
