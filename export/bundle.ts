/**
 * The bundle: what export writes and every runtime (CPU sparse, CUDA) reads. A folder with
 *   manifest.json          format + version, the model fingerprint and dims, one entry per layer (docs/bundle.md)
 *   predictors.safetensors fp16 predictor weights, `layers.L.{mlp|attn}.{w1|w2}`
 * `loadBundle` refuses anything it cannot use exactly: unknown format/version, another model, wrong shapes, missing
 * tensors. A runtime never substitutes a random or dense predictor for a missing one: a layer is dense only when the
 * manifest says so.
 */
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { tempPathFor, writeJsonAtomic } from '../common/atomic.js';
import { DejavuError, rethrowFs } from '../common/errors.js';
import { SafetensorsFile, writeSafetensors, type TensorToWrite } from '../checkpoints/safetensors.js';
import { fingerprintMismatch } from '../checkpoints/fingerprint.js';
import type { OptCheckpoint } from '../checkpoints/types.js';
import type { InputNorm, PredictorInput, Target } from '../common/contracts.js';


/** What a bundle is checked against: a loaded model's identity and config (a checkpoint on the host, or one streamed to the GPU). */
export type LoadedModelIdentity = Pick<OptCheckpoint, 'dir' | 'config' | 'fingerprint' | 'architectureFingerprint' | 'weightsSha256'>;
export const BUNDLE_FORMAT = 'dejavu-bundle';
export const BUNDLE_VERSION = 1;
export const MANIFEST_FILE = 'manifest.json';
export const TENSORS_FILE = 'predictors.safetensors';

export interface DenseEntry {
  dense: true;
  /** Why the layer stays dense (e.g. "no predictor trained"). */
  reason: string;
}

export interface PredictorEntry {
  dense: false;
  /** The hidden state the predictor reads, taken at layer `layer - lookahead`. */
  input: PredictorInput;
  /** 0 = reads this layer's own `input`; 1 = reads layer l-1's (computed one layer ahead, DejaVu's lookahead). */
  lookahead: number;
  rank: number;
  /** How many neurons (mlp) or heads (attn) a decode step keeps. */
  k: number;
  /** How k was chosen: "k99" / "k95" (smallest k reaching that recall on the validation split) or "fixed". */
  k_rule: string;
  /** Predictor preprocessing of the input before w1, recorded from training (see docs/bundle.md). */
  input_norm: InputNorm;
  /** Tensor names in predictors.safetensors. */
  w1: string;
  w2: string;
  /** Validation metrics of this predictor, copied from metrics.json. */
  metrics: Record<string, number | null>;
}

export type LayerTargetEntry = DenseEntry | PredictorEntry;

export interface BundleManifest {
  format: typeof BUNDLE_FORMAT;
  version: number;
  model_fingerprint: string;
  /** The weights part of the fingerprint; absent in bundles exported before weights were hashed (refused against a
   *  model, with how to rebuild them). */
  weights_sha256?: string;
  model: { n_layers: number; d_model: number; n_heads: number; head_dim: number; ffn_dim: number };
  dtype: 'float16';
  created: string;
  /** The export arguments and predictor folder, for provenance. */
  source: Record<string, unknown>;
  layers: { layer: number; mlp: LayerTargetEntry; attn: LayerTargetEntry }[];
  /** The quality measured at export on calibration documents (`--ppl-budget`, or `--calib-data`; export/quality.ts). */
  quality?: Record<string, unknown>;
}

/** A predictor ready to run: fp32 weights (converted from the bundle's fp16) plus its manifest entry. */
export interface LoadedPredictor extends PredictorEntry {
  layer: number;
  target: Target;
  /** [rank][d] */
  w1f: Float32Array;
  /** [out][rank], out = ffn (mlp) or n_heads (attn) */
  w2f: Float32Array;
  out: number;
  /** The layer whose `input` hidden state feeds this predictor (layer - lookahead). */
  sourceLayer: number;
}

export interface Bundle {
  dir: string;
  manifest: BundleManifest;
  /** Per layer: the loaded predictor, or null when the manifest marks the target dense. */
  mlp: (LoadedPredictor | null)[];
  attn: (LoadedPredictor | null)[];
}

export function tensorName(layer: number, target: Target, w: 'w1' | 'w2'): string {
  return `layers.${layer}.${target}.${w}`;
}

