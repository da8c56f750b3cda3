# shellcheck shell=bash
# Shared helpers for tests/interop/run.sh: messages, check results, ports,
# packages, cleanup. Sourced, never run. Every helper fails loudly: a missing
# tool or a server that does not come up is an error, never a skip.

log()  { printf '[interop] %s\n' "$*" >&2; }
die()  { printf '[interop] FATAL: %s\n' "$*" >&2; exit 1; }
section() { printf '\n[interop] ==== %s ====\n' "$*" >&2; }

# ---------------------------------------------------------------- results
# One line per check in $RESULTS: STATUS<TAB>NAME<TAB>DETAIL. The Python
# drivers append to the same file, so the summary covers both.
record() {
  local status=$1 name=$2 detail=${3:-}
  detail=${detail//$'\n'/ }
  detail=${detail//$'\t'/ }
  printf '%s\t%s\t%s\n' "$status" "$name" "$detail" >>"$RESULTS"
  printf '[interop] %-4s %s%s\n' "$status" "$name" "${detail:+ -- $detail}" >&2
}
pass() { record PASS "$1" "${2:-}"; }
fail() { record FAIL "$1" "${2:-}"; }

# driver_status NAME STATUS: a Python driver exits 0 (all passed) or 3 (it
# recorded failures); anything else means it crashed part-way.
driver_status() {
  case $2 in
    0 | 3) pass "$1" ;;
    *) fail "$1" "exit status $2: the driver crashed, see its traceback above" ;;
  esac
}

# Prints the table and returns non-zero unless every check passed and there
# was at least one (a run that checked nothing is a failure, not a pass).
SUMMARY_DONE=
# Lines the summary prints after the table: what this run left out.
NOT_RUN_NOTES=()
summary() {
  local total passed failed note
  SUMMARY_DONE=1
  total=$(grep -c . "$RESULTS" || true)
  passed=$(grep -c '^PASS' "$RESULTS" || true)
  failed=$(grep -c '^FAIL' "$RESULTS" || true)
  printf '\n==================== interop summary ====================\n'
  awk -F'\t' '{ printf "%-4s  %s%s\n", $1, $2, ($3 != "" ? "  (" $3 ")" : "") }' "$RESULTS"
  printf -- '---------------------------------------------------------\n'
  printf 'total %s, passed %s, failed %s\n' "$total" "$passed" "$failed"
  for note in "${NOT_RUN_NOTES[@]}"; do printf 'NOTE: %s\n' "$note"; done
  if [ "$total" -eq 0 ]; then
    printf 'RESULT: FAIL (no checks ran)\n'; return 1
  elif [ "$failed" -ne 0 ]; then
    printf 'RESULT: FAIL\n'; return 1
  fi
  printf 'RESULT: PASS\n'
}

# ---------------------------------------------------------------- cleanup
# Modules push commands; they run in reverse order on exit, each guarded so
# one failing stop does not prevent the next.
CLEANUP_CMDS=()
on_exit() { CLEANUP_CMDS+=("$1"); }
# Commands that print diagnostics when the run fails (server logs).
FAILURE_DUMPS=()
on_failure_dump() { FAILURE_DUMPS+=("$1"); }

