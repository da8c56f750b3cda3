#!/usr/bin/env python3
"""OAuth2 interop checks (XOAUTH2, OAUTHBEARER), driven by suites/oauth.sh.

  baseline     no postern: the fake authorization server (fake_idp.py)
               issues tokens by every grant; Dovecot's oauth2 passdb accepts
               them on its OAuth POP3S port with AUTH XOAUTH2 and AUTH
               OAUTHBEARER and refuses a wrong or revoked one (the JSON error
               challenge, answered as the specs say); Postfix's OAuth
               submission port (STARTTLS, SASL through Dovecot) accepts them
               and delivers into the Maildir Dovecot serves, which is then
               fetched back with XOAUTH2.
  pop3-route   a postern POP3 route with an OAuth2 account: poplib USER/PASS
               with the LOCAL password gets exactly what Dovecot serves
               (compared with a direct XOAUTH2 session and the seed).
  smtp-device  a postern SMTP route whose only account is a device
               (sources:): smtplib sends with no AUTH at all, the messages
               arrive (fetched back from Dovecot with XOAUTH2).
  revoke       makes the IdP revoke every access token of one client (the
               upstream then refuses the one postern holds), then runs one
               session through the route: postern must get a new token and
               the client must not notice.
  counts       the IdP's request counters since a snapshot, against
               expectations ("PATTERN==N", "PATTERN<=N", "PATTERN>=N"; the
               pattern is an fnmatch over counter names, matches summed).
  log          what Dovecot (one lport) or Postfix (one syslog name) logged
               since an offset: mechanisms, failed then accepted logins.

Each check appends "PASS|FAIL<TAB>name<TAB>detail" to --results. Exit
status: 0 all passed, 3 some check failed, anything else means the driver
itself broke. Tokens, secrets and passwords are never printed (only their
length and a SHA-256 fingerprint).
"""

import argparse
import base64
import concurrent.futures
import fnmatch
import hashlib
import json
import os
import poplib
import re
import smtplib
import socket
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pop3_check import Results, joined, load_expected, message_id, shorten  # noqa: E402
from smtp_check import check_delivered, message, wait_delivered  # noqa: E402

HOST = "127.0.0.1"
TIMEOUT = 30
# Source addresses for sessions that fail on purpose: Dovecot's auth penalty
# (and postern's local lockout) count per client address, so failures from
# these do not slow down the logins from 127.0.0.1 that follow.
SRC_BAD_XOAUTH2 = "127.0.0.41"
SRC_BAD_OAUTHBEARER = "127.0.0.42"
SRC_BAD_SMTP = "127.0.0.43"
SRC_REVOKED = "127.0.0.44"
SRC_BAD_LOCAL = "127.0.0.45"
SRC_LONG_IR = "127.0.0.46"


def fp(secret):
    return hashlib.sha256(secret.encode()).hexdigest()[:12]


# ----------------------------------------------------------------- IdP

class Idp:
    def __init__(self, port, ca, state_dir=None):
        self.base = f"https://{HOST}:{port}"
        self.ctx = ssl.create_default_context(cafile=ca)
        self.state_dir = state_dir

    def post(self, path, form, basic=None, headers=None):
        hdrs = dict(headers or {})
        if basic is not None:
            cid, secret = basic
            cred = f"{urllib.parse.quote_plus(cid)}:{urllib.parse.quote_plus(secret)}"
            hdrs["Authorization"] = "Basic " + base64.b64encode(cred.encode()).decode()
        req = urllib.request.Request(self.base + path, data=urllib.parse.urlencode(form).encode(), headers=hdrs)
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=TIMEOUT) as r:
                return r.status, json.load(r)
        except urllib.error.HTTPError as e:
            return e.code, json.load(e)

    def client_credentials(self, client, secret, scope="mail"):
        status, body = self.post("/token", {"grant_type": "client_credentials", "scope": scope},
                                 basic=(client, secret))
        if status != 200:
            raise RuntimeError(f"client_credentials for {client}: HTTP {status} {body}")
        return body["access_token"]

    def revoke(self, client):
        with open(os.path.join(self.state_dir, "admin-key")) as f:
            key = f.read().strip()
        status, body = self.post("/admin/revoke", {"client_id": client}, headers={"X-Admin-Key": key})
        if status != 200:
            raise RuntimeError(f"revoke {client}: HTTP {status} {body}")
        return body["revoked"]


def xoauth2(user, token):
    return base64.b64encode(f"user={user}\x01auth=Bearer {token}\x01\x01".encode()).decode()


def oauthbearer(user, token, host, port):
    return base64.b64encode(f"n,a={user},\x01host={host}\x01port={port}\x01auth=Bearer {token}\x01\x01".encode()).decode()


# ----------------------------------------------------------------- POP3

