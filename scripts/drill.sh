#!/usr/bin/env bash
# A disaster-recovery drill against the three-region compose deployment
# (deploy/docker-compose.yml): failure scenarios run on purpose, under a
# steady stream of writes in every region, each followed by
# `geosync verify` across the three Redis. It prints a report per scenario:
# writes acknowledged, acknowledged writes lost (RPO), and the time from the
# fault's end until every region holds the same data (RTO). Exit 1 when a
# scenario lost a write or the regions did not agree.
#
#   bash scripts/drill.sh                 # every scenario
#   bash scripts/drill.sh isolate-region kill-primary
#
# Scenarios:
#   isolate-region   region A's agent cut off the mesh (docker network disconnect)
#   kill-primary     region B's Redis container killed, started again
#   kill-agent       region C's agent container killed, started again
#   combined         region A cut off and region B's Redis killed at once
#
#   DRILL_PROJECT          compose project (default geosync-drill); it is
#                          started if it is not running, and removed at the
#                          end unless DRILL_KEEP=1 (or it was running before)
#   DRILL_WRITES           writes per region during each outage (500)
#   DRILL_RTO_LIMIT        seconds allowed for the regions to agree (180)
#   GEOSYNC_BUILD_PROFILE  the image's cargo profile (release; dev builds faster)
#   GEOSYNC_IMAGE_BINARY   a geosync binary built on this Debian release: the
#                          image is the Dockerfile's runtime stage with it, no
#                          compile in Docker (the test suite passes its own)
set -euo pipefail
cd "$(dirname "$0")/.."
project=${DRILL_PROJECT:-geosync-drill}
outage=${DRILL_WRITES:-500}
rto_limit=${DRILL_RTO_LIMIT:-180}
all=(isolate-region kill-primary kill-agent combined)
scenarios=("$@")
((${#scenarios[@]})) || scenarios=("${all[@]}")
for s in "${scenarios[@]}"; do
  [[ " ${all[*]} " == *" $s "* ]] || { echo "unknown scenario $s (one of: ${all[*]})" >&2; exit 2; }
done
work=$(mktemp -d)
# shellcheck source=deploy/compose-lib.sh
source deploy/compose-lib.sh

keep=${DRILL_KEEP:-0}
if [[ -n $(cid geosync-a 2>/dev/null) && $(health "$(cid geosync-a)") == healthy ]]; then
  log "drilling the running deployment $project"
  keep=1
else
  bash deploy/base-images.sh
  compose_up
fi
trap 'rc=$?; compose_cleanup $rc "$keep"; exit $rc' EXIT
mesh=$(net mesh)

cut_off() { docker network disconnect "$mesh" "$(cid geosync-a)"; }
rejoin() { docker network connect --alias geosync-a "$mesh" "$(cid geosync-a)"; }
kill_primary() { docker kill "$(cid redis-b)" >/dev/null; }
restart_primary() { docker start "$(cid redis-b)" >/dev/null; wait_healthy 60 redis-b; }

report=()
failed=0
for s in "${scenarios[@]}"; do
  log "scenario $s"
  rm -f "$work"/acked-*
  start_writers "$s"
  wait_writes 100
  case $s in
    isolate-region) cut_off; wait_writes "$outage"; rejoin ;;
    kill-primary) kill_primary; wait_writes_in a "$outage"; wait_writes_in c "$outage"; restart_primary ;;
    kill-agent)
      docker kill "$(cid geosync-c)" >/dev/null
      wait_writes "$outage"
      docker start "$(cid geosync-c)" >/dev/null
      ;;
    combined)
      cut_off; kill_primary
      wait_writes_in a "$outage"; wait_writes_in c "$outage"
      restart_primary; rejoin
      ;;
  esac
  # The writes stop with the fault: what follows is the catch-up alone.
  stop_writers
  healed=$(now)
  if verify_until_same "$rto_limit"; then
    rto="$(since "$healed") s"
  else
    rto="not within ${rto_limit} s"
    failed=1
    cat "$work/verify.out" >&2
  fi
  # Acknowledged writes absent from any region.
  lost=$(for region in a b c; do missing_keys_in "$region"; done | sort -u | wc -l)
  ((lost == 0)) || failed=1
  total=$(($(acked a) + $(acked b) + $(acked c)))
  report+=("$(printf '%-15s %-32s %-11s %s' "$s" "$total (A $(acked a), B $(acked b), C $(acked c))" "$lost" "$rto")")
done

echo
echo "drill report ($project)"
printf '%-15s %-32s %-11s %s\n' scenario "writes acknowledged" "lost (RPO)" "fault over -> all regions agree (RTO)"
for line in "${report[@]}"; do echo "$line"; done
exit $failed
