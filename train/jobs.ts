/**
 * What to train: one job per (layer, target). Pure: maps the CLI choices onto shard columns and layers.
 *
 * Attention (DejaVu lookahead): layer 0 stays dense; for l >= 1 the predictor reads `att_in` of layer l-1 and labels
 * are the top k = max(1, round(head_frac * H)) heads of layer l by `head_norm`.
 * MLP: labels are `mlp_active` of layer l; the input is `mlp_in` of l (default, as DejaVu trained), `att_in` of l
 * (runs in parallel with attention), `mlp_in` of l-1 (`prev_mlp_in`, one layer of lookahead) or `att_in` of l-1
 * (`prev_att_in`: the same residual point as layer l's attention predictor, so one chain on the GPU serves both).
 * Layer 0 has no previous layer and falls back to its own `mlp_in` / `att_in`.
 */
import { predictorName, type PredictorInput, type ShardDims, type Target } from '../common/contracts.js';
import { DejavuError } from '../common/errors.js';
import { mlpInputSource, type MlpInput } from '../common/mlp-input.js';
export { MLP_INPUTS, type MlpInput } from '../common/mlp-input.js';

export interface Job {
  layer: number;
  target: Target;
  /** Shard column and layer the input comes from. */
  inputColumn: PredictorInput;
  inputLayer: number;
  /** layer - inputLayer (what export records). */
  lookahead: number;
  /** Label source: `mlp_active` bits, or the top `k` of `head_norm`. */
  labelColumn: 'mlp_active' | 'head_norm';
  inDim: number;
  outDim: number;
  /** Heads labelled active per token (attn only). */
  k: number;
}

export const jobName = (j: { layer: number; target: Target }): string => predictorName(j.layer, j.target);

export function headK(headFrac: number, H: number): number {
  return Math.max(1, Math.round(headFrac * H));
}

export function planJobs(
  layers: number[],
  available: number[],
  targets: Target[],
  dims: ShardDims,
  opts: { headFrac: number; mlpInput: MlpInput },
): Job[] {
  const jobs: Job[] = [];
  const have = (l: number) => available.includes(l);
  for (const layer of layers) {
    for (const target of targets) {
      if (target === 'attn') {
        if (layer === 0) continue; // dense: nothing earlier to look ahead from
        if (!have(layer - 1)) throw new DejavuError(`attention of layer ${layer} needs att_in of layer ${layer - 1}, which the shards lack`, '--layers');
        jobs.push({
          layer,
          target,
          inputColumn: 'att_in',
          inputLayer: layer - 1,
          lookahead: 1,
          labelColumn: 'head_norm',
          inDim: dims.dModel,
          outDim: dims.nHeads,
          k: headK(opts.headFrac, dims.nHeads),
        });
      } else {
        const src = mlpInputSource(opts.mlpInput, layer);
        if (!have(src.layer)) throw new DejavuError(`${opts.mlpInput} for layer ${layer} needs layer ${src.layer}, which the shards lack`, '--mlp-input');
        jobs.push({
          layer,
          target,
          inputColumn: src.column,
          inputLayer: src.layer,
          lookahead: src.lookahead,
          labelColumn: 'mlp_active',
          inDim: dims.dModel,
          outDim: dims.ffnDim,
          k: 0,
        });
      }
    }
  }
  return jobs;
}
