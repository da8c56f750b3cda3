# shellcheck shell=bash
# state_set assigns the variables it is given by name:
# shellcheck disable=SC2153
# Cleanup and dump commands are stored unexpanded and run by eval at exit:
# shellcheck disable=SC2016
# OAuth2 suite (on by default; INTEROP_OAUTH=0 leaves it out): XOAUTH2 and OAUTHBEARER against
# the real servers, with a fake authorization server (fake_idp.py, HTTPS
# with the run's test CA) standing in for Microsoft's or Google's.
#
#   Dovecot   a second passdb, `driver = oauth2` with `mechanisms = xoauth2
#             oauthbearer` (so it only ever sees those two; the passwd-file
#             passdb before it keeps serving PLAIN, LOGIN, CRAM-MD5 and APOP
#             for the other suites exactly as before), validating tokens by
#             RFC 7662 introspection (`introspection_mode = post`) at the
#             fake IdP; `auth_mechanisms` gains `xoauth2 oauthbearer`.
#             POP3S listeners for this suite only: one for direct sessions
#             and one per postern route, so lport= tells them apart. The
#             OAuth user (dave) has a Maildir but no passwd-file entry: only
#             a token logs him in.
#   Postfix   a submission port (postfix/oauth: STARTTLS required, AUTH only
#             after it, SASL through Dovecot's auth socket, mechanisms
#             filtered to XOAUTH2 and OAUTHBEARER).
#   postern   four routes with OAuth2 accounts (see oauth_routes): POP3
#             XOAUTH2 and OAUTHBEARER (client credentials), POP3 XOAUTH2
#             with the device authorization grant (consent by `postern
#             oauth login` before postern starts), and an SMTP device route
#             (a client that sends no AUTH) through the submission port.
#
# Needs pop3 and smtp before it in SUITES (Dovecot's POP3 service, the
# Postfix instance with its SASL socket and the interop.test domain).
# Functions: see the header of suites/pop3.sh; this suite also defines
# oauth_toplevel (postern's state_dir / state_key_file) and
# oauth_before_start (the device-flow consent).

OAUTH_POP3_ROUTES=(
  # name                  auth         grant               client_id           dovecot-port-var           method
  "oauth-pop3-xoauth2     xoauth2      client_credentials  postern-interop     DOVECOT_OAUTH_XOAUTH2      XOAUTH2"
  "oauth-pop3-oauthbearer oauthbearer  client_credentials  postern-interop-ob  DOVECOT_OAUTH_OAUTHBEARER  OAUTHBEARER"
  "oauth-pop3-device      xoauth2      device_code         postern-device      DOVECOT_OAUTH_DEVICE       XOAUTH2"
)
OAUTH_SMTP_ROUTE=oauth-smtp-device
OAUTH_SMTP_CLIENT=postern-smtp
# The checks' own clients (never in postern's config).
OAUTH_DIRECT_CLIENT=interop-direct
OAUTH_LONG_CLIENT=interop-long
OAUTH_DEVICE_TEST_CLIENT=interop-device
OAUTH_TOKEN_LIFETIME=${INTEROP_OAUTH_TOKEN_LIFETIME:-3600}
OAUTH_PENDING_POLLS=2

oauth_packages() {
  apt_need /usr/lib/dovecot/pop3:dovecot-pop3d
}

# oauth_random: a random secret of the characters Azure client secrets use.
oauth_random() {
  python3 -c 'import secrets, string; a = string.ascii_letters + string.digits + "~._-"; print("".join(secrets.choice(a) for _ in range(40)))'
}

