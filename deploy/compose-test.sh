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
#   COMPOSE_TEST_PROJECT  compose project name (default geosync-compose-test)
#   COMPOSE_TEST_KEEP=1   leave the deployment running afterwards
#   CONVERGE_TIMEOUT      seconds allowed for convergence after healing (180)
set -euo pipefail
cd "$(dirname "$0")/.."
project=${COMPOSE_TEST_PROJECT:-geosync-compose-test}
converge_timeout=${CONVERGE_TIMEOUT:-180}

if docker compose version >/dev/null 2>&1; then
  dc=(docker compose)
elif command -v docker-compose >/dev/null; then
  dc=(docker-compose)
else
  echo "==> installing docker-compose" >&2
  SUDO=""
  [[ $(id -u) -eq 0 ]] || SUDO=sudo
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq docker-compose >/dev/null
  dc=(docker-compose)
fi
dc+=(-p "$project" -f deploy/docker-compose.yml)
docker info >/dev/null 2>&1 || { echo "compose-test: no Docker engine answers (docker info)" >&2; exit 2; }

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
log() { echo "==> $*" >&2; }

work=$(mktemp -d)
verifier="$project-verify"
cleanup() {
  local rc=$?
  touch "$work/stop"
  wait 2>/dev/null || true
  if [[ $rc != 0 ]]; then
    log "failed; the agents' last log lines:"
    "${dc[@]}" logs --no-color --tail=30 geosync-a geosync-b geosync-c >&2 || true
  fi
  docker rm -f "$verifier" >/dev/null 2>&1 || true
  if [[ ${COMPOSE_TEST_KEEP:-0} != 1 ]]; then
    "${dc[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
  exit $rc
}
trap cleanup EXIT

