#!/usr/bin/env bash
# Installs what geosync's demo and tests need and is missing: redis-server
# (Debian's package). Rust itself is expected to be installed.
set -euo pipefail

need_redis=0
command -v redis-server >/dev/null 2>&1 || need_redis=1

if (( need_redis )); then
  echo "==> installing redis-server" >&2
  SUDO=""
  if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq >/dev/null
  $SUDO apt-get install -y -qq redis-server >/dev/null
  # The package may start a system service on 6379; the demo and the tests
  # start their own servers and do not need it.
fi

command -v cargo >/dev/null 2>&1 || { echo "cargo is required (install Rust)" >&2; exit 1; }
