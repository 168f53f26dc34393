/**
 * The model fingerprint that binds shards, predictors and bundles to one model: SHA-256 (hex) of a canonical JSON of
 * the architecture fields of the config plus the sorted list of (canonical name, shape, storage dtype) of the tensors
 * the model reads. Canonical names (no `model.` prefix) and the exclusion of a tied lm_head make it independent of the
 * file format: the same fp16 weights as model.safetensors, sharded safetensors or pytorch_model.bin give the same
 * fingerprint; storing them as bf16 or fp32 gives a different one (dtype is part of it, as issue 2 specifies).
 * It does not hash weight values: two models of identical shape and dtype share a fingerprint.
 */
import { createHash } from 'node:crypto';
import type { StDtype } from './safetensors.js';
import type { OptConfig } from './types.js';

/** Config fields that change the computation; token ids and the declared dtype do not (tensor dtypes carry that). */
const CONFIG_FIELDS = [
  'vocabSize',
  'hiddenSize',
  'numLayers',
  'numHeads',
  'ffnDim',
  'maxPositionEmbeddings',
  'wordEmbedProjDim',
  'doLayerNormBefore',
  'activation',
  'enableBias',
  'layerNormElementwiseAffine',
  'hasFinalLayerNorm',
  'tieWordEmbeddings',
] as const satisfies readonly (keyof OptConfig)[];

export interface FingerprintTensor {
  name: string;
  shape: number[];
  dtype: StDtype;
}

/** The exact string that is hashed (exported so docs and tests can show it). */
export function fingerprintPayload(config: OptConfig, tensors: FingerprintTensor[]): string {
  const cfg: Record<string, unknown> = {};
  for (const k of CONFIG_FIELDS) cfg[k] = config[k];
  const list = [...tensors]
    .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
    .map((t) => [t.name, t.shape, t.dtype]);
  return JSON.stringify({ format: 'dejavu-fingerprint/1', config: cfg, tensors: list });
}

export function computeFingerprint(config: OptConfig, tensors: FingerprintTensor[]): string {
  return createHash('sha256').update(fingerprintPayload(config, tensors)).digest('hex');
}
