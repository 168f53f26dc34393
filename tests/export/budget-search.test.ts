/** The quality-budget search on synthetic sensitivities (export/budget-search.ts): ladders, byte model, greedy order,
 *  bisection against a budget. */
import { describe, expect, it } from 'vitest';
import { bisectPath, configBytes, greedyPath, ladder, layerKs, learnMove, monotoneCosts, searchWithFeedback, type ByteModel, type SearchUnit } from '../../export/budget-search.js';

const dims = { vocab: 8192, d: 384, layers: 3, heads: 12, ffn: 1536, maxPos: 2048 };
const bm: ByteModel = { dims, kvPolicy: 'all', prompt: 128, gen: 128 };
const units: SearchUnit[] = [
  { layer: 0, target: 'mlp', out: 1536, rank: 64, levels: [600, 400, 200] },
  { layer: 1, target: 'mlp', out: 1536, rank: 64, levels: [300, 200, 100] },
  { layer: 2, target: 'mlp', out: 1536, rank: 64, levels: [300, 200, 100] },
  { layer: 1, target: 'attn', out: 12, rank: 64, levels: [10, 8, 6] },
];
const dense = units.map((u) => u.out);

describe('ladder', () => {
  it('rounds factors of k99, clips to 1..out-1, drops duplicates, descending', () => {
    expect(ladder(1536, 200, [1.5, 1, 0.75, 0.5])).toEqual([300, 200, 150, 100]);
    expect(ladder(12, 7.3, [1.25, 1, 0.75])).toEqual([9, 7, 5]);
    expect(ladder(12, 11, [1.25, 1])).toEqual([11]);
    expect(ladder(4, 1, [0.5, 0.25])).toEqual([1]);
  });
});

describe('configBytes', () => {
  it('dense is the byte model without predictors; fewer neurons move fewer bytes, a predictor adds its own', () => {
    const d = configBytes(units, dense, bm);
    const ks = [...dense];
    ks[1] = 200;
    const saved = d - configBytes(units, ks, bm);
    const predictor = 2 * (64 * 384 + 1536 * 64);
    expect(saved).toBeCloseTo(2 * 2 * (1536 - 200) * 384 + 4 * (1536 - 200) - predictor, 6);
  });
  it('KV policy selected also saves the skipped heads K/V rows', () => {
    const ks = [...dense];
    ks[3] = 6;
    const all = configBytes(units, dense, bm) - configBytes(units, ks, bm);
    const sel = configBytes(units, dense, { ...bm, kvPolicy: 'selected' }) - configBytes(units, ks, { ...bm, kvPolicy: 'selected' });
    expect(sel).toBeGreaterThan(all);
  });
  it('layerKs maps units back to layers (null = dense)', () => {
    expect(layerKs(units, [1536, 200, 1536, 8], 3)).toEqual({ mlp: [null, 200, null], attn: [null, 8, null] });
  });
});

describe('monotoneCosts', () => {
  it('running maximum from 0: noise below a cheaper level or below zero is lifted', () => {
    expect(monotoneCosts([[0.01, 0.005, 0.03], [-0.002, 0.001, NaN]])).toEqual([[0.01, 0.01, 0.03], [0, 0.001, Infinity]]);
  });
});

describe('greedyPath', () => {
  const costs = monotoneCosts([
    [0.02, 0.05, 0.2], // layer 0 MLP: sensitive
    [0.0005, 0.001, 0.004], // layer 1 MLP: cheap
    [0.001, 0.003, 0.03],
    [0.01, 0.03, 0.08], // heads: expensive for few bytes
  ]);
  const path = greedyPath(units, costs, bm);

  it('starts dense, ends with every unit at the bottom of its ladder, bytes strictly falling', () => {
    expect(path[0].ks).toEqual(dense);
    expect(path[0].estimate).toBe(0);
    for (let i = 1; i < path.length; i++) expect(path[i].bytes).toBeLessThan(path[i - 1].bytes);
    expect(path.at(-1)!.ks).toEqual([200, 100, 100, 6]);
  });
  it('takes the cheapest bytes first: the first moves are the insensitive MLP layers, heads last', () => {
    expect(path[1].move!.unit).toBe(1);
    const firstHeads = path.findIndex((p) => p.move?.unit === 3);
    const firstL0 = path.findIndex((p) => p.move?.unit === 0);
    expect(firstHeads).toBeGreaterThan(firstL0);
  });
  it('the estimate adds log costs', () => {
    const last = path.at(-1)!;
    expect(last.estimate).toBeCloseTo(Math.expm1(0.2 + 0.004 + 0.03 + 0.08), 10);
  });
  it('a level that moves more bytes than it saves (a big predictor) is skipped for one further down', () => {
    const big: SearchUnit[] = [{ layer: 1, target: 'attn', out: 12, rank: 256, levels: [11, 4] }];
    const p = greedyPath(big, [[0.001, 0.002]], bm);
    // The predictor reads 2*(256*384 + 12*256) bytes; one head's q and out_proj rows are 2*2*32*384: skipping 1 of
    // 12 heads saves less than that, skipping 8 saves more.
    expect(p.map((x) => x.ks[0])).toEqual([12, 4]);
  });
  it('free moves (cost 0) go first, the most bytes first', () => {
    const p = greedyPath(units.slice(1, 3), [[0, 0, 0.01], [0, 0.001, 0.002]], bm);
    expect(p[1].ks).toEqual([200, 1536]);
  });
});

