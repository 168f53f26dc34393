#!/usr/bin/env python3
"""Per-stage timeline of a traced decode step (bench/cuda/trace.cu writes OUT/trace-<shape>-<mode>.bin).

Each block of each main kernel stamps (fused.cuh, DJ_TRACE builds): 0 entry, 1 previous grid done (pdl_wait),
2 input ready, 3 end, 6 producer issued its last copy, 7 its last stage landed, 8 SM id, 9 consumers done with the
ring (MLP, before the atomics). Prints, per kernel kind, medians over the middle layers of per-block intervals, and
one layer's timeline (min / median / max over blocks, us from its QKV's first entry).
Usage: trace_stages.py trace-opt-13b-fixed.bin [layer]
"""
import sys
import numpy as np

TR_N, MAXB = 12, 256  # fused.cuh TR_N
KINDS = ["qkv", "att", "mlp"]


def load(path):
    a = np.fromfile(path, dtype=np.uint64).reshape(-1, MAXB, TR_N)
    t0 = min(int(x) for x in a[:, :, 0].flatten() if x)
    ks = []
    for k in range(a.shape[0] - 1):  # the last launch is the LM head
        b = a[k][a[k][:, 0] != 0]
        us = lambda j: (b[:, j].astype(np.float64) - t0) / 1e3
        ks.append(dict(kind=KINDS[k % 3], layer=k // 3, e=us(0), r=us(1), rd=us(2), en=us(3), iss=us(6), ld=us(7),
                       cd=us(9) if b[:, 9].any() else None, n=len(b)))
    return ks


def main():
    ks = load(sys.argv[1])
    layers = max(x["layer"] for x in ks) + 1
    mid = [x for x in ks if 3 <= x["layer"] < layers - 3]
    for kind in KINDS:
        R = [x for x in mid if x["kind"] == kind]
        f = lambda fn: np.median([fn(x) for x in R])
        print(f"{kind:4s} blocks {R[0]['n']:3d} | per block (median): release->ready {f(lambda x: np.median(x['rd'] - x['r'])):5.2f}"
              f"  ready->last bytes {f(lambda x: np.median(x['ld'] - x['rd'])):5.2f}"
              f"  last bytes->end {f(lambda x: np.median(x['en'] - x['ld'])):5.2f}"
              f"  entry->last bytes {f(lambda x: np.median(x['ld'] - x['e'])):5.2f}"
              f" | ends: last - median {f(lambda x: x['en'].max() - np.median(x['en'])):5.2f}")
    L = int(sys.argv[2]) if len(sys.argv) > 2 else layers // 2
    z = ks[3 * L]["e"].min()
    q = lambda v: "%6.2f/%6.2f/%6.2f" % (v.min() - z, np.median(v) - z, v.max() - z)
    print(f"layer {L} (us from its qkv's first entry; min/median/max over blocks)")
    for x in ks[3 * L:3 * L + 4]:
        print(f"  {x['kind']:4s} entry {q(x['e'])}  release {q(x['r'])}  ready {q(x['rd'])}  last bytes {q(x['ld'])}"
              f"  end {q(x['en'])}" + (f"  consumers done {q(x['cd'])}" if x["cd"] is not None else ""))


if __name__ == "__main__":
    main()
