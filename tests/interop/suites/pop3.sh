# shellcheck shell=bash
# POP3 suite: Dovecot POP3 listeners, seeded mailboxes, one postern route
# per upstream mode, and the checks that drive them with legacy clients.
#
# Suite interface (run.sh calls these for every suite in $SUITES):
#   <suite>_packages      install what the suite needs
#   <suite>_prepare       allocate ports, add Dovecot config/users, seed mail
#   <suite>_server_ports  ports Dovecot must listen on before checks start
#   <suite>_start         start extra servers (none here; Postfix for SMTP)
#   <suite>_baseline      check the real servers directly, without postern
#   <suite>_describe      print ports and credentials (--dovecot-only)
#   <suite>_routes        print this suite's postern routes (YAML list items)
#   <suite>_listen_ports  postern ports (picked by _routes) to wait for
#   <suite>_checks        drive postern's routes and check the results
#   <suite>_secrets       print the secrets that must never appear in logs
#
# Dovecot gets one plain listener per route (and one for direct reference
# sessions), so that lport= in its login log tells the routes apart.

POP3_ROUTES=(
  # name           security  auth      dovecot-port-var     method    transport
  "dovecot-apop    none      apop      DOVECOT_POP3_APOP    APOP      secured"
  "dovecot-stls    starttls  user      DOVECOT_POP3_STLS    PLAIN     TLS"
  "dovecot-pop3s   tls       plain     DOVECOT_POP3S        PLAIN     TLS"
  "dovecot-cram    none      cram-md5  DOVECOT_POP3_CRAM    CRAM-MD5  secured"
)

pop3_packages() {
  apt_need /usr/lib/dovecot/pop3:dovecot-pop3d curl:curl
}

pop3_prepare() {
  local ports maildir
  read -r -a ports <<<"$(free_ports 6)"
  state_set DOVECOT_POP3_DIRECT "${ports[0]}"
  state_set DOVECOT_POP3S_DIRECT "${ports[1]}"
  state_set DOVECOT_POP3_APOP "${ports[2]}"
  state_set DOVECOT_POP3_STLS "${ports[3]}"
  state_set DOVECOT_POP3_CRAM "${ports[4]}"
  state_set DOVECOT_POP3S "${ports[5]}"

  dovecot_enable_protocol pop3
  # "pop3" and "pop3s" are Dovecot's built-in listener names: redefining
  # them keeps it off 110 and 995.
  dovecot_conf_fragment pop3 <<CONF
pop3_uidl_format = %08Xu%08Xv
protocol pop3 {
  mail_max_userip_connections = 40
}
service pop3-login {
  inet_listener pop3 {
    port = $DOVECOT_POP3_DIRECT
  }
  inet_listener pop3s {
    port = $DOVECOT_POP3S
    ssl = yes
  }
  inet_listener pop3s-direct {
    port = $DOVECOT_POP3S_DIRECT
    ssl = yes
  }
  inet_listener pop3-apop {
    port = $DOVECOT_POP3_APOP
  }
  inet_listener pop3-stls {
    port = $DOVECOT_POP3_STLS
  }
  inet_listener pop3-cram {
    port = $DOVECOT_POP3_CRAM
  }
}
CONF

  # alice holds the seeded messages and is only read (or DELEs that must
  # not stick); bob receives one marker message per route and DELE+QUITs it.
  state_set POP3_USER alice
  state_set POP3_PASSWORD 'Tr0ub4dor&3-interop'
  state_set POP3_DELE_USER bob
  state_set POP3_DELE_PASSWORD 'correct.horse~battery'
  maildir=$(dovecot_add_user "$POP3_USER" "$POP3_PASSWORD")
  state_set POP3_DELE_MAILDIR "$(dovecot_add_user "$POP3_DELE_USER" "$POP3_DELE_PASSWORD")"
  state_set POP3_EXPECTED "$WORK/expected"
  python3 "$HERE/seed_maildir.py" --maildir "$maildir" --expected "$POP3_EXPECTED" \
    --uid "$DOVECOT_MAIL_UID" >&2
}

