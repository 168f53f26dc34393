/**
 * One layer's buffer of pending rows (a future record batch). Fixed capacity, allocated once and reused: collect's
 * memory does not depend on how many documents go through it.
 */
import { makeData, RecordBatch, Struct, type Data, type Schema } from 'apache-arrow';
import type { ShardDims } from '../common/contracts.js';
import type { LayerRows } from './doc-rows.js';
import { maskBytes } from './labels.js';

export class LayerChunk {
  readonly doc: Int32Array;
  readonly pos: Int32Array;
  readonly attIn: Uint16Array;
  readonly mlpIn: Uint16Array;
  readonly headNorm: Uint16Array;
  readonly mlpActive: Uint8Array;
  readonly topkVal: Uint16Array;
  readonly topkIdx: Int32Array;
  rows = 0;
  private readonly nb: number;

  constructor(
    readonly dims: ShardDims,
    readonly capacity: number,
  ) {
    const { dModel: d, nHeads: H, ffnDim: ffn, topK: K } = dims;
    this.nb = maskBytes(ffn);
    this.doc = new Int32Array(capacity);
    this.pos = new Int32Array(capacity);
    this.attIn = new Uint16Array(capacity * d);
    this.mlpIn = new Uint16Array(capacity * d);
    this.headNorm = new Uint16Array(capacity * H);
    this.mlpActive = new Uint8Array(capacity * this.nb);
    this.topkVal = new Uint16Array(capacity * K);
    this.topkIdx = new Int32Array(capacity * K);
  }

  /** Room for a document of T tokens? */
  fits(T: number): boolean {
    return this.rows + T <= this.capacity;
  }

  /** Append one document's T rows (positions 0..T-1). */
  append(docIndex: number, T: number, r: LayerRows): void {
    if (!this.fits(T)) throw new Error(`chunk overflow: ${this.rows} + ${T} > ${this.capacity}`);
    const { dModel: d, nHeads: H, topK: K } = this.dims;
    const o = this.rows;
    for (let t = 0; t < T; t++) {
      this.doc[o + t] = docIndex;
      this.pos[o + t] = t;
    }
    this.attIn.set(r.attIn.subarray(0, T * d), o * d);
    this.mlpIn.set(r.mlpIn.subarray(0, T * d), o * d);
    this.headNorm.set(r.headNorm.subarray(0, T * H), o * H);
    this.mlpActive.set(r.mlpActive.subarray(0, T * this.nb), o * this.nb);
    if (K > 0) {
      this.topkVal.set(r.topkVal.subarray(0, T * K), o * K);
      this.topkIdx.set(r.topkIdx.subarray(0, T * K), o * K);
    }
    this.rows += T;
  }

  /** The pending rows as one record batch (views into this chunk's buffers: write it before the next reset). */
  toBatch(schema: Schema): RecordBatch {
    const n = this.rows;
    const { dModel: d, nHeads: H, topK: K } = this.dims;
    const f = schema.fields;
    const list = (i: number, values: Uint16Array | Uint8Array | Int32Array, w: number): Data =>
      makeData({
        type: f[i].type,
        length: n,
        nullCount: 0,
        child: makeData({ type: f[i].type.children[0].type, length: n * w, nullCount: 0, data: values.subarray(0, n * w) }),
      });
    const children: Data[] = [
      makeData({ type: f[0].type, length: n, nullCount: 0, data: this.doc.subarray(0, n) }),
      makeData({ type: f[1].type, length: n, nullCount: 0, data: this.pos.subarray(0, n) }),
      list(2, this.attIn, d),
      list(3, this.mlpIn, d),
      list(4, this.headNorm, H),
      list(5, this.mlpActive, this.nb),
    ];
    if (K > 0) children.push(list(6, this.topkVal, K), list(7, this.topkIdx, K));
    return new RecordBatch(schema, makeData({ type: new Struct(f), length: n, nullCount: 0, children }));
  }

  reset(): void {
    this.rows = 0;
  }
}
