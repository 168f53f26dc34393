/**
 * The report as a person sees it: opened in a real headless Chromium (the OS package, driven by playwright-core),
 * every chart's <svg> is laid out with a non-zero box and holds at least as many visible marks as its data has
 * points, nothing is fetched and nothing logs an error. Skips, saying why, where no Chromium is installed
 * (`apt-get install chromium`; DEJAVU_CHROMIUM=PATH points at another build).
 */
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { writeReport } from '../../report/report.js';
import { writeInputs } from './inputs.js';

const candidates = [process.env.DEJAVU_CHROMIUM, '/usr/bin/chromium', '/usr/bin/chromium-browser', '/usr/bin/google-chrome'];
const chromium = candidates.find((p): p is string => !!p && existsSync(p));
if (!chromium) {
  console.warn('tests/report/browser.test.ts skipped: no Chromium found (apt-get install chromium, or set DEJAVU_CHROMIUM=PATH)');
}

const tmp = mkdtempSync(join(tmpdir(), 'dejavu-report-browser-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe.skipIf(!chromium)('report in headless Chromium', () => {
  it('renders every chart with marks, fetches nothing, logs no error', async () => {
    const w = writeInputs(tmp);
    const out = join(tmp, 'report.html');
    const s = writeReport({ out, predictors: w.predictors, bundle: w.bundle, evals: [w.evalFile], benches: [w.benchFile, w.sweepFile] });
    // Data points per chart in writeInputs' data (legend symbols come on top, so these are lower bounds).
    const points: Record<string, number> = {
      'predictors-mlp-quality': 3 * 2,
      'predictors-mlp-k': 3 * 3,
      'predictors-attn-quality': 2 * 2,
      'predictors-attn-k': 2 * 3,
      'bundle-density': 3 * 2,
      ppl: 3 * 3,
      latency: 5 * 4,
      'speed-grid-0': 4,
    };
    expect(s.charts).toEqual(Object.keys(points));

    const { chromium: pw } = await import('playwright-core');
    const browser = await pw.launch({ executablePath: chromium, args: ['--no-sandbox', '--disable-gpu'] });
    try {
      const page = await browser.newPage();
      const errors: string[] = [];
      const requests: string[] = [];
      page.on('console', (m) => m.type() === 'error' && errors.push(m.text()));
      page.on('pageerror', (e) => errors.push(String(e)));
      page.on('request', (r) => requests.push(r.url()));
      await page.goto(pathToFileURL(out).href);
      const charts = await page.$$eval('figure.chart', (figs) =>
        figs.map((f) => {
          const svg = f.querySelector('svg')!;
          const box = svg.getBoundingClientRect();
          // A mark: a filled shape with a visible area (bars, symbols, heatmap cells).
          const marks = [...svg.querySelectorAll('path, rect, circle')].filter((e) => {
            const fill = getComputedStyle(e).fill;
            const b = (e as SVGGraphicsElement).getBoundingClientRect();
            return fill !== 'none' && fill !== 'transparent' && b.width > 0.5 && b.height > 0.5;
          }).length;
          const title = f.querySelector('h2')?.textContent ?? '';
          return { id: (f as HTMLElement).dataset.chart!, width: box.width, height: box.height, marks, title };
        }),
      );
      expect(charts.map((c) => c.id)).toEqual(Object.keys(points));
      for (const c of charts) {
        expect(c.width, c.id).toBeGreaterThan(100);
        expect(c.height, c.id).toBeGreaterThan(100);
        expect(c.marks, c.id).toBeGreaterThanOrEqual(points[c.id]);
        expect(c.title.length, c.id).toBeGreaterThan(0);
      }
      expect(errors).toEqual([]);
      expect(requests.filter((u) => u !== pathToFileURL(out).href)).toEqual([]);
    } finally {
      await browser.close();
    }
  });
});
