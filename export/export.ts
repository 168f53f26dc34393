/**
 * `dejavu export`: a train output folder (metrics.json + layer_XX.{mlp|attn}.safetensors) -> a bundle (bundle.ts).
 *
 * Per (layer, target) the k a decode step keeps is chosen from validation metrics: `--recall 0.99` -> ceil(k99),
 * `--recall 0.95` -> ceil(k95) (k_Q = mean over validation tokens of the smallest per-token top-k holding Q of the
 * true positives, train/metrics.ts), or fixed with --mlp-k / --heads-k. A target without a predictor file and without
 * a metrics entry is marked dense; one with only one of the two is an incomplete training run and is refused. So is
 * a folder whose train run did not finish (metrics.json `complete: false`, or a checkpoint not marked done), listing
 * the predictors it lacks, unless `partial` keeps those dense.
 */
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { SafetensorsFile, type TensorToWrite } from '../checkpoints/safetensors.js';
import type { OptCheckpoint } from '../checkpoints/types.js';
import { METRICS_FILE, parseLayers, parseMetrics, predictorFileName, predictorName, predictorOfFileName, type CheckedMetrics, type Target } from '../common/contracts.js';
import { readCheckpointState } from '../train/checkpoint.js';
import { DejavuError } from '../common/errors.js';
import { fingerprintMismatch } from '../checkpoints/fingerprint.js';
import { BUNDLE_FORMAT, BUNDLE_VERSION, tensorName, writeBundle, type BundleManifest, type LayerTargetEntry } from './bundle.js';
import type { LayerK } from './layer-k.js';

export interface ExportOptions {
  predictors: string;
  out: string;
  /** 0.99 or 0.95: pick k from k99 / k95. Default 0.99 when no fixed k is given for a target. */
  recall?: number;
  mlpK?: number;
  headsK?: number;
  /** Layers to sparsify ("all", "1-5", "0,2,4"); the others are marked dense even when a predictor exists. */
  layers?: string;
  /** Export the predictors of an unfinished train run; the ones it lacks stay dense (listed in `unfinished`). */
  partial?: boolean;
  /** Per-layer k chosen elsewhere (the quality-budget search, export/budget.ts): a number replaces the k of that
   *  layer's predictor (k_rule `layerKRule`), null keeps the block dense. */
  layerK?: LayerK;
  layerKRule?: string;
  /** Measured quality recorded in the manifest (`quality`, docs/bundle.md). */
  quality?: Record<string, unknown>;
}

export const predictorFile = (dir: string, layer: number, target: Target) => join(dir, predictorFileName(layer, target));

/** Reads and validates train's metrics.json (common/contracts.ts parseMetrics names the missing or wrong key). */
export function readMetrics(dir: string): CheckedMetrics {
  const path = join(dir, METRICS_FILE);
  if (!existsSync(dir)) throw new DejavuError('predictors folder not found', dir);
  if (!existsSync(path)) throw new DejavuError(`missing ${METRICS_FILE} (not a train output folder, or training did not finish)`, path);
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    throw new DejavuError(`invalid JSON (${(e as Error).message})`, path);
  }
  return parseMetrics(raw, path);
}

/**
 * Predictors (`layer_XX.mlp` names) an unfinished train run planned but has not finished: from metrics.json
 * (`complete: false`: planned, neither trained nor skipped), and from checkpoints not marked done (a metrics.json
 * written before train recorded `complete`).
 */
export function unfinishedPredictors(dir: string, metrics: CheckedMetrics): { layer: number; target: Target }[] {
  const key = (j: { layer: number; target: Target }) => predictorName(j.layer, j.target);
  const out = new Map<string, { layer: number; target: Target }>();
  if (metrics.complete === false && metrics.planned) {
    const done = new Set([...metrics.layers.map(key), ...skippedOf(dir).map(key)]);
    for (const j of metrics.planned) if (!done.has(key(j))) out.set(key(j), j);
  }
  const ck = join(dir, 'checkpoints');
  if (existsSync(ck) && statSync(ck).isDirectory()) {
    for (const f of readdirSync(ck)) {
      const job = predictorOfFileName(f);
      if (!job) continue;
      const state = readCheckpointState(dir, key(job));
      if (state && !state.done) out.set(key(job), job);
    }
  }
  return [...out.values()].sort((a, b) => a.layer - b.layer || a.target.localeCompare(b.target));
}

/** metrics.json `skipped` (jobs with no positive labels: done, with no predictor). */
function skippedOf(dir: string): { layer: number; target: Target }[] {
  const raw = JSON.parse(readFileSync(join(dir, METRICS_FILE), 'utf8')) as { skipped?: unknown };
  return Array.isArray(raw.skipped) ? (raw.skipped as { layer: number; target: Target }[]).filter((e) => Number.isInteger(e?.layer)) : [];
}

/** fp32 predictor weights that fp16 can hold: finite, |x| <= 65504 (else the bundle would hold Inf). */
function checkWeights(data: Float32Array, tensor: string, file: string): Float32Array {
  for (let i = 0; i < data.length; i++) {
    const v = data[i];
    if (!(Math.abs(v) <= 65504)) {
      throw new DejavuError(`tensor ${tensor} holds ${Number.isNaN(v) ? 'NaN' : v} at index ${i} (predictor weights must be finite and within fp16's range; retrain it)`, file);
    }
  }
  return data;
}

