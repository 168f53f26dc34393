#!/usr/bin/env bash
# The committed CPU run of `dejavu export --ppl-budget` (bench/results/budget-export-opt-mini.json) repeated with the
# calibration measured on the GPU (`--device cuda`), so the two searches can be compared:
#   scripts/cuda-budget.sh prep   here, after `scripts/cuda-check.sh prep` (which builds .devnm/dist and the pruned
#                                 node_modules): writes .devnm/budget/ with what the CPU run used (the att_in example
#                                 bundle's predictors as train output folders, all and MLP only, are written by
#                                 `run` on the GPU machine from examples/opt-mini-bundle-att-in), documents 1000-1023
#                                 of c4mini-train as calibration text, and a shards record naming the predictors'
#                                 200 training documents (the first 200 of examples/c4mini/c4mini-train-first400, the
#                                 same as c4mini-train's) so the overlap check runs as it did on the CPU.
#   scripts/cuda-budget.sh run    on the GPU machine (carry .devtools and .devnm): the JSON's commands with
#                                 --device cuda on every export and eval ppl: the MLP-k99 bundle measured, the 1%
#                                 budget under KV all + exact, KV selected and the grouped selection, each chosen
#                                 bundle's held-out perplexity (100 validation docs x 128), and bench --device cuda of
#                                 the KV all budget bundle and the k99 bundle (for the CPU's bench --device cpu).
# Differences from the CPU commands: opt-mini is examples/opt-mini (the fixture's weights, byte for byte); --workers 1
# is dropped (CPU threads; refused on cuda); the grouped runs give --mlp-select grouped without --mlp-groups 126
# (the GPU takes G from its kernel grid and records it; the CPU's 126 was that G).
# Output: $OUT (default ./cuda-out/budget): one JSON per command, the chosen bundles under bundles/, and
# budget-export-opt-mini-cuda.json, which holds the commands, wall seconds, every JSON and a GPU-vs-CPU table.
set -uo pipefail
cd "$(dirname "$0")/.."
cmd=${1:-run}
B=.devnm/budget

