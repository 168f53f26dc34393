# Sourced (from the repository root) by the scripts that run on the GPU machine, which has no Node: NODE is the node on
# PATH, else the binary `scripts/cuda-check.sh prep` carries in .devtools, unpacked once to /tmp/node (under another
# name first, so a node already running from /tmp/node is never overwritten).
NODE=$(command -v node || true)
if [ -z "$NODE" ]; then
  if [ ! -x /tmp/node ]; then
    xz -dc .devtools/node-v20.20.2-linux-x64.xz > /tmp/node.$$ && chmod +x /tmp/node.$$ && mv /tmp/node.$$ /tmp/node ||
      { echo "no node on PATH and no .devtools/node-v20.20.2-linux-x64.xz (run scripts/cuda-check.sh prep, carry .devtools)"; exit 1; }
  fi
  NODE=/tmp/node
fi
