/**
 * The search behind `dejavu export --ppl-budget P` (pure functions; the measurements are passed in). It picks, per
 * layer and target, how many neurons / heads a decode step keeps so that the predicted perplexity on calibration
 * documents stays within P of dense while the decode step moves as few bytes as possible (docs/bundle.md, "Export to
 * a quality budget"):
 *
 *  1. Each predictor (a "unit": one layer's MLP or heads) gets a ladder of candidate k, descending, around its own
 *     validation k99 (`ladder`); "dense" (no predictor run, every neuron / head) is the level above the ladder.
 *  2. Sensitivity: the calibration cost of each unit at each level alone, every other unit dense, measured by the
 *     caller as a log-perplexity increase. `monotoneCosts` makes each ladder's costs non-decreasing and >= 0 (fewer
 *     neurons cannot cost less; a lower figure is measurement noise).
 *  3. `greedyPath`: from all-dense, repeatedly take the one move (a unit down to any lower level of its ladder) with
 *     the most decode bytes saved per unit of estimated cost, where the estimate adds the units' log-perplexity costs
 *     (additivity: the first-order view, exact when units do not interact). Every point of the path is a complete
 *     configuration, cheaper in bytes than the one before.
 *  4. `bisectPath`: the estimates only order the path; the choice is made by measuring whole configurations on all
 *     calibration documents with the real runtime. A bisection keeps the furthest point measured within the budget
 *     and backs off from any measured over it. The result is always a configuration whose measured cost is within P
 *     (all-dense, cost 0, when no measured sparse point is).
 */
import { avgStepBytes, type Dims } from '../runtime/cuda/floor.js';

export type UnitTarget = 'mlp' | 'attn';

/** One predictor the search may use. */
export interface SearchUnit {
  layer: number;
  target: UnitTarget;
  /** Neurons (mlp) or heads (attn) of the layer: k = out is dense. */
  out: number;
  rank: number;
  /** Candidate k, strictly descending, each in 1..out-1. */
  levels: number[];
}

/** Default ladders, as multiples of the predictor's validation k99. */
export const MLP_FACTORS = [1.5, 1, 0.75, 0.5] as const;
export const HEAD_FACTORS = [1.25, 1, 0.75] as const;

/** Candidate k for a predictor: round(f * k99) for each factor, clipped to 1..out-1, distinct, descending. */
export function ladder(out: number, k99: number, factors: readonly number[]): number[] {
  const ks = factors.map((f) => Math.min(out - 1, Math.max(1, Math.round(f * k99))));
  return [...new Set(ks)].filter((k) => k >= 1 && k < out).sort((a, b) => b - a);
}

/** A configuration: per unit, the k kept (k = out: dense, the predictor not run). */
export type UnitKs = number[];

export interface ByteModel {
  dims: Dims;
  kvPolicy: 'all' | 'selected';
  /** Context of the average step (avgStepBytes): prompt tokens then generated tokens. */
  prompt: number;
  gen: number;
}

/** Per layer k (null = dense) of a configuration. */
export function layerKs(units: SearchUnit[], ks: UnitKs, nLayers: number): { mlp: (number | null)[]; attn: (number | null)[] } {
  const mlp = new Array<number | null>(nLayers).fill(null);
  const attn = new Array<number | null>(nLayers).fill(null);
  units.forEach((u, i) => {
    if (ks[i] < u.out) (u.target === 'mlp' ? mlp : attn)[u.layer] = ks[i];
  });
  return { mlp, attn };
}

/** Decode bytes per token of a configuration (runtime/cuda/floor.ts: weights, KV cache, predictors, LM head). */
export function configBytes(units: SearchUnit[], ks: UnitKs, m: ByteModel): number {
  const { layers, heads, ffn } = m.dims;
  const kH = new Array<number>(layers).fill(heads);
  const kM = new Array<number>(layers).fill(ffn);
  const rankAttn = new Array<number>(layers).fill(0);
  const rankMlp = new Array<number>(layers).fill(0);
  units.forEach((u, i) => {
    if (ks[i] >= u.out) return;
    if (u.target === 'mlp') {
      kM[u.layer] = ks[i];
      rankMlp[u.layer] = u.rank;
    } else {
      kH[u.layer] = ks[i];
      rankAttn[u.layer] = u.rank;
    }
  });
  return avgStepBytes(m.dims, m.prompt, m.gen, { kH, kM, rankAttn, rankMlp, kvPolicy: m.kvPolicy }).total;
}