class Pop3:
    """POP3 on a bare socket (optionally TLS, optionally from a given
    source address): the exact lines of a SASL exchange."""

    def __init__(self, port, ca=None, source=None, server_name="localhost"):
        sock = socket.create_connection((HOST, port), timeout=TIMEOUT,
                                        source_address=(source, 0) if source else None)
        if ca is not None:
            sock = ssl.create_default_context(cafile=ca).wrap_socket(sock, server_hostname=server_name)
        self.sock = sock
        self.file = sock.makefile("rb")
        self.greeting = self.line()

    def line(self):
        data = self.file.readline(65536)
        if not data:
            raise ConnectionError("connection closed by the server")
        return data.rstrip(b"\r\n").decode(errors="replace")

    def send(self, text):
        self.sock.sendall(text.encode() + b"\r\n")

    def cmd(self, text):
        self.send(text)
        return self.line()

    def multiline(self):
        chunks = []
        while True:
            data = self.file.readline(65536)
            if not data:
                raise ConnectionError("connection closed inside a multi-line reply")
            if data == b".\r\n":
                return chunks
            chunks.append(data[1:-2] if data.startswith(b"..") else data[:-2])

    def ok(self, text):
        resp = self.cmd(text)
        if not resp.startswith("+OK"):
            raise RuntimeError(f"{text.split()[0]} answered {resp!r}")
        return resp

    def capa(self):
        self.ok("CAPA")
        caps = {}
        for ln in self.multiline():
            words = ln.decode().split()
            caps[words[0].upper()] = words[1:]
        return caps

    def auth(self, mech, blob):
        """Two-line AUTH: returns (the continuation line, the final line)."""
        cont = self.cmd(f"AUTH {mech}")
        if not cont.startswith("+ ") and cont != "+":
            return cont, None
        return cont, self.cmd(blob)

    def login(self, mech, blob):
        cont, final = self.auth(mech, blob)
        if final is None or not final.startswith("+OK"):
            raise RuntimeError(f"AUTH {mech}: continuation {cont!r}, final {final!r}")
        return cont, final

    def mailbox(self):
        """STAT, LIST, UIDL and every RETR of the logged-in session."""
        stat = self.ok("STAT")
        count = int(stat.split()[1])
        self.ok("LIST")
        lst = self.multiline()
        self.ok("UIDL")
        uidl = self.multiline()
        retr = {}
        for n in range(1, count + 1):
            self.ok(f"RETR {n}")
            retr[n] = self.multiline()
        return {"count": count, "list": lst, "uidl": uidl, "retr": retr}

    def quit(self):
        try:
            return self.cmd("QUIT")
        finally:
            self.close()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def dovecot_session(a, token, mech="XOAUTH2", source=None):
    p = Pop3(a.dovecot_port, ca=a.ca, source=source)
    blob = xoauth2(a.user, token) if mech == "XOAUTH2" else oauthbearer(a.user, token, HOST, a.dovecot_port)
    p.login(mech, blob)
    return p


def decode_challenge(line, prefix):
    """The JSON in a '+ base64' / '334 base64' error challenge, or None."""
    if not line or not line.startswith(prefix):
        return None
    try:
        return json.loads(base64.b64decode(line[len(prefix):].strip(), validate=True))
    except (ValueError, json.JSONDecodeError):
        return None


def check_seed(R, label, box, expected):
    R.record(box["count"] == len(expected), f"{label}: STAT counts the {len(expected)} seeded messages",
             f"{box['count']} messages")
    for n, lines in box["retr"].items():
        want = expected.get(message_id(lines))
        if want is None:
            R.record(False, f"{label}: RETR {n} is a seeded message", f"unknown Message-ID {message_id(lines)}")
            continue
        R.equal(f"{label}: RETR {n} ({want['name']}) equals the seeded message", joined(lines), want["data"], "message")


# ----------------------------------------------------------------- baseline

