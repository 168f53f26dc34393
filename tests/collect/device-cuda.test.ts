/**
 * collect --device cuda on a machine without a usable GPU library: the refusals that come before any GPU work, the
 * one-line error of a missing library with nothing written to the output folder, and, through a stand-in library
 * whose taps are a function of the token ids, the GPU path's shards, an interruption and its resume. (The GPU taps
 * themselves are checked against an fp64 reference by cuda-check on a GPU, check.cu test_prefill, and against the
 * CPU rows by check-mini section 7.)
 */
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { collect } from '../../collect/collect.js';
import { DejavuError } from '../../common/errors.js';
import type { CudaLib, TapRows, TapsShape } from '../../runtime/cuda/lib.js';
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

/**
 * A stand-in CUDA library for collect: loading is recorded (as the loader tests' stand-in), and a sequence's taps
 * are made from its token ids and positions. `failAtBegin`: the Nth sequence queued fails, as a GPU fault would.
 */
function tapsLib(failAtBegin = 0) {
  const calls = { create: 0, destroy: 0, begins: 0 };
  const slots: (Int32Array | null)[] = [null, null];
  const lib = {
    file: 'fake',
    deviceInfo: () => ({ name: 'Stand-in GPU', sms: 1, memBytes: 80e9 }),
    memInfo: () => ({ freeBytes: 64e9, totalBytes: 80e9 }),
    create: () => (calls.create++, { h: 1 }),
    destroy: () => void calls.destroy++,
    setVariant: () => {},
    uploadRaw: () => {},
    tapsOpen: () => {},
    tapsBegin: (_h: unknown, slot: 0 | 1, ids: Int32Array) => {
      if (++calls.begins === failAtBegin) throw new DejavuError('dj_taps_begin(slot 0): an illegal memory access was encountered');
      slots[slot] = ids.slice();
    },
    tapsWait: async (_h: unknown, slot: 0 | 1, sh: TapsShape): Promise<TapRows> => {
      const ids = slots[slot]!;
      const n = ids.length;
      const nb = Math.ceil(sh.ffn / 8);
      const v = (l: number, t: number, j: number) => (ids[t] * 31 + t * 7 + l * 13 + j) % 0x3bff; // finite fp16 bits
      const per = (w: number, f: (l: number, t: number, j: number) => number) =>
        Uint16Array.from({ length: sh.layers * n * w }, (_, i) => f(Math.floor(i / (n * w)), Math.floor(i / w) % n, i % w));
      return {
        n,
        attIn: per(sh.d, v),
        mlpIn: per(sh.d, (l, t, j) => v(l, t, j + 1)),
        headNorm: per(sh.heads, (l, t, j) => v(l, t, j + 2)),
        mlpActive: Uint8Array.from({ length: sh.layers * n * nb }, (_, i) => (ids[Math.floor(i / nb) % n] + i) & 255),
      };
    },
  } as unknown as CudaLib;
  return { lib, calls };
}

describe('collect --device cuda through a stand-in library', () => {
  const base = { model: MINI, data: DATA, docs: 8, maxLen: 40, shardTokens: 80, layers: '0,3', quiet: true, device: 'cuda' as const };
  const files = (out: string) =>
    readdirSync(out, { recursive: true })
      .map(String)
      .filter((f) => f.endsWith('.arrow'))
      .sort();

  it('an error mid-run (a GPU fault) frees the engine and leaves finished shards; the rerun resumes to the same bytes', async () => {
    const whole = join(tmp, 'gpu-whole');
    const a = tapsLib();
    const ra = await collect({ ...base, out: whole, cudaLib: a.lib });
    expect(ra.manifest.num_shards).toBeGreaterThan(2);
    expect(a.calls.destroy).toBe(a.calls.create);

    const cut = join(tmp, 'gpu-cut');
    const b = tapsLib(6);
    await expect(collect({ ...base, out: cut, cudaLib: b.lib })).rejects.toThrow(/illegal memory access/);
    expect(b.calls.destroy).toBe(b.calls.create); // GPU memory given back
    expect(readdirSync(cut, { recursive: true }).map(String).filter((f) => f.endsWith('.tmp'))).toEqual([]);
    const kept = JSON.parse(readFileSync(join(cut, 'collect-state.json'), 'utf8')).shards.length;
    expect(kept).toBeGreaterThan(0);

    const c = tapsLib();
    const rc = await collect({ ...base, out: cut, cudaLib: c.lib });
    expect(rc.shardsResumed).toBe(kept);
    expect(c.calls.begins).toBeLessThan(a.calls.begins); // the kept shards' documents are not run again
    expect(files(cut)).toEqual(files(whole));
    for (const f of files(whole)) expect(readFileSync(join(cut, f)).equals(readFileSync(join(whole, f))), f).toBe(true);
    expect(rc.manifest.shards.map((x) => x.sha256)).toEqual(ra.manifest.shards.map((x) => x.sha256));
  });
});
