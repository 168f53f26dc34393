/**
 * The report's charts as SVG strings, rendered in Node by ECharts' server-side mode (no DOM, no canvas). Each chart
 * is built from the checked inputs of report/inputs.ts; a chart whose data is absent is left out.
 */
import * as echarts from 'echarts';
import type { BenchPoint, BundleInfo, BundleQuality, EvalPoint, PredictorRow, ReportData } from './inputs.js';

export interface Chart {
  /** Stable id (the HTML's data-chart attribute). */
  id: string;
  title: string;
  /** One or two sentences under the chart: what is plotted and from where. */
  caption: string;
  svg: string;
}

const WIDTH = 760;
const HEIGHT = 340;

/** ECharts option -> SVG string (server-side rendering, no animation). */
export function renderSvg(option: echarts.EChartsOption, width = WIDTH, height = HEIGHT): string {
  const chart = echarts.init(null, null, { renderer: 'svg', ssr: true, width, height });
  try {
    chart.setOption({ animation: false, textStyle: { fontFamily: 'system-ui, sans-serif' }, ...option });
    return chart.renderToSVGString();
  } finally {
    chart.dispose();
  }
}

const r3 = (v: number | null) => (v === null ? null : Math.round(v * 1000) / 1000);
const pct = (v: number) => `${Math.round(v * 100)}%`;
const grid = { left: 64, right: 24, top: 64, bottom: 40, containLabel: true };
const legend = { top: 4 };
// Every category named (ECharts otherwise skips labels that would crowd).
const catLabels = { interval: 0, fontSize: 11 };
const TARGET = { mlp: 'MLP neurons', attn: 'attention heads' } as const;

function predictorCharts(rows: PredictorRow[]): Chart[] {
  const out: Chart[] = [];
  for (const target of ['mlp', 'attn'] as const) {
    const t = rows.filter((r) => r.target === target).sort((a, b) => a.layer - b.layer);
    if (t.length === 0) continue;
    const layers = t.map((r) => String(r.layer));
    out.push({
      id: `predictors-${target}-quality`,
      title: `${target === 'mlp' ? 'MLP' : 'Attention'} predictors: validation recall and precision per layer`,
      caption: `Recall and precision of each layer's ${target === 'mlp' ? 'MLP' : 'attention'} predictor on the held-out tokens (train's metrics.json).`,
      svg: renderSvg({
        legend,
        grid,
        tooltip: {},
        xAxis: { type: 'category', name: 'layer', nameLocation: 'middle', nameGap: 28, data: layers },
        yAxis: { type: 'value', min: 0, max: 1, name: 'fraction' },
        series: [
          { name: 'recall', type: 'bar', data: t.map((r) => r3(r.recall)) },
          { name: 'precision', type: 'bar', data: t.map((r) => r3(r.precision)) },
        ],
      }),
    });
    const n = t.find((r) => r.out !== null)?.out;
    out.push({
      id: `predictors-${target}-k`,
      title: `${target === 'mlp' ? 'MLP' : 'Attention'} predictors: k99 vs the true active count per layer`,
      caption:
        `Mean per token: ${TARGET[target]} truly active, and the top-k a predictor needs to keep 95% / 99% of them (k95, k99)` +
        (n ? `, out of ${n}.` : '.'),
      svg: renderSvg({
        legend,
        grid,
        tooltip: {},
        xAxis: { type: 'category', name: 'layer', nameLocation: 'middle', nameGap: 28, data: layers },
        yAxis: { type: 'value', name: target === 'mlp' ? 'neurons' : 'heads' },
        series: [
          { name: 'true active', type: 'bar', data: t.map((r) => r3(r.true_active)) },
          ...(t.some((r) => r.k95 !== null) ? [{ name: 'k95', type: 'bar' as const, data: t.map((r) => r3(r.k95)) }] : []),
          { name: 'k99', type: 'bar', data: t.map((r) => r3(r.k99)) },
        ],
      }),
    });
  }
  return out;
}

