/**
 * bench/results holds exactly the files bench/results/README.md lists, every one the README's Measured table cites
 * exists (anchors in ../shared/anchors when that folder is here), names carry no date or session tag, and
 * `npm run bench` writes to those tag-free names (bench/result-name.ts; bench/main.ts through dist/).
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { describe, expect, it } from 'vitest';
import { DejavuError } from '../../common/errors.js';
import { resultFileName } from '../../bench/result-name.js';
import { REPO_ROOT } from '../helpers/fixtures.js';

const RESULTS = join(REPO_ROOT, 'bench', 'results');
const ANCHORS = join(REPO_ROOT, '..', 'shared', 'anchors');

function walk(dir: string): string[] {
  return readdirSync(dir).flatMap((n) => {
    const p = join(dir, n);
    return statSync(p).isDirectory() ? walk(p) : [relative(RESULTS, p)];
  });
}

/** `a-{x,y}-b.json` -> [a-x-b.json, a-y-b.json] (the README's shorthand; nested braces are not used). */
function expandBraces(s: string): string[] {
  const m = /\{([^{}]*)\}/.exec(s);
  if (!m) return [s];
  return m[1].split(',').flatMap((alt) => expandBraces(s.slice(0, m.index) + alt + s.slice(m.index + m[0].length)));
}

/** First-column entries (`file` or `folder/`) of bench/results/README.md's tables. */
function listed(): string[] {
  const text = readFileSync(join(RESULTS, 'README.md'), 'utf8');
  return [...text.matchAll(/^\| `([^`]+)` \|/gm)].map((m) => m[1]);
}

function measuredSection(): string {
  const readme = readFileSync(join(REPO_ROOT, 'README.md'), 'utf8');
  const start = readme.indexOf('## Measured');
  expect(start).toBeGreaterThan(-1);
  const end = readme.indexOf('\n## ', start + 1);
  return readme.slice(start, end < 0 ? undefined : end);
}

describe('result file names', () => {
  it('a benchmark writes <name>.json, or <name>-<tag>.json; a bad tag is refused naming DEJAVU_BENCH_TAG', () => {
    expect(resultFileName('collect-cpu')).toBe('collect-cpu.json');
    expect(resultFileName('collect-cpu', '')).toBe('collect-cpu.json');
    expect(resultFileName('collect-cpu', '1thread')).toBe('collect-cpu-1thread.json');
    for (const bad of ['../x', 'a/b', 'Shared VM', '-x'])
      expect(() => resultFileName('collect-cpu', bad)).toThrow(DejavuError);
    expect(() => resultFileName('collect-cpu', '../x')).toThrow(/DEJAVU_BENCH_TAG/);
  });
});

describe('bench/results', () => {
  it('holds exactly the files its README lists, all JSON, with no date, session or version tag in a name', () => {
    const files = walk(RESULTS).filter((f) => f !== 'README.md').sort();
    const entries = listed();
    expect(entries.length).toBeGreaterThan(0);
    const covered = (f: string) => entries.some((e) => (e.endsWith('/') ? f.startsWith(e) : f === e));
    expect(files.filter((f) => !covered(f))).toEqual([]);
    for (const e of entries) expect(files.some((f) => (e.endsWith('/') ? f.startsWith(e) : f === e)), e).toBe(true);
    for (const f of files) {
      expect(f, f).toMatch(/\.json$/);
      expect(f, f).not.toMatch(/\d{4}-\d{2}-\d{2}|(^|[-/])s\d+([-/.]|$)|-v\d+\b|final\d*|-run\d+/);
      expect(() => JSON.parse(readFileSync(join(RESULTS, f), 'utf8')), f).not.toThrow();
    }
  });

  it("every JSON the README's Measured table cites exists", () => {
    const cited = [...measuredSection().matchAll(/[\w./{},-]+\.json/g)].flatMap((m) => expandBraces(m[0]));
    expect(cited.length).toBeGreaterThan(10);
    const missing: string[] = [];
    for (const c of cited) {
      if (c.startsWith('../shared/anchors/')) {
        if (existsSync(ANCHORS) && !existsSync(join(REPO_ROOT, c))) missing.push(c);
      } else if (!existsSync(join(RESULTS, c))) missing.push(c);
    }
    expect(missing).toEqual([]);
  });
});

// The script itself, as `npm run bench` runs it (dist/ is built by `npm ci` through `prepare`).
const MAIN = join(REPO_ROOT, 'dist', 'bench', 'main.js');
describe.skipIf(!existsSync(join(REPO_ROOT, 'dist', 'bench', 'result-name.js')))('npm run bench (dist/bench/main.js)', () => {
  it('a bad DEJAVU_BENCH_TAG stops before any benchmark runs: one line, exit 1', () => {
    const cwd = mkdtempSync(join(tmpdir(), 'dj-bench-tag-'));
    const r = spawnSync(process.execPath, [MAIN, 'prefill-cpu'], { cwd, encoding: 'utf8', env: { ...process.env, DEJAVU_BENCH_TAG: '../x' } });
    expect(r.status).toBe(1);
    expect(r.stderr.trim().split('\n')).toEqual([expect.stringMatching(/^error: DEJAVU_BENCH_TAG: '\.\.\/x' is not a result tag/)]);
    expect(existsSync(join(cwd, 'bench'))).toBe(false);
  });

  it('bench/results being a file is one line naming it, exit 1, the file untouched', () => {
    const cwd = mkdtempSync(join(tmpdir(), 'dj-bench-out-'));
    mkdirSync(join(cwd, 'bench'));
    writeFileSync(join(cwd, 'bench', 'results'), 'not a folder');
    const r = spawnSync(process.execPath, [MAIN, 'prefill-cpu'], { cwd, encoding: 'utf8', env: { ...process.env, DEJAVU_BENCH_TAG: '' } });
    expect(r.status).toBe(1);
    expect(r.stderr.trim().split('\n')).toEqual([expect.stringMatching(/^error: .*bench\/results: cannot create the results folder/)]);
    expect(readFileSync(join(cwd, 'bench', 'results'), 'utf8')).toBe('not a folder');
  });
});
