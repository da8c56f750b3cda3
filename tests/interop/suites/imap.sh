# shellcheck shell=bash
# state_set assigns the variables it is given by name:
# shellcheck disable=SC2153
# IMAP suite (on by default; INTEROP_IMAP=0 leaves it out): Dovecot's IMAP service (dovecot-imapd) on the POP3
# suite's users and Maildirs, one postern IMAP route per upstream mode in
# front of it, and the legacy clients the issue names: Python imaplib (and
# a raw socket for IDLE, LITERAL+ and a wrong password), curl imap:// and
# fetchmail --protocol IMAP (imap_check.py).
#
# Dovecot gets an imap-login listener per purpose: a plain (+ STARTTLS)
# and an IMAPS port for direct reference sessions, and one port per postern
# route, so that lport= in its login lines tells the routes apart; the
# IMAP service also loads imap_zlib (COMPRESS=DEFLATE after login). alice
# holds the seeded messages (the pop3 suite's); carol receives the IDLE
# messages through Postfix (the smtp suite's postern route pf-cram).
#
# Needs pop3 and smtp before it in SUITES (their Dovecot, users, seeded
# Maildir, Postfix, and postern's POP3 and SMTP routes the checks compare
# with and send through). Functions: see the header of suites/pop3.sh.
#
# Dovecot facts this relies on (2.3.19, checked by the baseline): the IMAP
# LOGIN command goes through Dovecot's PLAIN mechanism and is logged as
# method=PLAIN (AUTHENTICATE LOGIN logs method=LOGIN), so `auth: login` and
# `auth: plain` routes are told apart by their port, not by method=; the
# built-in imap-login listeners are named "imap" (143) and "imaps" (993)
# and are redefined here so that Dovecot stays off those ports; on
# 127.0.0.1 -> 127.0.0.1 Dovecot never advertises LOGINDISABLED.

IMAP_ROUTES=(
  # name                 security  auth      dovecot-port-var          method    transport
  "imap-starttls-login   starttls  login     DOVECOT_IMAP_STLS_LOGIN   PLAIN     TLS"
  "imap-imaps-plain      tls       plain     DOVECOT_IMAPS_PLAIN       PLAIN     TLS"
  "imap-starttls-cram    starttls  cram-md5  DOVECOT_IMAP_STLS_CRAM    CRAM-MD5  TLS"
  "imap-cram             none      cram-md5  DOVECOT_IMAP_CRAM         CRAM-MD5  secured"
  "imap-imaps-login      tls       login     DOVECOT_IMAPS_LOGIN       PLAIN     TLS"
)

imap_packages() {
  apt_need /usr/lib/dovecot/imap:dovecot-imapd /usr/lib/dovecot/imap-login:dovecot-imapd \
    curl:curl fetchmail:fetchmail
}

imap_prepare() {
  local ports
  [[ " ${SUITES[*]} " == *" pop3 "*"smtp "*"imap "* ]] \
    || die "the imap suite uses the pop3 suite's Maildirs and the smtp suite's Postfix: SUITES must list pop3, smtp, then imap"
  read -r -a ports <<<"$(free_ports 7)"
  state_set DOVECOT_IMAP_DIRECT "${ports[0]}"
  state_set DOVECOT_IMAPS_DIRECT "${ports[1]}"
  state_set DOVECOT_IMAP_STLS_LOGIN "${ports[2]}"
  state_set DOVECOT_IMAPS_PLAIN "${ports[3]}"
  state_set DOVECOT_IMAP_STLS_CRAM "${ports[4]}"
  state_set DOVECOT_IMAP_CRAM "${ports[5]}"
  state_set DOVECOT_IMAPS_LOGIN "${ports[6]}"

  dovecot_enable_protocol imap
  # "imap" and "imaps" are Dovecot's built-in listener names: redefining
  # them keeps it off 143 and 993. mailbox_idle_check_interval only matters
  # where inotify does not work (Dovecot then polls the Maildir).
  dovecot_conf_fragment imap <<CONF
protocol imap {
  mail_max_userip_connections = 40
  mailbox_idle_check_interval = 1 secs
  # COMPRESS=DEFLATE (RFC 4978) after login, so that the route checks see
  # what postern does with it (relays it both ways, or refuses it).
  mail_plugins = \$mail_plugins zlib imap_zlib
}
service imap-login {
  inet_listener imap {
    port = $DOVECOT_IMAP_DIRECT
  }
  inet_listener imaps {
    port = $DOVECOT_IMAPS_DIRECT
    ssl = yes
  }
  inet_listener imap-stls-login {
    port = $DOVECOT_IMAP_STLS_LOGIN
  }
  inet_listener imaps-plain {
    port = $DOVECOT_IMAPS_PLAIN
    ssl = yes
  }
  inet_listener imap-stls-cram {
    port = $DOVECOT_IMAP_STLS_CRAM
  }
  inet_listener imap-cram {
    port = $DOVECOT_IMAP_CRAM
  }
  inet_listener imaps-login {
    port = $DOVECOT_IMAPS_LOGIN
    ssl = yes
  }
}
CONF
}

