#!/usr/bin/env bash
# Build: TypeScript to dist/, the CNI plugin bundled into one file (dist/bin/ambient-cni.mjs) so the runtime's
# exec of the plugin loads one module instead of dozens, the native shim dist/bin/ambient-cni that nodes install, and the
# native HBONE data plane dist/native/libambient-hbone.so.
set -euo pipefail
cd "$(dirname "$0")/.."
npx tsc -p tsconfig.json
npx esbuild cni/src/main.ts --bundle --platform=node --format=esm --target=node20 \
  --outfile=dist/bin/ambient-cni.mjs --log-level=warning \
  --banner:js="import { createRequire as __ambientRequire } from 'node:module'; const require = __ambientRequire(import.meta.url);"
chmod +x dist/bin/ambient-cni.mjs
# The plugin's native front (fast path through the agent, falls back to the Node bundle beside it).
gcc -O2 -Wall -Wextra -Werror -o dist/bin/ambient-cni cni/shim/ambient-cni.c
# The native HBONE data plane (--data-path native): TLS (OpenSSL 3) + HTTP/2 (nghttp2) + byte pumping, loaded with koffi.
mkdir -p dist/native
gcc -O2 -Wall -Wextra -Werror -fPIC -shared -o dist/native/libambient-hbone.so agent/native/hbone-relay.c -lssl -lcrypto -lnghttp2 -lpthread
cp agent/src/identity/istioca.proto dist/agent/src/identity/
