import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../helpers/fixtures.js';

const script = join(REPO_ROOT, 'dist', 'bench', 'train-shape.js');

describe('bench/train-shape --workers', () => {
  it('runs one copy per worker thread at once and aggregates each target over the common span', () => {
    const r = spawnSync(process.execPath, [script, '--shape', 'opt-mini', '--backend', 'wasm', '--steps', '1', '--batch', '128', '--workers', '2'], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(out.workers).toBe(2);
    expect(out.backend).toBe('wasm');
    expect(out.backend_line).toMatch(/wasm/);
    for (const target of ['mlp', 'attn']) {
      const t = out[target];
      expect(t.per_worker).toHaveLength(2);
      const start = Math.min(...t.per_worker.map((w: { window_ms: number[] }) => w.window_ms[0]));
      const end = Math.max(...t.per_worker.map((w: { window_ms: number[] }) => w.window_ms[1]));
      const samples = t.per_worker.reduce((a: number, w: { batch: number; steps: number }) => a + w.batch * w.steps, 0);
      expect(samples).toBe(2 * 128);
      expect(t.span_seconds).toBeCloseTo((end - start) / 1000, 3);
      expect(t.aggregate_samples_per_s).toBe(Math.round(samples / ((end - start) / 1000)));
    }
    expect(out.layer_samples_per_s).toBe(Math.round(1 / (1 / out.mlp.aggregate_samples_per_s + 1 / out.attn.aggregate_samples_per_s)));
  });

  it('refuses an unknown shape or a worker count that is not a positive integer in one line', () => {
    const shape = spawnSync(process.execPath, [script, '--shape', 'opt-7b'], { encoding: 'utf8' });
    expect(shape.status).toBe(2);
    expect(shape.stderr.trim()).toBe("error: --shape must be one of opt-mini, opt-1.3b, opt-6.7b, opt-13b, opt-30b, got 'opt-7b'");
    const workers = spawnSync(process.execPath, [script, '--shape', 'opt-mini', '--workers', '0'], { encoding: 'utf8' });
    expect(workers.status).toBe(2);
    expect(workers.stderr.trim()).toBe("error: --workers must be a positive integer, got '0'");
  });
});