oauth_prepare() {
  local ports
  [[ " ${SUITES[*]} " == *" pop3 "*"smtp "*"oauth "* ]] \
    || die "the oauth suite uses the pop3 suite's Dovecot and the smtp suite's Postfix: SUITES must list pop3, smtp, then oauth"
  read -r -a ports <<<"$(free_ports 6)"
  state_set DOVECOT_OAUTH_POP3S "${ports[0]}"
  state_set DOVECOT_OAUTH_XOAUTH2 "${ports[1]}"
  state_set DOVECOT_OAUTH_OAUTHBEARER "${ports[2]}"
  state_set DOVECOT_OAUTH_DEVICE "${ports[3]}"
  state_set PF_OAUTH "${ports[4]}"
  state_set OAUTH_IDP_PORT "${ports[5]}"

  state_set OAUTH_DIR "$WORK/oauth"
  state_set OAUTH_IDP_STATE "$OAUTH_DIR/idp-state"
  state_set OAUTH_IDP_LOG "$OAUTH_DIR/idp.log"
  mkdir -p "$OAUTH_DIR"
  chmod 0755 "$OAUTH_DIR"

  # dave: the OAuth user. Every token the IdP issues is for him; he has no
  # password anywhere (the passwd-file passdb does not know him).
  state_set OAUTH_USER dave
  state_set OAUTH_MAILDIR "$(dovecot_add_mailbox "$OAUTH_USER")"
  state_set OAUTH_EXPECTED "$WORK/oauth-expected"
  python3 "$HERE/seed_maildir.py" --maildir "$OAUTH_MAILDIR" --expected "$OAUTH_EXPECTED" \
    --uid "$DOVECOT_MAIL_UID" >&2
  # postern's clients share one secret (one client_secret_file); the
  # checks' own clients another; the local password is what postern's
  # clients type.
  state_set OAUTH_CLIENT_SECRET "$(oauth_random)"
  state_set OAUTH_DIRECT_SECRET "$(oauth_random)"
  state_set OAUTH_LOCAL_PASSWORD 'd4ve-l0cal~only!pw'
  (
    umask 077
    python3 - "$OAUTH_DIR/clients.json" "$OAUTH_USER" <<PY
import json, sys
user = sys.argv[2]
clients = {
    "postern-interop": {"secret": "$OAUTH_CLIENT_SECRET", "user": user},
    "postern-interop-ob": {"secret": "$OAUTH_CLIENT_SECRET", "user": user},
    "$OAUTH_SMTP_CLIENT": {"secret": "$OAUTH_CLIENT_SECRET", "user": user},
    "postern-device": {"secret": None},
    "$OAUTH_DIRECT_CLIENT": {"secret": "$OAUTH_DIRECT_SECRET", "user": user},
    "$OAUTH_LONG_CLIENT": {"secret": "$OAUTH_DIRECT_SECRET", "user": user, "token_length": 2600},
    "$OAUTH_DEVICE_TEST_CLIENT": {"secret": None},
}
json.dump(clients, open(sys.argv[1], "w"), indent=1)
PY
  )

  # Dovecot: the oauth2 passdb (its args file is read by the auth process,
  # which runs as the dovecot user; it holds no secret).
  dovecot_add_auth_mechanisms xoauth2 oauthbearer
  cat >"$DOVECOT_DIR/oauth2.conf.ext" <<CONF
# Generated by tests/interop (suites/oauth.sh): token validation by RFC 7662
# introspection at the fake IdP. No tokeninfo_url: with none, Dovecot 2.3
# goes straight to introspection.
introspection_mode = post
introspection_url = https://127.0.0.1:$OAUTH_IDP_PORT/introspect
username_attribute = username
active_attribute = active
active_value = true
scope = mail
tls_ca_cert_file = $PKI_DIR/ca.pem
timeout_msecs = 10000
CONF
  chmod 0644 "$DOVECOT_DIR/oauth2.conf.ext"
  dovecot_conf_fragment oauth <<CONF
# Tokens (XOAUTH2, OAUTHBEARER) go to the oauth2 passdb and nowhere else;
# every other mechanism skips it. The passwd-file passdb (dovecot.conf)
# comes first and, for these two mechanisms, answers "unknown user" (dave
# has no entry), so the default result_failure = continue hands them on.
passdb {
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = $DOVECOT_DIR/oauth2.conf.ext
}
service pop3-login {
  inet_listener oauth-pop3s {
    port = $DOVECOT_OAUTH_POP3S
    ssl = yes
  }
  inet_listener oauth-pop3s-xoauth2 {
    port = $DOVECOT_OAUTH_XOAUTH2
    ssl = yes
  }
  inet_listener oauth-pop3s-oauthbearer {
    port = $DOVECOT_OAUTH_OAUTHBEARER
    ssl = yes
  }
  inet_listener oauth-pop3s-device {
    port = $DOVECOT_OAUTH_DEVICE
    ssl = yes
  }
}
CONF

  # Postfix: submission through Dovecot SASL, OAuth mechanisms only.
  state_set OAUTH_RCPT "$OAUTH_USER@$PF_DOMAIN"
  postfix_add_mailbox "$OAUTH_USER"
  postfix_add_smtpd oauth "$PF_OAUTH" \
    -o smtpd_sasl_auth_enable=yes -o smtpd_tls_security_level=encrypt -o smtpd_tls_auth_only=yes \
    -o smtpd_sasl_mechanism_filter=xoauth2,oauthbearer
  # The smtp suite wrote Postfix's config already: again, with this port.
  postfix_prepare_queue
}