pop3_server_ports() {
  echo "$DOVECOT_POP3_DIRECT $DOVECOT_POP3S_DIRECT $DOVECOT_POP3_APOP $DOVECOT_POP3_STLS $DOVECOT_POP3_CRAM $DOVECOT_POP3S"
}

pop3_start() { :; }

# pop3_expect_logins NAME LPORT METHOD TRANSPORT [MIN]: every login or
# failed-login line Dovecot logged on LPORT names METHOD and TRANSPORT
# ("TLS" or "secured", i.e. plain on loopback), and at least MIN logins.
pop3_expect_logins() {
  local name=$1 lport=$2 method=$3 transport=$4 min=${5:-1}
  local lines logins wrong
  lines=$(dovecot_log | grep -F ", lport=$lport," | grep -F 'pop3-login: ' | grep -F ' method=' || true)
  logins=$(dovecot_login_lines pop3-login "$lport" | grep -c . || true)
  wrong=$(printf '%s\n' "$lines" | grep . | grep -v -F -e "method=$method," || true)
  if [ -n "$wrong" ]; then
    fail "$name/dovecot log: only method=$method on port $lport" "$(printf '%s\n' "$wrong" | head -n 3)"
  elif [ "$logins" -lt "$min" ]; then
    fail "$name/dovecot log: only method=$method on port $lport" "$logins login lines, want at least $min"
  else
    pass "$name/dovecot log: only method=$method on port $lport" "$logins logins"
  fi
  # A failed login's line reads "TLS: Connection closed" where a login says "TLS".
  wrong=$(printf '%s\n' "$lines" | grep . | grep -v -E -e ", ${transport}[,:]" || true)
  if [ -n "$wrong" ] || [ "$logins" -lt "$min" ]; then
    fail "$name/dovecot log: every login on port $lport was $transport" "$(printf '%s\n' "$wrong" | head -n 3)"
  else
    pass "$name/dovecot log: every login on port $lport was $transport"
  fi
}

# pop3_expect_login_line NAME LPORT PATTERN...: at least one login on
# LPORT whose line contains every PATTERN (fixed strings).
pop3_expect_login_line() {
  local name=$1 lport=$2 lines pattern
  shift 2
  lines=$(dovecot_login_lines pop3-login "$lport")
  for pattern in "$@"; do
    lines=$(printf '%s\n' "$lines" | grep -F -e "$pattern" || true)
  done
  if [ -n "$lines" ]; then
    pass "$name" "$(printf '%s\n' "$lines" | grep -c .) login lines"
  else
    fail "$name" "no login line on port $lport contains all of: $*"
  fi
}

pop3_baseline() {
  section "POP3 baseline: Dovecot directly"
  local rc=0
  python3 "$HERE/pop3_check.py" baseline --results "$RESULTS" --expected "$POP3_EXPECTED" \
    --user "$POP3_USER" --plain-port "$DOVECOT_POP3_DIRECT" --pop3s-port "$DOVECOT_POP3S_DIRECT" \
    --ca "$PKI_DIR/ca.pem" || rc=$?
  driver_status "dovecot/baseline driver ran to completion" "$rc"
  local d=$DOVECOT_POP3_DIRECT
  pop3_expect_login_line "dovecot/log: direct APOP login shows method=APOP" "$d" "method=APOP," ", secured,"
  pop3_expect_login_line "dovecot/log: direct CRAM-MD5 login shows method=CRAM-MD5" "$d" "method=CRAM-MD5," ", secured,"
  pop3_expect_login_line "dovecot/log: direct USER/PASS login shows method=PLAIN" "$d" "method=PLAIN," ", secured,"
  pop3_expect_login_line "dovecot/log: direct STLS + USER/PASS login shows method=PLAIN, TLS" "$d" "method=PLAIN," ", TLS,"
  pop3_expect_login_line "dovecot/log: direct POP3S login shows method=PLAIN, TLS" "$DOVECOT_POP3S_DIRECT" "method=PLAIN," ", TLS,"
}

