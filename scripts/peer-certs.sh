#!/usr/bin/env bash
# Makes what mutual TLS between geosync agents needs, with openssl: a CA
# (ca.pem, ca.key) and, for every node, a certificate the CA signed that
# names the node (DNS name geosync-node-<id>) and the host names or
# addresses its peers dial (node-<id>.pem, node-<id>.key).
#
#   scripts/peer-certs.sh DIR ID=NAMES [ID=NAMES ...]
#   scripts/peer-certs.sh ./certs 1=DNS:geosync-a 2=DNS:geosync-b 3=IP:10.0.0.3
#
# NAMES is a subjectAltName list (DNS:host,IP:addr,...). An existing CA in
# DIR is reused, so nodes can be added later; keep ca.key offline.
set -euo pipefail
[[ $# -ge 2 ]] || { sed -n '2,11p' "$0" >&2; exit 2; }
command -v openssl >/dev/null || { echo "openssl is required" >&2; exit 1; }
dir=$1
shift
mkdir -p "$dir"
cd "$dir"
if [[ ! -f ca.pem ]]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj "/CN=geosync mesh CA" -keyout ca.key -out ca.pem \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi
for spec in "$@"; do
  id=${spec%%=*}
  names=${spec#*=}
  [[ $id =~ ^[0-9]+$ && $id != "$spec" ]] || { echo "want ID=NAMES, got $spec" >&2; exit 2; }
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=geosync-node-$id" -keyout "node-$id.key" -out "node-$id.csr" 2>/dev/null
  printf '%s\n' \
    "subjectAltName=DNS:geosync-node-$id,$names" \
    "extendedKeyUsage=serverAuth,clientAuth" \
    "keyUsage=critical,digitalSignature" \
    "basicConstraints=critical,CA:FALSE" >"node-$id.ext"
  openssl x509 -req -in "node-$id.csr" -CA ca.pem -CAkey ca.key -CAcreateserial \
    -days 825 -extfile "node-$id.ext" -out "node-$id.pem" 2>/dev/null
  rm -f "node-$id.csr" "node-$id.ext"
  echo "node $id: $dir/node-$id.pem (DNS:geosync-node-$id,$names)"
done
