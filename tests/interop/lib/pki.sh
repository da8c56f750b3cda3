# shellcheck shell=bash
# A throwaway CA and one server certificate for localhost / 127.0.0.1.
# Shaped for rustls/webpki, which is stricter than OpenSSL: v3 end-entity
# certificate with subjectAltName, CA:FALSE and serverAuth; CA with
# basicConstraints CA:TRUE and keyCertSign.

# pki_make DIR: writes DIR/ca.pem, DIR/server.pem, DIR/server.key.
pki_make() {
  local dir=$1
  mkdir -p "$dir"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 \
    -subj '/CN=postern interop test CA' \
    -addext 'basicConstraints=critical,CA:TRUE' \
    -addext 'keyUsage=critical,keyCertSign,cRLSign' \
    -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>"$dir/openssl.log"
  openssl req -newkey rsa:2048 -nodes -subj '/CN=localhost' \
    -keyout "$dir/server.key" -out "$dir/server.csr" 2>>"$dir/openssl.log"
  cat >"$dir/server.ext" <<'EXT'
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
EXT
  openssl x509 -req -days 2 -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
    -CAcreateserial -extfile "$dir/server.ext" -out "$dir/server.pem" 2>>"$dir/openssl.log"
  openssl verify -CAfile "$dir/ca.pem" "$dir/server.pem" >/dev/null \
    || die "the freshly made server certificate does not verify against the test CA"
  chmod 0644 "$dir/ca.pem" "$dir/server.pem"
  chmod 0600 "$dir/ca.key" "$dir/server.key"
}