function bundleChart(b: BundleInfo): Chart {
  const layers = [...b.layers].sort((x, y) => x.layer - y.layer);
  return {
    id: 'bundle-density',
    title: 'Density per layer (the bundle)',
    caption: `Fraction of the ${b.ffn} MLP neurons and ${b.heads} heads each decode step keeps (1 = dense), from the bundle's manifest.json.`,
    svg: renderSvg({
      legend,
      grid,
      tooltip: {},
      xAxis: { type: 'category', name: 'layer', nameLocation: 'middle', nameGap: 28, data: layers.map((l) => String(l.layer)) },
      yAxis: { type: 'value', min: 0, max: 1, name: 'kept', axisLabel: { formatter: (v: number) => pct(v) } },
      series: [
        { name: 'MLP neurons', type: 'bar', data: layers.map((l) => r3(l.mlp)) },
        { name: 'heads', type: 'bar', data: layers.map((l) => r3(l.heads)) },
      ],
    }),
  };
}

/** The k export chose per layer (quality-budget or measured exports): neurons and heads on two axes. */
function chosenKChart(b: BundleInfo, q: BundleQuality): Chart {
  const layers = [...q.layers].sort((x, y) => x.layer - y.layer);
  const budget = q.budget === null ? 'measured at export' : `budget ${(100 * q.budget).toFixed(2)}%`;
  return {
    id: 'bundle-k',
    title: `Chosen k per layer (${budget})`,
    caption:
      `Neurons (of ${b.ffn}) and heads (of ${b.heads}) each layer keeps; a dense block is drawn at its full count. ` +
      `Perplexity on ${q.calibration_docs} calibration docs: dense ${q.dense_ppl.toFixed(3)}, this bundle ${q.predicted_ppl.toFixed(3)} ` +
      `(KV ${q.kv_policy}, MLP ${q.mlp_selection}).`,
    svg: renderSvg({
      legend,
      grid,
      tooltip: {},
      xAxis: { type: 'category', name: 'layer', nameLocation: 'middle', nameGap: 28, data: layers.map((l) => String(l.layer)) },
      yAxis: [
        { type: 'value', name: 'neurons', min: 0, max: b.ffn },
        { type: 'value', name: 'heads', min: 0, max: b.heads },
      ],
      series: [
        { name: 'MLP neurons kept', type: 'bar', data: layers.map((l) => l.mlp_k ?? b.ffn), label: { show: true, position: 'top' as const } },
        { name: 'heads kept', type: 'bar', yAxisIndex: 1, data: layers.map((l) => l.heads_k ?? b.heads), label: { show: true, position: 'top' as const } },
      ],
    }),
  };
}

/** The bytes-vs-perplexity frontier the budget search explored: its greedy path (estimated) and the points measured. */
function frontierChart(q: BundleQuality): Chart {
  const mb = (v: number) => Math.round(v / 1e3) / 1e3;
  const pc = (v: number) => Math.round(v * 1e5) / 1e3;
  const measured = q.measurements.length ? q.measurements : q.path.filter((p) => p.measured !== null).map((p) => ({ bytes: p.bytes, measured: p.measured! }));
  return {
    id: 'budget-frontier',
    title: 'Decode bytes vs perplexity: the frontier the budget search explored',
    caption:
      'Each point of the greedy path (its last round) is a whole configuration (per-layer k), from dense (right) to the sparsest; the line ' +
      'is the estimate from per-layer sensitivities, the dots every configuration measured on all calibration docs, the ring the one exported. ' +
      'Bytes per token from the byte model of runtime/cuda/floor.ts.',
    svg: renderSvg({
      legend: { bottom: 0 },
      grid: { ...grid, top: 40, bottom: 72 },
      tooltip: {},
      xAxis: { type: 'value', name: 'MB / token', nameLocation: 'middle', nameGap: 28, scale: true },
      yAxis: { type: 'value', name: 'perplexity increase (%)', scale: true },
      series: [
        { name: 'estimated (greedy path)', type: 'line', symbolSize: 5, data: q.path.map((p) => [mb(p.bytes), pc(p.estimate)]) },
        { name: 'measured', type: 'scatter', symbolSize: 10, data: measured.map((x) => [mb(x.bytes), pc(x.measured)]) },
        ...(q.exported
          ? [{ name: 'exported', type: 'scatter' as const, symbolSize: 18, itemStyle: { color: 'transparent', borderColor: '#c00', borderWidth: 2 }, data: [[mb(q.exported.bytes), pc(q.exported.delta)]] }]
          : []),
        ...(q.budget !== null
          ? [{ name: `budget ${pc(q.budget)}%`, type: 'line' as const, symbol: 'none', lineStyle: { type: 'dashed' as const }, data: [[mb(Math.min(...q.path.map((p) => p.bytes))), pc(q.budget)], [mb(Math.max(...q.path.map((p) => p.bytes))), pc(q.budget)]] }]
          : []),
      ],
    }),
  };
}

