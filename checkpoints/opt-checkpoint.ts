/**
 * Load a Hugging Face OPT model folder: config.json + weights (model.safetensors, sharded safetensors via
 * model.safetensors.index.json, pytorch_model.bin, or sharded .bin via pytorch_model.bin.index.json) -> OptCheckpoint
 * with fp32 weights and the model fingerprint. Tensors are read and converted one at a time from an open fd, so the
 * peak is the fp32 model plus one tensor, never a second copy of the file.
 */
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { DejavuError } from '../common/errors.js';
import { debug, progressBar } from '../common/progress.js';
import { computeFingerprint, modelFingerprint } from './fingerprint.js';
import { parseOptConfig } from './opt-config.js';
import { assembleWeights, canonicalName, expectedTensors, LM_HEAD } from './opt-names.js';
import { safetensorsSource, shardedSource, type SourceTensor, type TensorSource } from './tensor-source.js';
import { torchBinSource } from './torch-bin.js';
import type { OptCheckpoint } from './types.js';
import {
  combineTensorHashes,
  readCachedWeightsHash,
  tensorSha256,
  weightsCacheKey,
  writeCachedWeightsHash,
  type HashedTensor,
} from './weights-hash.js';
import { bytesToFloat32 } from './safetensors.js';


/** Weight file names, in the order transformers prefers them. */
export const WEIGHT_FILE_NAMES = ['model.safetensors', 'model.safetensors.index.json', 'pytorch_model.bin', 'pytorch_model.bin.index.json'] as const;

const WEIGHT_FILES: [(typeof WEIGHT_FILE_NAMES)[number], (path: string) => TensorSource][] = [
  ['model.safetensors', safetensorsSource],
  ['model.safetensors.index.json', (p) => shardedSource(p, 'safetensors-sharded', safetensorsSource)],
  ['pytorch_model.bin', torchBinSource],
  ['pytorch_model.bin.index.json', (p) => shardedSource(p, 'pytorch-bin-sharded', torchBinSource)],
];

/** Open the weights of a model folder as a TensorSource (the first weight file found, in transformers' order). */
export function openWeights(dir: string): TensorSource {
  for (const [file, open] of WEIGHT_FILES) {
    const p = join(dir, file);
    if (existsSync(p)) return open(p);
  }
  throw new DejavuError(`no weights found (looked for ${WEIGHT_FILES.map(([f]) => f).join(', ')})`, dir);
}

const FLOAT_DTYPES = new Set(['F16', 'BF16', 'F32']);

export interface LoadOptions {
  /** Suppress the progress bar. */
  quiet?: boolean;
}

export async function loadOptCheckpoint(dir: string, opts: LoadOptions = {}): Promise<OptCheckpoint> {
  if (!existsSync(dir)) throw new DejavuError('model folder not found', dir);
  if (!statSync(dir).isDirectory()) throw new DejavuError('not a folder (expected a Hugging Face model folder)', dir);
  const config = parseOptConfig(join(dir, 'config.json'));
  const source = openWeights(dir);
  try {
    // Map canonical names to stored tensors; two stored names for one tensor (e.g. `model.decoder.x` and
    // `decoder.x`) would make the choice arbitrary, so refuse.
    const byCanonical = new Map<string, SourceTensor>();
    for (const t of source.tensors()) {
      const c = canonicalName(t.name);
      if (c === undefined) continue; // e.g. buffers of other heads; transformers ignores unexpected keys too
      const prev = byCanonical.get(c);
      if (prev) throw new DejavuError(`tensor ${c} is stored twice (as ${prev.name} and ${t.name})`, t.file);
      byCanonical.set(c, t);
    }
    const expected = expectedTensors(config);
    const used: SourceTensor[] = [];
    for (const e of expected) {
      const t = byCanonical.get(e.name);
      if (!t) {
        throw new DejavuError(`missing tensor ${e.name} (looked for model.${e.name} and ${e.name})`, source.path);
      }
      if (!FLOAT_DTYPES.has(t.dtype)) {
        throw new DejavuError(`tensor ${t.name} has dtype ${t.dtype}; only F16, BF16 and F32 weights are supported`, t.file);
      }
      if (t.shape.length !== e.shape.length || t.shape.some((s, i) => s !== e.shape[i])) {
        throw new DejavuError(
          `tensor ${t.name} has shape [${t.shape.join(', ')}] but config.json implies [${e.shape.join(', ')}]`,
          t.file,
        );
      }
      used.push(t);
    }

    // weights_sha256 from the cache, or hashed from the bytes this load reads anyway (weights-hash.ts).
    const cacheKey = weightsCacheKey(source.files, used.map((t) => t.name));
    let weightsSha256 = readCachedWeightsHash(cacheKey);
    const hashed: HashedTensor[] = [];
    const bar = progressBar('load', used.length + 1, 'tensors', opts.quiet);
    const weights = assembleWeights(config, (name) => {
      const t = byCanonical.get(name)!;
      const raw = source.readStored(t.name);
      if (weightsSha256 === undefined) hashed.push({ name, dtype: t.dtype, shape: t.shape, sha256: tensorSha256(raw) });
      const x = bytesToFloat32(raw, t.dtype, t.file, t.name);
      bar.increment();
      return x;
    });
    if (weightsSha256 === undefined) {
      weightsSha256 = combineTensorHashes(hashed);
      if (!writeCachedWeightsHash(cacheKey, weightsSha256, source.files)) debug(`weights hash of ${dir} not cached (cache folder unusable)`);
    }
    // A tied model may still store lm_head (torch.save of a state dict does); it must then be the embedding.
    const lm = byCanonical.get(LM_HEAD);
    if (config.tieWordEmbeddings && lm) {
      const shape = [config.vocabSize, config.wordEmbedProjDim];
      if (lm.shape.length !== 2 || lm.shape[0] !== shape[0] || lm.shape[1] !== shape[1]) {
        throw new DejavuError(`tensor ${lm.name} has shape [${lm.shape.join(', ')}], expected [${shape.join(', ')}]`, lm.file);
      }
      const head = source.readFloat32(lm.name);
      if (!sameValues(head, weights.embedTokens)) {
        throw new DejavuError(
          `tensor ${lm.name} differs from decoder.embed_tokens.weight but config.json sets tie_word_embeddings`,
          lm.file,
        );
      }
    }
    bar.increment();
    bar.stop();

    const architectureFingerprint = computeFingerprint(
      config,
      used.map((t) => ({ name: canonicalName(t.name)!, shape: t.shape, dtype: t.dtype })),
    );
    const fingerprint = modelFingerprint(architectureFingerprint, weightsSha256);
    return { dir, config, weights, fingerprint, architectureFingerprint, weightsSha256, format: source.format };
  } finally {
    source.close();
  }
}

/** Bitwise-equal comparison (NaN-safe) of two fp32 arrays. */
function sameValues(a: Float32Array, b: Float32Array): boolean {
  if (a.length !== b.length) return false;
  const ua = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const ub = new Uint32Array(b.buffer, b.byteOffset, b.length);
  for (let i = 0; i < ua.length; i++) if (ua[i] !== ub[i]) return false;
  return true;
}
