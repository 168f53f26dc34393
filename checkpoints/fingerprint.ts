/**
 * The model fingerprint that binds shards, predictors and bundles to one model's weights. Two parts:
 * - the architecture fingerprint: SHA-256 (hex) of a canonical JSON of the architecture fields of the config plus the
 *   sorted list of (canonical name, shape, storage dtype) of the tensors the model reads. Canonical names (no
 *   `model.` prefix) and the exclusion of a tied lm_head make it independent of the file format; storing the weights
 *   as bf16 or fp32 instead of fp16 changes it (dtype is part of it). Alone, it was the whole fingerprint before
 *   weights were hashed, so artifacts of that time carry it and are recognised by it (`fingerprintMismatch`);
 * - `weights_sha256` (weights-hash.ts): the content hash of those tensors' bytes, equally format-independent.
 * The model fingerprint is SHA-256 of both (`modelFingerprint`): same architecture with one weight changed gives
 * another fingerprint.
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

/** The architecture fingerprint (no weight values). */
export function computeFingerprint(config: OptConfig, tensors: FingerprintTensor[]): string {
  return createHash('sha256').update(fingerprintPayload(config, tensors)).digest('hex');
}

/** The model fingerprint: architecture and weight values. */
export function modelFingerprint(architecture: string, weightsSha256: string): string {
  return createHash('sha256')
    .update(JSON.stringify({ format: 'dejavu-fingerprint/2', architecture, weights_sha256: weightsSha256 }))
    .digest('hex');
}

/** What an artifact is checked against: a loaded model's identity. */
export interface ModelIdentity {
  dir: string;
  fingerprint: string;
  architectureFingerprint: string;
  weightsSha256: string;
}

/** What an artifact (shard manifest, collect state, metrics.json, bundle manifest) recorded about its model. */
export interface RecordedModel {
  fingerprint: unknown;
  /** Absent in artifacts that do not record it (and in those written before weights were hashed). */
  weightsSha256?: unknown;
  /** The model folder the artifact names, when it names one. */
  model?: unknown;
}

const short = (x: unknown) => `${String(x).slice(0, 16)}…`;

/**
 * null when the artifact belongs to `m`; otherwise the reason, one line naming both sides: what the artifact recorded
 * ("recorded here": the caller throws with the artifact's path, and the model folder it names, if any) and the model
 * folder it is checked against. `what` names the artifact ("shards", "predictors", "a bundle"); `fix` ends a mismatch,
 * `rebuild` the message for an artifact written before weights were hashed (its weights cannot be known, so it is
 * refused too, with how to rebuild it).
 */
export function fingerprintMismatch(what: string, rec: RecordedModel, m: ModelIdentity, fix: string, rebuild: string): string | null {
  if (rec.fingerprint === m.fingerprint) return null;
  const here = `recorded here${typeof rec.model === 'string' && rec.model ? ` (model ${rec.model})` : ''}`;
  if (rec.fingerprint === m.architectureFingerprint) {
    return (
      `${what} from before fingerprints covered the weights: model_fingerprint ${short(rec.fingerprint)} ${here} is ` +
      `${m.dir}'s architecture alone (no weights_sha256): the weights behind it are unknown; ${rebuild}`
    );
  }
  if (typeof rec.weightsSha256 === 'string' && rec.weightsSha256 !== m.weightsSha256) {
    return `${what} for other weights: weights_sha256 ${short(rec.weightsSha256)} ${here}, ${short(m.weightsSha256)} in ${m.dir}; ${fix}`;
  }
  // Same weight bytes but another fingerprint: the config or the dtypes differ. Without a recorded weights hash
  // (predictors record only the fingerprint) either may differ.
  const kind = typeof rec.weightsSha256 === 'string' ? 'another architecture (config or dtypes)' : 'another model or other weights';
  return (
    `${what} for ${kind}: model_fingerprint ${short(rec.fingerprint)} ${here}, ${short(m.fingerprint)} for ${m.dir} ` +
    `(weights_sha256 ${short(m.weightsSha256)}); ${fix}`
  );
}
