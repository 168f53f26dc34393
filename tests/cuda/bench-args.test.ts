import { describe, expect, it } from 'vitest';
import { Command } from 'commander';
import { benchMainCommand, parseArgs } from '../../runtime/cuda/bench-main.js';
import { formatBench, parseDensity, register } from '../../cli/commands/bench.js';
import { mlpSelectionRule, runCudaBench } from '../../runtime/cuda/bench.js';
import { CudaEngine } from '../../runtime/cuda/engine.js';
import { builtLibPath, defaultLibPath, loadCudaLib, optionsStruct, packageRootOf } from '../../runtime/cuda/lib.js';
import { DejavuError } from '../../common/errors.js';
import type { OptConfig } from '../../checkpoints/types.js';
import { join } from 'node:path';
import { REPO_ROOT } from '../helpers/fixtures.js';

// bench-main parses with the CLI's own definition; commander's errors also go to stderr, kept quiet here.
const quietly = <T>(f: () => T): T => {
  const write = process.stderr.write;
  process.stderr.write = (() => true) as typeof process.stderr.write;
  try {
    return f();
  } finally {
    process.stderr.write = write;
  }
};

describe('CUDA bench arguments (checked before any GPU work)', () => {
  it('parses --density and the rest', () => {
    expect(parseDensity('mlp=0.05,heads=0.2')).toEqual({ mlp: 0.05, heads: 0.2 });
    expect(parseDensity('mlp=0.1')).toEqual({ mlp: 0.1, heads: 1 });
    const o = parseArgs(['--shape', 'opt-13b', '--density', 'mlp=0.05,heads=0.2', '--prompt', '64', '--gen', '32', '--json']);
    expect(o).toMatchObject({ shape: 'opt-13b', prompt: 64, gen: 32, json: true, density: { mlp: 0.05, heads: 0.2 }, reps: 3 });
    expect(parseArgs(['--shape', 'opt-13b', '--reps', '5', '--seed', '7', '--out', 'r.json'])).toMatchObject({ reps: 5, seed: 7, out: 'r.json', prompt: 128, gen: 128, json: false });
  });

  it('rejects malformed arguments naming the flag', () => {
    expect(() => parseDensity('attn=0.2')).toThrow(/--density/);
    expect(() => parseDensity('mlp=x')).toThrow(DejavuError);
    expect(() => parseArgs(['--prompt', '1.5'])).toThrow(/--prompt/);
    expect(() => quietly(() => parseArgs(['--shape']))).toThrow(/--shape.*missing/);
    expect(() => quietly(() => parseArgs(['--frobnicate']))).toThrow(/--frobnicate/);
    expect(() => quietly(() => parseArgs(['--shape', 'opt-13b', '--path', 'fast']))).toThrow(/--path.*auto, streamed, portable/);
  });

  it('--mlp-input, --mlp-select and --path are parsed', () => {
    expect(parseArgs(['--shape', 'opt-13b', '--mlp-input', 'prev_att_in']).mlpInput).toBe('prev_att_in');
    expect(parseArgs(['--shape', 'opt-13b', '--mlp-select', 'grouped']).mlpSelect).toBe('grouped');
    expect(parseArgs(['--shape', 'opt-13b', '--path', 'portable']).path).toBe('portable');
    expect(parseArgs(['--shape', 'opt-13b']).path).toBeUndefined();
  });

  it('dejavu bench defines the same CUDA options as bench-main (one definition)', () => {
    const program = new Command();
    register(program);
    const bench = program.commands.find((c) => c.name() === 'bench')!;
    const flags = (c: Command) => c.options.map((o) => o.long);
    const cuda = ['--shape', '--model', '--bundle', '--density', '--prompt', '--gen', '--mlp-input', '--mlp-select', '--path', '--kv-policy', '--sweep', '--rank', '--json'];
    for (const f of cuda) {
      expect(flags(bench)).toContain(f);
      expect(flags(benchMainCommand())).toContain(f);
    }
    expect(flags(benchMainCommand())).toEqual(expect.arrayContaining(['--reps', '--out', '--seed']));
  });

  it('runCudaBench refuses inconsistent requests before loading the library', async () => {
    const base = { prompt: 8, gen: 8, json: true };
    await expect(runCudaBench({ ...base })).rejects.toThrow(/--shape/);
    await expect(runCudaBench({ ...base, shape: 'opt-13b', bundle: 'b' })).rejects.toThrow(/--bundle needs --model/);
    await expect(runCudaBench({ ...base, shape: 'opt-13b', gen: 0 })).rejects.toThrow(/--gen/);
    await expect(runCudaBench({ ...base, shape: 'opt-13b', density: { mlp: 0, heads: 0.2 } })).rejects.toThrow(/--density/);
    await expect(runCudaBench({ ...base, shape: 'opt-13b', mlpInput: 'nowhere' as 'att_in' })).rejects.toThrow(/--mlp-input.*expected one of/);
    await expect(runCudaBench({ ...base, model: 'm', bundle: 'b', mlpInput: 'att_in' })).rejects.toThrow(/--mlp-input.*bundle records/);
    await expect(runCudaBench({ ...base, shape: 'opt-13b', mlpSelect: 'fast' as 'exact' })).rejects.toThrow(/--mlp-select.*exact or grouped/);
    await expect(runCudaBench({ ...base, shape: 'opt-13b', rank: 100 })).rejects.toThrow(/--rank.*multiple of 8/);
    await expect(runCudaBench({ ...base, model: 'm', bundle: 'b', rank: 64 })).rejects.toThrow(/--rank.*random predictors/);
    await expect(runCudaBench({ ...base, shape: 'opt-13b', path: 'fast' as 'auto' })).rejects.toThrow(/--path.*auto, streamed, portable/);
    await expect(runCudaBench({ ...base, shape: 'opt-13b', path: 'portable', mlpSelect: 'grouped' })).rejects.toThrow(/--mlp-select.*streamed kernels/);
    for (const mlpInput of ['mlp_in', 'prev_mlp_in'] as const)
      await expect(runCudaBench({ ...base, shape: 'opt-13b', mlpInput, mlpSelect: 'grouped' })).rejects.toThrow(
        new RegExp(`--mlp-select.*grouped needs MLP predictors that read att_in; --mlp-input ${mlpInput} gets the exact top-k`),
      );
    // att_in and prev_att_in pass this check (and fail later: no GPU here)
    for (const mlpInput of ['att_in', 'prev_att_in'] as const)
      await expect(runCudaBench({ ...base, shape: 'opt-13b', mlpInput, mlpSelect: 'grouped' })).rejects.not.toThrow(/needs MLP predictors/);
  });

  it('runCudaBench refuses --mlp-select grouped with a bundle whose MLP predictors cannot run it, before the GPU', async () => {
    const base = { prompt: 8, gen: 8, json: true, model: 'no-such-model', mlpSelect: 'grouped' as const };
    const mlpIn = join(REPO_ROOT, 'examples', 'opt-mini-bundle');
    await expect(runCudaBench({ ...base, bundle: mlpIn })).rejects.toThrow(
      new RegExp(`^${mlpIn}: --mlp-select grouped needs MLP predictors that read att_in .*layers 1, 2, 3, 4, 5: reads mlp_in`),
    );
    // the att_in bundle passes this check (and fails later: no GPU here, or no such model)
    const attIn = join(REPO_ROOT, 'examples', 'opt-mini-bundle-att-in');
    await expect(runCudaBench({ ...base, bundle: attIn })).rejects.not.toThrow(/needs MLP predictors/);
  });
});