imap_server_ports() {
  echo "$DOVECOT_IMAP_DIRECT $DOVECOT_IMAPS_DIRECT $DOVECOT_IMAP_STLS_LOGIN $DOVECOT_IMAPS_PLAIN" \
    "$DOVECOT_IMAP_STLS_CRAM $DOVECOT_IMAP_CRAM $DOVECOT_IMAPS_LOGIN"
}

imap_start() { :; }

# imap_expect_logins NAME LPORT METHOD TRANSPORT [MIN]: every login or
# failed-login line imap-login logged on LPORT (since the mark) names
# METHOD and TRANSPORT ("TLS" or "secured", i.e. plain on loopback), and
# there are at least MIN logins.
imap_expect_logins() {
  local name=$1 lport=$2 method=$3 transport=$4 min=${5:-1}
  local lines logins wrong
  lines=$(dovecot_log | grep -F ", lport=$lport," | grep -F 'imap-login: ' | grep -F ' method=' || true)
  logins=$(dovecot_login_lines imap-login "$lport" | grep -c . || true)
  wrong=$(printf '%s\n' "$lines" | grep . | grep -v -F -e "method=$method," || true)
  if [ -n "$wrong" ]; then
    fail "$name/dovecot log: only method=$method on port $lport" "$(printf '%s\n' "$wrong" | head -n 3)"
  elif [ "$logins" -lt "$min" ]; then
    fail "$name/dovecot log: only method=$method on port $lport" "$logins login lines, want at least $min"
  else
    pass "$name/dovecot log: only method=$method on port $lport" "$logins logins"
  fi
  # A failed login's line reads "TLS: Disconnected" where a login says "TLS".
  wrong=$(printf '%s\n' "$lines" | grep . | grep -v -E -e ", ${transport}[,:]" || true)
  if [ -n "$wrong" ] || [ "$logins" -lt "$min" ]; then
    fail "$name/dovecot log: every login on port $lport was $transport" "$(printf '%s\n' "$wrong" | head -n 3)"
  else
    pass "$name/dovecot log: every login on port $lport was $transport"
  fi
}

# imap_expect_login_line NAME LPORT PATTERN...: at least one imap-login
# login on LPORT whose line contains every PATTERN (fixed strings).
imap_expect_login_line() {
  local name=$1 lport=$2 lines pattern
  shift 2
  lines=$(dovecot_login_lines imap-login "$lport")
  for pattern in "$@"; do
    lines=$(printf '%s\n' "$lines" | grep -F -e "$pattern" || true)
  done
  if [ -n "$lines" ]; then
    pass "$name" "$(printf '%s\n' "$lines" | grep -c .) login lines"
  else
    fail "$name" "no imap-login login line on port $lport contains all of: $*"
  fi
}

