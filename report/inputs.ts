/**
 * The report's inputs, read and checked: train's metrics.json, a bundle's manifest.json, eval and bench JSON (one
 * result each, or a collection of them under `runs`). Only the keys the charts use are required; a missing or wrong
 * one is a DejavuError naming the file and the key.
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { basename, join } from 'node:path';
import { DejavuError } from '../common/errors.js';

export interface ReportInputs {
  /** train's output folder (or its metrics.json). */
  predictors?: string;
  /** A bundle folder (or its manifest.json). */
  bundle?: string;
  /** `dejavu eval ppl --json` outputs, or collections of them. */
  evals?: string[];
  /** `dejavu bench --json` outputs, or collections of them (a sweep: several densities). */
  benches?: string[];
}

export interface PredictorRow {
  layer: number;
  target: 'mlp' | 'attn';
  recall: number;
  precision: number;
  k95: number | null;
  k99: number;
  true_active: number;
  /** Neurons or heads the predictor scores (null when metrics.json does not say). */
  out: number | null;
}

export interface BundleLayer {
  layer: number;
  /** Fraction of neurons / heads a decode step keeps (1 for a dense block). */
  mlp: number;
  heads: number;
}

export interface BundleInfo {
  path: string;
  ffn: number;
  heads: number;
  layers: BundleLayer[];
  /** What export measured on calibration docs (manifest `quality`), when it did. */
  quality: BundleQuality | null;
}

/** The manifest's `quality` (export/quality.ts), the parts the report draws. */
export interface BundleQuality {
  budget: number | null;
  kv_policy: string;
  mlp_selection: string;
  calibration_docs: number;
  dense_ppl: number;
  predicted_ppl: number;
  /** Per layer, k kept (null: dense). */
  layers: { layer: number; mlp_k: number | null; heads_k: number | null }[];
  /** The search's path (budget exports): bytes per token, estimated and measured relative perplexity increase. */
  path: { bytes: number; estimate: number; measured: number | null }[];
  /** Every configuration the search measured on all calibration docs. */
  measurements: { bytes: number; measured: number }[];
  /** The exported configuration: bytes per token and measured relative increase. */
  exported: { bytes: number; delta: number } | null;
}

export interface EvalPoint {
  label: string;
  docs: number | null;
  tokens: number | null;
  mlp_density: number | null;
  head_density: number | null;
  dense: number | null;
  oracle: number | null;
  predicted: number | null;
}

export interface BenchPoint {
  label: string;
  device: string;
  mlp_density: number | null;
  head_density: number | null;
  dense_ms: number;
  sparse_ms: number;
  floor_ms: number | null;
  sparse_floor_ms: number | null;
}

export interface ReportData {
  sources: { what: string; path: string }[];
  predictors: PredictorRow[];
  bundle: BundleInfo | null;
  evals: EvalPoint[];
  benches: BenchPoint[];
}

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);
const num = (v: unknown): number | null => (typeof v === 'number' && Number.isFinite(v) ? v : null);

/** A folder's `name` file, or the path itself when it is a file. */
function fileIn(path: string, name: string): string {
  if (!existsSync(path)) throw new DejavuError('not found', path);
  return statSync(path).isDirectory() ? join(path, name) : path;
}

function readJson(path: string): unknown {
  if (!existsSync(path)) throw new DejavuError('not found', path);
  if (statSync(path).isDirectory()) throw new DejavuError('is a folder, expected a JSON file', path);
  const text = readFileSync(path, 'utf8');
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new DejavuError(`not valid JSON (${(e as Error).message})`, path);
  }
}

/** A required finite number at obj[key]; `where` names it in the error. */
function need(obj: Obj, key: string, where: string, path: string): number {
  const v = num(obj[key]);
  if (v === null) {
    const shown = obj[key] === undefined ? 'is missing' : `is ${JSON.stringify(obj[key])?.slice(0, 40)}, expected a number`;
    throw new DejavuError(`${where}${key} ${shown}`, path);
  }
  return v;
}

