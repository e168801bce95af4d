#!/usr/bin/env bash
# Build: TypeScript to dist/, the CNI plugin bundled into one file (dist/bin/ambient-cni.mjs) so the runtime's
# exec of the plugin loads one module instead of dozens, the native shim dist/bin/ambient-cni that nodes install,
# the plugin as a standalone executable (dist/bin/ambient-cni-standalone, the shim's fallback on nodes), the eBPF
# programs (dist/bpf/) and the native HBONE data plane dist/native/libambient-hbone.so.
set -euo pipefail
cd "$(dirname "$0")/.."
npx tsc -p tsconfig.json
npx esbuild cni/src/main.ts --bundle --platform=node --format=esm --target=node20 \
  --outfile=dist/bin/ambient-cni.mjs --log-level=warning \
  --banner:js="import { createRequire as __ambientRequire } from 'node:module'; const require = __ambientRequire(import.meta.url);"
chmod +x dist/bin/ambient-cni.mjs
# The plugin's native front (fast path through the agent, falls back to ambient-cni-standalone or the Node bundle beside it).
# The constants it shares with the plugin come from a header generated from cni/src/shim-constants.ts (no copy in C).
mkdir -p dist/shim
node --input-type=module -e "import { writeFileSync } from 'node:fs';
  import { renderShimHeader } from './dist/cni/src/shim-constants.js';
  writeFileSync('dist/shim/ambient-cni-constants.h', renderShimHeader());"
gcc -O2 -Wall -Wextra -Werror -I dist/shim -o dist/bin/ambient-cni cni/shim/ambient-cni.c
# The native HBONE data plane (the only HBONE data path; agent/native/hbone-relay/): TLS (OpenSSL 3) + HTTP/2 (nghttp2) + byte pumping, loaded with koffi.
mkdir -p dist/native
gcc -O2 -Wall -Wextra -Werror -fPIC -shared -o dist/native/libambient-hbone.so agent/native/hbone-relay/*.c -lssl -lcrypto -lnghttp2 -lpthread
cp agent/src/identity/istioca.proto dist/agent/src/identity/
# The plugin as a Node single executable application (dist/bin/ambient-cni-standalone; hosts without Node run it, and
# the native front falls back to it): a CommonJS bundle that must hold no native addon (a SEA blob cannot carry one),
# turned into a blob by node --experimental-sea-config and injected with postject into a stripped copy of this node.
mkdir -p dist/sea
npx esbuild cni/src/standalone.ts --bundle --platform=node --format=cjs --target=node20 \
  --define:import.meta.url=undefined --metafile=dist/sea/ambient-cni.meta.json \
  --outfile=dist/sea/ambient-cni.cjs --log-level=warning
node -e '
  const inputs = Object.keys(require("./dist/sea/ambient-cni.meta.json").inputs);
  const native = inputs.filter((p) => /koffi|\.node$/.test(p));
  if (native.length) { console.error("build: the plugin bundle must not hold native addons:", native); process.exit(1); }'
printf '{"main":"dist/sea/ambient-cni.cjs","output":"dist/sea/ambient-cni.blob","disableExperimentalSEAWarning":true,"useCodeCache":true}\n' \
  > dist/sea/sea-config.json
if ! out=$(node --experimental-sea-config dist/sea/sea-config.json 2>&1); then
  echo "$out" >&2
  exit 1
fi
sea=dist/sea/ambient-cni-standalone.tmp
cp "$(node -p process.execPath)" "$sea"
chmod u+w "$sea"
strip --strip-all "$sea"
# postject's LIEF prints harmless warnings about the stripped section names: shown only when it fails.
if ! out=$(npx postject "$sea" NODE_SEA_BLOB dist/sea/ambient-cni.blob \
  --sentinel-fuse NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2 2>&1); then
  echo "$out" >&2
  exit 1
fi
mv "$sea" dist/bin/ambient-cni-standalone
# The ebpf redirection mode's tc programs (bpf/*.c), loaded by the agent from dist/bpf/ (build outputs, not committed).
mkdir -p dist/bpf
for src in bpf/*.c; do
  clang -O2 -g -Wall -Werror -target bpf -I"/usr/include/$(uname -m)-linux-gnu" -c "$src" -o "dist/bpf/$(basename "${src%.c}").o"
done
