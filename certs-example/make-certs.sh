#!/usr/bin/env bash
# Makes a throwaway CA and a server certificate for postern's TLS listeners.
# FOR TESTING ONLY: the CA key sits next to the certificates, unprotected.
#
#   certs-example/make-certs.sh [OUTDIR] [NAME...]
#
# OUTDIR defaults to ./certs; NAMEs (DNS names or IP addresses) default to
# localhost 127.0.0.1 ::1. Writes ca.pem, ca.key, server.pem (chain: leaf
# then CA) and server.key. Point a route at them with
#   listen: { address: 127.0.0.1:3995, security: tls, certificate: certs/server.pem, key: certs/server.key }
# and give clients ca.pem to trust.
set -euo pipefail

out=${1:-certs}
shift || true
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(localhost 127.0.0.1 ::1)

mkdir -p "$out"
cd "$out"
umask 077

san=""
for n in "${names[@]}"; do
  if [[ $n =~ ^[0-9.]+$ || $n == *:* ]]; then san+="IP:$n,"; else san+="DNS:$n,"; fi
done
san=${san%,}

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout ca.key -out ca.pem -days 30 -subj "/CN=postern example CA (testing only)" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null

openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout server.key -out server.csr -subj "/CN=${names[0]}" 2>/dev/null

openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
  -out server-leaf.pem -days 30 \
  -extfile <(printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' "$san") 2>/dev/null

cat server-leaf.pem ca.pem > server.pem
rm -f server.csr server-leaf.pem ca.srl
chmod 644 ca.pem server.pem
echo "wrote $(pwd)/{ca.pem,ca.key,server.pem,server.key} for: ${names[*]}"
