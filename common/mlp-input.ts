/**
 * Where an MLP predictor reads (`dejavu train --mlp-input`, `dejavu bench --device cuda --mlp-input`). One list and
 * one mapping, shared by the trainer (which shard column and layer) and the CUDA bench's random predictors (which
 * residual point). Pure; no imports, so the CUDA machine's build can take it.
 *
 * `mlp_in` / `att_in`: that point of layer l. `prev_mlp_in` / `prev_att_in`: that point of layer l-1 (one layer of
 * lookahead; `prev_att_in` is the attention predictor's tap, so one GPU chain serves both). Layer 0 has no previous
 * layer and reads its own point.
 */
export const MLP_INPUTS = ['mlp_in', 'att_in', 'prev_mlp_in', 'prev_att_in'] as const;
export type MlpInput = (typeof MLP_INPUTS)[number];

export function mlpInputSource(input: MlpInput, layer: number): { column: 'att_in' | 'mlp_in'; layer: number; lookahead: number } {
  const prev = (input === 'prev_mlp_in' || input === 'prev_att_in') && layer > 0;
  return { column: input === 'att_in' || input === 'prev_att_in' ? 'att_in' : 'mlp_in', layer: prev ? layer - 1 : layer, lookahead: prev ? 1 : 0 };
}