describe('bisectPath', () => {
  const costs = monotoneCosts([[0.02, 0.05, 0.2], [0.0005, 0.001, 0.004], [0.001, 0.003, 0.03], [0.01, 0.03, 0.08]]);
  const path = greedyPath(units, costs, bm);
  it('chooses the furthest point measured within the budget, verifying it', async () => {
    // "True" cost: 1.5x the estimate (the estimate is optimistic): the bisection backs off to a verified point.
    const truth = (i: number) => 1.5 * path[i].estimate;
    const seen: number[] = [];
    const r = await bisectPath(path, 0.01, async (i) => (seen.push(i), truth(i)));
    expect(truth(r.chosen)).toBeLessThanOrEqual(0.01);
    expect(r.chosen).toBeGreaterThan(0);
    expect(r.measured.get(r.chosen)).toBe(truth(r.chosen));
    // The next point (when on the path and measured) is over the budget.
    if (r.measured.has(r.chosen + 1)) expect(r.measured.get(r.chosen + 1)!).toBeGreaterThan(0.01);
    // The first measurement is the last point estimated within the budget.
    const guess = path.reduce((g, p, i) => (i > 0 && p.estimate <= 0.01 ? i : g), 0);
    expect(seen[0]).toBe(guess);
    expect(seen.length).toBeLessThanOrEqual(Math.ceil(Math.log2(path.length)) + 1);
  });
  it('goes past the estimate when the measurements are better than estimated (up to reach x budget)', async () => {
    const truth = (i: number) => 0.2 * path[i].estimate;
    const r = await bisectPath(path, 0.01, async (i) => truth(i), 3);
    const guess = path.reduce((g, p, i) => (i > 0 && p.estimate <= 0.01 ? i : g), 0);
    let reach = path.findIndex((p) => p.estimate > 0.03);
    if (reach < 0) reach = path.length;
    const best = path.reduce((b, _, i) => (i < reach && truth(i) <= 0.01 ? i : b), 0);
    expect(best).toBeGreaterThan(guess);
    expect(r.chosen).toBe(best);
  });
  it('an impossible budget ends dense: 0 measures nothing; a budget no point meets keeps point 0', async () => {
    expect((await bisectPath(path, 0, async () => 0)).chosen).toBe(0);
    const r = await bisectPath(path, 0.001, async () => 0.05);
    expect(r.chosen).toBe(0);
    expect(r.measured.size).toBeGreaterThan(0);
  });
});

describe('searchWithFeedback', () => {
  // The sensitivities say the heads are free; in truth they cost 3% at any level (a short-context measurement misses
  // what heads cost on long documents). The MLP costs are right.
  const est = monotoneCosts([[0.002, 0.004, 0.01], [0.0005, 0.001, 0.002], [0.001, 0.002, 0.004], [0, 0, 0]]);
  const truthCost = [[0.002, 0.004, 0.01], [0.0005, 0.001, 0.002], [0.001, 0.002, 0.004], [0.03, 0.03, 0.03]];
  const truth = async (ks: number[]) =>
    Math.expm1(ks.reduce((a, k, i) => a + (k === units[i].out ? 0 : truthCost[i][units[i].levels.indexOf(k)]), 0));

  it('one round stops at the underestimated move; with feedback the other units go on, heads stay dense', async () => {
    const one = await searchWithFeedback(units, est, bm, 0.01, truth, 1);
    const fed = await searchWithFeedback(units, est, bm, 0.01, truth, 6);
    expect(fed.bytes).toBeLessThan(one.bytes);
    expect(fed.ks[3]).toBe(12);
    expect(fed.measured).toBeLessThanOrEqual(0.01);
    expect(fed.measured).toBe(await truth(fed.ks));
    expect(fed.rounds).toBeGreaterThan(1);
    // Each configuration is measured once.
    const keys = fed.measurements.map((x) => x.ks.join(','));
    expect(new Set(keys).size).toBe(keys.length);
  });
  it('learnMove raises the culprit unit from the level moved to downwards, and only then', () => {
    const path = greedyPath(units, est, bm);
    const hi = path.findIndex((p) => p.move?.unit === 3);
    const next = learnMove(est, units, path, hi, 0.001, 0.031)!;
    const j = units[3].levels.indexOf(path[hi].move!.to);
    expect(next[3][j]).toBeCloseTo(Math.log1p(0.031) - Math.log1p(0.001), 12);
    expect(next.slice(0, 3)).toEqual(est.slice(0, 3));
    expect(learnMove(next, units, path, hi, 0.001, 0.031)).toBeNull();
  });
});
