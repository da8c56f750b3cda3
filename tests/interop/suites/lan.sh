# shellcheck shell=bash
# state_set assigns the variables it is given by name:
# shellcheck disable=SC2153
# LAN-shared relay suite: postern's listen-side features against the real
# Dovecot and Postfix, driven by real clients (lan_check.py: poplib,
# smtplib, raw sockets; fetchmail, swaks, curl, openssl s_client).
#
#   TLS listeners    a POP3S, a POP3 STLS, an SMTPS and an SMTP STARTTLS
#                    listener (the interop test CA's localhost/127.0.0.1
#                    certificate), logins refused before TLS, mail sent over
#                    them delivered and fetched back over them byte for byte;
#                    STLS/STARTTLS with a command pipelined behind it closes
#                    the session (CVE-2011-0411).
#   stored accounts  a POP3 and an SMTP route with `credentials: accounts`
#                    (passthrough: false): the local user "scanner" logs in
#                    to postern with APOP (fetchmail, poplib), CRAM-MD5
#                    (swaks, smtplib, raw POP3), USER/PASS or AUTH PLAIN
#                    with its LOCAL password; postern logs in upstream as
#                    the stored user with the route's mechanism (Dovecot
#                    method=CRAM-MD5, Postfix sasl_method=LOGIN inside
#                    STARTTLS). A device account bound to 127.0.0.9 sends
#                    mail with no AUTH. Wrong local passwords and names
#                    that are not accounts are refused without any login
#                    attempt reaching Dovecot or Postfix.
#
# Needs pop3 and smtp before it in SUITES (Dovecot's POP3 service; the
# Postfix instance, its SASL socket and the interop.test domain). Each
# upstream route gets its own Dovecot port / Postfix smtpd, so the servers'
# logs tell the routes apart. Functions: see the header of suites/pop3.sh.

LAN_POP3_ROUTES=(
  # name               listen    dovecot-port-var     method    transport
  "lan-pop3s           tls       DOVECOT_LAN_POP3S    APOP      secured"
  "lan-pop3-stls       starttls  DOVECOT_LAN_STLS     PLAIN     TLS"
  "lan-pop3-accounts   none      DOVECOT_LAN_ACCT     CRAM-MD5  secured"
)
LAN_SMTP_ROUTES=(
  # name               listen    postfix-port-var  syslog_name  method    tls  received-with
  "lan-smtps           tls       PF_LAN_SMTPS      lan-tls      CRAM-MD5  no   ESMTPA"
  "lan-smtp-starttls   starttls  PF_LAN_STARTTLS   lan-stls     PLAIN     yes  ESMTPSA"
  "lan-smtp-accounts   none      PF_LAN_ACCT       lan-acct     LOGIN     yes  ESMTPSA"
)

lan_packages() {
  # swaks --tls needs Net::SSLeay (without it: "TLS not available").
  apt_need fetchmail:fetchmail swaks:swaks curl:curl openssl:openssl Net/SSLeay.pm:libnet-ssleay-perl
}

