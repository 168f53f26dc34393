/**
 * Validation metrics of one predictor (pure functions over host arrays). Per token t with true positive set P_t
 * (|P_t| = true active count) and scores s_t:
 *   recall / precision / F1 at threshold 0.5, micro-averaged over all (token, output) pairs;
 *   true_active = mean |P_t|; predicted_active = mean #{j : s_tj >= 0.5};
 *   kQ (Q = 95, 99) = mean over tokens with |P_t| > 0 of the smallest k such that the k highest-scoring outputs
 *   contain at least ceil(Q/100 * |P_t|) true positives (score ties counted against us: every output scoring at
 *   least the needed positive's score is counted). This is the per-token top-k that export uses to pick k.
 */
import type { PredictorMetrics } from '../common/contracts.js';

export class MetricsAccumulator {
  private tp = 0;
  private fp = 0;
  private fn = 0;
  private tokens = 0;
  private tokensWithPos = 0;
  private sumTrue = 0;
  private sumPred = 0;
  private sumK95 = 0;
  private sumK99 = 0;
  private readonly pos: Float32Array;

  constructor(private readonly out: number) {
    this.pos = new Float32Array(out);
  }

  /** `scores` [n][out] in (0,1); `bits` [n][ceil(out/8)] packed labels. */
  add(scores: Float32Array, bits: Uint8Array, n: number): void {
    const o = this.out;
    const lb = (o + 7) >>> 3;
    for (let t = 0; t < n; t++) {
      const so = t * o;
      const bo = t * lb;
      let P = 0;
      let pred = 0;
      let tp = 0;
      // Branch-free over a label byte at a time: labels and scores are close to coin flips for a weak predictor, and
      // mispredicted branches were most of this loop's time.
      for (let b = 0; b < lb; b++) {
        const byte = bits[bo + b];
        const base = so + b * 8;
        const m = Math.min(8, o - b * 8);
        for (let q = 0; q < m; q++) {
          const s = scores[base + q];
          const y = (byte >>> q) & 1;
          const p = s >= 0.5 ? 1 : 0;
          pred += p;
          tp += y & p;
          this.pos[P] = s;
          P += y;
        }
      }
      this.tp += tp;
      this.fn += P - tp;
      this.fp += pred - tp;
      this.tokens++;
      this.sumTrue += P;
      this.sumPred += pred;
      if (P > 0) {
        this.tokensWithPos++;
        // The ceil(Q·P)-th largest positive score: two selections, not a sort (an OPT-1.3B MLP has thousands of
        // positives a token; sorting them was most of the validation pass).
        const pos = this.pos.subarray(0, P);
        const i95 = Math.ceil(0.95 * P) - 1;
        const i99 = Math.ceil(0.99 * P) - 1;
        const t99 = selectDescending(pos, i99, 0, P - 1);
        const t95 = selectDescending(pos, i95, 0, i99); // the first i99 + 1 now hold the i99 + 1 largest
        let k95 = 0;
        let k99 = 0;
        for (let j = 0; j < o; j++) {
          const s = scores[so + j];
          k95 += s >= t95 ? 1 : 0;
          k99 += s >= t99 ? 1 : 0;
        }
        this.sumK95 += k95;
        this.sumK99 += k99;
      }
    }
  }

  result(): PredictorMetrics {
    const recall = this.tp + this.fn > 0 ? this.tp / (this.tp + this.fn) : 0;
    const precision = this.tp + this.fp > 0 ? this.tp / (this.tp + this.fp) : 0;
    const f1 = recall + precision > 0 ? (2 * recall * precision) / (recall + precision) : 0;
    const nt = Math.max(1, this.tokens);
    const np = Math.max(1, this.tokensWithPos);
    return {
      recall,
      precision,
      f1,
      true_active: this.sumTrue / nt,
      predicted_active: this.sumPred / nt,
      k95: this.sumK95 / np,
      k99: this.sumK99 / np,
      tokens: this.tokens,
    };
  }
}

/**
 * The value at index `k` of `a[lo..hi]` sorted in descending order (NaN above every number, as a descending sort of a
 * Float32Array puts it), found by quickselect: afterwards a[lo..k] hold the k - lo + 1 largest and a[k..hi] the rest.
 * Pure apart from reordering `a`.
 */
export function selectDescending(a: Float32Array, k: number, lo: number, hi: number): number {
  // Descending order with NaN first: x before y when x > y or x is NaN and y is not.
  const before = (x: number, y: number) => x > y || (x !== x && y === y);
  while (hi > lo) {
    // Median of three as the pivot, so sorted or constant runs stay linear on average.
    const mid = (lo + hi) >>> 1;
    let p = a[mid];
    const x = a[lo];
    const z = a[hi];
    if (before(x, p) !== before(x, z)) p = x;
    else if (before(z, p) !== before(z, x)) p = z;
    // Three-way partition (Dijkstra): [lo, lt) before p, [lt, gt] equal to p, (gt, hi] after p.
    let lt = lo;
    let gt = hi;
    let i = lo;
    while (i <= gt) {
      const v = a[i];
      if (before(v, p)) {
        a[i++] = a[lt];
        a[lt++] = v;
      } else if (before(p, v)) {
        a[i] = a[gt];
        a[gt--] = v;
      } else i++;
    }
    if (k < lt) hi = lt - 1;
    else if (k > gt) lo = gt + 1;
    else return a[k];
  }
  return a[k];
}

/**
 * Checkpoint selection score: F-beta at threshold 0.5 (beta = 2 by default: recall weighs 4x precision, as DejaVu
 * cares most about missing active neurons, yet an all-positive predictor scores only ~5p/(4p+1) for positive rate p,
 * far below any useful predictor; selecting on recall alone, as the reference trainer does, picks it).
 */
export function selectionScore(m: { recall: number; precision: number }, beta: number): number {
  const b2 = beta * beta;
  const den = b2 * m.precision + m.recall;
  return den > 0 ? ((1 + b2) * m.precision * m.recall) / den : 0;
}