/**
 * Per unit and level, the cost to use (log-perplexity increase): the running maximum along the ladder, from 0 for
 * dense. A unit at fewer neurons than a cheaper-measured level gets at least that level's cost.
 */
export function monotoneCosts(measured: number[][]): number[][] {
  return measured.map((row) => {
    let m = 0;
    return row.map((v) => (m = Math.max(m, Number.isFinite(v) ? v : Infinity)));
  });
}

export interface PathPoint {
  ks: UnitKs;
  bytes: number;
  /** Estimated relative perplexity increase: exp(sum of the units' log-perplexity costs) - 1. */
  estimate: number;
  /** The move that led here (absent for the all-dense start). */
  move?: { unit: number; from: number; to: number };
}

/** Costs below this count as free: such moves go first, the most bytes first. */
const FREE = 1e-9;

/**
 * The greedy path from all-dense (point 0) to every unit at the bottom of its ladder (or as far as a move still saves
 * bytes). `costs[u][j]` is unit u's cost at level j (use monotoneCosts). Each step takes the move with the most bytes
 * saved per unit of cost added; a unit may jump several levels at once (a predictor that costs more bytes than it
 * saves at its first level can still pay off at a lower one).
 */
export function greedyPath(units: SearchUnit[], costs: number[][], m: ByteModel): PathPoint[] {
  if (costs.length !== units.length || costs.some((row, i) => row.length !== units[i].levels.length)) {
    throw new Error('greedyPath: one cost per unit and level expected');
  }
  const level = units.map(() => -1);
  const ks: UnitKs = units.map((u) => u.out);
  const cost = () => level.reduce((a, j, i) => a + (j < 0 ? 0 : costs[i][j]), 0);
  let bytes = configBytes(units, ks, m);
  const path: PathPoint[] = [{ ks: [...ks], bytes, estimate: 0 }];
  for (;;) {
    let best: { unit: number; level: number; saved: number; ratio: number } | null = null;
    units.forEach((u, i) => {
      const c0 = level[i] < 0 ? 0 : costs[i][level[i]];
      for (let j = level[i] + 1; j < u.levels.length; j++) {
        if (!Number.isFinite(costs[i][j])) break;
        const trial = [...ks];
        trial[i] = u.levels[j];
        const saved = bytes - configBytes(units, trial, m);
        if (saved <= 0) continue;
        const ratio = saved / Math.max(costs[i][j] - c0, FREE);
        if (!best || ratio > best.ratio || (ratio === best.ratio && saved > best.saved)) best = { unit: i, level: j, saved, ratio };
      }
    });
    if (!best) break;
    const b = best as { unit: number; level: number; saved: number };
    const from = ks[b.unit];
    level[b.unit] = b.level;
    ks[b.unit] = units[b.unit].levels[b.level];
    bytes -= b.saved;
    path.push({ ks: [...ks], bytes, estimate: Math.expm1(cost()), move: { unit: b.unit, from, to: ks[b.unit] } });
  }
  return path;
}

export interface BisectResult {
  /** Index of the chosen path point (0 = all dense). */
  chosen: number;
  /** Measured relative perplexity increase per path index evaluated. */
  measured: Map<number, number>;
}

/**
 * Choose the furthest path point whose measured cost is within `budget`, measuring as few points as a bisection
 * needs. Point 0 (all dense) costs 0 by definition. The search range ends at the first point estimated above
 * `reach * budget` (further points are assumed over budget and never chosen unmeasured); the first point measured is
 * the last one estimated within the budget. A budget <= 0 measures nothing: only dense meets it.
 */