lan_prepare() {
  local ports
  [[ " ${SUITES[*]} " == *" pop3 "*"smtp "*"lan "* ]] \
    || die "the lan suite uses the pop3 suite's Dovecot and the smtp suite's Postfix: SUITES must list pop3, smtp, then lan"
  read -r -a ports <<<"$(free_ports 6)"
  state_set DOVECOT_LAN_POP3S "${ports[0]}"
  state_set DOVECOT_LAN_STLS "${ports[1]}"
  state_set DOVECOT_LAN_ACCT "${ports[2]}"
  state_set PF_LAN_SMTPS "${ports[3]}"
  state_set PF_LAN_STARTTLS "${ports[4]}"
  state_set PF_LAN_ACCT "${ports[5]}"

  # erin: a LAN user who logs in to postern with her own (upstream) login
  # on the TLS listeners. office: the stored upstream login behind the local
  # account "scanner". printer: the stored login of the device at 127.0.0.9.
  state_set LAN_USER erin
  state_set LAN_PASSWORD 'Erin+l4n~tls/pass'
  state_set LAN_MAILDIR "$(dovecot_add_user "$LAN_USER" "$LAN_PASSWORD")"
  state_set LAN_OFFICE_USER office
  state_set LAN_OFFICE_PASSWORD 'Off1ce=upstream.only'
  state_set LAN_OFFICE_MAILDIR "$(dovecot_add_user "$LAN_OFFICE_USER" "$LAN_OFFICE_PASSWORD")"
  state_set LAN_PRINTER_USER printer
  state_set LAN_PRINTER_PASSWORD 'Pr1nter%device!up'
  dovecot_add_user "$LAN_PRINTER_USER" "$LAN_PRINTER_PASSWORD" >/dev/null
  # The local account: its password is only ever checked by postern.
  state_set LAN_SCANNER_USER scanner
  state_set LAN_SCANNER_PASSWORD 'sc4nner-local#only'
  # Password files (one trailing newline, which postern strips).
  state_set LAN_SECRETS "$WORK/lan-secrets"
  mkdir -p "$LAN_SECRETS"
  chmod 0700 "$LAN_SECRETS"
  printf '%s\n' "$LAN_OFFICE_PASSWORD" >"$LAN_SECRETS/office_pw"
  printf '%s\n' "$LAN_SCANNER_PASSWORD" >"$LAN_SECRETS/scanner_pw"
  chmod 0600 "$LAN_SECRETS/office_pw" "$LAN_SECRETS/scanner_pw"

  dovecot_conf_fragment lan-pop3 <<CONF
service pop3-login {
  inet_listener lan-pop3s-up {
    port = $DOVECOT_LAN_POP3S
  }
  inet_listener lan-stls-up {
    port = $DOVECOT_LAN_STLS
  }
  inet_listener lan-accounts-up {
    port = $DOVECOT_LAN_ACCT
  }
}
CONF

  state_set LAN_RCPT "$LAN_USER@$PF_DOMAIN"
  state_set LAN_OFFICE_RCPT "$LAN_OFFICE_USER@$PF_DOMAIN"
  postfix_add_mailbox "$LAN_USER"
  postfix_add_mailbox "$LAN_OFFICE_USER"
  # lan-smtps goes on to a CRAM-MD5-only port (no TLS); lan-smtp-starttls
  # and lan-smtp-accounts to submission ports that need STARTTLS first.
  postfix_add_smtpd lan-tls "$PF_LAN_SMTPS" \
    -o smtpd_sasl_auth_enable=yes -o smtpd_tls_security_level=none \
    -o smtpd_sasl_security_options=noanonymous,noplaintext
  postfix_add_smtpd lan-stls "$PF_LAN_STARTTLS" \
    -o smtpd_sasl_auth_enable=yes -o smtpd_tls_security_level=encrypt -o smtpd_tls_auth_only=yes
  postfix_add_smtpd lan-acct "$PF_LAN_ACCT" \
    -o smtpd_sasl_auth_enable=yes -o smtpd_tls_security_level=encrypt -o smtpd_tls_auth_only=yes
  # The smtp suite wrote Postfix's config already: again, with these ports.
  postfix_prepare_queue
}

lan_server_ports() { echo "$DOVECOT_LAN_POP3S $DOVECOT_LAN_STLS $DOVECOT_LAN_ACCT"; }

lan_start() {
  wait_ports 20 "$PF_PID" "$PF_LAN_SMTPS" "$PF_LAN_STARTTLS" "$PF_LAN_ACCT" \
    || die "Postfix did not open the lan suite's ports"
}

lan_baseline() {
  section "LAN baseline: the stored upstream logins work directly"
  local rc=0
  python3 "$HERE/lan_check.py" baseline --results "$RESULTS" \
    --dovecot-port "$DOVECOT_POP3_DIRECT" --postfix-port "$PF_DIRECT" \
    --lan-user "$LAN_USER" --office-user "$LAN_OFFICE_USER" --printer-user "$LAN_PRINTER_USER" || rc=$?
  driver_status "lan/baseline driver ran to completion" "$rc"
}

lan_describe() {
  cat <<INFO
LAN suite (stored accounts, TLS listeners)
  user $LAN_USER / $LAN_PASSWORD    (TLS listener routes, passthrough; mail to $LAN_RCPT)
  user $LAN_OFFICE_USER / $LAN_OFFICE_PASSWORD    (upstream login of the local account $LAN_SCANNER_USER / $LAN_SCANNER_PASSWORD)
  user $LAN_PRINTER_USER / $LAN_PRINTER_PASSWORD    (upstream login of the device 127.0.0.9)
  Dovecot ports: lan-pop3s $DOVECOT_LAN_POP3S, lan-pop3-stls $DOVECOT_LAN_STLS, lan-pop3-accounts $DOVECOT_LAN_ACCT
  Postfix ports: postfix/lan-tls $PF_LAN_SMTPS (CRAM-MD5), postfix/lan-stls $PF_LAN_STARTTLS, postfix/lan-acct $PF_LAN_ACCT (STARTTLS)
INFO
}

