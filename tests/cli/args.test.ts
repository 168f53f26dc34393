/** Number flags (cli/args.ts) and the worker bound (common/workers.ts), with an injected machine. */
import { describe, expect, it } from 'vitest';
import { parseIntFlag, parseNumberFlag } from '../../cli/args.js';
import type { OptConfig } from '../../checkpoints/types.js';
import { DejavuError } from '../../common/errors.js';
import { capWorkers, forwardWorkerBytes, optParamCount } from '../../common/workers.js';

describe('number flags', () => {
  it('integers must be written as digits', () => {
    expect(parseIntFlag('100', '--docs')).toBe(100);
    expect(parseIntFlag(' 7 ', '--docs')).toBe(7);
    expect(parseIntFlag('0', '--seed', 0)).toBe(0);
    for (const bad of ['1e2', '100.0', '1.5', '-3', '0x10', '', 'ten', '99999999999999999999']) {
      expect(() => parseIntFlag(bad, '--docs'), bad).toThrow(DejavuError);
    }
    expect(() => parseIntFlag('1e2', '--docs')).toThrow(/--docs: expected an integer >= 1 written as digits, got '1e2'/);
    expect(() => parseIntFlag('0', '--docs')).toThrow(/--docs/);
    expect(() => parseIntFlag('5', '--x', 1, 4)).toThrow(/in 1\.\.4/);
  });

  it('numbers within bounds; a learning rate must be > 0', () => {
    expect(parseNumberFlag('1e-3', '--lr', { above: 0 })).toBe(0.001);
    expect(() => parseNumberFlag('0', '--lr', { above: 0 })).toThrow(/--lr: expected a number > 0, got '0'/);
    expect(() => parseNumberFlag('-1', '--lr', { above: 0 })).toThrow(DejavuError);
    for (const bad of ['', 'NaN', 'Infinity', 'abc']) expect(() => parseNumberFlag(bad, '--lr'), bad).toThrow(DejavuError);
    expect(parseNumberFlag('1', '--f', { above: 0, max: 1 })).toBe(1);
    expect(() => parseNumberFlag('1.01', '--f', { above: 0, max: 1 })).toThrow(/> 0 and <= 1/);
  });
});

const GiB = 2 ** 30;

describe('worker bound', () => {
  it('a request within the cores and memory is kept; no request gets the bound', () => {
    const m = { cores: 8, availableBytes: 64 * GiB };
    expect(capWorkers(3, '--workers', GiB, m)).toEqual({ workers: 3, max: 8 });
    expect(capWorkers(undefined, '--workers', GiB, m)).toEqual({ workers: 8, max: 8 });
  });

  it('more than the cores is lowered to the cores, with a warning naming the flag', () => {
    const r = capWorkers(999, '--workers', 100 * 2 ** 20, { cores: 2, availableBytes: 64 * GiB });
    expect(r.workers).toBe(2);
    expect(r.warning).toBe('--workers 999 is more than this machine can run (2 cores): using 2');
  });

  it('memory bounds the count when each worker holds a large model', () => {
    // 10 GiB available, 80% usable, 3 GiB a worker: 2 workers although 16 cores.
    const r = capWorkers(16, '--threads', 3 * GiB, { cores: 16, availableBytes: 10 * GiB });
    expect(r.workers).toBe(2);
    expect(r.warning).toMatch(/--threads 16 is more than this machine can run \(each worker needs about 3\.0 GiB and 10\.0 GiB of memory is available\): using 2/);
    expect(capWorkers(undefined, '--workers', 3 * GiB, { cores: 16, availableBytes: 10 * GiB }).workers).toBe(2);
  });

  it('at least one worker, even when the model seems not to fit', () => {
    expect(capWorkers(4, '--workers', 100 * GiB, { cores: 4, availableBytes: GiB }).workers).toBe(1);
    expect(capWorkers(undefined, '--workers', 100 * GiB, { cores: 0, availableBytes: 0 }).workers).toBe(1);
  });

  it('estimates an OPT model from its config: opt-1.3b is 1.3B parameters', () => {
    const c = { vocabSize: 50272, hiddenSize: 2048, numLayers: 24, numHeads: 32, headDim: 64, ffnDim: 8192, maxPositionEmbeddings: 2048, wordEmbedProjDim: 2048, tieWordEmbeddings: true } as OptConfig;
    expect(optParamCount(c) / 1e9).toBeCloseTo(1.316, 2);
    // fp32 weights plus one 2048-token document's activations, logits included.
    expect(forwardWorkerBytes(c, 2048) / GiB).toBeGreaterThan(4.9);
    expect(forwardWorkerBytes(c, 2048) / GiB).toBeLessThan(6);
  });
});
