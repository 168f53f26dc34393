/**
 * The CUDA bench's KV policy / selection options and its density sweep, without a GPU: the flags, the pure text
 * (bench-format.ts), and runCudaBench driven through a fake library whose decode time is a function of the engine's
 * state (k per layer, KV policy, which predictors are set), so each figure can be traced to the state it was timed in.
 */
import { describe, expect, it } from 'vitest';
import { Command } from 'commander';
import { parseArgs } from '../../runtime/cuda/bench-main.js';
import { cudaBenchOptions, formatBench, register as registerBench } from '../../cli/commands/bench.js';
import { runCudaBench } from '../../runtime/cuda/bench.js';
import { CudaEngine } from '../../runtime/cuda/engine.js';
import { shapeDims } from '../../runtime/cuda/floor.js';
import {
  QUALITY_COST, SWEEP_HEADS, SWEEP_NEURONS, groupsText, kAt, kvPoliciesTable, otherKvPolicy, sweepTables, type SweepPoint,
} from '../../runtime/cuda/bench-format.js';
import type { CudaLib, CudaOptions, Mode } from '../../runtime/cuda/lib.js';

const quietly = async <T>(f: () => T | Promise<T>): Promise<T> => {
  const write = process.stderr.write;
  process.stderr.write = (() => true) as typeof process.stderr.write;
  try {
    return await f();
  } finally {
    process.stderr.write = write;
  }
};

/**
 * A CudaLib that records calls and answers run() with a per-step time from its state: dense 10 ms; sparse
 * 1 + mean kH / H + mean kM / ffn, + 0.5 under KV all, + 0.25 while any attention predictor is set.
 */
function fakeLib() {
  const calls: string[] = [];
  const st = {
    dims: { layers: 0, heads: 0, ffn: 0 },
    kH: [] as number[],
    kM: [] as number[],
    opt: { path: 'auto', selection: 'exact', kvPolicy: 'selected' } as CudaOptions,
    attnPred: new Set<number>(),
    builds: 0,
  };
  const mean = (a: number[]) => a.reduce((x, y) => x + y, 0) / a.length;
  const sparseMs = () =>
    1 + mean(st.kH) / st.dims.heads + mean(st.kM) / st.dims.ffn + (st.opt.kvPolicy === 'all' ? 0.5 : 0) + (st.attnPred.size ? 0.25 : 0);
  // Only the entry points the bench uses (a new one it starts calling fails here as 'not a function').
  const impl = {
    file: 'fake.so',
    deviceInfo: () => ({ name: 'Fake GPU', sms: 132, memBytes: 80e9 }),
    create(c, options = {}) {
      calls.push('create');
      st.dims = { layers: c.layers, heads: c.heads, ffn: c.ffn };
      st.kH = Array(c.layers).fill(c.heads);
      st.kM = Array(c.layers).fill(c.ffn);
      st.opt = { ...st.opt, ...options };
      return {};
    },
    setOptions(_h, options) {
      st.opt = { path: 'auto', selection: 'exact', kvPolicy: 'selected', ...options };
    },
    path: () => 'streamed',
    destroy: () => void calls.push('destroy'),
    fillRandom: () => void calls.push('fillRandom'),
    upload: () => void calls.push('upload'),
    setK(_h, l, kH, kM) {
      st.kH[l] = kH;
      st.kM[l] = kM;
    },
    setSelection: () => {},
    getSelection: () => {},
    mlpGroups: (_h, l) => (st.opt.selection === 'grouped' ? 4 * st.kH[l] : 1),
    setPredictor(_h, l, target, _tap, _src, _w1, _w2, _rank, k) {
      calls.push(`pred${target}`);
      if (target === 0) {
        st.attnPred.add(l);
        st.kH[l] = k;
      } else st.kM[l] = k;
    },
    build() {
      st.builds++;
      calls.push('build');
    },
    graphKernels: () => 7,
    setPrompt: () => {},
    prefill: () => void calls.push('prefill'),
    setPos: () => {},
    getState: () => 0,
    getLogits: () => {},
    run(_h, mode: Mode, steps) {
      calls.push(`run:${mode}`);
      return steps * (mode === 'dense' ? 10 : mode === 'sparse' ? sparseMs() : mode === 'fixed' ? 0.9 : 0.2);
    },
    copyBandwidth: () => 3000,
    profile: () => ({ total: 1, qkv: 0.5 }),
  } satisfies Partial<CudaLib>;
  const lib = impl as Partial<CudaLib> as CudaLib;
  return { lib, calls, st, sparseMs };
}

