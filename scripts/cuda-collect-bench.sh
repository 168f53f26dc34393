#!/usr/bin/env bash
# `dejavu collect --device cuda` against the disk it writes to, in one run on the GPU machine:
#   (a) the prefill with taps alone: `collect --device cuda --dry-run` (taps copied to pinned memory, nothing written);
#   (b) the output disk's sequential write rate, data forced to disk: dd of DD_GB GiB with conv=fsync;
#   (c) `collect --device cuda` end to end into shards on that disk (every shard fsync'd before the manifest), rate
#       from its first document to its manifest (the model load apart);
# on a random-weight OPT-6.7B-shape checkpoint (scripts/random-opt-checkpoint.py, written to $CKPT when absent, ~130 s)
# and the first DOCS c4mini-train documents at --max-len 2048 (~39k tokens, ~592 KB a token over 32 layers: ~23 GB of
# shards, deleted after measuring). One JSON, $OUT/collect-bench.json: device, date, commands, tokens, bytes per token
# per layer, GPU memory, the three rates, and end to end as a fraction of min(a, b / bytes per token) (target >= 0.8).
#
#   scripts/cuda-collect-bench.sh prep   here: scripts/cuda-check.sh prep, plus apache-arrow (the shard writer) in
#                                        .devnm/node_modules; carry .devtools and .devnm
#   scripts/cuda-collect-bench.sh        on the GPU machine
# Environment: OUT (default ./cuda-out), CKPT (default /tmp/opt-6.7b-random), WORK (shards and the dd file; default
# /tmp/dejavu-collect-bench: the disk measured), DOCS (default 50: ~39k tokens), DD_GB (default 4), DATA (default
# .devnm/c4mini-train-first500.json.gz; examples/c4mini/c4mini-train-first400.json.gz holds the same first documents).
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = prep ]; then
  set -e
  bash scripts/cuda-check.sh prep
  # The shard writer's apache-arrow as Node imports it (Arrow.node.mjs and the .mjs files it imports) and its
  # dependencies, as scripts/device-prep.sh packs them.
  S=.devnm/node_modules
  rm -rf $S/apache-arrow $S/flatbuffers $S/tslib $S/json-with-bigint
  mkdir -p $S/apache-arrow
  (cd node_modules/apache-arrow && find . -name '*.mjs' ! -path './bin/*' -print0 | tar --null -T - -cf -) | tar -C $S/apache-arrow -xf -
  cp node_modules/apache-arrow/package.json node_modules/apache-arrow/LICENSE* $S/apache-arrow/
  for p in 'flatbuffers js' 'tslib modules tslib.js tslib.es6.mjs' 'json-with-bigint json-with-bigint.js json-with-bigint.cjs'; do
    set -- $p
    mkdir -p $S/$1
    cp node_modules/$1/package.json $S/$1/
    for f in "${@:2}"; do cp -r node_modules/$1/$f $S/$1/; done
  done
  du -sh .devnm
  exit 0
fi

OUT=${OUT:-$PWD/cuda-out}
CKPT=${CKPT:-/tmp/opt-6.7b-random}
WORK=${WORK:-/tmp/dejavu-collect-bench}
DOCS=${DOCS:-50}
DD_GB=${DD_GB:-4}
mkdir -p "$OUT" "$WORK"
exec > >(tee -a "$OUT/collect-bench.log") 2>&1
. scripts/device-node.sh
unset NODE_PATH
# Arrow from scripts/device-prep.sh's archive when this script's prep did not put it there.
if [ ! -f .devnm/node_modules/apache-arrow/package.json ] && [ -f .devnm/train-nm.tar.xz ]; then
  tar -C .devnm -xJf .devnm/train-nm.tar.xz || { echo "cannot unpack .devnm/train-nm.tar.xz"; exit 1; }
fi
[ -f .devnm/node_modules/apache-arrow/package.json ] || { echo "no apache-arrow in .devnm: run scripts/cuda-collect-bench.sh prep first"; exit 1; }
CLI=.devnm/dist/cli/main.js
DATA=${DATA:-.devnm/c4mini-train-first500.json.gz}
T0=$(date +%s)
echo "== $(date -u +%FT%TZ) $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader)"
if [ ! -f "$CKPT/model.safetensors.index.json" ]; then
  # Written while the library builds (CPU and disk, not the GPU).
  (timeout 300 python3 scripts/random-opt-checkpoint.py --shape opt-6.7b --out "$CKPT" --shard-gb 2 --json > "$WORK/ckpt.json" 2> "$WORK/ckpt.err") &
  CKPT_PID=$!
fi
[ -f runtime/cuda/build/libdejavu_cuda.so ] || DEJAVU_CUDA_ARCH=${DEJAVU_CUDA_ARCH:-sm_90} timeout 300 "$NODE" scripts/build-cuda.mjs --lib-only || exit 1
if [ -n "${CKPT_PID:-}" ]; then
  wait "$CKPT_PID" || { echo "checkpoint failed: $(tail -3 "$WORK/ckpt.err")"; exit 1; }
fi
echo "   checkpoint $(du -sh "$CKPT" | cut -f1), $(( $(date +%s) - T0 )) s so far"
ARGS=(--model "$CKPT" --data "$DATA" --docs "$DOCS" --max-len 2048 --device cuda --json)
now() { date +%s.%N; }
sync

