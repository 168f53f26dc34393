#!/usr/bin/env bash
# The whole pipeline on the GPU machine (no Node, no network there), after `bash scripts/device-prep.sh` here, which
# puts the compiled CLI, a pruned node_modules (+ .devnm/train-nm.tar.xz: tfjs, Arrow, ECharts, Dawn) and the Vulkan
# loader's .deb in .devnm/ and the Node binary in .devtools/ (carry both). Each step runs under `timeout` and writes
# one JSON into $OUT (at most 8 files come back: the log and one JSON per step):
#   webgpu  scripts/webgpu-setup.sh check (the Vulkan loader unpacked from .devnm/debs when the machine lacks it; the
#           NVIDIA driver manifest named when it sits outside the loader's folders) -> webgpu-check.json
#   shape   training samples/s for one SHAPE layer (default opt-6.7b: d 4096, ffn 16384, 32 heads) at train's default
#           rank and batch, synthetic data (bench/train-shape.ts), on the backend train picks (on SHAPE_WORKERS threads
#           at once, default 1) and on wasm -> train-shape-SHAPE.json
#   mini    `dejavu demo --device cuda` on examples/opt-mini (collect on the GPU -> train -> export -> eval and bench
#           on the GPU -> report): the summary (every stage's time, ppl dense / predicted, ms/token) -> demo-opt-mini.json
#   big     the same on a random-weight OPT-1.3B-shape checkpoint (scripts/random-opt-checkpoint.py, opt-mini's
#           tokenizer files) at --max-len 2048 on BIG_DOCS c4mini-train documents -> demo-opt-1.3b.json
# Environment: OUT (default ./cuda-out), STEPS (default "webgpu shape mini big"), WORK (default /tmp/dejavu-pipeline),
#   BIG_DOCS (default 200: 173,655 tokens and 37 GB of shards at 2048), BIG_EPOCHS (default 1), BIG_BATCH (default
#   1024) and BIG_TIMEOUT (default 560 s): the big demo in one 10-minute call (423 s on an H100,
#   bench/results/cuda-demo-opt-1.3b-h100.json); TRAIN_WORKERS (train's threads; default: the cores for opt-mini,
#   whose predictors train on wasm; for the big demo 6 on WebGPU, one Dawn device each, which trained the epoch in
#   301 s where one worker took ~15 min; the cores on wasm). SHAPE_WASM=0 skips the wasm comparison of step shape.
#   RESUME=1 (a second call on the same,
#   still warm machine) keeps $WORK: the checkpoint is not rewritten and each demo resumes where it stopped.
# The c4mini files are the tracked examples/c4mini ones (the first 400 train documents, the validation file).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/cuda-out}
WORK=${WORK:-/tmp/dejavu-pipeline}
STEPS=" ${STEPS:-webgpu shape mini big} "
BIG_DOCS=${BIG_DOCS:-200}
BIG_EPOCHS=${BIG_EPOCHS:-1}
BIG_BATCH=${BIG_BATCH:-1024}
SHAPE=${SHAPE:-opt-6.7b}
mkdir -p "$OUT" "$WORK"
exec > >(tee -a "$OUT/pipeline.log") 2>&1
has() { case "$STEPS" in *" $1 "*) return 0 ;; esac; return 1; }

# Node: the machine's, else the carried binary; on PATH for scripts/webgpu-setup.sh.
NODE=$(command -v node || true)
if [ -z "$NODE" ]; then
  mkdir -p /tmp/dejavu-node
  [ -x /tmp/dejavu-node/node ] || { xz -dc .devtools/node-v20.20.2-linux-x64.xz > /tmp/dejavu-node/node && chmod +x /tmp/dejavu-node/node; }
  NODE=/tmp/dejavu-node/node
  export PATH=/tmp/dejavu-node:$PATH
fi
unset NODE_PATH
# tfjs, Arrow, ECharts and Dawn into .devnm/node_modules (beside koffi and the readers that travel unpacked).
if [ -f .devnm/train-nm.tar.xz ] && [ ! -f .devnm/node_modules/@tensorflow/tfjs-core/package.json ]; then
  tar -C .devnm -xJf .devnm/train-nm.tar.xz || { echo "cannot unpack .devnm/train-nm.tar.xz"; exit 1; }
fi
[ -f .devnm/node_modules/@tensorflow/tfjs-core/package.json ] || { echo "no tfjs in .devnm: run \`bash scripts/device-prep.sh\` on the CPU machine"; exit 1; }
CLI=$ROOT/.devnm/dist/cli/main.js
TRAIN400=$ROOT/examples/c4mini/c4mini-train-first400.json.gz
VALID=$ROOT/examples/c4mini/c4mini-validation.00000-of-00001.json.gz
GPU=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)
echo "== $(date -u +%FT%TZ) $GPU; $(nproc) cores; node $("$NODE" --version)"
status=0