const SHAPE = 'opt-125m'; // 12 layers, 12 heads, ffn 3072
const base = { shape: SHAPE, prompt: 4, gen: 4, json: true, reps: 1 };

describe('CUDA bench flags: --kv-policy, --mlp-select, --sweep', () => {
  it('bench-main and dejavu bench parse --kv-policy and --sweep (left out: undefined, runCudaBench defaults all)', () => {
    expect(parseArgs(['--shape', 'opt-13b']).kvPolicy).toBeUndefined();
    expect(parseArgs(['--shape', 'opt-13b']).sweep).toBe(false);
    expect(parseArgs(['--shape', 'opt-13b', '--kv-policy', 'selected', '--mlp-select', 'grouped'])).toMatchObject({ kvPolicy: 'selected', mlpSelect: 'grouped' });
    expect(parseArgs(['--shape', 'opt-13b', '--sweep']).sweep).toBe(true);
    expect(cudaBenchOptions({ shape: 'opt-13b', prompt: 1, gen: 1, kvPolicy: 'all', sweep: true })).toMatchObject({ kvPolicy: 'all', sweep: true });
  });

  it('--kv-policy takes all or selected only', async () => {
    await expect(quietly(() => parseArgs(['--shape', 'opt-13b', '--kv-policy', 'lazy']))).rejects.toThrow(/--kv-policy.*all, selected/);
  });

  it('runCudaBench refuses bad combinations before loading the library', async () => {
    const noLib = { ...base, shape: 'opt-13b' };
    await expect(runCudaBench({ ...noLib, kvPolicy: 'some' as 'all' })).rejects.toThrow(/^--kv-policy: 'some': expected all or selected/);
    await expect(runCudaBench({ ...noLib, sweep: true, density: { mlp: 0.1, heads: 0.5 } })).rejects.toThrow(/^--density: the sweep sets the densities/);
    await expect(runCudaBench({ ...noLib, sweep: true, kvPolicy: 'all' })).rejects.toThrow(/^--kv-policy: the sweep times both KV policies/);
    await expect(runCudaBench({ ...noLib, data: ['d.json.gz'] })).rejects.toThrow(/^--data: --data needs --model/);
    await expect(runCudaBench({ ...noLib, model: 'm', sweep: true, data: ['d.json.gz'] })).rejects.toThrow(/^--data: the sweep times many densities/);
    await expect(runCudaBench({ ...noLib, model: 'm', data: ['d.json.gz'], maxLen: 1 })).rejects.toThrow(/^--max-len: 1: must be an integer >= 2/);
    await expect(runCudaBench({ ...noLib, prefillLen: 0 })).rejects.toThrow(/^--prefill-len: 0: must be an integer >= 1/);
  });

  it('dejavu bench: the quality and prefill flags are for --device cuda', async () => {
    const program = new Command().exitOverride();
    registerBench(program);
    await expect(program.parseAsync(['node', 'dejavu', 'bench', '--device', 'cpu', '--model', 'm', '--data', 'd.json.gz'])).rejects.toThrow(/^--data: is for --device cuda/);
  });

  it('dejavu bench: --mlp-groups stays refused on cuda, --sweep on cpu', async () => {
    const parse = async (args: string[]) => {
      const program = new Command().exitOverride();
      registerBench(program);
      await program.parseAsync(['node', 'dejavu', ...args]);
    };
    await expect(parse(['bench', '--device', 'cuda', '--shape', 'opt-13b', '--mlp-groups', '4'])).rejects.toThrow(/^--mlp-groups: the CUDA engine picks G/);
    await expect(parse(['bench', '--device', 'cpu', '--model', 'm', '--sweep'])).rejects.toThrow(/^--sweep: the density sweep is for --device cuda/);
  });
});

