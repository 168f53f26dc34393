#!/usr/bin/env python3
"""Oracle-heads perplexity under both KV policies, in numpy (float64), independent of the TypeScript runtime.

The reference `dejavu eval ppl --bundle B --modes oracle --kv-policy P --heads-frac F --mlp-k FFN` is checked against
(docs/sparse-runtime.md). Protocol, token by token over each document (pre-LN OPT, MLP dense):
  - in every layer but layer 0, per token, rank heads by the L2 norm of their attention output (softmax(q K^T) V of
    the head, before out_proj) computed with every head's full K/V history (from the current, already-sparse hidden
    states); keep the top k = round(frac x H), ties to the lower head index; skipped heads output zero;
  - KV 'all': a kept head's output is that full-history attention;
  - KV 'selected': a kept head's attention is recomputed over only the positions where that head was kept (its own
    position included): an explicit mask over the history.
ppl = exp(total NLL / predicted tokens), each document `ids[0..T)` predicting ids[1..T).

Inputs: an OPT folder with config.json and a single model.safetensors (F32 / F16 / BF16), and the token ids that
`dejavu eval ppl ... --dump-ids FILE` writes ({"docs": [[ids]]}), so no tokenizer is needed here.

  python3 bench/oracle_heads_reference.py --model examples/opt-mini --ids ids.json \
      --heads-frac 0.75,0.5,0.2 --kv-policy all,selected > figures.json
"""
import argparse
import json
import math
import struct
import sys
import time

import numpy as np


def read_safetensors(path):
    with open(path, 'rb') as f:
        n = struct.unpack('<Q', f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == '__metadata__':
            continue
        a, b = info['data_offsets']
        raw = data[a:b]
        dt = info['dtype']
        if dt == 'F32':
            arr = np.frombuffer(raw, dtype='<f4')
        elif dt == 'F16':
            arr = np.frombuffer(raw, dtype='<f2')
        elif dt == 'BF16':
            arr = (np.frombuffer(raw, dtype='<u2').astype(np.uint32) << 16).view(np.float32)
        else:
            sys.exit(f'error: {path}: tensor {name} has dtype {dt} (F32, F16, BF16 expected)')
        out[name.removeprefix('model.')] = arr.astype(np.float64).reshape(info['shape'])
    return out


def load_model(folder):
    cfg = json.load(open(f'{folder}/config.json'))
    if not cfg.get('do_layer_norm_before', True) or cfg.get('word_embed_proj_dim', cfg['hidden_size']) != cfg['hidden_size']:
        sys.exit(f'error: {folder}/config.json: this reference handles pre-LN OPT without project_in/out only')
    w = read_safetensors(f'{folder}/model.safetensors')
    return cfg, w


def layer_norm(x, g, b):
    m = x.mean(axis=-1, keepdims=True)
    v = ((x - m) ** 2).mean(axis=-1, keepdims=True)
    return (x - m) / np.sqrt(v + 1e-5) * g + b


def softmax_last(s):
    m = s.max(axis=-1, keepdims=True)
    e = np.exp(s - m)
    return e / e.sum(axis=-1, keepdims=True)


def doc_nll(cfg, w, ids, k_of_layer, policy):
    """Total NLL of one document; k_of_layer[l] = heads kept in layer l (None: all).

    Layer by layer over the whole document, as a prefill: the selection at (token t, layer l) depends only on layer
    l's K/V at positions <= t, which depend only on the layer's input there, so this equals the token-by-token decode
    (what the runtime does) while every projection is one matrix product.
    """
    d, H, L = cfg['hidden_size'], cfg['num_attention_heads'], cfg['num_hidden_layers']
    hd = d // H
    T = len(ids)
    dec = 'decoder.'
    E = w[dec + 'embed_tokens.weight']
    P = w[dec + 'embed_positions.weight']
    lm = w.get('lm_head.weight', E)
    x = E[ids] + P[2 : T + 2]  # [T][d]
    causal = np.tril(np.ones((T, T), dtype=bool))  # [t][s]: s <= t
    scale = 1 / math.sqrt(hd)
    for l in range(L):
        p = f'{dec}layers.{l}.'
        h = layer_norm(x, w[p + 'self_attn_layer_norm.weight'], w[p + 'self_attn_layer_norm.bias'])
        q = (h @ w[p + 'self_attn.q_proj.weight'].T + w[p + 'self_attn.q_proj.bias']).reshape(T, H, hd)
        k = (h @ w[p + 'self_attn.k_proj.weight'].T + w[p + 'self_attn.k_proj.bias']).reshape(T, H, hd)
        v = (h @ w[p + 'self_attn.v_proj.weight'].T + w[p + 'self_attn.v_proj.bias']).reshape(T, H, hd)
        s = np.einsum('thi,shi->hts', q, k) * scale  # [H][t][s]
        full = np.einsum('hts,shi->thi', softmax_last(np.where(causal, s, -np.inf)), v)  # every head, full history
        kk = k_of_layer[l]
        keep = np.ones((T, H), dtype=bool)
        if kk is not None and kk < H:
            order = np.argsort(-np.linalg.norm(full, axis=2), axis=1, kind='stable')  # ties: lower head first
            keep[:] = False
            np.put_along_axis(keep, order[:, :kk], True, axis=1)
        if policy == 'selected':
            # Head h at step t sees position s only where it was kept at s (its own position always).
            allowed = causal[None, :, :] & (keep.T[:, None, :] | np.eye(T, dtype=bool)[None, :, :])  # [H][t][s]
            o = np.einsum('hts,shi->thi', softmax_last(np.where(allowed, s, -np.inf)), v)
        else:
            o = full
        o = np.where(keep[:, :, None], o, 0.0).reshape(T, d)
        x = x + o @ w[p + 'self_attn.out_proj.weight'].T + w[p + 'self_attn.out_proj.bias']
        h2 = layer_norm(x, w[p + 'final_layer_norm.weight'], w[p + 'final_layer_norm.bias'])
        a = np.maximum(h2 @ w[p + 'fc1.weight'].T + w[p + 'fc1.bias'], 0.0)
        x = x + a @ w[p + 'fc2.weight'].T + w[p + 'fc2.bias']
    hidden = layer_norm(x, w[dec + 'final_layer_norm.weight'], w[dec + 'final_layer_norm.bias'])
    logits = hidden[:-1] @ lm.T
    m = logits.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(logits - m).sum(axis=1))
    return float((lse - logits[np.arange(T - 1), ids[1:]]).sum()), T - 1