describe('CudaEngine.dimsOf: the OPT variants the CUDA runtime supports', () => {
  const config: OptConfig = {
    vocabSize: 8192, hiddenSize: 384, numLayers: 6, numHeads: 12, headDim: 32, ffnDim: 1536, maxPositionEmbeddings: 2048,
    wordEmbedProjDim: 384, doLayerNormBefore: true, activation: 'relu', enableBias: true, layerNormElementwiseAffine: true,
    hasFinalLayerNorm: true, tieWordEmbeddings: true, bosTokenId: 2, eosTokenId: 2, padTokenId: 1, dtype: 'float16',
  };
  it('maps a pre-LN OPT config to engine dims', () => {
    expect(CudaEngine.dimsOf({ config, dir: 'm' })).toEqual({ vocab: 8192, d: 384, layers: 6, heads: 12, ffn: 1536, maxPos: 2048 });
  });
  it('maps every variant; the streamed kernels (the grouped top-k) name the forms they cannot take', () => {
    const post = { ...config, doLayerNormBefore: false, hasFinalLayerNorm: false, wordEmbedProjDim: 256 };
    expect(CudaEngine.dimsOf({ config: post, dir: 'opt-350m' }).d).toBe(384);
    expect(CudaEngine.streamedProblem(config)).toBeUndefined();
    expect(CudaEngine.streamedProblem(post)).toMatch(/post-LayerNorm.*project_in\/out \(word_embed_proj_dim 256 != hidden_size 384\).*no final LayerNorm.*portable kernels/);
    expect(CudaEngine.streamedProblem({ ...config, hasFinalLayerNorm: false })).toMatch(/has no final LayerNorm/);
  });
});

