import { describe, expect, it } from 'vitest';
import { avgStepBytes, OPT_SHAPES, shapeDims, stepBytes, weightBytes, type StepSparsity } from '../../runtime/cuda/floor.js';
import { DejavuError } from '../../common/errors.js';

const m13 = OPT_SHAPES['opt-13b'];
const full = (m = m13, rank = 0): StepSparsity => ({
  kH: Array(m.layers).fill(m.heads),
  kM: Array(m.layers).fill(m.ffn),
  rankAttn: Array(m.layers).fill(rank),
  rankMlp: Array(m.layers).fill(rank),
  kvPolicy: 'selected',
});

describe('CUDA bandwidth floor: bytes a decode step must move', () => {
  it('opt-13b dense: ~25.7 GB of fp16 weights per token (the issue anchor), KV on top', () => {
    const b = stepBytes(m13, 1);
    // 40 layers x (4 d^2 + 2 d ffn) x 2 bytes + LM head (vocab x d x 2)
    const matrices = 40 * (4 * 5120 * 5120 + 2 * 5120 * 20480) * 2 + 50272 * 5120 * 2;
    expect(b.weights + b.lmHead).toBeGreaterThan(matrices);
    expect(b.weights + b.lmHead).toBeLessThan(matrices * 1.001);
    expect((b.weights + b.lmHead) / 1e9).toBeCloseTo(25.7, 0);
    // KV grows linearly with the context: 2 (K,V) x 2 bytes x d per position per layer
    expect(stepBytes(m13, 257).kv - stepBytes(m13, 1).kv).toBe(256 * 40 * 2 * 2 * 5120);
  });

  it('average over generation = the step at the mean context length', () => {
    const avg = avgStepBytes(m13, 128, 128).total;
    const mean = (stepBytes(m13, 129).total + stepBytes(m13, 256).total) / 2;
    expect(avg).toBeCloseTo(mean, -2);
  });

  it('sparse with every head and neuron and no predictors equals dense', () => {
    for (const name of ['opt-6.7b', 'opt-30b']) {
      const m = shapeDims(name);
      expect(stepBytes(m, 200, full(m)).total).toBe(stepBytes(m, 200).total);
    }
  });

  it('opt-13b at 20% heads / 5% neurons: about 13% of the dense bytes, predictors counted', () => {
    const sp: StepSparsity = { ...full(m13, 128), kH: Array(40).fill(8), kM: Array(40).fill(1024) };
    const d = avgStepBytes(m13, 128, 128);
    const s = avgStepBytes(m13, 128, 128, sp);
    expect(s.predictors).toBe(40 * 2 * (128 * 5120 + 40 * 128 + 128 * 5120 + 20480 * 128));
    expect(s.total / d.total).toBeGreaterThan(0.1);
    expect(s.total / d.total).toBeLessThan(0.16);
    // KV policy "all" projects K/V for every head: strictly more bytes
    expect(avgStepBytes(m13, 128, 128, { ...sp, kvPolicy: 'all' }).total).toBeGreaterThan(s.total);
  });

  it('weightBytes covers the engine allocation (matrices, vectors, positions)', () => {
    const w = weightBytes(m13);
    expect(w).toBeGreaterThan(stepBytes(m13, 1).weights);
    expect(w / 1e9).toBeGreaterThan(25.7);
    expect(w / 1e9).toBeLessThan(26.2);
    expect(weightBytes(OPT_SHAPES['opt-66b']) / 1e9).toBeGreaterThan(130); // why opt-66b needs an H200, not an 80 GB H100
  });

  it('unknown shape is a DejavuError naming the flag', () => {
    expect(() => shapeDims('opt-7b')).toThrow(DejavuError);
    expect(() => shapeDims('opt-7b')).toThrow(/--shape.*opt-13b/);
  });
});
