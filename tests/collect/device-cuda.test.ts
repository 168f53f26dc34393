/**
 * collect --device cuda on a machine without a usable GPU library: the refusals that come before any GPU work, and
 * the one-line error of a missing library, with nothing written to the output folder. (The GPU taps themselves are
 * checked against an fp64 reference by cuda-check on a GPU: check.cu test_prefill.)
 */
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { collect } from '../../collect/collect.js';
import { DejavuError } from '../../common/errors.js';
import { REPO_ROOT } from '../helpers/fixtures.js';

const MINI = join(REPO_ROOT, 'examples', 'opt-mini');
const DATA = [join(REPO_ROOT, 'examples', 'c4mini', 'c4mini-validation.00000-of-00001.json.gz')];
const tmp = mkdtempSync(join(tmpdir(), 'dejavu-collect-cuda-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe('collect --device cuda: refusals before the GPU', () => {
  const base = { model: MINI, data: DATA, docs: 2, maxLen: 32, quiet: true };
  it('an unknown device, --workers and --mlp-topk are refused naming the flag', async () => {
    await expect(collect({ ...base, out: join(tmp, 'a'), device: 'tpu' as 'cpu' })).rejects.toThrow(/--device.*expected cpu or cuda, got 'tpu'|expected cpu or cuda, got 'tpu'/);
    await expect(collect({ ...base, out: join(tmp, 'b'), device: 'cuda', workers: 2 })).rejects.toThrow(/one engine/);
    await expect(collect({ ...base, out: join(tmp, 'c'), device: 'cuda', mlpTopk: 4 })).rejects.toThrow(/--mlp-topk/);
  });

  it('without a usable CUDA library or GPU (this machine): one DejavuError, no shard or state written', async () => {
    const out = join(tmp, 'nolib');
    const err = await collect({ ...base, out, device: 'cuda' }).catch((e) => e);
    expect(err).toBeInstanceOf(DejavuError);
    expect(String(err.message)).toMatch(/CUDA library not built|no usable CUDA GPU|cannot load the CUDA library|built from older sources/);
    expect(existsSync(out) ? readdirSync(out) : []).toEqual([]);
  });
});

describe('collect --dry-run', () => {
  it('--device cuda without a usable CUDA library or GPU: one DejavuError; --workers refused on the GPU', async () => {
    const { collectDryRun } = await import('../../collect/dry-run.js');
    const base = { model: MINI, data: DATA, docs: 2, maxLen: 32, quiet: true, device: 'cuda' as const };
    await expect(collectDryRun({ ...base, workers: 2 })).rejects.toThrow(/one engine/);
    const err = await collectDryRun(base).catch((e) => e);
    expect(err).toBeInstanceOf(DejavuError);
    expect(String(err.message)).toMatch(/CUDA library not built|no usable CUDA GPU|cannot load the CUDA library|built from older sources/);
  });

  it('on the CPU: the documents and tokens it ran, nothing written', async () => {
    const { collectDryRun } = await import('../../collect/dry-run.js');
    const r = await collectDryRun({ model: MINI, data: DATA, docs: 3, maxLen: 16, quiet: true, workers: 1, layers: '0,2' });
    expect(r).toMatchObject({ device: 'cpu', docs: 3, tokens: 48, layers: 2, row_bytes: 1760 });
    expect(r.tokens_per_second).toBeGreaterThan(0);
  });
});
