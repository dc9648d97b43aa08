#!/usr/bin/env bash
# Starts deploy/docker-compose.yml for real and proves it converges through
# faults: three regions take conflicting writes; under a steady stream of
# writes in every region, region A is cut off the mesh, region B's Redis
# container is killed and started again, region C's agent container is
# killed and started again; then the mesh heals, the writes stop, and
# `geosync verify` (run in a container on all three region networks) must
# find every region the same, with every write Redis acknowledged present
# in every region. Prints the figures: time to build, to start, to converge.
#
#   bash deploy/compose-test.sh
#
#   COMPOSE_TEST_PROJECT   compose project name (default geosync-compose-test)
#   COMPOSE_TEST_KEEP=1    leave the deployment running afterwards
#   CONVERGE_TIMEOUT       seconds allowed for convergence after healing (180)
#   GEOSYNC_BUILD_PROFILE  the image's cargo profile (release; dev builds faster)
#   GEOSYNC_IMAGE_BINARY   a geosync binary built on this Debian release: the
#                          image is the Dockerfile's runtime stage with it, no
#                          compile in Docker (the test suite passes its own)
set -euo pipefail
cd "$(dirname "$0")/.."
project=${COMPOSE_TEST_PROJECT:-geosync-compose-test}
converge_timeout=${CONVERGE_TIMEOUT:-180}
work=$(mktemp -d)
# shellcheck source=deploy/compose-lib.sh
source deploy/compose-lib.sh
trap 'rc=$?; compose_cleanup $rc "${COMPOSE_TEST_KEEP:-0}"; exit $rc' EXIT

bash deploy/base-images.sh
"${dc[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
compose_up

log "writing conflicts: the same 300 keys, a hash field and a counter in every region at once"
for r in a b c; do
  {
    for i in $(seq 1 300); do echo "SET conflict:$i $r"; done
    echo "HSET profile color $r"
    echo "INCRBY counter $(printf '%d' "'$r")"
  } | rcli "$r" >/dev/null &
done
wait

start_writers live
wait_writes 100

mesh=$(net mesh)
log "cutting region A off the mesh (docker network disconnect)"
docker network disconnect "$mesh" "$(cid geosync-a)"
wait_writes 100

log "killing region B's Redis container, then starting it again"
docker kill "$(cid redis-b)" >/dev/null
docker start "$(cid redis-b)" >/dev/null
wait_healthy 60 redis-b
wait_writes_in b 100

log "killing region C's agent container, then starting it again"
docker kill "$(cid geosync-c)" >/dev/null
wait_writes_in c 100
docker start "$(cid geosync-c)" >/dev/null
wait_writes 100

log "healing: region A rejoins the mesh"
docker network connect --alias geosync-a "$mesh" "$(cid geosync-a)"
wait_writes 100
stop_writers
healed=$(now)
log "writes stopped; acknowledged: A $(acked a), B $(acked b), C $(acked c)"

if ! verify_until_same "$converge_timeout"; then
  log "regions still differ ${converge_timeout} s after healing:"
  cat "$work/verify.out" >&2
  exit 1
fi
converge_s=$(since "$healed")
cat "$work/verify.out"

log "checking that every acknowledged write is in every region"
for region in a b c; do
  n=$(missing_keys_in "$region" | wc -l)
  ((n == 0)) || { log "region $region lacks $n acknowledged writes"; exit 1; }
done
winner=$(rcli a GET conflict:1)
for region in b c; do
  [[ $(rcli "$region" GET conflict:1) == "$winner" ]] || { log "conflict:1 differs"; exit 1; }
done

echo "compose-test: PASS"
echo "  image build:               ${build_s} s"
echo "  start to all healthy:      ${start_s} s"
echo "  writes acknowledged:       A $(acked a), B $(acked b), C $(acked c), none missing in any region"
echo "  heal to every region same: ${converge_s} s"
