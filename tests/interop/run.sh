#!/usr/bin/env bash
# shellcheck disable=SC2016 # cleanup commands are stored unexpanded, run by eval
# Real-server interop test for postern: private Dovecot and Postfix on
# 127.0.0.1, postern POP3 and SMTP routes in every upstream mode in front of
# them, real legacy clients (Python poplib and smtplib, raw sockets, curl,
# swaks, fetchmail, openssl s_client) on the other side, plus postern's
# LAN-relay features (TLS listeners, stored accounts, devices). Everything
# runs on loopback in one mktemp -d directory that is removed at exit.
#
# Usage:
#   tests/interop/run.sh                  full run (CI); exit 0 only if all pass
#   tests/interop/run.sh --dovecot-only   start Dovecot and Postfix, check them,
#                                         print ports and credentials, wait for
#                                         Ctrl-C (alias: --servers-only)
#   tests/interop/run.sh --attach DIR     build/start postern and run the route
#                                         checks against the servers that a
#                                         --dovecot-only run in DIR keeps up;
#                                         repeatable
# Options / environment:
#   --keep, INTEROP_KEEP=1      keep the temp directory (logs, configs)
#   POSTERN_BIN=PATH            use this binary instead of cargo build
#   INTEROP_DOVECOT_ONLY=1      same as --dovecot-only
#   INTEROP_MAIL_UID=N          uid owning the Maildirs (default 40125)
#   INTEROP_IMAGE=TAG           also run the container image TAG (built by
#                               docker/build-image.sh) with podman + runc
#                               against the same servers (lib/image.sh)
#   INTEROP_IMAP=0              leave out the imap suite (suites/imap.sh, on
#                               by default): Dovecot's IMAP service, and
#                               postern's IMAP routes in front of it
#                               (imaplib, curl imap://, fetchmail)
#   INTEROP_OAUTH=0             leave out the oauth suite (suites/oauth.sh, on
#                               by default): Dovecot's oauth2 passdb and
#                               Postfix through it with a fake authorization
#                               server (fake_idp.py), and postern's OAuth2
#                               routes in front of them
#   INTEROP_OAUTH_TOKEN_LIFETIME=N  the fake IdP's access-token lifetime in
#                               seconds (default 3600; the oauth suite's
#                               token counts assume no token expires mid-run)
#
# Needs root on a Debian-like system (it installs Dovecot, Postfix, swaks,
# curl, openssl, fetchmail, libnet-ssleay-perl, python3 when missing).
# Suites live in suites/*.sh; adding one means writing suites/NAME.sh with
# the same functions as suites/pop3.sh and adding NAME to SUITES below
# (smtp reads its mail back through pop3's routes, so it comes after pop3;
# lan adds to pop3's Dovecot and smtp's Postfix, so it comes after both;
# imap reads pop3's Maildirs and sends through smtp's routes, so it
# comes after lan; oauth comes last). Optional suite functions:
# <suite>_toplevel (top-level postern config keys) and <suite>_before_start.
set -Eeuo pipefail

# dovecot and doveadm live in /usr/sbin, which a CI runner's PATH may lack.
export PATH="$PATH:/usr/sbin:/sbin"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(git -C "$HERE" rev-parse --show-toplevel 2>/dev/null || (cd "$HERE/../.." && pwd))

SUITES=(pop3 smtp lan)

# shellcheck source=lib/common.sh
source "$HERE/lib/common.sh"
# shellcheck source=lib/pki.sh
source "$HERE/lib/pki.sh"
# shellcheck source=lib/dovecot.sh
source "$HERE/lib/dovecot.sh"
# shellcheck source=lib/postfix.sh
source "$HERE/lib/postfix.sh"
# shellcheck source=lib/postern.sh
source "$HERE/lib/postern.sh"
# shellcheck source=lib/image.sh
source "$HERE/lib/image.sh"
# The imap suite (suites/imap.sh: Dovecot's IMAP service, postern's IMAP
# routes) runs by default; INTEROP_IMAP=0 leaves it out (and Dovecot gets
# no IMAP listeners), and the summary says so.
case ${INTEROP_IMAP:-1} in
  1) SUITES+=(imap) ;;
  0) NOT_RUN_NOTES+=("suite imap did not run (INTEROP_IMAP=0)") ;;
  *) die "INTEROP_IMAP must be 1 (run the imap suite, the default) or 0, not '$INTEROP_IMAP'" ;;
esac
# The oauth suite runs by default; INTEROP_OAUTH=0 leaves it out (the
# summary then says so).
case ${INTEROP_OAUTH:-1} in
  1) SUITES+=(oauth) ;;
  0) NOT_RUN_NOTES+=("suite oauth did not run (INTEROP_OAUTH=0)") ;;
  *) die "INTEROP_OAUTH must be 1 (run the oauth suite, the default) or 0, not '$INTEROP_OAUTH'" ;;
esac
for suite in "${SUITES[@]}"; do
  # shellcheck source=/dev/null
  source "$HERE/suites/$suite.sh"
done

