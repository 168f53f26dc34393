/**
 * Shards -> training / validation batches for one job, streamed.
 *
 * Rows are kept compact until a batch is assembled: the input as fp16 bits, the label as a packed bitmask (the
 * attention label, top-k heads of head_norm, is computed as rows are read). The training stream goes through a
 * bounded shuffle buffer (`bufferRows` rows, ~1 KiB each for opt-mini's MLP): shards are visited in a seeded order
 * and each incoming row swaps out a random buffered row, so memory is bounded whatever the data size. The split is by
 * document (rng.isValidationDoc), so no validation token's neighbours are trained on.
 */
import { f16Table } from '../checkpoints/float16.js';
import type { InputNorm } from '../common/contracts.js';
import type { Job } from './jobs.js';
import { Rng, hashSeed, isValidationDoc } from './rng.js';
import { readAligned, type ColumnView, type ShardSet } from './shard-reader.js';

export interface SplitOptions {
  seed: number;
  valFrac: number;
}

export interface Batch {
  /** Rows in this batch (the last batch of an epoch may be short). */
  n: number;
  /** [n][inDim] fp32 (normalised when inputNorm is layernorm); a view into a reused buffer. */
  x: Float32Array;
  /** [n][labelBytes] packed labels (unpacked on the device: 8x less to upload than fp32 0/1). */
  bits: Uint8Array;
}

/** Bytes of one packed label row. */
export const labelBytes = (out: number): number => (out + 7) >>> 3;

/** Top-k of one fp16 row (by value; ties and NaNs resolved towards the lower index) as a bitmask. */
export function topKBits(f16: Uint16Array, off: number, H: number, k: number, table: Float32Array, out: Uint8Array, outOff: number, scratch: Float32Array): void {
  for (let h = 0; h < H; h++) {
    const v = table[f16[off + h]];
    scratch[h] = v === v ? v : -Infinity;
  }
  for (let b = 0; b < labelBytes(H); b++) out[outOff + b] = 0;
  for (let c = 0; c < Math.min(k, H); c++) {
    let best = -1;
    let bv = 0;
    for (let h = 0; h < H; h++) {
      if ((out[outOff + (h >>> 3)] >>> (h & 7)) & 1) continue; // already chosen
      const v = scratch[h];
      if (best < 0 || v > bv) {
        best = h;
        bv = v;
      }
    }
    out[outOff + (best >>> 3)] |= 1 << (best & 7);
  }
}

/** Copies one row's label into `out` as packed bits. */
function packLabel(job: Job, label: ColumnView, row: number, out: Uint8Array, outOff: number, table: Float32Array, scratch: Float32Array): void {
  if (job.labelColumn === 'mlp_active') {
    const w = label.width;
    const src = label.values as Uint8Array;
    out.set(src.subarray(row * w, row * w + w), outOff);
  } else {
    topKBits(label.values as Uint16Array, row * label.width, label.width, job.k, table, out, outOff, scratch);
  }
}

/** fp16 row -> fp32 into `dst`, optionally LayerNorm without affine (eps 1e-5, as OPT's LayerNorm). */
export function decodeInput(src: Uint16Array, srcOff: number, d: number, dst: Float32Array, dstOff: number, norm: InputNorm, table: Float32Array): void {
  if (norm === 'none') {
    for (let i = 0; i < d; i++) dst[dstOff + i] = table[src[srcOff + i]];
    return;
  }
  // One pass for the sum and the sum of squares (doubles: activations' mean is never near 1e8 times their spread),
  // one to normalise.
  let sum = 0;
  let sq = 0;
  for (let i = 0; i < d; i++) {
    const v = table[src[srcOff + i]];
    dst[dstOff + i] = v;
    sum += v;
    sq += v * v;
  }
  const mean = sum / d;
  const inv = 1 / Math.sqrt(Math.max(0, sq / d - mean * mean) + 1e-5);
  for (let i = 0; i < d; i++) dst[dstOff + i] = (dst[dstOff + i] - mean) * inv;
}

/** `doc -> is it a validation document` for one split, remembered per document (a document spans many rows). */
function splitTest(split: SplitOptions): (doc: number) => boolean {
  const seen = new Map<number, boolean>();
  return (doc) => {
    let v = seen.get(doc);
    if (v === undefined) seen.set(doc, (v = isValidationDoc(doc, split.seed, split.valFrac)));
    return v;
  };
}