def cmd_baseline(a):
    R = Results(a.results, "oauth/baseline")
    expected = load_expected(a.expected)
    idp = Idp(a.idp_port, a.ca, a.idp_state)
    secret = os.environ[a.secret_env]
    tokens = {}

    # -- the fake authorization server itself
    with R.block("IdP client_credentials (HTTP Basic)"):
        status, body = idp.post("/token", {"grant_type": "client_credentials", "scope": "mail"},
                                basic=(a.client, secret))
        tok = body.get("access_token", "")
        R.record(status == 200 and len(tok) >= 1200 and body.get("token_type") == "Bearer"
                 and body.get("expires_in") == a.lifetime and "refresh_token" not in body,
                 f"IdP: client_credentials with HTTP Basic gives a Bearer token of >= 1200 characters, "
                 f"expires_in {a.lifetime}, no refresh token",
                 f"HTTP {status}, {len(tok)} characters, keys {sorted(body)}")
        tokens["direct"] = tok
    with R.block("IdP client_credentials (form)"):
        status, body = idp.post("/token", {"grant_type": "client_credentials", "client_id": a.client,
                                           "client_secret": secret, "scope": "mail"})
        R.record(status == 200 and "access_token" in body, "IdP: client_credentials with client_id/client_secret "
                 "in the form works too", f"HTTP {status}")
    with R.block("IdP wrong client secret"):
        status, body = idp.post("/token", {"grant_type": "client_credentials"}, basic=(a.client, secret + "x"))
        R.record(status == 401 and body.get("error") == "invalid_client",
                 "IdP: a wrong client secret gets 401 invalid_client", f"HTTP {status} {body}")
    with R.block("IdP introspection"):
        status, body = idp.post("/introspect", {"token": tokens["direct"]})
        R.record(status == 200 and body.get("active") is True and body.get("username") == a.user
                 and body.get("sub") == a.user,
                 f"IdP: introspection of an issued token says active, username {a.user}", f"HTTP {status}")
        status, body = idp.post("/introspect", {"token": "not-a-token-" + "x" * 40})
        R.record(status == 200 and body == {"active": False}, "IdP: introspection of an unknown token says "
                 "{\"active\": false}", f"HTTP {status} {body}")
    with R.block("IdP device flow"):
        status, dev = idp.post("/devicecode", {"client_id": a.device_client, "scope": "mail offline_access"})
        R.record(status == 200 and {"device_code", "user_code", "verification_uri", "expires_in"} <= set(dev)
                 and dev.get("interval") == 1,
                 "IdP: /devicecode answers device_code, user_code, verification_uri, expires_in, interval 1",
                 f"HTTP {status}, keys {sorted(dev)}")
        answers = []
        for _ in range(a.pending_polls + 1):
            status, body = idp.post("/token", {"grant_type": "urn:ietf:params:oauth:grant-type:device_code",
                                               "client_id": a.device_client, "device_code": dev["device_code"]})
            answers.append(body.get("error") or ("tokens" if "access_token" in body else str(status)))
            if "access_token" in body:
                device_tokens = body
                break
            time.sleep(1.05)
        R.equal(f"IdP: device-code polls answer authorization_pending x{a.pending_polls}, then tokens",
                answers, ["authorization_pending"] * a.pending_polls + ["tokens"], "poll answers")
        rt1 = device_tokens.get("refresh_token")
        status, body = idp.post("/introspect", {"token": device_tokens["access_token"]})
        R.record(body.get("username") == a.user, f"IdP: a device-flow token belongs to the device user {a.user}",
                 f"username {body.get('username')!r}")
        # Rotation: each refresh gives a new refresh token and spends the old.
        status, body = idp.post("/token", {"grant_type": "refresh_token", "client_id": a.device_client,
                                           "refresh_token": rt1})
        rt2 = body.get("refresh_token")
        R.record(status == 200 and rt2 and rt2 != rt1 and "access_token" in body,
                 "IdP: refresh_token grant gives a new access token and a NEW refresh token", f"HTTP {status}")
        status, body = idp.post("/token", {"grant_type": "refresh_token", "client_id": a.device_client,
                                           "refresh_token": rt1})
        R.record(status == 400 and body.get("error") == "invalid_grant",
                 "IdP: the rotated-out refresh token is refused with invalid_grant", f"HTTP {status} {body}")
        status, body = idp.post("/token", {"grant_type": "refresh_token", "client_id": a.device_client,
                                           "refresh_token": rt2})
        R.record(status == 200, "IdP: the new refresh token works", f"HTTP {status}")
        # Polling faster than the interval is answered slow_down.
        status, dev2 = idp.post("/devicecode", {"client_id": a.device_client, "scope": "mail"})
        form = {"grant_type": "urn:ietf:params:oauth:grant-type:device_code", "client_id": a.device_client,
                "device_code": dev2["device_code"]}
        idp.post("/token", form)
        status, body = idp.post("/token", form)
        R.record(status == 400 and body.get("error") == "slow_down",
                 "IdP: a poll sooner than the interval is answered slow_down", f"HTTP {status} {body}")

    # -- Dovecot's OAuth POP3S port
    with R.block("Dovecot CAPA"):
        p = Pop3(a.dovecot_port, ca=a.ca)
        caps = p.capa()
        p.quit()
        sasl = [m.upper() for m in caps.get("SASL", [])]
        R.record({"XOAUTH2", "OAUTHBEARER"} <= set(sasl),
                 "Dovecot OAuth POP3S: CAPA SASL lists XOAUTH2 and OAUTHBEARER", "SASL " + " ".join(sasl))
    with R.block("Dovecot AUTH XOAUTH2"):
        p = Pop3(a.dovecot_port, ca=a.ca)
        cont, final = p.login("XOAUTH2", xoauth2(a.user, tokens["direct"]))
        R.record(True, "Dovecot: AUTH XOAUTH2, two-line form (token after the continuation) logs in",
                 f"continuation {cont!r}, then {final!r}; token {len(tokens['direct'])} characters")
        box = p.mailbox()
        p.quit()
        check_seed(R, "Dovecot XOAUTH2 session", box, expected)
    with R.block("Dovecot AUTH OAUTHBEARER"):
        p = Pop3(a.dovecot_port, ca=a.ca)
        cont, final = p.login("OAUTHBEARER", oauthbearer(a.user, tokens["direct"], HOST, a.dovecot_port))
        R.record(True, "Dovecot: AUTH OAUTHBEARER, two-line form, logs in", f"continuation {cont!r}, then {final!r}")
        box2 = p.mailbox()
        p.quit()
        R.record(box2["uidl"] == box["uidl"], "Dovecot: the OAUTHBEARER session sees the same UIDL list")
    with R.block("Dovecot AUTH XOAUTH2 with initial response"):
        p = Pop3(a.dovecot_port, ca=a.ca)
        resp = p.cmd(f"AUTH XOAUTH2 {xoauth2(a.user, tokens['direct'])}")
        p.quit()
        R.record(resp.startswith("+OK"), "Dovecot: AUTH XOAUTH2 with the initial response on the command line "
                 "(RFC 5034 SASL-IR) logs in too", f"{resp!r}, line of {len('AUTH XOAUTH2 ') + len(xoauth2(a.user, tokens['direct']))} octets")
    with R.block("Dovecot long token"):
        long_tok = idp.client_credentials(a.long_client, secret)
        p = Pop3(a.dovecot_port, ca=a.ca)
        blob = xoauth2(a.user, long_tok)
        cont, final = p.login("XOAUTH2", blob)
        p.quit()
        R.record(True, f"Dovecot: a {len(long_tok)}-character token (Microsoft-sized) in the two-line form logs in",
                 f"response line {len(blob)} octets")
    for mech, src, answer in (("XOAUTH2", SRC_BAD_XOAUTH2, ""), ("OAUTHBEARER", SRC_BAD_OAUTHBEARER, "AQ==")):
        name = f"Dovecot: a wrong token with AUTH {mech} gets the JSON error challenge, then -ERR after the answer {answer!r}"
        with R.block(name):
            p = Pop3(a.dovecot_port, ca=a.ca, source=src)
            bad = "wrong-" + "q" * 1200
            blob = xoauth2(a.user, bad) if mech == "XOAUTH2" else oauthbearer(a.user, bad, HOST, a.dovecot_port)
            t0 = time.monotonic()
            cont, challenge = p.auth(mech, blob)
            t1 = time.monotonic()
            js = decode_challenge(challenge, "+ ")
            final = p.cmd(answer)
            t2 = time.monotonic()
            p.close()
            want = ({"status": "401", "schemes": "bearer", "scope": "mail"} if mech == "XOAUTH2"
                    else {"status": "invalid_token"})
            R.record(js == want and final.startswith("-ERR"), name,
                     f"challenge {json.dumps(js)} after {t1 - t0:.1f}s, then {final!r} after {t2 - t1:.1f}s")
    with R.block("Dovecot revoked token"):
        tok = idp.client_credentials(a.client, secret)
        p = dovecot_session(a, tok, source=SRC_REVOKED)
        p.quit()
        n = idp.revoke(a.client)
        p = Pop3(a.dovecot_port, ca=a.ca, source=SRC_REVOKED)
        cont, challenge = p.auth("XOAUTH2", xoauth2(a.user, tok))
        final = p.cmd("") if challenge and challenge.startswith("+ ") else challenge
        p.close()
        R.record(final is not None and final.startswith("-ERR") and decode_challenge(challenge, "+ ") is not None,
                 "Dovecot: a token that worked is refused once the IdP revokes it (introspection per login, no cache)",
                 f"{n} tokens revoked; {final!r}")
        tokens["direct"] = idp.client_credentials(a.client, secret)
        p = dovecot_session(a, tokens["direct"], source=SRC_REVOKED)
        p.quit()
        R.record(True, "Dovecot: a fresh token after the revocation logs in")

    # -- Postfix's OAuth submission port
    ctx = ssl.create_default_context(cafile=a.ca)
    sent = []
    with R.block("Postfix OAuth port EHLO"):
        s = smtplib.SMTP(HOST, a.postfix_port, timeout=TIMEOUT, local_hostname="client.interop.test")
        s.ehlo()
        feats = {k.lower(): v for k, v in s.esmtp_features.items()}
        R.record("starttls" in feats and "auth" not in feats,
                 "Postfix OAuth port: STARTTLS offered, no AUTH before it", " ".join(sorted(feats)))
        s.starttls(context=ctx)
        s.ehlo()
        feats = {k.lower(): v for k, v in s.esmtp_features.items()}
        mechs = feats.get("auth", "").upper().split()
        R.record(sorted(mechs) == ["OAUTHBEARER", "XOAUTH2"],
                 "Postfix OAuth port: after STARTTLS exactly AUTH XOAUTH2 OAUTHBEARER (Dovecot's, filtered)",
                 f"AUTH {feats.get('auth')!r}")
        s.quit()
    for mech in ("XOAUTH2", "OAUTHBEARER"):
        with R.block(f"Postfix AUTH {mech}"):
            s = smtplib.SMTP(HOST, a.postfix_port, timeout=TIMEOUT, local_hostname="client.interop.test")
            s.starttls(context=ctx)
            s.ehlo()
            blob = xoauth2(a.user, tokens["direct"]) if mech == "XOAUTH2" else \
                oauthbearer(a.user, tokens["direct"], HOST, a.postfix_port)
            code, resp = s.docmd("AUTH", f"{mech} {blob}")
            R.record(code == 235, f"Postfix: STARTTLS then AUTH {mech} with initial response: 235",
                     f"{code} {shorten(resp)}; command line {len(mech) + len(blob) + 6} octets")
            m = message("oauth-baseline", mech.lower(), "small" if mech == "XOAUTH2" else "dots")
            s.sendmail(a.rcpt, [a.rcpt], m.wire)
            sent.append((f"direct AUTH {mech}", m))
            s.quit()
    with R.block("Postfix long token"):
        long_tok = idp.client_credentials(a.long_client, secret)
        blob = xoauth2(a.user, long_tok)
        line = f"AUTH XOAUTH2 {blob}"
        s = smtplib.SMTP(HOST, a.postfix_port, timeout=TIMEOUT, local_hostname="client.interop.test",
                         source_address=(SRC_LONG_IR, 0))
        s.starttls(context=ctx)
        s.ehlo()
        code, resp = s.docmd("AUTH", f"XOAUTH2 {blob}")
        if code == 334:  # answer a challenge, whatever it is, to end the exchange
            code, resp = s.docmd("")
        R.record(code != 235 and len(line) > 2048,
                 f"Postfix: an AUTH line of {len(line)} octets (initial response with a {len(long_tok)}-character "
                 "token) is NOT accepted: longer than line_length_limit (2048)", f"{code} {shorten(resp)}")
        s.quit()
        s = smtplib.SMTP(HOST, a.postfix_port, timeout=TIMEOUT, local_hostname="client.interop.test")
        s.starttls(context=ctx)
        s.ehlo()
        code1, resp1 = s.docmd("AUTH", "XOAUTH2")
        code2, resp2 = s.docmd(blob)
        R.record(code1 == 334 and code2 == 235,
                 f"Postfix: the same token after '334 ' (no initial response; {len(blob)} octets, within "
                 "smtpd_sasl_response_limit 12288) is accepted", f"{code1} {shorten(resp1)!s} / {code2} {shorten(resp2)}")
        m = message("oauth-baseline", "long-token", "utf8")
        s.sendmail(a.rcpt, [a.rcpt], m.wire, mail_options=["BODY=8BITMIME"])
        sent.append(("direct AUTH XOAUTH2 after 334, long token", m))
        s.quit()
    for mech, answer in (("XOAUTH2", ""), ("OAUTHBEARER", "AQ==")):
        name = f"Postfix: a wrong token with AUTH {mech} gets '334 <JSON>', then 535 after the answer {answer!r}"
        with R.block(name):
            s = smtplib.SMTP(HOST, a.postfix_port, timeout=TIMEOUT, local_hostname="client.interop.test",
                             source_address=(SRC_BAD_SMTP, 0))
            s.starttls(context=ctx)
            s.ehlo()
            bad = "wrong-" + "q" * 1200
            blob = xoauth2(a.user, bad) if mech == "XOAUTH2" else oauthbearer(a.user, bad, HOST, a.postfix_port)
            t0 = time.monotonic()
            code1, resp1 = s.docmd("AUTH", f"{mech} {blob}")
            t1 = time.monotonic()
            js = decode_challenge(f"{code1} {resp1.decode(errors='replace')}", "334 ")
            code2, resp2 = s.docmd(answer)
            t2 = time.monotonic()
            want = ({"status": "401", "schemes": "bearer", "scope": "mail"} if mech == "XOAUTH2"
                    else {"status": "invalid_token"})
            R.record(code1 == 334 and js == want and code2 == 535, name,
                     f"334 {json.dumps(js)} after {t1 - t0:.1f}s, then {code2} {shorten(resp2)} after {t2 - t1:.1f}s")
            code, resp = s.docmd("MAIL", f"FROM:<{a.rcpt}>")
            code, resp = s.docmd("RCPT", f"TO:<{a.rcpt}>")
            R.record(code >= 500, f"Postfix: after the refused {mech} login, RCPT is refused (no relaying)",
                     f"{code} {shorten(resp)}")
            s.quit()

    # -- the delivered messages, fetched back with XOAUTH2
    found = wait_delivered(a.maildir, [m.marker for _, m in sent])
    R.record(len(found) == len(sent), f"Postfix delivered the {len(sent)} messages into {a.user}'s Maildir",
             f"{len(found)} of {len(sent)}")
    with R.block("fetch back from Dovecot with XOAUTH2"):
        p = dovecot_session(a, tokens["direct"])
        box = p.mailbox()
        by_marker = {}
        for n, lines in box["retr"].items():
            mid = message_id(lines) or ""
            for label, m in sent:
                if m.marker in mid:
                    by_marker[m.marker] = n
        for label, m in sent:
            n = by_marker.get(m.marker)
            if n is None:
                R.record(False, f"{label}: fetched back with XOAUTH2", "not in the mailbox")
                continue
            check_delivered(R, f"{label}: fetched back from Dovecot with XOAUTH2", joined(box["retr"][n]), m, "ESMTPSA")
        for n in sorted(by_marker.values()):
            p.ok(f"DELE {n}")
        p.quit()
        p = dovecot_session(a, tokens["direct"])
        R.record(p.ok("STAT").split()[1] == str(len(expected)),
                 "the fetched messages are deleted again (mailbox back to the seed)")
        p.quit()
    return R.finish("oauth baseline")


