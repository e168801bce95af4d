#!/usr/bin/env bash
# The README's test command: set-up, then unit tests, then end-to-end tests on the netns testbed.
# End-to-end tests need root; AMBIENT_REQUIRE_ROOT=1 turns their skip into a failure. Without arguments, the native
# relay's own scenarios run first under ASan/UBSan (scripts/asan-relay.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export AMBIENT_REQUIRE_ROOT=1
npx tsc -p tsconfig.test.json
if [ $# -eq 0 ]; then bash scripts/asan-relay.sh; fi
npx ava "$@"