describe('CUDA bench: the MLP selection it reports', () => {
  it('describes each selection in one line', () => {
    expect(mlpSelectionRule('exact')).toMatch(/^one top-k over all neurons/);
    expect(mlpSelectionRule('grouped')).toMatch(/its share of k.*groupedTopK/);
  });
});

describe('CUDA engine options (lib.ts): the C struct DjOptions', () => {
  it('maps the defaults to zeros (auto path, exact top-k, KV of every head)', () => {
    expect(optionsStruct()).toEqual({ path: 0, selection: 0, kv_policy: 0 });
    expect(optionsStruct({})).toEqual({ path: 0, selection: 0, kv_policy: 0 });
  });
  it('maps each option to engine.cu\'s enum values', () => {
    expect(optionsStruct({ path: 'streamed', selection: 'grouped', kvPolicy: 'selected' })).toEqual({ path: 1, selection: 1, kv_policy: 1 });
    expect(optionsStruct({ path: 'portable' })).toEqual({ path: 2, selection: 0, kv_policy: 0 });
  });
  it('refuses an unknown value naming the option', () => {
    expect(() => optionsStruct({ path: 'fast' as 'auto' })).toThrow(/--path.*'fast'/);
    expect(() => optionsStruct({ selection: 'some' as 'exact' })).toThrow(/--mlp-select/);
  });
});

describe('CUDA library location', () => {
  it('is <package>/runtime/cuda/build in the source tree, a compiled tree, and the GPU machine\'s pruned copy', () => {
    expect(packageRootOf('/p/runtime/cuda')).toBe('/p');
    expect(packageRootOf('/p/dist/runtime/cuda')).toBe('/p');
    expect(packageRootOf('/p/.devnm/dist/runtime/cuda')).toBe('/p');
    expect(packageRootOf('/x/node_modules/dejavu-ts/dist/runtime/cuda')).toBe('/x/node_modules/dejavu-ts');
    expect(builtLibPath('/x/node_modules/dejavu-ts/dist/runtime/cuda')).toBe('/x/node_modules/dejavu-ts/runtime/cuda/build/libdejavu_cuda.so');
  });
  it('DEJAVU_CUDA_LIB overrides it; otherwise the built path, never outside the package', () => {
    expect(defaultLibPath({ DEJAVU_CUDA_LIB: '/opt/lib.so' })).toBe('/opt/lib.so');
    expect(defaultLibPath({})).toBe(join(REPO_ROOT, 'runtime', 'cuda', 'build', 'libdejavu_cuda.so'));
  });
  it('a missing library names the path and the build command', async () => {
    const missing = join(REPO_ROOT, 'no-such-dir', 'libdejavu_cuda.so');
    await expect(loadCudaLib(missing)).rejects.toThrow(/no-such-dir\/libdejavu_cuda\.so: CUDA library not built; run `npm run build:cuda`.*it writes .*runtime\/cuda\/build\/libdejavu_cuda\.so/);
  });
});

describe('formatBench on a CUDA result', () => {
  it('prints no KV policy cost line for the CUDA bench (its kv_policy is a name, not the CPU bench\'s cost object)', () => {
    const text = formatBench({ device: 'GPU', dense: { ms_per_token: 2 }, sparse: { ms_per_token: 1 }, kv_policy: 'selected' });
    expect(text).not.toMatch(/KV policy cost/);
    expect(formatBench({ device: 'cpu', kv_policy: { extra_ms_per_token: 0.5 } })).toMatch(/KV policy cost.*0\.500 ms/);
  });
});
