#!/usr/bin/env bash
# WebGPU training on a Linux GPU machine (docs/training.md, "Backends"). Dawn (npm `webgpu`) drives the GPU through
# Vulkan: it needs the Vulkan loader (libvulkan.so.1) and the GPU driver's Vulkan ICD (a JSON file naming the driver).
#
#   scripts/webgpu-setup.sh check     what is there and what is missing; then asks Dawn for an adapter.
#                                     Exit 0 when a hardware adapter answers, 1 otherwise.
#   scripts/webgpu-setup.sh install   the loader when missing: `apt-get install libvulkan1` as root; otherwise
#                                     `apt-get download libvulkan1` unpacked under ~/.local/dejavu-vulkan, with the
#                                     LD_LIBRARY_PATH line to use. Then runs `check`.
#
# After that, `dejavu train --backend auto` (or `webgpu`) trains on the GPU and prints the backend on one line.
set -uo pipefail
cd "$(dirname "$0")/.."
cmd=${1:-check}
PREFIX=${DEJAVU_VULKAN_PREFIX:-$HOME/.local/dejavu-vulkan}

find_loader() {  # prints the folder holding libvulkan.so.1, if the dynamic loader can find one
  local d IFS=$' \t\n:'
  for d in ${LD_LIBRARY_PATH:-}; do [ -e "$d/libvulkan.so.1" ] && { echo "$d"; return 0; }; done
  if command -v ldconfig >/dev/null 2>&1; then
    local p
    p=$(ldconfig -p 2>/dev/null | awk '/libvulkan\.so\.1 /{print $NF; exit}')
    [ -n "$p" ] && { dirname "$p"; return 0; }
  fi
  for d in /usr/lib/x86_64-linux-gnu /usr/lib/aarch64-linux-gnu /usr/lib64 /usr/lib /usr/local/lib; do
    [ -e "$d/libvulkan.so.1" ] && { echo "$d"; return 0; }
  done
  return 1
}

find_icds() {  # Vulkan driver manifests: the variables the loader reads, then its standard folders
  local f IFS=$' \t\n:'
  for f in ${VK_DRIVER_FILES:-} ${VK_ICD_FILENAMES:-}; do [ -f "$f" ] && echo "$f"; done
  for f in /etc/vulkan/icd.d/*.json /usr/share/vulkan/icd.d/*.json /usr/local/share/vulkan/icd.d/*.json \
      /usr/local/nvidia/share/vulkan/icd.d/*.json; do
    [ -f "$f" ] && echo "$f"
  done
}

check() {
  local ok=0 loader icds
  if loader=$(find_loader); then
    echo "loader: libvulkan.so.1 in $loader"
  else
    echo "loader: libvulkan.so.1 not found (Debian/Ubuntu package libvulkan1; \`$0 install\`)"
    ok=1
  fi
  icds=$(find_icds | sort -u)
  if [ -n "$icds" ]; then
    echo "drivers (Vulkan ICD files):"
    echo "$icds" | sed 's/^/  /'
    # A driver manifest outside the loader's standard folders is found only when named.
    # An image's own /usr/share manifest may name a library the loader cannot use (seen: libGLX_nvidia.so.0, "Found
    # no drivers!"); the container runtime's matches the running driver. Used here as train uses it.
    local nonstd
    nonstd=$(echo "$icds" | grep -E '^/usr/local/nvidia/' | head -1)
    if [ -n "$nonstd" ] && [ -z "${VK_DRIVER_FILES:-}${VK_ICD_FILENAMES:-}" ]; then
      echo "  the NVIDIA container manifest is outside the loader's folders; train names it (export VK_DRIVER_FILES=$nonstd)"
      export VK_DRIVER_FILES=$nonstd
    fi
  else
    echo "drivers: no Vulkan ICD file found (the GPU driver's Vulkan part: for NVIDIA, nvidia_icd.json from the driver package)"
    ok=1
  fi
  [ $ok -eq 0 ] || return 1
  # Ask Dawn itself: the adapter train would get (SwiftShader / llvmpipe are software: train's auto skips them).
  node -e '
const { create, globals } = require("webgpu");
Object.assign(globalThis, globals);
create([]).requestAdapter({ powerPreference: "high-performance" }).then((a) => {
  if (!a) { console.log("adapter: none (Dawn found no GPU through Vulkan)"); process.exit(1); }
  const i = a.info || {};
  const soft = /swiftshader|llvmpipe/i.test(`${i.vendor} ${i.architecture} ${i.device} ${i.description}`) || a.isFallbackAdapter;
  console.log(`adapter: ${i.vendor || "?"} ${i.description || i.device || ""}${soft ? " (software: train --backend auto will not use it)" : ""}`);
  process.exit(soft ? 1 : 0);
}, (e) => { console.log(`adapter: request failed (${e.message})`); process.exit(1); });
' 2>&1
}

install() {
  if find_loader >/dev/null; then
    echo "the Vulkan loader is already installed"
  elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libvulkan1 || { echo "apt-get install libvulkan1 failed"; exit 1; }
  elif command -v apt-get >/dev/null 2>&1; then
    local tmp
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download libvulkan1 >/dev/null) || { echo "apt-get download libvulkan1 failed (no network or no apt lists?)"; rm -rf "$tmp"; exit 1; }
    mkdir -p "$PREFIX" && dpkg -x "$tmp"/libvulkan1_*.deb "$PREFIX"
    rm -rf "$tmp"
    local lib
    lib=$(dirname "$(find "$PREFIX" -name 'libvulkan.so.1' | head -1)")
    echo "libvulkan.so.1 unpacked under $lib; add it to the loader's path (e.g. in your shell profile):"
    echo "  export LD_LIBRARY_PATH=$lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
    export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  else
    echo "no apt-get here: install your distribution's Vulkan loader package (libvulkan1 / vulkan-loader)"
    exit 1
  fi
  check
}

case "$cmd" in
  check) check ;;
  install) install ;;
  *) echo "usage: $0 check|install"; exit 2 ;;
esac
