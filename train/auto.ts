/**
 * `--rank auto` and `--batch auto` (train's defaults): concrete numbers chosen from the model width and the training
 * rows before any work, recorded in metrics.json's `args` (so --resume and export see numbers) and printed.
 */

/** The bounds of the auto rules. */
export const AUTO = {
  /** Rank: a multiple of 64 near d/3, at least 64, at most DejaVu's 1000. */
  rankStep: 64,
  rankMin: 64,
  rankMax: 1000,
  /** Batch: the largest power of two in [batchMin, batchMax] that gives an epoch at least minSteps optimizer steps. */
  minSteps: 256,
  batchMin: 128,
  batchMax: 1024,
};

/**
 * The predictor rank for model width d: clamp(64 * round(d / 192), 64, 1000), i.e. about d/3.
 *
 * A predictor costs r(d + out) multiply-adds a token against the dense MLP's 8d^2 (fc1 and fc2, ffn = 4d): at r = d/3
 * the MLP predictor is ~21% of the MLP it prunes (rank 128 on opt-mini, d = 384: the share decode-cpu.json measures),
 * so the sparse step can still pay; r >= d would add nothing (W2 W1 has rank <= min(r, d)) at a cost above the MLP's
 * half. From d ~ 3000 on (OPT-2.7B's 2560 gives 832; 6.7B and up) it is DejaVu's 1000, where the predictor is <= 15%
 * of the MLP.
 */
export function autoRank(dModel: number): number {
  if (!(Number.isInteger(dModel) && dModel >= 1)) throw new Error(`autoRank: d must be a positive integer, got ${dModel}`);
  const r = AUTO.rankStep * Math.round(dModel / (3 * AUTO.rankStep));
  return Math.min(AUTO.rankMax, Math.max(AUTO.rankMin, r));
}

/**
 * The batch for `trainRows` training tokens: 1024 halved while an epoch would have fewer than 256 optimizer steps,
 * down to 128. At real scale (262,144+ training tokens) that is 1024, as before; opt-mini's demo (~27k training tokens)
 * gets 128 (~210 steps an epoch instead of ~26 at 1024, which left the predictors far from converged); 78k tokens get
 * 256.
 */
export function autoBatch(trainRows: number): number {
  if (!(Number.isInteger(trainRows) && trainRows >= 0)) throw new Error(`autoBatch: rows must be a non-negative integer, got ${trainRows}`);
  let b = AUTO.batchMax;
  while (b > AUTO.batchMin && trainRows < AUTO.minSteps * b) b /= 2;
  return b;
}

/** `--rank` / `--batch`: a positive integer or `auto`. */
export type AutoInt = number | 'auto';

/**
 * Train's defaults for the training schedule (trainer.ts DEFAULTS holds them with the rest; here so the CLI can show
 * them without loading the trainer): rank and batch from the model and the data, up to 10 epochs with early stopping
 * after 3 without a better F-beta, AdamW at 1e-3. The demo trains with these too.
 */
export const SCHEDULE_DEFAULTS = {
  rank: 'auto' as AutoInt,
  epochs: 10,
  batch: 'auto' as AutoInt,
  lr: 1e-3,
  patience: 3,
};