cid() { "${dc[@]}" ps -q "$1"; }
net() { docker network ls -q --filter "label=com.docker.compose.project=$project" --filter "label=com.docker.compose.network=$1"; }
# Runs redis-cli in a region's Redis container, commands on stdin.
rcli() { docker exec -i "$(cid "redis-$1")" redis-cli "${@:2}"; }
health() { docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$1" 2>/dev/null || echo gone; }
# Waits (up to $1 s) until every named service's container is healthy.
wait_healthy() {
  local deadline=$(($(date +%s) + $1)) s
  shift
  for s in "$@"; do
    until [[ $(health "$(cid "$s")") == healthy ]]; do
      if (($(date +%s) > deadline)); then
        log "$s is not healthy: $(health "$(cid "$s")")"
        return 1
      fi
      sleep 0.5
    done
  done
}

bash deploy/base-images.sh
"${dc[@]}" down -v --remove-orphans >/dev/null 2>&1 || true

t=$(now)
log "building the geosync image"
"${dc[@]}" build >"$work/build.log" 2>&1 || { tail -40 "$work/build.log" >&2; exit 1; }
build_s=$(since "$t")

t=$(now)
log "starting three regions"
"${dc[@]}" up -d >"$work/up.log" 2>&1 || { cat "$work/up.log" >&2; exit 1; }
wait_healthy 120 redis-a redis-b redis-c geosync-a geosync-b geosync-c
start_s=$(since "$t")
log "all six containers healthy after ${start_s} s"

log "writing conflicts: the same 300 keys, a hash field and a counter in every region at once"
for r in a b c; do
  {
    for i in $(seq 1 300); do echo "SET conflict:$i $r"; done
    echo "HSET profile color $r"
    echo "INCRBY counter $(printf '%d' "'$r")"
  } | rcli "$r" >/dev/null &
done
wait

# A writer per region: batches of 50 new keys through one redis-cli each,
# until $work/stop exists. The keys Redis acknowledged (OK) are listed in
# $work/acked-<region>.
writer() {
  local r=$1 n=0 i
  while [[ ! -e $work/stop ]]; do
    : >"$work/batch-$r"
    for i in $(seq "$n" $((n + 49))); do echo "live:$r:$i" >>"$work/batch-$r"; done
    sed 's/.*/SET & 1/' "$work/batch-$r" | rcli "$r" 2>/dev/null >"$work/out-$r" || true
    paste -d' ' "$work/batch-$r" "$work/out-$r" | awk '$2 == "OK" { print $1 }' >>"$work/acked-$r"
    n=$((n + 50))
  done
}
acked() { cat "$work"/acked-"$1" 2>/dev/null | wc -l; }
# Waits until every region's writer has had $1 more acknowledged writes.
wait_writes() {
  local want_a=$(($(acked a) + $1)) want_b=$(($(acked b) + $1)) want_c=$(($(acked c) + $1))
  local deadline=$(($(date +%s) + 120))
  until (($(acked a) >= want_a && $(acked b) >= want_b && $(acked c) >= want_c)); do
    (($(date +%s) <= deadline)) || { log "writers stalled: $(acked a) $(acked b) $(acked c)"; return 1; }
    sleep 0.2
  done
}
wait_writes_in() { # region count
  local want=$(($(acked "$1") + $2)) deadline=$(($(date +%s) + 120))
  until (($(acked "$1") >= want)); do
    (($(date +%s) <= deadline)) || { log "writer $1 stalled at $(acked "$1")"; return 1; }
    sleep 0.2
  done
}
for r in a b c; do writer "$r" & done
wait_writes 200

mesh=$(net mesh)
log "cutting region A off the mesh (docker network disconnect)"
docker network disconnect "$mesh" "$(cid geosync-a)"
wait_writes 200

log "killing region B's Redis container, then starting it again"
docker kill "$(cid redis-b)" >/dev/null
docker start "$(cid redis-b)" >/dev/null
wait_healthy 60 redis-b
wait_writes_in b 200

log "killing region C's agent container, then starting it again"
docker kill "$(cid geosync-c)" >/dev/null
wait_writes_in c 200
docker start "$(cid geosync-c)" >/dev/null
wait_writes 200

log "healing: region A rejoins the mesh"
docker network connect --alias geosync-a "$mesh" "$(cid geosync-a)"
wait_writes 200
touch "$work/stop"
wait
healed=$(now)
log "writes stopped; acknowledged: A $(acked a), B $(acked b), C $(acked c)"

# geosync verify in a container that sits on all three region networks.
docker rm -f "$verifier" >/dev/null 2>&1 || true
docker create --name "$verifier" --network "$(net region-a)" --entrypoint geosync geosync:local \
  verify --redis redis://redis-a:6379 --redis redis://redis-b:6379 --redis redis://redis-c:6379 \
  --settle-ms 500 --rechecks 2 --max-listed 10 >/dev/null
docker network connect "$(net region-b)" "$verifier"
docker network connect "$(net region-c)" "$verifier"
deadline=$(($(date +%s) + converge_timeout))
until docker start -a "$verifier" >"$work/verify.out" 2>&1; do
  if (($(date +%s) > deadline)); then
    log "regions still differ ${converge_timeout} s after healing:"
    cat "$work/verify.out" >&2
    exit 1
  fi
  sleep 1
done
converge_s=$(since "$healed")
cat "$work/verify.out"

log "checking that every acknowledged write is in every region"
missing=0
for r in a b c; do
  for region in a b c; do
    n=$(sed 's/.*/EXISTS &/' "$work/acked-$r" | rcli "$region" | grep -c '^0$' || true)
    if ((n > 0)); then
      log "region $region lacks $n of region $r's acknowledged writes"
      missing=$((missing + n))
    fi
  done
done
((missing == 0)) || exit 1
winner=$(rcli a GET conflict:1)
for region in b c; do
  [[ $(rcli "$region" GET conflict:1) == "$winner" ]] || { log "conflict:1 differs"; exit 1; }
done

echo "compose-test: PASS"
echo "  image build:               ${build_s} s"
echo "  start to all healthy:      ${start_s} s"
echo "  writes acknowledged:       A $(acked a), B $(acked b), C $(acked c), none missing in any region"
echo "  heal to every region same: ${converge_s} s"
