#!/usr/bin/env bash
# Benchmark entry point: machine set-up (packages, npm deps, build) through scripts/setup.sh, then scripts/bench.ts.
# Everything runs inside the testbed's own network namespaces; report on stdout, raw numbers in .bench/results.json.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "bench: must run as root (it creates network namespaces, veths and iptables/nftables rules); run it from a root shell" >&2
  exit 1
fi

bash scripts/setup.sh
# One process, tsx as a loader: Ctrl-C reaches the benchmark directly (no npx/tsx wrapper processes relaying signals),
# so the testbeds are torn down before it exits.
exec node --import=tsx scripts/bench.ts "$@"
