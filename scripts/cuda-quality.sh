#!/usr/bin/env bash
# The GPU engine's quality and scale runs, on the GPU machine (after `scripts/cuda-check.sh prep` here, which puts the
# compiled CLI, a pruned node_modules and the first 500 c4mini-train documents in .devnm/; carry .devtools and .devnm):
#   1. opt-mini with examples/opt-mini-bundle-att-in: `dejavu eval ppl --device cuda` (dense by the prefill, predicted
#      by the sparse decode graph), KV all / selected x exact / grouped, first 50 c4mini validation docs x 512;
#   2. `dejavu bench --device cuda --model opt-mini --bundle ... --data ...`: ms/token and perplexity in one JSON;
#   3. a random-weight OPT-6.7B-shape checkpoint in HF layout (scripts/random-opt-checkpoint.py, sharded fp16,
#      opt-mini's tokenizer files) at $CKPT: `bench --model $CKPT --prefill-len 2048` (streamed load: time and peak
#      RssAnon; prefill tokens/s vs the fp16 GEMM rate in the same run), then `eval ppl --device cuda` on the first 500
#      c4mini-train docs x 2048 (load time reported apart);
#   4. `bench --shape opt-13b --sweep` (ms/token over heads x neurons x both KV policies).
# Environment: OUT (default ./cuda-out), CKPT (default /tmp/opt-6.7b-random), STEPS (default "mini bench67 sweep").
# Every result is a JSON under $OUT; the log is $OUT/quality.log.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/cuda-out}
CKPT=${CKPT:-/tmp/opt-6.7b-random}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/quality.log") 2>&1
. scripts/device-node.sh
CLI=".devnm/dist/cli/main.js"
VALID=examples/c4mini/c4mini-validation.00000-of-00001.json.gz
TRAIN500=.devnm/c4mini-train-first500.json.gz
BUNDLE=examples/opt-mini-bundle-att-in
status=0
echo "== $(date -u +%FT%TZ) $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader)"
case " ${STEPS:-mini bench67 sweep} " in *" bench67 "*)
  # The checkpoint is written while the library builds and opt-mini runs (CPU and disk, not the GPU).
  (python3 scripts/random-opt-checkpoint.py --shape opt-6.7b --out "$CKPT" --shard-gb 2 --json > "$OUT/ckpt-6.7b.json" 2> "$OUT/ckpt-6.7b.err") &
  CKPT_PID=$!
esac
[ -f runtime/cuda/build/libdejavu_cuda.so ] || DEJAVU_CUDA_ARCH=${DEJAVU_CUDA_ARCH:-sm_90} "$NODE" scripts/build-cuda.mjs --lib-only || exit 1
run() {  # name timeout command...
  local name=$1 t=$2
  shift 2
  echo "== $name: $*"
  local t0=$(date +%s.%N)
  timeout "$t" "$@" > "$OUT/$name.json" 2> "$OUT/$name.err" || { echo "$name failed: $(tail -3 "$OUT/$name.err")"; status=1; }
  echo "   $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f s", b - a}')"
}
case " ${STEPS:-mini bench67 sweep} " in *" mini "*)
  for kv in all selected; do
    for sel in exact grouped; do
      run "eval-mini-$kv-$sel" 120 "$NODE" $CLI eval ppl --device cuda --model examples/opt-mini --bundle $BUNDLE --data $VALID \
        --docs 50 --max-len 512 --kv-policy $kv --mlp-select $sel --json
    done
  done
  run bench-mini-data 120 "$NODE" $CLI bench --device cuda --model examples/opt-mini --bundle $BUNDLE --data $VALID --eval-docs 50 \
    --max-len 512 --json
esac
case " ${STEPS:-mini bench67 sweep} " in *" bench67 "*)
  wait "$CKPT_PID" || { echo "checkpoint failed: $(tail -3 "$OUT/ckpt-6.7b.err")"; status=1; }
  du -sh "$CKPT"
  run bench-6.7b-random 240 "$NODE" $CLI bench --device cuda --model "$CKPT" --prefill-len 2048 --json
  run eval-6.7b-random-train500 240 "$NODE" $CLI eval ppl --device cuda --model "$CKPT" --data $TRAIN500 --docs 500 --max-len 2048 --json
esac
case " ${STEPS:-mini bench67 sweep} " in *" sweep "*)
  run sweep-13b 300 "$NODE" $CLI bench --device cuda --shape opt-13b --sweep --json
esac
"$NODE" -e '
const fs = require("fs"), dir = process.argv[1];
for (const f of fs.readdirSync(dir).filter((f) => f.endsWith(".json")).sort()) {
  let r;
  try { r = JSON.parse(fs.readFileSync(`${dir}/${f}`, "utf8")); } catch { console.log(`${f}: no JSON`); continue; }
  const p = (x) => (x && typeof x.ppl === "number" ? x.ppl.toFixed(4) : "-");
  const q = r.quality ?? r;
  console.log(`${f}: dense ${p(q.dense)} predicted ${p(q.predicted)}` + (r.sparse ? ` | ms dense ${r.dense.ms_per_token} sparse ${r.sparse.ms_per_token}` : "") +
    (r.prefill ? ` | prefill ${r.prefill.tokens_per_s} tok/s, ${r.prefill.fraction_of_gemm_rate} of GEMM` : "") +
    (r.dense && r.dense.tokens_per_s && !r.sparse ? ` | ${r.dense.tokens_per_s} tok/s` : "") + (r.load ? ` | load ${r.load.seconds} s, RssAnon ${(r.load.peak_rss_anon_bytes / 2 ** 30).toFixed(2)} GiB` : ""));
}' "$OUT"
exit $status
