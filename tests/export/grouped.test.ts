import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { BUNDLE_FORMAT, BUNDLE_VERSION, groupedSelectionProblem, readManifest, type BundleManifest } from '../../export/bundle.js';
import type { PredictorInput } from '../../common/contracts.js';
import { REPO_ROOT } from '../helpers/fixtures.js';

type Spec = { input: PredictorInput; lookahead: number } | null; // null: the target is dense

/** A manifest of opt-mini's dims whose layer l has the MLP / attention predictors mlp[l] / attn[l]. */
function manifest(mlp: Spec[], attn: Spec[] = mlp.map((_, l) => (l === 0 ? null : { input: 'att_in', lookahead: 1 })), ffn = 1536): BundleManifest {
  const entry = (s: Spec, l: number, target: string) =>
    s === null
      ? { dense: true as const, reason: 'test' }
      : { dense: false as const, ...s, rank: 8, k: 4, k_rule: 'fixed', input_norm: 'layernorm' as const, w1: `layers.${l}.${target}.w1`, w2: `layers.${l}.${target}.w2`, metrics: {} };
  return {
    format: BUNDLE_FORMAT,
    version: BUNDLE_VERSION,
    model_fingerprint: 'f'.repeat(64),
    model: { n_layers: mlp.length, d_model: 384, n_heads: 12, head_dim: 32, ffn_dim: ffn },
    dtype: 'float16',
    created: '',
    source: {},
    layers: mlp.map((m, l) => ({ layer: l, mlp: entry(m, l, 'mlp'), attn: entry(attn[l], l, 'attn') })),
  };
}

const own = (input: PredictorInput) => ({ input, lookahead: 0 });
const prev = (input: PredictorInput) => ({ input, lookahead: 1 });

describe('groupedSelectionProblem: can the GPU run the grouped top-k with this bundle (plan_fused)', () => {
  it('MLP predictors on att_in of their own layer: yes (with the heads on the previous att_in beside them)', () => {
    expect(groupedSelectionProblem(manifest([own('att_in'), own('att_in'), own('att_in')]))).toBeNull();
    expect(groupedSelectionProblem(manifest([null, own('att_in'), own('att_in')]))).toBeNull();
  });

  it('MLP predictors on mlp_in: no, naming the layers and what they read', () => {
    const why = groupedSelectionProblem(manifest([null, own('mlp_in'), own('mlp_in'), own('att_in')]));
    expect(why).toMatch(/needs MLP predictors that read att_in of their own layer/);
    expect(why).toMatch(/layers 1, 2: reads mlp_in/);
    expect(why).not.toMatch(/layers? [^:]*3/);
    expect(why).toMatch(/--mlp-select exact/);
    expect(groupedSelectionProblem(manifest([null, prev('mlp_in')]))).toMatch(/layer 1: reads mlp_in of layer 0/);
  });

  it('att_in of the previous layer: fused unless that layer\'s own MLP predictor holds its one grouped slot', () => {
    // layer 0 reads its own att_in (train's prev_att_in at layer 0), so layer 1's MLP finds att_in(0) taken
    expect(groupedSelectionProblem(manifest([own('att_in'), prev('att_in'), prev('att_in')]))).toMatch(
      /layer 1: reads att_in of layer 0, whose grouped slot an earlier predictor holds/,
    );
    expect(groupedSelectionProblem(manifest([null, prev('att_in'), prev('att_in')]))).toBeNull();
  });

  it('heads never take the MLP\'s slot, and a bundle without MLP predictors has nothing to refuse', () => {
    const heads = [null, own('att_in'), prev('mlp_in')]; // unfusable heads run on the side streams: not a problem
    expect(groupedSelectionProblem(manifest([null, own('att_in'), own('att_in')], heads))).toBeNull();
    expect(groupedSelectionProblem(manifest([null, null, null]))).toBeNull();
  });

  it('an MLP of <= 128 neurons is selected whole (exact), so grouped cannot apply', () => {
    expect(groupedSelectionProblem(manifest([null, own('att_in')], undefined, 128))).toMatch(/layer 1: has 128 <= 128 outputs/);
  });

  it('takes a loaded Bundle as well as a manifest', () => {
    const m = manifest([null, own('mlp_in')]);
    expect(groupedSelectionProblem({ dir: 'b', manifest: m, mlp: [], attn: [] })).toBe(groupedSelectionProblem(m));
  });

  it('the example bundles: opt-mini-bundle reads mlp_in (refused), opt-mini-bundle-att-in can run it', () => {
    expect(groupedSelectionProblem(readManifest(join(REPO_ROOT, 'examples', 'opt-mini-bundle')))).toMatch(/reads mlp_in/);
    expect(groupedSelectionProblem(readManifest(join(REPO_ROOT, 'examples', 'opt-mini-bundle-att-in')))).toBeNull();
  });
});

describe('eval ppl --bundle --mlp-select grouped on the CPU refuses a bundle the GPU cannot run grouped', () => {
  const base = { model: 'no-such-model', data: ['no-such-data'], mlpSelect: 'grouped', mlpGroups: '8' };
  const common = { selection: { docs: 1 }, maxLen: 8 };
  it('names the bundle and the reason, before the model is read', async () => {
    const { runBundleCli } = await import('../../runtime/sparse/eval.js');
    const mlpIn = join(REPO_ROOT, 'examples', 'opt-mini-bundle');
    await expect(runBundleCli({ ...base, bundle: mlpIn }, common)).rejects.toThrow(
      new RegExp(`^${mlpIn}: --mlp-select grouped needs MLP predictors that read att_in .*layers 1, 2, 3, 4, 5: reads mlp_in`),
    );
    // --mlp-groups alone means grouped too
    await expect(runBundleCli({ ...base, mlpSelect: undefined, bundle: mlpIn }, common)).rejects.toThrow(/reads mlp_in/);
    // the att_in bundle passes (and fails on the missing model instead)
    const attIn = join(REPO_ROOT, 'examples', 'opt-mini-bundle-att-in');
    await expect(runBundleCli({ ...base, bundle: attIn }, common)).rejects.toThrow(/no-such-model/);
  });
});
