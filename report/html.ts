/** One self-contained HTML page: the charts' SVGs inline, inline CSS, no script and no network (a CSP says so). */
import type { Chart } from './charts.js';

const esc = (s: string) => s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

export function reportHtml(o: { title: string; created: string; sources: { what: string; path: string }[]; charts: Chart[] }): string {
  const sources = o.sources.map((s) => `<li>${esc(s.what)}: <code>${esc(s.path)}</code></li>`).join('\n');
  const figures = o.charts
    .map(
      (c) => `<figure class="chart" data-chart="${esc(c.id)}">
<h2>${esc(c.title)}</h2>
${c.svg}
<figcaption>${esc(c.caption)}</figcaption>
</figure>`,
    )
    .join('\n');
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${esc(o.title)}</title>
<style>
body { font-family: system-ui, sans-serif; max-width: 820px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
h2 { font-size: 1.1em; margin: 0 0 0.5em; }
.meta { color: #666; margin-top: 0; }
figure.chart { margin: 2em 0; padding: 1em; border: 1px solid #ddd; border-radius: 6px; }
figure.chart svg { display: block; max-width: 100%; height: auto; }
figcaption { color: #555; font-size: 0.9em; margin-top: 0.5em; }
code { font-size: 0.9em; }
</style>
</head>
<body>
<h1>${esc(o.title)}</h1>
<p class="meta">Written ${esc(o.created)} by <code>dejavu report</code>.</p>
<h2>Inputs</h2>
<ul>
${sources}
</ul>
${figures}
</body>
</html>
`;
}