lan_tls_listen() {
  printf '    listen: { address: 127.0.0.1:%s, security: %s, certificate: %s, key: %s }\n' \
    "$1" "$2" "$PKI_DIR/server.pem" "$PKI_DIR/server.key"
}

lan_routes() {
  local ports ca=", ca: $PKI_DIR/ca.pem, server_name: localhost"
  read -r -a ports <<<"$(free_ports 6)"
  LAN_LISTEN=("${ports[@]}")
  cat <<YAML
  - name: lan-pop3s
    protocol: pop3
$(lan_tls_listen "${ports[0]}" tls)
    upstream: { address: 127.0.0.1:$DOVECOT_LAN_POP3S, security: none, auth: apop }
  - name: lan-pop3-stls
    protocol: pop3
$(lan_tls_listen "${ports[1]}" starttls)
    upstream: { address: 127.0.0.1:$DOVECOT_LAN_STLS, security: starttls, auth: user$ca }
  - name: lan-pop3-accounts
    protocol: pop3
    listen: 127.0.0.1:${ports[2]}
    upstream: { address: 127.0.0.1:$DOVECOT_LAN_ACCT, security: none, auth: cram-md5 }
    credentials:
      passthrough: false
      accounts:
        - local_user: $LAN_SCANNER_USER
          local_password_env: LAN_SCANNER_PASSWORD
          upstream_user: $LAN_OFFICE_USER
          upstream_password_file: $LAN_SECRETS/office_pw
  - name: lan-smtps
    protocol: smtp
$(lan_tls_listen "${ports[3]}" tls)
    upstream: { address: 127.0.0.1:$PF_LAN_SMTPS, security: none, auth: cram-md5 }
  - name: lan-smtp-starttls
    protocol: smtp
$(lan_tls_listen "${ports[4]}" starttls)
    upstream: { address: 127.0.0.1:$PF_LAN_STARTTLS, security: starttls, auth: plain$ca }
  - name: lan-smtp-accounts
    protocol: smtp
    listen: 127.0.0.1:${ports[5]}
    upstream: { address: 127.0.0.1:$PF_LAN_ACCT, security: starttls, auth: login$ca }
    credentials:
      passthrough: false
      accounts:
        - local_user: $LAN_SCANNER_USER
          local_password_file: $LAN_SECRETS/scanner_pw
          upstream_user: $LAN_OFFICE_USER
          upstream_password_env: LAN_OFFICE_PASSWORD
        - sources: [127.0.0.9/32]
          upstream_user: $LAN_PRINTER_USER
          upstream_password_env: LAN_PRINTER_PASSWORD
YAML
}

lan_listen_ports() { echo "${LAN_LISTEN[*]}"; }

# lan_smtp_field ROUTE N: column N (1-based) of ROUTE's LAN_SMTP_ROUTES row.
lan_smtp_field() {
  local spec fields
  for spec in "${LAN_SMTP_ROUTES[@]}"; do
    read -r -a fields <<<"$spec"
    [ "${fields[0]}" = "$1" ] && { echo "${fields[$2 - 1]}"; return; }
  done
  die "lan_smtp_field: no route $1"
}

# lan_driver NAME SUBCOMMAND ARG...: run lan_check.py, record whether it
# ran to completion.
lan_driver() {
  local name=$1 rc=0
  shift
  python3 "$HERE/lan_check.py" "$@" --results "$RESULTS" || rc=$?
  driver_status "$name" "$rc"
}

