#!/usr/bin/env bash
# The README's first command: set up the machine, then run the demo on a simulated 2-node cluster.
# Options are passed through: --redirect-mode iptables|nftables, --keep (leave the cluster up until Ctrl-C).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec npx tsx scripts/demo.ts "$@"
