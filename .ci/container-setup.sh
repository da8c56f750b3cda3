#!/usr/bin/env bash
# Makes podman usable on a fresh Debian CI machine (as root, no Docker
# daemon, no registry): installs podman, runc and dnsmasq (for the image
# test's resolver), and sets the two engine options this kind of machine
# needs (crun and the default ulimits fail here; runc with cgroupfs works).
# Fails loudly if anything cannot be installed.
set -euo pipefail
missing=()
command -v podman >/dev/null 2>&1 || missing+=(podman)
command -v runc >/dev/null 2>&1 || missing+=(runc)
command -v dnsmasq >/dev/null 2>&1 || missing+=(dnsmasq-base)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
conf=/etc/containers/containers.conf
if ! grep -q '^cgroup_manager = "cgroupfs"' "$conf" 2>/dev/null; then
  [ ! -s "$conf" ] || { echo "$conf exists with other settings; not overwriting it" >&2; exit 1; }
  mkdir -p /etc/containers
  cat >"$conf" <<'CONF'
[containers]
default_ulimits = []

[engine]
cgroup_manager = "cgroupfs"
CONF
fi
podman --runtime runc info --format '{{.Host.OCIRuntime.Name}} {{.Version.Version}}'