# Vulkan for Dawn: the loader (libvulkan.so.1) and the driver manifest (ICD). A machine without the loader gets the
# carried .debs (the loader and libglvnd's GL libraries) unpacked: into / when root (then ldconfig), else under /tmp,
# found through LD_LIBRARY_PATH, which is where train looks too. The NVIDIA manifest of a container runtime sits in
# /usr/local/nvidia, outside the loader's folders: named through VK_DRIVER_FILES (an image's own /usr/share manifest
# may name a library the loader cannot use).
vulkan_setup() {
  local have=""
  if ldconfig -p 2>/dev/null | grep -q 'libvulkan\.so\.1 '; then have=system; fi
  for d in /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/lib; do [ -e "$d/libvulkan.so.1" ] && have=system; done
  if [ -z "$have" ] && ls .devnm/debs/*.deb > /dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v dpkg > /dev/null && command -v ldconfig > /dev/null; then
      # As root: into / (the machine's notes do this with these packages; a fresh machine is discarded after).
      for f in .devnm/debs/*.deb; do dpkg -x "$f" /; done
      ldconfig
      have="carried, unpacked into /"
    else
      local pre=/tmp/dejavu-vulkan
      for f in .devnm/debs/*.deb; do
        if command -v dpkg > /dev/null; then dpkg -x "$f" "$pre"; else (mkdir -p "$pre" && cd "$pre" && ar p "$OLDPWD/$f" data.tar.xz | tar -xJf -); fi
      done
      local lib
      lib=$(dirname "$(find "$pre" -name 'libvulkan.so.1' | head -1)")
      export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
      have="carried ($lib)"
    fi
  fi
  VULKAN_LOADER=${have:-none}
  local std
  std=$(ls /etc/vulkan/icd.d/*.json /usr/share/vulkan/icd.d/*.json /usr/local/share/vulkan/icd.d/*.json 2>/dev/null | head -1)
  # Preferred even where a standard one exists, as train does (train/backend.ts, preferContainerVulkanDriver).
  if [ -z "${VK_DRIVER_FILES:-}${VK_ICD_FILENAMES:-}" ] && [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  fi
  # The driver library the manifest names, and whether its dependencies resolve (a missing one means no adapter).
  local icd=${VK_DRIVER_FILES:-${VK_ICD_FILENAMES:-$std}} so
  ICD_LIB_MISSING=""
  if [ -n "$icd" ] && [ -f "${icd%%:*}" ]; then
    so=$(sed -n 's/.*"library_path" *: *"\([^"]*\)".*/\1/p' "${icd%%:*}" | head -1)
    local path
    path=$(ldconfig -p 2>/dev/null | awk -v n="$so" '$1 == n {print $NF; exit}')
    [ -z "$path" ] && for d in ${LD_LIBRARY_PATH//:/ } /usr/local/nvidia/lib64 /usr/lib/x86_64-linux-gnu; do [ -e "$d/$so" ] && { path=$d/$so; break; }; done
    if [ -n "$path" ]; then ICD_LIB_MISSING=$(ldd "$path" 2>/dev/null | awk '/not found/ {print $1}' | tr '\n' ' ')
    else ICD_LIB_MISSING="$so itself"; fi
  fi
  ICD=${icd:-none}
}

# The CUDA library builds (one nvcc, sm_90) while the WebGPU check and the training bench run.
if has mini || has big; then
  if [ ! -f runtime/cuda/build/libdejavu_cuda.so ]; then
    echo "== build the CUDA library"
    DEJAVU_CUDA_ARCH=${DEJAVU_CUDA_ARCH:-sm_90} timeout 400 "$NODE" scripts/build-cuda.mjs --lib-only || { echo "CUDA build failed"; exit 1; }
  fi
fi &
BUILD_PID=$!

if has webgpu || has shape || has mini || has big; then vulkan_setup; fi

if has webgpu; then
  echo "== webgpu check"
  t0=$(date +%s.%N)
  check=$(NODE_PATH=$ROOT/.devnm/node_modules timeout 60 bash scripts/webgpu-setup.sh check 2>&1)
  rc=$?
  echo "$check"
  WEBGPU_OK=$([ $rc -eq 0 ] && echo true || echo false)
  # The one line train prints about its backend (`--backend auto`), from the same environment.
  line=$(timeout 60 "$NODE" --input-type=module -e "
const { selectBackend, backendLine } = await import('$ROOT/.devnm/dist/train/backend.js');
console.log(backendLine(await selectBackend('auto')));
process.exit(0);" 2>&1)
  echo "train: $line"
  "$NODE" -e '
const [check, rc, loader, icd, missing, ldp, gpu, t0, line] = process.argv.slice(1);
const out = { step: "webgpu-check", date: new Date().toISOString(), device: gpu, command: "scripts/webgpu-setup.sh check",
  ok: rc === "0", exit_code: Number(rc), train_backend_line: line, vulkan_loader: loader, icd, icd_library_missing_deps: missing.trim() || null,
  LD_LIBRARY_PATH: ldp || null, VK_DRIVER_FILES: process.env.VK_DRIVER_FILES ?? null,
  seconds: Math.round((Date.now() / 1000 - Number(t0)) * 10) / 10, output: check.split("\n") };
process.stdout.write(JSON.stringify(out, null, 2) + "\n");' "$check" "$rc" "$VULKAN_LOADER" "$ICD" "$ICD_LIB_MISSING" "${LD_LIBRARY_PATH:-}" "$GPU" "$t0" "$line" \
    > "$OUT/webgpu-check.json"
fi

if has shape; then
  echo "== train-shape $SHAPE (train's default rank and batch) on ${SHAPE_WORKERS:-1} worker(s): the backend train picks, then wasm"
  t=$WORK/shape
  mkdir -p "$t"
  timeout 200 "$NODE" .devnm/dist/bench/train-shape.js --shape "$SHAPE" --backend auto --workers "${SHAPE_WORKERS:-1}" --out "$t/auto.json" > /dev/null || status=1
  if grep -q '"backend": "wasm"' "$t/auto.json" 2> /dev/null; then cp "$t/auto.json" "$t/wasm.json"  # auto was wasm already
  elif [ "${SHAPE_WASM:-1}" = 0 ]; then :  # SHAPE_WASM=0: the GPU backend only
  else timeout 150 "$NODE" .devnm/dist/bench/train-shape.js --shape "$SHAPE" --backend wasm --out "$t/wasm.json" > /dev/null || status=1; fi
  "$NODE" -e '
const fs = require("fs"), [dir, gpu, shape, workers] = process.argv.slice(1);
const read = (f) => { try { return JSON.parse(fs.readFileSync(`${dir}/${f}`, "utf8")); } catch { return null; } };
const auto = read("auto.json"), wasm = read("wasm.json");
const out = { bench: `train-shape-${shape}`, date: new Date().toISOString(), device: gpu,
  command: `scripts/cuda-pipeline.sh (STEPS=shape): node .devnm/dist/bench/train-shape.js --shape ${shape} --backend auto --workers ${workers} | --backend wasm`,
  layer_samples_per_s: { [auto?.backend ?? "auto"]: auto?.layer_samples_per_s ?? null, wasm_one_thread: wasm?.layer_samples_per_s ?? null },
  auto, wasm };
process.stdout.write(JSON.stringify(out, null, 2) + "\n");' "$t" "$GPU" "$SHAPE" "${SHAPE_WORKERS:-1}" > "$OUT/train-shape-$SHAPE.json"
fi

wait $BUILD_PID || { echo "CUDA library build failed"; exit 1; }
# The OPT-1.3B-shape checkpoint (2.6 GB of fp16) is written while the opt-mini demo runs (after the training bench,
# whose wasm figure is one CPU thread's).
CKPT=$WORK/opt-1.3b-random
if has big && ! { [ "${RESUME:-0}" = 1 ] && [ -f "$CKPT/config.json" ]; }; then
  (python3 scripts/random-opt-checkpoint.py --shape opt-1.3b --out "$CKPT" --tokenizer-from examples/opt-mini --jobs 4 --json \
    > "$WORK/ckpt.json" 2> "$WORK/ckpt.err") &
  CKPT_PID=$!
fi

# Train's threads: the cores on wasm, 6 on WebGPU (a Dawn device each; the step is CPU-bound, so the workers overlap:
# 6 trained opt-1.3b's epoch 3x faster than one). opt-mini's training steps are below the size at
# which train takes WebGPU (train/backend.ts WEBGPU_MIN_STEP_GFLOP), so its demo trains on wasm on every core; the
# 1.3B shape's steps are above it, so that demo trains on WebGPU where Dawn finds an adapter.
MINI_WORKERS=${TRAIN_WORKERS:-$(nproc)}
if [ -z "${TRAIN_WORKERS:-}" ]; then
  if [ "${WEBGPU_OK:-}" = true ] || { [ -z "${WEBGPU_OK:-}" ] && NODE_PATH=$ROOT/.devnm/node_modules timeout 60 bash scripts/webgpu-setup.sh check > /dev/null 2>&1; }; then
    TRAIN_WORKERS=6
  else
    TRAIN_WORKERS=$(nproc)
  fi
fi

demo() {  # name timeout workers demo-args...
  local name=$1 t=$2 workers=$3
  shift 3
  echo "== demo $name: dejavu demo $*"
  [ "${RESUME:-0}" = 1 ] || rm -rf "$WORK/$name"  # RESUME=1: the demo resumes an earlier run in $WORK (same machine)
  local t0
  t0=$(date +%s.%N)
  timeout "$t" "$NODE" "$CLI" demo --device cuda --work "$WORK/$name" --workers "$workers" --json "$@" > "$WORK/$name.summary.json"
  local rc=$?
  [ $rc -eq 0 ] || status=1
  "$NODE" -e '
const fs = require("fs"), [file, rc, gpu, t0, args, extra] = process.argv.slice(1);
let s = null;
try { s = JSON.parse(fs.readFileSync(file, "utf8")); } catch {}
const out = { step: "demo", date: new Date().toISOString(), device: gpu, command: `dejavu demo --device cuda ${args}`,
  exit_code: Number(rc), wall_seconds: Math.round((Date.now() / 1000 - Number(t0)) * 10) / 10, ...JSON.parse(extra || "{}") };
if (s) {
  const p = (m) => s.ppl?.[m]?.ppl ?? null;
  out.stages = Object.fromEntries(s.stages.map((x) => [x.stage, x.seconds]));
  out.ppl = { dense: p("dense"), oracle: p("oracle"), predicted: p("predicted") };
  out.ms_per_token = { dense: s.bench?.dense_ms_per_token ?? null, sparse: s.bench?.sparse_ms_per_token ?? null, speedup: s.bench?.speedup ?? null };
  out.summary = s;
}
process.stdout.write(JSON.stringify(out, null, 2) + "\n");' "$WORK/$name.summary.json" "$rc" "$GPU" "$t0" "$*" "${EXTRA:-}" > "$OUT/demo-$name.json"
  echo "   rc $rc, $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f s", b - a}')"
}

if has mini; then
  demo opt-mini 300 "$MINI_WORKERS" --model examples/opt-mini --data "$TRAIN400" --eval-data "$VALID"
fi

if has big; then
  [ -z "${CKPT_PID:-}" ] || wait "$CKPT_PID" || { echo "checkpoint failed: $(tail -3 "$WORK/ckpt.err")"; status=1; }
  du -sh "$CKPT"
  note="opt-1.3b shards cost 223 KB per token (9,288 B x 24 layers, docs/real-models.md): 200 docs x 2048 are 173,655 tokens and 37 GB"
  EXTRA="{\"big_docs\": $BIG_DOCS, \"big_epochs\": $BIG_EPOCHS, \"big_batch\": $BIG_BATCH, \"train_workers\": $TRAIN_WORKERS, \"shards_note\": \"$note\", \"checkpoint\": \"random weights, scripts/random-opt-checkpoint.py --shape opt-1.3b (MLP activity of random weights is ~50%, not sparse: the figures are times, not quality)\"}" \
    demo opt-1.3b "${BIG_TIMEOUT:-560}" "$TRAIN_WORKERS" --model "$CKPT" --data "$TRAIN400" --eval-data "$VALID" --train-docs "$BIG_DOCS" --max-len 2048 \
    --epochs "$BIG_EPOCHS" --batch "$BIG_BATCH"
fi

echo "== summary"
"$NODE" -e '
const fs = require("fs"), dir = process.argv[1];
for (const f of fs.readdirSync(dir).filter((f) => f.endsWith(".json")).sort()) {
  let r;
  try { r = JSON.parse(fs.readFileSync(`${dir}/${f}`, "utf8")); } catch { console.log(`${f}: no JSON`); continue; }
  if (r.step === "webgpu-check") console.log(`${f}: ok ${r.ok}; loader ${r.vulkan_loader}; ${r.output.filter((l) => l.startsWith("adapter")).join(" ")}`);
  else if (r.bench?.startsWith("train-shape-")) console.log(`${f}: layer samples/s ${JSON.stringify(r.layer_samples_per_s)}`);
  else if (r.step === "demo") console.log(`${f}: rc ${r.exit_code}, ${r.wall_seconds} s; stages ${JSON.stringify(r.stages ?? {})}; ppl ${JSON.stringify(r.ppl ?? {})}; ms/token ${JSON.stringify(r.ms_per_token ?? {})}`);
}' "$OUT"
exit $status
