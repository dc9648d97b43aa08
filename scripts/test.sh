#!/usr/bin/env bash
# Runs geosync's whole test suite: unit tests, integration tests against
# real servers and agents (on Debian's Redis 7.0, then again on Valkey 8.1
# and Redis 8.2, with the key-spec unit tests that check the tables against
# the live server), doc tests, the alert rules' promtool tests, the
# Kubernetes manifests validated offline
# (deploy/k8s/validate.sh), and the compose test (deploy/compose-test.sh:
# the Docker image and the three-region compose file started for real,
# through a partition and container kills). The drill (scripts/drill.sh)
# drives the same faults through the same parts; it is left out here for
# the run's time.
#
#   GEOSYNC_SKIP_COMPOSE=1  leave the compose test out (no Docker engine)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-deps.sh
servers=$(bash scripts/servers.sh)

# The compose test needs base images (deploy/base-images.sh: debootstrap,
# minutes of downloading); they are made in the background meanwhile.
compose=1
[[ ${GEOSYNC_SKIP_COMPOSE:-0} == 1 ]] && compose=0
base_log=$(mktemp)
if ((compose)); then
  if ! docker info >/dev/null 2>&1; then
    echo "no Docker engine answers (docker info): the compose test cannot run; GEOSYNC_SKIP_COMPOSE=1 leaves it out" >&2
    exit 1
  fi
  bash deploy/base-images.sh >"$base_log" 2>&1 &
  base_pid=$!
fi

run() { # extra nextest/cargo-test arguments...
  if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast "$@"
  else
    cargo test --workspace --no-fail-fast "$@"
  fi
}

# Tests that need a server feature (hash field expiry) pass without checking
# anything on servers that lack it; each records here whether it ran or was
# skipped (tests/support/feature.rs), and the run fails below when one was
# skipped on every server.
feature_log=$(mktemp -d)
trap 'rm -rf "$feature_log" "$base_log"' EXIT
export GEOSYNC_TEST_FEATURE_LOG=$feature_log

status=0
echo "==> all tests (redis-7.0)"
run || status=1
while read -r name path; do
  [[ $name == redis-7.0 ]] && continue
  echo "==> integration and key-spec tests against $name"
  export GEOSYNC_TEST_REDIS_SERVER=$path
  if cargo nextest --version >/dev/null 2>&1; then
    run -E 'kind(test) or (kind(lib) and test(/^source::keyspec::tests::/))' || status=1
  else
    run --test '*' || status=1
    run --lib source::keyspec::tests:: || status=1
  fi
  unset GEOSYNC_TEST_REDIS_SERVER
done <<<"$servers"
echo "==> doc tests"
cargo test --workspace --doc || status=1

bash scripts/feature-check.sh "$feature_log" || status=1

echo "==> alert rules (promtool test rules)"
promtool test rules deploy/prometheus/alerts.test.yml || status=1

echo "==> Kubernetes manifests (deploy/k8s/validate.sh)"
bash deploy/k8s/validate.sh || status=1

if ((compose)); then
  echo "==> compose test (deploy/compose-test.sh)"
  if wait "$base_pid"; then
    # The dev profile: the image builds in a fraction of the release time.
    GEOSYNC_BUILD_PROFILE=dev bash deploy/compose-test.sh || status=1
  else
    cat "$base_log" >&2
    echo "deploy/base-images.sh failed: the compose test did not run" >&2
    status=1
  fi
fi
exit $status
