/**
 * check-mini's variant section (runtime/cuda/check-variants.ts) on the CPU through a stand-in library: every variant
 * and dtype is written, read by the CPU runtime and streamed into the engine with its form (post-LN, projections, the
 * separate head) and the tensors that form needs; the decode checks drive the engine's graphs and the CPU runtimes.
 * The GPU's logits themselves come from scripts/cuda-check.sh.
 */
import { describe, expect, it } from 'vitest';
import { checkVariants, relError, VARIANTS } from '../../runtime/cuda/check-variants.js';
import { TENSOR, type CudaLib } from '../../runtime/cuda/lib.js';

function standIn() {
  const runs: { variant: unknown; tensors: Set<number>; dtypes: Set<string>; calls: string[] }[] = [];
  let free = 0;
  const lib = {
    memInfo: () => ({ freeBytes: 64e9, totalBytes: 80e9 }),
    create: () => {
      runs.push({ variant: null, tensors: new Set(), dtypes: new Set(), calls: [] });
      free++;
      return {};
    },
    destroy: () => void free--,
    setVariant: (_h: unknown, v: unknown) => void (runs[runs.length - 1].variant = v),
    uploadRaw: (_h: unknown, t: number, _l: number, _b: Uint8Array, dtype: string) => {
      runs[runs.length - 1].tensors.add(t);
      runs[runs.length - 1].dtypes.add(dtype);
    },
    prefill: (_h: unknown, _t: Int32Array, _l: Int32Array, out: { logits: Float32Array }) => void out.logits.fill(0),
    // The decode checks: zeros for logits and NLL; the calls are recorded.
    ...Object.fromEntries(['build', 'setPrompt', 'setK', 'setSelection', 'setOptions'].map((f) => [f, (_h: unknown, a: unknown) => {
      runs[runs.length - 1].calls.push(f === 'setOptions' ? `setOptions ${(a as { kvPolicy: string }).kvPolicy}` : f);
    }])),
    run: (_h: unknown, mode: string) => (runs[runs.length - 1].calls.push(`run ${mode}`), 0),
    getLogits: (_h: unknown, out: Float32Array) => void out.fill(0),
    oracleNll: (_h: unknown, _steps: number, out: Float32Array) => void out.fill(0),
  } as unknown as CudaLib;
  return { lib, runs, live: () => free };
}

describe('check-mini variants (stand-in library)', () => {
  it('each variant x dtype is loaded with its form and tensors, compared, and its engine freed', async () => {
    const s = standIn();
    const lines: string[] = [];
    const r = await checkVariants(s.lib, (l) => lines.push(l));
    const checks = ['prefill logits', 'prefill logits', 'prefill logits', 'decode dense logits', 'oracle decode NLL (nothing skipped)',
      'decode fixed selections logits, KV all', 'decode fixed selections logits, KV selected'];
    expect(r.map((x) => x.check)).toEqual(VARIANTS.flatMap(() => checks));
    expect(r.map((x) => x.dtype)).toEqual(VARIANTS.flatMap(() => ['F32', 'F16', 'BF16', 'F32', 'F32', 'F32', 'F32']));
    expect(r.every((x) => x.rel === 1 && !x.pass)).toBe(true);  // zeros against the CPU's logits and NLL
    expect(lines.every((l) => /rel 1\.00e\+0 FAIL$/.test(l))).toBe(true);
    expect(s.live()).toBe(0);
    // Per variant: a load per dtype for the prefill, then one (from the F32 file) for the decode checks.
    expect(s.runs.map((x) => x.variant)).toEqual(VARIANTS.flatMap((v) => Array(4).fill({ preLn: v.config.preLN, finalLn: false, embedDim: 128, untiedHead: v.config.lmHead })));
    expect(s.runs.map((x) => [...x.dtypes])).toEqual(VARIANTS.flatMap(() => [['F32'], ['F16'], ['BF16'], ['F32']]));
    s.runs.forEach((x, i) => {
      expect(x.tensors.has(TENSOR.projIn) && x.tensors.has(TENSOR.projOut)).toBe(true);
      expect(x.tensors.has(TENSOR.lmHead)).toBe(VARIANTS[Math.floor(i / 4)].config.lmHead);
      expect(x.tensors.has(TENSOR.lnfW)).toBe(false);
    });
    // The decode run: 48 dense steps; the oracle; per KV policy new selections every layer (2) and step, 16 dense
    // steps then 32 fixed ones.
    const calls = s.runs[3].calls;
    expect(calls.filter((c) => c === 'run dense')).toHaveLength(48 + 2 * 16);
    expect(calls.filter((c) => c === 'run fixed')).toHaveLength(2 * 32);
    expect(calls.filter((c) => c.startsWith('setOptions'))).toEqual(['setOptions all', 'setOptions selected']);
    expect(calls.filter((c) => c === 'setSelection')).toHaveLength(2 * (2 + 2 * 32));
    expect(calls.filter((c) => c === 'setK')).toHaveLength(2);
  }, 60_000);

  it('relError', () => {
    expect(relError(Float32Array.of(1, 2), Float32Array.of(1, 2))).toBe(0);
    expect(relError(Float32Array.of(0, 0), Float32Array.of(3, 4))).toBe(1);
    expect(relError(Float32Array.of(NaN, 0), Float32Array.of(3, 4))).toBe(Infinity);
  });
});