make_preds() {  # the att_in example bundle's predictors as train output folders (all, MLP only); $1: node
  "$1" --input-type=module - <<'EOF'
import { mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
const dist = resolve('.devnm/dist');
const { loadOptCheckpoint } = await import(`${dist}/checkpoints/opt-checkpoint.js`);
const { writeSafetensors } = await import(`${dist}/checkpoints/safetensors.js`);
const { loadBundle } = await import(`${dist}/export/bundle.js`);
const ckpt = await loadOptCheckpoint('examples/opt-mini', { quiet: true });
const b = loadBundle('examples/opt-mini-bundle-att-in', ckpt);
for (const [name, targets] of [['pred-att-in', ['mlp', 'attn']], ['pred-mlp-only', ['mlp']]]) {
  const dir = join('.devnm/budget', name);
  mkdirSync(dir, { recursive: true });
  const layers = [];
  for (const p of [...b.mlp, ...b.attn]) {
    if (!p || !targets.includes(p.target)) continue;
    writeSafetensors(join(dir, `layer_${String(p.layer).padStart(2, '0')}.${p.target}.safetensors`),
      { w1: { dtype: 'F32', shape: [p.rank, p.w1f.length / p.rank], data: p.w1f }, w2: { dtype: 'F32', shape: [p.out, p.rank], data: p.w2f } },
      { target: p.target, layer: String(p.layer), input: p.input, lookahead: String(p.lookahead), rank: String(p.rank),
        model_fingerprint: ckpt.fingerprint, input_norm: p.input_norm, ...(p.target === 'attn' ? { k_label: String(p.metrics.k_label) } : {}) });
    layers.push({ layer: p.layer, target: p.target, ...p.metrics });
  }
  writeFileSync(join(dir, 'metrics.json'), JSON.stringify({ model_fingerprint: ckpt.fingerprint,
    args: { ...b.manifest.source.train_args, shards: '.devnm/budget/shards200' }, complete: true, layers,
    note: `the predictors of examples/opt-mini-bundle-att-in (fp16) as a train output folder${targets.length === 1 ? ' (MLP only: attention dense)' : ''}` }, null, 1));
  console.log(`${dir}: ${layers.length} predictors`);
}
EOF
}

if [ "$cmd" = prep ]; then
  set -e
  FIX=${FIXTURES:-../shared/fixtures}
  [ -d .devnm/dist ] || { echo "run scripts/cuda-check.sh prep first (.devnm/dist)"; exit 1; }
  rm -rf $B && mkdir -p $B/shards200
  zcat "$FIX/c4mini/c4mini-train.00000-of-00001.json.gz" | sed -n 1001,1024p | gzip -n > $B/calib-train-1000-1023.json.gz
  TRAIN=examples/c4mini/c4mini-train-first400.json.gz
  printf '{"complete":true,"args":{"data":[{"path":"%s","bytes":%s}],"docs":200,"sample":null,"seed":null,"max_len":512}}\n' \
    $TRAIN "$(stat -c %s $TRAIN)" > $B/shards200/manifest.json
  du -sh $B
  exit 0
fi

OUT=${OUT:-$PWD/cuda-out/budget}
mkdir -p "$OUT/bundles"
exec > >(tee -a "$OUT/budget.log") 2>&1
. scripts/device-node.sh
[ -f $B/calib-train-1000-1023.json.gz ] || { echo "no $B: run scripts/cuda-budget.sh prep on the CPU machine (and carry .devnm)"; exit 1; }
# Written here rather than carried (11 MB of fp32 against the 64 MiB the GPU machine's tree may hold).
[ -d $B/pred-att-in ] || make_preds "$NODE" || exit 1
[ -f runtime/cuda/build/libdejavu_cuda.so ] || DEJAVU_CUDA_ARCH=${DEJAVU_CUDA_ARCH:-sm_90} "$NODE" scripts/build-cuda.mjs --lib-only || exit 1
echo "== $(date -u +%FT%TZ) $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader)"
CLI=".devnm/dist/cli/main.js"
M=examples/opt-mini
CAL="--calib-data $B/calib-train-1000-1023.json.gz --calib-docs 20 --calib-max-len 256"
VAL="--data examples/c4mini/c4mini-validation.00000-of-00001.json.gz --docs 100 --max-len 128"
status=0
: > "$OUT/commands.txt"
run() {  # name command...: stdout to $OUT/name.json, stderr to name.err, the command and its wall seconds recorded
  local name=$1
  shift
  echo "== $name: $*"
  local t0=$(date +%s.%N)
  timeout 150 "$@" > "$OUT/$name.json" 2> "$OUT/$name.err" || { echo "$name failed: $(tail -3 "$OUT/$name.err")"; status=1; }
  local s=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
  echo "   $s s"
  printf '%s\t%s\t%s\n' "$name" "$s" "$*" >> "$OUT/commands.txt"
}
run export-mlp-k99 "$NODE" $CLI export --predictors $B/pred-mlp-only --model $M --out $OUT/bundles/b-mlp-k99 --recall 0.99 $CAL --device cuda --json
run export-budget1-all "$NODE" $CLI export --predictors $B/pred-att-in --model $M --out $OUT/bundles/b-budget1-all --ppl-budget 1% $CAL --device cuda --json
run eval-budget1-all "$NODE" $CLI eval ppl --model $M --bundle $OUT/bundles/b-budget1-all $VAL --modes dense,predicted --device cuda --json
run export-budget1-grouped "$NODE" $CLI export --predictors $B/pred-att-in --model $M --out $OUT/bundles/b-budget1-grouped --ppl-budget 1% $CAL --mlp-select grouped --device cuda --json
run eval-mlp-k99 "$NODE" $CLI eval ppl --model $M --bundle $OUT/bundles/b-mlp-k99 $VAL --modes predicted --device cuda --json
run bench-budget1-all "$NODE" $CLI bench --device cuda --model $M --bundle $OUT/bundles/b-budget1-all --json
run bench-mlp-k99 "$NODE" $CLI bench --device cuda --model $M --bundle $OUT/bundles/b-mlp-k99 --json
run eval-budget1-grouped "$NODE" $CLI eval ppl --model $M --bundle $OUT/bundles/b-budget1-grouped $VAL --modes predicted --mlp-select grouped --device cuda --json
run export-budget1-selected "$NODE" $CLI export --predictors $B/pred-att-in --model $M --out $OUT/bundles/b-budget1-selected --ppl-budget 1% $CAL --kv-policy selected --device cuda --json
run eval-budget1-selected "$NODE" $CLI eval ppl --model $M --bundle $OUT/bundles/b-budget1-selected $VAL --modes predicted --kv-policy selected --device cuda --json

# One JSON as the CPU run's file, with the GPU's figures beside the CPU's.
"$NODE" - "$OUT" <<'EOF'
const fs = require('fs');
const out = process.argv[2];
const cpu = JSON.parse(fs.readFileSync('bench/results/budget-export-opt-mini.json', 'utf8'));
const lines = fs.readFileSync(`${out}/commands.txt`, 'utf8').trim().split('\n').map((l) => l.split('\t'));
const files = {};
for (const [name] of lines) {
  try { files[`${name}.json`] = JSON.parse(fs.readFileSync(`${out}/${name}.json`, 'utf8')); } catch { files[`${name}.json`] = null; }
}
const q = (f, name) => f[`export-${name}.json`]?.quality;
const ppl = (f, name, mode) => f[`eval-${name}.json`]?.[mode]?.ppl;
const compare = {};
for (const name of ['budget1-all', 'budget1-selected', 'budget1-grouped', 'mlp-k99']) {
  const row = (f) => {
    const x = q(f, name);
    return x && {
      device: x.device ?? { type: 'cpu' }, calibration_dense: x.dense_ppl, calibration_predicted: x.predicted_ppl, calibration_delta: x.delta,
      mlp_k: x.layers.map((L) => L.mlp_k), heads_k: x.layers.map((L) => L.heads_k), mlp_groups: x.mlp_groups,
      bytes_per_token: x.bytes_per_token.bundle, evaluations: x.search?.evaluations ?? null, seconds: x.seconds,
      heldout_predicted: ppl(f, name, 'predicted') ?? null,
    };
  };
  compare[name] = { gpu: row(files), cpu: row(cpu.files) };
}
const gpu = files['export-budget1-all.json']?.quality?.device?.name ?? null;
const r = {
  study: 'export to a quality budget (dejavu export --ppl-budget), opt-mini, calibration measured on the GPU (--device cuda); the CPU run is bench/results/budget-export-opt-mini.json',
  date: new Date().toISOString().slice(0, 10),
  gpu,
  heldout_dense_gpu: files['eval-budget1-all.json']?.dense?.ppl ?? null,
  heldout_dense_cpu: cpu.files['eval-budget1-all.json']?.dense?.ppl ?? null,
  compare,
  commands: lines.map(([, , c]) => c),
  wall_seconds: Object.fromEntries(lines.map(([n, s]) => [n, Number(s)])),
  files,
};
fs.writeFileSync(`${out}/budget-export-opt-mini-cuda.json`, JSON.stringify(r, null, 1) + '\n');
const f = (v, d = 4) => (typeof v === 'number' ? v.toFixed(d) : '-');
console.log(`held-out dense: gpu ${f(r.heldout_dense_gpu)} cpu ${f(r.heldout_dense_cpu)}`);
for (const [name, { gpu: g, cpu: c }] of Object.entries(compare)) {
  for (const [dev, x] of [['gpu', g], ['cpu', c]]) {
    if (!x) { console.log(`${name.padEnd(17)} ${dev}: -`); continue; }
    console.log(`${name.padEnd(17)} ${dev}: calib ${f(x.calibration_dense, 3)} -> ${f(x.calibration_predicted, 3)} (${f(100 * x.calibration_delta, 2)}%), ` +
      `held out ${f(x.heldout_predicted)}, ${(x.bytes_per_token / 1e6).toFixed(3)} MB/token, mlp k ${x.mlp_k.map((k) => k ?? 'd').join(',')}, heads k ${x.heads_k.map((k) => k ?? 'd').join(',')}` +
      `${x.mlp_groups > 1 ? `, G ${x.mlp_groups}` : ''}, ${x.evaluations ?? '-'} evals, ${x.seconds} s`);
  }
}
EOF
exit $status