export function readPredictors(dir: string): PredictorRow[] {
  const path = fileIn(dir, 'metrics.json');
  const raw = readJson(path);
  if (!isObj(raw) || !Array.isArray(raw.layers)) throw new DejavuError('layers is missing (not a train metrics.json?)', path);
  if (raw.layers.length === 0) throw new DejavuError('layers is empty: no predictor trained yet', path);
  return raw.layers.map((e: unknown, i: number) => {
    const at = `layers[${i}].`;
    if (!isObj(e)) throw new DejavuError(`${at.slice(0, -1)} is not an object`, path);
    const target = e.target;
    if (target !== 'mlp' && target !== 'attn') throw new DejavuError(`${at}target is ${JSON.stringify(target)}, expected "mlp" or "attn"`, path);
    const layer = need(e, 'layer', at, path);
    if (!Number.isInteger(layer) || layer < 0) throw new DejavuError(`${at}layer is ${layer}, expected an integer >= 0`, path);
    return {
      layer,
      target,
      recall: need(e, 'recall', at, path),
      precision: need(e, 'precision', at, path),
      k95: num(e.k95),
      k99: need(e, 'k99', at, path),
      true_active: need(e, 'true_active', at, path),
      out: num(e.out),
    };
  });
}

export function readBundle(dir: string): BundleInfo {
  const path = fileIn(dir, 'manifest.json');
  const raw = readJson(path);
  if (!isObj(raw) || !isObj(raw.model) || !Array.isArray(raw.layers)) throw new DejavuError('model or layers is missing (not a bundle manifest.json?)', path);
  const ffn = need(raw.model, 'ffn_dim', 'model.', path);
  const heads = need(raw.model, 'n_heads', 'model.', path);
  const density = (e: unknown, at: string, n: number): number => {
    if (!isObj(e)) throw new DejavuError(`${at} is missing`, path);
    if (e.dense === true) return 1;
    const k = need(e, 'k', `${at}.`, path);
    if (!(k >= 1 && k <= n)) throw new DejavuError(`${at}.k is ${k}, expected 1..${n}`, path);
    return k / n;
  };
  const layers = raw.layers.map((L: unknown, i: number) => {
    if (!isObj(L)) throw new DejavuError(`layers[${i}] is not an object`, path);
    return { layer: need(L, 'layer', `layers[${i}].`, path), mlp: density(L.mlp, `layers[${i}].mlp`, ffn), heads: density(L.attn, `layers[${i}].attn`, heads) };
  });
  return { path: dir, ffn, heads, layers, quality: isObj(raw.quality) ? readQuality(raw.quality, path) : null };
}

function readQuality(q: Obj, path: string): BundleQuality {
  const at = 'quality.';
  const cal = isObj(q.calibration) ? q.calibration : {};
  const layers = Array.isArray(q.layers) ? q.layers : [];
  const search = isObj(q.search) ? q.search : null;
  const path_ = search && Array.isArray(search.path) ? search.path : [];
  return {
    budget: num(q.budget),
    kv_policy: typeof q.kv_policy === 'string' ? q.kv_policy : 'all',
    mlp_selection: typeof q.mlp_selection === 'string' ? q.mlp_selection : 'exact',
    calibration_docs: num(cal.docs) ?? 0,
    dense_ppl: need(q, 'dense_ppl', at, path),
    predicted_ppl: need(q, 'predicted_ppl', at, path),
    layers: layers.filter(isObj).map((L, i) => ({ layer: num(L.layer) ?? i, mlp_k: num(L.mlp_k), heads_k: num(L.heads_k) })),
    path: path_.filter(isObj).map((p, i) => ({
      bytes: need(p, 'bytes', `${at}search.path[${i}].`, path),
      estimate: need(p, 'estimate', `${at}search.path[${i}].`, path),
      measured: num(p.measured),
    })),
    measurements: (search && Array.isArray(search.measurements) ? search.measurements : []).filter(isObj).map((p, i) => ({
      bytes: need(p, 'bytes', `${at}search.measurements[${i}].`, path),
      measured: need(p, 'measured', `${at}search.measurements[${i}].`, path),
    })),
    exported: isObj(q.bytes_per_token) && num(q.bytes_per_token.bundle) !== null && num(q.delta) !== null ? { bytes: num(q.bytes_per_token.bundle)!, delta: num(q.delta)! } : null,
  };
}

/** The named results in a file: one result, or a collection under `runs` (an object by name, or an array). */
function results(raw: unknown, path: string): { name: string; r: Obj }[] {
  const base = basename(path).replace(/\.json$/, '');
  const runs = isObj(raw) && raw.runs !== undefined ? raw.runs : Array.isArray(raw) ? raw : undefined;
  if (runs === undefined) return isObj(raw) ? [{ name: base, r: raw }] : [];
  const entries: [string, unknown][] = Array.isArray(runs) ? runs.map((r, i) => [`${base}[${i}]`, r]) : isObj(runs) ? Object.entries(runs) : [];
  return entries.filter((e): e is [string, Obj] => isObj(e[1])).map(([name, r]) => ({ name, r }));
}

