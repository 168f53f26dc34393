/**
 * Parse and validate a Hugging Face OPT config.json into OptConfig. Optional keys take the defaults of transformers'
 * OPTConfig, so a config that transformers accepts loads the same model here.
 */
import { readFileSync } from 'node:fs';
import { DejavuError } from '../common/errors.js';
import type { OptConfig } from './types.js';

type Json = Record<string, unknown>;

export function parseOptConfig(path: string): OptConfig {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new DejavuError(code === 'ENOENT' ? 'file not found' : `cannot read (${code ?? String(e)})`, path);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new DejavuError(`not valid JSON (${(e as Error).message})`, path);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new DejavuError('not a JSON object', path);
  return optConfigFromJson(raw as Json, path);
}

/** Validate an already-parsed config object; `path` is only used in error messages. */
export function optConfigFromJson(c: Json, path: string): OptConfig {
  const int = (key: string, def?: number, min = 1): number => {
    const v = c[key] ?? def;
    if (v === undefined) throw new DejavuError(`missing required key "${key}"`, path);
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) {
      throw new DejavuError(`key "${key}" must be an integer >= ${min}, got ${JSON.stringify(v)}`, path);
    }
    return v;
  };
  const bool = (key: string, def: boolean): boolean => {
    const v = c[key] ?? def;
    if (typeof v !== 'boolean') throw new DejavuError(`key "${key}" must be true or false, got ${JSON.stringify(v)}`, path);
    return v;
  };

  if (c.model_type !== undefined && c.model_type !== 'opt') {
    throw new DejavuError(`model_type is ${JSON.stringify(c.model_type)}, expected "opt"`, path);
  }
  const hiddenSize = int('hidden_size');
  const numHeads = int('num_attention_heads');
  if (hiddenSize % numHeads !== 0) {
    throw new DejavuError(`hidden_size ${hiddenSize} is not divisible by num_attention_heads ${numHeads}`, path);
  }
  const activation = c.activation_function ?? 'relu';
  if (activation !== 'relu') {
    throw new DejavuError(`activation_function ${JSON.stringify(activation)} is not supported (only "relu")`, path);
  }
  // transformers 4.x writes torch_dtype, 5.x writes dtype; absent means the torch default (float32).
  const dtypeRaw = c.torch_dtype ?? c.dtype ?? 'float32';
  if (dtypeRaw !== 'float16' && dtypeRaw !== 'bfloat16' && dtypeRaw !== 'float32') {
    throw new DejavuError(`torch_dtype/dtype ${JSON.stringify(dtypeRaw)} is not one of float16, bfloat16, float32`, path);
  }
  const doLayerNormBefore = bool('do_layer_norm_before', true);
  return {
    vocabSize: int('vocab_size'),
    hiddenSize,
    numLayers: int('num_hidden_layers'),
    numHeads,
    headDim: hiddenSize / numHeads,
    ffnDim: int('ffn_dim'),
    maxPositionEmbeddings: int('max_position_embeddings'),
    // OPTConfig: word_embed_proj_dim defaults to hidden_size.
    wordEmbedProjDim: int('word_embed_proj_dim', hiddenSize),
    doLayerNormBefore,
    activation: 'relu',
    enableBias: bool('enable_bias', true),
    layerNormElementwiseAffine: bool('layer_norm_elementwise_affine', true),
    // OPTDecoder builds final_layer_norm only for pre-LN models that do not set _remove_final_layer_norm.
    hasFinalLayerNorm: doLayerNormBefore && !bool('_remove_final_layer_norm', false),
    tieWordEmbeddings: bool('tie_word_embeddings', true),
    bosTokenId: int('bos_token_id', 2, 0),
    eosTokenId: int('eos_token_id', 2, 0),
    padTokenId: int('pad_token_id', 1, 0),
    dtype: dtypeRaw,
  };
}
