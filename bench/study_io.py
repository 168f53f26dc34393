"""Shared readers of the predictor studies (bench/fp8_predictors.py, bench/grouped_topk.py): a `dejavu train`
predictor file, and one layer's predictor input and true MLP activity from `dejavu collect` shards
(docs/shards.md). Needs numpy and pyarrow."""
import glob, json, struct
import numpy as np, pyarrow as pa

def st(path):
    """fp32 tensors of a safetensors file, and its __metadata__."""
    f = open(path, 'rb'); n = struct.unpack('<Q', f.read(8))[0]; h = json.loads(f.read(n)); base = 8 + n; out = {}
    for k, v in h.items():
        if k == '__metadata__': continue
        a, b = v['data_offsets']; f.seek(base + a)
        out[k] = np.frombuffer(f.read(b - a), dtype=np.float32).reshape(v['shape'])
    return out, h['__metadata__']

def rows(shards, layer, col, docmin, docmax=None):
    """Column `col` (fp32 [tokens, d]) and the mlp_active bitmask rows of one layer, documents in [docmin, docmax)."""
    xs, acts = [], []
    for p in sorted(glob.glob(f'{shards}/layer_{layer:02d}/shard_*.arrow')):
        t = pa.ipc.open_file(p).read_all()
        doc = t.column('doc').to_numpy(); m = doc >= docmin
        if docmax is not None: m &= doc < docmax
        x = t.column(col).combine_chunks().flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(doc), -1)
        b = t.column('mlp_active').combine_chunks().flatten().to_numpy().reshape(len(doc), -1)
        xs.append(x[m]); acts.append(b[m])
    return np.concatenate(xs), np.concatenate(acts)

def mlp_layer(shards, preds, L, docmin=360):
    """Layer L's MLP predictor (tensors, metadata), the input it reads (normalised as its metadata says) and the true
    active neurons [tokens, ffn] (bool)."""
    P, meta = st(f'{preds}/layer_{L:02d}.mlp.safetensors')
    x, _ = rows(shards, L - int(meta['lookahead']), meta['input'], docmin)
    _, bits = rows(shards, L, 'mlp_in', docmin)
    act = np.unpackbits(bits, axis=1, bitorder='little')[:, :P['w2'].shape[0]].astype(bool)
    if meta['input_norm'] == 'layernorm':
        x = (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + 1e-5)
    return P, meta, x, act

def active_frequency(shards, L, ffn, docmax):
    """How often each of layer L's neurons is active, over the documents < docmax (the training side)."""
    _, bits = rows(shards, L, 'mlp_in', 0, docmax)
    return np.unpackbits(bits, axis=1, bitorder='little')[:, :ffn].mean(0)
