#!/usr/bin/env bash
# A local three-region geosync demo: three redis-servers, three agents in a
# full mesh, a conflict written into two regions at once, and the regions
# converging. Everything runs on 127.0.0.1 and is stopped at the end. The
# agents talk over mutual TLS, with a CA and node certificates made at start
# (scripts/peer-certs.sh), as a deployment across regions would.
#
#   DEMO_BASE_PORT  first port to use (default 7380; 12 ports from there)
#   DEMO_KEEP=1     leave the regions running (stop them with Ctrl-C)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-deps.sh

base=${DEMO_BASE_PORT:-7380}
work=$(pwd)/.demo
rm -rf "$work"
mkdir -p "$work"

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in $(seq "$base" $((base + 11))); do
  if port_busy "$p"; then
    echo "port $p is in use; set DEMO_BASE_PORT to a free range" >&2
    exit 1
  fi
done

echo "==> building geosync"
cargo build --quiet --bin geosync --example conflict
bin=target/debug/geosync

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

redis_port() { echo $((base + $1)); }
grpc_port() { echo $((base + 3 + $1)); }
admin_port() { echo $((base + 6 + $1)); }

echo "==> making a CA and a certificate per node for the links between agents"
bash scripts/peer-certs.sh "$work/certs" \
  1=DNS:localhost,IP:127.0.0.1 2=DNS:localhost,IP:127.0.0.1 3=DNS:localhost,IP:127.0.0.1 >/dev/null

echo "==> starting three regions (redis + geosync agent each)"
for i in 0 1 2; do
  mkdir -p "$work/redis-$i"
  redis-server --port "$(redis_port $i)" --bind 127.0.0.1 --save "" --appendonly no \
    --repl-diskless-sync-delay 0 --dir "$work/redis-$i" --logfile "$work/redis-$i/redis.log" &
  pids+=($!)
done
for i in 0 1 2; do
  until redis-cli -p "$(redis_port $i)" ping >/dev/null 2>&1; do sleep 0.1; done
done
for i in 0 1 2; do
  peers=()
  for j in 0 1 2; do
    [[ $j == "$i" ]] || peers+=(--peer "$((j + 1))=https://127.0.0.1:$(grpc_port $j)")
  done
  "$bin" run --node-id $((i + 1)) --redis "redis://127.0.0.1:$(redis_port $i)" \
    --listen "127.0.0.1:$(grpc_port $i)" "${peers[@]}" \
    --peer-tls-ca "$work/certs/ca.pem" --peer-tls-cert "$work/certs/node-$((i + 1)).pem" \
    --peer-tls-key "$work/certs/node-$((i + 1)).key" \
    --admin "127.0.0.1:$(admin_port $i)" --data-dir "$work/agent-$i" \
    >"$work/agent-$i.log" 2>&1 &
  pids+=($!)
done

http_status() {
  exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
  printf 'GET %s HTTP/1.0\r\n\r\n' "$2" >&3
  head -1 <&3 | cut -d' ' -f2
  exec 3<&-
}
for i in 0 1 2; do
  for _ in $(seq 1 300); do
    [[ "$(http_status "$(admin_port $i)" /readyz/mesh 2>/dev/null)" == "200" ]] && break
    sleep 0.1
  done
  [[ "$(http_status "$(admin_port $i)" /readyz/mesh 2>/dev/null)" == "200" ]] || {
    echo "agent $((i + 1)) did not become ready; its log:" >&2
    cat "$work/agent-$i.log" >&2
    exit 1
  }
done
echo "    regions A, B, C: redis on ports $(redis_port 0), $(redis_port 1), $(redis_port 2); metrics on :$(admin_port 0)/metrics"
echo "    agents linked by mutual TLS (certificates in .demo/certs/)"

echo "==> writing a conflict into regions A and B at the same moment"
target/debug/examples/conflict \
  "redis://127.0.0.1:$(redis_port 0)" "redis://127.0.0.1:$(redis_port 1)" "redis://127.0.0.1:$(redis_port 2)"

echo "==> what each agent counted"
for i in 0 1 2; do
  exec 3<>"/dev/tcp/127.0.0.1/$(admin_port $i)"
  printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3
  stats=$(grep -E '^geosync_(changes_stamped|changes_applied|changes_rejected_older)_total' <&3 |
    awk '{split($1, n, "{"); sub("geosync_", "", n[1]); sub("_total", "", n[1]); s[n[1]] += $2}
         END {printf "stamped=%d applied=%d rejected_older=%d", s["changes_stamped"], s["changes_applied"], s["changes_rejected_older"]}')
  exec 3<&-
  echo "    region $(printf "\\x$(printf %x $((65 + i)))"): $stats"
done

if [[ "${DEMO_KEEP:-0}" == "1" ]]; then
  echo "==> regions keep running; try: redis-cli -p $(redis_port 0) set greeting hello; redis-cli -p $(redis_port 2) get greeting"
  echo "    press Ctrl-C to stop"
  wait
fi
echo "==> demo done; logs are in .demo/"