oauth_server_ports() {
  echo "$DOVECOT_OAUTH_POP3S $DOVECOT_OAUTH_XOAUTH2 $DOVECOT_OAUTH_OAUTHBEARER $DOVECOT_OAUTH_DEVICE"
}

oauth_start() {
  wait_ports 20 "$PF_PID" "$PF_OAUTH" || die "Postfix did not open the oauth suite's port"
  log "starting the fake OAuth2 authorization server on https://127.0.0.1:$OAUTH_IDP_PORT (log: $OAUTH_IDP_LOG)"
  on_failure_dump 'dump_file "fake IdP log" "$OAUTH_IDP_LOG" 200'
  python3 "$HERE/fake_idp.py" --port "$OAUTH_IDP_PORT" \
    --cert "$PKI_DIR/server.pem" --key "$PKI_DIR/server.key" --clients "$OAUTH_DIR/clients.json" \
    --device-user "$OAUTH_USER" --lifetime "$OAUTH_TOKEN_LIFETIME" --pending-polls "$OAUTH_PENDING_POLLS" \
    --state-dir "$OAUTH_IDP_STATE" --log "$OAUTH_IDP_LOG" >"$OAUTH_DIR/idp.out" 2>&1 &
  state_set OAUTH_IDP_PID "$!"
  on_exit 'stop_pid "$OAUTH_IDP_PID" fake-idp 5 || true'
  if ! wait_ports 20 "$OAUTH_IDP_PID" "$OAUTH_IDP_PORT"; then
    dump_file "fake IdP output" "$OAUTH_DIR/idp.out"
    die "the fake IdP did not start"
  fi
}

# oauth_driver NAME SUBCOMMAND ARG...: oauth_check.py with the arguments
# every subcommand that talks to the servers takes.
oauth_driver() {
  local name=$1 rc=0
  shift
  python3 "$HERE/oauth_check.py" "$@" --results "$RESULTS" --ca "$PKI_DIR/ca.pem" \
    --idp-port "$OAUTH_IDP_PORT" --idp-state "$OAUTH_IDP_STATE" --user "$OAUTH_USER" \
    --client "$OAUTH_DIRECT_CLIENT" --dovecot-port "$DOVECOT_OAUTH_POP3S" --expected "$OAUTH_EXPECTED" \
    --maildir "$OAUTH_MAILDIR" --rcpt "$OAUTH_RCPT" || rc=$?
  driver_status "$name" "$rc"
}

# oauth_log NAME ARG...: oauth_check.py log (server log checks).
oauth_log() {
  local name=$1 rc=0
  shift
  python3 "$HERE/oauth_check.py" log --results "$RESULTS" --name "$name" "$@" || rc=$?
  [ "$rc" -eq 0 ] || [ "$rc" -eq 3 ] || fail "$name/log check ran" "exit status $rc"
}

# oauth_counts NAME BEFORE-FILE EXPECTATION...: the IdP's counters since
# the snapshot BEFORE-FILE.
oauth_counts() {
  local name=$1 before=$2 rc=0 args=() e
  shift 2
  for e in "$@"; do args+=(--expect "$e"); done
  python3 "$HERE/oauth_check.py" counts --results "$RESULTS" --name "$name" --before "$before" \
    --idp-state "$OAUTH_IDP_STATE" "${args[@]}" || rc=$?
  [ "$rc" -eq 0 ] || [ "$rc" -eq 3 ] || fail "$name/counts check ran" "exit status $rc"
}

