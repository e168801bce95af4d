#!/usr/bin/env bash
# Build: TypeScript to dist/, the CNI plugin bundled into one file (dist/bin/ambient-cni.mjs) so the runtime's
# exec of the plugin loads one module instead of dozens, and the native shim dist/bin/ambient-cni that nodes install.
set -euo pipefail
cd "$(dirname "$0")/.."
npx tsc -p tsconfig.json
npx esbuild cni/src/main.ts --bundle --platform=node --format=esm --target=node20 \
  --outfile=dist/bin/ambient-cni.mjs --log-level=warning \
  --banner:js="import { createRequire as __ambientRequire } from 'node:module'; const require = __ambientRequire(import.meta.url);"
chmod +x dist/bin/ambient-cni.mjs
# The plugin's native front (fast path through the agent, falls back to the Node bundle beside it).
gcc -O2 -Wall -Wextra -Werror -o dist/bin/ambient-cni cni/shim/ambient-cni.c
cp agent/src/identity/istioca.proto dist/agent/src/identity/
# The ebpf redirection mode's tc programs (bpf/*.c), loaded by the agent from dist/bpf/ (build outputs, not committed).
mkdir -p dist/bpf
for src in bpf/*.c; do
  clang -O2 -g -Wall -Werror -target bpf -I"/usr/include/$(uname -m)-linux-gnu" -c "$src" -o "dist/bpf/$(basename "${src%.c}").o"
done
