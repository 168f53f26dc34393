import { describe, expect, it } from 'vitest';
import { planJobs, MLP_INPUTS, type MlpInput } from '../../train/jobs.js';
import { mlpInputSource } from '../../common/mlp-input.js';

const dims = { dModel: 16, nHeads: 4, ffnDim: 64 } as Parameters<typeof planJobs>[3];
const mlp = (input: MlpInput, layers = [0, 1, 2]) =>
  planJobs(layers, [0, 1, 2], ['mlp'], dims, { headFrac: 0.5, mlpInput: input }).map((j) => [j.layer, j.inputColumn, j.inputLayer, j.lookahead]);

describe('planJobs: where each predictor reads', () => {
  it('attention: layer 0 dense, layer l from att_in of l-1', () => {
    const jobs = planJobs([0, 1, 2], [0, 1, 2], ['attn'], dims, { headFrac: 0.5, mlpInput: 'mlp_in' });
    expect(jobs.map((j) => [j.layer, j.inputColumn, j.inputLayer, j.lookahead, j.k])).toEqual([
      [1, 'att_in', 0, 1, 2],
      [2, 'att_in', 1, 1, 2],
    ]);
  });

  it('MLP: each --mlp-input names its column and layer; lookahead inputs fall back to their own layer at 0', () => {
    expect(mlp('mlp_in')).toEqual([[0, 'mlp_in', 0, 0], [1, 'mlp_in', 1, 0], [2, 'mlp_in', 2, 0]]);
    expect(mlp('att_in')).toEqual([[0, 'att_in', 0, 0], [1, 'att_in', 1, 0], [2, 'att_in', 2, 0]]);
    expect(mlp('prev_mlp_in')).toEqual([[0, 'mlp_in', 0, 0], [1, 'mlp_in', 0, 1], [2, 'mlp_in', 1, 1]]);
    expect(mlp('prev_att_in')).toEqual([[0, 'att_in', 0, 0], [1, 'att_in', 0, 1], [2, 'att_in', 1, 1]]);
    expect(MLP_INPUTS).toEqual(['mlp_in', 'att_in', 'prev_mlp_in', 'prev_att_in']);
  });

  it('mlpInputSource (shared with the CUDA bench): column, layer and lookahead of each input', () => {
    const at = (t: MlpInput) => [0, 1, 5].map((l) => mlpInputSource(t, l));
    expect(at('att_in')).toEqual([{ column: 'att_in', layer: 0, lookahead: 0 }, { column: 'att_in', layer: 1, lookahead: 0 }, { column: 'att_in', layer: 5, lookahead: 0 }]);
    expect(at('prev_att_in')).toEqual([{ column: 'att_in', layer: 0, lookahead: 0 }, { column: 'att_in', layer: 0, lookahead: 1 }, { column: 'att_in', layer: 4, lookahead: 1 }]);
    expect(at('prev_mlp_in')).toEqual([{ column: 'mlp_in', layer: 0, lookahead: 0 }, { column: 'mlp_in', layer: 0, lookahead: 1 }, { column: 'mlp_in', layer: 4, lookahead: 1 }]);
    expect(at('mlp_in')).toEqual([{ column: 'mlp_in', layer: 0, lookahead: 0 }, { column: 'mlp_in', layer: 1, lookahead: 0 }, { column: 'mlp_in', layer: 5, lookahead: 0 }]);
  });

  it('a lookahead input whose previous layer is not in the shards is refused', () => {
    expect(() => planJobs([2], [2], ['mlp'], dims, { headFrac: 0.5, mlpInput: 'prev_att_in' })).toThrow(/prev_att_in for layer 2 needs layer 1/);
  });
});
