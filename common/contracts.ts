/**
 * The contracts between pipeline stages (docs/ARCHITECTURE.md, "Contracts between stages"), one definition each:
 * the shard format, dims and names (collect -> train), the predictor file names, their metadata and metrics.json
 * (train -> export), the names shared with the runtimes, and the `--layers` grammar of collect, train and export.
 *
 * It imports only common/errors: the GPU path (koffi only, no apache-arrow, no tfjs) may import it, and
 * tests/common/contracts.test.ts checks that this stays so.
 */
import { DejavuError } from './errors.js';

/** What a predictor selects: MLP neurons or attention heads. */
export type Target = 'mlp' | 'attn';

/** The residual-stream point a predictor reads, named by its shard column: a decoder layer's input or the MLP block's. */
export type PredictorInput = 'att_in' | 'mlp_in';

/** Preprocessing of a predictor's input before w1 (recorded by train, applied by the runtimes). */
export type InputNorm = 'none' | 'layernorm';

// ---- Shards (collect -> train): OUT/manifest.json and OUT/layer_XX/shard_NNNNN.arrow (docs/shards.md)

export const SHARD_FORMAT = 'dejavu-shard/1';

/** collect writes it last, as its "done" marker; train refuses a folder without it. */
export const SHARD_MANIFEST_FILE = 'manifest.json';

/** Widths of one layer's rows. `topK` 0 = no mlp_topk_* columns. */
export interface ShardDims {
  dModel: number;
  nHeads: number;
  ffnDim: number;
  topK: number;
}

/** Schema metadata keys of every shard file (all values strings). */
export const SHARD_META = {
  format: 'dejavu.format',
  modelFingerprint: 'dejavu.model_fingerprint',
  layer: 'dejavu.layer',
  dModel: 'dejavu.d_model',
  nHeads: 'dejavu.n_heads',
  ffnDim: 'dejavu.ffn_dim',
  topK: 'dejavu.mlp_topk',
  labels: 'dejavu.labels',
  collectArgs: 'dejavu.collect_args',
} as const;

/** `layer_XX`: a layer's shard folder, and the stem of its predictor files. */
export const layerDirName = (layer: number): string => `layer_${String(layer).padStart(2, '0')}`;

/** The layer a `layer_XX` folder name stands for, or null for any other name. */
export function layerOfDirName(name: string): number | null {
  const m = /^layer_(\d+)$/.exec(name);
  return m ? Number(m[1]) : null;
}

export const shardFileName = (index: number): string => `shard_${String(index).padStart(5, '0')}.arrow`;

/** The index a `shard_NNNNN.arrow` file name stands for, or null for any other name. */
export function shardIndexOfFileName(name: string): number | null {
  const m = /^shard_(\d+)\.arrow$/.exec(name);
  return m ? Number(m[1]) : null;
}

// ---- Predictors (train -> export): OUT/metrics.json and OUT/layer_XX.{mlp|attn}.safetensors (docs/training.md)

export const METRICS_FILE = 'metrics.json';

/** `layer_XX.mlp` / `layer_XX.attn`: one trained predictor (train's job name, its checkpoint's name). */
export const predictorName = (layer: number, target: Target): string => `${layerDirName(layer)}.${target}`;

export const predictorFileName = (layer: number, target: Target): string => `${predictorName(layer, target)}.safetensors`;

/** The predictor a `layer_XX.{mlp|attn}.safetensors` file name stands for, or null for any other name. */
export function predictorOfFileName(name: string): { layer: number; target: Target } | null {
  const m = /^layer_(\d+)\.(mlp|attn)\.safetensors$/.exec(name);
  return m ? { layer: Number(m[1]), target: m[2] as Target } : null;
}

/** Safetensors metadata of a predictor file (tensors `w1` [rank][in], `w2` [out][rank], fp32). Values are strings. */
export interface PredictorFileMeta {
  target: Target;
  layer: string;
  input: PredictorInput;
  /** layer minus the layer the input is taken from. */
  lookahead: string;
  rank: string;
  model_fingerprint: string;
  input_norm: InputNorm;
  /** Heads labelled active per token (attn only). */
  k_label?: string;
}

