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
import json, struct, sys, numpy as np, pyarrow as pa, glob
SH, PR = sys.argv[1], sys.argv[2]
KS, GS = (77, 154), (1, 5, 10, 20, 40)
def st(path):
    f = open(path, 'rb'); n = struct.unpack('<Q', f.read(8))[0]; h = json.loads(f.read(n)); base = 8 + n; out = {}
    for k, v in h.items():
        if k == '__metadata__': continue
        a, b = v['data_offsets']; f.seek(base + a)
        out[k] = np.frombuffer(f.read(b - a), dtype=np.float32).reshape(v['shape'])
    return out, h['__metadata__']
def rows(layer, col, docmin):
    xs, acts = [], []
    for p in sorted(glob.glob(f'{SH}/layer_{layer:02d}/shard_*.arrow')):
        t = pa.ipc.open_file(p).read_all()
        doc = t.column('doc').to_numpy(); m = doc >= docmin
        x = t.column(col).combine_chunks().flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(doc), -1)
        b = t.column('mlp_active').combine_chunks().flatten().to_numpy().reshape(len(doc), -1)
        xs.append(x[m]); acts.append(b[m])
    return np.concatenate(xs), np.concatenate(acts)
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
    P, meta = st(f'{PR}/layer_{L:02d}.mlp.safetensors')
    src = L - int(meta['lookahead'])
    x, _ = rows(src, meta['input'], 360)
    _, bits = rows(L, 'mlp_in', 360)
    ffn = P['w2'].shape[0]
    act = np.unpackbits(bits, axis=1, bitorder='little')[:, :ffn].astype(bool)
    if meta['input_norm'] == 'layernorm':
        x = (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + 1e-5)
    sc = (x @ P['w1'].T) @ P['w2'].T
    res['tokens'] = int(x.shape[0])
    for k in KS:
        ref = topk_mask(sc, k)
        assert (ref.sum(1) == k).all()
        for g in GS:
            gr = groups(ffn, k, g)
            m = grouped_mask(sc, k, g)
            assert (m.sum(1) == k).all() and sum(q for _, _, q in gr) == k
            if g == 1: assert (m == ref).all()
            ceil = sum(np.minimum(act[:, r0:r1].sum(1), q).sum() for r0, r1, q in gr) / act.sum()
            d = res.setdefault(f'k{k}', {}).setdefault(f'G{g}', {'recall': [], 'agree': [], 'ceiling': []})
            d['recall'].append(round(float((m & act).sum() / act.sum()), 4))
            d['agree'].append(round(float((m & ref).sum() / ref.sum()), 4))
            d['ceiling'].append(round(float(ceil), 4))
            res['groups'][f'k{k} G{g}'] = f'{len(gr)} groups of {gr[0][1] - gr[0][0]} (last {gr[-1][1] - gr[-1][0]}), ' \
                                         f'quotas {min(q for *_, q in gr)}-{max(q for *_, q in gr)}'
    print(f'layer {L}: {x.shape[0]} tokens, {act.sum(1).mean():.1f} active of {ffn}', file=sys.stderr)
for k in KS:
    for d in res[f'k{k}'].values():
        for key in ('recall', 'agree', 'ceiling'): d[f'{key}_mean'] = round(float(np.mean(d[key])), 4)
print(json.dumps(res))
