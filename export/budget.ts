/**
 * `dejavu export --ppl-budget P --calib-data FILES` and `export --recall ... --calib-data FILES`: export measured on
 * calibration documents. The search itself is export/budget-search.ts (pure); this module reads the calibration
 * text, runs the measurements through the eval machinery (export/measure.ts: the CPU runtime's, or the CUDA
 * engine's with `device` cuda; the KV policy and MLP selection given) and writes the bundle with its `quality`
 * record (export/quality.ts), which names the device that measured.
 *
 * All predictors are first exported to a staging bundle in the OS temp folder (fp16, exactly what the final bundle
 * holds); every measurement loads that one and replaces per-layer k in memory (export/layer-k.ts). The staging
 * folder is removed at the end, whatever happens.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { OptCheckpoint } from '../checkpoints/types.js';
import { DejavuError } from '../common/errors.js';
import { log, progressBar, warn } from '../common/progress.js';
import { createReadStats, describeSkips, readDocuments } from '../datasets/read.js';
import { loadTokenizer } from '../datasets/tokenizer.js';
import type { Dims } from '../runtime/cuda/floor.js';
import type { KvPolicy } from '../runtime/sparse/model.js';
import type { CudaLib, CudaOptions } from '../runtime/cuda/lib.js';
import { groupedSelectionProblem, loadBundle, type Bundle } from './bundle.js';
import {
  HEAD_FACTORS,
  MLP_FACTORS,
  configBytes,
  searchWithFeedback,
  ladder,
  layerKs,
  monotoneCosts,
  type ByteModel,
  type SearchUnit,
} from './budget-search.js';
import { textHash, trainingOverlap } from './calib-overlap.js';
import { exportBundle, type ExportOptions, type ExportSummary } from './export.js';
import type { LayerK } from './layer-k.js';
import { cpuMeasurer, type PplMeasurer } from './measure.js';
import type { QualityRecord, SearchRecord } from './quality.js';

export interface CalibrationOptions {
  /** The model folder (its tokenizer). */
  model: string;
  data: string[];
  /** The first N documents of `data`. */
  docs: number;
  /** Tokens per document, BOS included. */
  maxLen: number;
  kvPolicy?: KvPolicy;
  /** Grouped MLP top-k over G neuron groups (undefined: exact on the CPU). On cuda the GPU picks G itself; a G
   *  given here must equal it. */
  mlpGroups?: number;
  /** MLP selection measured; default grouped when mlpGroups is given, else exact. */
  mlpSelection?: 'exact' | 'grouped';
  /** CPU worker threads of the sparse measurements. */
  threads?: number;
  /** Where the measurements run (default the CPU runtime). cuda: the CUDA engine, the library given. */
  device?: { type: 'cpu' } | { type: 'cuda'; lib: CudaLib; path?: CudaOptions['path'] };
  quiet?: boolean;
  /** The per-unit sensitivities are measured on the first `sensitivityDocs` calibration documents, each
   *  cut to `sensitivityLen` tokens (default 4 x 128): they only order the search; the choice is measured on every doc. */
  sensitivityDocs?: number;
  sensitivityLen?: number;
  /** Decode context of the byte model (default 128 + 128, as the benches). */
  prompt?: number;
  gen?: number;
}

export interface BudgetExportSummary extends ExportSummary {
  quality: QualityRecord;
}

export interface CalibrationDocs {
  ids: Int32Array[];
  hashes: string[];
  tokens: number;
}

/** The first `docs` documents of `data`, each `[BOS] + text` cut to maxLen (documents under 2 tokens dropped). */
export async function readCalibration(model: string, data: string[], docs: number, maxLen: number): Promise<CalibrationDocs> {
  const tok = await loadTokenizer(model);
  const stats = createReadStats();
  const out: CalibrationDocs = { ids: [], hashes: [], tokens: 0 };
  for await (const doc of readDocuments(data, { docs }, stats)) {
    const ids = tok.encode(doc.text, maxLen);
    if (ids.length < 2) continue;
    out.ids.push(ids);
    out.hashes.push(textHash(doc.text));
    out.tokens += ids.length - 1;
  }
  const skips = describeSkips(stats);
  if (skips) log(skips);
  if (out.ids.length === 0) throw new DejavuError('no calibration document of 2 tokens or more', '--calib-data');
  return out;
}

