/**
 * The CUDA bench's densities and text (pure functions, no GPU): the sweep grid, k at a density, the two KV policies
 * side by side, the sweep tables and the line that says where the opt-in modes' quality cost is measured.
 */
import type { CudaOptions } from './lib.js';

export type KvPolicy = CudaOptions['kvPolicy'];

/** `--sweep`'s grid: fractions of the heads (rows) and of the MLP neurons (columns) kept. */
export const SWEEP_HEADS = [0.2, 0.5, 0.75, 1] as const;
export const SWEEP_NEURONS = [0.05, 0.1, 0.2, 0.5] as const;
/** Both KV policies, the default first. */
export const SWEEP_KV_POLICIES: readonly KvPolicy[] = ['all', 'selected'];

/** Units kept of n at a density: round(frac x n), at least 1, at most n (as randomPredictors and setDensity). */
export function kAt(frac: number, n: number): number {
  return Math.max(1, Math.min(n, Math.round(frac * n)));
}

/** The other KV policy (the one not chosen by --kv-policy, timed beside it). */
export function otherKvPolicy(p: KvPolicy): KvPolicy {
  return p === 'all' ? 'selected' : 'all';
}

/** One point of `--sweep`: the requested densities, the policy, the measured ms/token and its floor. */
export interface SweepPoint {
  heads: number;
  neurons: number;
  kv_policy: KvPolicy;
  ms_per_token: number;
  /** Bytes of this configuration's step / copy bandwidth. */
  floor_ms?: number;
  speedup?: number;
  /** Fractions actually kept, averaged over layers (a layer without a predictor stays dense). */
  kept?: { heads: number; neurons: number };
  /** The MLP selection's G per layer (1 under exact). */
  mlp_groups?: number[];
}

/** How the opt-in modes' quality cost is measured (JSON `quality_cost`, and the text). */
export const QUALITY_COST =
  'KV policy selected and --mlp-select grouped are opt-in (faster); their perplexity cost is measured by ' +
  '`dejavu eval ppl --bundle B --kv-policy all|selected --mlp-select exact|grouped [--mlp-groups G]` (G: mlp_groups), docs/cuda.md';

const pct = (x: number) => `${Math.round(x * 1000) / 10}%`;
const ms = (v: unknown) => (typeof v === 'number' && Number.isFinite(v) ? v.toFixed(3) : '-');

/** G per layer in a few words: "G = 128 in every layer", or each distinct G with its layer count. */
export function groupsText(g: unknown): string {
  if (typeof g === 'number') return `G = ${g}`;
  if (!Array.isArray(g) || g.length === 0) return 'G = -';
  const counts = new Map<number, number>();
  for (const x of g as number[]) counts.set(x, (counts.get(x) ?? 0) + 1);
  if (counts.size === 1) return `G = ${g[0]} in every layer`;
  return `G = ${[...counts].map(([v, n]) => `${v} (${n} layer${n === 1 ? '' : 's'})`).join(', ')}`;
}

/**
 * The sweep as text: one table per KV policy, rows = heads kept, columns = neurons kept, cells = sparse ms/token.
 * A point the result lacks prints '-'.
 */
export function sweepTables(points: SweepPoint[], o: { denseMs?: number; floorMs?: number } = {}): string {
  const heads = [...new Set(points.map((p) => p.heads))].sort((a, b) => a - b);
  const neurons = [...new Set(points.map((p) => p.neurons))].sort((a, b) => a - b);
  const policies = SWEEP_KV_POLICIES.filter((k) => points.some((p) => p.kv_policy === k));
  const w = 9;
  const lines: string[] = [];
  lines.push(`dense ${ms(o.denseMs)} ms/token, dense floor ${ms(o.floorMs)} ms`);
  for (const kv of policies) {
    lines.push('', `sparse ms/token, KV policy ${kv} (rows: heads kept, columns: MLP neurons kept)`);
    lines.push(`${'heads'.padEnd(7)}${neurons.map((n) => pct(n).padStart(w)).join('')}`);
    for (const h of heads) {
      const cells = neurons.map((n) => {
        const p = points.find((q) => q.kv_policy === kv && q.heads === h && q.neurons === n);
        return ms(p?.ms_per_token).padStart(w);
      });
      lines.push(`${pct(h).padEnd(7)}${cells.join('')}`);
    }
  }
  return lines.join('\n');
}

/** The two KV policies side by side (a CUDA bench result's kv_policies); '' when the result has none. */
export function kvPoliciesTable(r: Record<string, unknown>): string {
  const kp = r.kv_policies;
  if (typeof kp !== 'object' || !kp) return '';
  const chosen = r.kv_policy;
  const lines = ['sparse by KV policy   ms/token   floor ms   x dense floor   speedup'];
  for (const k of SWEEP_KV_POLICIES) {
    const p = (kp as Record<string, Record<string, unknown> | undefined>)[k];
    if (!p) continue;
    const name = `${k}${k === chosen ? ' (chosen)' : ''}`;
    lines.push(
      `  ${name.padEnd(19)}${ms(p.ms_per_token).padStart(9)}${ms(p.floor_ms).padStart(11)}${ms(p.vs_dense_floor).padStart(16)}${ms(p.speedup).padStart(10)}`,
    );
  }
  return lines.join('\n');
}
