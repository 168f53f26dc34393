#!/usr/bin/env bash
# Same-card A/B of two builds of the CUDA engine: an earlier commit (A) against the working tree (B).
#
#   scripts/cuda-compare.sh prep REV   (here) puts REV's runtime/cuda sources and its compiled device JS into
#                                      .baseline/ (git-ignored; carry it with .devnm and .devtools)
#   scripts/cuda-compare.sh run        (on the GPU machine, after `scripts/cuda-check.sh run` built B) builds A's
#                                      library as A's own script did (sm_90; into runtime/cuda/build/baseline/, kept
#                                      between calls on a warm machine), then times the bench of SHAPE (default
#                                      opt-13b) for each MODES entry (default "exact grouped"), A and B alternately,
#                                      ROUNDS times (default 2); PORTABLE=1 adds B on the portable path.
# Writes $OUT/compare.json: every run's bench JSON (device, date, command) and a summary of B / A per mode: dense and
# sparse under each KV policy (kv_policies; in benches before it, sparse was KV selected and sparse.kv_all_* KV all).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BASE=$ROOT/.baseline
cmd=${1:-run}

if [ "$cmd" = prep ]; then
  set -e
  rev=${2:?usage: scripts/cuda-compare.sh prep REV}
  wt=$(mktemp -d)/wt
  git worktree add -q --detach "$wt" "$rev"
  ln -s "$ROOT/node_modules" "$wt/node_modules"
  (cd "$wt" && npx tsc -p runtime/cuda/tsconfig.device.json)
  rm -rf "$BASE" && mkdir -p "$BASE/runtime"
  cp -r "$wt/runtime/cuda" "$BASE/runtime/cuda"
  rm -rf "$BASE/runtime/cuda/build"
  cp -r "$wt/.devnm/dist" "$BASE/dist"
  echo "$(git rev-parse "$rev")" > "$BASE/REV"
  git worktree remove --force "$wt"
  du -sh "$BASE"
  exit 0
fi

OUT=${OUT:-$ROOT/cuda-out}
mkdir -p "$OUT"
NODE=$(command -v node || true)
if [ -z "$NODE" ]; then
  [ -x /tmp/node ] || { xz -dc .devtools/node-v20.20.2-linux-x64.xz > /tmp/node && chmod +x /tmp/node; }
  NODE=/tmp/node
fi
SHAPE=${SHAPE:-opt-13b}
RUNS=$(mktemp -d)
ALIB=$ROOT/runtime/cuda/build/baseline/libdejavu_cuda.so
if [ ! -f "$ALIB" ] || [ "$(cat "$ALIB.rev" 2>/dev/null)" != "$(cat "$BASE/REV")" ]; then
  echo "== build A ($(cat "$BASE/REV" 2>/dev/null))"
  mkdir -p "$(dirname "$ALIB")"
  nvcc -O3 -arch=sm_90 -std=c++17 -lineinfo -shared -Xcompiler -fPIC -o "$ALIB" "$BASE/runtime/cuda/engine.cu" || exit 1
  cp "$BASE/REV" "$ALIB.rev"
fi
ln -sfn "$ROOT/.devnm/node_modules" "$BASE/node_modules"
bench() {  # side mode round [extra args]
  local side=$1 mode=$2 r=$3
  shift 3
  local js=$ROOT/.devnm/dist/runtime/cuda/bench-main.js
  [ "$side" = A ] && js=$BASE/dist/runtime/cuda/bench-main.js
  local args=(--shape "$SHAPE" --mlp-select "$mode" --json "$@")
  DEJAVU_CUDA_LIB=$([ "$side" = A ] && echo "$ALIB") timeout 150 "$NODE" "$js" "${args[@]}" --out "$RUNS/$side-$mode-$r.json" > /dev/null 2> "$RUNS/$side-$mode-$r.err" ||
    { echo "run $side $mode $r failed: $(tail -3 "$RUNS/$side-$mode-$r.err")"; return 1; }
  echo "$side $mode $r: $("$NODE" -e 'const r=require(process.argv[1]);const kv=(p)=>r.kv_policies?r.kv_policies[p].ms_per_token:p==="all"?r.sparse.kv_all_ms_per_token:r.sparse.ms_per_token;console.log(`dense ${r.dense.ms_per_token} ms, sparse (KV ${r.kv_policy}) ${r.sparse.ms_per_token} ms (${r.sparse_vs_dense_floor} of the dense floor, share ${r.sparse.predictor_ms_share}), KV all ${kv("all")} ms, KV selected ${kv("selected")} ms`)' "$RUNS/$side-$mode-$r.json")"
  printf '%s\n' "node ${js#$ROOT/} ${args[*]}" > "$RUNS/$side-$mode-$r.cmd"
}
status=0
for r in $(seq 1 "${ROUNDS:-2}"); do
  for mode in ${MODES:-exact grouped}; do
    bench A "$mode" "$r" || status=1
    bench B "$mode" "$r" || status=1
  done
done
[ -n "${PORTABLE:-}" ] && { bench B exact portable --path portable || status=1; }
"$NODE" -e '
const fs = require("fs"), dir = process.argv[1], out = process.argv[2], rev = process.argv[3];
const runs = fs.readdirSync(dir).filter((f) => f.endsWith(".json")).sort().map((f) => {
  const [side, mode, round] = f.replace(/\.json$/, "").split("-");
  return { side, mode, round, command: fs.readFileSync(`${dir}/${f.replace(/json$/, "cmd")}`, "utf8").trim(),
           result: JSON.parse(fs.readFileSync(`${dir}/${f}`, "utf8")) };
});
const med = (xs) => { const s = [...xs].sort((a, b) => a - b); return s[Math.floor(s.length / 2)]; };
// Per KV policy: kv_policies (present bench), else sparse (policy selected) and sparse.kv_all_* (benches before it).
const kvMs = (x, p) => (x.kv_policies ? x.kv_policies[p].ms_per_token : p === "all" ? x.sparse.kv_all_ms_per_token : x.sparse.ms_per_token);
const summary = {};
for (const mode of [...new Set(runs.map((r) => r.mode))]) {
  const pick = (side, f) => runs.filter((r) => r.side === side && r.mode === mode && r.round !== "portable").map((r) => f(r.result));
  const row = {};
  for (const [k, f] of [["dense_ms", (x) => x.dense.ms_per_token], ["sparse_kv_selected_ms", (x) => kvMs(x, "selected")],
                        ["sparse_kv_all_ms", (x) => kvMs(x, "all")]]) {
    const a = pick("A", f), b = pick("B", f);
    row[k] = { A: a, B: b, B_over_A: a.length && b.length ? Math.round((med(b) / med(a)) * 10000) / 10000 : null };
  }
  summary[mode] = row;
}
const portable = runs.find((r) => r.round === "portable");
if (portable) summary.portable_exact = { dense_ms: portable.result.dense.ms_per_token, sparse_kv_selected_ms: kvMs(portable.result, "selected"), sparse_kv_all_ms: kvMs(portable.result, "all") };
fs.writeFileSync(out, JSON.stringify({ baseline_rev: rev, device: runs[0]?.result.device, date: new Date().toISOString(), summary, runs }, null, 1) + "\n");
console.log(JSON.stringify(summary));
' "$RUNS" "$OUT/compare.json" "$(cat "$BASE/REV" 2>/dev/null)"
exit $status