pop3_describe() {
  cat <<INFO
POP3 (Dovecot $(dovecot --version | cut -d' ' -f1), log: $DOVECOT_LOG)
  user $POP3_USER / $POP3_PASSWORD    (seeded messages; read-only checks)
  user $POP3_DELE_USER / $POP3_DELE_PASSWORD    (DELE+QUIT checks; Maildir $POP3_DELE_MAILDIR)
  CA certificate:            $PKI_DIR/ca.pem  (server name: localhost or 127.0.0.1)
  plain, for direct use:     127.0.0.1:$DOVECOT_POP3_DIRECT  (STLS, APOP, SASL PLAIN LOGIN CRAM-MD5, USER)
  POP3S, for direct use:     127.0.0.1:$DOVECOT_POP3S_DIRECT
  plain, apop route uses:    127.0.0.1:$DOVECOT_POP3_APOP
  plain, stls route uses:    127.0.0.1:$DOVECOT_POP3_STLS
  plain, cram route uses:    127.0.0.1:$DOVECOT_POP3_CRAM
  POP3S, pop3s route uses:   127.0.0.1:$DOVECOT_POP3S
  Each port shows up as lport=PORT in Dovecot's login lines, with method=.
INFO
}

pop3_routes() {
  local spec name security auth portvar listen ports i=0
  read -r -a ports <<<"$(free_ports ${#POP3_ROUTES[@]})"
  POP3_LISTEN=()
  for spec in "${POP3_ROUTES[@]}"; do
    read -r name security auth portvar _ _ <<<"$spec"
    listen=${ports[i]}
    POP3_LISTEN+=("$listen")
    i=$((i + 1))
    printf '  - name: %s\n' "$name"
    printf '    protocol: pop3\n'
    printf '    listen: 127.0.0.1:%s\n' "$listen"
    printf '    upstream: { address: 127.0.0.1:%s, security: %s, auth: %s' "${!portvar}" "$security" "$auth"
    if [ "$security" != none ]; then
      printf ', ca: %s, server_name: localhost' "$PKI_DIR/ca.pem"
    fi
    printf ' }\n'
  done
}

pop3_listen_ports() { echo "${POP3_LISTEN[*]}"; }

pop3_checks() {
  local spec name portvar method transport i=0 rc
  for spec in "${POP3_ROUTES[@]}"; do
    read -r name _ _ portvar method transport <<<"$spec"
    section "POP3 route $name: 127.0.0.1:${POP3_LISTEN[i]} -> Dovecot 127.0.0.1:${!portvar}"
    rc=0
    python3 "$HERE/pop3_check.py" route --results "$RESULTS" --expected "$POP3_EXPECTED" \
      --route "$name" --via-port "${POP3_LISTEN[i]}" --direct-port "$DOVECOT_POP3_DIRECT" \
      --upstream-lport "${!portvar}" --dovecot-log "$DOVECOT_LOG" \
      --user "$POP3_USER" --dele-user "$POP3_DELE_USER" --dele-maildir "$POP3_DELE_MAILDIR" \
      --mail-uid "$DOVECOT_MAIL_UID" --tmp "$RUN_DIR" || rc=$?
    driver_status "pop3/$name/driver ran to completion" "$rc"
    pop3_expect_logins "pop3/$name" "${!portvar}" "$method" "$transport"
    i=$((i + 1))
  done
}

pop3_secrets() {
  printf '%s\n' "$POP3_PASSWORD" "$POP3_DELE_PASSWORD"
  # AUTH PLAIN initial responses a client (curl) sends to postern.
  printf '\0%s\0%s' "$POP3_USER" "$POP3_PASSWORD" | base64 -w0; echo
  printf '\0%s\0%s' "$POP3_DELE_USER" "$POP3_DELE_PASSWORD" | base64 -w0; echo
}