# ----------------------------------------------------------------- postern POP3 route

def reference(a):
    idp = Idp(a.idp_port, a.ca)
    tok = idp.client_credentials(a.client, os.environ[a.secret_env])
    p = dovecot_session(a, tok)
    box = p.mailbox()
    p.quit()
    return box


def poplib_box(port, user, password):
    p = poplib.POP3(HOST, port, timeout=TIMEOUT)
    p.user(user)
    p.pass_(password)
    try:
        count = p.stat()[0]
        box = {"count": count, "list": p.list()[1], "uidl": p.uidl()[1],
               "retr": {n: p.retr(n)[1] for n in range(1, count + 1)},
               "top0": {n: p.top(n, 0)[1] for n in range(1, count + 1)}}
        box["quit"] = p.quit()
        return box
    except Exception:
        p.close()
        raise


def cmd_pop3_route(a):
    R = Results(a.results, f"oauth/{a.route}")
    expected = load_expected(a.expected)
    password = os.environ[a.local_password_env]
    try:
        ref = reference(a)
    except Exception as e:  # noqa: BLE001 - reported; nothing to compare with
        R.record(False, "direct reference session (XOAUTH2 to Dovecot)", repr(e))
        return R.finish(a.route)

    with R.block("poplib USER/PASS with the local password"):
        t0 = time.monotonic()
        box = poplib_box(a.via_port, a.local_user, password)
        R.record(True, f"poplib USER {a.local_user} / PASS (local password) through postern: logged in upstream "
                 f"with {a.mech}", f"first session {time.monotonic() - t0:.1f}s")
        R.equal("STAT count equals Dovecot's", box["count"], ref["count"])
        R.equal("LIST equals Dovecot's", box["list"], ref["list"])
        R.equal("UIDL equals Dovecot's", box["uidl"], ref["uidl"])
        for n in range(1, ref["count"] + 1):
            R.equal(f"RETR {n} equals Dovecot's", joined(box["retr"][n]), joined(ref["retr"][n]), "message")
            R.record(joined(box["top0"][n]).startswith(joined(box["retr"][n]).split(b"\r\n\r\n")[0]),
                     f"TOP {n} 0 is the header of RETR {n}")
        check_seed(R, "through postern", box, expected)
        R.record(box["quit"].startswith(b"+OK"), "QUIT answered +OK")

    with R.block("more sessions (cached token)"):
        for i in range(3):
            again = poplib_box(a.via_port, a.local_user, password)
            if again["uidl"] != ref["uidl"]:
                raise RuntimeError(f"session {i + 2}: UIDL differs")
        with concurrent.futures.ThreadPoolExecutor(4) as ex:
            boxes = list(ex.map(lambda _: poplib_box(a.via_port, a.local_user, password), range(4)))
        R.record(all(b["uidl"] == ref["uidl"] and len(b["retr"]) == ref["count"] for b in boxes),
                 "3 more sessions in a row and 4 at once all see the same mailbox")

    with R.block("wrong local password"):
        p = Pop3(a.via_port, source=SRC_BAD_LOCAL)
        p.ok(f"USER {a.local_user}")
        resp = p.cmd(f"PASS {password}-wrong")
        p.close()
        R.record(resp.startswith("-ERR"), "a wrong LOCAL password is refused with -ERR", resp)
    return R.finish(a.route)


