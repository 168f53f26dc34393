/**
 * `dejavu report` without a browser: which charts come from which inputs, that they are SVG with marks, that bad
 * inputs are one error naming the file (and the key) and leave an existing report alone, and the CLI's output.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { DejavuError } from '../../common/errors.js';
import { buildCharts } from '../../report/charts.js';
import { readReportInputs } from '../../report/inputs.js';
import { writeReport } from '../../report/report.js';
import { REPO_ROOT } from '../helpers/fixtures.js';
import { writeInputs } from './inputs.js';

const tmp = mkdtempSync(join(tmpdir(), 'dejavu-report-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
const w = writeInputs(tmp);

describe('report inputs and charts', () => {
  it('draws each chart its inputs allow, as inline SVG with marks', () => {
    const d = readReportInputs({ predictors: w.predictors, bundle: w.bundle, evals: [w.evalFile], benches: [w.benchFile, w.sweepFile] });
    expect(d.bundle!.layers.map((l) => [l.mlp, l.heads])).toEqual([[1, 1], [230 / 1536, 0.75], [230 / 1536, 0.5]]);
    expect(d.evals.map((e) => e.head_density)).toEqual([1, 0.75, 0.5]);
    expect(d.benches).toHaveLength(5);
    const charts = buildCharts(d);
    expect(charts.map((c) => c.id)).toEqual([
      'predictors-mlp-quality',
      'predictors-mlp-k',
      'predictors-attn-quality',
      'predictors-attn-k',
      'bundle-density',
      'ppl',
      'latency',
      'speed-grid-0',
    ]);
    for (const c of charts) {
      expect(c.svg.startsWith('<svg'), c.id).toBe(true);
      expect(c.svg, c.id).toMatch(/<path d="M/);
    }
    // Perplexity at three head densities is a line chart over the density, with the three modes.
    const ppl = charts.find((c) => c.id === 'ppl')!;
    expect(ppl.title).toMatch(/per density/);
    for (const m of ['dense', 'oracle', 'predicted']) expect(ppl.svg).toContain(`>${m}</text>`);
  });

  it('one eval without a density sweep is a bar chart; a single bench point gets no speed grid', () => {
    const one = join(tmp, 'one-eval.json');
    writeFileSync(one, JSON.stringify({ dense: { ppl: 60.9 }, oracle: { ppl: 60.9 }, predicted: { ppl: 61.1 }, mlp_density: 0.29, head_density: 1, docs: 12 }));
    const charts = buildCharts(readReportInputs({ evals: [one], benches: [w.benchFile] }));
    expect(charts.map((c) => c.id)).toEqual(['ppl', 'latency']);
    expect(charts[0].title).not.toMatch(/per density/);
  });

  it('accepts the dense-only eval JSON ({ppl}) and a CUDA bench result (density.mlp / density.heads)', () => {
    const dense = join(tmp, 'dense.json');
    writeFileSync(dense, JSON.stringify({ ppl: 63.5, tokens: 20241, docs: 50, seconds: 9 }));
    const cuda = join(tmp, 'cuda.json');
    writeFileSync(cuda, JSON.stringify({ device: 'NVIDIA H200', density: { mlp: 0.05, heads: 0.2 }, dense: { ms_per_token: 6.35 }, sparse: { ms_per_token: 1.51 }, floor_ms: 6.15, sparse_floor_ms: 0.8 }));
    const d = readReportInputs({ evals: [dense], benches: [cuda] });
    expect(d.evals[0]).toMatchObject({ dense: 63.5, oracle: null, predicted: null, mlp_density: 1 });
    expect(d.benches[0]).toMatchObject({ device: 'NVIDIA H200', mlp_density: 0.05, head_density: 0.2, sparse_ms: 1.51 });
  });
});

describe('report: bad inputs', () => {
  const expectErr = (f: () => unknown, re: RegExp) => {
    let err: unknown;
    try {
      f();
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(DejavuError);
    expect((err as Error).message).toMatch(re);
  };

  it('names the file and the problem', () => {
    const bad = join(tmp, 'bad.json');
    writeFileSync(bad, '{"dense": {');
    expectErr(() => readReportInputs({ evals: [bad] }), /bad\.json: not valid JSON/);
    expectErr(() => readReportInputs({ benches: [join(tmp, 'nope.json')] }), /nope\.json: not found/);
    expectErr(() => readReportInputs({ benches: [w.evalFile] }), /eval\.json: no latency found/);
    expectErr(() => readReportInputs({ evals: [w.benchFile] }), /bench\.json: no perplexity found/);
    expectErr(() => readReportInputs({ predictors: tmp }), /metrics\.json: not found/);
    expectErr(() => readReportInputs({}), /nothing to report/);
  });

  it('names the key: a metrics entry without k99, a bundle k out of range', () => {
    const m = join(tmp, 'm-bad');
    const pm = join(m, 'metrics.json');
    const metrics = JSON.parse(readFileSync(join(w.predictors, 'metrics.json'), 'utf8'));
    delete metrics.layers[1].k99;
    rmSync(m, { recursive: true, force: true });
    mkdirSync(m, { recursive: true });
    writeFileSync(pm, JSON.stringify(metrics));
    expectErr(() => readReportInputs({ predictors: m }), /metrics\.json: layers\[1\]\.k99 is missing/);
    const b = join(tmp, 'b-bad.json');
    const man = JSON.parse(readFileSync(join(w.bundle, 'manifest.json'), 'utf8'));
    man.layers[2].mlp.k = 99999;
    writeFileSync(b, JSON.stringify(man));
    expectErr(() => readReportInputs({ bundle: b }), /b-bad\.json: layers\[2\]\.mlp\.k is 99999, expected 1\.\.1536/);
  });

  it('a bad input leaves an existing report as it was; an --out under a file is one error naming it', () => {
    const out = join(tmp, 'keep.html');
    writeReport({ out, bundle: w.bundle });
    const before = readFileSync(out, 'utf8');
    const bad = join(tmp, 'bad2.json');
    writeFileSync(bad, '[]');
    expect(() => writeReport({ out, bundle: w.bundle, evals: [bad] })).toThrow(/bad2\.json: no perplexity found/);
    expect(readFileSync(out, 'utf8')).toBe(before);
    const file = join(tmp, 'a-file');
    writeFileSync(file, 'x');
    expect(() => writeReport({ out: join(file, 'r.html'), bundle: w.bundle })).toThrow(DejavuError);
    expect(() => writeReport({ out: join(file, 'r.html'), bundle: w.bundle })).toThrow(/a-file/);
  });

  it('the page is self-contained: no script, no external reference, a CSP that forbids loads', () => {
    const out = join(tmp, 'self.html');
    writeReport({ out, predictors: w.predictors, bundle: w.bundle, evals: [w.evalFile], benches: [w.sweepFile] });
    const html = readFileSync(out, 'utf8');
    expect(html).not.toMatch(/<script|<link|src=|https?:\/\/(?!www\.w3\.org)/);
    expect(html).toContain(`default-src 'none'`);
    expect(html.match(/<figure class="chart"/g)).toHaveLength(8);
  });
});

const cli = join(REPO_ROOT, 'dist', 'cli', 'main.js');
describe.skipIf(!existsSync(cli))('dejavu report (CLI)', () => {
  it('--json prints {out, charts, sources}; a bad input is one line, exit 1', () => {
    const out = join(tmp, 'cli.html');
    const r = spawnSync(process.execPath, [cli, 'report', '--out', out, '--bundle', w.bundle, '--bench', w.sweepFile, '--json'], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    const s = JSON.parse(r.stdout);
    expect(s.charts).toEqual(['bundle-density', 'latency', 'speed-grid-0']);
    expect(existsSync(out)).toBe(true);
    const bad = spawnSync(process.execPath, [cli, 'report', '--out', out, '--eval', join(tmp, 'missing.json')], { encoding: 'utf8' });
    expect(bad.status).toBe(1);
    expect(bad.stderr.trim().split('\n')).toEqual([`error: ${join(tmp, 'missing.json')}: not found`]);
  });
});
