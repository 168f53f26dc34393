/**
 * collect --device cuda's two-slot taps pipeline (runtime/cuda/taps.ts, collect/forward.ts tapRowsByLayer) on a
 * stand-in engine: slots alternate, a third sequence in flight is refused, a failed begin leaves the slot free, and a
 * consumer that keeps two documents in flight (as collect does) reads every document's own rows although each slot is
 * refilled. The GPU side (dj_taps_*) is checked by cuda-check and check-mini section 7 on a GPU.
 */
import { describe, expect, it } from 'vitest';
import { tapRowsByLayer } from '../../collect/forward.js';
import type { TapRows } from '../../runtime/cuda/lib.js';
import { TapsPipeline, type TapsEngine } from '../../runtime/cuda/taps.js';

const dims = { dModel: 4, nHeads: 2, ffnDim: 12, topK: 0 };
const NL = 3;
const MAX = 8;

/** Each slot is one reused buffer, as the pinned host slots are; the rows of a sequence carry its first token. */
function standIn(delayMs = 1) {
  const nb = Math.ceil(dims.ffnDim / 8);
  const size = NL * MAX;
  const slots = [0, 1].map(() => ({
    att: new Uint16Array(size * dims.dModel), mlp: new Uint16Array(size * dims.dModel),
    hn: new Uint16Array(size * dims.nHeads), bits: new Uint8Array(size * nb), n: 0,
  }));
  const log: string[] = [];
  const engine: TapsEngine & { failNext?: boolean } = {
    openTaps: (layers, maxTokens) => void log.push(`open ${layers.join(',')} ${maxTokens}`),
    beginTaps(slot, ids) {
      if (engine.failNext) {
        engine.failNext = false;
        throw new Error('begin failed');
      }
      log.push(`begin ${slot} ${ids[0]}`);
      const s = slots[slot];
      s.n = ids.length;
      s.att.fill(ids[0]); s.mlp.fill(ids[0] + 1000); s.hn.fill(ids[0] + 2000); s.bits.fill(ids[0] & 255);
    },
    waitTaps(slot): Promise<TapRows> {
      const s = slots[slot];
      return new Promise((resolve) => setTimeout(() => resolve({ n: s.n, attIn: s.att.subarray(0, NL * s.n * dims.dModel), mlpIn: s.mlp.subarray(0, NL * s.n * dims.dModel), headNorm: s.hn.subarray(0, NL * s.n * dims.nHeads), mlpActive: s.bits.subarray(0, NL * s.n * nb) }), delayMs));
    },
  };
  return { engine, log };
}

describe('taps pipeline (two pinned slots)', () => {
  it('opens once, alternates the slots, and refuses a third sequence in flight', async () => {
    const { engine, log } = standIn();
    const p = new TapsPipeline(engine, [2, 0, 1], MAX);
    const a = p.rows(Int32Array.of(1, 2));
    const b = p.rows(Int32Array.of(3));
    await expect(p.rows(Int32Array.of(5))).rejects.toThrow(/two sequences are already in flight/);
    expect((await a).n).toBe(2);
    const c = p.rows(Int32Array.of(7));  // slot 0 again, now that its rows were received
    await b;
    await c;
    expect(log).toEqual(['open 2,0,1 8', 'begin 0 1', 'begin 1 3', 'begin 0 7']);
  });

  it('a sequence longer than opened, or a failed begin, rejects and leaves the slot free', async () => {
    const { engine, log } = standIn();
    const p = new TapsPipeline(engine, [0], MAX);
    await expect(p.rows(new Int32Array(MAX + 1))).rejects.toThrow(/9 tokens \(1\.\.8\)/);
    engine.failNext = true;
    await expect(p.rows(Int32Array.of(4))).rejects.toThrow(/begin failed/);
    expect((await p.rows(Int32Array.of(6))).n).toBe(1);
    expect(log.slice(1)).toEqual(['begin 0 6']);
  });

  it('collect-style consumption (two documents in flight) reads each document’s own rows, split per layer', async () => {
    const { engine } = standIn();
    const p = new TapsPipeline(engine, [0, 1, 2], MAX);
    const docs = [3, 1, 8, 2, 5, 7].map((n, i) => Int32Array.from({ length: n }, () => 10 * (i + 1)));
    const seen: number[][] = [];
    const inflight: Promise<TapRows>[] = [];
    const consume = async (job: Promise<TapRows>) => {
      const rows = tapRowsByLayer(await job, NL, dims);
      seen.push(rows.map((r) => r.attIn.length / dims.dModel));
      for (const r of rows) {
        const tok = r.attIn[0];
        expect(r.attIn.every((x) => x === tok)).toBe(true);
        expect(r.mlpIn.every((x) => x === tok + 1000)).toBe(true);
        expect(r.headNorm.length).toBe((r.attIn.length / dims.dModel) * dims.nHeads);
        expect(r.mlpActive.length).toBe((r.attIn.length / dims.dModel) * 2);
        expect(r.topkVal.length + r.topkIdx.length).toBe(0);
      }
      return rows[0].attIn[0];
    };
    const firsts: number[] = [];
    for (const ids of docs) {
      inflight.push(p.rows(ids));
      if (inflight.length >= 2) firsts.push(await consume(inflight.shift()!));
    }
    while (inflight.length) firsts.push(await consume(inflight.shift()!));
    expect(firsts).toEqual([10, 20, 30, 40, 50, 60]);
    expect(seen).toEqual([3, 1, 8, 2, 5, 7].map((n) => [n, n, n]));
  });

  it('tapRowsByLayer: [nl][n][...] views, layer i at rows i*n..(i+1)*n', () => {
    const n = 2, d = dims.dModel, H = dims.nHeads;
    const t: TapRows = {
      n,
      attIn: Uint16Array.from({ length: NL * n * d }, (_, i) => i),
      mlpIn: new Uint16Array(NL * n * d),
      headNorm: Uint16Array.from({ length: NL * n * H }, (_, i) => i),
      mlpActive: Uint8Array.from({ length: NL * n * 2 }, (_, i) => i),
    };
    const rows = tapRowsByLayer(t, NL, dims);
    expect(rows[1].attIn[0]).toBe(n * d);
    expect(rows[2].headNorm[0]).toBe(2 * n * H);
    expect(rows[2].mlpActive[3]).toBe(2 * n * 2 + 3);
    expect(rows[0].attIn.buffer).toBe(t.attIn.buffer);  // no copy
  });
});
