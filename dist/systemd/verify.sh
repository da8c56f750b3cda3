#!/usr/bin/env bash
# Checks dist/systemd/postern.service with `systemd-analyze verify`, using
# the binary built in this checkout in place of /usr/local/bin/postern.
# Any warning (an unknown key, a typo in a hardening option) fails: verify
# itself only fails on hard errors.
#   dist/systemd/verify.sh [PATH-TO-POSTERN]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=$(realpath -m "${1:-$here/../../target/debug/postern}")
cd "$here"
[ -x "$bin" ] || { echo "no postern binary at $bin (build first)" >&2; exit 1; }
command -v systemd-analyze >/dev/null || { echo "systemd-analyze is missing (Debian package: systemd)" >&2; exit 1; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
sed "s#/usr/local/bin/postern#$bin#g" postern.service > "$dir/postern.service"
out=$(systemd-analyze verify "$dir/postern.service" 2>&1) || { echo "$out" >&2; exit 1; }
if [ -n "$out" ]; then
  echo "systemd-analyze verify warns:" >&2
  echo "$out" >&2
  exit 1
fi
echo "postern.service: systemd-analyze verify clean"
