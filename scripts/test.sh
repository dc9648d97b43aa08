#!/usr/bin/env bash
# Runs geosync's whole test suite: unit tests, integration tests against
# real servers and agents (on Debian's Redis 7.0, then again on Valkey 8.1
# and Redis 8.2), and doc tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-deps.sh
servers=$(bash scripts/servers.sh)

run() { # extra nextest/cargo-test arguments...
  if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast "$@"
  else
    cargo test --workspace --no-fail-fast "$@"
  fi
}

status=0
echo "==> all tests (redis-7.0)"
run || status=1
while read -r name path; do
  [[ $name == redis-7.0 ]] && continue
  echo "==> integration tests against $name"
  if cargo nextest --version >/dev/null 2>&1; then
    GEOSYNC_TEST_REDIS_SERVER=$path run -E 'kind(test)' || status=1
  else
    GEOSYNC_TEST_REDIS_SERVER=$path run --test '*' || status=1
  fi
done <<<"$servers"
echo "==> doc tests"
cargo test --workspace --doc || status=1
exit $status