/**
 * Write a bundle folder. Both files are first written in full under temporary names beside their final ones, so a
 * full disk or a read-only folder fails before an existing bundle is touched. Then the old manifest is removed (the
 * folder reads as unfinished), predictors.safetensors renamed into place, manifest.json last (its presence marks a
 * complete bundle).
 */
export function writeBundle(dir: string, manifest: BundleManifest, tensors: Record<string, TensorToWrite>): void {
  try {
    mkdirSync(dir, { recursive: true });
  } catch (e) {
    rethrowFs(e, dir);
  }
  const tpath = join(dir, TENSORS_FILE);
  const mpath = join(dir, MANIFEST_FILE);
  const stagedT = tempPathFor(join(dir, `${TENSORS_FILE}.staged`));
  const stagedM = tempPathFor(join(dir, `${MANIFEST_FILE}.staged`));
  try {
    try {
      writeSafetensors(stagedT, tensors, {
        format: BUNDLE_FORMAT,
        version: String(BUNDLE_VERSION),
        model_fingerprint: manifest.model_fingerprint,
      });
    } catch (e) {
      rethrowFs(e, tpath);
    }
    writeJsonAtomic(stagedM, manifest, mpath);
    try {
      rmSync(mpath, { force: true });
      renameSync(stagedT, tpath);
      renameSync(stagedM, mpath);
    } catch (e) {
      rethrowFs(e, dir);
    }
  } finally {
    rmSync(stagedT, { force: true });
    rmSync(stagedM, { force: true });
  }
}

/** Read and validate manifest.json alone (no tensors): for `dejavu export --json` summaries and the CUDA loader. */
export function readManifest(dir: string): BundleManifest {
  const path = join(dir, MANIFEST_FILE);
  if (!existsSync(dir)) throw new DejavuError('bundle folder not found', dir);
  if (!existsSync(path)) throw new DejavuError(`missing ${MANIFEST_FILE} (not a bundle, or export did not finish)`, path);
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    throw new DejavuError(`invalid JSON (${(e as Error).message})`, path);
  }
  return validateManifest(raw, path);
}

function validateManifest(raw: unknown, path: string): BundleManifest {
  const bad = (msg: string): never => {
    throw new DejavuError(msg, path);
  };
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) bad('manifest is not a JSON object');
  const m = raw as Record<string, unknown>;
  if (m.format !== BUNDLE_FORMAT) bad(`format is ${JSON.stringify(m.format)}, expected "${BUNDLE_FORMAT}" (not a dejavu bundle)`);
  if (m.version !== BUNDLE_VERSION) {
    bad(`unknown bundle format version ${JSON.stringify(m.version)} (this dejavu reads version ${BUNDLE_VERSION}; re-export the bundle)`);
  }
  if (typeof m.model_fingerprint !== 'string' || !m.model_fingerprint) bad('model_fingerprint missing');
  if (m.weights_sha256 !== undefined && (typeof m.weights_sha256 !== 'string' || !/^[0-9a-f]{64}$/.test(m.weights_sha256))) {
    bad(`weights_sha256 is ${JSON.stringify(m.weights_sha256)}, expected 64 hex digits`);
  }
  const dims = m.model as Record<string, unknown> | undefined;
  if (!dims || typeof dims !== 'object') bad('model dims missing');
  for (const key of ['n_layers', 'd_model', 'n_heads', 'head_dim', 'ffn_dim']) {
    const v = dims![key];
    if (!Number.isSafeInteger(v) || (v as number) <= 0) bad(`model.${key} is ${JSON.stringify(v)}, expected a positive integer`);
  }
  const md = dims as BundleManifest['model'];
  if (md.n_heads * md.head_dim !== md.d_model) bad(`model.n_heads * model.head_dim != model.d_model`);
  if (m.dtype !== 'float16') bad(`dtype is ${JSON.stringify(m.dtype)}, expected "float16"`);
  if (!Array.isArray(m.layers) || m.layers.length !== md.n_layers) {
    bad(`layers must be an array of ${md.n_layers} entries (one per model layer)`);
  }
  (m.layers as unknown[]).forEach((e, i) => {
    const L = e as Record<string, unknown>;
    if (!L || L.layer !== i) bad(`layers[${i}].layer must be ${i}`);
    for (const target of ['mlp', 'attn'] as const) {
      const t = L[target] as Record<string, unknown> | undefined;
      const where = `layers[${i}].${target}`;
      if (!t || typeof t !== 'object') bad(`${where} missing`);
      if (t!.dense === true) continue;
      if (t!.dense !== false) bad(`${where}.dense must be true or false`);
      if (t!.input !== 'att_in' && t!.input !== 'mlp_in') bad(`${where}.input is ${JSON.stringify(t!.input)}, expected att_in or mlp_in`);
      const la = t!.lookahead;
      if (!Number.isSafeInteger(la) || (la as number) < 0 || (la as number) > i) {
        bad(`${where}.lookahead is ${JSON.stringify(la)}, expected an integer in 0..${i}`);
      }
      if (!Number.isSafeInteger(t!.rank) || (t!.rank as number) <= 0) bad(`${where}.rank must be a positive integer`);
      const maxK = target === 'mlp' ? md.ffn_dim : md.n_heads;
      const k = t!.k;
      if (!Number.isSafeInteger(k) || (k as number) < 1 || (k as number) > maxK) {
        bad(`${where}.k is ${JSON.stringify(k)}, expected an integer in 1..${maxK}`);
      }
      if (t!.input_norm !== 'none' && t!.input_norm !== 'layernorm') bad(`${where}.input_norm must be "none" or "layernorm"`);
      if (typeof t!.w1 !== 'string' || typeof t!.w2 !== 'string') bad(`${where}.w1/w2 must name tensors`);
    }
  });
  return m as unknown as BundleManifest;
}

