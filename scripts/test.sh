#!/usr/bin/env bash
# The README's test command: set-up, then unit tests, then end-to-end tests on the netns testbed.
# End-to-end tests need root; AMBIENT_REQUIRE_ROOT=1 turns their skip into a failure. Without arguments, the HBONE
# suites run a second time on the Node data path (agents started with --data-path node; native is the default), and the
# native relay's own scenarios run first under ASan/UBSan (scripts/asan-relay.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export AMBIENT_REQUIRE_ROOT=1
npx tsc -p tsconfig.test.json
if [ $# -eq 0 ]; then bash scripts/asan-relay.sh; fi
npx ava "$@"
if [ $# -eq 0 ]; then
  echo "test: HBONE suites again with --data-path node" >&2
  AMBIENT_DATA_PATH=node npx ava test/netns/hbone.test.ts test/netns/interop.test.ts test/netns/policy.test.ts \
    test/netns/identity.test.ts test/netns/admin.test.ts test/netns/cli.test.ts \
    test/netns/adversarial-hbone.test.ts
fi
