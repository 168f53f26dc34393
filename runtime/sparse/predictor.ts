/**
 * Applying a bundle predictor: scores = w2 · (w1 · f(x)), a rank-r factorisation of a linear map d -> out (DejaVu's
 * predictor shape, no bias, no hidden activation). f is the identity or a parameter-free LayerNorm, as recorded at
 * training time (`input_norm`). Higher score = more likely active; the runtime keeps the top-k.
 */
import type { LoadedPredictor } from '../../export/bundle.js';
import { layerNorm } from '../cpu/ops.js';
import { gemv } from './kernels.js';

export function predictorScores(
  p: Pick<LoadedPredictor, 'w1f' | 'w2f' | 'rank' | 'out' | 'input_norm'>,
  x: Float32Array,
  inBuf: Float32Array,
  hidden: Float32Array,
  out: Float32Array,
): Float32Array {
  const d = x.length;
  let input = x;
  if (p.input_norm === 'layernorm') {
    layerNorm(x, 1, d, undefined, undefined, inBuf, 1e-5);
    input = inBuf;
  }
  gemv(p.w1f, p.rank, d, input, hidden);
  gemv(p.w2f, p.out, p.rank, hidden, out);
  return out;
}
