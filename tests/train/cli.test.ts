/**
 * `dejavu train` as a process (dist/cli/main.js, built by `npm ci` through `prepare`): --json output, worker
 * threads, a DejavuError exit, and a run killed with SIGKILL mid-training then resumed, compared with an
 * uninterrupted run.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../helpers/fixtures.js';
import { writeSyntheticShards } from './synthetic.js';

const cli = join(REPO_ROOT, 'dist', 'cli', 'main.js');
let tmp: string;
let shards: string;

beforeAll(async () => {
  tmp = mkdtempSync(join(tmpdir(), 'dejavu-train-cli-'));
  shards = (await writeSyntheticShards({ dir: join(tmp, 's'), docs: 40, tokens: 20, docsPerShard: 10 })).dir;
});
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const base = (out: string, extra: string[] = []) => ['train', '--shards', shards, '--out', out, '--rank', '6', '--batch', '32', '--lr', '0.01', '--val-frac', '0.25', '--backend', 'wasm', ...extra];
const layers = (out: string) => JSON.parse(readFileSync(join(out, 'metrics.json'), 'utf8')).layers.map((l: Record<string, unknown>) => ({ ...l, history: (l.history as { seconds: number }[]).map((h) => ({ ...h, seconds: 0 })) }));

describe.skipIf(!existsSync(cli))('dejavu train (CLI)', () => {
  it('--json prints one object; --workers 2 trains the same predictors as one thread', () => {
    const one = spawnSync(process.execPath, [cli, ...base(join(tmp, 'one'), ['--epochs', '2', '--json'])], { encoding: 'utf8' });
    expect(one.status, one.stderr).toBe(0);
    const lines = one.stdout.trim().split('\n');
    expect(lines).toHaveLength(1);
    const report = JSON.parse(lines[0]);
    expect(report.layers.map((l: { layer: number; target: string }) => `${l.layer}.${l.target}`)).toEqual(['0.mlp', '1.attn', '1.mlp', '2.attn', '2.mlp']);
    expect(one.stderr).toMatch(/backend: wasm \(simd/);
    // Off a terminal the main thread reports the workers' predictors as plain progress lines (here every 1 ms).
    const two = spawnSync(process.execPath, [cli, ...base(join(tmp, 'two'), ['--epochs', '2', '--workers', '2'])], {
      encoding: 'utf8',
      env: { ...process.env, DEJAVU_PROGRESS_INTERVAL: '0.001', DEJAVU_PROGRESS: '' },
    });
    expect(two.status, two.stderr).toBe(0);
    expect(two.stderr).toMatch(/train: [1-5]\/5 predictors/);
    expect(layers(join(tmp, 'two'))).toEqual(layers(join(tmp, 'one')));
  });

  it('--mlp-input prev_att_in trains layer l on att_in of l-1 and records it', () => {
    const out = join(tmp, 'prevatt');
    const r = spawnSync(process.execPath, [cli, ...base(out, ['--epochs', '1', '--target', 'mlp', '--layers', '0-1', '--mlp-input', 'prev_att_in', '--quiet'])], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    const m = JSON.parse(readFileSync(join(out, 'metrics.json'), 'utf8')).layers.map((l: Record<string, unknown>) => [l.layer, l.input, l.input_layer, l.lookahead]);
    expect(m).toEqual([[0, 'att_in', 0, 0], [1, 'att_in', 0, 1]]);
  });

  it('bench --mlp-input is refused for the CPU bench, naming the flag', () => {
    const r = spawnSync(process.execPath, [cli, 'bench', '--device', 'cpu', '--model', tmp, '--mlp-input', 'prev_att_in'], { encoding: 'utf8' });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/--mlp-input/);
    const s = spawnSync(process.execPath, [cli, 'bench', '--device', 'cpu', '--model', tmp, '--mlp-select', 'grouped'], { encoding: 'utf8' });
    expect(s.status).toBe(1);
    expect(s.stderr).toMatch(/--mlp-select.*--mlp-groups/);
    const t = spawnSync(process.execPath, [cli, 'bench', '--device', 'cpu', '--model', tmp, '--rank', '64'], { encoding: 'utf8' });
    expect(t.status).toBe(1);
    expect(t.stderr).toMatch(/--rank.*--bundle/);
  });

  it('bad input exits 1 with the error on stderr', () => {
    const r = spawnSync(process.execPath, [cli, ...base(join(tmp, 'bad')).map((a) => (a === shards ? join(tmp, 'missing') : a))], { encoding: 'utf8' });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/^error: .*missing: shard folder not found/m);
  });

  it('a run killed with SIGKILL mid-training and resumed matches an uninterrupted run', async () => {
    const args = ['--epochs', '12', '--target', 'mlp', '--layers', '1-2', '--quiet'];
    const full = spawnSync(process.execPath, [cli, ...base(join(tmp, 'full'), args)], { encoding: 'utf8' });
    expect(full.status, full.stderr).toBe(0);
    const out = join(tmp, 'killed');
    const child = spawn(process.execPath, [cli, ...base(out, args)], { stdio: 'ignore' });
    // Kill once the first job has checkpointed a few epochs (any point is fine: resume must replay exactly).
    const ck = join(out, 'checkpoints');
    const t0 = Date.now();
    await new Promise<void>((resolve) => {
      const poll = setInterval(() => {
        const n = existsSync(ck) ? readdirSync(ck).filter((f) => f.endsWith('.safetensors')).length : 0;
        if (n >= 1 || Date.now() - t0 > 60_000) {
          clearInterval(poll);
          setTimeout(() => {
            child.kill('SIGKILL');
            resolve();
          }, 150);
        }
      }, 20);
    });
    await new Promise((r) => child.on('exit', r));
    expect(existsSync(join(out, 'layer_02.mlp.safetensors'))).toBe(false); // really interrupted
    const resumed = spawnSync(process.execPath, [cli, ...base(out, [...args, '--resume'])], { encoding: 'utf8' });
    expect(resumed.status, resumed.stderr).toBe(0);
    const A = layers(join(tmp, 'full'));
    const B = layers(out);
    expect(B.length).toBe(A.length);
    for (let i = 0; i < A.length; i++) {
      for (const k of ['recall', 'precision', 'f1', 'k95', 'k99', 'predicted_active', 'best_epoch']) expect(B[i][k]).toBeCloseTo(A[i][k], 5);
    }
  });
});
