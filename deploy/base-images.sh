#!/usr/bin/env bash
# Builds, on this machine, the base images deploy/Dockerfile and
# deploy/docker-compose.yml name, for Docker engines that cannot pull them
# (no registry): a Debian bookworm root made with debootstrap, imported as
#   debian:bookworm-slim  the runtime base (with openssl and ca-certificates)
#   redis:7.0             the same root, whose redis-server the regions run
#   rust:1-bookworm       a build root with this machine's Rust toolchain
# The Dockerfile and the compose file stay as they are for users who pull
# those images instead. Images that exist already are left alone
# (BASE_IMAGES_REBUILD=1 makes them again).
#
#   bash deploy/base-images.sh
set -euo pipefail
cd "$(dirname "$0")/.."
need() { docker image inspect "$1" >/dev/null 2>&1 && [[ ${BASE_IMAGES_REBUILD:-0} != 1 ]]; }
if need debian:bookworm-slim && need redis:7.0 && need rust:1-bookworm; then
  echo "==> base images present" >&2
  exit 0
fi
SUDO=""
[[ $(id -u) -eq 0 ]] || SUDO=sudo
if ! command -v debootstrap >/dev/null; then
  echo "==> installing debootstrap" >&2
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq debootstrap >/dev/null
fi
work=$(mktemp -d)
trap '$SUDO rm -rf "$work"' EXIT
# The build root trusts what this machine trusts (a proxy's CA included),
# so that cargo inside `docker build` reaches the crate registry as the
# host does.
host_ca=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}

echo "==> debootstrap: runtime root (redis-server, openssl, ca-certificates)" >&2
$SUDO debootstrap --variant=minbase --include=redis-server,openssl,ca-certificates \
  bookworm "$work/run" >"$work/run.log" 2>&1 || { cat "$work/run.log" >&2; exit 1; }
$SUDO tar -C "$work/run" -c . | docker import --change 'CMD ["bash"]' - debian:bookworm-slim >/dev/null
$SUDO tar -C "$work/run" -c . | docker import --change 'CMD ["redis-server"]' - redis:7.0 >/dev/null

echo "==> debootstrap: build root (build-essential) with this machine's Rust toolchain" >&2
$SUDO debootstrap --variant=minbase --include=build-essential,ca-certificates \
  bookworm "$work/build" >"$work/build.log" 2>&1 || { cat "$work/build.log" >&2; exit 1; }
sysroot=$(rustc --print sysroot)
$SUDO mkdir -p "$work/build/usr/local/rust"
$SUDO cp -a "$sysroot/bin" "$sysroot/lib" "$work/build/usr/local/rust/"
$SUDO rm -rf "$work/build/usr/local/rust/lib/rustlib/src"
[[ -f $host_ca ]] && $SUDO cp "$host_ca" "$work/build/etc/ssl/certs/ca-certificates.crt"
$SUDO tar -C "$work/build" -c . | docker import \
  --change 'ENV PATH=/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV CARGO_HOME=/usr/local/cargo' --change 'CMD ["bash"]' - rust:1-bookworm >/dev/null
docker images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E '^(debian:bookworm-slim|redis:7.0|rust:1-bookworm) ' >&2