describe('CudaEngine.setDensity', () => {
  it('sets k in the layers that have a predictor, keeps the others dense, moves no weights', () => {
    const { lib, st, calls } = fakeLib();
    const dims = shapeDims(SHAPE);
    const eng = CudaEngine.create(lib, dims, 16);
    const plan = { kH: [], kM: [], rankAttn: [0, ...Array(11).fill(40)], rankMlp: [...Array(11).fill(128), 0], source: 's' };
    const p = eng.setDensity(plan, { heads: 0.5, mlp: 0.1 });
    expect(p.kH).toEqual([12, ...Array(11).fill(6)]);
    expect(p.kM).toEqual([...Array(11).fill(307), 3072]);
    expect(st.kH).toEqual(p.kH);
    expect(st.kM).toEqual(p.kM);
    expect(p.rankAttn).toBe(plan.rankAttn);
    expect(calls.filter((c) => c !== 'create')).toEqual([]);
    expect(eng.setDensity(plan, { heads: 0.01, mlp: 1 }).kH[1]).toBe(1); // at least one head
  });
});

describe('runCudaBench with a fake library: both KV policies side by side', () => {
  it('runs the prompt through the CUDA prefill (filling the KV cache) before any timed decode', async () => {
    const { lib, calls } = fakeLib();
    const r = await runCudaBench({ ...base, lib });
    expect(calls.indexOf('prefill')).toBeGreaterThanOrEqual(0);
    expect(calls.indexOf('prefill')).toBeLessThan(calls.indexOf('run:sparse'));
    expect(r.prompt_phase).toMatch(/CUDA prefill/);
  });

  it('times the chosen policy as the headline (default all) and the other beside it; states selection and G', async () => {
    const { lib } = fakeLib();
    const r = (await runCudaBench({ ...base, lib, density: { mlp: 0.1, heads: 0.5 } })) as Record<string, any>;
    // Fake sparse step at 6/12 heads, 307/3072 neurons, attention predictors set: 1 + 0.5 + 0.0999 + 0.25 (+ 0.5 KV all).
    const sel = 1 + 0.5 + 307 / 3072 + 0.25;
    expect(r.kv_policy).toBe('all');
    expect(r.sparse.ms_per_token).toBeCloseTo(sel + 0.5, 3);
    expect(Object.keys(r.kv_policies).sort()).toEqual(['all', 'selected']);
    expect(r.kv_policies.all.ms_per_token).toBe(r.sparse.ms_per_token);
    expect(r.kv_policies.selected.ms_per_token).toBeCloseTo(sel, 3);
    expect(r.kv_policies.selected.floor_ms).toBeLessThan(r.kv_policies.all.floor_ms); // fewer K/V rows
    expect(r.sparse_floor_ms).toBe(r.kv_policies.all.floor_ms);
    expect(r.sparse.kv_all_ms_per_token).toBeUndefined();
    expect([r.mlp_selection, r.mlp_groups]).toEqual(['exact', Array(12).fill(1)]);
    expect(r.quality_cost).toBe(QUALITY_COST);
    const text = formatBench(r);
    expect(text).toMatch(/all \(chosen\)\s+2\.350\s/);
    expect(text).toMatch(/\n  selected\s+1\.850\s/);
    expect(text).toContain('dejavu eval ppl --bundle B --kv-policy all|selected --mlp-select exact|grouped');
  });

  it('--kv-policy selected makes selected the headline; grouped reports G per layer as built', async () => {
    const { lib, st } = fakeLib();
    const r = (await runCudaBench({ ...base, lib, density: { mlp: 0.1, heads: 0.5 }, kvPolicy: 'selected', mlpSelect: 'grouped' })) as Record<string, any>;
    expect(r.kv_policy).toBe('selected');
    expect(r.kv_policies.selected.ms_per_token).toBe(r.sparse.ms_per_token);
    expect(r.kv_policies.all.ms_per_token - r.sparse.ms_per_token).toBeCloseTo(0.5, 3);
    expect(r.mlp_groups).toEqual(Array(12).fill(24)); // the fake's G = 4 kH
    expect(st.opt.kvPolicy).toBe('selected'); // the engine left on the chosen policy (profile, kernel counts)
    expect(formatBench(r)).toMatch(/MLP selection grouped \(G = 24 in every layer\)/);
  });
});