/** Assembles batches from compact rows. Buffers are reused: consume each batch before asking for the next. */
class BatchAssembler {
  readonly x: Float32Array;
  readonly bits: Uint8Array;
  n = 0;
  private readonly table = f16Table();
  private readonly lb: number;
  constructor(
    private readonly job: Job,
    readonly size: number,
    private readonly norm: InputNorm,
  ) {
    this.lb = labelBytes(job.outDim);
    this.x = new Float32Array(size * job.inDim);
    this.bits = new Uint8Array(size * this.lb);
  }
  push(xBits: Uint16Array, xOff: number, lab: Uint8Array, labOff: number): boolean {
    const d = this.job.inDim;
    const r = this.n++;
    decodeInput(xBits, xOff, d, this.x, r * d, this.norm, this.table);
    this.bits.set(lab.subarray(labOff, labOff + this.lb), r * this.lb);
    return this.n === this.size;
  }
  take(): Batch {
    const n = this.n;
    this.n = 0;
    return {
      n,
      x: this.x.subarray(0, n * this.job.inDim),
      bits: this.bits.subarray(0, n * this.lb),
    };
  }
}

/** The shard columns a job reads: [input layer, label layer] (one entry when they coincide). */
function wantsFor(job: Job): { layer: number; columns: string[] }[] {
  if (job.inputLayer === job.layer) return [{ layer: job.layer, columns: [job.inputColumn, job.labelColumn] }];
  return [
    { layer: job.inputLayer, columns: [job.inputColumn] },
    { layer: job.layer, columns: [job.labelColumn] },
  ];
}

/**
 * (input, label) rows of one split, in file order, shard by shard, a block at a time (per row, the awaits of a
 * generator cost more than the row's copy): `x` is the input column of the block (fp16 bits, `d` per row), `rows` the
 * block rows in the split and `lab` their packed labels, `labelBytes(out)` per row in that order.
 */
async function* blocks(
  set: ShardSet,
  job: Job,
  shardOrder: number[],
  split: SplitOptions,
  wantVal: boolean,
): AsyncGenerator<{ x: Uint16Array; d: number; rows: Int32Array; n: number; lab: Uint8Array }> {
  const table = f16Table();
  const lb = labelBytes(job.outDim);
  const scratch = new Float32Array(job.outDim);
  const wants = wantsFor(job);
  const isVal = splitTest(split);
  let rows = new Int32Array(0);
  let lab = new Uint8Array(0);
  for (const s of shardOrder) {
    for await (const bl of readAligned(set, s, wants)) {
      const xCol = bl[0].cols.get(job.inputColumn)!;
      const lCol = bl[bl.length - 1].cols.get(job.labelColumn)!;
      const doc = bl[0].doc;
      const m = bl[0].rows;
      if (rows.length < m) {
        rows = new Int32Array(m);
        lab = new Uint8Array(m * lb);
      }
      let n = 0;
      for (let r = 0; r < m; r++) {
        if (isVal(doc[r]) !== wantVal) continue;
        packLabel(job, lCol, r, lab, n * lb, table, scratch);
        rows[n++] = r;
      }
      if (n > 0) yield { x: xCol.values as Uint16Array, d: xCol.width, rows, n, lab };
    }
  }
}

export interface TrainStreamOptions {
  batch: number;
  bufferRows: number;
  inputNorm: InputNorm;
  split: SplitOptions;
  /** Seed of this epoch's shard order and shuffle (derived from seed, job and epoch). */
  epochSeed: number;
}

/** One epoch of shuffled training batches. */
export async function* trainBatches(set: ShardSet, job: Job, o: TrainStreamOptions): AsyncGenerator<Batch> {
  const rng = new Rng(o.epochSeed);
  const order = rng.shuffle(set.shards.map((_, i) => i));
  const d = job.inDim;
  const lb = labelBytes(job.outDim);
  const cap = Math.max(1, o.bufferRows);
  const bx = new Uint16Array(cap * d);
  const bl = new Uint8Array(cap * lb);
  let filled = 0;
  const asm = new BatchAssembler(job, o.batch, o.inputNorm);
  for await (const blk of blocks(set, job, order, o.split, false)) {
    for (let k = 0; k < blk.n; k++) {
      const xo = blk.rows[k] * blk.d;
      const x = blk.x.subarray(xo, xo + d);
      const lab = blk.lab.subarray(k * lb, k * lb + lb);
      if (filled < cap) {
        bx.set(x, filled * d);
        bl.set(lab, filled * lb);
        filled++;
        continue;
      }
      // Full: emit a random buffered row, put the incoming one in its place.
      const j = rng.int(cap);
      if (asm.push(bx, j * d, bl, j * lb)) yield asm.take();
      bx.set(x, j * d);
      bl.set(lab, j * lb);
    }
  }
  // Drain what is left in random order.
  const rest = rng.shuffle(Array.from({ length: filled }, (_, i) => i));
  for (const j of rest) if (asm.push(bx, j * d, bl, j * lb)) yield asm.take();
  if (asm.n > 0) yield asm.take();
}

