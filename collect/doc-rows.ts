/**
 * One document's rows for every collected layer, built from the runtime's forward hooks (runtime/hooks.ts): the hook
 * arrays are converted on arrival (fp16, head norms, bitmask, top-k) into compact per-layer buffers, so nothing of
 * fp32 size outlives its callback. Runs in the main thread or in a forward worker (collect/forward-worker.ts).
 */
import { f32ToF16 } from '../checkpoints/float16.js';
import type { ShardDims } from '../common/contracts.js';
import { DejavuError } from '../common/errors.js';
import type { ForwardHooks } from '../runtime/hooks.js';
import { headNorms, maskBytes, packActive, topK } from './labels.js';

/** T rows of one layer, row-major; fp16 columns as raw bits. */
export interface LayerRows {
  attIn: Uint16Array;
  mlpIn: Uint16Array;
  headNorm: Uint16Array;
  mlpActive: Uint8Array;
  topkVal: Uint16Array;
  topkIdx: Int32Array;
}

/** Something that runs the model's forward over token ids with hooks (OptModel.prefill). */
export interface HookedModel {
  prefill(ids: Int32Array, opts: { hooks: ForwardHooks; logits: 'none' }): unknown;
}

export function rowBuffers(dims: ShardDims, T: number): LayerRows {
  const { dModel: d, nHeads: H, ffnDim: ffn, topK: K } = dims;
  return {
    attIn: new Uint16Array(T * d),
    mlpIn: new Uint16Array(T * d),
    headNorm: new Uint16Array(T * H),
    mlpActive: new Uint8Array(T * maskBytes(ffn)),
    topkVal: new Uint16Array(T * K),
    topkIdx: new Int32Array(T * K),
  };
}

/** Forward `ids` once and return the rows of `layers` (in that order). */
export function forwardRows(model: HookedModel, ids: Int32Array, layers: number[], dims: ShardDims): LayerRows[] {
  const T = ids.length;
  const { dModel: d, nHeads: H, ffnDim: ffn, topK: K } = dims;
  const nb = maskBytes(ffn);
  const slot = new Map(layers.map((l, i) => [l, i]));
  const rows = layers.map(() => rowBuffers(dims, T));
  // Per layer and column: rows received so far (a runtime may deliver a document in pieces).
  const got = layers.map(() => ({ att: 0, mlp: 0, head: 0, act: 0 }));
  const heads32 = new Float32Array(T * H);
  const topk32 = new Float32Array(T * K);
  const at = (l: number, col: 'att' | 'mlp' | 'head' | 'act', n: number): { r: LayerRows; start: number } | null => {
    const i = slot.get(l);
    if (i === undefined) return null;
    const start = got[i][col];
    if (start + n > T) throw new DejavuError(`the runtime's ${col} hook of layer ${l} delivered more than ${T} rows`);
    got[i][col] += n;
    return { r: rows[i], start };
  };
  const hooks: ForwardHooks = {
    attIn(l, x, n) {
      const s = at(l, 'att', n);
      if (s) f32ToF16(x.subarray(0, n * d), s.r.attIn.subarray(s.start * d, (s.start + n) * d));
    },
    mlpIn(l, x, n) {
      const s = at(l, 'mlp', n);
      if (s) f32ToF16(x.subarray(0, n * d), s.r.mlpIn.subarray(s.start * d, (s.start + n) * d));
    },
    headOut(l, h, n) {
      const s = at(l, 'head', n);
      if (!s) return;
      headNorms(h, n, H, d / H, heads32, 0);
      f32ToF16(heads32.subarray(0, n * H), s.r.headNorm.subarray(s.start * H, (s.start + n) * H));
    },
    fc1Act(l, a, n) {
      const s = at(l, 'act', n);
      if (!s) return;
      packActive(a, n, ffn, s.r.mlpActive, s.start * nb);
      if (K > 0) {
        topK(a, n, ffn, K, topk32, s.r.topkIdx, s.start);
        f32ToF16(topk32.subarray(s.start * K, (s.start + n) * K), s.r.topkVal.subarray(s.start * K, (s.start + n) * K));
      }
    },
  };
  model.prefill(ids, { hooks, logits: 'none' });
  layers.forEach((l, i) => {
    const g = got[i];
    if (g.att !== T || g.mlp !== T || g.head !== T || g.act !== T) {
      throw new DejavuError(
        `layer ${l}: the runtime's hooks delivered att_in ${g.att}, mlp_in ${g.mlp}, head ${g.head}, fc1 ${g.act} rows for ${T} tokens`,
      );
    }
  });
  return rows;
}

/** The buffers of `rows`, for postMessage's transfer list. */
export function transferList(rows: LayerRows[]): ArrayBuffer[] {
  return rows.flatMap((r) => [r.attIn, r.mlpIn, r.headNorm, r.mlpActive, r.topkVal, r.topkIdx].map((a) => a.buffer as ArrayBuffer));
}