describe('runCudaBench --sweep with a fake library', () => {
  it('times every heads x neurons x KV point on one engine, heads = 1 before any attention predictor is set', async () => {
    const { lib, calls } = fakeLib();
    const r = (await runCudaBench({ ...base, lib, sweep: true })) as Record<string, any>;
    const pts = r.sweep as Required<SweepPoint>[];
    expect(pts).toHaveLength(SWEEP_HEADS.length * SWEEP_NEURONS.length * 2);
    for (const h of SWEEP_HEADS)
      for (const n of SWEEP_NEURONS)
        for (const kv of ['all', 'selected'])
          expect(pts.filter((p) => p.heads === h && p.neurons === n && p.kv_policy === kv)).toHaveLength(1);
    // One engine, weights filled once; a graph build per point and policy (+ the first).
    expect(calls.filter((c) => c === 'create' || c === 'fillRandom')).toEqual(['create', 'fillRandom']);
    expect(calls.filter((c) => c === 'build')).toHaveLength(1 + pts.length);
    // No attention predictor before the last heads = 1 sparse run.
    const firstAttn = calls.indexOf('pred0');
    const sparseRuns = calls.map((c, i) => (c === 'run:sparse' ? i : -1)).filter((i) => i >= 0);
    expect(sparseRuns.filter((i) => i < firstAttn).length).toBe(SWEEP_NEURONS.length * 2 * 2); // warm-up + 1 rep each
    // Each cell holds the time of its own state: heads = 1 without a predictor, others with.
    const at = (h: number, n: number, kv: string) => pts.find((p) => p.heads === h && p.neurons === n && p.kv_policy === kv)!;
    const mK = (n: number) => kAt(n, 3072) / 3072;
    expect(at(1, 0.2, 'selected').ms_per_token).toBeCloseTo(1 + 1 + mK(0.2), 3);
    expect(at(1, 0.2, 'all').ms_per_token).toBeCloseTo(1 + 1 + mK(0.2) + 0.5, 3);
    expect(at(0.2, 0.05, 'selected').ms_per_token).toBeCloseTo(1 + 2 / 12 + mK(0.05) + 0.25, 3);
    expect(at(0.75, 0.5, 'all').ms_per_token).toBeCloseTo(1 + 9 / 12 + mK(0.5) + 0.5 + 0.25, 3);
    expect(at(0.75, 0.5, 'all').kept).toEqual({ heads: 0.75, neurons: 0.5 });
    expect(at(0.2, 0.1, 'all').speedup).toBeCloseTo(10 / at(0.2, 0.1, 'all').ms_per_token, 2);
    expect(at(0.2, 0.1, 'selected').floor_ms).toBeLessThan(at(0.2, 0.1, 'all').floor_ms);
    expect(at(1, 0.1, 'selected').floor_ms).toBeCloseTo(at(1, 0.1, 'all').floor_ms, 6); // all heads kept: same bytes
    expect(at(0.5, 0.1, 'all').mlp_groups).toEqual(Array(12).fill(1));
    expect(r.dense.ms_per_token).toBe(10);
    expect(r.floor_ms).toBeGreaterThan(0);
    expect(r.sweep_grid).toEqual({ heads: [0.2, 0.5, 0.75, 1], neurons: [0.05, 0.1, 0.2, 0.5], kv_policies: ['all', 'selected'] });
    expect(r.mlp_selection).toBe('exact');
    expect(r.kv_policy).toBeUndefined(); // each point states its own
    const text = formatBench(r);
    expect(text).toContain('sparse ms/token, KV policy all');
    expect(text).toContain('sparse ms/token, KV policy selected');
    expect(text).toContain(QUALITY_COST);
  });
});