oauth_counts_snapshot() { cp "$OAUTH_IDP_STATE/counts.json" "$1"; }

oauth_baseline() {
  section "OAuth baseline: fake IdP, Dovecot's oauth2 passdb and Postfix through it, directly"
  local started=$SECONDS dmark pmark
  dmark=$(stat -c %s "$DOVECOT_LOG")
  pmark=$(stat -c %s "$PF_LOG" 2>/dev/null || echo 0)
  oauth_driver "oauth/baseline driver ran to completion" baseline \
    --secret-env OAUTH_DIRECT_SECRET --postfix-port "$PF_OAUTH" --device-client "$OAUTH_DEVICE_TEST_CLIENT" \
    --long-client "$OAUTH_LONG_CLIENT" --lifetime "$OAUTH_TOKEN_LIFETIME" --pending-polls "$OAUTH_PENDING_POLLS"
  local p=$DOVECOT_OAUTH_POP3S
  pop3_expect_login_line "oauth/baseline/dovecot log: XOAUTH2 login on the OAuth port shows method=XOAUTH2, TLS" \
    "$p" "user=<$OAUTH_USER>," "method=XOAUTH2," ", TLS,"
  pop3_expect_login_line "oauth/baseline/dovecot log: OAUTHBEARER login on the OAuth port shows method=OAUTHBEARER, TLS" \
    "$p" "user=<$OAUTH_USER>," "method=OAUTHBEARER,"
  oauth_expect_failed_line "oauth/baseline/dovecot log: the wrong XOAUTH2 token is logged as an auth failure" \
    "$dmark" "$p" "method=XOAUTH2," "rip=127.0.0.41,"
  oauth_expect_failed_line "oauth/baseline/dovecot log: the wrong OAUTHBEARER token is logged as an auth failure" \
    "$dmark" "$p" "method=OAUTHBEARER," "rip=127.0.0.42,"
  oauth_postfix_methods "oauth/baseline/postfix log" "$pmark"
  log "OAuth baseline took $((SECONDS - started))s"
}

# oauth_expect_failed_line NAME OFFSET LPORT PATTERN...: Dovecot logged,
# since OFFSET, a failed login on LPORT whose line has every PATTERN.
oauth_expect_failed_line() {
  local name=$1 offset=$2 lport=$3 lines pattern
  shift 3
  lines=$(tail -c "+$((offset + 1))" "$DOVECOT_LOG" | grep -F "pop3-login: " | grep -F ", lport=$lport," |
    grep -F "auth failed" || true)
  for pattern in "$@"; do
    lines=$(printf '%s\n' "$lines" | grep -F -e "$pattern" || true)
  done
  if [ -n "$lines" ]; then
    pass "$name" "$(printf '%s\n' "$lines" | head -n 1 | sed 's/.*Info: //' | cut -c1-160)"
  else
    fail "$name" "no failed-login line on port $lport with all of: $*"
  fi
}

# oauth_postfix_methods NAME OFFSET: postfix/oauth logged accepted
# XOAUTH2 and OAUTHBEARER logins (sasl_method=) and failed ones for both.
oauth_postfix_methods() {
  local name=$1 offset=$2 text m
  text=$(tail -c "+$((offset + 1))" "$PF_LOG" | grep -F " postfix/oauth/smtpd[" || true)
  for m in XOAUTH2 OAUTHBEARER; do
    if printf '%s\n' "$text" | grep -q -F "sasl_method=$m,"; then
      pass "$name: sasl_method=$m (postfix/oauth)" "$(printf '%s\n' "$text" | grep -c -F "sasl_method=$m,") messages"
    else
      fail "$name: sasl_method=$m (postfix/oauth)" "no accepted $m login in the log"
    fi
    if printf '%s\n' "$text" | grep -q -F "SASL $m authentication failed"; then
      pass "$name: the wrong $m token logged as 'SASL $m authentication failed'"
    else
      fail "$name: the wrong $m token logged as 'SASL $m authentication failed'"
    fi
  done
}

