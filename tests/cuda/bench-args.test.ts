import { describe, expect, it } from 'vitest';
import { parseArgs, parseDensity } from '../../runtime/cuda/bench-main.js';
import { mlpSelection, runCudaBench } from '../../runtime/cuda/bench.js';
import { CudaEngine } from '../../runtime/cuda/engine.js';
import { DejavuError } from '../../common/errors.js';
import type { OptConfig } from '../../checkpoints/types.js';

describe('CUDA bench arguments (checked before any GPU work)', () => {
  it('parses --density and the rest', () => {
    expect(parseDensity('mlp=0.05,heads=0.2')).toEqual({ mlp: 0.05, heads: 0.2 });
    expect(parseDensity('mlp=0.1')).toEqual({ mlp: 0.1, heads: 1 });
    const o = parseArgs(['--shape', 'opt-13b', '--density', 'mlp=0.05,heads=0.2', '--prompt', '64', '--gen', '32', '--json']);
    expect(o).toMatchObject({ shape: 'opt-13b', prompt: 64, gen: 32, json: true, density: { mlp: 0.05, heads: 0.2 } });
  });

  it('rejects malformed arguments with a DejavuError naming the flag', () => {
    expect(() => parseDensity('attn=0.2')).toThrow(/--density/);
    expect(() => parseDensity('mlp=x')).toThrow(DejavuError);
    expect(() => parseArgs(['--prompt', '1.5'])).toThrow(/--prompt/);
    expect(() => parseArgs(['--shape'])).toThrow(/--shape.*missing/);
    expect(() => parseArgs(['--frobnicate'])).toThrow(/--frobnicate/);
  });

  it('--mlp-input is parsed', () => {
    expect(parseArgs(['--shape', 'opt-13b', '--mlp-input', 'prev_att_in']).mlpInput).toBe('prev_att_in');
    expect(parseArgs(['--shape', 'opt-13b', '--mlp-select', 'grouped']).mlpSelect).toBe('grouped');
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
  it('refuses post-LN (opt-350m) and project_in/out with the model folder named', () => {
    expect(() => CudaEngine.dimsOf({ config: { ...config, doLayerNormBefore: false }, dir: 'opt-350m' })).toThrow(/opt-350m.*pre-LayerNorm/);
    expect(() => CudaEngine.dimsOf({ config: { ...config, wordEmbedProjDim: 512 }, dir: 'm' })).toThrow(/project_in/);
  });
});

describe('CUDA bench: the MLP selection it reports', () => {
  it('is grouped only when the fused predictors run with DEJAVU_CUDA_PF_LOCAL=1', () => {
    expect(mlpSelection({})).toMatch(/^exact top-k/);
    expect(mlpSelection({ DEJAVU_CUDA_PF_LOCAL: '1' })).toMatch(/^exact top-k/);
    expect(mlpSelection({ DEJAVU_CUDA_PFUSE: '1', DEJAVU_CUDA_PF_LOCAL: '1' })).toMatch(/^grouped top-k.*warp-max rounds/);
    expect(mlpSelection({ DEJAVU_CUDA_PFUSE: '1', DEJAVU_CUDA_PF_LOCAL: '1', DEJAVU_CUDA_PF_SEL: '0' })).toMatch(/bitwise/);
  });
});