/** Validation batches, in file order (deterministic). */
export async function* validationBatches(set: ShardSet, job: Job, o: { batch: number; inputNorm: InputNorm; split: SplitOptions }): AsyncGenerator<Batch> {
  const lb = labelBytes(job.outDim);
  const asm = new BatchAssembler(job, o.batch, o.inputNorm);
  for await (const blk of blocks(set, job, set.shards.map((_, i) => i), o.split, true)) {
    for (let k = 0; k < blk.n; k++) if (asm.push(blk.x, blk.rows[k] * blk.d, blk.lab, k * lb)) yield asm.take();
  }
  if (asm.n > 0) yield asm.take();
}

/**
 * The validation fraction that holds out at least one document: `valFrac` itself where a document of the set hashes
 * below it (or it is 0, or the set has a single document), else just above the smallest document hash, so that one
 * document is held out. A small collection would otherwise have no validation tokens at all (20 documents at 10%:
 * about one time in eight). Reads only the `doc` column of one layer.
 */
export async function nonEmptyValFrac(set: ShardSet, split: SplitOptions): Promise<number> {
  if (split.valFrac <= 0) return split.valFrac;
  const seen = new Set<number>();
  let min = Infinity;
  for (let s = 0; s < set.shards.length; s++) {
    for await (const [b] of readAligned(set, s, [{ layer: set.layers[0], columns: [] }])) {
      for (let r = 0; r < b.rows; r++) {
        const doc = b.doc[r];
        if (seen.has(doc)) continue;
        seen.add(doc);
        min = Math.min(min, hashSeed(split.seed, 'val', doc));
      }
    }
  }
  if (seen.size < 2 || min / 4294967296 < split.valFrac) return split.valFrac;
  return (min + 1) / 4294967296;
}

/**
 * Training rows (tokens outside the validation documents) of the shard set: the same for every job, since the split is
 * by document. Reads only the `doc` column of one layer. What `--batch auto` is chosen from.
 */
export async function countTrainRows(set: ShardSet, split: SplitOptions): Promise<number> {
  const isVal = splitTest(split);
  let n = 0;
  for (let s = 0; s < set.shards.length; s++) {
    for await (const [b] of readAligned(set, s, [{ layer: set.layers[0], columns: [] }])) {
      for (let r = 0; r < b.rows; r++) if (!isVal(b.doc[r])) n++;
    }
  }
  return n;
}

/** Rows of a job's training and validation splits and their positive labels. */
export interface SplitCounts {
  train: number;
  val: number;
  trainPositives: number;
  valPositives: number;
}

/**
 * One pass over the label layer only (the input layer's files are not opened): the split's rows and positive labels,
 * both splits at once.
 */
export async function countSplit(set: ShardSet, job: Job, split: SplitOptions): Promise<SplitCounts> {
  const res: SplitCounts = { train: 0, val: 0, trainPositives: 0, valPositives: 0 };
  const pop = new Uint8Array(256);
  for (let i = 0; i < 256; i++) pop[i] = (i & 1) + pop[i >>> 1];
  const lb = labelBytes(job.outDim);
  const lab = new Uint8Array(lb);
  const table = f16Table();
  const scratch = new Float32Array(job.outDim);
  const isVal = splitTest(split);
  for (let s = 0; s < set.shards.length; s++) {
    for await (const [b] of readAligned(set, s, [{ layer: job.layer, columns: [job.labelColumn] }])) {
      const lCol = b.cols.get(job.labelColumn)!;
      for (let r = 0; r < b.rows; r++) {
        const v = isVal(b.doc[r]);
        packLabel(job, lCol, r, lab, 0, table, scratch);
        let p = 0;
        for (let i = 0; i < lb; i++) p += pop[lab[i]];
        if (v) {
          res.val++;
          res.valPositives += p;
        } else {
          res.train++;
          res.trainPositives += p;
        }
      }
    }
  }
  return res;
}