oauth_describe() {
  cat <<INFO
OAuth2 (suites/oauth.sh; fake IdP log: $OAUTH_IDP_LOG, counters: $OAUTH_IDP_STATE/counts.json)
  fake IdP:                 https://127.0.0.1:$OAUTH_IDP_PORT  (/token, /devicecode, /introspect; CA $PKI_DIR/ca.pem)
  client for direct use:    $OAUTH_DIRECT_CLIENT / \$OAUTH_DIRECT_SECRET = $OAUTH_DIRECT_SECRET  (client_credentials; tokens for $OAUTH_USER)
  postern's clients:        postern-interop, postern-interop-ob, $OAUTH_SMTP_CLIENT / $OAUTH_CLIENT_SECRET; postern-device (public, device flow)
  Dovecot OAuth POP3S:      127.0.0.1:$DOVECOT_OAUTH_POP3S  (AUTH XOAUTH2 / OAUTHBEARER as $OAUTH_USER; oauth2 passdb)
  route ports (POP3S):      xoauth2 $DOVECOT_OAUTH_XOAUTH2, oauthbearer $DOVECOT_OAUTH_OAUTHBEARER, device $DOVECOT_OAUTH_DEVICE
  Postfix submission:       127.0.0.1:$PF_OAUTH  (postfix/oauth; STARTTLS, then AUTH XOAUTH2 OAUTHBEARER; mail to $OAUTH_RCPT)
  Get a token:  curl -s --cacert $PKI_DIR/ca.pem -u $OAUTH_DIRECT_CLIENT:\$OAUTH_DIRECT_SECRET -d grant_type=client_credentials -d scope=mail https://127.0.0.1:$OAUTH_IDP_PORT/token
INFO
}

# ----------------------------------------------------------------- postern

# oauth_toplevel: postern's top-level keys for OAuth (a fresh token store
# per postern run, encrypted under a fresh key).
oauth_toplevel() {
  [ -n "${OAUTH_IDP_PORT:-}" ] \
    || die "INTEROP_OAUTH=1, but the servers were started without it: no fake IdP to attach to"
  kill -0 "$OAUTH_IDP_PID" 2>/dev/null || die "the fake IdP (pid $OAUTH_IDP_PID) is not running"
  OAUTH_STATE_DIR="$RUN_DIR/postern-state"
  OAUTH_STATE_KEY_FILE="$RUN_DIR/state.key"
  mkdir -p "$OAUTH_STATE_DIR"
  chmod 0700 "$OAUTH_STATE_DIR"
  (
    umask 077
    python3 -c 'import base64, secrets; print(base64.b64encode(secrets.token_bytes(32)).decode())' \
      >"$OAUTH_STATE_KEY_FILE"
    printf '%s\n' "$OAUTH_CLIENT_SECRET" >"$RUN_DIR/oauth-client-secret"
  )
  chmod 0600 "$OAUTH_STATE_KEY_FILE" "$RUN_DIR/oauth-client-secret"
  printf 'state_dir: %s\n' "$OAUTH_STATE_DIR"
  printf 'state_key_file: %s\n' "$OAUTH_STATE_KEY_FILE"
}

# oauth_account_oauth CLIENT GRANT: the account's oauth: map (indented for
# an account list item).
oauth_account_oauth() {
  local client=$1 grant=$2 idp="https://127.0.0.1:$OAUTH_IDP_PORT"
  printf '          oauth:\n'
  printf '            provider: custom\n'
  printf '            client_id: %s\n' "$client"
  if [ "$grant" = client_credentials ]; then
    printf '            client_secret_file: %s\n' "$RUN_DIR/oauth-client-secret"
  fi
  printf '            grant: %s\n' "$grant"
  printf '            token_url: %s/token\n' "$idp"
  if [ "$grant" = device_code ]; then
    printf '            device_authorization_url: %s/devicecode\n' "$idp"
  fi
  printf '            scopes: [mail]\n'
  printf '            ca: %s\n' "$PKI_DIR/ca.pem"
}

