#!/usr/bin/env bash
# Builds the ambient-node container image (deploy/image/Containerfile) with podman where no base image can be pulled:
# a Debian bookworm base made with mmdebstrap and a Node base from the host's Node 20, both imported once and reused.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  cat <<'USAGE'
usage: scripts/build-image.sh [--tag REF] [--push DEST] [--refresh-bases] [--print-podman]
  --tag REF        image name (default localhost/ambient-node:<package.json version>)
  --push DEST      push the built image, e.g. registry.example.com/mesh/ambient-node:0.1.0
  --refresh-bases  make the Debian and Node bases again (new Debian packages, another host Node)
  --print-podman   print podman's global arguments for this store, one per line, and exit
Env: AMBIENT_IMAGE_STORE (default /var/tmp/ambient-node-image): podman's storage, config and the bases live there;
     the system's own podman storage is never touched. Prints "image=<ref>" and "size=<bytes>" last.
USAGE
}

version=$(node -p 'require("./package.json").version')
tag="localhost/ambient-node:${version}"
push=""
refresh=0
print=0
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) tag="$2"; shift 2 ;;
    --push) push="$2"; shift 2 ;;
    --refresh-bases) refresh=1; shift ;;
    --print-podman) print=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "build-image: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done

store="${AMBIENT_IMAGE_STORE:-/var/tmp/ambient-node-image}"
mkdir -p "$store/storage" "$store/run"
# runc, not crun (crun refuses this machine's hybrid cgroups); cgroupfs and file events: no systemd or journald needed.
cat > "$store/containers.conf" <<'CONF'
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
export CONTAINERS_CONF="$store/containers.conf"
PODMAN_ARGS=(--root "$store/storage" --runroot "$store/run" --storage-driver overlay --cgroup-manager cgroupfs --events-backend file)
if [ "$print" = 1 ]; then
  printf '%s\n' "CONTAINERS_CONF=$CONTAINERS_CONF" "${PODMAN_ARGS[@]}"
  exit 0
fi
pm() { podman "${PODMAN_ARGS[@]}" "$@"; }
for tool in podman runc mmdebstrap; do
  command -v "$tool" >/dev/null || { echo "build-image: $tool missing (scripts/setup.sh installs it)" >&2; exit 1; }
done
step() { echo "build-image: $* ($(date +%T))" >&2; }

# Debian bookworm, minbase, without docs, man pages and locales (as Debian's bookworm-slim image).
debian_ref="localhost/ambient-node-base/debian:bookworm"
if [ "$refresh" = 1 ] || ! pm image exists "$debian_ref"; then
  step "making $debian_ref with mmdebstrap"
  # merged-usr hook: /usr merged without the usrmerge package (which would pull in perl).
  if ! mmdebstrap --variant=minbase --mode=root --format=tar --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    bookworm "$store/debian.tar" > "$store/mmdebstrap.log" 2>&1; then
    tail -20 "$store/mmdebstrap.log" >&2
    echo "build-image: mmdebstrap failed (log: $store/mmdebstrap.log)" >&2
    exit 1
  fi
  pm import --quiet --change 'CMD ["/bin/bash"]' "$store/debian.tar" "$debian_ref" >/dev/null
  rm -f "$store/debian.tar"
fi

# Node: the host's own node and npm, laid out as the official node image has them (/usr/local).
node_bin=$(readlink -f "$(command -v node)")
node_version=$("$node_bin" --version)
case "$node_version" in v20.*) ;; *) echo "build-image: needs Node 20 on the host, found $node_version" >&2; exit 1 ;; esac
npm_dir=$(readlink -f "$(dirname "$node_bin")/../lib/node_modules/npm")
node_ref="localhost/ambient-node-base/nodejs:${node_version}"
if [ "$refresh" = 1 ] || ! pm image exists "$node_ref"; then
  step "making $node_ref from $node_bin"
  stage=$(mktemp -d "$store/nodejs.XXXXXX")
  trap 'rm -rf "$stage"' EXIT
  mkdir -p "$stage/usr/local/bin" "$stage/usr/local/lib/node_modules"
  cp "$node_bin" "$stage/usr/local/bin/node"
  cp -a "$npm_dir" "$stage/usr/local/lib/node_modules/npm"
  tar -C "$stage" -c . | pm import --quiet - "$node_ref" >/dev/null
  rm -rf "$stage"
  trap - EXIT
fi

if [ ! -d node_modules ]; then
  step "npm ci (the build context carries node_modules)"
  npm ci --no-audit --no-fund --loglevel=error
fi

step "building $tag"
build_args=(--network host --layers --ulimit nofile=1024:1024 --ulimit nproc=1024:1024
  -f deploy/image/Containerfile --ignorefile deploy/image/Containerfile.ignore
  --build-arg "DEBIAN_IMAGE=$debian_ref" --build-arg "NODE_IMAGE=$node_ref")
# Host network for the build's apt-get: nothing is created in the root network namespace. The build stage is tagged
# first, so that pruning the previous builds' layers below keeps its toolchain layer (apt-get of the compilers: minutes);
# then the whole image, the build stage from the layer cache.
pm build "${build_args[@]}" --target build -t "localhost/ambient-node-build:cache" . >&2
pm build "${build_args[@]}" -t "$tag" . >&2
# Earlier builds' layers (each source change leaves ~0.5 GB) go; the bases, the toolchain and this build's layers stay.
pm image prune --force >/dev/null
step "built $tag"
if [ -n "$push" ]; then
  step "pushing to $push"
  pm push "$tag" "docker://$push" >&2
fi
echo "image=$tag"
echo "size=$(pm image inspect --format '{{.Size}}' "$tag")"