# ----------------------------------------------------------------- postern SMTP device route

def fetch_and_delete(R, a, sent, label_prefix):
    found = wait_delivered(a.maildir, [m.marker for _, m in sent])
    R.record(len(found) == len(sent), f"{label_prefix}: Postfix delivered all {len(sent)} messages",
             f"{len(found)} of {len(sent)}")
    with R.block(f"{label_prefix}: fetch back from Dovecot with XOAUTH2"):
        idp = Idp(a.idp_port, a.ca)
        p = dovecot_session(a, idp.client_credentials(a.client, os.environ[a.secret_env]))
        box = p.mailbox()
        by_marker = {}
        for n, lines in box["retr"].items():
            mid = message_id(lines) or ""
            for _, m in sent:
                if m.marker in mid:
                    by_marker[m.marker] = n
        for label, m in sent:
            n = by_marker.get(m.marker)
            if n is None:
                R.record(False, f"{label}: fetched back", "not in the mailbox")
                continue
            check_delivered(R, f"{label}: fetched back from Dovecot", joined(box["retr"][n]), m, "ESMTPSA")
        for n in sorted(by_marker.values()):
            p.ok(f"DELE {n}")
        p.quit()


def cmd_smtp_device(a):
    R = Results(a.results, f"oauth/{a.route}")
    sent = []
    with R.block("device session 1"):
        s = smtplib.SMTP(HOST, a.via_port, timeout=TIMEOUT, local_hostname="scanner.interop.test")
        s.ehlo()
        feats = {k.lower(): v for k, v in s.esmtp_features.items()}
        R.record("auth" not in feats, "EHLO to the device (127.0.0.1) offers no AUTH", " ".join(sorted(feats)))
        for kind in ("small", "big"):
            m = message(a.route, "device", kind)
            refused = s.sendmail(a.rcpt, [a.rcpt], m.wire)
            R.record(not refused, f"no AUTH sent; sendmail of the {kind} message accepted")
            sent.append((f"device, no AUTH ({kind})", m))
        s.quit()
    with R.block("device session 2"):
        s = smtplib.SMTP(HOST, a.via_port, timeout=TIMEOUT, local_hostname="scanner.interop.test")
        m = message(a.route, "device2", "dots")
        s.sendmail(a.rcpt, [a.rcpt], m.wire)
        sent.append(("device, second session (dots)", m))
        s.quit()
        R.record(True, "a second session without AUTH is accepted too")
    fetch_and_delete(R, a, sent, "device route")
    return R.finish(a.route)


