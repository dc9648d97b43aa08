#!/usr/bin/env bash
# Runs geosync's whole test suite: unit tests, integration tests against
# real redis-server processes and agents, and doc tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-deps.sh
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi
cargo test --workspace --doc
