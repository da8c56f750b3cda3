#!/usr/bin/env python3
"""LAN-shared relay checks, driven by tests/interop/run.sh (suites/lan.sh).

  baseline  the stored upstream logins (and the LAN user's) work against
            Dovecot and Postfix directly, so a failure later is postern's.
  tls       postern's TLS listeners with real clients: POP3S (poplib
            POP3_SSL, curl pop3s://), POP3 STLS (poplib stls(), curl
            --ssl-reqd pop3://, openssl s_client -starttls pop3), SMTPS
            (smtplib SMTP_SSL, curl smtps://), SMTP STARTTLS (smtplib
            starttls(), swaks --tls, openssl s_client -starttls smtp).
            Every certificate is verified against the test CA. Before TLS
            the STLS/STARTTLS listeners hide and refuse logins. Mail sent
            over the SMTP listeners is delivered by Postfix and fetched
            back over both POP3 listeners, byte for byte.
  inject    STLS / STARTTLS with a command pipelined behind it in the same
            segment (CVE-2011-0411): postern must close without answering.
  accounts  stored accounts (credentials: accounts, passthrough: false):
            the local user logs in to postern with its LOCAL password by
            APOP (fetchmail, poplib), AUTH CRAM-MD5 (swaks, smtplib, a raw
            POP3 socket), USER/PASS and AUTH PLAIN; a device bound to
            127.0.0.9 sends mail with no AUTH; 127.0.0.10 gets 530.
            Everything sent is fetched back through the POP3 accounts route
            (APOP) and compared byte for byte; Postfix's log must name the
            stored upstream user for each message. Wrong local passwords
            and names that are not accounts are refused, and neither
            Dovecot nor Postfix sees any login attempt for them.

Each check appends "PASS|FAIL<TAB>name<TAB>detail" to --results. Exit
status: 0 all passed, 3 some check failed, anything else means the driver
itself broke. Passwords come from the environment and are never printed.
"""

import argparse
import base64
import glob
import os
import poplib
import re
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pop3_check import Raw, Results, describe_diff, expect_err, joined, shorten  # noqa: E402
from smtp_check import (RawSMTP, check_delivered, features, message, swaks_message,  # noqa: E402
                        wait_delivered, wait_queue_empty)

HOST = "127.0.0.1"
TIMEOUT = 30
CLIENT_NAME = "client.interop.test"
DEVICE_SOURCE = "127.0.0.9"      # the route's device account (sources: [127.0.0.9/32])
NON_DEVICE_SOURCE = "127.0.0.10"  # allowed (loopback), but no account


# ----------------------------------------------------------------- clients

class SourcePOP3(poplib.POP3):
    """poplib.POP3 from a chosen loopback source address."""

    def __init__(self, port, source=None, timeout=TIMEOUT):
        self._source = source
        super().__init__(HOST, port, timeout=timeout)

    def _create_socket(self, timeout):
        src = (self._source, 0) if self._source else None
        return socket.create_connection((self.host, self.port), timeout, source_address=src)


class SourceRaw(Raw):
    """pop3_check.Raw from a chosen source address."""

    def __init__(self, port, source=None):  # noqa: PLW0231 - Raw.__init__ would connect unbound
        src = (source, 0) if source else None
        self.sock = socket.create_connection((HOST, port), timeout=TIMEOUT, source_address=src)
        self.file = self.sock.makefile("rb")
        self.greeting = self.line()


def smtp_session(port, source=None):
    s = smtplib.SMTP(HOST, port, timeout=TIMEOUT, local_hostname=CLIENT_NAME,
                     source_address=(source, 0) if source else None)
    s.ehlo()
    return s


def smtp_auth(s, mech, user, password):
    """Exactly one AUTH exchange with MECH (smtplib's login() would try the
    next mechanism after a refusal: three failures where one was meant)."""
    s.user, s.password = user, password
    return s.auth(mech, getattr(s, "auth_" + mech.lower().replace("-", "_")))


def run(argv, timeout=120, **kw):
    return subprocess.run(argv, capture_output=True, timeout=timeout, **kw)


def q(text):
    return urllib.parse.quote(text, safe="")


def curl_errors(trace):
    return " | ".join(ln for ln in trace.splitlines() if ln.startswith(("curl:", "< -ERR", "< 4", "< 5")))


def curl_logins(trace):
    """The login verbs curl sent (never the arguments)."""
    sent = [ln[2:] for ln in trace.splitlines() if ln.startswith("> ")]
    return [" ".join(s.split(" ")[:2]) if s.startswith("AUTH") else s.split(" ")[0]
            for s in sent if s.startswith(("AUTH", "APOP", "USER", "STLS", "STARTTLS"))]


def swaks_summary(out):
    """(AUTH verb swaks sent or '', swaks/server error lines). Never the
    '->' lines themselves: they carry the base64 credentials."""
    auth_line = next((ln.strip() for ln in out.splitlines() if ln.strip().startswith(("-> AUTH", "~> AUTH"))), "")
    errors = [ln.strip() for ln in out.splitlines() if ln.lstrip().startswith(("<**", "<~*", "***"))]
    return " ".join(auth_line.split(" ")[1:3]), errors


def s_client(port, starttls, ca, lines, timeout=30):
    """openssl s_client -starttls PROTO, verifying the chain and the IP;
    sends LINES after the handshake. Returns (exit status, stdout: the
    session after TLS, stderr: verification and s_client's own pre-TLS
    exchange)."""
    proc = run(["openssl", "s_client", "-connect", f"{HOST}:{port}", "-starttls", starttls,
                "-CAfile", ca, "-verify_return_error", "-verify_ip", HOST, "-crlf", "-ign_eof"]
               + (["-name", CLIENT_NAME] if starttls == "smtp" else []),
               input="".join(ln + "\n" for ln in lines).encode(), timeout=timeout)
    return proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")