# ----------------------------------------------------------------- revoke, then a session

def cmd_revoke(a):
    R = Results(a.results, f"oauth/{a.route}/after revocation")
    idp = Idp(a.idp_port, a.ca, a.idp_state)
    n = idp.revoke(a.revoke_client)
    R.record(n >= 1, f"the IdP revoked the access tokens of {a.revoke_client}", f"{n} tokens")
    if a.kind == "pop3":
        with R.block("POP3 session after the revocation"):
            box = poplib_box(a.via_port, a.local_user, os.environ[a.local_password_env])
            expected = load_expected(a.expected)
            R.record(box["count"] == len(expected),
                     "poplib session through postern still works: postern got a new token and retried, the client "
                     "saw no error", f"STAT {box['count']}")
    else:
        with R.block("SMTP device session after the revocation"):
            s = smtplib.SMTP(HOST, a.via_port, timeout=TIMEOUT, local_hostname="scanner.interop.test")
            m = message(a.route, "after-revoke", "small")
            refused = s.sendmail(a.rcpt, [a.rcpt], m.wire)
            s.quit()
            R.record(not refused, "the device's message is accepted: postern got a new token and retried")
        fetch_and_delete(R, a, [("device after revocation", m)], "after revocation")
    return R.finish(a.route)


# ----------------------------------------------------------------- IdP counters