lan_checks() {
  local started=$SECONDS t
  local pop3s=${LAN_LISTEN[0]} stls=${LAN_LISTEN[1]} pacct=${LAN_LISTEN[2]}
  local smtps=${LAN_LISTEN[3]} starttls=${LAN_LISTEN[4]} sacct=${LAN_LISTEN[5]}
  postfix_log_mark

  t=$SECONDS
  section "LAN: TLS listeners (POP3S $pop3s, STLS $stls, SMTPS $smtps, STARTTLS $starttls)"
  lan_driver "lan/tls driver ran to completion" tls --tmp "$RUN_DIR" --ca "$PKI_DIR/ca.pem" \
    --pop3s-port "$pop3s" --pop3-stls-port "$stls" --smtps-port "$smtps" --smtp-starttls-port "$starttls" \
    --smtps-received-with "$(lan_smtp_field lan-smtps 7)" \
    --starttls-received-with "$(lan_smtp_field lan-smtp-starttls 7)" \
    --user "$LAN_USER" --rcpt "$LAN_RCPT" --maildir "$LAN_MAILDIR" --postfix-queue "$PF_QUEUE"
  log "TLS listener checks took $((SECONDS - t))s"

  t=$SECONDS
  section "LAN: commands pipelined behind STLS / STARTTLS"
  lan_driver "lan/inject driver ran to completion" inject --pop3-stls-port "$stls" --smtp-starttls-port "$starttls"
  log "injection checks took $((SECONDS - t))s"

  t=$SECONDS
  section "LAN: stored accounts (POP3 $pacct -> Dovecot $DOVECOT_LAN_ACCT, SMTP $sacct -> Postfix $PF_LAN_ACCT)"
  lan_driver "lan/accounts driver ran to completion" accounts --tmp "$RUN_DIR" \
    --pop3-port "$pacct" --smtp-port "$sacct" --rcpt "$LAN_OFFICE_RCPT" --maildir "$LAN_OFFICE_MAILDIR" \
    --received-with "$(lan_smtp_field lan-smtp-accounts 7)" \
    --postfix-queue "$PF_QUEUE" --postfix-log "$PF_LOG" --postfix-syslog-name postfix/lan-acct \
    --dovecot-log "$DOVECOT_LOG" --dovecot-lport "$DOVECOT_LAN_ACCT" \
    --other-user "$LAN_USER" --office-user "$LAN_OFFICE_USER" --printer-user "$LAN_PRINTER_USER" \
    --scanner-user "$LAN_SCANNER_USER"
  log "stored account checks took $((SECONDS - t))s"

  # What the servers saw, per upstream port.
  local spec name portvar method transport syslog tls
  for spec in "${LAN_POP3_ROUTES[@]}"; do
    read -r name _ portvar method transport <<<"$spec"
    pop3_expect_logins "lan/$name" "${!portvar}" "$method" "$transport"
  done
  pop3_expect_login_line "lan/lan-pop3-accounts/dovecot log: the stored user $LAN_OFFICE_USER logged in with CRAM-MD5" \
    "$DOVECOT_LAN_ACCT" "user=<$LAN_OFFICE_USER>," "method=CRAM-MD5,"
  lan_expect_only_user "lan/lan-pop3-accounts/dovecot log: no login on port $DOVECOT_LAN_ACCT as anyone but $LAN_OFFICE_USER" \
    "$DOVECOT_LAN_ACCT" "$LAN_OFFICE_USER"
  for spec in "${LAN_SMTP_ROUTES[@]}"; do
    read -r name _ _ syslog method tls _ <<<"$spec"
    smtp_postfix_log "lan/$name/postfix log" "postfix/$syslog" "$method" "$tls" 1
  done
  log "LAN suite took $((SECONDS - started))s"
}

# lan_expect_only_user NAME LPORT USER: every Dovecot line on LPORT that
# names a user names USER (no passthrough of another name, no attempt as
# the local name).
lan_expect_only_user() {
  local name=$1 lport=$2 user=$3 wrong
  wrong=$(dovecot_log | grep -F ", lport=$lport," | grep -F 'pop3-login: ' | grep -E 'user=<[^>]+>' |
    grep -v -F "user=<$user>," || true)
  if [ -z "$wrong" ]; then
    pass "$name"
  else
    fail "$name" "$(printf '%s\n' "$wrong" | head -n 3)"
  fi
}

lan_secrets() {
  local pw
  for pw in "$LAN_PASSWORD" "$LAN_OFFICE_PASSWORD" "$LAN_PRINTER_PASSWORD" "$LAN_SCANNER_PASSWORD"; do
    printf '%s\n' "$pw"
    printf '%s' "$pw" | base64 -w0; echo
  done
  printf '\0%s\0%s' "$LAN_USER" "$LAN_PASSWORD" | base64 -w0; echo
  printf '\0%s\0%s' "$LAN_SCANNER_USER" "$LAN_SCANNER_PASSWORD" | base64 -w0; echo
  printf '\0%s\0%s' "$LAN_OFFICE_USER" "$LAN_OFFICE_PASSWORD" | base64 -w0; echo
  printf '\0%s\0%s' "$LAN_PRINTER_USER" "$LAN_PRINTER_PASSWORD" | base64 -w0; echo
}
