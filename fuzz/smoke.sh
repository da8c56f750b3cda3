#!/usr/bin/env bash
# Fuzz smoke test for CI: builds every cargo-fuzz target, replays the saved
# crash inputs (fuzz/regressions/<target>/), then fuzzes each target for a
# short time from its seeds (fuzz/corpus/<target>/). Fails on any crash.
#
#   FUZZ_SECONDS   seconds of fuzzing per target (default 15)
#   FUZZ_TARGETS   space-separated subset of targets (default: all)
#   FUZZ_JOBS      parallel libFuzzer processes per target (default 1;
#                  above 1 their output goes to fuzz-<n>.log files)
#
# The stable toolchain is used with RUSTC_BOOTSTRAP=1: cargo-fuzz needs
# -Zsanitizer and friends, and no nightly toolchain is available here.
set -euo pipefail
cd "$(dirname "$0")"

export RUSTC_BOOTSTRAP=1
seconds="${FUZZ_SECONDS:-15}"
parallel=()
if [[ "${FUZZ_JOBS:-1}" -gt 1 ]]; then
  parallel=(-jobs="$FUZZ_JOBS" -workers="$FUZZ_JOBS")
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

if [[ -n "${FUZZ_TARGETS:-}" ]]; then
  read -r -a targets <<<"$FUZZ_TARGETS"
else
  mapfile -t targets < <(cargo fuzz list)
fi
if [[ ${#targets[@]} -eq 0 ]]; then
  echo "no fuzz targets found" >&2
  exit 1
fi

echo "== build (${#targets[@]} targets)"
start=$(date +%s)
cargo fuzz build
echo "   built in $(($(date +%s) - start)) s"

# Scratch corpora: libFuzzer writes new inputs into the first corpus
# directory, and the committed seeds must stay as they are.
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

failed=()
for t in "${targets[@]}"; do
  regressions=()
  if [[ -d "regressions/$t" ]]; then
    mapfile -t regressions < <(find "regressions/$t" -type f ! -name '.*' | sort)
  fi
  if [[ ${#regressions[@]} -gt 0 ]]; then
    echo "== $t: replaying ${#regressions[@]} regression input(s)"
    if ! cargo fuzz run "$t" "${regressions[@]}" -- -runs=0; then
      failed+=("$t (regression)")
      continue
    fi
  fi

  echo "== $t: fuzzing for ${seconds} s"
  mkdir -p "$scratch/$t" "corpus/$t"
  log="$scratch/$t.log"
  # libFuzzer logs every new input; keep that out of the CI log unless
  # the target fails.
  if cargo fuzz run "$t" "$scratch/$t" "corpus/$t" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 "${parallel[@]}" >"$log" 2>&1; then
    { grep -E 'cov: ' "$log" | tail -n 1; grep -E '^Done ' "$log"; } | sed 's/^/   /'
  else
    tail -n 120 "$log"
    failed+=("$t")
  fi
done

if [[ ${#failed[@]} -gt 0 ]]; then
  echo "== FAILED: ${failed[*]}" >&2
  echo "   crash inputs are in fuzz/artifacts/<target>/; see fuzz/README.md" >&2
  exit 1
fi
echo "== fuzz smoke passed: ${targets[*]}"
