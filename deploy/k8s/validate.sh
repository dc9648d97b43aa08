#!/usr/bin/env bash
# Renders each region's overlay with kustomize (`kubectl kustomize`, no
# cluster needed) and validates every object against the Kubernetes
# schemas, offline, with the kubernetes-validate package (strict: unknown
# fields are errors). Peer certificates for the render are made in a temp
# copy with scripts/peer-certs.sh. Also checks what each region must get
# right: its node id, its peers (every other region), and the agent's
# readiness probe on /readyz.
#
#   bash deploy/k8s/validate.sh            # against Kubernetes 1.30.0
#   K8S_VERSION=1.33.0 bash deploy/k8s/validate.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
version=${K8S_VERSION:-1.30.0}
SUDO=""
[[ $(id -u) -eq 0 ]] || SUDO=sudo

if ! command -v kubectl >/dev/null; then
  echo "==> installing kubectl (Debian's kubernetes-client)" >&2
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq kubernetes-client >/dev/null
fi
tools=.servers/k8s-validate
if [[ ! -d $tools/kubernetes_validate ]]; then
  echo "==> fetching kubernetes-validate" >&2
  rm -rf "$tools"
  python3 -m pip install --quiet --disable-pip-version-check --target "$tools" kubernetes-validate >&2 2>/dev/null ||
    python3 -m pip install --quiet --disable-pip-version-check --break-system-packages --target "$tools" kubernetes-validate >&2
fi
validate() { PYTHONPATH=$PWD/$tools python3 -m kubernetes_validate "$@"; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r deploy/k8s "$work/k8s"
fail=0
for overlay in "$work"/k8s/overlays/*/; do
  region=$(basename "$overlay")
  r=${region#region-}
  id=$(sed -n 's/^# Region [a-z]* (node id \([0-9]*\)).*/\1/p' "$overlay/kustomization.yaml")
  bash scripts/peer-certs.sh "$work/certs" "$id=DNS:geosync-$r.example.net" >/dev/null
  mkdir -p "$overlay/tls"
  cp "$work/certs/ca.pem" "$overlay/tls/ca.pem"
  cp "$work/certs/node-$id.pem" "$overlay/tls/node.pem"
  cp "$work/certs/node-$id.key" "$overlay/tls/node.key"
  out=$work/$region.yaml
  # The deprecated fields are the ones every kustomize since kubectl 1.14
  # reads (Debian's kubectl embeds an old one); their warnings are noise.
  kubectl kustomize "$overlay" 2> >(grep -v 'is deprecated' >&2) >"$out"
  kinds=$(grep -c '^kind:' "$out")
  if ! validate --strict --quiet -k "$version" "$out"; then
    echo "$region: does not validate against Kubernetes $version" >&2
    fail=1
    continue
  fi
  # What a region must get right.
  grep -q "^    node-id = $id\$" "$out" ||
    { echo "$region: region.toml's node-id is not $id" >&2; fail=1; }
  peers=$(sed -n 's/^    peer = \[\(.*\)\]$/\1/p' "$out" | tr -d '"')
  for other in "$work"/k8s/overlays/*/; do
    o=$(basename "$other")
    [[ $o == "$region" ]] && continue
    o=${o#region-}
    [[ $peers == *"geosync-$o.example.net"* ]] || { echo "$region: peer $o missing in region.toml ($peers)" >&2; fail=1; }
  done
  grep -q 'path: /readyz$' "$out" || { echo "$region: no /readyz readiness probe" >&2; fail=1; }
  echo "$region: $kinds objects valid against Kubernetes $version (node id $id, peers $peers)"
done
exit $fail
