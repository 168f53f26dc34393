/**
 * Collect's taps from the GPU prefill, two sequences in flight (engine.cu dj_taps_*): sequences alternate between the
 * engine's two pinned host slots, so the caller writes the rows of one while the GPU computes the next and copies
 * its taps out layer by layer. What a call resolves to are views into its slot, valid until the second later call
 * (which refills that slot): copy what outlives that.
 */
import { DejavuError } from '../../common/errors.js';
import type { TapRows } from './lib.js';

/** The engine calls the pipeline uses (CudaEngine's; a stand-in in tests). */
export interface TapsEngine {
  openTaps(layers: number[], maxTokens: number): void;
  beginTaps(slot: 0 | 1, ids: Int32Array): void;
  waitTaps(slot: 0 | 1): Promise<TapRows>;
}

export class TapsPipeline {
  private next: 0 | 1 = 0;
  /** Per slot: its sequence has not been waited for yet. */
  private readonly busy = [false, false];

  constructor(
    private readonly engine: TapsEngine,
    readonly layers: number[],
    readonly maxTokens: number,
  ) {
    engine.openTaps(layers, maxTokens);
  }

  /** Queue one sequence (from position 0) and resolve to its taps of every collected layer, [nl][n][...]. */
  rows(ids: Int32Array): Promise<TapRows> {
    const slot = this.next;
    // A third sequence would refill a slot whose rows nobody has received yet.
    if (this.busy[slot]) return Promise.reject(new Error('taps: two sequences are already in flight; wait for the first'));
    if (ids.length < 1 || ids.length > this.maxTokens)
      return Promise.reject(new DejavuError(`taps: ${ids.length} tokens (1..${this.maxTokens})`));
    try {
      this.engine.beginTaps(slot, ids);
    } catch (e) {
      return Promise.reject(e);
    }
    this.busy[slot] = true;
    this.next = slot === 0 ? 1 : 0;
    return this.engine.waitTaps(slot).finally(() => (this.busy[slot] = false));
  }
}
