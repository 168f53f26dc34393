#!/usr/bin/env bash
# Prepares .devnm/ (git-ignored) for the whole CLI on the GPU machine, which has no Node and no network:
# `dejavu collect`, `train`, `export`, `eval`, `bench`, `demo` and `report`, run by scripts/cuda-pipeline.sh.
#
#   bash scripts/device-prep.sh
#
# 1. `scripts/cuda-check.sh prep`: the compiled CLI in .devnm/dist (runtime/cuda/tsconfig.device.json compiles
#    cli/main.ts, the worker scripts and bench/train-shape.ts), koffi, the tokenizer and C4 readers, opt-mini's
#    reference logits, and the Node binary in .devtools/.
# 2. .devnm/train-nm.tar.xz: what the rest of the CLI needs, pruned to the files Node loads, xz-compressed (the
#    64 MiB transfer limit); scripts/cuda-pipeline.sh unpacks it into .devnm/node_modules on the machine:
#      @tensorflow/tfjs-core, -backend-cpu, -backend-wasm (+ its .wasm files), -backend-webgpu: the Node entry bundles;
#      apache-arrow: its ES modules (Arrow.node.mjs and what it imports), with flatbuffers, tslib, json-with-bigint;
#      echarts: its self-contained ES module bundle (the report's charts), as the package's only entry;
#      webgpu: index.js and the linux-x64 dawn.node only (21.5 MB; stripped, 4.5 MB in the archive);
#      seedrandom, long, node-fetch (+ whatwg-url, tr46, webidl-conversions): tfjs-core's dependencies.
# 3. .devnm/debs/*.deb (apt-get download, ~370 kB): the Vulkan loader Dawn needs and the GL vendor-neutral libraries
#    (libglvnd) the driver's Vulkan library sits beside; the GPU machine may have the NVIDIA driver's Vulkan part but
#    not these. cuda-pipeline.sh unpacks them (into / as root, as the machine's notes do, else under /tmp).
# 4. A check here: the compiled CLI run from a copy of .devnm in a temp folder, with the archive unpacked there and
#    neither the repository's node_modules nor NODE_PATH in reach (`dejavu demo --help`, the tfjs backends, Arrow,
#    echarts, Dawn's module), so a missing transitive dependency fails here, not on the GPU machine. CHECK=0 skips it;
#    CHECK=demo runs a small `dejavu demo` (collect -> train -> export -> eval -> bench -> report on the CPU) too.
# Prints the bytes that travel (tracked files + .devtools + .devnm) against the 64 MiB limit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
NM=$ROOT/node_modules

[ "${BASE:-1}" = 0 ] || bash scripts/cuda-check.sh prep  # BASE=0: already run

STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
S=$STAGE/node_modules
mkdir -p "$S"
# take PKG FILE...: the package's package.json and licence files plus the named files/folders (relative to it).
take() {
  local pkg=$1
  shift
  mkdir -p "$S/$pkg"
  cp "$NM/$pkg/package.json" "$S/$pkg/"
  for f in "$NM/$pkg"/LICENSE* "$NM/$pkg"/NOTICE*; do [ -f "$f" ] && cp "$f" "$S/$pkg/"; done
  for f in "$@"; do
    mkdir -p "$S/$pkg/$(dirname "$f")"
    cp -r "$NM/$pkg/$f" "$S/$pkg/$f"
  done
}
# tfjs: "main" is the Node (CommonJS) bundle of each package; nothing else of dist/ is loaded under Node.
take @tensorflow/tfjs-core dist/tf-core.node.js
take @tensorflow/tfjs-backend-cpu dist/tf-backend-cpu.node.js
take @tensorflow/tfjs-backend-wasm dist/tf-backend-wasm.node.js dist/tfjs-backend-wasm.wasm dist/tfjs-backend-wasm-simd.wasm \
  dist/tfjs-backend-wasm-threaded-simd.wasm
take @tensorflow/tfjs-backend-webgpu dist/tf-backend-webgpu.node.js
take seedrandom index.js seedrandom.js lib
take long src dist/long.js
take node-fetch lib/index.js lib/index.mjs
take whatwg-url lib
take tr46 index.js lib
take webidl-conversions lib
# apache-arrow: `import` resolves to Arrow.node.mjs (package exports), which imports the other .mjs files.
mkdir -p "$S/apache-arrow"
(cd "$NM/apache-arrow" && find . -name '*.mjs' ! -path './bin/*' -print0 | tar --null -T - -cf -) | tar -C "$S/apache-arrow" -xf -
take apache-arrow
take flatbuffers js
take tslib modules tslib.js tslib.es6.mjs
take json-with-bigint json-with-bigint.js json-with-bigint.cjs
# echarts: the ES module bundle (zrender inside) as the package's one entry, instead of index.js and its ~1,000 files.
mkdir -p "$S/echarts/dist"
cp "$NM/echarts/dist/echarts.esm.min.mjs" "$S/echarts/dist/"
cp "$NM/echarts/LICENSE" "$NM/echarts/NOTICE" "$S/echarts/" 2>/dev/null || true
node -e '
const p = require(process.argv[1]);
const out = { name: p.name, version: p.version, license: p.license, type: "module",
  main: "dist/echarts.esm.min.mjs", exports: { ".": "./dist/echarts.esm.min.mjs" } };