export function dimsOf(ckpt: OptCheckpoint): Dims {
  const c = ckpt.config;
  return { vocab: c.vocabSize, d: c.hiddenSize, layers: c.numLayers, heads: c.numHeads, ffn: c.ffnDim, maxPos: c.maxPositionEmbeddings };
}

/** The predictors of a staging bundle as search units, each with its ladder of candidate k around its k99. */
export function unitsOf(bundle: Bundle): SearchUnit[] {
  const units: SearchUnit[] = [];
  for (let l = 0; l < bundle.manifest.model.n_layers; l++) {
    for (const target of ['mlp', 'attn'] as const) {
      const p = bundle[target][l];
      if (!p) continue;
      const k99 = typeof p.metrics.k99 === 'number' ? p.metrics.k99 : p.k;
      const levels = ladder(p.out, k99, target === 'mlp' ? MLP_FACTORS : HEAD_FACTORS);
      if (levels.length) units.push({ layer: l, target, out: p.out, rank: p.rank, levels });
    }
  }
  return units;
}

const r4 = (v: number) => Math.round(v * 1e4) / 1e4 + 0; // + 0: no -0 in the JSON
const pct = (v: number) => `${v >= 0 ? '+' : ''}${(100 * v).toFixed(2)}%`;

const selectionOf = (c: CalibrationOptions) => c.mlpSelection ?? (c.mlpGroups !== undefined ? 'grouped' : 'exact');

/** The measurer of the device asked for, holding the staging bundle's predictors (export/measure.ts). */
async function openMeasurer(ckpt: OptCheckpoint, staged: { dir: string; bundle: Bundle }, c: CalibrationOptions, cal: CalibrationDocs): Promise<PplMeasurer> {
  const dev = c.device ?? { type: 'cpu' };
  if (dev.type === 'cpu') {
    if (selectionOf(c) === 'grouped' && c.mlpGroups === undefined) throw new DejavuError('grouped needs --mlp-groups G on the CPU', '--mlp-select');
    const m = cpuMeasurer(ckpt, staged.bundle, { kvPolicy: c.kvPolicy, mlpGroups: c.mlpGroups, threads: c.threads });
    log(`calibration on the CPU (${m.device.threads} worker thread${m.device.threads === 1 ? '' : 's'})`);
    return m;
  }
  const { cudaMeasurer } = await import('../runtime/cuda/calib-ppl.js');
  return cudaMeasurer(dev.lib, {
    model: ckpt.dir,
    bundle: staged.dir,
    maxT: cal.ids.reduce((a, d) => Math.max(a, d.length), 2),
    kvPolicy: c.kvPolicy ?? 'all',
    selection: selectionOf(c),
    path: dev.path,
    mlpGroups: c.mlpGroups,
  });
}