run_cleanup() {
  local rc=$? i
  trap - EXIT INT TERM
  set +e
  if [ "$rc" -ne 0 ]; then
    for i in "${FAILURE_DUMPS[@]}"; do eval "$i"; done
    # A fatal error cut the run short: still show what was checked so far.
    if [ -z "$SUMMARY_DONE" ] && [ -s "${RESULTS:-}" ]; then
      summary >&2 || true
      printf '(the run stopped early at the FATAL error above; later checks did not run)\n' >&2
    fi
  fi
  for ((i = ${#CLEANUP_CMDS[@]} - 1; i >= 0; i--)); do
    eval "${CLEANUP_CMDS[i]}"
  done
  exit "$rc"
}

# Print a file (capped) between markers, for failure reports.
dump_file() {
  local title=$1 file=$2 max=${3:-4000} n
  printf '\n----- %s (%s) -----\n' "$title" "$file" >&2
  if [ ! -e "$file" ]; then
    printf '(missing)\n' >&2
  else
    n=$(wc -l <"$file")
    if [ "$n" -gt "$max" ]; then
      printf '(%s lines, showing the last %s)\n' "$n" "$max" >&2
    fi
    tail -n "$max" "$file" >&2
  fi
  printf -- '----- end of %s -----\n' "$title" >&2
}

# ---------------------------------------------------------------- state
# Values another invocation needs (--attach) go to $STATE_FILE as shell
# assignments; state_set also sets them in this shell.
state_set() {
  local name=$1 value=$2
  printf -v "$name" '%s' "$value"
  export "${name?}"
  printf '%s=%q\n' "$name" "$value" >>"$STATE_FILE"
}

# ---------------------------------------------------------------- packages
# apt_need WHAT:PACKAGE ...  installs each package whose WHAT is missing;
# WHAT is a command name, an absolute path of a file the package ships, or
# a Perl module file (Net/SSLeay.pm) that perl must be able to load.
APT_UPDATED=
apt_need() {
  local want=() spec what pkg
  for spec in "$@"; do
    what=${spec%%:*} pkg=${spec#*:}
    case $what in
      /*) [ -e "$what" ] || want+=("$pkg") ;;
      *.pm) perl -e "require '$what'" >/dev/null 2>&1 || want+=("$pkg") ;;
      *) command -v "$what" >/dev/null 2>&1 || want+=("$pkg") ;;
    esac
  done
  [ ${#want[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null 2>&1 || die "need ${want[*]} but apt-get is not available"
  [ "$(id -u)" -eq 0 ] || die "need ${want[*]}: run as root or install them first"
  log "installing: ${want[*]}"
  if [ -z "$APT_UPDATED" ]; then
    apt-get update -q
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${want[@]}"
}

# ---------------------------------------------------------------- ports
# free_ports N: N distinct free TCP ports on 127.0.0.1, space separated.
# Taken below the kernel's ephemeral range, so that no outgoing connection
# (postern's to Dovecot, say) can grab one between this test and the bind;
# all are held open together so none is handed out twice.
# Ports handed out earlier in this run are never handed out again (each
# suite asks separately, and a port released by one call is free again for
# the next): they are recorded in $FREE_PORTS_USED.
FREE_PORTS_USED=${FREE_PORTS_USED:-$(mktemp "${TMPDIR:-/tmp}/postern-interop-ports.XXXXXX")}
export FREE_PORTS_USED
on_exit 'rm -f "$FREE_PORTS_USED"'
free_ports() {
  python3 - "$1" "$FREE_PORTS_USED" <<'PY'
import random, socket, sys
with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
    ephemeral_low = int(f.read().split()[0])
low, high = 10000, max(ephemeral_low, 12000)
used_file = sys.argv[2]
with open(used_file) as f:
    used = {int(p) for p in f.read().split()}
socks = []
for candidate in random.sample(range(low, high), high - low):
    if len(socks) == int(sys.argv[1]):
        break
    if candidate in used:
        continue
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", candidate))
    except OSError:
        s.close()
        continue
    socks.append(s)
if len(socks) < int(sys.argv[1]):
    sys.exit(f"no {sys.argv[1]} free ports between {low} and {high}")
ports = [s.getsockname()[1] for s in socks]
with open(used_file, "a") as f:
    f.write("".join(f"{p}\n" for p in ports))
print(" ".join(str(p) for p in ports))
PY
}

# port_listening PORT: true if something listens on 127.0.0.1:PORT or on
# the wildcard address. Reads /proc so that it opens no connection (a probe
# connection would show up in the servers' logs and sessions).
port_listening() {
  local hex
  hex=$(printf '%04X' "$1")
  awk -v p=":$hex" 'NR > 1 && $4 == "0A" && ($2 == "0100007F" p || $2 == "00000000" p) { found = 1 }
                    END { exit !found }' /proc/net/tcp
}

# wait_ports SECONDS PID|"" PORT...: wait until every port listens. If PID is
# given and that process dies first, fail at once.
wait_ports() {
  local timeout=$1 pid=$2 port deadline
  shift 2
  deadline=$((SECONDS + timeout))
  for port in "$@"; do
    until port_listening "$port"; do
      if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
        log "process $pid exited before 127.0.0.1:$port was listening"
        return 1
      fi
      if [ "$SECONDS" -ge "$deadline" ]; then
        log "127.0.0.1:$port is not listening after ${timeout}s"
        return 1
      fi
      sleep 0.2
    done
  done
}

# stop_pid PID NAME GRACE: SIGTERM, wait GRACE seconds, then SIGKILL.
# Returns 0 if the process ended on SIGTERM (or was already gone).
stop_pid() {
  local pid=$1 name=$2 grace=${3:-10} deadline
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$((SECONDS + grace))
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "$name (pid $pid) still running ${grace}s after SIGTERM; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      return 1
    fi
    sleep 0.1
  done
}