/** Validation metrics of one predictor (train/metrics.ts defines them; export copies them into the bundle). */
export interface PredictorMetrics {
  recall: number;
  precision: number;
  f1: number;
  true_active: number;
  predicted_active: number;
  k95: number;
  k99: number;
  tokens: number;
}

export interface EpochRecord {
  epoch: number;
  loss: number | null;
  score: number;
  recall: number;
  precision: number;
  seconds: number;
}

/** One trained predictor in metrics.json `layers`. */
export interface MetricsEntry extends PredictorMetrics {
  layer: number;
  target: Target;
  input: PredictorInput;
  lookahead: number;
  input_layer: number;
  rank: number;
  input_norm: InputNorm;
  out: number;
  k_label: number | null;
  best_epoch: number;
  epochs_run: number;
  train_tokens: number;
  val_tokens: number;
  positive_rate: number;
  history: EpochRecord[];
}

/** metrics.json as train writes it. */
export interface TrainMetrics {
  model_fingerprint: string;
  args: Record<string, unknown>;
  backend: string;
  /** False until every planned predictor is trained or skipped (a running or killed train); export refuses it. */
  complete: boolean;
  /** The (layer, target) predictors the run trains. */
  planned: { layer: number; target: Target }[];
  layers: MetricsEntry[];
  skipped: { layer: number; target: Target; reason: string }[];
  seconds: number;
}

/** The part of a metrics.json entry that export relies on, checked by parseMetrics. */
export type CheckedMetricsEntry = Pick<MetricsEntry, 'layer' | 'target'> & PredictorMetrics & { k_label?: number | null };

/** The part of metrics.json that export relies on, checked by parseMetrics. */
export interface CheckedMetrics {
  model_fingerprint: string;
  args: Record<string, unknown> | null;
  /** null: written before train recorded it. */
  complete: boolean | null;
  planned: { layer: number; target: Target }[] | null;
  layers: CheckedMetricsEntry[];
}

const METRIC_KEYS = ['recall', 'precision', 'f1', 'true_active', 'predicted_active', 'k95', 'k99'] as const;

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * Validates parsed metrics.json (`path` names it in errors): the keys export relies on, each named when missing or
 * of the wrong type. Other keys train writes (history, input, ...) pass through unchecked.
 */
export function parseMetrics(raw: unknown, path: string): CheckedMetrics {
  const need = (ok: boolean, key: string, value: unknown, expected: string) => {
    if (ok) return;
    const shown = JSON.stringify(value);
    const what = value === undefined ? 'is missing' : `is ${shown.length > 40 ? `${shown.slice(0, 40)}...` : shown}`;
    throw new DejavuError(`${key} ${what}, expected ${expected}`, path);
  };
  need(isObject(raw), 'the top level', raw, 'a JSON object');
  const m = raw as Record<string, unknown>;
  need(typeof m.model_fingerprint === 'string', 'model_fingerprint', m.model_fingerprint, 'a string');
  need(m.args === undefined || m.args === null || isObject(m.args), 'args', m.args, 'an object');
  need(Array.isArray(m.layers), 'layers', m.layers, 'an array');
  const seen = new Map<string, number>();
  const layers = (m.layers as unknown[]).map((e, i) => {
    const at = `layers[${i}]`;
    need(isObject(e), at, e, 'an object');
    const o = e as Record<string, unknown>;
    need(Number.isInteger(o.layer) && (o.layer as number) >= 0, `${at}.layer`, o.layer, 'an integer >= 0');
    need(o.target === 'mlp' || o.target === 'attn', `${at}.target`, o.target, '"mlp" or "attn"');
    for (const k of METRIC_KEYS) need(typeof o[k] === 'number' && (o[k] as number) >= 0, `${at}.${k}`, o[k], 'a number >= 0');
    need(Number.isInteger(o.tokens) && (o.tokens as number) >= 0, `${at}.tokens`, o.tokens, 'an integer >= 0');
    need(o.k_label === undefined || o.k_label === null || typeof o.k_label === 'number', `${at}.k_label`, o.k_label, 'a number or null');
    const id = `${o.layer} ${o.target}`;
    const first = seen.get(id);
    if (first !== undefined) throw new DejavuError(`${at} repeats layers[${first}] (layer ${id})`, path);
    seen.set(id, i);
    return e as CheckedMetricsEntry;
  });
  need(m.complete === undefined || typeof m.complete === 'boolean', 'complete', m.complete, 'true or false');
  const planned = m.planned as { layer: number; target: Target }[] | undefined;
  need(
    planned === undefined || (Array.isArray(planned) && planned.every((p) => isObject(p) && Number.isInteger(p.layer) && (p.target === 'mlp' || p.target === 'attn'))),
    'planned',
    planned,
    'an array of {layer, target}',
  );
  return {
    model_fingerprint: m.model_fingerprint as string,
    args: (m.args as Record<string, unknown> | undefined) ?? null,
    complete: (m.complete as boolean | undefined) ?? null,
    planned: planned ?? null,
    layers,
  };
}

