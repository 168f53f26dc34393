/** `dejavu report`: read the inputs, render the charts, write one HTML file atomically. */
import { mkdirSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { writeFileAtomic } from '../common/atomic.js';
import { rethrowFs } from '../common/errors.js';
import { buildCharts } from './charts.js';
import { reportHtml } from './html.js';
import { readReportInputs, type ReportInputs } from './inputs.js';

export interface ReportOptions extends ReportInputs {
  out: string;
  title?: string;
}

export interface ReportSummary {
  out: string;
  charts: string[];
  sources: { what: string; path: string }[];
}

export function writeReport(o: ReportOptions): ReportSummary {
  // Every input is read and checked before anything is written: a bad input leaves an existing report as it was.
  const data = readReportInputs(o);
  const charts = buildCharts(data);
  const html = reportHtml({ title: o.title ?? 'dejavu report', created: new Date().toISOString(), sources: data.sources, charts });
  const out = resolve(o.out);
  try {
    mkdirSync(dirname(out), { recursive: true });
  } catch (e) {
    rethrowFs(e, dirname(out));
  }
  writeFileAtomic(out, html, o.out);
  return { out, charts: charts.map((c) => c.id), sources: data.sources };
}
