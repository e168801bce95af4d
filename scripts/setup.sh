#!/usr/bin/env bash
# Idempotent set-up of a fresh Debian machine for ambient-node: Debian packages, npm deps, build.
# Both README commands run through this; it changes nothing in the root network namespace.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "setup: must run as root (network namespaces, iptables and apt need it)" >&2
  exit 1
fi

PACKAGES=(
  iptables nftables iproute2 ipset conntrack containernetworking-plugins
  tshark ncat socat iperf3 iputils-ping procps util-linux gcc libc6-dev binutils python3-h2 stunnel4 libssl-dev libnghttp2-dev
  clang llvm libbpf-dev libbpf1 bpftool
  dnsmasq-base curl  # the testbed's cluster DNS (dnsmasq-base: the binary only, no system service) and HTTP client
  podman runc mmdebstrap  # the container image (scripts/build-image.sh) and its test: runc, since crun fails on hybrid cgroups
)
# kubectl, to cross-check the fake API server the Kubernetes source is tested against (any kubectl will do: keep one
# that is already installed, e.g. from another package, rather than clash with it).
command -v kubectl >/dev/null || PACKAGES+=(kubernetes-client)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  # tshark asks whether non-root users may capture; answer once, non-interactively.
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The reference CNI plugins must be where the testbed and docs expect them.
test -x /usr/lib/cni/bridge && test -x /usr/lib/cni/host-local || {
  echo "setup: /usr/lib/cni/{bridge,host-local} missing after installing containernetworking-plugins" >&2
  exit 1
}

# npm ci only when the lock file changed since the last install.
stamp=node_modules/.ambient-lock-stamp
if [ ! -f "$stamp" ] || ! cmp -s package-lock.json "$stamp"; then
  npm ci --no-audit --no-fund --loglevel=error
  cp package-lock.json "$stamp"
fi

npm run --silent build