export async function bisectPath(
  path: PathPoint[],
  budget: number,
  measure: (index: number) => Promise<number>,
  reach = 3,
): Promise<BisectResult> {
  const measured = new Map<number, number>();
  if (!(budget > 0) || path.length < 2) return { chosen: 0, measured };
  let lo = 0;
  let hi = path.findIndex((p, i) => i > 0 && p.estimate > reach * budget);
  if (hi < 0) hi = path.length;
  hi = Math.max(hi, 2);
  let guess = 0;
  for (let i = 1; i < hi; i++) if (path[i].estimate <= budget) guess = i;
  let first = true;
  while (hi - lo > 1) {
    const mid = first && guess > lo && guess < hi ? guess : Math.floor((lo + hi) / 2);
    first = false;
    const d = await measure(mid);
    measured.set(mid, d);
    if (d <= budget) lo = mid;
    else hi = mid;
  }
  return { chosen: lo, measured };
}

/**
 * The cost table corrected by a measurement: path point `hi` (measured `dHi`) is point `hi - 1` (measured `dLo`)
 * plus one move, so that move's unit gets the measured difference as its cost at the level moved to (and at least
 * that further down its ladder). Returns null when nothing changes.
 */
export function learnMove(costs: number[][], units: SearchUnit[], path: PathPoint[], hi: number, dLo: number, dHi: number): number[][] | null {
  const move = path[hi]?.move;
  if (!move) return null;
  const i = move.unit;
  const j = units[i].levels.indexOf(move.to);
  const from = units[i].levels.indexOf(move.from);
  const c0 = from < 0 ? 0 : costs[i][from];
  const c = c0 + Math.max(0, Math.log1p(dHi) - Math.log1p(dLo));
  if (!(c > costs[i][j])) return null;
  const next = costs.map((row) => [...row]);
  for (let k = j; k < next[i].length; k++) next[i][k] = Math.max(next[i][k], c);
  return next;
}

export interface FeedbackResult {
  /** The configuration chosen: measured within the budget (all dense when none was). */
  ks: UnitKs;
  bytes: number;
  measured: number;
  /** The last round's path and the index chosen on it. */
  path: PathPoint[];
  chosen: number;
  /** Every configuration measured on the calibration documents, in order. */
  measurements: { ks: UnitKs; bytes: number; measured: number }[];
  costs: number[][];
  rounds: number;
}

/**
 * greedyPath + bisectPath, repeated: when the point right after the chosen one was measured over the budget, the move
 * into it is the culprit; its measured cost replaces the estimate (learnMove) and the path is rebuilt, so one
 * underestimated predictor no longer cuts the path short for the others. Measurements are cached by configuration.
 * The result is the cheapest configuration in bytes measured within the budget over all rounds.
 */
export async function searchWithFeedback(
  units: SearchUnit[],
  costs0: number[][],
  m: ByteModel,
  budget: number,
  measure: (ks: UnitKs) => Promise<number>,
  maxRounds = 4,
): Promise<FeedbackResult> {
  const cache = new Map<string, number>();
  const measurements: FeedbackResult['measurements'] = [];
  const measureKs = async (ks: UnitKs, bytes: number): Promise<number> => {
    const key = ks.join(',');
    if (!cache.has(key)) {
      const d = await measure(ks);
      cache.set(key, d);
      measurements.push({ ks: [...ks], bytes, measured: d });
    }
    return cache.get(key)!;
  };
  let costs = costs0;
  let best: FeedbackResult | null = null;
  let rounds = 0;
  for (; rounds < maxRounds; ) {
    rounds++;
    const path = greedyPath(units, costs, m);
    const r = await bisectPath(path, budget, (i) => measureKs(path[i].ks, path[i].bytes));
    const p = path[r.chosen];
    const d = r.chosen === 0 ? 0 : r.measured.get(r.chosen)!;
    if (!best || p.bytes < best.bytes) best = { ks: p.ks, bytes: p.bytes, measured: d, path, chosen: r.chosen, measurements, costs, rounds: 0 };
    const hi = r.chosen + 1;
    if (!r.measured.has(hi)) break;
    const next = learnMove(costs, units, path, hi, d, r.measured.get(hi)!);
    if (!next) break;
    costs = next;
  }
  return { ...best!, measurements, costs, rounds };
}