const MODES = ['dense', 'oracle', 'predicted'] as const;

function densityLabel(p: { mlp_density: number | null; head_density: number | null }): string {
  const f = (v: number | null) => (v === null ? '?' : pct(v));
  return `MLP ${f(p.mlp_density)} / heads ${f(p.head_density)}`;
}

function pplChart(points: EvalPoint[]): Chart {
  // Several documents sets (e.g. 25 and 100 docs) are not comparable: each gets its own series.
  const docSets = [...new Set(points.map((p) => p.docs))];
  const suffix = (p: EvalPoint) => (docSets.length > 1 ? ` (${p.docs ?? '?'} docs)` : '');
  const sparse = points.filter((p) => p.oracle !== null || p.predicted !== null);
  const vary = (k: 'mlp_density' | 'head_density') => new Set(sparse.map((p) => p[k])).size > 1 && sparse.every((p) => p[k] !== null);
  const axis = vary('mlp_density') && !vary('head_density') ? 'mlp_density' : vary('head_density') && !vary('mlp_density') ? 'head_density' : null;
  const docsNote = docSets.length === 1 && docSets[0] !== null ? ` on ${docSets[0]} documents` : '';
  if (axis) {
    // Eval ran at several densities: perplexity against the density that varies.
    const names = new Map<string, [number, number][]>();
    for (const p of sparse) {
      for (const m of MODES) {
        const v = p[m];
        if (v === null) continue;
        const key = m + suffix(p);
        if (!names.has(key)) names.set(key, []);
        names.get(key)!.push([p[axis]!, Math.round(v * 1000) / 1000]);
      }
    }
    const which = axis === 'mlp_density' ? 'MLP neurons' : 'heads';
    return {
      id: 'ppl',
      title: 'Perplexity: dense, oracle and predicted, per density',
      caption: `Perplexity at each density of the ${which} kept (mean over layers)${docsNote}; oracle = the true top-k at the same k, predicted = the bundle's predictors.`,
      svg: renderSvg({
        // One series per mode (and per document set): the legend may wrap, so it goes below the plot.
        legend: { bottom: 0 },
        grid: { ...grid, top: 40, bottom: 72 },
        tooltip: { trigger: 'axis' },
        xAxis: { type: 'value', name: `${which} kept`, nameLocation: 'middle', nameGap: 28, scale: true, axisLabel: { formatter: (v: number) => pct(v) } },
        yAxis: { type: 'value', name: 'perplexity', scale: true },
        series: [...names].map(([name, data]) => ({ name, type: 'line' as const, symbolSize: 8, data: data.sort((a, b) => a[0] - b[0]) })),
      }),
    };
  }
  const cats = points.map((p) => (points.length > 1 ? `${p.label}\n${densityLabel(p)}` : densityLabel(p)));
  return {
    id: 'ppl',
    title: 'Perplexity: dense, oracle and predicted',
    caption: `Perplexity${docsNote} (lower is better); oracle = the true top-k at the same k, predicted = the bundle's predictors; the category names the mean density kept.`,
    svg: renderSvg({
      legend,
      grid,
      tooltip: {},
      xAxis: { type: 'category', data: cats, axisLabel: catLabels },
      yAxis: { type: 'value', name: 'perplexity', scale: true },
      series: MODES.filter((m) => points.some((p) => p[m] !== null)).map((m) => ({
        name: m,
        type: 'bar' as const,
        data: points.map((p) => r3(p[m])),
        label: { show: true, position: 'top' as const, formatter: (x: { value: unknown }) => (typeof x.value === 'number' ? x.value.toFixed(2) : '') },
      })),
    }),
  };
}