/** Check a manifest against a loaded model: same fingerprint, same dims. */
export function checkBundleModel(manifest: BundleManifest, ckpt: LoadedModelIdentity, path: string): void {
  const differs = fingerprintMismatch(
    'a bundle',
    { fingerprint: manifest.model_fingerprint, weightsSha256: manifest.weights_sha256, model: manifest.source?.model },
    ckpt,
    'use the bundle exported for this model, or the --model this bundle was exported for',
    'rebuild it from this model: dejavu collect, train and export (--force over their earlier output)',
  );
  if (differs) throw new DejavuError(differs, path);
  const c = ckpt.config;
  const want = { n_layers: c.numLayers, d_model: c.hiddenSize, n_heads: c.numHeads, head_dim: c.headDim, ffn_dim: c.ffnDim };
  for (const [k, v] of Object.entries(want)) {
    const got = manifest.model[k as keyof typeof want];
    if (got !== v) throw new DejavuError(`model.${k} is ${got} but ${ckpt.dir} has ${v}`, path);
  }
}

/**
 * Load a bundle folder: validate the manifest (format, version), check it against `ckpt` when given (fingerprint,
 * dims), open predictors.safetensors and check every predictor tensor's presence, dtype and shape before converting
 * it to fp32.
 */
export function loadBundle(dir: string, ckpt?: LoadedModelIdentity): Bundle {
  const manifest = readManifest(dir);
  const mpath = join(dir, MANIFEST_FILE);
  if (ckpt) checkBundleModel(manifest, ckpt, mpath);
  const tpath = join(dir, TENSORS_FILE);
  if (!existsSync(tpath)) throw new DejavuError(`missing ${TENSORS_FILE} (the manifest needs its predictor weights)`, tpath);
  const st = SafetensorsFile.open(tpath);
  try {
    const fp = st.metadata.model_fingerprint;
    if (fp !== undefined && fp !== manifest.model_fingerprint) {
      throw new DejavuError(`model_fingerprint in its metadata differs from ${MANIFEST_FILE} (files from two exports?)`, tpath);
    }
    const { d_model: d, ffn_dim: ffn, n_heads: H } = manifest.model;
    const load = (layer: number, target: Target): LoadedPredictor | null => {
      const e = manifest.layers[layer][target];
      if (e.dense) return null;
      const out = target === 'mlp' ? ffn : H;
      const tensor = (name: string, shape: [number, number]): Float32Array => {
        if (!st.has(name)) throw new DejavuError(`missing tensor ${name} (layer ${layer} ${target} predictor)`, tpath);
        const info = st.info(name);
        if (info.dtype !== 'F16') throw new DejavuError(`tensor ${name} is ${info.dtype}, expected F16`, tpath);
        if (info.shape.length !== 2 || info.shape[0] !== shape[0] || info.shape[1] !== shape[1]) {
          throw new DejavuError(`tensor ${name} has shape [${info.shape.join(', ')}], expected [${shape.join(', ')}]`, tpath);
        }
        const data = st.readFloat32(name);
        // A NaN or Inf weight would silently turn every score of this predictor into NaN (and its top-k arbitrary).
        for (let i = 0; i < data.length; i++) {
          if (!Number.isFinite(data[i])) throw new DejavuError(`tensor ${name} holds ${data[i]} at index ${i} (layer ${layer} ${target} predictor; re-export the bundle)`, tpath);
        }
        return data;
      };
      return {
        ...e,
        layer,
        target,
        out,
        sourceLayer: layer - e.lookahead,
        w1f: tensor(e.w1, [e.rank, d]),
        w2f: tensor(e.w2, [out, e.rank]),
      };
    };
    const n = manifest.model.n_layers;
    return {
      dir,
      manifest,
      mlp: Array.from({ length: n }, (_, l) => load(l, 'mlp')),
      attn: Array.from({ length: n }, (_, l) => load(l, 'attn')),
    };
  } finally {
    st.close();
  }
}

