/**
 * One layer's buffer of pending rows (a future record batch), filled column by column from the hook callbacks. Fixed
 * capacity, allocated once and reused: collect's memory does not depend on how many documents go through it.
 */
import { makeData, RecordBatch, Struct, type Schema, type Data } from 'apache-arrow';
import { f32ToF16 } from '../checkpoints/float16.js';
import { DejavuError } from '../common/errors.js';
import { headNorms, maskBytes, packActive, topK } from './labels.js';
import type { ShardDims } from './schema.js';

export class LayerChunk {
  readonly doc: Int32Array;
  readonly pos: Int32Array;
  readonly attIn: Uint16Array;
  readonly mlpIn: Uint16Array;
  readonly headNorm: Uint16Array;
  readonly mlpActive: Uint8Array;
  readonly topkVal: Uint16Array;
  readonly topkIdx: Int32Array;
  /** Rows complete in every column. */
  rows = 0;
  // Per-column fill cursors: the hooks arrive column by column (attIn, headOut, mlpIn, fc1Act), possibly in pieces.
  private cAtt = 0;
  private cMlp = 0;
  private cHead = 0;
  private cAct = 0;
  private readonly headScratch: Float32Array;
  private readonly topkScratch: Float32Array;
  private readonly nb: number;

  constructor(
    readonly layer: number,
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
    this.headScratch = new Float32Array(capacity * H);
    this.topkScratch = new Float32Array(capacity * K);
  }

  /** Room for a document of T tokens? */
  fits(T: number): boolean {
    return this.rows + T <= this.capacity;
  }

  /** Start a document: its doc/pos rows; the hooks then fill the other columns of the same T rows. */
  beginDoc(docIndex: number, T: number): void {
    if (!this.fits(T)) throw new Error(`chunk overflow: ${this.rows} + ${T} > ${this.capacity}`);
    this.checkAligned();
    for (let t = 0; t < T; t++) {
      this.doc[this.rows + t] = docIndex;
      this.pos[this.rows + t] = t;
    }
  }

  /** End a document of T tokens: every column must have received exactly T rows from the hooks. */
  endDoc(T: number): void {
    const want = this.rows + T;
    if (this.cAtt !== want || this.cMlp !== want || this.cHead !== want || this.cAct !== want) {
      throw new DejavuError(
        `layer ${this.layer}: the runtime's hooks delivered att_in ${this.cAtt - this.rows}, mlp_in ${this.cMlp - this.rows}, ` +
          `head ${this.cHead - this.rows}, fc1 ${this.cAct - this.rows} rows for a document of ${T} tokens`,
      );
    }
    this.rows = want;
  }

  putAttIn(x: Float32Array, T: number): void {
    const d = this.dims.dModel;
    this.guard(this.cAtt, T);
    f32ToF16(x.subarray(0, T * d), this.attIn.subarray(this.cAtt * d, (this.cAtt + T) * d));
    this.cAtt += T;
  }

  putMlpIn(x: Float32Array, T: number): void {
    const d = this.dims.dModel;
    this.guard(this.cMlp, T);
    f32ToF16(x.subarray(0, T * d), this.mlpIn.subarray(this.cMlp * d, (this.cMlp + T) * d));
    this.cMlp += T;
  }

  putHeadOut(heads: Float32Array, T: number): void {
    const H = this.dims.nHeads;
    this.guard(this.cHead, T);
    headNorms(heads, T, H, this.dims.dModel / H, this.headScratch, 0);
    f32ToF16(this.headScratch.subarray(0, T * H), this.headNorm.subarray(this.cHead * H, (this.cHead + T) * H));
    this.cHead += T;
  }

  putFc1Act(act: Float32Array, T: number): void {
    const { ffnDim: ffn, topK: K } = this.dims;
    this.guard(this.cAct, T);
    packActive(act, T, ffn, this.mlpActive, this.cAct * this.nb);
    if (K > 0) {
      topK(act, T, ffn, K, this.topkScratch, this.topkIdx, this.cAct);
      f32ToF16(this.topkScratch.subarray(this.cAct * K, (this.cAct + T) * K), this.topkVal.subarray(this.cAct * K, (this.cAct + T) * K));
    }
    this.cAct += T;
  }

  /** The pending rows as one record batch (views into this chunk's buffers: write it before the next reset). */
  toBatch(schema: Schema): RecordBatch {
    this.checkAligned();
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
    this.checkAligned();
    this.rows = this.cAtt = this.cMlp = this.cHead = this.cAct = 0;
  }

  private guard(cursor: number, T: number): void {
    if (cursor + T > this.capacity) {
      throw new DejavuError(`layer ${this.layer}: the runtime's hooks delivered more rows than the document has tokens`);
    }
  }

  private checkAligned(): void {
    const r = this.rows;
    if (this.cAtt !== r || this.cMlp !== r || this.cHead !== r || this.cAct !== r) {
      throw new Error(`layer ${this.layer}: chunk columns out of step (rows ${r})`);
    }
  }
}