function stage(ckpt: OptCheckpoint, o: ExportOptions): { dir: string; bundle: Bundle } {
  const dir = mkdtempSync(join(tmpdir(), 'dejavu-calib-'));
  try {
    exportBundle({ ...o, out: dir, layerK: undefined, quality: undefined }, ckpt);
    return { dir, bundle: loadBundle(dir, ckpt) };
  } catch (e) {
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
}

function checkCalibration(ckpt: OptCheckpoint, bundle: Bundle, c: CalibrationOptions): void {
  if (!(Number.isInteger(c.maxLen) && c.maxLen >= 2)) throw new DejavuError(`${c.maxLen} must be an integer >= 2`, '--calib-max-len');
  if (c.maxLen > ckpt.config.maxPositionEmbeddings) {
    throw new DejavuError(`${c.maxLen} exceeds max_position_embeddings ${ckpt.config.maxPositionEmbeddings}`, '--calib-max-len');
  }
  if (selectionOf(c) === 'grouped') {
    const why = groupedSelectionProblem(bundle);
    if (why) throw new DejavuError(why, '--mlp-select');
  }
}

/** The quality record's common part. */
function baseRecord(c: CalibrationOptions, cal: CalibrationDocs, densePpl: number, m: PplMeasurer): Omit<QualityRecord, 'budget' | 'met' | 'predicted_ppl' | 'delta' | 'layers' | 'bytes_per_token' | 'overlap' | 'seconds'> {
  return {
    calibration: { data: c.data, docs: cal.ids.length, tokens: cal.tokens, max_len: c.maxLen, selection: { docs: c.docs } },
    dense_ppl: r4(densePpl),
    kv_policy: c.kvPolicy ?? 'all',
    mlp_selection: selectionOf(c),
    mlp_groups: m.mlpGroups ?? 1,
    device: m.device,
  };
}

const layersOf = (k: LayerK) => k.mlp.map((m, l) => ({ layer: l, mlp_k: m, heads_k: k.attn[l] }));

/** The calibration documents, checked against the bundle, and their overlap with the predictors' training documents (reported). */
async function calibrationDocs(ckpt: OptCheckpoint, bundle: Parameters<typeof checkCalibration>[1], c: CalibrationOptions, predictors: string) {
  checkCalibration(ckpt, bundle, c);
  const cal = await readCalibration(c.model, c.data, c.docs, c.maxLen);
  const overlap = await trainingOverlap(predictors, cal.hashes);
  reportOverlap(overlap);
  return { cal, overlap };
}

/** `export --recall ... --calib-data`: the bundle as export would write it, with its measured cost recorded. */
export async function exportMeasured(o: ExportOptions, c: CalibrationOptions, ckpt: OptCheckpoint): Promise<BudgetExportSummary> {
  const t0 = performance.now();
  const staged = stage(ckpt, o);
  const { bundle } = staged;
  let m: PplMeasurer | undefined;
  try {
    const { cal, overlap } = await calibrationDocs(ckpt, bundle, c, o.predictors);
    m = await openMeasurer(ckpt, staged, c, cal);
    const dense = await m.dense(cal.ids);
    const predicted = await m.predicted(cal.ids, undefined, !!c.quiet);
    const k: LayerK = { mlp: bundle.mlp.map((p) => p?.k ?? null), attn: bundle.attn.map((p) => p?.k ?? null) };
    const units = unitsOf(bundle);
    const bm = byteModel(ckpt, c);
    const ks = units.map((u) => (u.target === 'mlp' ? k.mlp : k.attn)[u.layer] ?? u.out);
    const quality: QualityRecord = {
      budget: null,
      met: null,
      ...baseRecord(c, cal, dense, m),
      predicted_ppl: r4(predicted),
      delta: r4(predicted / dense - 1),
      layers: layersOf(k),
      bytes_per_token: { dense: configBytes(units, units.map((u) => u.out), bm), bundle: configBytes(units, ks, bm), prompt: bm.prompt, gen: bm.gen },
      overlap,
      seconds: Math.round((performance.now() - t0) / 100) / 10,
    };
    return { ...exportBundle({ ...o, quality: quality as unknown as Record<string, unknown> }, ckpt), quality };
  } finally {
    m?.close();
    rmSync(staged.dir, { recursive: true, force: true });
  }
}

function byteModel(ckpt: OptCheckpoint, c: CalibrationOptions): ByteModel {
  return { dims: dimsOf(ckpt), kvPolicy: c.kvPolicy ?? 'all', prompt: c.prompt ?? 128, gen: c.gen ?? 128 };
}

function reportOverlap(r: Awaited<ReturnType<typeof trainingOverlap>>): void {
  if (!r.checked) warn(`calibration docs: could not check them against the predictors' training docs (${r.note})`);
  else if (r.overlap > 0) {
    warn(
      `calibration docs: ${r.overlap} of ${r.calibration_docs} are among the ${r.training_docs} documents the predictors were trained on ` +
        `(shards ${r.shards}); their perplexity flatters the predictors: calibrate on other documents`,
    );
  }
}

/** `export --ppl-budget P`: the search (export/budget-search.ts), then the bundle with the chosen per-layer k. */
export async function exportToBudget(o: ExportOptions, budget: number, c: CalibrationOptions, ckpt: OptCheckpoint): Promise<BudgetExportSummary> {
  if (!(Number.isFinite(budget) && budget >= 0)) throw new DejavuError(`${budget} must be a relative perplexity increase >= 0 (e.g. 1% or 0.01)`, '--ppl-budget');
  const t0 = performance.now();
  const staged = stage(ckpt, o);
  const { bundle } = staged;
  let m: PplMeasurer | undefined;
  try {
    const { cal, overlap } = await calibrationDocs(ckpt, bundle, c, o.predictors);
    const calib = (m = await openMeasurer(ckpt, staged, c, cal));
    const n = ckpt.config.numLayers;
    const units = unitsOf(bundle);
    const bm = byteModel(ckpt, c);
    const dense = await calib.dense(cal.ids);
    log(`calibration: ${cal.ids.length} docs, ${cal.tokens} tokens, dense ppl ${dense.toFixed(3)}; budget ${pct(budget).slice(1)}`);

    // 1-2. Sensitivity of each unit at each level alone, on the first calibration documents.
    const sensN = Math.min(cal.ids.length, c.sensitivityDocs ?? 4);
    const sensLen = c.sensitivityLen ?? 128;
    const sensDocs = cal.ids.slice(0, sensN).map((ids) => ids.subarray(0, sensLen));
    const measuredCost: number[][] = units.map((u) => u.levels.map(() => NaN));
    if (budget > 0 && units.length) {
      const sensDense = await calib.dense(sensDocs);
      const total = units.reduce((a, u) => a + u.levels.length, 0);
      const bar = progressBar('budget: sensitivity', total, 'evals', c.quiet);
      for (let i = 0; i < units.length; i++) {
        for (let j = 0; j < units[i].levels.length; j++) {
          const ks = units.map((u) => u.out);
          ks[i] = units[i].levels[j];
          const ppl = await calib.predicted(sensDocs, layerKs(units, ks, n), true);
          measuredCost[i][j] = Math.log(ppl / sensDense);
          bar.increment();
        }
      }
      bar.stop();
    }
    const costs = monotoneCosts(measuredCost.map((row) => row.map((v) => (Number.isNaN(v) ? 0 : v))));

    // 3. The greedy path; 4. verification by bisection on every calibration document, the estimate corrected by
    // what is measured (searchWithFeedback).
    let evals = 0;
    const res = await searchWithFeedback(units, costs, bm, budget, async (ks) => {
      evals++;
      const ppl = await calib.predicted(cal.ids, layerKs(units, ks, n), !!c.quiet);
      const d = ppl / dense - 1;
      log(`budget: measured ${pct(d)} at ${(configBytes(units, ks, bm) / 1e6).toFixed(3)} MB/token -> ${d <= budget ? 'within' : 'over'} the budget`);
      return d;
    });
    const k = layerKs(units, res.ks, n);
    const met = res.bytes < res.path[0].bytes;
    const delta = met ? res.measured : 0;
    let message: string | undefined;
    if (!met) {
      const tried = res.measurements.map((x) => x.measured);
      message =
        budget <= 0
          ? `a budget of ${pct(budget).slice(1)} allows no perplexity increase: only the dense model meets it; the bundle keeps every layer dense (the densest bundle)`
          : `no sparse configuration met the budget of ${pct(budget).slice(1)} on the calibration docs` +
            (tried.length ? ` (the cheapest measured cost: ${pct(Math.min(...tried))})` : '') +
            '; the bundle keeps every layer dense (the densest bundle): raise the budget or train better predictors';
      warn(message);
    }
    const search: SearchRecord = {
      sensitivity_docs: budget > 0 ? sensN : 0,
      sensitivity_tokens: budget > 0 ? sensDocs.reduce((a, d) => a + d.length - 1, 0) : 0,
      units: units.map((u, i) => ({ layer: u.layer, target: u.target, out: u.out, rank: u.rank, levels: u.levels, cost: measuredCost[i].map((v) => (Number.isNaN(v) ? null : r4(v))) as number[] })),
      path: res.path.map((p) => {
        const hit = res.measurements.find((x) => x.ks.join(',') === p.ks.join(','));
        return { ks: p.ks, bytes: Math.round(p.bytes), estimate: r4(p.estimate), measured: hit ? r4(hit.measured) : null };
      }),
      chosen: res.chosen,
      measurements: res.measurements.map((x) => ({ ks: x.ks, bytes: Math.round(x.bytes), measured: r4(x.measured) })),
      rounds: res.rounds,
      evaluations: evals,
    };
    const quality: QualityRecord = {
      budget,
      met,
      ...(message ? { message } : {}),
      ...baseRecord(c, cal, dense, calib),
      predicted_ppl: r4(dense * (1 + delta)),
      delta: r4(delta),
      layers: layersOf(k),
      bytes_per_token: { dense: Math.round(res.path[0].bytes), bundle: Math.round(res.bytes), prompt: bm.prompt, gen: bm.gen },
      overlap,
      search,
      seconds: Math.round((performance.now() - t0) / 100) / 10,
    };
    const s = exportBundle({ ...o, layerK: k, layerKRule: 'budget', quality: quality as unknown as Record<string, unknown> }, ckpt);
    return { ...s, quality };
  } finally {
    m?.close();
    rmSync(staged.dir, { recursive: true, force: true });
  }
}