# imap_driver NAME SUBCOMMAND ARG...: imap_check.py with the arguments both
# subcommands take; records whether it ran to completion.
imap_driver() {
  local name=$1 rc=0
  shift
  python3 "$HERE/imap_check.py" "$@" --results "$RESULTS" --expected "$POP3_EXPECTED" \
    --user "$POP3_USER" --idle-user "$SMTP_USER" --idle-rcpt "$SMTP_RCPT" --tmp "$RUN_DIR" || rc=$?
  driver_status "$name" "$rc"
}

imap_baseline() {
  section "IMAP baseline: Dovecot directly"
  local spec name security auth portvar method transport started=$SECONDS route_ports=()
  for spec in "${IMAP_ROUTES[@]}"; do
    read -r name security auth portvar _ <<<"$spec"
    route_ports+=(--route-port "$name:$security:$auth:${!portvar}")
  done
  imap_driver "imap/baseline driver ran to completion" baseline \
    --plain-port "$DOVECOT_IMAP_DIRECT" --imaps-port "$DOVECOT_IMAPS_DIRECT" --ca "$PKI_DIR/ca.pem" \
    --pop3-port "$DOVECOT_POP3_DIRECT" --smtp-port "$PF_DIRECT" --received-with ESMTPA "${route_ports[@]}"
  local d=$DOVECOT_IMAP_DIRECT
  imap_expect_login_line "imap/baseline/dovecot log: LOGIN and AUTHENTICATE PLAIN show method=PLAIN" \
    "$d" "method=PLAIN," ", secured,"
  imap_expect_login_line "imap/baseline/dovecot log: AUTHENTICATE LOGIN shows method=LOGIN" "$d" "method=LOGIN,"
  imap_expect_login_line "imap/baseline/dovecot log: AUTHENTICATE CRAM-MD5 shows method=CRAM-MD5" "$d" "method=CRAM-MD5,"
  imap_expect_login_line "imap/baseline/dovecot log: STARTTLS + LOGIN shows method=PLAIN, TLS" "$d" "method=PLAIN," ", TLS,"
  imap_expect_login_line "imap/baseline/dovecot log: IMAPS + LOGIN shows method=PLAIN, TLS" \
    "$DOVECOT_IMAPS_DIRECT" "method=PLAIN," ", TLS,"
  # The route ports, each logged in to once the way its route will.
  for spec in "${IMAP_ROUTES[@]}"; do
    read -r name _ _ portvar method transport <<<"$spec"
    imap_expect_logins "imap/baseline/$name port" "${!portvar}" "$method" "$transport"
  done
  log "IMAP baseline took $((SECONDS - started))s"
}

imap_describe() {
  cat <<INFO
IMAP (Dovecot $(dovecot --version | cut -d' ' -f1) imap, log: $DOVECOT_LOG)
  user $POP3_USER / $POP3_PASSWORD    (the seeded messages; APPEND goes to new mailboxes that are deleted again)
  user $SMTP_USER / $SMTP_PASSWORD    (IDLE; mail to $SMTP_RCPT through Postfix)
  plain + STARTTLS, for direct use:  127.0.0.1:$DOVECOT_IMAP_DIRECT  (AUTH=PLAIN LOGIN CRAM-MD5, LOGIN; no LOGINDISABLED on loopback)
  IMAPS, for direct use:             127.0.0.1:$DOVECOT_IMAPS_DIRECT
  imap-starttls-login route uses:    127.0.0.1:$DOVECOT_IMAP_STLS_LOGIN  (STARTTLS, LOGIN)
  imap-imaps-plain route uses:       127.0.0.1:$DOVECOT_IMAPS_PLAIN  (IMAPS, AUTHENTICATE PLAIN)
  imap-starttls-cram route uses:     127.0.0.1:$DOVECOT_IMAP_STLS_CRAM  (STARTTLS, AUTHENTICATE CRAM-MD5)
  imap-cram route uses:              127.0.0.1:$DOVECOT_IMAP_CRAM  (plain, AUTHENTICATE CRAM-MD5)
  imap-imaps-login route uses:       127.0.0.1:$DOVECOT_IMAPS_LOGIN  (IMAPS, LOGIN)
  Each port shows up as lport=PORT in Dovecot's imap-login lines, with method= (LOGIN logs as method=PLAIN).
  Try: curl --user $POP3_USER:'$POP3_PASSWORD' 'imap://127.0.0.1:$DOVECOT_IMAP_DIRECT/INBOX;UID=1'
INFO
}

