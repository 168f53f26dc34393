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
      for (let j = 0; j < o; j++) {
        const y = (bits[bo + (j >>> 3)] >>> (j & 7)) & 1;
        const s = scores[so + j];
        const p = s >= 0.5;
        if (p) pred++;
        if (y) {
          this.pos[P++] = s;
          if (p) this.tp++;
          else this.fn++;
        } else if (p) this.fp++;
      }
      this.tokens++;
      this.sumTrue += P;
      this.sumPred += pred;
      if (P > 0) {
        this.tokensWithPos++;
        const sorted = this.pos.subarray(0, P).sort().reverse();
        const t95 = sorted[Math.ceil(0.95 * P) - 1];
        const t99 = sorted[Math.ceil(0.99 * P) - 1];
        let k95 = 0;
        let k99 = 0;
        for (let j = 0; j < o; j++) {
          const s = scores[so + j];
          if (s >= t95) k95++;
          if (s >= t99) k99++;
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
 * Checkpoint selection score: F-beta at threshold 0.5 (beta = 2 by default: recall weighs 4x precision, as DejaVu
 * cares most about missing active neurons, yet an all-positive predictor scores only ~5p/(4p+1) for positive rate p,
 * far below any useful predictor; selecting on recall alone, as the reference trainer does, picks it).
 */
export function selectionScore(m: { recall: number; precision: number }, beta: number): number {
  const b2 = beta * beta;
  const den = b2 * m.precision + m.recall;
  return den > 0 ? ((1 + b2) * m.precision * m.recall) / den : 0;
}