function latencyChart(points: BenchPoint[]): Chart {
  const cats = points.map((p) => `${p.label}\n${p.device}`);
  const floors = points.some((p) => p.floor_ms !== null);
  return {
    id: 'latency',
    title: 'Decode latency: dense vs sparse vs the memory-traffic floor',
    caption:
      'Milliseconds per generated token (batch 1), dense and sparse, beside the floors: the bytes each must read per token over the measured read bandwidth.',
    svg: renderSvg({
      legend,
      grid,
      tooltip: {},
      xAxis: { type: 'category', data: cats, axisLabel: catLabels },
      yAxis: { type: 'value', name: 'ms / token' },
      series: [
        { name: 'dense', type: 'bar', data: points.map((p) => r3(p.dense_ms)) },
        { name: 'sparse', type: 'bar', data: points.map((p) => r3(p.sparse_ms)) },
        ...(floors
          ? [
              { name: 'floor (dense)', type: 'bar' as const, data: points.map((p) => r3(p.floor_ms)) },
              { name: 'floor (sparse)', type: 'bar' as const, data: points.map((p) => r3(p.sparse_floor_ms)) },
            ]
          : []),
      ],
    }),
  };
}

/** One heatmap per device: speedup (dense / sparse ms per token) over MLP density x head density. */
function speedGrids(points: BenchPoint[]): Chart[] {
  const out: Chart[] = [];
  const devices = [...new Set(points.map((p) => p.device))];
  for (const device of devices) {
    const ps = points.filter((p) => p.device === device && p.mlp_density !== null && p.head_density !== null);
    const cells = new Map<string, { mlp: number; heads: number; speedup: number }>();
    for (const p of ps) cells.set(`${p.mlp_density}/${p.head_density}`, { mlp: p.mlp_density!, heads: p.head_density!, speedup: p.dense_ms / p.sparse_ms });
    if (cells.size < 2) continue;
    const mlps = [...new Set([...cells.values()].map((c) => c.mlp))].sort((a, b) => a - b);
    const heads = [...new Set([...cells.values()].map((c) => c.heads))].sort((a, b) => a - b);
    const data = [...cells.values()].map((c) => [mlps.indexOf(c.mlp), heads.indexOf(c.heads), Math.round(c.speedup * 100) / 100]);
    const values = data.map((d) => d[2]);
    out.push({
      id: `speed-grid-${out.length}`,
      title: `Speed grid (${device}): speedup over dense by density`,
      caption: 'Dense ms per token / sparse ms per token at each MLP density and head density the bench ran (a later point of the same pair replaces an earlier one).',
      svg: renderSvg(
        {
          tooltip: {},
          grid: { left: 80, right: 24, top: 16, bottom: 96, containLabel: true },
          xAxis: { type: 'category', name: 'MLP neurons kept', nameLocation: 'middle', nameGap: 28, data: mlps.map(pct), splitArea: { show: true } },
          yAxis: { type: 'category', name: 'heads kept', nameLocation: 'middle', nameGap: 48, data: heads.map(pct), splitArea: { show: true } },
          visualMap: {
            min: Math.min(1, ...values),
            max: Math.max(...values),
            orient: 'horizontal',
            left: 'center',
            bottom: 8,
            text: [`${Math.max(...values).toFixed(2)}x`, `${Math.min(1, ...values).toFixed(2)}x`],
          },
          series: [{ name: 'speedup', type: 'heatmap', data, label: { show: true, formatter: (x: { value: unknown }) => `${(x.value as number[])[2]}x` } }],
        },
        WIDTH,
        Math.max(260, 120 + 48 * heads.length),
      ),
    });
  }
  return out;
}

export function buildCharts(d: ReportData): Chart[] {
  const charts: Chart[] = [];
  if (d.predictors.length) charts.push(...predictorCharts(d.predictors));
  if (d.bundle) {
    charts.push(bundleChart(d.bundle));
    const q = d.bundle.quality;
    if (q && q.layers.length) charts.push(chosenKChart(d.bundle, q));
    if (q && q.path.length > 1) charts.push(frontierChart(q));
  }
  if (d.evals.length) charts.push(pplChart(d.evals));
  if (d.benches.length) {
    charts.push(latencyChart(d.benches));
    charts.push(...speedGrids(d.benches));
  }
  return charts;
}