echo "== (a) prefill with taps, nothing written: collect ${ARGS[*]} --dry-run"
timeout 150 "$NODE" $CLI collect "${ARGS[@]}" --dry-run > "$WORK/dry.json" 2> "$WORK/dry.err" || { echo "dry run failed: $(tail -3 "$WORK/dry.err")"; exit 1; }

echo "== (b) disk: dd $DD_GB GiB, conv=fsync, into $WORK"
sync
t0=$(now)
timeout 120 dd if=/dev/zero of="$WORK/dd.bin" bs=64M count=$((DD_GB * 16)) conv=fsync status=none || { echo "dd failed"; rm -f "$WORK/dd.bin"; exit 1; }
t1=$(now)
rm -f "$WORK/dd.bin"
DD_S=$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')

echo "== (c) collect ${ARGS[*]} --out $WORK/shards"
rm -rf "$WORK/shards"
sync
t0=$(now)
timeout 300 "$NODE" $CLI collect "${ARGS[@]}" --out "$WORK/shards" > "$WORK/collect.json" 2> "$WORK/collect.err" || { echo "collect failed: $(tail -3 "$WORK/collect.err")"; rm -rf "$WORK/shards"; exit 1; }
t1=$(now)
WALL_S=$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')
SHARD_BYTES=$(du -sb "$WORK/shards" | cut -f1)
rm -rf "$WORK/shards"

# Host-side costs the writer pays per byte (SHA-256 of every shard, on the main thread), for reading a shortfall.
SHA_GBPS=$("$NODE" -e 'const c = require("crypto"); const b = Buffer.alloc(256 << 20, 7); const h = c.createHash("sha256");
  const t = performance.now(); for (let i = 0; i < 4; i++) h.update(b); h.digest(); console.log((4 * b.length / 1e9 / ((performance.now() - t) / 1000)).toFixed(2))')

"$NODE" -e '
const fs = require("fs");
const [work, out, ddGb, ddS, wallS, shardBytes, shaGbps, device, cmdA, cmdC] = process.argv.slice(1);
const dry = JSON.parse(fs.readFileSync(`${work}/dry.json`, "utf8"));
const col = JSON.parse(fs.readFileSync(`${work}/collect.json`, "utf8"));
const ddBytes = Number(ddGb) * 2 ** 30;
const diskBps = ddBytes / Number(ddS);
const bytesPerToken = col.bytes / col.tokens;  // all layers, Arrow framing included
const prefill = dry.tokens_per_second;
const diskTokens = diskBps / bytesPerToken;
const e2e = col.run_tokens_per_second;
const bound = Math.min(prefill, diskTokens);
const r = (x, n = 1) => Math.round(x * 10 ** n) / 10 ** n;
const res = {
  device, date: new Date().toISOString(),
  commands: { prefill_with_taps: cmdA, disk: `dd if=/dev/zero of=${work}/dd.bin bs=64M count=${Number(ddGb) * 16} conv=fsync`, collect: cmdC },
  model: "random-weight OPT-6.7B shape (scripts/random-opt-checkpoint.py --shape opt-6.7b), fp16",
  docs: col.docs, tokens: col.tokens, max_len: 2048, layers: col.layers,
  bytes_per_token_per_layer: col.bytes_per_token_per_layer, bytes_per_token: r(bytesPerToken, 0), shard_bytes: Number(shardBytes),
  gpu_memory_used_bytes: dry.gpu ? dry.gpu.memory_used_bytes : null, gpu_memory_total_bytes: dry.gpu ? dry.gpu.memory_total_bytes : null,
  prefill_with_taps: { tokens_per_second: prefill, seconds: dry.seconds, load_seconds: dry.load_seconds, tokens: dry.tokens },
  disk: { bytes: ddBytes, seconds: r(Number(ddS), 3), bytes_per_second: r(diskBps, 0), tokens_per_second_at_this_size: r(diskTokens) },
  collect: { tokens_per_second: e2e, seconds: col.run_seconds, forward_wait_seconds: col.forward_wait_seconds,
    command_wall_seconds: r(Number(wallS), 2), shards: col.shards },
  bound_tokens_per_second: r(bound), bound_by: prefill <= diskTokens ? "prefill_with_taps" : "disk",
  end_to_end_fraction: r(e2e / bound, 3), target: 0.8, pass: e2e / bound >= 0.8,
  host_sha256_gbps: Number(shaGbps),
};
fs.writeFileSync(`${out}/collect-bench.json`, JSON.stringify(res, null, 1) + "\n");
console.log(`prefill+taps ${prefill} tok/s | disk ${r(diskBps / 1e9, 2)} GB/s = ${r(diskTokens)} tok/s at ${r(bytesPerToken / 1e3)} KB/token | ` +
  `collect ${e2e} tok/s (waited on the GPU ${col.forward_wait_seconds} of ${col.run_seconds} s) = ${r(e2e / bound, 3)} of min -> ${res.pass ? "pass" : "FAIL"}`);
process.exit(res.pass ? 0 : 1);
' "$WORK" "$OUT" "$DD_GB" "$DD_S" "$WALL_S" "$SHARD_BYTES" "$SHA_GBPS" \
  "$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)" \
  "dejavu collect ${ARGS[*]} --dry-run" "dejavu collect ${ARGS[*]} --out $WORK/shards"
status=$?
echo "   total $(( $(date +%s) - T0 )) s; $OUT/collect-bench.json"
exit $status