export interface TargetSummary {
  k: number;
  density: number;
  rank: number;
  input: string;
  lookahead: number;
  k_rule: string;
  recall: number | null;
  /** The validation metrics from metrics.json (recall, precision, f1, true_active, predicted_active, k95, k99, ...). */
  metrics: Record<string, number | null>;
}

export interface ExportSummary {
  bundle: string;
  model_fingerprint: string;
  layers: {
    layer: number;
    mlp: { dense: true } | TargetSummary;
    attn: { dense: true } | TargetSummary;
  }[];
  /** Mean over layers of k/ffn (dense layers count 1). */
  mlp_density: number;
  head_density: number;
  /** With `partial`: the predictors the unfinished train run lacks, left dense. */
  unfinished: string[];
}

/** How to resolve a predictors/model mismatch, and how to rebuild predictors made before weights were hashed. */
const EXPORT_FIX = 'export with the --model the shards were collected from';
const EXPORT_REBUILD = 'rebuild them from this model: dejavu collect ... --force, dejavu train ... --force, then export';

export function exportBundle(o: ExportOptions, ckpt: OptCheckpoint): ExportSummary {
  const c = ckpt.config;
  const d = c.hiddenSize;
  if (o.recall !== undefined && o.recall !== 0.99 && o.recall !== 0.95) {
    throw new DejavuError(`${o.recall} is not supported: metrics.json has k95 and k99, so use 0.95 or 0.99 (or --mlp-k/--heads-k)`, '--recall');
  }
  const recall = o.recall ?? 0.99;
  const metrics = readMetrics(o.predictors);
  const mpath = join(o.predictors, METRICS_FILE);
  const differs = fingerprintMismatch('predictors', { fingerprint: metrics.model_fingerprint }, ckpt, EXPORT_FIX, EXPORT_REBUILD);
  if (differs) throw new DejavuError(differs, mpath);
  const chosen = new Set(parseLayers(o.layers, c.numLayers));
  const unfinished = unfinishedPredictors(o.predictors, metrics).filter((j) => chosen.has(j.layer));
  const unfinishedNames = new Set(unfinished.map((j) => predictorName(j.layer, j.target)));
  if (unfinished.length && !o.partial) {
    const names = [...unfinishedNames];
    throw new DejavuError(
      `is from a train run that did not finish: ${names.join(', ')} ${names.length === 1 ? 'is' : 'are'} not trained yet; ` +
        'finish it with `dejavu train ... --resume` (the same flags), or export with --partial to keep those dense',
      o.predictors,
    );
  }
  const tensors: Record<string, TensorToWrite> = {};
  const layers: BundleManifest['layers'] = [];
  const summary: ExportSummary['layers'] = [];
  let mlpDen = 0;
  let headDen = 0;

  for (let l = 0; l < c.numLayers; l++) {
    const entry = {} as Record<Target, LayerTargetEntry>;
    const sum = {} as Record<Target, ExportSummary['layers'][number]['mlp']>;
    for (const target of ['mlp', 'attn'] as const) {
      const out = target === 'mlp' ? c.ffnDim : c.numHeads;
      const file = predictorFile(o.predictors, l, target);
      const m = metrics.layers.find((e) => e.layer === l && e.target === target);
      const haveFile = existsSync(file);
      if (!chosen.has(l)) {
        entry[target] = { dense: true, reason: `left dense by --layers ${o.layers}` };
        sum[target] = { dense: true };
        if (target === 'mlp') mlpDen += 1;
        else headDen += 1;
        continue;
      }
      if (!haveFile && !m) {
        const unfinishedHere = unfinishedNames.has(predictorName(l, target));
        entry[target] = { dense: true, reason: unfinishedHere ? 'training unfinished (exported with --partial)' : 'no predictor trained' };
        sum[target] = { dense: true };
        if (target === 'mlp') mlpDen += 1;
        else headDen += 1;
        continue;
      }
      if (!haveFile) throw new DejavuError(`metrics.json lists layer ${l} ${target} but its predictor file is missing (training incomplete?)`, file);
      if (!m) throw new DejavuError(`predictor file present but metrics.json has no entry for layer ${l} ${target}`, mpath);
      const chosenK = o.layerK ? (target === 'mlp' ? o.layerK.mlp : o.layerK.attn)[l] : undefined;
      if (chosenK === null) {
        entry[target] = { dense: true, reason: `kept dense by the ${o.layerKRule ?? 'quality-budget'} search` };
        sum[target] = { dense: true };
        if (target === 'mlp') mlpDen += 1;
        else headDen += 1;
        continue;
      }

      const st = SafetensorsFile.open(file);
      try {
        const meta = st.metadata;
        const differsHere = fingerprintMismatch('a predictor', { fingerprint: meta.model_fingerprint }, ckpt, EXPORT_FIX, EXPORT_REBUILD);
        if (differsHere) throw new DejavuError(differsHere, file);
        if (meta.target !== target || Number(meta.layer) !== l) {
          throw new DejavuError(`metadata says layer ${meta.layer} ${meta.target}, the file name says layer ${l} ${target}`, file);
        }
        const input = meta.input;
        if (input !== 'att_in' && input !== 'mlp_in') throw new DejavuError(`metadata input is ${JSON.stringify(input)}, expected att_in or mlp_in`, file);
        const lookahead = Number(meta.lookahead);
        if (!Number.isInteger(lookahead) || lookahead < 0 || lookahead > l) {
          throw new DejavuError(`metadata lookahead ${JSON.stringify(meta.lookahead)} is not an integer in 0..${l}`, file);
        }
        const inputNorm = meta.input_norm ?? 'none';
        if (inputNorm !== 'none' && inputNorm !== 'layernorm') throw new DejavuError(`metadata input_norm ${JSON.stringify(inputNorm)} unknown`, file);
        const rank = Number(meta.rank);
        const check = (name: 'w1' | 'w2', shape: [number, number]) => {
          if (!st.has(name)) throw new DejavuError(`missing tensor ${name}`, file);
          const s = st.info(name).shape;
          if (s.length !== 2 || s[0] !== shape[0] || s[1] !== shape[1]) {
            throw new DejavuError(`tensor ${name} has shape [${s.join(', ')}], expected [${shape.join(', ')}] (rank ${rank}, d ${d}, out ${out})`, file);
          }
        };
        if (!Number.isInteger(rank) || rank < 1) throw new DejavuError(`metadata rank ${JSON.stringify(meta.rank)} is not a positive integer`, file);
        check('w1', [rank, d]);
        check('w2', [out, rank]);

        const fixed = target === 'mlp' ? o.mlpK : o.headsK;
        let k: number;
        let rule: string;
        if (chosenK !== undefined) {
          if (!Number.isInteger(chosenK) || chosenK < 1 || chosenK > out) throw new Error(`layer ${l} ${target}: k ${chosenK} outside 1..${out}`);
          k = chosenK;
          rule = o.layerKRule ?? 'budget';
        } else if (fixed !== undefined) {
          if (!Number.isInteger(fixed) || fixed < 1 || fixed > out) {
            throw new DejavuError(`${fixed} must be an integer in 1..${out}`, target === 'mlp' ? '--mlp-k' : '--heads-k');
          }
          k = fixed;
          rule = 'fixed';
        } else {
          const key = recall === 0.99 ? 'k99' : 'k95';
          k = Math.min(out, Math.max(1, Math.ceil(m[key])));
          rule = key;
        }
        const w1 = tensorName(l, target, 'w1');
        const w2 = tensorName(l, target, 'w2');
        tensors[w1] = { dtype: 'F16', shape: [rank, d], data: checkWeights(st.readFloat32('w1'), 'w1', file) };
        tensors[w2] = { dtype: 'F16', shape: [out, rank], data: checkWeights(st.readFloat32('w2'), 'w2', file) };
        const keep = ['recall', 'precision', 'f1', 'true_active', 'predicted_active', 'k95', 'k99', 'tokens', 'k_label'] as const;
        const mm: Record<string, number | null> = {};
        for (const key of keep) if (key in m) mm[key] = m[key] ?? null;
        entry[target] = { dense: false, input, lookahead, rank, k, k_rule: rule, input_norm: inputNorm, w1, w2, metrics: mm };
        sum[target] = { k, density: k / out, rank, input, lookahead, k_rule: rule, recall: m.recall, metrics: mm };
        if (target === 'mlp') mlpDen += k / out;
        else headDen += k / out;
      } finally {
        st.close();
      }
    }
    layers.push({ layer: l, mlp: entry.mlp, attn: entry.attn });
    summary.push({ layer: l, mlp: sum.mlp, attn: sum.attn });
  }

  const manifest: BundleManifest = {
    format: BUNDLE_FORMAT,
    version: BUNDLE_VERSION,
    model_fingerprint: ckpt.fingerprint,
    weights_sha256: ckpt.weightsSha256,
    model: { n_layers: c.numLayers, d_model: d, n_heads: c.numHeads, head_dim: c.headDim, ffn_dim: c.ffnDim },
    dtype: 'float16',
    created: new Date().toISOString(),
    source: { predictors: o.predictors, model: ckpt.dir, recall: o.mlpK !== undefined && o.headsK !== undefined ? null : recall, layers: o.layers ?? 'all', mlp_k: o.mlpK ?? null, heads_k: o.headsK ?? null, train_args: metrics.args ?? null },
    layers,
    ...(o.quality ? { quality: o.quality } : {}),
  };
  writeBundle(o.out, manifest, tensors);
  const r4 = (v: number) => Math.round(v * 1e4) / 1e4;
  return {
    bundle: o.out,
    model_fingerprint: ckpt.fingerprint,
    layers: summary,
    mlp_density: r4(mlpDen / c.numLayers),
    head_density: r4(headDen / c.numLayers),
    unfinished: [...unfinishedNames],
  };
}
