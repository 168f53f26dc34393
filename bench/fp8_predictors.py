"""Predictor weights rounded to fp16 or to fp8 (e4m3, one scale per row: max |w| -> 448) against fp32: recall of the
active MLP neurons and agreement with the fp32 top-k, per layer, at k = 77 and 154 (5% and 10% of opt-mini's 1536).

    python3 bench/fp8_predictors.py SHARDS PREDICTORS > recall.json
      SHARDS: a `dejavu collect` folder; PREDICTORS: a `dejavu train --target mlp` folder (layer_XX.mlp.safetensors)
Tokens: documents >= 360 of the shards. Needs numpy and pyarrow (docs/shards.md reads shards the same way).
Why: lower-precision predictor weights were a lead for the CUDA chain's bytes (docs/cuda.md); this measures their
recall cost without a GPU.
"""
import json, sys, numpy as np
from study_io import mlp_layer
SH, PR = sys.argv[1], sys.argv[2]
def e4m3(w):  # per-row scale to max 448, round to nearest e4m3 (3 mantissa bits, subnormal step 2^-9)
    s = np.abs(w).max(axis=1, keepdims=True) / 448.0; s[s == 0] = 1
    v = w / s; a = np.abs(v)
    e = np.floor(np.log2(np.maximum(a, 2.0 ** -6)))
    step = 2.0 ** (e - 3)
    q = np.sign(v) * np.minimum(np.round(a / step) * step, 448.0)
    return (q * s).astype(np.float32)
def f16(w): return w.astype(np.float16).astype(np.float32)
res = {}
for L in range(6):
    P, meta, x, act = mlp_layer(SH, PR, L)
    out = {}
    for name, (w1, w2) in {'fp32': (P['w1'], P['w2']), 'fp16': (f16(P['w1']), f16(P['w2'])),
                           'fp8 w2': (f16(P['w1']), e4m3(P['w2'])), 'fp8 w1+w2': (e4m3(P['w1']), e4m3(P['w2']))}.items():
        sc = (x @ w1.T) @ w2.T
        out[name] = sc
    for k in (77, 154):
        ref = np.argpartition(-out['fp32'], k, axis=1)[:, :k]
        refm = np.zeros_like(act); np.put_along_axis(refm, ref, True, axis=1)
        for name, sc in out.items():
            sel = np.argpartition(-sc, k, axis=1)[:, :k]
            m = np.zeros_like(act); np.put_along_axis(m, sel, True, axis=1)
            rec = (m & act).sum() / act.sum()
            agree = (m & refm).sum() / refm.sum()
            res.setdefault(f'k{k}', {}).setdefault(name, []).append((L, round(float(rec), 4), round(float(agree), 4)))
    print(f'layer {L}: {x.shape[0]} tokens', file=sys.stderr)
print(json.dumps(res))
