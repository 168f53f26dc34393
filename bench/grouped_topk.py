"""Grouped MLP top-k (runtime/sparse/kernels.ts groupedTopK, the CUDA fused predictors' selection) against the global
top-k of the same predictor scores: recall of the active MLP neurons and agreement with the global picks, per layer, at
k = 77 and 154 (5% and 10% of opt-mini's 1536), for G = 1, 5, 10, 20, 40 groups.

    python3 bench/grouped_topk.py SHARDS PREDICTORS > recall.json
      SHARDS: a `dejavu collect` folder; PREDICTORS: a `dejavu train --target mlp` folder (layer_XX.mlp.safetensors)
Groups: G groups of consecutive neurons, per = ceil(n / G); the group with rows [r0, r1) takes its own top
floor(k*r1/n) - floor(k*r0/n) neurons, so the quotas add up to k. G = 1 is the global top-k.
Tokens: documents >= 360 of the shards (as bench/fp8_predictors.py). Needs numpy and pyarrow.
Output, per k and per G: recall (per layer; share of the active neurons picked, summed over tokens), agree (share of
the global top-k's picks also picked), ceiling (the best recall any selection with these group quotas could reach:
sum over groups of min(quota, active in the group), over all active) and the means over the layers.
Why: the GPU kernel we plan selects ~8 of each ~160 neurons in its own block (13B: 20480 neurons, k 1024, G 128),
which on opt-mini (k 77) is G ~ 10; this measures what that costs without a GPU.
"""
import json, sys, numpy as np
from study_io import active_frequency, mlp_layer
SH, PR = sys.argv[1], sys.argv[2]
KS, GS = (77, 154), (1, 5, 10, 20, 40)
# Optional 3rd argument `freq`: before grouping, the neurons are reordered (a permutation of fc1 rows / fc2 columns /
# predictor rows changes nothing in the model) by dealing them, most often active first (documents < 360), round-robin
# over the G groups, so every group gets a like share of the often-active neurons.
PERMUTE = len(sys.argv) > 3 and sys.argv[3] == 'freq'
def deal(freq, g):  # new order of the neurons for G groups (position -> neuron), as groups() cuts it
    n = len(freq); per = -(-n // g) if g > 1 else n
    order = np.argsort(-freq, kind='stable'); out = np.empty(n, dtype=np.int64); fill = [0] * g
    sizes = [min(n, r0 + per) - r0 for r0 in range(0, n, per)]
    j = 0
    for nb in order:  # round-robin over the groups that still have room
        while fill[j % len(sizes)] >= sizes[j % len(sizes)]: j += 1
        gi = j % len(sizes); out[gi * per + fill[gi]] = nb; fill[gi] += 1; j += 1
    return out
def groups(n, k, g):  # [(r0, r1, quota)], as groupedTopK
    per = -(-n // g) if g > 1 else n
    return [(r0, min(n, r0 + per), (k * min(n, r0 + per)) // n - (k * r0) // n) for r0 in range(0, n, per)]
def topk_mask(sc, k):
    m = np.zeros(sc.shape, dtype=bool)
    if k >= sc.shape[1]: m[:] = True
    elif k > 0: np.put_along_axis(m, np.argpartition(-sc, k - 1, axis=1)[:, :k], True, axis=1)
    return m
def grouped_mask(sc, k, g):
    m = np.zeros(sc.shape, dtype=bool)
    for r0, r1, q in groups(sc.shape[1], k, g):
        m[:, r0:r1] = topk_mask(sc[:, r0:r1], q)
    return m
res = {'tokens': None, 'groups': {}}
for L in range(6):
    P, meta, x, act = mlp_layer(SH, PR, L)
    ffn = P['w2'].shape[0]
    sc = (x @ P['w1'].T) @ P['w2'].T
    res['tokens'] = int(x.shape[0])
    freq = active_frequency(SH, L, ffn, 360) if PERMUTE else None
    for k in KS:
        ref = topk_mask(sc, k)
        assert (ref.sum(1) == k).all()
        for g in GS:
            gr = groups(ffn, k, g)
            sc_g, act_g = sc, act
            if PERMUTE and g > 1:
                perm = deal(freq, g); sc_g, act_g = sc[:, perm], act[:, perm]
                assert (act_g.sum() == act.sum()) and len(set(perm.tolist())) == ffn
            m = grouped_mask(sc_g, k, g)
            assert (m.sum(1) == k).all() and sum(q for _, _, q in gr) == k
            if g == 1: assert (m == ref).all()
            ceil = sum(np.minimum(act_g[:, r0:r1].sum(1), q).sum() for r0, r1, q in gr) / act.sum()
            d = res.setdefault(f'k{k}', {}).setdefault(f'G{g}', {'recall': [], 'agree': [], 'ceiling': []})
            d['recall'].append(round(float((m & act_g).sum() / act.sum()), 4))
            # agreement in the original neuron order: undo the permutation
            mo = m if sc_g is sc else np.zeros_like(m)
            if sc_g is not sc: mo[:, perm] = m
            d['agree'].append(round(float((mo & ref).sum() / ref.sum()), 4))
            d['ceiling'].append(round(float(ceil), 4))
            res['groups'][f'k{k} G{g}'] = f'{len(gr)} groups of {gr[0][1] - gr[0][0]} (last {gr[-1][1] - gr[-1][0]}), ' \
                                         f'quotas {min(q for *_, q in gr)}-{max(q for *_, q in gr)}'
    print(f'layer {L}: {x.shape[0]} tokens, {act.sum(1).mean():.1f} active of {ffn}', file=sys.stderr)
for k in KS:
    for d in res[f'k{k}'].values():
        for key in ('recall', 'agree', 'ceiling'): d[f'{key}_mean'] = round(float(np.mean(d[key])), 4)
print(json.dumps(res))