/** Mirrors runtime/cuda/pfuse.cuh: outputs up to this many are selected whole (exact) by one warp; more are "big". */
const FUSED_SMALL_MAX = 128;
/** Mirrors pfuse.cuh PF_MAX_SMALL: small fused predictors per tap layer. */
const FUSED_MAX_SMALL = 2;

/**
 * Why the GPU's grouped top-k (`--mlp-select grouped`) cannot run with this bundle, or null when it can. The grouped
 * selection happens inside the attention kernel of the layer whose att_in the MLP predictor reads; a predictor that
 * does not ride there would silently get the exact top-k instead. This replays the bundle-dependent part of
 * engine.cu's plan_fused (tap att_in, source layer <= layer, one big member per tap layer, taken in layer order with
 * each layer's MLP before its heads; at most FUSED_MAX_SMALL small ones) and names every MLP predictor left out. Pure:
 * the manifest alone decides (the weights' part, a LayerNorm gain near zero, is refused by the GPU build itself).
 */
export function groupedSelectionProblem(bundle: Bundle | BundleManifest): string | null {
  const m = 'manifest' in bundle ? bundle.manifest : bundle;
  const { n_layers: n, ffn_dim: ffn, n_heads: H } = m.model;
  const big = new Array<boolean>(n).fill(false);
  const small = new Array<number>(n).fill(0);
  const why = new Map<string, number[]>(); // reason -> layers
  for (let li = 0; li < n; li++) {
    for (const target of ['mlp', 'attn'] as const) {
      const e = m.layers[li][target];
      if (e.dense) continue;
      const src = li - e.lookahead;
      const isBig = (target === 'mlp' ? ffn : H) > FUSED_SMALL_MAX;
      let reason: string | null = null;
      if (e.input !== 'att_in') reason = `reads ${e.input}${e.lookahead ? ` of layer ${src}` : ''}`;
      else if (target === 'attn' && e.lookahead < 1) reason = 'reads its own layer'; // (layer 0's heads: tables)
      else if (isBig && big[src]) reason = `reads att_in of layer ${src}, whose grouped slot an earlier predictor holds`;
      else if (!isBig && small[src] >= FUSED_MAX_SMALL) reason = `reads att_in of layer ${src}, whose small slots are taken`;
      if (reason === null) {
        if (isBig) big[src] = true;
        else small[src]++;
      }
      if (target !== 'mlp') continue;
      if (reason === null && !isBig) reason = `has ${ffn} <= ${FUSED_SMALL_MAX} outputs, selected whole (exact)`;
      if (reason !== null) why.set(reason, [...(why.get(reason) ?? []), li]);
    }
  }
  if (why.size === 0) return null;
  const parts = [...why].map(([reason, ls]) => `layer${ls.length > 1 ? 's' : ''} ${ls.join(', ')}: ${reason}`);
  return (
    `--mlp-select grouped needs MLP predictors that read att_in of their own layer (train --mlp-input att_in; for ` +
    `opt-mini: examples/opt-mini-bundle-att-in); this bundle's MLP predictor of ${parts.join('; ')}. ` +
    `Use --mlp-select exact with this bundle`
  );
}
