import { afterAll, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { writeFileSync } from 'node:fs';
import { parseOptConfig } from '../../checkpoints/opt-config.js';
import { HAVE_FIXTURES, OPT_MINI } from '../helpers/fixtures.js';
import { tempDir, writeConfig, removeTempDirs } from './helpers/model-folder.js';

afterAll(removeTempDirs);

const base = {
  vocab_size: 100,
  hidden_size: 64,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  ffn_dim: 256,
  max_position_embeddings: 32,
};

function parse(cfg: Record<string, unknown>) {
  const dir = tempDir('cfg');
  writeConfig(dir, cfg);
  return parseOptConfig(join(dir, 'config.json'));
}

describe('parseOptConfig', () => {
  it.skipIf(!HAVE_FIXTURES)('reads opt-mini (transformers 5 writes `dtype`)', () => {
    const c = parseOptConfig(join(OPT_MINI, 'config.json'));
    expect(c).toMatchObject({ hiddenSize: 384, numHeads: 12, headDim: 32, ffnDim: 1536, numLayers: 6, vocabSize: 8192 });
    expect(c).toMatchObject({ dtype: 'float16', wordEmbedProjDim: 384, maxPositionEmbeddings: 2048, bosTokenId: 2, eosTokenId: 2, padTokenId: 1 });
  });

  it('accepts torch_dtype (transformers 4) or dtype, and applies OPTConfig defaults', () => {
    expect(parse({ ...base, torch_dtype: 'bfloat16' }).dtype).toBe('bfloat16');
    expect(parse({ ...base, dtype: 'float16' }).dtype).toBe('float16');
    const c = parse(base);
    expect(c.dtype).toBe('float32');
    expect(c).toMatchObject({
      wordEmbedProjDim: 64,
      doLayerNormBefore: true,
      hasFinalLayerNorm: true,
      enableBias: true,
      layerNormElementwiseAffine: true,
      tieWordEmbeddings: true,
      activation: 'relu',
      headDim: 16,
    });
  });

  it('opt-350m style: post-LN has no final LayerNorm; _remove_final_layer_norm removes it from a pre-LN model', () => {
    const post = parse({ ...base, do_layer_norm_before: false, word_embed_proj_dim: 32 });
    expect(post).toMatchObject({ doLayerNormBefore: false, hasFinalLayerNorm: false, wordEmbedProjDim: 32 });
    expect(parse({ ...base, _remove_final_layer_norm: true }).hasFinalLayerNorm).toBe(false);
  });

  it('config without hidden_size: error names config.json and the key', () => {
    const { hidden_size: _, ...cfg } = base;
    expect(() => parse(cfg)).toThrow(/config\.json: missing required key "hidden_size"/);
  });

  it('bad values name the key', () => {
    expect(() => parse({ ...base, num_attention_heads: 5 })).toThrow(/config\.json: hidden_size 64 is not divisible by num_attention_heads 5/);
    expect(() => parse({ ...base, ffn_dim: '256' })).toThrow(/config\.json: key "ffn_dim" must be an integer >= 1, got "256"/);
    expect(() => parse({ ...base, activation_function: 'gelu' })).toThrow(/config\.json: activation_function "gelu" is not supported/);
    expect(() => parse({ ...base, torch_dtype: 'int8' })).toThrow(/config\.json: torch_dtype\/dtype "int8" is not one of/);
    expect(() => parse({ ...base, model_type: 'gpt2' })).toThrow(/config\.json: model_type is "gpt2", expected "opt"/);
    expect(() => parse({ ...base, do_layer_norm_before: 'yes' })).toThrow(/config\.json: key "do_layer_norm_before" must be true or false/);
  });

  it('missing file and invalid JSON', () => {
    expect(() => parseOptConfig('/nonexistent/config.json')).toThrow('/nonexistent/config.json: file not found');
    const dir = tempDir('cfg');
    writeFileSync(join(dir, 'config.json'), '{"hidden_size": 64,');
    expect(() => parseOptConfig(join(dir, 'config.json'))).toThrow(/config\.json: not valid JSON/);
  });
});