describe('bench-format: the sweep tables and the KV policy table', () => {
  const pts: SweepPoint[] = [];
  for (const h of SWEEP_HEADS)
    for (const n of SWEEP_NEURONS)
      for (const kv of ['all', 'selected'] as const) pts.push({ heads: h, neurons: n, kv_policy: kv, ms_per_token: h * 10 + n + (kv === 'all' ? 100 : 0) });

  it('one table per policy: rows heads ascending, columns neurons ascending, cells ms/token', () => {
    const t = sweepTables([...pts].reverse(), { denseMs: 9, floorMs: 8.5 }).split('\n');
    expect(t[0]).toBe('dense 9.000 ms/token, dense floor 8.500 ms');
    const a = t.indexOf('sparse ms/token, KV policy all (rows: heads kept, columns: MLP neurons kept)');
    const s = t.indexOf('sparse ms/token, KV policy selected (rows: heads kept, columns: MLP neurons kept)');
    expect(a).toBeGreaterThan(0);
    expect(s).toBeGreaterThan(a);
    expect(t[a + 1]).toBe('heads         5%      10%      20%      50%');
    expect(t[a + 2]).toBe('20%      102.050  102.100  102.200  102.500');
    expect(t[a + 5]).toBe('100%     110.050  110.100  110.200  110.500');
    expect(t[s + 3]).toBe('50%        5.050    5.100    5.200    5.500');
  });

  it('a missing point prints -, and a single policy prints one table', () => {
    const some = pts.filter((p) => p.kv_policy === 'selected' && !(p.heads === 0.5 && p.neurons === 0.2));
    const t = sweepTables(some);
    expect(t).not.toContain('KV policy all');
    expect(t).toContain('50%        5.050    5.100        -    5.500');
    expect(t.split('\n')[0]).toBe('dense - ms/token, dense floor - ms');
  });

  it('the KV policy table marks the chosen policy; none without kv_policies', () => {
    const t = kvPoliciesTable({
      kv_policy: 'selected',
      kv_policies: { all: { ms_per_token: 2.69, floor_ms: 2.1, vs_dense_floor: 0.436, speedup: 3.3 }, selected: { ms_per_token: 1.853, floor_ms: 1.5, vs_dense_floor: 0.3, speedup: 3.43 } },
    }).split('\n');
    expect(t).toHaveLength(3);
    expect(t[1]).toMatch(/^  all\s+2\.690\s+2\.100\s+0\.436\s+3\.300$/);
    expect(t[2]).toMatch(/^  selected \(chosen\)\s+1\.853\s+1\.500\s+0\.300\s+3\.430$/);
    expect(kvPoliciesTable({ kv_policy: 'all' })).toBe('');
  });

  it('G per layer in words; kAt and the other policy', () => {
    expect(groupsText(Array(40).fill(128))).toBe('G = 128 in every layer');
    expect(groupsText([1, 128, 128])).toBe('G = 1 (1 layer), 128 (2 layers)');
    expect(groupsText(8)).toBe('G = 8');
    expect([kAt(0.2, 40), kAt(0.05, 20480), kAt(0.001, 12), kAt(1, 12)]).toEqual([8, 1024, 1, 12]);
    expect([otherKvPolicy('all'), otherKvPolicy('selected')]).toEqual(['selected', 'all']);
  });
});