oauth_routes() {
  local spec name auth grant client portvar ports i=0
  read -r -a ports <<<"$(free_ports $((${#OAUTH_POP3_ROUTES[@]} + 1)))"
  OAUTH_LISTEN=()
  for spec in "${OAUTH_POP3_ROUTES[@]}"; do
    read -r name auth grant client portvar _ <<<"$spec"
    OAUTH_LISTEN+=("${ports[i]}")
    cat <<YAML
  - name: $name
    protocol: pop3
    listen: 127.0.0.1:${ports[i]}
    upstream: { address: 127.0.0.1:${!portvar}, security: tls, auth: $auth, ca: $PKI_DIR/ca.pem, server_name: localhost }
    credentials:
      accounts:
        - local_user: $OAUTH_USER
          local_password_env: OAUTH_LOCAL_PASSWORD
          upstream_user: $OAUTH_USER
YAML
    oauth_account_oauth "$client" "$grant"
    i=$((i + 1))
  done
  OAUTH_LISTEN+=("${ports[i]}")
  cat <<YAML
  - name: $OAUTH_SMTP_ROUTE
    protocol: smtp
    listen: 127.0.0.1:${ports[i]}
    upstream: { address: 127.0.0.1:$PF_OAUTH, security: starttls, auth: xoauth2, ca: $PKI_DIR/ca.pem, server_name: localhost }
    credentials:
      accounts:
        - sources: [127.0.0.1/32]
          upstream_user: $OAUTH_USER
YAML
  oauth_account_oauth "$OAUTH_SMTP_CLIENT" client_credentials
}

oauth_listen_ports() { echo "${OAUTH_LISTEN[*]}"; }

# oauth_before_start: the device-flow route's consent, headless, before
# postern runs: `postern oauth login` prints the verification URL and the
# user code and polls; the fake IdP approves after OAUTH_PENDING_POLLS polls.
oauth_before_start() {
  local out="$RUN_DIR/oauth-login.out" rc=0 code name=oauth/postern-oauth-login
  OAUTH_COUNTS_START="$RUN_DIR/idp-counts-start.json"
  oauth_counts_snapshot "$OAUTH_COUNTS_START"
  section "OAuth: postern oauth login (device authorization grant) for oauth-pop3-device"
  timeout 120 "$POSTERN_BIN" oauth login -c "$POSTERN_CONF" oauth-pop3-device "$OAUTH_USER" \
    </dev/null >"$out" 2>&1 || rc=$?
  sed 's/^/    /' "$out" >&2
  if [ "$rc" -eq 0 ]; then
    pass "$name: exits 0 (consent obtained, refresh token stored)"
  else
    fail "$name: exits 0 (consent obtained, refresh token stored)" "exit status $rc: $(head -c 300 "$out")"
  fi
  code=$(tail -n 1 "$OAUTH_IDP_STATE/user-codes")
  if grep -q -F "https://127.0.0.1:$OAUTH_IDP_PORT/device" "$out" && grep -q -F "$code" "$out"; then
    pass "$name: prints the verification URL and the user code ($code)"
  else
    fail "$name: prints the verification URL and the user code ($code)" "not both in its output"
  fi
  oauth_counts "$name" "$OAUTH_COUNTS_START" \
    'devicecode.ok.postern-device==1 # one device authorization request' \
    "token.device_code.authorization_pending.postern-device==$OAUTH_PENDING_POLLS # polled while pending" \
    'token.device_code.ok.postern-device==1 # then got the tokens' \
    'token.device_code.slow_down.postern-device==0 # never faster than the interval' \
    'token.*.invalid_*.postern-device==0'
}

