#!/usr/bin/env bash
# Runs geosync's whole test suite: unit tests, integration tests against
# real servers and agents (on Debian's Redis 7.0, then on Valkey 8.1 and
# Redis 8.2: the server-facing tests and the key-spec unit tests on each,
# the others shared between the two, see below), doc tests, the alert
# rules' promtool tests, the Kubernetes manifests validated offline
# (deploy/k8s/validate.sh), and the compose test (deploy/compose-test.sh:
# the Docker image and the three-region compose file started for real,
# through a partition and container kills). The drill (scripts/drill.sh)
# drives the same faults through the same parts; it is left out here for
# the run's time.
#
#   GEOSYNC_SKIP_COMPOSE=1  leave the compose test out (no Docker engine)
#   GEOSYNC_FULL_MATRIX=1   every integration test on every server
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
# On the newer servers: the tests whose subject is the server itself (what
# the stream, the snapshot and the scripts see, every command and type, the
# key specs) run on each; the rest, the agents' own logic through faults,
# is split between them by a hash of the test's name, so each runs on 7.0
# and on one newer server, always the same one (the newer servers' count
# is the number of shares). Tests that need a server feature
# (tests/support/feature.rs) are server tests too: the feature check below
# fails when one was skipped everywhere, which a share on a server without
# the feature would do. GEOSYNC_FULL_MATRIX=1 runs every integration test
# on every server (twice the time of this part).
server_tests='binary(tailer) or binary(convergence) or binary(server_version) or binary(scripts)
  or binary(quarantine) or binary(clean_keyspace) or binary(acl) or binary(filters) or binary(verify)
  or binary(side_connections) or binary(resync_keepalive) or binary(tls) or binary(rollback)
  or binary(reserved_keys) or binary(modules) or (kind(lib) and test(/^source::keyspec::tests::/))
  or (binary(conflicts) and test(=every_type_has_one_winner_never_a_merge))
  or (binary(large_keys) and test(=a_large_hash_with_field_expiries_is_reported))'
newer=0
shares=$(($(wc -l <<<"$servers") - 1))
while read -r name path; do
  [[ $name == redis-7.0 ]] && continue
  newer=$((newer + 1))
  export GEOSYNC_TEST_REDIS_SERVER=$path
  if ! cargo nextest --version >/dev/null 2>&1; then
    echo "==> integration and key-spec tests against $name"
    run --test '*' || status=1
    run --lib source::keyspec::tests:: || status=1
  elif [[ ${GEOSYNC_FULL_MATRIX:-0} == 1 ]]; then
    echo "==> integration and key-spec tests against $name"
    run -E 'kind(test) or (kind(lib) and test(/^source::keyspec::tests::/))' || status=1
  else
    echo "==> server tests against $name"
    run -E "$server_tests" || status=1
    echo "==> agent tests, share $newer of $shares, against $name"
    run -E "kind(test) and not ($server_tests)" --partition "hash:$newer/$shares" || status=1
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
    # The image is the Dockerfile's runtime stage with the binary the
    # rounds above built and tested: compiling the crate again inside
    # Docker would cost the run minutes. `docker build -f deploy/Dockerfile
    # .` (the README) and scripts/drill.sh build the whole Dockerfile.
    # (The first round built it, with the test build's features: a plain
    # `cargo build` would compile the dependencies again.)
    [[ -x target/debug/geosync ]] || cargo build --bin geosync
    GEOSYNC_IMAGE_BINARY=target/debug/geosync bash deploy/compose-test.sh || status=1
  else
    cat "$base_log" >&2
    echo "deploy/base-images.sh failed: the compose test did not run" >&2
    status=1
  fi
fi
exit $status
