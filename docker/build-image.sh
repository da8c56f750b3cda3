#!/usr/bin/env bash
# Builds the postern image without a registry: the static binary is built
# on this machine (`cargo build` with crt-static), then copied into the
# image's runtime stage. Tags localhost/postern:test (or $1).
#   docker/build-image.sh [TAG]
# Uses podman if present, else docker.
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-localhost/postern:test}
target=x86_64-unknown-linux-gnu
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --bin postern --target "$target"
strip "target/$target/release/postern"
engine=$(command -v podman || command -v docker || true)
[ -n "$engine" ] || { echo "neither podman nor docker is installed" >&2; exit 1; }
format=()
# podman writes OCI images by default, which drop HEALTHCHECK.
[ "$(basename "$engine")" = podman ] && format=(--format docker)
"$engine" build "${format[@]}" --build-arg POSTERN_BUILD=host -t "$tag" -f docker/Dockerfile .
"$engine" image ls "$tag"