usage() { sed -n '3,/^set -Eeuo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

MODE=full
ATTACH_DIR=
KEEP=${INTEROP_KEEP:-}
[ "${INTEROP_DOVECOT_ONLY:-}" = 1 ] && MODE=servers
while [ $# -gt 0 ]; do
  case $1 in
    --dovecot-only | --servers-only) MODE=servers ;;
    --attach) MODE=attach; ATTACH_DIR=${2:?--attach needs the directory a --dovecot-only run printed}; shift ;;
    --keep) KEEP=1 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
  shift
done

trap run_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'log "command failed (status $?) at ${BASH_SOURCE[0]##*/}:$LINENO: $BASH_COMMAND"' ERR

# ----------------------------------------------------------------- servers

start_servers() {
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/postern-interop.XXXXXX")
  # Dovecot's auth and mail processes run unprivileged and must traverse it.
  chmod 0711 "$WORK"
  if [ -n "$KEEP" ]; then
    on_exit 'log "kept $WORK"'
  else
    on_exit 'rm -rf "$WORK"'
  fi
  STATE_FILE="$WORK/servers.env"
  : >"$STATE_FILE"
  state_set WORK "$WORK"
  RUN_DIR="$WORK/run"
  mkdir -p "$RUN_DIR"
  RESULTS="$RUN_DIR/results.tsv"
  : >"$RESULTS"

  section "packages"
  apt_need openssl:openssl python3:python3 /etc/ssl/certs/ca-certificates.crt:ca-certificates
  dovecot_packages
  for suite in "${SUITES[@]}"; do "${suite}_packages"; done

  section "test PKI"
  state_set PKI_DIR "$WORK/pki"
  pki_make "$PKI_DIR"
  log "CA: $PKI_DIR/ca.pem"

  section "servers"
  dovecot_init
  local ports=() more=()
  for suite in "${SUITES[@]}"; do
    "${suite}_prepare"
    read -r -a more <<<"$("${suite}_server_ports")"
    ports+=("${more[@]}")
  done
  dovecot_start "${ports[@]}"
  for suite in "${SUITES[@]}"; do "${suite}_start"; done
  for suite in "${SUITES[@]}"; do "${suite}_baseline"; done
}

attach_servers() {
  [ -f "$ATTACH_DIR/servers.env" ] || die "$ATTACH_DIR/servers.env not found: pass the directory a --dovecot-only run printed"
  STATE_FILE=/dev/null
  set -a  # the Python drivers read the passwords from the environment
  # shellcheck source=/dev/null
  source "$ATTACH_DIR/servers.env"
  set +a
  kill -0 "$DOVECOT_PID" 2>/dev/null || die "Dovecot (pid $DOVECOT_PID) from $ATTACH_DIR is not running"
  if [ -n "${PF_PID:-}" ]; then
    kill -0 "$PF_PID" 2>/dev/null || die "Postfix (pid $PF_PID) from $ATTACH_DIR is not running"
  fi
  RUN_DIR=$(mktemp -d "$WORK/run-attach.XXXXXX")
  RESULTS="$RUN_DIR/results.tsv"
  : >"$RESULTS"
  on_failure_dump 'dump_file "Dovecot log" "$DOVECOT_LOG" 200'
  [ -z "${PF_LOG:-}" ] || on_failure_dump 'dump_file "Postfix log" "$PF_LOG" 200'
  log "attached to servers in $WORK; this run's files: $RUN_DIR"
}

# ----------------------------------------------------------------- postern

run_postern_checks() {
  local suite ports=() more=() secrets=()
  postern_build
  postern_write_config
  postern_check_config
  # A suite that must act between the config and the start (the oauth
  # suite's `postern oauth login`) defines <suite>_before_start.
  for suite in "${SUITES[@]}"; do
    if declare -F "${suite}_before_start" >/dev/null; then "${suite}_before_start"; fi
  done
  dovecot_log_mark
  for suite in "${SUITES[@]}"; do
    read -r -a more <<<"$("${suite}_listen_ports")"
    ports+=("${more[@]}")
  done
  postern_start "${ports[@]}"
  for suite in "${SUITES[@]}"; do "${suite}_checks"; done
  postern_probe_config
  for suite in "${SUITES[@]}"; do
    mapfile -t more < <("${suite}_secrets")
    secrets+=("${more[@]}")
  done
  postern_check_log_secrets "${secrets[@]}"
  postern_stop_checked
  [ -z "${INTEROP_IMAGE:-}" ] || image_checks "$INTEROP_IMAGE"
}

# ----------------------------------------------------------------- main

case $MODE in
  full)
    start_servers
    run_postern_checks
    summary || exit 1
    ;;
  servers)
    start_servers
    summary || die "the servers do not behave as the checks expect; see above"
    printf '\n==================== servers are up ====================\n'
    for suite in "${SUITES[@]}"; do "${suite}_describe"; done
    cat <<INFO

Work directory: $WORK
Run the postern checks against these servers (repeatable):
  $0 --attach $WORK
Press Ctrl-C to stop the servers and remove $WORK.
INFO
    trap 'exit 0' INT TERM  # stopping the servers is this mode's normal end
    sleep infinity &
    SLEEP_PID=$!
    on_exit 'kill "$SLEEP_PID" 2>/dev/null || true'
    wait "$SLEEP_PID"
    ;;
  attach)
    attach_servers
    run_postern_checks
    summary || exit 1
    ;;
esac