def cmd_counts(a):
    R = Results(a.results, a.name)
    with open(a.before) as f:
        before = json.load(f)
    with open(os.path.join(a.idp_state, "counts.json")) as f:
        after = json.load(f)
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in set(before) | set(after)}
    delta = {k: v for k, v in delta.items() if v}
    for spec in a.expect:
        m = re.fullmatch(r"(.+?)(==|<=|>=)(\d+)(?: # (.*))?", spec)
        if not m:
            raise SystemExit(f"bad --expect {spec!r}")
        pattern, op, want, why = m.group(1), m.group(2), int(m.group(3)), m.group(4)
        got = sum(v for k, v in delta.items() if fnmatch.fnmatchcase(k, pattern))
        ok = {"==": got == want, "<=": got <= want, ">=": got >= want}[op]
        R.record(ok, f"IdP: {pattern} {op} {want}" + (f" ({why})" if why else ""), f"got {got}")
    print("[interop] IdP counter changes: " + json.dumps(dict(sorted(delta.items()))), file=sys.stderr)
    return R.finish(a.name)


# ----------------------------------------------------------------- server logs

def cmd_log(a):
    R = Results(a.results, a.name)
    with open(a.log, "rb") as f:
        f.seek(a.offset)
        text = f.read().decode(errors="replace")
    events = []  # (accepted, method, line)
    if a.lport:
        for line in text.splitlines():
            if f", lport={a.lport}," not in line or "pop3-login: " not in line or " method=" not in line:
                continue
            method = re.search(r" method=([^,\s]+)", line).group(1)
            events.append(("Login: " in line, method, line))
    else:
        pat = re.compile(r" (postfix/[^/\s]+)/smtpd\[\d+\]: (.*)$")
        for line in text.splitlines():
            m = pat.search(line)
            if not m or m.group(1) != a.syslog_name:
                continue
            what = m.group(2)
            if " sasl_method=" in what:
                events.append((True, re.search(r"sasl_method=([^,\s]+)", what).group(1), what))
            elif re.search(r"SASL \S+ authentication failed", what):
                events.append((False, re.search(r"SASL (\S+) authentication failed", what).group(1), what))
    where = f"port {a.lport}" if a.lport else a.syslog_name
    wrong = [ln for _, method, ln in events if method != a.method]
    R.record(not wrong and events, f"{where}: every login and failed login used {a.method}",
             f"{sum(1 for e in events if e[0])} accepted, {sum(1 for e in events if not e[0])} failed"
             if not wrong else shorten(wrong[:2]))
    if a.failed_then_accepted:
        first_fail = next((i for i, e in enumerate(events) if not e[0]), None)
        later_ok = first_fail is not None and any(e[0] for e in events[first_fail + 1:])
        R.record(later_ok, f"{where}: a refused {a.method} login (the revoked token), then an accepted one",
                 "; ".join(shorten(e[2][-160:]) for e in events[:4]))
    return R.finish(a.name)