imap_routes() {
  local spec name security auth portvar ports i=0
  [ -n "${DOVECOT_IMAP_DIRECT:-}" ] \
    || die "INTEROP_IMAP=1, but the servers were started without it: Dovecot has no IMAP listeners to attach to"
  read -r -a ports <<<"$(free_ports ${#IMAP_ROUTES[@]})"
  IMAP_LISTEN=()
  for spec in "${IMAP_ROUTES[@]}"; do
    read -r name security auth portvar _ <<<"$spec"
    # postern refuses a clear-text password upstream without
    # allow_plaintext_password: true; the suite has no such route.
    [ "$security" != none ] || [ "$auth" != login ] \
      || die "imap route $name: auth: login over security: none is not a combination this suite emits"
    IMAP_LISTEN+=("${ports[i]}")
    printf '  - name: %s\n' "$name"
    printf '    protocol: imap\n'
    printf '    listen: 127.0.0.1:%s\n' "${ports[i]}"
    printf '    upstream: { address: 127.0.0.1:%s, security: %s, auth: %s' "${!portvar}" "$security" "$auth"
    if [ "$security" != none ]; then
      printf ', ca: %s, server_name: localhost' "$PKI_DIR/ca.pem"
    fi
    printf ' }\n'
    i=$((i + 1))
  done
}

imap_listen_ports() { echo "${IMAP_LISTEN[*]}"; }

imap_checks() {
  local spec name portvar method transport i=0 started=$SECONDS t
  local pop3_route smtp_route smtp_with
  read -r pop3_route _ <<<"${POP3_ROUTES[0]}"
  read -r smtp_route _ _ _ _ _ _ smtp_with <<<"${SMTP_ROUTES[0]}"
  for spec in "${IMAP_ROUTES[@]}"; do
    read -r name _ _ portvar method transport <<<"$spec"
    section "IMAP route $name: 127.0.0.1:${IMAP_LISTEN[i]} -> Dovecot 127.0.0.1:${!portvar}"
    t=$SECONDS
    imap_driver "imap/$name/driver ran to completion" route --route "$name" \
      --via-port "${IMAP_LISTEN[i]}" --direct-port "$DOVECOT_IMAP_DIRECT" \
      --pop3-port "${POP3_LISTEN[0]}" --pop3-route "$pop3_route" \
      --smtp-port "${SMTP_LISTEN[0]}" --smtp-route "$smtp_route" --received-with "$smtp_with"
    imap_expect_logins "imap/$name" "${!portvar}" "$method" "$transport"
    imap_expect_login_line "imap/$name/dovecot log: $POP3_USER logged in on port ${!portvar}" \
      "${!portvar}" "user=<$POP3_USER>," "method=$method,"
    imap_expect_login_line "imap/$name/dovecot log: $SMTP_USER (IDLE) logged in on port ${!portvar}" \
      "${!portvar}" "user=<$SMTP_USER>," "method=$method,"
    log "IMAP route $name took $((SECONDS - t))s"
    i=$((i + 1))
  done
  log "IMAP route checks took $((SECONDS - started))s"
}

imap_secrets() {
  local user pw
  for user in "$POP3_USER:$POP3_PASSWORD" "$SMTP_USER:$SMTP_PASSWORD"; do
    pw=${user#*:} user=${user%%:*}
    printf '%s\n' "$pw"
    # AUTHENTICATE PLAIN (curl, SASL-IR) and AUTHENTICATE LOGIN forms.
    printf '\0%s\0%s' "$user" "$pw" | base64 -w0; echo
    printf '%s' "$pw" | base64 -w0; echo
  done
}