oauth_checks() {
  local spec name client portvar method i=0 started=$SECONDS dmark pmark before
  postfix_log_mark
  for spec in "${OAUTH_POP3_ROUTES[@]}"; do
    read -r name _ _ client portvar method <<<"$spec"
    section "OAuth POP3 route $name: 127.0.0.1:${OAUTH_LISTEN[i]} -> Dovecot 127.0.0.1:${!portvar} ($method)"
    oauth_driver "oauth/$name/driver ran to completion" pop3-route --route "$name" \
      --via-port "${OAUTH_LISTEN[i]}" --mech "$method" --local-user "$OAUTH_USER" \
      --secret-env OAUTH_DIRECT_SECRET
    pop3_expect_logins "oauth/$name" "${!portvar}" "$method" TLS
    pop3_expect_login_line "oauth/$name/dovecot log: logged in upstream as $OAUTH_USER" "${!portvar}" "user=<$OAUTH_USER>,"
    i=$((i + 1))
  done

  section "OAuth SMTP route $OAUTH_SMTP_ROUTE: 127.0.0.1:${OAUTH_LISTEN[i]} -> Postfix 127.0.0.1:$PF_OAUTH (device, XOAUTH2)"
  oauth_driver "oauth/$OAUTH_SMTP_ROUTE/driver ran to completion" smtp-device --route "$OAUTH_SMTP_ROUTE" \
    --via-port "${OAUTH_LISTEN[i]}" --secret-env OAUTH_DIRECT_SECRET
  smtp_postfix_log "oauth/$OAUTH_SMTP_ROUTE/postfix log" postfix/oauth XOAUTH2 yes 1

  section "OAuth: token requests postern made (fake IdP counters)"
  oauth_counts "oauth/postern token requests" "$OAUTH_COUNTS_START" \
    'token.client_credentials.ok.postern-interop==1 # one token for the xoauth2 route, however many sessions' \
    'token.client_credentials.ok.postern-interop-ob==1 # one for the oauthbearer route' \
    "token.client_credentials.ok.$OAUTH_SMTP_CLIENT==1 # one for the SMTP device" \
    'token.refresh_token.ok.postern-device<=1 # the device route: at most one refresh (none if the login kept its access token)' \
    'token.*.invalid_*.postern-*==0 # no bad client secret, no spent refresh token' \
    'token.*.unauthorized_client.*==0' \
    'introspect.inactive.*==0 # Dovecot never saw a token postern should not have used' \
    'introspect.active.postern-interop>=8 # 8 sessions per POP3 route, each a login through the oauth2 passdb' \
    'introspect.active.postern-interop-ob>=8' 'introspect.active.postern-device>=8' \
    "introspect.active.$OAUTH_SMTP_CLIENT>=2 # 2 SMTP sessions"

  oauth_status_check

  section "OAuth: the upstream refuses postern's cached token (revoked at the IdP)"
  i=0
  for spec in "${OAUTH_POP3_ROUTES[@]}"; do
    read -r name _ _ client portvar method <<<"$spec"
    before="$RUN_DIR/idp-counts-revoke-$name.json"
    oauth_counts_snapshot "$before"
    dmark=$(stat -c %s "$DOVECOT_LOG")
    oauth_driver "oauth/$name/revocation driver ran to completion" revoke --route "$name" --kind pop3 \
      --via-port "${OAUTH_LISTEN[i]}" --revoke-client "$client" --local-user "$OAUTH_USER" \
      --secret-env OAUTH_DIRECT_SECRET
    if [ "$client" = postern-device ]; then
      oauth_counts "oauth/$name/after revocation" "$before" \
        'token.refresh_token.ok.postern-device==1 # exactly one refresh, with the rotated refresh token' \
        'token.*.invalid_*.postern-device==0' "introspect.inactive.revoked.$client>=1 # Dovecot refused the old token"
    else
      oauth_counts "oauth/$name/after revocation" "$before" \
        "token.client_credentials.ok.$client==1 # exactly one new token" \
        "introspect.inactive.revoked.$client>=1 # Dovecot refused the old token"
    fi
    oauth_log "oauth/$name/after revocation/dovecot log" --log "$DOVECOT_LOG" --offset "$dmark" \
      --lport "${!portvar}" --method "$method" --failed-then-accepted
    i=$((i + 1))
  done
  before="$RUN_DIR/idp-counts-revoke-$OAUTH_SMTP_ROUTE.json"
  oauth_counts_snapshot "$before"
  pmark=$(stat -c %s "$PF_LOG")
  oauth_driver "oauth/$OAUTH_SMTP_ROUTE/revocation driver ran to completion" revoke --route "$OAUTH_SMTP_ROUTE" \
    --kind smtp --via-port "${OAUTH_LISTEN[i]}" --revoke-client "$OAUTH_SMTP_CLIENT" --secret-env OAUTH_DIRECT_SECRET
  oauth_counts "oauth/$OAUTH_SMTP_ROUTE/after revocation" "$before" \
    "token.client_credentials.ok.$OAUTH_SMTP_CLIENT==1 # exactly one new token" \
    "introspect.inactive.revoked.$OAUTH_SMTP_CLIENT>=1 # Dovecot (for Postfix) refused the old token"
  oauth_log "oauth/$OAUTH_SMTP_ROUTE/after revocation/postfix log" --log "$PF_LOG" --offset "$pmark" \
    --syslog-name postfix/oauth --method XOAUTH2 --failed-then-accepted
  log "OAuth suite took $((SECONDS - started))s"
}

