# Shared by deploy/compose-test.sh and scripts/drill.sh (sourced, not run):
# the compose command for project $project, the containers and networks of
# the three regions, writers that record what Redis acknowledged, and
# `geosync verify` across the three Redis. The caller sets $project and
# $work (a temp dir) before sourcing, and calls compose_cleanup from its
# EXIT trap.

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
docker info >/dev/null 2>&1 || { echo "no Docker engine answers (docker info)" >&2; exit 2; }

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
log() { echo "==> $*" >&2; }

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

# The image from the Dockerfile's runtime stage with a geosync binary
# built outside it ($1, for this Debian release: the test suite's own),
# stripped: no second compile of the crate. Tagged as the compose file's
# image, so `up --no-build` starts it.
prebuilt_image() {
  local bin=$1 ctx=$work/image
  [[ -x $bin ]] || { echo "GEOSYNC_IMAGE_BINARY=$bin is not an executable file" >&2; return 1; }
  log "making the geosync image from the runtime stage and $bin"
  docker build -f deploy/Dockerfile --target runtime -t geosync-runtime:local . || return 1
  mkdir -p "$ctx"
  strip -o "$ctx/geosync" "$bin" || return 1
  printf 'FROM geosync-runtime:local\nCOPY geosync /usr/local/bin/geosync\n' >"$ctx/Dockerfile"
  docker build -t geosync:local "$ctx"
}

# Builds the image (or makes it with prebuilt_image when
# GEOSYNC_IMAGE_BINARY names a binary) and starts the three regions; sets
# build_s and start_s.
compose_up() {
  local t
  t=$(now)
  if [[ -n ${GEOSYNC_IMAGE_BINARY:-} ]]; then
    prebuilt_image "$GEOSYNC_IMAGE_BINARY" >"$work/build.log" 2>&1 || { tail -40 "$work/build.log" >&2; return 1; }
  else
    log "building the geosync image"
    "${dc[@]}" build >"$work/build.log" 2>&1 || { tail -40 "$work/build.log" >&2; return 1; }
  fi
  build_s=$(since "$t")
  t=$(now)
  log "starting three regions"
  "${dc[@]}" up -d --no-build >"$work/up.log" 2>&1 || { cat "$work/up.log" >&2; return 1; }
  wait_healthy 120 redis-a redis-b redis-c geosync-a geosync-b geosync-c
  start_s=$(since "$t")
  log "all six containers healthy after ${start_s} s"
}

compose_cleanup() {
  local rc=$1 keep=$2
  touch "$work/stop"
  wait 2>/dev/null || true
  if [[ $rc != 0 ]]; then
    log "failed; the agents' last log lines:"
    "${dc[@]}" logs --no-color --tail=30 geosync-a geosync-b geosync-c >&2 || true
  fi
  docker rm -f "$project-verify" >/dev/null 2>&1 || true
  if [[ $keep != 1 ]]; then
    "${dc[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}

# A writer per region: batches of 50 new keys (prefixed $1) through one
# redis-cli each, until $work/stop exists. The keys Redis acknowledged (OK)
# are appended to $work/acked-<region>.
writer() {
  local r=$1 prefix=$2 n=0 i
  while [[ ! -e $work/stop ]]; do
    : >"$work/batch-$r"
    for i in $(seq "$n" $((n + 49))); do echo "$prefix:$r:$i" >>"$work/batch-$r"; done
    sed 's/.*/SET & 1/' "$work/batch-$r" | rcli "$r" 2>/dev/null >"$work/out-$r" || true
    paste -d' ' "$work/batch-$r" "$work/out-$r" | awk '$2 == "OK" { print $1 }' >>"$work/acked-$r"
    n=$((n + 50))
  done
}
start_writers() { # key prefix
  rm -f "$work/stop"
  for r in a b c; do writer "$r" "$1" & done
}
stop_writers() {
  touch "$work/stop"
  wait
}
acked() { cat "$work"/acked-"$1" 2>/dev/null | wc -l; }
# Waits until region $1's writer has had $2 more acknowledged writes.
wait_writes_in() {
  local want=$(($(acked "$1") + $2)) deadline=$(($(date +%s) + 120))
  until (($(acked "$1") >= want)); do
    (($(date +%s) <= deadline)) || { log "writer $1 stalled at $(acked "$1")"; return 1; }
    sleep 0.2
  done
}
# Waits until every region's writer has had $1 more acknowledged writes.
wait_writes() {
  wait_writes_in a "$1" && wait_writes_in b "$1" && wait_writes_in c "$1"
}

# Runs `geosync verify` across the three Redis (in a container on all three
# region networks) until it finds them the same or $1 seconds pass; its
# output is in $work/verify.out. Returns 1 when they still differ.
verify_until_same() {
  local deadline=$(($(date +%s) + $1)) v=$project-verify
  docker rm -f "$v" >/dev/null 2>&1 || true
  docker create --name "$v" --network "$(net region-a)" --entrypoint geosync geosync:local \
    verify --redis redis://redis-a:6379 --redis redis://redis-b:6379 --redis redis://redis-c:6379 \
    --settle-ms 500 --rechecks 2 --max-listed 10 >/dev/null
  docker network connect "$(net region-b)" "$v"
  docker network connect "$(net region-c)" "$v"
  until docker start -a "$v" >"$work/verify.out" 2>&1; do
    (($(date +%s) <= deadline)) || return 1
    sleep 1
  done
}

# The acknowledged writes (keys in $work/acked-*) missing from region $1,
# one per line.
missing_keys_in() {
  local r
  for r in a b c; do
    [[ -s $work/acked-$r ]] || continue
    sed 's/.*/EXISTS &/' "$work/acked-$r" | rcli "$1" | paste -d' ' "$work/acked-$r" - | awk '$2 == "0" { print $1 }'
  done
}
