/**
 * The quality a bundle records at export (manifest `quality`, docs/bundle.md): what `--ppl-budget` or `--calib-data`
 * measured on calibration documents. Runtimes print it beside their own figures (`describeRecordedQuality`).
 */
import type { OverlapReport } from './calib-overlap.js';
import type { BundleManifest } from './bundle.js';
import type { DeviceRecord } from './measure.js';

export interface QualityRecord {
  /** Relative perplexity budget (0.01 = 1%); null when only measured (`--recall` with `--calib-data`). */
  budget: number | null;
  /** Whether a sparse configuration met the budget (false: the densest bundle); null without a budget. */
  met: boolean | null;
  message?: string;
  calibration: { data: string[]; docs: number; tokens: number; max_len: number; selection: { docs?: number } };
  dense_ppl: number;
  predicted_ppl: number;
  /** predicted_ppl / dense_ppl - 1 */
  delta: number;
  kv_policy: 'all' | 'selected';
  mlp_selection: 'exact' | 'grouped';
  mlp_groups: number;
  /** What measured: the CPU runtime or the CUDA engine (absent in bundles exported before the GPU could measure). */
  device?: DeviceRecord;
  /** Per layer, the k exported (null: dense). */
  layers: { layer: number; mlp_k: number | null; heads_k: number | null }[];
  /** Decode bytes per token (runtime/cuda/floor.ts avgStepBytes, fp16 weights) at context prompt + gen. */
  bytes_per_token: { dense: number; bundle: number; prompt: number; gen: number };
  overlap: OverlapReport;
  search?: SearchRecord;
  seconds: number;
}

export interface SearchRecord {
  /** Calibration documents the per-unit sensitivities were measured on (the first ones, cut short), and their
   *  predicted tokens. */
  sensitivity_docs: number;
  sensitivity_tokens: number;
  units: { layer: number; target: 'mlp' | 'attn'; out: number; rank: number; levels: number[]; cost: number[] }[];
  /** The greedy path: per point, k per unit (the order of `units`; out = dense), bytes, estimated and (where
   *  measured) measured relative perplexity increase. */
  path: { ks: number[]; bytes: number; estimate: number; measured: number | null }[];
  chosen: number;
  /** Every configuration measured on all calibration documents (over all rounds). */
  measurements: { ks: number[]; bytes: number; measured: number }[];
  /** Rounds of path + bisection (searchWithFeedback). */
  rounds: number;
  evaluations: number;
}

const pct = (v: number) => `${v >= 0 ? '+' : ''}${(100 * v).toFixed(2)}%`;
const onDevice = (d: DeviceRecord | undefined) => (d ? `, measured on ${d.type}${d.type === 'cuda' ? ` (${d.name})` : ''}` : '');

/** One line about the quality recorded in the manifest, or undefined when none was measured at export. */
export function describeRecordedQuality(manifest: Pick<BundleManifest, 'quality'>): string | undefined {
  const q = manifest.quality as Partial<QualityRecord> | undefined;
  if (!q || typeof q.dense_ppl !== 'number' || typeof q.predicted_ppl !== 'number' || !q.calibration) return undefined;
  const c = q.calibration;
  const budget = typeof q.budget === 'number' ? `, budget ${pct(q.budget).replace(/^\+/, '')}${q.met === false ? ' (not met: densest bundle)' : ''}` : '';
  const sel = q.mlp_selection === 'grouped' ? `grouped (G = ${q.mlp_groups})` : (q.mlp_selection ?? 'exact');
  return (
    `recorded at export: predicted ppl ${q.predicted_ppl.toFixed(3)} vs dense ${q.dense_ppl.toFixed(3)} ` +
    `(${pct(q.predicted_ppl / q.dense_ppl - 1)}) on ${c.docs} calibration docs (${c.tokens} tokens, max-len ${c.max_len})` +
    `${budget}, KV ${q.kv_policy ?? 'all'}, MLP ${sel}${onDevice(q.device)}`
  );
}

const mb = (b: number) => `${(b / 1e6).toFixed(3)} MB`;

/** The export summary's lines about a measured bundle (what `dejavu export` prints after its table). */
export function describeQuality(q: QualityRecord): string[] {
  const c = q.calibration;
  const lines = [
    `calibration: ${c.docs} docs, ${c.tokens} tokens, max-len ${c.max_len} (${c.data.join(', ')}); KV ${q.kv_policy}, MLP ${q.mlp_selection}` +
      (q.mlp_selection === 'grouped' ? ` (G = ${q.mlp_groups})` : '') + onDevice(q.device),
    `perplexity on it: dense ${q.dense_ppl.toFixed(3)}, this bundle ${q.predicted_ppl.toFixed(3)} (${pct(q.delta)})` +
      (q.budget === null ? '' : `; budget ${pct(q.budget).replace(/^\+/, '')}: ${q.met ? 'met' : 'not met'}`),
    `decode bytes per token (prompt ${q.bytes_per_token.prompt} + ${q.bytes_per_token.gen}): dense ${mb(q.bytes_per_token.dense)}, ` +
      `this bundle ${mb(q.bytes_per_token.bundle)} (${(100 * (q.bytes_per_token.bundle / q.bytes_per_token.dense)).toFixed(1)}%)`,
  ];
  if (q.search) {
    lines.push(`search: ${q.search.units.length} predictors, ${q.search.path.length} path points, ${q.search.rounds} round(s), ${q.search.evaluations} configurations measured on every calibration doc`);
  }
  const o = q.overlap;
  lines.push(
    o.checked
      ? `overlap with the predictors' ${o.training_docs} training docs: ${o.overlap} of ${o.calibration_docs} calibration docs`
      : `overlap with the predictors' training docs: not checked (${o.note})`,
  );
  if (q.message) lines.push(q.message);
  return lines;
}

/** The recorded quality for a runtime's --json output: the one-line summary and the figures, without the search. */
export function recordedQualityJson(manifest: Pick<BundleManifest, 'quality'>): Record<string, unknown> | undefined {
  const summary = describeRecordedQuality(manifest);
  if (!summary) return undefined;
  const q = manifest.quality as unknown as QualityRecord;
  const { budget, met, calibration, dense_ppl, predicted_ppl, delta, kv_policy, mlp_selection, mlp_groups, device } = q;
  return { summary, budget, met, calibration, dense_ppl, predicted_ppl, delta, kv_policy, mlp_selection, mlp_groups, device, bytes_per_token: q.bytes_per_token };
}
