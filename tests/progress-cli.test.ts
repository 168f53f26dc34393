/**
 * --quiet / --verbose on every command, and progress lines from a real collect whose stderr is a pipe (as under
 * nohup or a scheduler), through the built CLI (dist/cli/main.js, built by `npm ci`).
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { C4_TRAIN_JSON, HAVE_FIXTURES, OPT_MINI, REPO_ROOT } from './helpers/fixtures.js';

const cli = join(REPO_ROOT, 'dist', 'cli', 'main.js');
const tmp = mkdtempSync(join(tmpdir(), 'dejavu-progress-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const run = (args: string[], env: Record<string, string> = {}) =>
  spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', env: { ...process.env, ...env, DEJAVU_VERBOSITY: '' } });

describe.skipIf(!existsSync(cli))('--quiet / --verbose (CLI)', () => {
  it('every command lists both', () => {
    const top = run(['--help']).stdout;
    const names = [...top.matchAll(/^ {2}([a-z][a-z-]*)\b/gm)].map((m) => m[1]).filter((n) => n !== 'help');
    expect(names).toEqual(expect.arrayContaining(['collect', 'train', 'export', 'eval', 'bench', 'demo', 'report']));
    for (const name of names) {
      const cmd = name === 'eval' ? ['eval', 'ppl'] : [name];
      const help = run([...cmd, '--help']).stdout;
      expect(help, name).toMatch(/--quiet/);
      expect(help, name).toMatch(/--verbose/);
    }
  });

  it('both at once is one line, exit 1', () => {
    const r = run(['bench', '--device', 'cpu', '--model', tmp, '--density', 'mlp=0.5', '--quiet', '--verbose']);
    expect(r.status).toBe(1);
    expect(r.stderr.trim().split('\n')).toEqual(['error: --quiet: use --quiet or --verbose, not both']);
  });
});

describe.skipIf(!existsSync(cli) || !HAVE_FIXTURES)('progress off a terminal (CLI)', () => {
  const args = (out: string) => ['collect', '--model', OPT_MINI, '--data', C4_TRAIN_JSON, '--docs', '4', '--max-len', '24', '--workers', '1', '--out', out];

  it('collect prints plain progress lines with done/total, rate and ETA when stderr is a pipe', () => {
    const r = run(args(join(tmp, 'c1')), { DEJAVU_PROGRESS_INTERVAL: '0.001' });
    expect(r.status, r.stderr).toBe(0);
    const lines = r.stderr.split('\n').filter((l) => l.startsWith('collect: '));
    expect(lines.length).toBeGreaterThanOrEqual(2);
    // A line before the first document is done has no rate yet, hence no ETA; the later ones have both.
    expect(lines.some((l) => /^collect: [1-3]\/4 docs \(\d+\.\d%\), [\d.,]+ docs\/s, elapsed \d+:\d\d, ETA \d+:\d\d/.test(l)), lines.join('\n')).toBe(true);
    expect(lines.at(-1)).toMatch(/^collect: 4\/4 docs \(100\.0%\), [\d.,]+ docs\/s, done in \d+:\d\d/);
  });

  it('bench --json keeps stdout to one JSON object and still reports progress on stderr', () => {
    const r = run(['bench', '--device', 'cpu', '--model', OPT_MINI, '--density', 'mlp=0.5', '--prompt', '4', '--gen', '2', '--rounds', '3', '--json'], {
      DEJAVU_PROGRESS_INTERVAL: '0.001',
    });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout.trim().split('\n')).toHaveLength(1);
    expect(JSON.parse(r.stdout).device).toBe('cpu');
    expect(r.stderr).toMatch(/^bench cpu: 3\/3 rounds \(100\.0%\), [\d.,]+ rounds\/s, done in \d+:\d\d$/m);
  });

  it('--quiet prints nothing on stderr; --verbose adds the options in effect and the time', () => {
    const q = run([...args(join(tmp, 'c2')), '--quiet'], { DEJAVU_PROGRESS_INTERVAL: '0.001' });
    expect(q.status, q.stderr).toBe(0);
    expect(q.stderr).toBe('');
    const v = run([...args(join(tmp, 'c3')), '--verbose']);
    expect(v.status, v.stderr).toBe(0);
    expect(v.stderr).toMatch(/^dejavu collect: \{.*"docs":"4"/m);
    expect(v.stderr).toMatch(/^dejavu collect: [\d.]+ s, peak RSS \d+ MiB$/m);
  });
});
