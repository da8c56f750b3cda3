# shellcheck shell=bash
# state_set assigns the variables it is given by name:
# shellcheck disable=SC2153
# SMTP suite: a private Postfix with Dovecot as its SASL server, delivering
# only into the Maildirs Dovecot serves; one postern SMTP route per upstream
# mode in front of it; Python smtplib, a raw socket, swaks and curl as the
# legacy clients. Every message sent through a route is fetched back
# through a postern POP3 route and compared byte for byte.
#
# Needs the pop3 suite before it in SUITES: Dovecot's POP3 service and the
# postern POP3 routes it sets up are how mail is read back. Functions: see
# the header of suites/pop3.sh.
#
# Postfix gets one smtpd port per route (and one for direct reference
# sessions), each logging as postfix/NAME, so that its log tells the routes
# apart: sasl_method= for the mechanism postern used, "TLS connection
# established" for the transport.

SMTP_ROUTES=(
  # name         security  auth      postfix-port-var  syslog_name  method    tls  received-with
  "pf-cram       none      cram-md5  PF_CRAM           cram         CRAM-MD5  no   ESMTPA"
  "pf-sub-plain  starttls  plain     PF_SUB_PLAIN      sub-plain    PLAIN     yes  ESMTPSA"
  "pf-sub-login  starttls  login     PF_SUB_LOGIN      sub-login    LOGIN     yes  ESMTPSA"
  "pf-smtps      tls       login     PF_SMTPS          smtps        LOGIN     yes  ESMTPSA"
)

smtp_packages() {
  postfix_packages
  apt_need swaks:swaks curl:curl
}