# oauth_status_check: `postern oauth status` exits 0, names every OAuth
# route and account, and prints no secret.
oauth_status_check() {
  local out="$RUN_DIR/oauth-status.out" rc=0 spec name missing=() secret leaked=0 n=0
  "$POSTERN_BIN" oauth status -c "$POSTERN_CONF" </dev/null >"$out" 2>&1 || rc=$?
  sed 's/^/    /' "$out" >&2
  if [ "$rc" -eq 0 ]; then
    pass "oauth/postern oauth status: exits 0"
  else
    fail "oauth/postern oauth status: exits 0" "exit status $rc: $(head -c 300 "$out")"
  fi
  for spec in "${OAUTH_POP3_ROUTES[@]}" "$OAUTH_SMTP_ROUTE"; do
    read -r name _ <<<"$spec"
    grep -q -F "$name" "$out" || missing+=("$name")
  done
  grep -q -F "$OAUTH_USER" "$out" || missing+=("account $OAUTH_USER")
  grep -q -F "127.0.0.1/32" "$out" || missing+=("device account 127.0.0.1/32")
  if [ ${#missing[@]} -eq 0 ]; then
    pass "oauth/postern oauth status: lists every OAuth route and account"
  else
    fail "oauth/postern oauth status: lists every OAuth route and account" "missing: ${missing[*]}"
  fi
  # Neither it nor the login's output may show a secret.
  while IFS= read -r secret; do
    [ -n "$secret" ] || continue
    n=$((n + 1))
    if grep -q -F -e "$secret" "$out" "$RUN_DIR/oauth-login.out" 2>/dev/null; then
      leaked=$((leaked + 1))
    fi
  done < <(oauth_secrets)
  if [ "$leaked" -eq 0 ]; then
    pass "oauth/postern oauth status and oauth login print no token, secret or key" "$n secrets checked"
  else
    fail "oauth/postern oauth status and oauth login print no token, secret or key" "$leaked of $n found"
  fi
}

# oauth_secrets: what must never reach postern's log: the client secret,
# the state key, the local password, and every token and device code the
# IdP issued (also inside base64: a SASL string carrying token T contains,
# whatever surrounds T, the base64 of T at one of three alignments minus
# the groups at either end).
oauth_secrets() {
  printf '%s\n' "$OAUTH_CLIENT_SECRET" "$OAUTH_DIRECT_SECRET" "$OAUTH_LOCAL_PASSWORD"
  printf '%s' "$OAUTH_LOCAL_PASSWORD" | base64 -w0; echo
  [ ! -s "${OAUTH_STATE_KEY_FILE:-}" ] || {
    head -n 1 "$OAUTH_STATE_KEY_FILE"
    base64 -d "$OAUTH_STATE_KEY_FILE" | od -An -tx1 | tr -d ' \n'; echo
  }
  python3 - "$OAUTH_IDP_STATE/issued-secrets" <<'PY'
import base64, sys
for line in open(sys.argv[1]):
    secret = line.strip()
    if not secret:
        continue
    print(secret)
    for k in range(3):
        b64 = base64.b64encode(b"\0" * k + secret.encode()).decode()
        core = b64[4 if k else 0:-4]
        if len(core) >= 16:
            print(core)
PY
}