def find_by_marker(p, markers):
    """{marker: message number} in the mailbox of POP3 session p."""
    found = {}
    for entry in p.uidl()[1]:
        n = int(entry.split()[0])
        head = b"\n".join(p.top(n, 0)[1])
        for mk in markers:
            if f"<{mk}@".encode() in head:
                found[mk] = n
    return found


def write_file(directory, name, data):
    path = os.path.join(directory, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


# ----------------------------------------------------------------- baseline

def cmd_baseline(a):
    R = Results(a.results, "lan/baseline")
    for user, env in ((a.lan_user, "LAN_PASSWORD"), (a.office_user, "LAN_OFFICE_PASSWORD"),
                      (a.printer_user, "LAN_PRINTER_PASSWORD")):
        with R.block(f"{user} logs in to Dovecot directly (USER/PASS)"):
            p = poplib.POP3(HOST, a.dovecot_port, timeout=TIMEOUT)
            p.user(user)
            R.record(p.pass_(os.environ[env]).startswith(b"+OK"), f"{user} logs in to Dovecot directly (USER/PASS)")
            p.quit()
        with R.block(f"{user} logs in to Postfix directly (AUTH PLAIN)"):
            s = smtp_session(a.postfix_port)
            code, _ = smtp_auth(s, "PLAIN", user, os.environ[env])
            R.equal(f"{user} logs in to Postfix directly (AUTH PLAIN)", code, 235)
            s.quit()
    return R.finish("baseline")


# ----------------------------------------------------------------- tls

def cmd_tls(a):
    R = Results(a.results, "lan/tls")
    ctx = ssl.create_default_context(cafile=a.ca)
    pw = os.environ["LAN_PASSWORD"]
    url_login = f"{q(a.user)}:{q(pw)}"
    pending = []  # (label, Message, received_with)

    # ---------------------------------------------------------- SMTPS
    with R.block("SMTPS listener: smtplib.SMTP_SSL"):
        s = smtplib.SMTP_SSL("localhost", a.smtps_port, timeout=TIMEOUT, context=ctx, local_hostname=CLIENT_NAME)
        code, _ = s.ehlo()
        f = features(s)
        R.record(code == 250 and f.get("auth", "").upper().split() == ["PLAIN", "LOGIN"] and "starttls" not in f,
                 "SMTPS listener: smtplib.SMTP_SSL handshake (verified for localhost); EHLO offers AUTH PLAIN LOGIN, no STARTTLS",
                 f"{s.sock.version()}; AUTH {f.get('auth')!r}")
        code, _ = s.login(a.user, pw)
        R.equal("SMTPS listener: smtplib login (AUTH PLAIN) accepted", code, 235)
        for kind in ("small", "utf8"):
            m = message("lan-smtps", "smtplib", kind)
            refused = s.sendmail(a.rcpt, [a.rcpt], m.wire, mail_options=["BODY=8BITMIME"] if kind == "utf8" else [])
            if R.record(not refused, f"SMTPS listener: smtplib sendmail {kind} accepted"):
                pending.append((f"SMTPS smtplib {kind}", m, a.smtps_received_with))
        s.quit()
    with R.block("SMTPS listener: curl smtps://"):
        m = message("lan-smtps", "curl", "big")
        path = write_file(a.tmp, f"{m.marker}.eml", m.wire)
        proc = run(["curl", "-sS", "-v", "--max-time", "60", "--ssl-reqd", "--cacert", a.ca,
                    f"smtps://{HOST}:{a.smtps_port}/{CLIENT_NAME}", "--mail-from", a.rcpt, "--mail-rcpt", a.rcpt,
                    "--upload-file", path, "-u", f"{a.user}:{pw}"])
        trace = proc.stderr.decode(errors="replace")
        if R.record(proc.returncode == 0,
                    f"SMTPS listener: curl --ssl-reqd --cacert smtps:// (3 MiB message) accepted, curl sent {curl_logins(trace)}",
                    f"exit {proc.returncode}: {curl_errors(trace)}" if proc.returncode else ""):
            pending.append(("SMTPS curl big", m, a.smtps_received_with))

    # ---------------------------------------------------------- STARTTLS
    with R.block("STARTTLS listener: before STARTTLS"):
        s = smtp_session(a.smtp_starttls_port)
        f = features(s)
        R.record("starttls" in f and "auth" not in f, "STARTTLS listener: EHLO before TLS offers STARTTLS, no AUTH",
                 " ".join(sorted(f)))
        try:
            s.login(a.user, pw)
            R.record(False, "STARTTLS listener: smtplib login before TLS refused (SMTPNotSupportedError)", "accepted")
        except smtplib.SMTPNotSupportedError as e:
            R.record(True, "STARTTLS listener: smtplib login before TLS refused (SMTPNotSupportedError)", str(e))
        blob = base64.b64encode(f"\0{a.user}\0{pw}".encode()).decode()
        code, resp = s.docmd("AUTH", f"PLAIN {blob}")
        R.record(code == 538 and resp.startswith(b"5.7.11"),
                 "STARTTLS listener: AUTH PLAIN before TLS answered 538 5.7.11", f"{code} {shorten(resp)}")
        code, resp = s.mail(a.rcpt)
        R.record(code == 530, "STARTTLS listener: MAIL before TLS (and AUTH) answered 530", f"{code} {shorten(resp)}")
        s.quit()
    with R.block("STARTTLS listener: smtplib starttls()"):
        s = smtp_session(a.smtp_starttls_port)
        code, _ = s.starttls(context=ctx)  # verifies the certificate for 127.0.0.1
        s.ehlo()
        f = features(s)
        R.record(code == 220 and f.get("auth", "").upper().split() == ["PLAIN", "LOGIN"] and "starttls" not in f,
                 "STARTTLS listener: smtplib starttls() (verified for 127.0.0.1); EHLO after TLS offers AUTH PLAIN LOGIN, no STARTTLS",
                 f"{s.sock.version()}; AUTH {f.get('auth')!r}")
        code, _ = s.login(a.user, pw)
        R.equal("STARTTLS listener: smtplib login after STARTTLS accepted", code, 235)
        m = message("lan-smtp-starttls", "smtplib", "dots")
        if R.record(not s.sendmail(a.rcpt, [a.rcpt], m.wire), "STARTTLS listener: smtplib sendmail dots accepted"):
            pending.append(("STARTTLS smtplib dots", m, a.starttls_received_with))
        s.quit()
    with R.block("STARTTLS listener: swaks --tls"):
        m = swaks_message("lan-smtp-starttls", "swaks")
        path = write_file(a.tmp, f"{m.marker}.eml", m.file_bytes)
        proc = run(["swaks", "--server", HOST, "--port", str(a.smtp_starttls_port), "--helo", CLIENT_NAME,
                    "--tls", "--tls-verify", "--tls-ca-path", a.ca,
                    "--auth", "LOGIN", "--auth-user", a.user, "--auth-password", pw,
                    "--from", a.rcpt, "--to", a.rcpt, "--data", "@" + path, "--timeout", "60"])
        out = proc.stdout.decode(errors="replace")
        sent_auth, errors = swaks_summary(out)
        tls = next((ln.strip() for ln in out.splitlines() if "TLS started" in ln), "")
        if R.record(proc.returncode == 0 and tls and sent_auth == "AUTH LOGIN",
                    "STARTTLS listener: swaks --tls --tls-verify (CA checked) --auth LOGIN delivered",
                    f"exit {proc.returncode}; {tls or 'no TLS started'}; sent {sent_auth or 'no AUTH'}; {' | '.join(errors)}"):
            pending.append(("STARTTLS swaks", m, a.starttls_received_with))
    with R.block("STARTTLS listener: openssl s_client -starttls smtp"):
        rc, out, _ = s_client(a.smtp_starttls_port, "smtp", a.ca, [f"EHLO {CLIENT_NAME}", "QUIT"])
        # stdout is the session after TLS: the reply to our EHLO.
        ehlo = [ln.strip() for ln in out.splitlines() if ln.startswith("250")]
        R.record(rc == 0 and "Verify return code: 0 (ok)" in out and any("AUTH PLAIN LOGIN" in ln for ln in ehlo)
                 and not any("STARTTLS" in ln for ln in ehlo),
                 "STARTTLS listener: openssl s_client -starttls smtp handshake verified; EHLO after TLS offers AUTH",
                 f"exit {rc}; EHLO {ehlo}")

    # ---------------------------------------------------------- delivered?
    markers = [m.marker for _, m, _ in pending]
    found = wait_delivered(a.maildir, markers)
    R.record(len(found) == len(markers), f"all {len(markers)} messages sent over the TLS listeners delivered",
             "" if len(found) == len(markers) else f"missing {[lb for lb, m, _ in pending if m.marker not in found]}")
    R.equal("Postfix queue empty after the deliveries", wait_queue_empty(a.postfix_queue), [])
    # ---------------------------------------------------------- POP3S (mailbox not empty now)
    stat = listing = None
    with R.block("POP3S listener: poplib.POP3_SSL session"):
        p = poplib.POP3_SSL("localhost", a.pop3s_port, timeout=TIMEOUT, context=ctx)
        R.record(p.getwelcome().startswith(b"+OK"),
                 "POP3S listener: poplib.POP3_SSL handshake (certificate verified for localhost), greeting +OK",
                 f"{p.sock.version()}, {p.sock.cipher()[0]}")
        caps = p.capa()
        R.record("USER" in caps and "STLS" not in caps, "POP3S listener: CAPA offers USER, no STLS",
                 " ".join(sorted(caps)))
        p.user(a.user)
        R.record(p.pass_(pw).startswith(b"+OK"), "POP3S listener: USER/PASS accepted (postern logged in upstream)")
        stat = p.stat()
        listing = p.list()[1]
        R.record(p.quit().startswith(b"+OK"), "POP3S listener: STAT, LIST, QUIT", f"STAT {stat}")
    with R.block("POP3S listener: curl pop3s:// LIST"):
        proc = run(["curl", "-sS", "-v", "--max-time", "60", "--ssl-reqd", "--cacert", a.ca,
                    f"pop3s://{url_login}@{HOST}:{a.pop3s_port}/"])
        trace = proc.stderr.decode(errors="replace")
        got = proc.stdout.replace(b"\r\n", b"\n").splitlines()
        R.record(proc.returncode == 0 and got == listing,
                 "POP3S listener: curl --ssl-reqd --cacert pop3s:// LIST (certificate verified) equals poplib's",
                 f"exit {proc.returncode}: {curl_errors(trace)}" if proc.returncode
                 else f"logins {curl_logins(trace)}; {describe_diff(got, listing) if got != listing else ''}")

    # ---------------------------------------------------------- STLS
    with R.block("STLS listener: before STLS"):
        p = poplib.POP3(HOST, a.pop3_stls_port, timeout=TIMEOUT)
        caps = p.capa()
        R.record("STLS" in caps and "USER" not in caps and "SASL" not in caps,
                 "STLS listener: CAPA before TLS offers STLS, hides USER and SASL", " ".join(sorted(caps)))
        expect_err(R, "STLS listener: USER before STLS refused (-ERR)", lambda: p.user(a.user))
        expect_err(R, "STLS listener: PASS before STLS refused (-ERR)", lambda: p.pass_(pw))
        blob = base64.b64encode(f"\0{a.user}\0{pw}".encode()).decode()
        expect_err(R, "STLS listener: AUTH PLAIN before STLS refused (-ERR)",
                   lambda: p._shortcmd(f"AUTH PLAIN {blob}"))  # noqa: SLF001
        p.quit()
    with R.block("STLS listener: poplib stls()"):
        p = poplib.POP3(HOST, a.pop3_stls_port, timeout=TIMEOUT)
        p.stls(ctx)  # verifies the certificate for the IP address 127.0.0.1
        caps = p.capa()
        R.record("USER" in caps and "STLS" not in caps,
                 "STLS listener: poplib stls() (certificate verified for 127.0.0.1); CAPA after TLS offers USER, no STLS",
                 f"{p.sock.version()}; " + " ".join(sorted(caps)))
        p.user(a.user)
        R.record(p.pass_(pw).startswith(b"+OK"), "STLS listener: USER/PASS after STLS accepted")
        R.equal("STLS listener: STAT equals the POP3S listener's", p.stat(), stat)
        p.quit()
    with R.block("STLS listener: curl --ssl-reqd pop3:// LIST"):
        proc = run(["curl", "-sS", "-v", "--max-time", "60", "--ssl-reqd", "--cacert", a.ca,
                    f"pop3://{url_login}@{HOST}:{a.pop3_stls_port}/"])
        trace = proc.stderr.decode(errors="replace")
        got = proc.stdout.replace(b"\r\n", b"\n").splitlines()
        logins = curl_logins(trace)
        R.record(proc.returncode == 0 and got == listing and logins[:1] == ["STLS"],
                 "STLS listener: curl --ssl-reqd pop3:// upgrades with STLS, logs in, LIST equals poplib's",
                 f"exit {proc.returncode}: {curl_errors(trace)}" if proc.returncode else f"curl sent {logins}")
    with R.block("STLS listener: openssl s_client -starttls pop3"):
        rc, out, _ = s_client(a.pop3_stls_port, "pop3", a.ca, ["CAPA", "QUIT"])
        after = out.split("+OK Capability list follows", 1)[-1] if "+OK Capability list follows" in out else ""
        caps = [ln.strip() for ln in after.split("\n.")[0].splitlines() if ln.strip()]
        R.record(rc == 0 and "Verify return code: 0 (ok)" in out and "USER" in caps and "STLS" not in caps,
                 "STLS listener: openssl s_client -starttls pop3 handshake verified; CAPA after TLS shows USER",
                 f"exit {rc}; CAPA {caps}; " + "; ".join(sorted({ln.strip() for ln in out.splitlines()
                                                                  if "Verify return" in ln or "Protocol" in ln})))

    via_pop3s = {}
    # ---------------------------------------------------------- read back
    via_pop3s = {}
    with R.block("fetched back over the POP3S listener"):
        p = poplib.POP3_SSL("localhost", a.pop3s_port, timeout=TIMEOUT, context=ctx)
        p.user(a.user)
        p.pass_(pw)
        numbers = find_by_marker(p, markers)
        for label, m, with_ in pending:
            n = numbers.get(m.marker)
            if n is None:
                R.record(False, f"{label}: fetched back over the POP3S listener", "not in the mailbox")
                continue
            via_pop3s[m.marker] = joined(p.retr(n)[1])
            check_delivered(R, f"{label}: fetched over the POP3S listener", via_pop3s[m.marker], m, with_)
        p.quit()
    with R.block("fetched back over the STLS listener"):
        p = poplib.POP3(HOST, a.pop3_stls_port, timeout=TIMEOUT)
        p.stls(ctx)
        p.user(a.user)
        p.pass_(pw)
        numbers = find_by_marker(p, markers)
        for label, m, _ in pending:
            if m.marker in via_pop3s and m.marker in numbers:
                R.equal(f"{label}: fetched over the STLS listener, equal to the POP3S fetch",
                        joined(p.retr(numbers[m.marker])[1]), via_pop3s[m.marker], "message")
        big = next(((m, numbers[m.marker]) for lb, m, _ in pending if m.kind == "big" and m.marker in numbers), None)
        p.quit()
    if big:
        with R.block("curl pop3s:// RETR of the 3 MiB message"):
            m, n = big
            proc = run(["curl", "-sS", "--max-time", "60", "--ssl-reqd", "--cacert", a.ca,
                        f"pop3s://{url_login}@{HOST}:{a.pop3s_port}/{n}"])
            R.equal("curl pop3s:// RETR of the 3 MiB message equals poplib's", proc.stdout, via_pop3s.get(m.marker),
                    "curl output")
    with R.block("delete the fetched messages"):
        p = poplib.POP3_SSL("localhost", a.pop3s_port, timeout=TIMEOUT, context=ctx)
        p.user(a.user)
        p.pass_(pw)
        for n in sorted(find_by_marker(p, markers).values()):
            p.dele(n)
        R.record(p.quit().startswith(b"+OK"), "fetched messages deleted (DELE + QUIT over the POP3S listener)")
    return R.finish("tls")


# ----------------------------------------------------------------- inject

def read_to_eof(sock, timeout=10):
    """(bytes received, closed?) until EOF or TIMEOUT."""
    sock.settimeout(timeout)
    data = b""
    try:
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                return data, True
            data += chunk
    except socket.timeout:
        return data, False
    except ConnectionResetError:
        return data, True


def cmd_inject(a):
    R = Results(a.results, "lan/inject")
    cases = [
        ("POP3 STLS listener: 'STLS\\r\\nCAPA\\r\\n' in one segment", a.pop3_stls_port, [], b"STLS\r\nCAPA\r\n"),
        ("SMTP STARTTLS listener: 'STARTTLS\\r\\nEHLO x\\r\\n' in one segment (after EHLO)",
         a.smtp_starttls_port, [b"EHLO x\r\n"], b"STARTTLS\r\nEHLO x\r\n"),
        ("SMTP STARTTLS listener: 'STARTTLS\\r\\nEHLO x\\r\\n' in one segment (no EHLO first)",
         a.smtp_starttls_port, [], b"STARTTLS\r\nEHLO x\r\n"),
    ]
    for name, port, before, injected in cases:
        with R.block(name):
            sock = socket.create_connection((HOST, port), timeout=TIMEOUT)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            f = sock.makefile("rb")
            greeting = f.readline()
            for cmd in before:
                sock.sendall(cmd)
                while True:  # the whole (multi-line) reply
                    line = f.readline()
                    if not line or line[3:4] != b"-":
                        break
            sock.sendall(injected)
            data, closed = read_to_eof(sock)
            sock.close()
            R.record(greeting[:1] in (b"+", b"2") and closed and data == b"",
                     f"{name}: postern closes the connection without answering",
                     f"got {shorten(data)}, {'closed' if closed else 'still open after 10s'}")
    # The same listener answers STLS / STARTTLS alone (the refusal above is
    # about the pipelined command, not the verb).
    with R.block("STLS alone is answered +OK"):
        r = Raw(a.pop3_stls_port)
        resp = r.cmd("STLS")
        R.record(resp.startswith(b"+OK"), "POP3 STLS listener: STLS alone answered +OK (reference)", shorten(resp))
        r.close()
    with R.block("STARTTLS alone is answered 220"):
        r = RawSMTP(a.smtp_starttls_port)
        r.ehlo()
        code, _, raw = r.cmd("STARTTLS")
        R.equal("SMTP STARTTLS listener: STARTTLS alone answered 220 (reference)", code, 220)
        r.close()
    return R.finish("inject")


# ----------------------------------------------------------------- accounts

class ServerLog:
    def __init__(self, path):
        self.path = path

    def size(self):
        return os.path.getsize(self.path)

    def read_from(self, offset):
        with open(self.path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")


def postfix_users_by_message_id(text, syslog_name):
    """{message-id: (sasl_method, sasl_username)} for mail accepted by the
    smtpd that logs as SYSLOG_NAME (queue id links smtpd and cleanup)."""
    by_qid = {}
    for m in re.finditer(rf" {re.escape(syslog_name)}/smtpd\[\d+\]: ([0-9A-F]+): client=[^,]*"
                         r"(?:, sasl_method=([^,\s]+), sasl_username=(\S+))?", text):
        by_qid[m.group(1)] = (m.group(2), m.group(3))
    result = {}
    for m in re.finditer(r" postfix/cleanup\[\d+\]: ([0-9A-F]+): message-id=<([^>]*)>", text):
        if m.group(1) in by_qid:
            result[m.group(2)] = by_qid[m.group(1)]
    return result


def fetchmail_apop(R, a, pw):
    """fetchmail, protocol APOP, keep + fetchall, every message to its own
    file through an MDA. Returns the list of delivered files' bytes."""
    with tempfile.TemporaryDirectory(dir=a.tmp) as home:
        out = os.path.join(home, "out")
        os.mkdir(out)
        rc_path = os.path.join(home, "fetchmailrc")
        fd = os.open(rc_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("set no syslog\n"
                    "set invisible\n"  # no Received: header of its own
                    f"poll {HOST} with protocol APOP port {a.pop3_port} timeout 30:\n"
                    f'  user "{a.scanner_user}" there with password "{pw}"\n'
                    "  keep fetchall no mimedecode\n"
                    "  sslproto ''\n"  # no STLS: the accounts route is plain
                    f"  mda \"/bin/sh -c 'cat > {out}/msg.$$'\"\n")
        env = dict(os.environ, FETCHMAILHOME=home)  # .fetchids, pid file: not in $HOME
        proc = run(["fetchmail", "-v", "--nosyslog", "-f", rc_path], env=env, timeout=120)
        text = (proc.stdout + proc.stderr).decode(errors="replace")
        sent = [ln.split("POP3> ", 1)[1].split(" ")[0] for ln in text.splitlines() if "POP3> " in ln]
        retrieved = re.search(r"(\d+) messages? for \S+ at", text)
        files = sorted(glob.glob(os.path.join(out, "msg.*")))
        data = []
        for path in files:
            with open(path, "rb") as f:
                data.append(f.read())
        R.record(proc.returncode == 0 and sent[:1] == ["APOP"] and "USER" not in sent and "AUTH" not in sent
                 and retrieved is not None and int(retrieved.group(1)) == len(files) > 0,
                 "fetchmail (protocol APOP, local password) logs in and retrieves every message",
                 f"exit {proc.returncode}; commands {sent}; {len(files)} files; "
                 + " | ".join(ln for ln in text.splitlines() if "fetchmail:" in ln and "POP3" not in ln)[:250])
        return data


def cmd_accounts(a):
    R = Results(a.results, "lan/accounts")
    pw = os.environ["LAN_SCANNER_PASSWORD"]
    other_pw = os.environ["LAN_PASSWORD"]
    office_pw = os.environ["LAN_OFFICE_PASSWORD"]
    plog = ServerLog(a.postfix_log)
    dlog = ServerLog(a.dovecot_log)
    pending = []   # (label, Message, upstream user expected in Postfix's log)
    p_offset = plog.size()

    # ---------------------------------------------------------- what is offered
    with R.block("POP3 accounts route: greeting and CAPA"):
        p1 = poplib.POP3(HOST, a.pop3_port, timeout=TIMEOUT)
        p2 = poplib.POP3(HOST, a.pop3_port, timeout=TIMEOUT)
        ts1 = re.search(rb"<[^<>@\s]+@[^<>\s]+>", p1.getwelcome())
        ts2 = re.search(rb"<[^<>@\s]+@[^<>\s]+>", p2.getwelcome())
        R.record(ts1 is not None and ts2 is not None and ts1.group(0) != ts2.group(0),
                 "POP3 accounts route: greeting carries postern's own APOP timestamp, fresh per connection",
                 f"{p1.getwelcome().decode(errors='replace')}")
        caps = p1.capa()
        R.record("USER" in caps and set(caps.get("SASL", [])) == {"PLAIN", "CRAM-MD5"},
                 "POP3 accounts route: CAPA offers USER and SASL PLAIN CRAM-MD5",
                 " ".join(sorted(caps)) + " SASL=" + " ".join(caps.get("SASL", [])))
        p1.quit()
        p2.quit()
    with R.block("SMTP accounts route: EHLO"):
        s = smtp_session(a.smtp_port)
        R.equal("SMTP accounts route: EHLO from 127.0.0.1 offers AUTH PLAIN LOGIN CRAM-MD5",
                features(s).get("auth", "").upper().split(), ["PLAIN", "LOGIN", "CRAM-MD5"])
        s.quit()
    with R.block("SMTP accounts route: a source that is no device"):
        s = smtp_session(a.smtp_port, NON_DEVICE_SOURCE)
        R.record("auth" in features(s), f"SMTP accounts route: EHLO from {NON_DEVICE_SOURCE} offers AUTH",
                 f"AUTH {features(s).get('auth')!r}")
        code, resp = s.mail(a.rcpt)
        R.record(code == 530 and resp.startswith(b"5.7.0"),
                 f"SMTP accounts route: MAIL without AUTH from {NON_DEVICE_SOURCE} answered 530 5.7.0",
                 f"{code} {shorten(resp)}")
        s.quit()

    # ---------------------------------------------------------- sending
    with R.block("swaks --auth CRAM-MD5 (local password)"):
        m = swaks_message("lan-smtp-accounts", "swaks-cram")
        path = write_file(a.tmp, f"{m.marker}.eml", m.file_bytes)
        proc = run(["swaks", "--server", HOST, "--port", str(a.smtp_port), "--helo", CLIENT_NAME,
                    "--auth", "CRAM-MD5", "-au", a.scanner_user, "-ap", pw,
                    "--from", a.rcpt, "--to", a.rcpt, "--data", "@" + path, "--timeout", "60"])
        sent_auth, errors = swaks_summary(proc.stdout.decode(errors="replace"))
        if R.record(proc.returncode == 0 and sent_auth == "AUTH CRAM-MD5",
                    f"swaks --auth CRAM-MD5 -au {a.scanner_user} (local password) delivered through the accounts route",
                    f"exit {proc.returncode}, sent {sent_auth or 'no AUTH'}; {' | '.join(errors)}"):
            pending.append(("swaks CRAM-MD5", m, a.office_user))
    for mech, kind, opts in (("CRAM-MD5", "dots", []), ("PLAIN", "utf8", ["BODY=8BITMIME"]),
                             ("LOGIN", "small", [])):
        with R.block(f"smtplib AUTH {mech} (local password)"):
            s = smtp_session(a.smtp_port)
            code, resp = smtp_auth(s, mech, a.scanner_user, pw)
            R.record(code == 235, f"smtplib AUTH {mech} as {a.scanner_user} with the local password: 235",
                     f"{code} {shorten(resp)}")
            m = message("lan-smtp-accounts", f"smtplib-{mech.lower()}", kind)
            if R.record(not s.sendmail(a.rcpt, [a.rcpt], m.wire, mail_options=opts),
                        f"smtplib AUTH {mech} then sendmail {kind} accepted"):
                pending.append((f"smtplib AUTH {mech} {kind}", m, a.office_user))
            s.quit()
    with R.block("device: swaks from 127.0.0.9 without AUTH"):
        m = swaks_message("lan-smtp-accounts", "device-swaks")
        path = write_file(a.tmp, f"{m.marker}.eml", m.file_bytes)
        proc = run(["swaks", "--server", HOST, "--port", str(a.smtp_port), "--local-interface", DEVICE_SOURCE,
                    "--helo", CLIENT_NAME, "--from", a.rcpt, "--to", a.rcpt, "--data", "@" + path, "--timeout", "60"])
        out = proc.stdout.decode(errors="replace")
        sent_auth, errors = swaks_summary(out)
        offered = [ln.strip() for ln in out.splitlines() if re.match(r"\s*<-\s+250[ -]AUTH", ln)]
        if R.record(proc.returncode == 0 and not sent_auth and not offered,
                    f"device: swaks --local-interface {DEVICE_SOURCE}, no AUTH offered or sent, delivered",
                    f"exit {proc.returncode}; offered {offered}; sent {sent_auth or 'no AUTH'}; {' | '.join(errors)}"):
            pending.append(("device swaks", m, a.printer_user))
    with R.block("device: smtplib from 127.0.0.9 without AUTH"):
        s = smtp_session(a.smtp_port, DEVICE_SOURCE)
        f = features(s)
        R.record("auth" not in f, f"device: EHLO from {DEVICE_SOURCE} does not offer AUTH", " ".join(sorted(f)))
        m = message("lan-smtp-accounts", "device-smtplib", "big")
        if R.record(not s.sendmail(a.rcpt, [a.rcpt], m.wire),
                    f"device: MAIL without AUTH from {DEVICE_SOURCE} accepted, 3 MiB message sent"):
            pending.append(("device smtplib big", m, a.printer_user))
        s.quit()

    markers = [m.marker for _, m, _ in pending]
    found = wait_delivered(a.maildir, markers)
    R.record(len(found) == len(markers), f"all {len(markers)} messages sent through the accounts route delivered",
             "" if len(found) == len(markers) else f"missing {[lb for lb, m, _ in pending if m.marker not in found]}")
    R.equal("Postfix queue empty after the deliveries", wait_queue_empty(a.postfix_queue), [])
    users = postfix_users_by_message_id(plog.read_from(p_offset), a.postfix_syslog_name)
    for label, m, want_user in pending:
        got = users.get(f"{m.marker}@postern-interop.invalid")
        R.record(got is not None and got[1] == want_user,
                 f"{label}: Postfix accepted it from the stored upstream user {want_user}",
                 f"sasl_method={got[0]}, sasl_username={got[1]}" if got else "no smtpd line for its queue id")

    # ---------------------------------------------------------- fetching
    fetched = fetchmail_apop(R, a, pw)
    with R.block("poplib APOP (local password): fetch back and compare"):
        p = poplib.POP3(HOST, a.pop3_port, timeout=TIMEOUT)
        R.record(p.apop(a.scanner_user, pw).startswith(b"+OK"),
                 f"poplib .apop({a.scanner_user}, local password) against postern's timestamp accepted")
        count = p.stat()[0]
        numbers = find_by_marker(p, markers)
        for label, m, _ in pending:
            n = numbers.get(m.marker)
            if n is None:
                R.record(False, f"{label}: fetched through the POP3 accounts route (APOP)", "not in the mailbox")
                continue
            check_delivered(R, f"{label}: sent via the SMTP accounts route, fetched via the POP3 accounts route (APOP)",
                            joined(p.retr(n)[1]), m, a.received_with)
        served = [joined(p.retr(n)[1]).replace(b"\r\n", b"\n") for n in range(1, count + 1)]
        p.quit()
        R.record(sorted(fetched) == sorted(served),
                 "fetchmail's messages equal poplib's RETR of the same mailbox (line ends as LF)",
                 f"fetchmail {len(fetched)}, mailbox {len(served)} messages" if len(fetched) != len(served)
                 else ("" if sorted(fetched) == sorted(served) else describe_diff(sorted(fetched), sorted(served))))
    with R.block("AUTH CRAM-MD5 on POP3 (local password)"):
        r = Raw(a.pop3_port)
        r.cram_md5(a.scanner_user, pw)
        R.record(r.cmd("STAT").startswith(b"+OK %d " % count),
                 "raw AUTH CRAM-MD5 with the local password against postern's challenge, then STAT")
        r.quit()
    with R.block("USER/PASS on POP3 (local password)"):
        p = poplib.POP3(HOST, a.pop3_port, timeout=TIMEOUT)
        p.user(a.scanner_user)
        R.record(p.pass_(pw).startswith(b"+OK"), "poplib USER/PASS with the local password accepted")
        R.equal("USER/PASS session STAT counts the same messages", p.stat()[0], count)
        p.quit()
    with R.block("AUTH PLAIN on POP3 (local password)"):
        r = Raw(a.pop3_port)
        r.auth_plain(a.scanner_user, pw)
        R.record(True, "raw AUTH PLAIN with the local password accepted")
        r.quit()

    # ---------------------------------------------------------- refusals
    # Each from its own source address: local failures are counted per
    # address (5 in 10 minutes lock it out) and answered after 1.5 s.
    d_offset, p_offset = dlog.size(), plog.size()
    blob = base64.b64encode(f"\0{a.scanner_user}\0{pw}-wrong".encode()).decode()
    refusals = [
        ("POP3 APOP with a wrong local password", "127.0.0.21",
         lambda src: pop3_refused(a, src, lambda p: p.apop(a.scanner_user, pw + "-wrong"))),
        ("POP3 USER/PASS with a wrong local password", "127.0.0.22",
         lambda src: pop3_refused(a, src, lambda p: (p.user(a.scanner_user), p.pass_(pw + "-wrong")))),
        ("POP3 AUTH CRAM-MD5 with a wrong local password", "127.0.0.23",
         lambda src: pop3_raw_refused(a, src, lambda r: r.cram_md5(a.scanner_user, pw + "-wrong"))),
        ("POP3 AUTH PLAIN with a wrong local password", "127.0.0.24",
         lambda src: pop3_raw_refused(a, src, lambda r: r.ok_line(r.cmd(f"AUTH PLAIN {blob}"), "AUTH PLAIN"))),
        (f"POP3 USER/PASS as {a.other_user} (not an account, her real password; passthrough: false)", "127.0.0.25",
         lambda src: pop3_refused(a, src, lambda p: (p.user(a.other_user), p.pass_(other_pw)))),
        (f"POP3 USER/PASS as the stored upstream user {a.office_user} with its real password", "127.0.0.26",
         lambda src: pop3_refused(a, src, lambda p: (p.user(a.office_user), p.pass_(office_pw)))),
        ("SMTP AUTH CRAM-MD5 with a wrong local password", "127.0.0.27",
         lambda src: smtp_refused(a, src, "CRAM-MD5", a.scanner_user, pw + "-wrong")),
        ("SMTP AUTH PLAIN with a wrong local password", "127.0.0.28",
         lambda src: smtp_refused(a, src, "PLAIN", a.scanner_user, pw + "-wrong")),
        (f"SMTP AUTH PLAIN as {a.other_user} (not an account, her real password; passthrough: false)", "127.0.0.29",
         lambda src: smtp_refused(a, src, "PLAIN", a.other_user, other_pw)),
        (f"SMTP AUTH LOGIN as the stored upstream user {a.office_user} with its real password", "127.0.0.30",
         lambda src: smtp_refused(a, src, "LOGIN", a.office_user, office_pw)),
    ]
    outcomes = [None] * len(refusals)

    def worker(i, src, fn):
        try:
            outcomes[i] = fn(src)
        except Exception as e:  # noqa: BLE001 - reported below
            outcomes[i] = (False, f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=worker, args=(i, src, fn)) for i, (_, src, fn) in enumerate(refusals)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT * 2)
    for (name, src, _), outcome in zip(refusals, outcomes):
        ok, detail = outcome or (False, "did not finish")
        R.record(ok, f"refused: {name} (from {src})", detail)

    # postern checks local credentials before it opens an upstream
    # connection: a refused login must not reach Dovecot or Postfix at all
    # (not even a connection). Give a late connection a moment to show.
    time.sleep(1.5)
    d_lines = [ln for ln in dlog.read_from(d_offset).splitlines() if f", lport={a.dovecot_lport}," in ln]
    p_lines = [ln for ln in plog.read_from(p_offset).splitlines() if f" {a.postfix_syslog_name}/smtpd[" in ln]
    R.record(not d_lines, f"Dovecot (port {a.dovecot_lport}) saw no connection during the refusals",
             shorten(d_lines[:2]) if d_lines else "0 lines")
    connects = [ln for ln in p_lines if ": connect from " in ln or "sasl_" in ln]
    R.record(not connects, f"Postfix ({a.postfix_syslog_name}) saw no connection during the refusals",
             shorten(connects[:2]) if connects else "0 connections")

    # ---------------------------------------------------------- clean up
    with R.block("delete the fetched messages"):
        p = poplib.POP3(HOST, a.pop3_port, timeout=TIMEOUT)
        p.apop(a.scanner_user, pw)
        for n in sorted(find_by_marker(p, markers).values()):
            p.dele(n)
        R.record(p.quit().startswith(b"+OK"), "fetched messages deleted (DELE + QUIT through the accounts route)")
    return R.finish("accounts")


def pop3_refused(a, src, login):
    p = SourcePOP3(a.pop3_port, src)
    try:
        login(p)
        return False, "the login was accepted"
    except poplib.error_proto as e:
        reply = e.args[0] if e.args else b""
        return isinstance(reply, bytes) and reply.startswith(b"-ERR"), shorten(reply)
    finally:
        p.close()


def pop3_raw_refused(a, src, login):
    r = SourceRaw(a.pop3_port, src)
    try:
        login(r)
        return False, "the login was accepted"
    except RuntimeError as e:
        return "-ERR" in str(e), str(e)
    finally:
        r.close()


def smtp_refused(a, src, mech, user, password):
    s = smtp_session(a.smtp_port, src)
    try:
        smtp_auth(s, mech, user, password)
        return False, "the login was accepted"
    except smtplib.SMTPAuthenticationError as e:
        code, resp = s.mail(a.rcpt)
        return (e.smtp_code == 535 and code == 530,
                f"AUTH {e.smtp_code} {shorten(e.smtp_error)}; then MAIL {code}")
    finally:
        s.close()


# ----------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    b = sub.add_parser("baseline")
    b.add_argument("--results", required=True)
    b.add_argument("--dovecot-port", type=int, required=True)
    b.add_argument("--postfix-port", type=int, required=True)
    b.add_argument("--lan-user", required=True)
    b.add_argument("--office-user", required=True)
    b.add_argument("--printer-user", required=True)

    t = sub.add_parser("tls")
    t.add_argument("--results", required=True)
    t.add_argument("--tmp", required=True)
    t.add_argument("--ca", required=True)
    t.add_argument("--pop3s-port", type=int, required=True)
    t.add_argument("--pop3-stls-port", type=int, required=True)
    t.add_argument("--smtps-port", type=int, required=True)
    t.add_argument("--smtp-starttls-port", type=int, required=True)
    t.add_argument("--smtps-received-with", required=True)
    t.add_argument("--starttls-received-with", required=True)
    t.add_argument("--user", required=True)
    t.add_argument("--rcpt", required=True)
    t.add_argument("--maildir", required=True)
    t.add_argument("--postfix-queue", required=True)

    i = sub.add_parser("inject")
    i.add_argument("--results", required=True)
    i.add_argument("--pop3-stls-port", type=int, required=True)
    i.add_argument("--smtp-starttls-port", type=int, required=True)

    c = sub.add_parser("accounts")
    c.add_argument("--results", required=True)
    c.add_argument("--tmp", required=True)
    c.add_argument("--pop3-port", type=int, required=True)
    c.add_argument("--smtp-port", type=int, required=True)
    c.add_argument("--rcpt", required=True)
    c.add_argument("--maildir", required=True)
    c.add_argument("--received-with", required=True)
    c.add_argument("--postfix-queue", required=True)
    c.add_argument("--postfix-log", required=True)
    c.add_argument("--postfix-syslog-name", required=True)
    c.add_argument("--dovecot-log", required=True)
    c.add_argument("--dovecot-lport", type=int, required=True)
    c.add_argument("--other-user", required=True)
    c.add_argument("--office-user", required=True)
    c.add_argument("--printer-user", required=True)
    c.add_argument("--scanner-user", required=True)

    a = ap.parse_args()
    if a.cmd == "baseline":
        return cmd_baseline(a)
    if a.cmd == "inject":
        return cmd_inject(a)
    with tempfile.TemporaryDirectory(dir=a.tmp) as tmp:
        a.tmp = tmp
        return cmd_tls(a) if a.cmd == "tls" else cmd_accounts(a)


if __name__ == "__main__":
    sys.exit(main())