const ppl = (v: unknown): number | null => (isObj(v) ? num(v.ppl) : null);

/** Perplexities of one eval result: `{dense:{ppl}, oracle:{ppl}, predicted:{ppl}, ...}` (bundle) or `{ppl}` (dense). */
function evalPoint(name: string, r: Obj): EvalPoint | null {
  const oracle = ppl(r.oracle);
  const predicted = ppl(r.predicted);
  // A run of only the sparse modes records the dense figure of the same documents beside each mode.
  const sameDocs = [r.oracle, r.predicted].map((m) => (isObj(m) ? num(m.dense_ppl_same_docs) : null)).find((v) => v !== null) ?? null;
  const dense = ppl(r.dense) ?? num(r.ppl) ?? sameDocs;
  if (dense === null && oracle === null && predicted === null) return null;
  const sparseRun = oracle !== null || predicted !== null;
  return {
    label: name,
    docs: num(r.docs),
    tokens: num(r.tokens),
    mlp_density: num(r.mlp_density) ?? (sparseRun ? null : 1),
    head_density: num(r.head_density) ?? (sparseRun ? null : 1),
    dense,
    oracle,
    predicted,
  };
}

export function readEvals(path: string): EvalPoint[] {
  const points = results(readJson(path), path)
    .map(({ name, r }) => evalPoint(name, r))
    .filter((p): p is EvalPoint => p !== null);
  if (points.length === 0) throw new DejavuError('no perplexity found (expected the JSON of dejavu eval ppl --json: {dense:{ppl}, oracle:{ppl}, predicted:{ppl}} or {ppl}, or such results under "runs")', path);
  return points;
}

/** One bench result: `{device, dense:{ms_per_token}, sparse:{ms_per_token}, floor_ms, ...}` (CPU or CUDA). */
function benchPoint(name: string, r: Obj): BenchPoint | null {
  const dense = isObj(r.dense) ? num(r.dense.ms_per_token) : null;
  const sparse = isObj(r.sparse) ? num(r.sparse.ms_per_token) : null;
  if (dense === null || sparse === null) return null;
  const d = isObj(r.density) ? r.density : {};
  return {
    label: name,
    device: typeof r.device === 'string' ? r.device : 'unknown device',
    mlp_density: num(r.mlp_density) ?? num(d.mlp),
    head_density: num(r.head_density) ?? num(d.heads),
    dense_ms: dense,
    sparse_ms: sparse,
    floor_ms: num(r.floor_ms),
    sparse_floor_ms: num(r.sparse_floor_ms),
  };
}

export function readBenches(path: string): BenchPoint[] {
  const points = results(readJson(path), path)
    .map(({ name, r }) => benchPoint(name, r))
    .filter((p): p is BenchPoint => p !== null);
  if (points.length === 0) throw new DejavuError('no latency found (expected the JSON of dejavu bench --json: {dense:{ms_per_token}, sparse:{ms_per_token}}, or such results under "runs")', path);
  return points;
}

export function readReportInputs(o: ReportInputs): ReportData {
  const evals = o.evals ?? [];
  const benches = o.benches ?? [];
  if (!o.predictors && !o.bundle && evals.length === 0 && benches.length === 0) {
    throw new DejavuError('nothing to report: give at least one of --predictors, --bundle, --eval, --bench', 'report');
  }
  const sources: ReportData['sources'] = [];
  const data: ReportData = { sources, predictors: [], bundle: null, evals: [], benches: [] };
  if (o.predictors) {
    data.predictors = readPredictors(o.predictors);
    sources.push({ what: 'predictors (train metrics.json)', path: o.predictors });
  }
  if (o.bundle) {
    data.bundle = readBundle(o.bundle);
    sources.push({ what: 'bundle (manifest.json)', path: o.bundle });
  }
  for (const p of evals) {
    data.evals.push(...readEvals(p));
    sources.push({ what: 'eval ppl', path: p });
  }
  for (const p of benches) {
    data.benches.push(...readBenches(p));
    sources.push({ what: 'bench', path: p });
  }
  return data;
}
