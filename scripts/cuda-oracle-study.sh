#!/usr/bin/env bash
# The oracle-heads study of bench/results/oracle-heads-opt-mini.json on the GPU (eval ppl --device cuda, the oracle's
# decode of engine.cu dj_oracle_nll), on the GPU machine after `scripts/cuda-check.sh prep` here (carry .devtools and
# .devnm): opt-mini, MLP dense (--mlp-k 1536 = ffn), heads by their attention-output norm at round(F x 12) in layers
# 1-5 (the att_in bundle's attention layers, as the CPU study's bundle), F = 0.75 / 0.5 / 0.2 x KV policy all /
# selected; first 20 c4mini validation documents, max-len 256 (</s> + 255 tokens); the CPU study's flags.
# One JSON per run in $OUT (default ./cuda-out/oracle-study), then a table against the CPU and numpy figures.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/cuda-out/oracle-study}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/oracle-study.log") 2>&1
. scripts/device-node.sh
CLI=".devnm/dist/cli/main.js"
VALID=examples/c4mini/c4mini-validation.00000-of-00001.json.gz
BUNDLE=examples/opt-mini-bundle-att-in
status=0
echo "== $(date -u +%FT%TZ) $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader)"
[ -f runtime/cuda/build/libdejavu_cuda.so ] || DEJAVU_CUDA_ARCH=${DEJAVU_CUDA_ARCH:-sm_90} "$NODE" scripts/build-cuda.mjs --lib-only || exit 1
for f in 0.75 0.5 0.2; do
  for kv in all selected; do
    name="oracle-heads-$f-$kv"
    echo "== $name"
    t0=$(date +%s.%N)
    timeout 300 "$NODE" $CLI eval ppl --device cuda --model examples/opt-mini --bundle $BUNDLE --data $VALID --docs 20 \
      --max-len 256 --modes dense,oracle --heads-frac $f --mlp-k 1536 --kv-policy $kv --workers 1 --json \
      > "$OUT/$name.json" 2> "$OUT/$name.err" || { echo "$name failed: $(tail -3 "$OUT/$name.err")"; status=1; }
    echo "   $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f s", b - a}')"
  done
done
"$NODE" -e '
const fs = require("fs"), [dir, ref] = process.argv.slice(1);
const cpu = JSON.parse(fs.readFileSync(ref, "utf8"));
console.log(`dense: CPU ${cpu.dense_ppl.cpu} (numpy ${cpu.dense_ppl.numpy}), ${cpu.tokens} tokens`);
console.log("heads  kv        GPU oracle  (vs dense)   CPU oracle   numpy      GPU vs CPU");
for (const run of cpu.runs) {
  const f = `${dir}/oracle-heads-${run.heads_frac}-${run.kv_policy}.json`;
  let r;
  try { r = JSON.parse(fs.readFileSync(f, "utf8")); } catch { console.log(`${run.heads_frac} ${run.kv_policy}: no JSON`); continue; }
  const g = r.oracle.ppl, d = r.dense.ppl;
  console.log(`${String(run.heads_frac).padEnd(6)} ${run.kv_policy.padEnd(9)} ${g.toFixed(4).padStart(10)}  (+${(100 * (g / d - 1)).toFixed(2)}%)` +
    `  ${run.cpu.ppl.toFixed(4).padStart(10)}  ${run.numpy.ppl.toFixed(4).padStart(9)}  ${(100 * (g / run.cpu.ppl - 1)).toFixed(3).padStart(8)}%` +
    `   (GPU dense ${d.toFixed(4)}, ${r.oracle.tokens} tokens, heads k ${r.heads_k_per_layer.join(",")})`);
}' "$OUT" bench/results/oracle-heads-opt-mini.json || status=1
exit $status