smtp_prepare() {
  local ports
  [[ " ${SUITES[*]} " == *" pop3 "*"smtp "* ]] \
    || die "the smtp suite reads mail back through the pop3 suite's routes: SUITES must list pop3 before smtp"
  read -r -a ports <<<"$(free_ports 5)"
  state_set PF_DIRECT "${ports[0]}"
  state_set PF_CRAM "${ports[1]}"
  state_set PF_SUB_PLAIN "${ports[2]}"
  state_set PF_SUB_LOGIN "${ports[3]}"
  state_set PF_SMTPS "${ports[4]}"

  # carol logs in to Postfix (through Dovecot's SASL) and receives the mail
  # sent to carol@interop.test; no other suite touches her Maildir.
  state_set SMTP_USER carol
  state_set SMTP_PASSWORD 'S3nd-m41l.through~postern'
  state_set SMTP_MAILDIR "$(dovecot_add_user "$SMTP_USER" "$SMTP_PASSWORD")"

  postfix_init interop.test
  state_set SMTP_RCPT "$SMTP_USER@$PF_DOMAIN"
  postfix_add_mailbox "$SMTP_USER"
  # Reference port: AUTH (all of Dovecot's mechanisms) with or without TLS.
  postfix_add_smtpd direct "$PF_DIRECT" \
    -o smtpd_sasl_auth_enable=yes -o smtpd_tls_security_level=may
  # CRAM-MD5 route's port: no TLS, and plaintext mechanisms switched off,
  # so a login here can only be CRAM-MD5.
  postfix_add_smtpd cram "$PF_CRAM" \
    -o smtpd_sasl_auth_enable=yes -o smtpd_tls_security_level=none \
    -o smtpd_sasl_security_options=noanonymous,noplaintext
  # Submission, one port per route: STARTTLS required, AUTH only after it.
  local name port
  for name in sub-plain:"$PF_SUB_PLAIN" sub-login:"$PF_SUB_LOGIN"; do
    port=${name#*:} name=${name%%:*}
    postfix_add_smtpd "$name" "$port" \
      -o smtpd_sasl_auth_enable=yes -o smtpd_tls_security_level=encrypt \
      -o smtpd_tls_auth_only=yes
  done
  # SMTPS: implicit TLS.
  postfix_add_smtpd smtps "$PF_SMTPS" \
    -o smtpd_sasl_auth_enable=yes -o smtpd_tls_wrappermode=yes \
    -o smtpd_tls_security_level=encrypt
  postfix_prepare_queue
  postfix_dovecot_auth_fragment
}

# Postfix, not Dovecot, listens on this suite's ports.
smtp_server_ports() { echo; }

smtp_start() {
  postfix_start "$PF_DIRECT" "$PF_CRAM" "$PF_SUB_PLAIN" "$PF_SUB_LOGIN" "$PF_SMTPS"
}

# smtp_postfix_log NAME SYSLOG-NAME METHOD TLS MIN [ARG...]: Postfix's log
# (since the mark) for that port: every SASL login (accepted or failed) used
# METHOD, at least MIN accepted, each in a session with TLS (yes) or without
# (no). ARGs go to smtp_check.py postfix-log.
smtp_postfix_log() {
  local rc=0
  python3 "$HERE/smtp_check.py" postfix-log --results "$RESULTS" --name "$1" \
    --log "$PF_LOG" --offset "$PF_LOG_MARK" --syslog-name "$2" --method "$3" --tls "$4" --min "$5" \
    "${@:6}" || rc=$?
  [ "$rc" -eq 0 ] || [ "$rc" -eq 3 ] || fail "$1/postfix log check ran" "exit status $rc"
}

smtp_baseline() {
  section "SMTP baseline: Postfix directly"
  local rc=0 started=$SECONDS
  postfix_log_mark
  python3 "$HERE/smtp_check.py" baseline --results "$RESULTS" --user "$SMTP_USER" \
    --rcpt "$SMTP_RCPT" --maildir "$SMTP_MAILDIR" --ca "$PKI_DIR/ca.pem" \
    --direct-port "$PF_DIRECT" --cram-port "$PF_CRAM" \
    --submission-ports "$PF_SUB_PLAIN" "$PF_SUB_LOGIN" --smtps-port "$PF_SMTPS" \
    --postfix-queue "$PF_QUEUE" || rc=$?
  driver_status "postfix/baseline driver ran to completion" "$rc"
  smtp_postfix_log "postfix/log: CRAM-MD5 port" postfix/cram CRAM-MD5 no 1
  smtp_postfix_log "postfix/log: submission port" postfix/sub-plain PLAIN yes 1
  smtp_postfix_log "postfix/log: SMTPS port" postfix/smtps LOGIN yes 1
  log "SMTP baseline took $((SECONDS - started))s"
}

smtp_describe() {
  cat <<INFO
SMTP (Postfix $(postconf -d -h mail_version), config $PF_CONF, log: $PF_LOG)
  user $SMTP_USER / $SMTP_PASSWORD    (SASL through Dovecot; mail to $SMTP_RCPT lands in $SMTP_MAILDIR)
  AUTH with or without STARTTLS:   127.0.0.1:$PF_DIRECT   (postfix/direct)
  AUTH CRAM-MD5 only, no TLS:      127.0.0.1:$PF_CRAM   (postfix/cram; pf-cram route)
  submission, STARTTLS required:   127.0.0.1:$PF_SUB_PLAIN   (postfix/sub-plain; pf-sub-plain route)
  submission, STARTTLS required:   127.0.0.1:$PF_SUB_LOGIN   (postfix/sub-login; pf-sub-login route)
  SMTPS:                           127.0.0.1:$PF_SMTPS   (postfix/smtps; pf-smtps route)
  Relaying needs SASL; only $PF_DOMAIN is delivered (Maildir), everything else bounces.
INFO
}

smtp_routes() {
  local spec name security auth portvar ports i=0
  read -r -a ports <<<"$(free_ports ${#SMTP_ROUTES[@]})"
  SMTP_LISTEN=()
  for spec in "${SMTP_ROUTES[@]}"; do
    read -r name security auth portvar _ <<<"$spec"
    SMTP_LISTEN+=("${ports[i]}")
    printf '  - name: %s\n' "$name"
    printf '    protocol: smtp\n'
    printf '    listen: 127.0.0.1:%s\n' "${ports[i]}"
    printf '    upstream: { address: 127.0.0.1:%s, security: %s, auth: %s' "${!portvar}" "$security" "$auth"
    if [ "$security" != none ]; then
      printf ', ca: %s, server_name: localhost' "$PKI_DIR/ca.pem"
    fi
    printf ' }\n'
    i=$((i + 1))
  done
}

smtp_listen_ports() { echo "${SMTP_LISTEN[*]}"; }

smtp_checks() {
  local spec name portvar syslog method tls with i=0 rc started=$SECONDS
  postfix_log_mark
  for spec in "${SMTP_ROUTES[@]}"; do
    read -r name _ _ portvar syslog method tls with <<<"$spec"
    section "SMTP route $name: 127.0.0.1:${SMTP_LISTEN[i]} -> Postfix 127.0.0.1:${!portvar}"
    rc=0
    python3 "$HERE/smtp_check.py" route --results "$RESULTS" --route "$name" \
      --via-port "${SMTP_LISTEN[i]}" --user "$SMTP_USER" --rcpt "$SMTP_RCPT" \
      --maildir "$SMTP_MAILDIR" --received-with "$with" --postfix-queue "$PF_QUEUE" \
      --pop3-port "${POP3_LISTEN[0]}" --pop3-route "$(read -r n _ <<<"${POP3_ROUTES[0]}"; echo "$n")" \
      --tmp "$RUN_DIR" || rc=$?
    driver_status "smtp/$name/driver ran to completion" "$rc"
    smtp_postfix_log "smtp/$name/postfix log" "postfix/$syslog" "$method" "$tls" 1 --lost-in-data 1
    i=$((i + 1))
  done
  log "SMTP route checks took $((SECONDS - started))s"
}

smtp_secrets() {
  printf '%s\n' "$SMTP_PASSWORD"
  # What clients send postern for AUTH PLAIN and AUTH LOGIN.
  printf '\0%s\0%s' "$SMTP_USER" "$SMTP_PASSWORD" | base64 -w0; echo
  printf '%s' "$SMTP_PASSWORD" | base64 -w0; echo
}
