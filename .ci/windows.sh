#!/usr/bin/env bash
# Cross-compiles postern for Windows (x86_64-pc-windows-gnu) on Debian:
# clippy for the Windows target (warnings fail), the Windows-independent
# unit tests of the service code (on this machine), the release build, and
# checks that the result is a standalone x86-64 PE32+ executable.
#
# Installs what it needs if missing (the Rust target with rustup, the
# MinGW-w64 linker with apt-get, which needs root) and fails, loudly, if it
# cannot: CI must not skip the Windows build.
#
# The .exe is not run: Debian's Wine 8 lacks bcryptprimitives.dll, which
# Rust's standard library needs on Windows.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=x86_64-pc-windows-gnu
LINKER=x86_64-w64-mingw32-gcc # named in .cargo/config.toml
OBJDUMP=x86_64-w64-mingw32-objdump

fail() {
  echo "windows.sh: FAILED: $*" >&2
  exit 1
}

echo "== Rust target $TARGET"
command -v cargo >/dev/null 2>&1 || fail "cargo is not installed"
command -v rustup >/dev/null 2>&1 ||
  fail "rustup is not installed: it is needed to add the $TARGET target"
if ! rustup target list --installed | grep -qx "$TARGET"; then
  rustup target add "$TARGET" || fail "cannot install the Rust target: rustup target add $TARGET"
fi
rustup target list --installed | grep -qx "$TARGET" ||
  fail "the Rust target $TARGET is still not installed"

echo "== MinGW-w64 linker ($LINKER)"
if ! command -v "$LINKER" >/dev/null 2>&1; then
  [ "$(id -u)" -eq 0 ] ||
    fail "$LINKER is missing, and installing gcc-mingw-w64-x86-64 with apt-get needs root"
  { apt-get update -q &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      gcc-mingw-w64-x86-64; } ||
    fail "cannot install gcc-mingw-w64-x86-64 (apt-get)"
fi
command -v "$LINKER" >/dev/null 2>&1 ||
  fail "$LINKER is still missing after installing gcc-mingw-w64-x86-64"
"$LINKER" --version | head -n 1

echo "== clippy for $TARGET (warnings fail)"
cargo clippy --workspace --all-targets --target "$TARGET" -- -D warnings

echo "== unit tests of the service code (Windows-independent, run here)"
cargo test -p postern --lib --bins

echo "== release build for $TARGET"
cargo build --release --target "$TARGET" --bin postern
exe="${CARGO_TARGET_DIR:-target}/$TARGET/release/postern.exe"
[ -s "$exe" ] || fail "$exe was not built"

echo "== $exe is an x86-64 PE32+ executable"
# Little-endian fields of the PE format: "MZ", the offset of the PE header
# at 0x3c, "PE\0\0" there, the machine (0x8664: x86-64) 4 bytes on and the
# optional header's magic (0x20b: PE32+) 24 bytes on.
field() { od -An --endian=little -v -j "$2" -N "$3" -t "$4" "$1" | tr -d ' \n'; }
[ "$(head -c 2 "$exe")" = "MZ" ] || fail "$exe does not start with MZ"
pe=$(field "$exe" 60 4 u4)
[ "$(field "$exe" "$pe" 4 x1)" = "50450000" ] || fail "$exe has no PE signature at $pe"
machine=$(field "$exe" $((pe + 4)) 2 x2)
[ "$machine" = "8664" ] || fail "$exe is not for x86-64 (machine 0x$machine)"
magic=$(field "$exe" $((pe + 24)) 2 x2)
[ "$magic" = "020b" ] || fail "$exe is not PE32+ (optional header magic 0x$magic)"
if command -v file >/dev/null 2>&1; then
  file "$exe"
fi

echo "== it needs only Windows' own DLLs (no MinGW runtime beside it)"
if command -v "$OBJDUMP" >/dev/null 2>&1; then
  dlls=$("$OBJDUMP" -p "$exe" | sed -n 's/^[[:space:]]*DLL Name: //p' | sort -fu)
  [ -n "$dlls" ] || fail "no imported DLLs found in $exe (objdump output changed?)"
  echo "$dlls" | tr '\n' ' '
  echo
  if echo "$dlls" | grep -Ei '^lib|mingw|gcc|pthread'; then
    fail "$exe needs the MinGW runtime DLLs above; it would not start on a clean Windows"
  fi
else
  fail "$OBJDUMP is missing (it comes with gcc-mingw-w64-x86-64's binutils)"
fi

bytes=$(stat -c %s "$exe")
echo "== postern.exe: $bytes bytes ($(awk -v b="$bytes" 'BEGIN { printf "%.1f MiB", b / 1048576 }'))"
echo "== Windows build OK"
