#!/usr/bin/env bash
# Smoke test of the image built by docker/build-image.sh, with podman+runc
# (as root, no registry): it serves POP3 and SMTP greetings on the default
# configuration, runs as 65534:65534, its health check passes, a host name
# resolves inside the empty image (through a dnsmasq on 127.0.0.2), and
# SIGTERM stops it with status 0.
#   docker/test-image.sh [TAG]
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-localhost/postern:test}
name=postern-image-test
fail() { echo "FAIL: $*" >&2; exit 1; }
for tool in podman runc dnsmasq; do
  command -v "$tool" >/dev/null || fail "$tool is missing (Debian: podman runc dnsmasq-base)"
done
work=$(mktemp -d)
cleanup() {
  podman --runtime runc rm -f "$name" >/dev/null 2>&1 || true
  [ -f "$work/dnsmasq.pid" ] && kill "$(cat "$work/dnsmasq.pid")" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# A name only the local resolver knows, pointing at a POP3 greeter.
dnsmasq --port=53 --listen-address=127.0.0.2 --bind-interfaces --no-resolv --no-hosts \
  --address=/upstream.postern.test/127.0.0.1 --pid-file="$work/dnsmasq.pid"
greeter_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 - "$greeter_port" <<'PY' &
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(5); s.settimeout(60)
while True:
    try:
        c, _ = s.accept()
    except OSError:
        break
    c.sendall(b"+OK greeter ready <1.2@upstream.postern.test>\r\n")
    f = c.makefile("rb")
    for line in f:
        if line.upper().startswith(b"CAPA"):
            c.sendall(b"+OK\r\nUSER\r\n.\r\n")
        else:
            c.sendall(b"+OK bye\r\n"); break
    c.close()
PY
greeter=$!
trap 'kill $greeter 2>/dev/null || true; cleanup' EXIT
cat > "$work/probe.yaml" <<YAML
routes:
  - name: dns
    protocol: pop3
    listen: 127.0.0.1:0
    upstream: { address: "upstream.postern.test:$greeter_port", security: none, auth: apop }
YAML
chmod 644 "$work/probe.yaml"

podman --runtime runc run -d --name "$name" --network host --dns 127.0.0.2 \
  -v "$work/probe.yaml:/etc/postern/probe.yaml:ro" "$tag" >/dev/null
for _ in $(seq 50); do
  podman exec "$name" /usr/local/bin/postern health -c /etc/postern/postern.yaml >/dev/null 2>&1 && break
  sleep 0.2
done
podman exec "$name" /usr/local/bin/postern health -c /etc/postern/postern.yaml || fail "health check"
exec 3<>/dev/tcp/127.0.0.1/3999; read -r -t 5 pop <&3 || true; exec 3<&-
[[ $pop == "+OK postern POP3 gateway ready"* ]] || fail "POP3 greeting: $pop"
exec 3<>/dev/tcp/127.0.0.1/2525; read -r -t 5 smtp <&3 || true; exec 3<&-
[[ $smtp == "220 postern"* ]] || fail "SMTP greeting: $smtp"
user=$(podman inspect "$name" --format '{{.Config.User}}')
[ "$user" = "65534:65534" ] || fail "runs as $user"
podman exec "$name" /usr/local/bin/postern probe -c /etc/postern/probe.yaml | tee "$work/probe.out"
grep -q "verdict:      will work" "$work/probe.out" || fail "the upstream's host name did not resolve inside the image"
podman stop -t 20 "$name" >/dev/null
code=$(podman inspect "$name" --format '{{.State.ExitCode}}')
[ "$code" = 0 ] || fail "exit status $code after SIGTERM"
size=$(podman image inspect "$tag" --format '{{.Size}}')
[ "$size" -lt 10000000 ] || fail "image is $size bytes (over 10 MB)"
echo "image $tag: greetings, health, user 65534, DNS inside, SIGTERM exit 0, $size bytes: OK"