def ppl(cfg, w, docs, frac, policy):
    H, L = cfg['num_attention_heads'], cfg['num_hidden_layers']
    k = None if frac is None else max(1, min(H, round(frac * H)))
    ks = [None] + [k] * (L - 1)  # layer 0 dense
    nll = 0.0
    n = 0
    for ids in docs:
        a, b = doc_nll(cfg, w, np.asarray(ids, dtype=np.int64), ks, policy)
        nll += a
        n += b
    return math.exp(nll / n), n, k


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--model', required=True)
    ap.add_argument('--ids', required=True, help='JSON from dejavu eval ppl --dump-ids')
    ap.add_argument('--heads-frac', default='0.75,0.5,0.2')
    ap.add_argument('--kv-policy', default='all,selected')
    ap.add_argument('--docs', type=int, default=None, help='only the first N documents of the file')
    ap.add_argument('--max-len', type=int, default=None, help='cut each document to its first N ids')
    args = ap.parse_args()
    cfg, w = load_model(args.model)
    try:
        docs = json.load(open(args.ids))['docs']
    except (OSError, ValueError, KeyError) as e:
        sys.exit(f'error: {args.ids}: not a --dump-ids file ({e})')
    docs = [d[: args.max_len] if args.max_len else d for d in docs[: args.docs]]
    docs = [d for d in docs if len(d) >= 2]
    t0 = time.time()
    dense, tokens, _ = ppl(cfg, w, docs, None, 'all')
    runs = []
    for frac in [float(f) for f in args.heads_frac.split(',')]:
        for policy in args.kv_policy.split(','):
            if policy not in ('all', 'selected'):
                sys.exit(f'error: --kv-policy: {policy} (all or selected)')
            p, _, k = ppl(cfg, w, docs, frac, policy)
            runs.append({'heads_frac': frac, 'heads_k': k, 'kv_policy': policy, 'ppl': round(p, 4), 'delta_vs_dense': round(p / dense - 1, 5)})
            print(f'heads {frac} ({k} of {cfg["num_attention_heads"]}) kv {policy}: ppl {p:.4f} ({100 * (p / dense - 1):+.2f}%)', file=sys.stderr)
    json.dump({'reference': 'bench/oracle_heads_reference.py (numpy float64)', 'model': args.model, 'ids': args.ids, 'docs': len(docs), 'tokens': tokens,
               'dense_ppl': round(dense, 4), 'runs': runs, 'seconds': round(time.time() - t0, 1)}, sys.stdout, indent=2)
    print()


if __name__ == '__main__':
    main()
