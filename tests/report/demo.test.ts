/**
 * `dejavu demo` ends with the report, and by default works under the OS temp folder rather than the current folder
 * (through the built CLI, on the vendored examples/, at a size that runs in about a minute).
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../helpers/fixtures.js';

const cli = join(REPO_ROOT, 'dist', 'cli', 'main.js');
const tmp = mkdtempSync(join(tmpdir(), 'dejavu-demo-test-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe.skipIf(!existsSync(cli))('dejavu demo (CLI)', () => {
  it('defaults its work folder to <OS temp>/dejavu-demo', () => {
    const help = spawnSync(process.execPath, [cli, 'demo', '--help'], { encoding: 'utf8' }).stdout.replace(/\s+/g, ' ');
    expect(help).toContain(`(default: ${join(tmpdir(), 'dejavu-demo')})`);
    expect(help).not.toContain('./dejavu-demo');
  });

  it('writes eval.json, bench.json and, as its last step, report.html with every chart', () => {
    const work = join(tmp, 'w');
    const args = ['demo', '--work', work, '--train-docs', '60', '--max-len', '64', '--epochs', '1', '--rank', '16', '--eval-docs', '2', '--json', '--quiet'];
    const r = spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', cwd: tmp });
    expect(r.status, r.stderr).toBe(0);
    const s = JSON.parse(r.stdout.trim().split('\n').at(-1)!);
    expect(s.stages.map((x: { stage: string }) => x.stage)).toEqual(['collect', 'train', 'export', 'eval ppl', 'bench cpu', 'report']);
    expect(s.report).toBe(join(work, 'report.html'));
    expect(JSON.parse(readFileSync(join(work, 'eval.json'), 'utf8')).predicted.ppl).toBeGreaterThan(1);
    expect(JSON.parse(readFileSync(join(work, 'bench.json'), 'utf8')).sparse.ms_per_token).toBeGreaterThan(0);
    const html = readFileSync(s.report, 'utf8');
    const charts = [...html.matchAll(/data-chart="([^"]+)"/g)].map((m) => m[1]);
    expect(charts).toEqual(['predictors-mlp-quality', 'predictors-mlp-k', 'predictors-attn-quality', 'predictors-attn-k', 'bundle-density', 'ppl', 'latency']);
  });

  it('runs on a given model and data (--model --data --eval-data) at a given --batch, and refuses half of that pair or an unknown device', () => {
    const ex = join(REPO_ROOT, 'examples');
    const work = join(tmp, 'm');
    const base = ['demo', '--work', work, '--train-docs', '60', '--max-len', '64', '--epochs', '1', '--rank', '16', '--eval-docs', '2', '--json', '--quiet'];
    const data = ['--data', join(ex, 'c4mini', 'c4mini-train-first400.json.gz')];
    const evalData = ['--eval-data', join(ex, 'c4mini', 'c4mini-validation.00000-of-00001.json.gz')];
    // --batch 256 where train's auto batch would be 128 (~3.5k training tokens).
    const r = spawnSync(process.execPath, [cli, ...base, '--model', join(ex, 'opt-mini'), ...data, ...evalData, '--batch', '256'], { encoding: 'utf8', cwd: tmp });
    expect(r.status, r.stderr).toBe(0);
    const s = JSON.parse(r.stdout.trim().split('\n').at(-1)!);
    expect(s.model).toBe(join(ex, 'opt-mini'));
    expect(s.device).toBe('cpu');
    expect(s.collect.docs).toBe(60);
    expect(s.stages.find((x: { stage: string }) => x.stage === 'train').result).toMatch(/rank 16, batch 256\)/);
    expect(s.stages.map((x: { stage: string }) => x.stage)).toEqual(['collect', 'train', 'export', 'eval ppl', 'bench cpu', 'report']);
    const half = spawnSync(process.execPath, [cli, ...base, '--model', join(ex, 'opt-mini')], { encoding: 'utf8', cwd: tmp });
    expect(half.status).toBe(1);
    expect(half.stderr).toMatch(/--data.*give --model and --data together/);
    const dev = spawnSync(process.execPath, [cli, ...base, '--device', 'tpu'], { encoding: 'utf8', cwd: tmp });
    expect(dev.status).toBe(1);
    expect(dev.stderr).toMatch(/expected cpu or cuda, got 'tpu'/);
  });
});