require("fs").writeFileSync(process.argv[2], JSON.stringify(out, null, 2) + "\n");' "$NM/echarts/package.json" "$S/echarts/package.json"
# webgpu (Dawn for Node): index.js loads dist/<platform>-<arch>/dawn.node; the GPU machine is linux-x64. Its own
# dependencies (debug, @webgpu/types) are not loaded by index.js.
take webgpu index.js dist/linux-x64/dawn.node
strip "$S/webgpu/dist/linux-x64/dawn.node" 2>/dev/null || true  # symbols only (the N-API entry is a dynamic symbol)
rm -f .devnm/train-nm.tar.xz
tar -C "$STAGE" -cf - node_modules | xz -T0 -9 > .devnm/train-nm.tar.xz

# The Vulkan loader and the GL vendor-neutral libraries the NVIDIA driver's Vulkan library (libGLX_nvidia.so.0) is
# loaded beside, as .debs (apt's amd64 package lists in a private folder; nothing installed here): the set the GPU
# machine's notes give for Vulkan there.
DEBS="libvulkan1 libglvnd0 libglx0 libgl1 libegl1 libopengl0 libgles2"
missing=""
for p in $DEBS; do ls .devnm/debs/${p}_*.deb > /dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  mkdir -p .devnm/debs /tmp/dejavu-apt-amd64/partial
  o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/dejavu-apt-amd64'
  # shellcheck disable=SC2086
  { apt-get $o update -qq > /dev/null 2>&1 && (cd .devnm/debs && apt-get $o download $missing > /dev/null 2>&1); } ||
    echo "device-prep: apt-get download$missing failed: WebGPU on the GPU machine then needs them there"
fi

if [ "${CHECK:-1}" != 0 ]; then
  T=$(mktemp -d)
  cp -r .devnm "$T/.devnm"
  ln -s "$ROOT/examples" "$T/examples"
  tar -C "$T/.devnm" -xJf .devnm/train-nm.tar.xz
  (
    cd "$T"
    unset NODE_PATH
    node .devnm/dist/cli/main.js demo --help > /dev/null
    # Every package the CLI imports, resolved from the copied dist/ as the CLI resolves them, and the wasm backend
    # initialised (its .wasm files found).
    cat > .devnm/dist/deps-check.mjs <<'EOF2'
const mods = ['@tensorflow/tfjs-core', '@tensorflow/tfjs-backend-cpu', '@tensorflow/tfjs-backend-wasm',
  '@tensorflow/tfjs-backend-webgpu', 'apache-arrow', 'echarts', 'webgpu', 'koffi', '@huggingface/tokenizers',
  'hyparquet', 'hyparquet-compressors', 'commander', 'cli-progress'];
for (const m of mods) {
  const url = import.meta.resolve(m);
  if (!url.startsWith(new URL('../', import.meta.url).href)) throw new Error(`${m} resolved outside the copy: ${url}`);
  await import(m);
}
const { selectBackend } = await import('./train/backend.js');
const b = await selectBackend('wasm');
const x = b.tf.ones([4, 4]);
if ((await b.tf.matMul(x, x).data())[0] !== 4) throw new Error('wasm matMul');
console.log(`device-prep: ${mods.length} packages load from the copy; ${b.description}`);
process.exit(0);
EOF2
    node .devnm/dist/deps-check.mjs
  )
  if [ "${CHECK:-1}" = demo ]; then
    (cd "$T" && unset NODE_PATH && node .devnm/dist/cli/main.js demo --work "$T/demo" --train-docs 60 --eval-docs 4 --max-len 96 \
      --epochs 1 --rank 32 --json --quiet > "$T/demo.json" && node -e 'const s = require(process.argv[1]);
        console.log("device-prep: demo from the copy: " + s.stages.map((x) => `${x.stage} ${x.seconds} s`).join(", "))' "$T/demo.json")
  fi
  rm -rf "$T"
fi

# What travels: the working tree's tracked files (as they are now) + .devtools + .devnm, against 64 MiB; and what
# scripts/cuda-pipeline.sh does not read, which can be moved aside for its call.
tracked=$(git ls-files -z | { xargs -0 stat -c %s 2>/dev/null || true; } | awk '{s += $1} END {print s + 0}')
devtools=$(du -sb .devtools | cut -f1)
devnm=$(du -sb .devnm | cut -f1)
total=$((tracked + devtools + devnm))
echo "device-prep: travels tracked $tracked + .devtools $devtools + .devnm $devnm = $total bytes (limit 67108864;" \
  "$((67108864 - total)) left)"
aside=""
for p in examples/opt-mini-bundle examples/opt-mini-bundle-att-in .devnm/c4mini-train-first500.json.gz .devnm/opt-mini .devnm/bundle .devnm/bundle-grouped; do
  [ -e "$p" ] || [ -L "$p" ] && aside="$aside $p"
done
if [ -n "$aside" ]; then
  # shellcheck disable=SC2086
  bytes=$(du -sbc $aside | tail -1 | cut -f1)
  echo "device-prep: cuda-pipeline.sh does not read$aside ($bytes bytes): moved aside, $((total - bytes)) bytes travel" \
    "($((67108864 - total + bytes)) left)"
fi