// ---- Layer selection (`--layers` of collect, train and export)

/** Sorted layer indices as compact ranges: `0-2, 5`. */
function formatLayers(layers: readonly number[]): string {
  const parts: string[] = [];
  for (let i = 0; i < layers.length; i++) {
    let j = i;
    while (j + 1 < layers.length && layers[j + 1] === layers[j] + 1) j++;
    parts.push(j > i ? `${layers[i]}-${layers[j]}` : String(layers[i]));
    i = j;
  }
  return parts.join(', ');
}

/**
 * Parses `--layers`: `all` (or no flag) | comma-separated indices and inclusive ranges (`0,3-5`), sorted and
 * deduplicated. `available` is the model's layer count (collect, export: layers 0..n-1) or the layers a shard folder
 * holds (train). A malformed part, a reversed range, a layer not available or an empty list is refused, naming
 * --layers.
 */
export function parseLayers(spec: string | undefined, available: number | readonly number[]): number[] {
  const flag = '--layers';
  const fromModel = typeof available === 'number';
  const have = fromModel ? Array.from({ length: available }, (_, i) => i) : [...new Set(available)].sort((a, b) => a - b);
  const has = new Set(have);
  const last = have.length ? have[have.length - 1] : -1;
  const absent = (layers: number[]) => {
    const which = layers.length === 1 ? `layer ${layers[0]} is` : `layers ${layers.join(', ')} are`;
    return fromModel
      ? new DejavuError(`${which} out of range: the model has ${have.length} layers (0-${have.length - 1})`, flag)
      : new DejavuError(`${which} not in the shards (they hold layers ${formatLayers(have)})`, flag);
  };
  const s = (spec ?? 'all').trim();
  if (s === 'all') return have;
  const out = new Set<number>();
  const missing: number[] = [];
  for (const part of s.split(',')) {
    const m = /^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$/.exec(part);
    if (!m) throw new DejavuError(`'${part}' is not a layer index or range (expected e.g. all, 0,3-5)`, flag);
    const a = Number(m[1]);
    const b = m[2] === undefined ? a : Number(m[2]);
    if (b < a) throw new DejavuError(`range ${part.trim()} is reversed`, flag);
    // Checked before the loop, so a huge range fails at once instead of enumerating.
    if (b > last) throw absent([b]);
    for (let l = a; l <= b; l++) {
      if (has.has(l)) out.add(l);
      else if (!missing.includes(l)) missing.push(l);
    }
  }
  if (missing.length) throw absent(missing.sort((x, y) => x - y));
  if (out.size === 0) throw new DejavuError('no layers selected', flag);
  return [...out].sort((x, y) => x - y);
}
