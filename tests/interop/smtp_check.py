#!/usr/bin/env python3
"""SMTP interop checks, driven by tests/interop/run.sh (suites/smtp.sh).

  baseline     talks to Postfix directly: what each port advertises, that
               relaying needs SASL, that CRAM-MD5 / STARTTLS + PLAIN / SMTPS
               + LOGIN logins deliver into the Maildir Dovecot serves (the
               file compared byte for byte), and that this Postfix ends DATA
               at a bare "\\n.\\n" (so the smuggling check below means
               something).
  route        talks to one postern SMTP route the way legacy clients do
               (smtplib PLAIN and LOGIN, a raw pipelining socket, swaks,
               curl), fetches every message back through a postern POP3
               route and compares it with what the client sent; plus the
               refusals: MAIL before AUTH (530), a wrong password (535), a
               bare LF in DATA (521, nothing delivered).
  postfix-log  reads Postfix's log for one smtpd port: which SASL mechanism
               every login used and whether it was inside TLS.

Each check appends "PASS|FAIL<TAB>name<TAB>detail" to --results. Exit
status: 0 all passed, 3 some check failed, anything else means the driver
itself broke. Passwords are never printed; they come from the environment.

What Postfix legitimately changes in a message: it prepends trace headers
(Return-Path, Delivered-To, Received; X-Original-To where the recipient
was rewritten) and nothing else with this configuration (no header
rewriting, every header the checks send is complete). So a delivered
message must be exactly: such trace headers, then the sent message.
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
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import seed_maildir  # noqa: E402 - the same test messages the POP3 suite seeds
from pop3_check import Results, describe_diff, joined, shorten  # noqa: E402

HOST = "127.0.0.1"
TIMEOUT = 30
DELIVERY_TIMEOUT = 60  # seconds for Postfix to put a message into the Maildir
TRACE_HEADERS = {b"return-path", b"delivered-to", b"x-original-to", b"received"}


# ----------------------------------------------------------------- messages

def crlf(data):
    return data.replace(b"\n", b"\r\n")


class Message:
    """One test message: `wire` is what the client hands its SMTP library
    (the message, CRLF, not dot-stuffed); `expected` is what must follow the
    trace headers in the delivered message."""

    def __init__(self, kind, marker, lf_data, expected=None):
        self.kind = kind
        self.marker = marker
        self.wire = crlf(lf_data)
        self.expected = self.wire if expected is None else expected
        self.smtputf8 = False  # sent with MAIL FROM:<...> SMTPUTF8

    def __repr__(self):
        return f"<{self.kind} {self.marker}>"


def with_marker(lf_data, marker):
    """The seeded message with its Message-ID replaced by one carrying the
    marker, so that each send is found again."""
    head, sep, body = lf_data.partition(b"\n\n")
    lines = [ln for ln in head.split(b"\n") if not ln.lower().startswith(b"message-id:")]
    lines.insert(4, f"Message-ID: <{marker}@postern-interop.invalid>".encode())
    return b"\n".join(lines) + sep + body


SEEDS = {
    "small": seed_maildir.msg_small,
    "dots": seed_maildir.msg_dots,
    "utf8": seed_maildir.msg_utf8,
    "big": seed_maildir.msg_big,
}


def msg_utf8_header():
    """The 8-bit message with a raw UTF-8 Subject: needs SMTPUTF8."""
    head, sep, body = seed_maildir.msg_utf8().partition(b"\n\n")
    lines = [("Subject: 8ビット テスト, SMTPUTF8 ✉".encode() if ln.startswith(b"Subject:") else ln)
             for ln in head.split(b"\n")]
    return b"\n".join(lines) + sep + body


SEEDS["utf8-header"] = msg_utf8_header


def new_marker(route, client, kind):
    return f"{route}-{client}-{kind}-{os.getpid()}-{time.time_ns()}"


def message(route, client, kind):
    marker = new_marker(route, client, kind)
    return Message(kind, marker, with_marker(SEEDS[kind](), marker))


def swaks_message(route, client):
    """swaks dot-stuffs and converts LF to CRLF itself, strips a final lone
    "." line and ends the data with its own CRLF: so the file has no final
    newline and no final "." line, and the message arrives as the file in
    CRLF form plus that CRLF. It also reads a literal backslash-n or a
    %TOKEN% as its own syntax: the text has neither."""
    marker = new_marker(route, client, "swaks")
    text = with_marker(
        b"From: Postern Interop <sender@interop.invalid>\n"
        b"To: Mailbox Owner <owner@interop.invalid>\n"
        b"Subject: swaks through postern\n"
        b"Date: Mon, 27 Nov 2023 10:00:09 +0000\n"
        b"Message-ID: <x@y>\n"
        b"MIME-Version: 1.0\n"
        b"Content-Type: text/plain; charset=utf-8\n"
        b"Content-Transfer-Encoding: 8bit\n"
        b"\n"
        b".leading dot\n"
        b"..\n"
        b".\n"
        b"Gr\xc3\xbc\xc3\x9fe aus K\xc3\xb6ln \xe2\x80\x94 na\xc3\xafve caf\xc3\xa9\n"
        b"\n"
        b"last line", marker)
    m = Message("swaks", marker, text, expected=crlf(text) + b"\r\n")
    m.file_bytes = text
    return m


# ----------------------------------------------------------------- Maildir

def maildir_files(maildir):
    return glob.glob(os.path.join(maildir, "new", "*")) + glob.glob(os.path.join(maildir, "cur", "*"))


def find_in_maildir(maildir, markers):
    """{marker: path} for the markers present in the Maildir."""
    found = {}
    for path in maildir_files(maildir):
        try:
            with open(path, "rb") as f:
                head = f.read(16384)
        except FileNotFoundError:  # Dovecot moved it new/ -> cur/
            continue
        for m in markers:
            if m.encode() in head:
                found[m] = path
    return found


def wait_delivered(maildir, markers, timeout=DELIVERY_TIMEOUT):
    deadline = time.monotonic() + timeout
    while True:
        found = find_in_maildir(maildir, markers)
        if len(found) == len(markers) or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def queue_files(queue):
    return [p for d in ("maildrop", "incoming", "active", "deferred", "hold")
            for p in glob.glob(os.path.join(queue, d, "**", "*"), recursive=True) if os.path.isfile(p)]


def wait_queue_empty(queue, timeout=20):
    deadline = time.monotonic() + timeout
    while queue_files(queue) and time.monotonic() < deadline:
        time.sleep(0.1)
    return queue_files(queue)


# ----------------------------------------------------------------- comparing

def split_trace(delivered, expected):
    """(trace header lines, error): the part before the sent message must be
    whole CRLF header fields, each a trace header."""
    if not delivered.endswith(expected):
        return None, None
    prefix = delivered[:len(delivered) - len(expected)]
    if prefix and not prefix.endswith(b"\r\n"):
        return None, f"the part before the message does not end a line: {shorten(prefix[-60:])}"
    fields = []
    for line in prefix.split(b"\r\n")[:-1] if prefix else []:
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b"\r\n" + line
        else:
            fields.append(line)
    for field in fields:
        name = field.split(b":", 1)[0].lower()
        if b":" not in field or name not in TRACE_HEADERS:
            return None, f"Postfix added a non-trace header: {shorten(field[:100])}"
    return fields, None


def check_delivered(R, label, delivered, msg, received_with):
    """The delivered bytes (CRLF) are trace headers + exactly the message."""
    fields, problem = split_trace(delivered, msg.expected)
    if fields is None and problem is None:
        tail = delivered[-len(msg.expected):] if len(delivered) >= len(msg.expected) else delivered
        return R.record(False, f"{label}: delivered message ends with the sent one, byte for byte",
                        f"{len(delivered)} bytes delivered, {len(msg.expected)} sent; "
                        f"tail vs sent: {describe_diff(tail, msg.expected)}")
    if problem:
        return R.record(False, f"{label}: only trace headers added before the sent message", problem)
    received = [f for f in fields if f.lower().startswith(b"received:")]
    top = received[0] if received else b""
    if msg.smtputf8:  # RFC 6531 §3.7.2: UTF8SMTPA, UTF8SMTPSA
        received_with = received_with.replace("ESMTP", "UTF8SMTP")
    ok = re.search(rb"\bwith " + received_with.encode() + rb" id ", top) is not None
    names = ", ".join(sorted({f.split(b":", 1)[0].decode() for f in fields}))
    return R.record(ok, f"{label}: delivered byte for byte ({len(msg.expected)} bytes), "
                        f"after trace headers only; Received says 'with {received_with}'",
                    names if ok else f"top Received: {shorten(top)}")


# ----------------------------------------------------------------- raw client

class RawSMTP:
    """An SMTP client on a bare socket: exact bytes, pipelining by hand."""

    def __init__(self, port, tls_context=None, server_name=None):
        sock = socket.create_connection((HOST, port), timeout=TIMEOUT)
        if tls_context is not None:
            sock = tls_context.wrap_socket(sock, server_hostname=server_name)
        self.sock = sock
        self.file = sock.makefile("rb")
        self.greeting = self.reply()

    def reply(self):
        """One complete reply: (code, text lines as bytes, raw)."""
        raw = b""
        while True:
            line = self.file.readline(4096)
            if not line:
                raise ConnectionError(f"connection closed by the server (after {shorten(raw)})")
            raw += line
            if not line.endswith(b"\r\n"):
                raise ValueError(f"reply line not ended by CRLF: {shorten(line)}")
            if line[3:4] != b"-":
                code = int(line[:3])
                texts = [ln[4:] for ln in raw.split(b"\r\n")[:-1]]
                return code, texts, raw

    def send(self, data):
        self.sock.sendall(data)

    def cmd(self, line):
        self.send(line.encode() + b"\r\n")
        return self.reply()

    def ehlo(self, name="client.interop.test"):
        code, texts, _ = self.cmd(f"EHLO {name}")
        if code != 250:
            raise RuntimeError(f"EHLO answered {code}")
        return [t.decode(errors="replace") for t in texts[1:]]

    def auth_plain(self, user, password):
        blob = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        return self.cmd(f"AUTH PLAIN {blob}")

    def eof(self):
        """True if the server closed the connection (nothing more to read)."""
        try:
            return self.file.read(1) == b""
        except (ConnectionError, socket.timeout, ssl.SSLError):
            return True

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def dot_stuff(wire):
    out = b"\r\n".join((b"." + ln if ln.startswith(b".") else ln) for ln in wire.split(b"\r\n"))
    return out


def smtplib_session(port, user, password, mech=None, initial_response_ok=True):
    s = smtplib.SMTP(HOST, port, timeout=TIMEOUT, local_hostname="client.interop.test")
    s.ehlo()
    if mech is None:
        s.login(user, password)
    else:
        s.user, s.password = user, password
        s.auth(mech, getattr(s, "auth_" + mech.lower().replace("-", "_")), initial_response_ok=initial_response_ok)
    return s


def features(s):
    return {k.lower(): v for k, v in s.esmtp_features.items()}


# ----------------------------------------------------------------- baseline

def cmd_baseline(a):
    R = Results(a.results, "postfix/baseline")
    ctx = ssl.create_default_context(cafile=a.ca)
    sent = []  # (label, Message, received_with)

    with R.block("direct port EHLO"):
        s = smtplib.SMTP(HOST, a.direct_port, timeout=TIMEOUT, local_hostname="client.interop.test")
        s.ehlo()
        f = features(s)
        mechs = set(f.get("auth", "").upper().split())
        R.record({"PLAIN", "LOGIN", "CRAM-MD5"} <= mechs and "starttls" in f,
                 "direct port offers STARTTLS and AUTH PLAIN LOGIN CRAM-MD5 (Dovecot's mechanisms)",
                 f"AUTH {f.get('auth')!r}, STARTTLS {'starttls' in f}")
        R.record(all(k in f for k in ("8bitmime", "smtputf8", "dsn", "pipelining", "size")),
                 "Postfix advertises 8BITMIME SMTPUTF8 DSN PIPELINING SIZE (postern relays the first three)",
                 " ".join(sorted(f)))
        # No AUTH: relaying, even to the local domain, is refused.
        code, resp = s.mail(a.sender)
        R.equal("MAIL without AUTH accepted by Postfix (the refusal comes at RCPT)", code, 250)
        code, resp = s.rcpt(a.rcpt)
        R.record(code == 554 and b"5.7.1" in resp and b"Access denied" in resp,
                 "RCPT without AUTH refused: 554 5.7.1 Access denied (relaying needs SASL, mynetworks empty)",
                 f"{code} {shorten(resp)}")
        s.quit()

    with R.block("CRAM-MD5 port"):
        s = smtplib.SMTP(HOST, a.cram_port, timeout=TIMEOUT, local_hostname="client.interop.test")
        s.ehlo()
        f = features(s)
        R.record(f.get("auth", "").upper().split() == ["CRAM-MD5"] and "starttls" not in f,
                 "CRAM-MD5 port offers only AUTH CRAM-MD5, no STARTTLS", f"AUTH {f.get('auth')!r}")
        s.login(a.user, a.password)  # smtplib prefers CRAM-MD5; it is the only one
        m = message("direct", "cram", "utf8")
        s.sendmail(a.sender, [a.rcpt], m.wire, mail_options=["BODY=8BITMIME"])
        R.record(True, "direct CRAM-MD5 login and 8-bit message accepted")
        sent.append(("direct CRAM-MD5 (8-bit)", m, "ESMTPA"))
        s.quit()

    for port in a.submission_ports:
        with R.block(f"submission port {port}"):
            s = smtplib.SMTP(HOST, port, timeout=TIMEOUT, local_hostname="client.interop.test")
            s.ehlo()
            f = features(s)
            R.record("starttls" in f and "auth" not in f,
                     f"submission port {port} offers STARTTLS and no AUTH before it", " ".join(sorted(f)))
            code, resp = s.mail(a.sender)
            R.record(code == 530, f"submission port {port}: MAIL before STARTTLS refused with 530",
                     f"{code} {shorten(resp)}")
            s.starttls(context=ctx)  # verifies the certificate for 127.0.0.1
            s.ehlo()
            f = features(s)
            R.record({"PLAIN", "LOGIN"} <= set(f.get("auth", "").upper().split()),
                     f"submission port {port}: AUTH PLAIN LOGIN offered after STARTTLS", f"AUTH {f.get('auth')!r}")
            s.quit()
    with R.block("submission STARTTLS + PLAIN delivery"):
        s = smtplib.SMTP(HOST, a.submission_ports[0], timeout=TIMEOUT, local_hostname="client.interop.test")
        s.starttls(context=ctx)
        s.ehlo()
        s.user, s.password = a.user, a.password
        s.auth("PLAIN", s.auth_plain)
        m = message("direct", "submission", "dots")
        s.sendmail(a.sender, [a.rcpt], m.wire)
        sent.append(("direct STARTTLS + PLAIN (dot lines)", m, "ESMTPSA"))
        s.quit()

    with R.block("SMTPS port"):
        s = smtplib.SMTP_SSL("localhost", a.smtps_port, timeout=TIMEOUT, context=ctx,
                             local_hostname="client.interop.test")
        s.ehlo()
        R.record("LOGIN" in features(s).get("auth", "").upper().split(),
                 "SMTPS port: TLS handshake verified for localhost, AUTH LOGIN offered", s.sock.version())
        s.user, s.password = a.user, a.password
        s.auth("LOGIN", s.auth_login, initial_response_ok=False)
        m = message("direct", "smtps", "small")
        s.sendmail(a.sender, [a.rcpt], m.wire)
        sent.append(("direct SMTPS + LOGIN", m, "ESMTPSA"))
        s.quit()

    # The smuggling demonstration: what postern must prevent. This Postfix
    # takes "\n.\n" as the end of the data, so the bytes after it become a
    # second, smuggled message.
    smuggle = smuggle_payload(a, "direct")
    with R.block("bare LF smuggling, directly"):
        r = RawSMTP(a.direct_port)
        r.ehlo()
        code, _, raw = r.auth_plain(a.user, a.password)
        if code != 235:
            raise RuntimeError(f"AUTH PLAIN answered {shorten(raw)}")
        for line, want in ((f"MAIL FROM:<{a.sender}>", 250), (f"RCPT TO:<{a.rcpt}>", 250), ("DATA", 354)):
            code, _, raw = r.cmd(line)
            if code != want:
                raise RuntimeError(f"{line} answered {shorten(raw)}")
        r.send(smuggle["bytes"])
        replies = [r.reply()[0] for _ in range(5)]
        r.cmd("QUIT")
        r.close()
        R.equal("Postfix (smtpd_forbid_bare_newline=no) ends DATA at a bare '\\n.\\n': "
                "the smuggled MAIL RCPT DATA run (so postern must refuse bare LF)", replies, [250, 250, 250, 354, 250])
    found = wait_delivered(a.maildir, [smuggle["first"], smuggle["smuggled"]], timeout=20)
    R.equal("direct smuggling attempt delivered two messages (the demonstration worked)", len(found), 2)
    for path in found.values():
        os.remove(path)  # not mail anybody should read; Dovecot never saw it

    # The reference deliveries, read from the Maildir itself.
    found = wait_delivered(a.maildir, [m.marker for _, m, _ in sent])
    for label, m, received_with in sent:
        path = found.get(m.marker)
        if path is None:
            R.record(False, f"{label}: delivered into the Maildir within {DELIVERY_TIMEOUT}s", m.marker)
            continue
        with open(path, "rb") as f:
            data = f.read()
        check_delivered(R, f"{label}: Maildir file", crlf(data), m, received_with)
        os.remove(path)
    R.equal("Postfix queue is empty after the baseline", wait_queue_empty(a.postfix_queue), [])
    return R.finish("baseline")


def smuggle_payload(a, route):
    first = new_marker(route, "smuggle", "first")
    smuggled = new_marker(route, "smuggle", "smuggled")
    data = (f"From: <{a.sender}>\r\nTo: <{a.rcpt}>\r\nSubject: smuggling test\r\n"
            f"Message-ID: <{first}@postern-interop.invalid>\r\n\r\n"
            f"The next line ends with a bare LF, then comes a lone dot on a bare-LF line.\n.\n"
            f"MAIL FROM:<{a.sender}>\r\nRCPT TO:<{a.rcpt}>\r\nDATA\r\n"
            f"From: <attacker@interop.invalid>\r\nTo: <{a.rcpt}>\r\nSubject: smuggled\r\n"
            f"Message-ID: <{smuggled}@postern-interop.invalid>\r\n\r\n"
            f"This message was smuggled.\r\n.\r\n").encode()
    return {"first": first, "smuggled": smuggled, "bytes": data}


# ----------------------------------------------------------------- route

def cmd_route(a):
    R = Results(a.results, f"smtp/{a.route}")
    pending = []  # (label, Message): sent, to be fetched back and compared
    smuggle = None

    with R.block("EHLO before any login: conservative, no upstream connection"):
        # postern connects upstream only at AUTH; before the first login of
        # a route its EHLO cannot know the upstream's extensions.
        s = smtplib.SMTP(HOST, a.via_port, timeout=TIMEOUT, local_hostname="client.interop.test")
        code, banner = s.ehlo()
        f = features(s)
        R.record(code == 250 and "pipelining" in f and "size" in f,
                 "EHLO answered by postern itself before any login", " ".join(sorted(f)))
        s.quit()
        # One login teaches the route the upstream's extensions.
        s = smtplib_session(a.via_port, a.user, a.password)
        s.quit()

    with R.block("EHLO through postern"):
        s = smtplib.SMTP(HOST, a.via_port, timeout=TIMEOUT, local_hostname="client.interop.test")
        code, banner = s.ehlo()
        f = features(s)
        R.record(code == 250, "EHLO answered 250", shorten(banner))
        R.equal("AUTH PLAIN LOGIN advertised", f.get("auth", "").upper().split(), ["PLAIN", "LOGIN"])
        missing = [k for k in ("pipelining", "size", "8bitmime", "smtputf8", "dsn", "enhancedstatuscodes") if k not in f]
        R.record(not missing, "PIPELINING SIZE 8BITMIME SMTPUTF8 DSN ENHANCEDSTATUSCODES advertised",
                 f"missing {missing}" if missing else " ".join(sorted(f)))
        extra = [k for k in ("starttls", "chunking") if k in f]
        R.record(not extra, "no STARTTLS (plain listener) and no CHUNKING", f"advertised {extra}" if extra else "")
        size = int(f.get("size") or 0)
        R.record(0 < size <= 10240000, "SIZE at most Postfix's message_size_limit (10240000)", str(size))
        s.quit()

    with R.block("MAIL before AUTH"):
        r = RawSMTP(a.via_port)
        r.ehlo()
        code, _, raw = r.cmd(f"MAIL FROM:<{a.sender}>")
        R.record(code == 530 and b"5.7.0" in raw, "MAIL before AUTH refused: 530 5.7.0", shorten(raw))
        code, _, raw = r.cmd("QUIT")
        R.equal("QUIT after the refusal answered 221", code, 221)
        r.close()

    with R.block("wrong password"):
        s = smtplib.SMTP(HOST, a.via_port, timeout=TIMEOUT, local_hostname="client.interop.test")
        s.ehlo()
        s.user, s.password = a.user, a.password + "-wrong"
        try:
            s.auth("PLAIN", s.auth_plain)
            R.record(False, "wrong password refused with 535", "the login was accepted")
        except smtplib.SMTPAuthenticationError as e:
            R.record(e.smtp_code == 535, "wrong password refused with 535", f"{e.smtp_code} {shorten(e.smtp_error)}")
        code, resp = s.mail(a.sender)
        R.record(code == 530, "after the failed login, MAIL is still refused (530)", f"{code} {shorten(resp)}")
        s.quit()

    with R.block("bare LF in DATA"):
        smuggle = smuggle_payload(a, a.route)
        r = RawSMTP(a.via_port)
        r.ehlo()
        code, _, raw = r.auth_plain(a.user, a.password)
        if code != 235:
            raise RuntimeError(f"AUTH PLAIN answered {shorten(raw)}")
        for line, want in ((f"MAIL FROM:<{a.sender}>", 250), (f"RCPT TO:<{a.rcpt}>", 250), ("DATA", 354)):
            code, _, raw = r.cmd(line)
            if code != want:
                raise RuntimeError(f"{line} answered {shorten(raw)}")
        r.send(smuggle["bytes"])
        code, _, raw = r.reply()
        R.record(code == 521 and b"5.5.2" in raw, "'\\n.\\n' smuggling attempt refused: 521 5.5.2", shorten(raw))
        R.record(r.eof(), "postern closes the connection after the 521 (nothing after it is read as commands)")
        r.close()

    with R.block("smtplib PLAIN session"):
        s = smtplib_session(a.via_port, a.user, a.password)  # smtplib picks PLAIN
        for kind in ("small", "dots", "utf8", "big"):
            m = message(a.route, "smtplib", kind)
            opts = ["BODY=8BITMIME"] if kind == "utf8" else []
            refused = s.sendmail(a.sender, [a.rcpt], m.wire, mail_options=opts)
            R.record(not refused, f"smtplib sendmail {kind} ({len(m.wire)} bytes) accepted")
            pending.append((f"smtplib {kind}", m))
        R.equal("smtplib QUIT answered 221", s.quit()[0], 221)

    for iro in (True, False):
        how = "with initial response" if iro else "without initial response"
        with R.block(f"smtplib LOGIN {how}"):
            s = smtplib_session(a.via_port, a.user, a.password, mech="LOGIN", initial_response_ok=iro)
            m = message(a.route, "smtplib-login", "small")
            R.record(not s.sendmail(a.sender, [a.rcpt], m.wire), f"smtplib AUTH LOGIN ({how}) then sendmail accepted")
            pending.append((f"smtplib AUTH LOGIN {how}", m))
            s.quit()

    with R.block("pipelined session"):
        pending += pipelined_session(R, a)

    for mech in ("PLAIN", "LOGIN"):
        with R.block(f"swaks --auth {mech}"):
            m = swaks_message(a.route, f"swaks-{mech.lower()}")
            path = os.path.join(a.tmp, f"{m.marker}.eml")
            with open(path, "wb") as fh:
                fh.write(m.file_bytes)
            proc = subprocess.run(
                ["swaks", "--server", HOST, "--port", str(a.via_port), "--helo", "client.interop.test",
                 "--auth", mech, "--auth-user", a.user, "--auth-password", a.password,
                 "--from", a.sender, "--to", a.rcpt, "--data", "@" + path, "--timeout", "60"],
                capture_output=True, timeout=120)
            out = proc.stdout.decode(errors="replace")
            auth_line = next((ln.strip() for ln in out.splitlines() if ln.strip().startswith("-> AUTH")), "")
            # swaks marks server errors "<**" and its own "***"; never
            # print its "->" lines (they hold the base64 credentials).
            errors = [ln.strip() for ln in out.splitlines() if ln.lstrip().startswith(("<**", "***"))]
            sent_auth = " ".join(auth_line.split(" ")[1:3])
            if R.record(proc.returncode == 0 and sent_auth == f"AUTH {mech}",
                        f"swaks --auth {mech} delivered through postern (exit 0, it sent AUTH {mech})",
                        f"exit {proc.returncode}, sent {sent_auth or 'no AUTH'}; {' | '.join(errors)}"):
                pending.append((f"swaks --auth {mech}", m))

    for kind, mech in (("big", None), ("dots", "LOGIN")):
        label = f"curl {kind}" + (f" (AUTH={mech})" if mech else "")
        with R.block(label):
            m = message(a.route, "curl", kind)
            path = os.path.join(a.tmp, f"{m.marker}.eml")
            with open(path, "wb") as fh:
                fh.write(m.wire)
            argv = ["curl", "-sS", "-v", "--max-time", "60", f"smtp://{HOST}:{a.via_port}/client.interop.test",
                    "--mail-from", a.sender, "--mail-rcpt", a.rcpt, "--upload-file", path,
                    "-u", f"{a.user}:{a.password}"]
            if mech:
                argv += ["--login-options", f"AUTH={mech}"]
            proc = subprocess.run(argv, capture_output=True, timeout=120)
            trace = proc.stderr.decode(errors="replace")
            sent = [ln[2:] for ln in trace.splitlines() if ln.startswith("> ")]
            login = next((" ".join(s.split(" ")[:2]) for s in sent if s.startswith("AUTH")), "no AUTH")
            errors = [ln for ln in trace.splitlines() if ln.startswith(("curl:", "< 4", "< 5"))]
            if R.record(proc.returncode == 0 and (mech is None or login == f"AUTH {mech}"),
                        f"{label} delivered through postern (curl logged in with {login})",
                        f"exit {proc.returncode}: {' | '.join(errors)}" if proc.returncode else ""):
                pending.append((label, m))

    fetch_and_compare(R, a, pending, smuggle)
    return R.finish(f"route {a.route}")


def pipelined_session(R, a):
    """RFC 2920: MAIL, two RCPTs (one unknown) and DATA in one write; the
    end of data, the next transaction (BODY=8BITMIME SMTPUTF8, a raw UTF-8
    header) and DATA in one write; the last end of data and QUIT in one
    write. One reply per command, in order."""
    m1 = message(a.route, "pipelined", "dots")
    m2 = message(a.route, "pipelined", "utf8-header")
    m2.smtputf8 = True
    r = RawSMTP(a.via_port)
    caps = r.ehlo()
    R.record("PIPELINING" in caps, "PIPELINING advertised")
    code, _, raw = r.auth_plain(a.user, a.password)
    R.record(code == 235, "AUTH PLAIN with initial response: 235", shorten(raw))
    nobody = "nobody-" + str(os.getpid()) + "@" + a.rcpt.split("@")[1]
    r.send(f"MAIL FROM:<{a.sender}>\r\nRCPT TO:<{a.rcpt}>\r\nRCPT TO:<{nobody}>\r\nDATA\r\n".encode())
    got = [r.reply() for _ in range(4)]
    R.equal("pipelined MAIL RCPT RCPT(unknown) DATA answered 250 250 550 354", [c for c, _, _ in got], [250, 250, 550, 354])
    R.record(b"User unknown" in got[2][2], "the unknown recipient's 550 is Postfix's own", shorten(got[2][2]))
    r.send(dot_stuff(m1.wire) + b".\r\n"
           + f"MAIL FROM:<{a.sender}> BODY=8BITMIME SMTPUTF8\r\nRCPT TO:<{a.rcpt}>\r\nDATA\r\n".encode())
    got = [r.reply() for _ in range(4)]
    R.equal("pipelined end-of-data MAIL RCPT DATA answered 250 250 250 354", [c for c, _, _ in got], [250, 250, 250, 354])
    R.record(b"queued as" in got[0][2], "the end-of-data reply is Postfix's own ('queued as')", shorten(got[0][2]))
    r.send(dot_stuff(m2.wire) + b".\r\nQUIT\r\n")
    got = [r.reply() for _ in range(2)]
    R.equal("pipelined end-of-data QUIT answered 250 221", [c for c, _, _ in got], [250, 221])
    r.close()
    return [("pipelined dots", m1), ("pipelined SMTPUTF8 (raw UTF-8 Subject)", m2)]


def fetch_and_compare(R, a, pending, smuggle):
    markers = [m.marker for _, m in pending]
    t0 = time.monotonic()
    found = wait_delivered(a.maildir, markers)
    R.record(len(found) == len(markers), f"all {len(markers)} accepted messages delivered into the Maildir",
             f"after {time.monotonic() - t0:.1f}s" + (f"; missing {[l for l, m in pending if m.marker not in found]}"
                                                       if len(found) != len(markers) else ""))
    # The refused message must be nowhere: not in the Maildir (checked after
    # every later message arrived), not in Postfix's queue.
    if smuggle:
        leftover = wait_queue_empty(a.postfix_queue)
        R.equal("Postfix queue empty after the deliveries", leftover, [])
        hits = find_in_maildir(a.maildir, [smuggle["first"], smuggle["smuggled"]])
        R.record(not hits, "the bare-LF message and its smuggled payload were NOT delivered",
                 f"delivered: {sorted(hits)}" if hits else "Maildir checked after all later messages arrived")

    with R.block(f"fetch back through POP3 route {a.pop3_route}"):
        p = poplib.POP3(HOST, a.pop3_port, timeout=TIMEOUT)
        p.user(a.user)
        p.pass_(a.password)
        by_marker = {}
        for entry in p.uidl()[1]:
            n = int(entry.split()[0])
            head = b"\n".join(p.top(n, 0)[1])
            for mk in markers:
                if f"<{mk}@".encode() in head:
                    by_marker[mk] = n
        for label, m in pending:
            n = by_marker.get(m.marker)
            if n is None:
                R.record(False, f"{label}: fetched back through postern POP3 route {a.pop3_route}", "not in the mailbox")
                continue
            resp, lines, _ = p.retr(n)
            check_delivered(R, f"{label}: fetched through postern POP3", joined(lines), m, a.received_with)
        for n in sorted(by_marker.values()):
            p.dele(n)
        R.record(p.quit().startswith(b"+OK"), f"fetched messages deleted (DELE + QUIT through {a.pop3_route})")


# ----------------------------------------------------------------- Postfix log

LOG_LINE = re.compile(r" (postfix/[^/\s]+)/smtpd\[(\d+)\]: (.*)$")


def cmd_postfix_log(a):
    R = Results(a.results, a.name)
    with open(a.log, "rb") as f:
        f.seek(a.offset)
        text = f.read().decode(errors="replace")
    tls = {}       # pid -> TLS established in the current session
    logins = []    # (accepted, method, tls, line)
    lost_in_data = []
    for line in text.splitlines():
        m = LOG_LINE.search(line)
        if not m or m.group(1) != a.syslog_name:
            continue
        pid, what = m.group(2), m.group(3)
        if what.startswith("connect from "):
            tls[pid] = False
        elif "TLS connection established" in what:
            tls[pid] = True
        elif " sasl_method=" in what:
            method = re.search(r"sasl_method=([^,\s]+)", what).group(1)
            logins.append((True, method, tls.get(pid, False), what))
        elif what.startswith("lost connection after DATA"):
            lost_in_data.append(what)
        elif re.search(r"SASL \S+ authentication failed", what):
            method = re.search(r"SASL (\S+) authentication failed", what).group(1)
            logins.append((False, method, tls.get(pid, False), what))
    accepted = sum(1 for ok, *_ in logins if ok)
    wrong = [ln for _, method, _, ln in logins if method != a.method]
    R.record(not wrong and accepted >= a.min,
             f"{a.syslog_name}: every SASL login used {a.method} (sasl_method={a.method})",
             f"{accepted} accepted, {len(logins) - accepted} failed" if not wrong else shorten(wrong[:2]))
    want_tls = a.tls == "yes"
    wrong = [ln for _, _, t, ln in logins if t != want_tls]
    R.record(not wrong and accepted >= a.min,
             f"{a.syslog_name}: every SASL login was " + ("inside TLS ('TLS connection established' first)"
                                                          if want_tls else "on plain TCP (no TLS on this port)"),
             shorten(wrong[:2]) if wrong else f"{len(logins)} logins")
    if a.lost_in_data is not None:
        # postern forwards the data up to the chunk holding the bare LF
        # (on loopback usually nothing of it): the count may vary, the end
        # without "." may not.
        R.record(len(lost_in_data) == a.lost_in_data,
                 f"{a.syslog_name}: the bare-LF session ended upstream inside DATA, without end of data "
                 f"('lost connection after DATA' x{a.lost_in_data})", shorten(lost_in_data))
    return R.finish(a.name)


# ----------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--results", required=True)
    common.add_argument("--user", required=True)
    common.add_argument("--password-env", default="SMTP_PASSWORD")
    common.add_argument("--rcpt", required=True)
    common.add_argument("--maildir", required=True)
    common.add_argument("--postfix-queue", required=True)

    b = sub.add_parser("baseline", parents=[common])
    b.add_argument("--ca", required=True)
    b.add_argument("--direct-port", type=int, required=True)
    b.add_argument("--cram-port", type=int, required=True)
    b.add_argument("--submission-ports", type=int, nargs="+", required=True)
    b.add_argument("--smtps-port", type=int, required=True)

    r = sub.add_parser("route", parents=[common])
    r.add_argument("--route", required=True)
    r.add_argument("--via-port", type=int, required=True, help="postern's listen port for the route")
    r.add_argument("--received-with", required=True, help="ESMTPA (AUTH) or ESMTPSA (AUTH inside TLS)")
    r.add_argument("--pop3-port", type=int, required=True, help="a postern POP3 route to Dovecot")
    r.add_argument("--pop3-route", required=True)
    r.add_argument("--tmp", required=True)

    lg = sub.add_parser("postfix-log")
    lg.add_argument("--results", required=True)
    lg.add_argument("--name", required=True)
    lg.add_argument("--log", required=True)
    lg.add_argument("--offset", type=int, default=0)
    lg.add_argument("--syslog-name", required=True)
    lg.add_argument("--method", required=True)
    lg.add_argument("--tls", choices=("yes", "no"), required=True)
    lg.add_argument("--min", type=int, default=1)
    lg.add_argument("--lost-in-data", type=int, help="exact number of sessions that must end inside DATA")

    a = ap.parse_args()
    if a.cmd == "postfix-log":
        return cmd_postfix_log(a)
    a.password = os.environ[a.password_env]
    a.sender = a.rcpt
    if a.cmd == "baseline":
        return cmd_baseline(a)
    with tempfile.TemporaryDirectory(dir=a.tmp) as tmp:
        a.tmp = tmp
        return cmd_route(a)


if __name__ == "__main__":
    sys.exit(main())