# ----------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--results", required=True)
    common.add_argument("--ca", required=True)
    common.add_argument("--idp-port", type=int, required=True)
    common.add_argument("--idp-state", required=True)
    common.add_argument("--user", required=True, help="the mailbox owner every token maps to")
    common.add_argument("--client", required=True, help="the checks' own client_credentials client")
    common.add_argument("--secret-env", default="OAUTH_DIRECT_SECRET")
    common.add_argument("--dovecot-port", type=int, required=True, help="Dovecot's OAuth POP3S port")
    common.add_argument("--expected", required=True, help="seed_maildir.py --expected directory")
    common.add_argument("--maildir", required=True)
    common.add_argument("--rcpt", required=True)

    b = sub.add_parser("baseline", parents=[common])
    b.add_argument("--postfix-port", type=int, required=True)
    b.add_argument("--device-client", required=True)
    b.add_argument("--long-client", required=True)
    b.add_argument("--lifetime", type=int, required=True)
    b.add_argument("--pending-polls", type=int, required=True)

    r = sub.add_parser("pop3-route", parents=[common])
    r.add_argument("--route", required=True)
    r.add_argument("--via-port", type=int, required=True)
    r.add_argument("--mech", required=True)
    r.add_argument("--local-user", required=True)
    r.add_argument("--local-password-env", default="OAUTH_LOCAL_PASSWORD")

    d = sub.add_parser("smtp-device", parents=[common])
    d.add_argument("--route", required=True)
    d.add_argument("--via-port", type=int, required=True)

    v = sub.add_parser("revoke", parents=[common])
    v.add_argument("--route", required=True)
    v.add_argument("--kind", choices=("pop3", "smtp"), required=True)
    v.add_argument("--via-port", type=int, required=True)
    v.add_argument("--revoke-client", required=True)
    v.add_argument("--local-user")
    v.add_argument("--local-password-env", default="OAUTH_LOCAL_PASSWORD")

    c = sub.add_parser("counts")
    c.add_argument("--results", required=True)
    c.add_argument("--name", required=True)
    c.add_argument("--before", required=True, help="a copy of counts.json taken earlier")
    c.add_argument("--idp-state", required=True)
    c.add_argument("--expect", action="append", default=[])

    lg = sub.add_parser("log")
    lg.add_argument("--results", required=True)
    lg.add_argument("--name", required=True)
    lg.add_argument("--log", required=True)
    lg.add_argument("--offset", type=int, default=0)
    lg.add_argument("--lport", type=int, help="Dovecot: the login port")
    lg.add_argument("--syslog-name", help="Postfix: postfix/NAME")
    lg.add_argument("--method", required=True)
    lg.add_argument("--failed-then-accepted", action="store_true")

    a = ap.parse_args()
    return {"baseline": cmd_baseline, "pop3-route": cmd_pop3_route, "smtp-device": cmd_smtp_device,
            "revoke": cmd_revoke, "counts": cmd_counts, "log": cmd_log}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
