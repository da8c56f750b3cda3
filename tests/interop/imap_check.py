#!/usr/bin/env python3
"""IMAP interop checks, driven by tests/interop/run.sh (suites/imap.sh).

  baseline  talks to Dovecot directly: what it advertises before and after
            login (on loopback: STARTTLS, AUTH=PLAIN LOGIN CRAM-MD5, no
            LOGINDISABLED; from another address: LOGINDISABLED and
            [PRIVACYREQUIRED]), that LOGIN, AUTHENTICATE PLAIN (with and
            without SASL-IR), AUTHENTICATE LOGIN, CRAM-MD5, STARTTLS and
            IMAPS log in and serve the seeded messages byte for byte (equal
            to Dovecot's own POP3 RETR), that every postern route's upstream
            port accepts the route's security + mechanism, and what the
            route checks rely on: a 10 MB APPEND round trip, IDLE seeing a
            message Postfix delivers, curl imap:// and fetchmail --protocol
            IMAP, and `NO [AUTHENTICATIONFAILED]` for a wrong password.
  route     talks to one postern IMAP route the way legacy clients do
            (imaplib, a raw socket for IDLE / LITERAL+ / a wrong password,
            curl imap://, fetchmail) and compares every message with the
            seed, with Dovecot directly and with what postern's POP3 route
            serves; checks the capabilities postern shows before and after
            login.

Each check appends "PASS|FAIL<TAB>name<TAB>detail" to --results. Exit
status: 0 all passed, 3 some check failed (see --results), anything else
means the driver itself broke. Passwords come from the environment and are
never printed.
"""

import argparse
import base64
import glob
import hashlib
import hmac
import imaplib
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
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pop3_check import Results, describe_diff, joined, load_expected, message_id, shorten  # noqa: E402
from smtp_check import check_delivered  # noqa: E402
from smtp_check import message as smtp_message  # noqa: E402

HOST = "127.0.0.1"
TIMEOUT = 30           # seconds per socket operation (a wrong password waits out Dovecot's auth penalty)
IDLE_WAIT = 10         # seconds from the accepted SMTP DATA to "* n EXISTS" in IDLE
APPEND_SIZE = 10 * 1024 * 1024
BAD_PASSWORD_SOURCE = "127.0.0.51"   # baseline wrong password: keeps Dovecot's auth penalty off 127.0.0.1
NON_LOOPBACK_SOURCE = "127.0.0.52"   # baseline: Dovecot as a network client sees it (not "secured")
# What postern removes from the capabilities it relays after login (issue 13).
FILTERED_AFTER_LOGIN = ("STARTTLS", "LOGINDISABLED")
# What postern may also withhold after login, because it refuses the command
# there: SASL-IR only describes AUTHENTICATE (no use after login) and
# UNAUTHENTICATE would hand the client a not-authenticated upstream session.
WITHHELD_AFTER_LOGIN = ("SASL-IR", "UNAUTHENTICATE")
# What a client can use with passthrough credentials: mechanisms that carry
# the password, which postern then uses upstream with the route's method.
PASSTHROUGH_MECHS = {"AUTH=PLAIN", "AUTH=LOGIN"}


# ----------------------------------------------------------------- helpers

def quote(text):
    """An IMAP quoted string."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def caps_set(text):
    """Capability names (upper case) from a CAPABILITY response or code."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode(errors="replace")
    m = re.search(r"\[CAPABILITY ([^\]]*)\]", text, re.I)
    if m:
        text = m.group(1)
    else:
        text = re.sub(r"^\*\s+CAPABILITY\s+", "", text.strip(), flags=re.I)
    return {c.upper() for c in text.split()}


def auth_caps(caps):
    return {c for c in caps if c.startswith("AUTH=")}


def describe_caps(caps):
    return " ".join(sorted(caps))


def mid_of(body):
    return message_id(bytes(body).split(b"\r\n"))


def label_for(expected, body):
    entry = expected.get(mid_of(body))
    return entry["name"] if entry else "unknown"


def imap_connect(port, security="none", ctx=None, server_name="localhost"):
    """imaplib client: plain, STARTTLS (certificate checked for 127.0.0.1)
    or implicit TLS (checked for server_name)."""
    if security == "tls":
        return imaplib.IMAP4_SSL(server_name, port, ssl_context=ctx, timeout=TIMEOUT)
    m = imaplib.IMAP4(HOST, port, timeout=TIMEOUT)
    if security == "starttls":
        m.starttls(ssl_context=ctx)
    return m


def imap_login(m, mech, user, password):
    """Log in with LOGIN, AUTHENTICATE PLAIN / LOGIN or CRAM-MD5; returns
    the tagged response text."""
    if mech == "login":
        typ, dat = m.login(user, password)
    elif mech == "plain":
        typ, dat = m.authenticate("PLAIN", lambda _challenge: f"\0{user}\0{password}".encode())
    elif mech == "auth-login":
        typ, dat = m.authenticate(
            "LOGIN", lambda challenge: (user if challenge.lower().startswith(b"user") else password).encode())
    elif mech == "cram-md5":
        typ, dat = m.login_cram_md5(user, password)
    else:
        raise ValueError(f"unknown mechanism {mech}")
    if typ != "OK":
        raise RuntimeError(f"{mech} answered {typ} {dat!r}")
    return b" ".join(d for d in dat if isinstance(d, bytes))


def parse_fetch(data):
    """imaplib FETCH data -> {uid: (rfc822_size or None, body bytes)}."""
    out = {}
    for i, item in enumerate(data):
        if not isinstance(item, tuple):
            continue
        head, body = item
        tail = data[i + 1] if i + 1 < len(data) and isinstance(data[i + 1], bytes) else b""
        meta = head + b" " + tail
        uid = re.search(rb"UID (\d+)", meta)
        size = re.search(rb"RFC822\.SIZE (\d+)", meta)
        if uid is None:
            raise ValueError(f"FETCH response without UID: {shorten(meta)}")
        out[int(uid.group(1))] = (int(size.group(1)) if size else None, body)
    return out


def fetch_all(m, what="1:*"):
    typ, data = m.uid("FETCH", what, "(UID RFC822.SIZE BODY.PEEK[])")
    if typ != "OK":
        raise RuntimeError(f"UID FETCH answered {typ} {data!r}")
    return parse_fetch(data)


def select(m, mailbox="INBOX"):
    """(EXISTS, UIDVALIDITY) after SELECT."""
    typ, data = m.select(mailbox)
    if typ != "OK":
        raise RuntimeError(f"SELECT {mailbox} answered {typ} {data!r}")
    uidvalidity = m.response("UIDVALIDITY")[1]
    return int(data[0]), (uidvalidity[0] if uidvalidity and uidvalidity[0] else None)


def pop3_bodies(port, user, password):
    """{Message-ID: bytes} of every message, as POP3 USER/PASS + RETR serve them."""
    p = poplib.POP3(HOST, port, timeout=TIMEOUT)
    try:
        p.user(user)
        p.pass_(password)
        out = {}
        for n in range(1, p.stat()[0] + 1):
            body = joined(p.retr(n)[1])
            out[mid_of(body)] = body
        p.quit()
        return out
    except Exception:
        p.close()
        raise


class _closing:
    """with _closing(RawIMAP(...)) as r: closes the socket at the end."""

    def __init__(self, raw):
        self.raw = raw

    def __enter__(self):
        return self.raw

    def __exit__(self, *exc):
        self.raw.close()
        return False


class RawIMAP:
    """An IMAP client on a bare socket: exact bytes, its own buffer (so a
    read that times out loses nothing), literals read by count."""

    def __init__(self, port, ctx=None, server_name=None, source=None):
        sock = socket.create_connection((HOST, port), timeout=TIMEOUT,
                                        source_address=(source, 0) if source else None)
        if ctx is not None:
            sock = ctx.wrap_socket(sock, server_hostname=server_name)
        self.sock = sock
        self.buf = bytearray()
        self.n = 0
        self.inflater = self.deflater = None
        self.greeting = self.line()

    def _fill(self):
        data = self.sock.recv(1 << 16)
        if not data:
            raise ConnectionError(f"connection closed by the server (buffered: {shorten(bytes(self.buf[:80]))})")
        if self.inflater is not None:
            data = self.inflater.decompress(data)
        self.buf += data

    def start_deflate(self):
        """RFC 4978 COMPRESS=DEFLATE from here on, both directions (raw
        deflate; what was read past the tagged OK is already compressed)."""
        self.inflater = zlib.decompressobj(-15)
        self.deflater = zlib.compressobj(6, zlib.DEFLATED, -15)
        self.buf = bytearray(self.inflater.decompress(bytes(self.buf)))

    def line(self):
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                out = bytes(self.buf[:i + 2])
                del self.buf[:i + 2]
                return out
            if len(self.buf) > 1 << 20:
                raise ValueError("line longer than 1 MiB")
            self._fill()

    def read_exact(self, n):
        while len(self.buf) < n:
            self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def response(self):
        """One response, literals included."""
        out = self.line()
        while True:
            m = re.search(rb"\{(\d+)\}\r\n$", out)
            if not m:
                return out
            out += self.read_exact(int(m.group(1)))
            out += self.line()

    def tag(self):
        self.n += 1
        return f"t{self.n}"

    def send(self, data):
        if self.deflater is not None:
            data = self.deflater.compress(data) + self.deflater.flush(zlib.Z_SYNC_FLUSH)
        self.sock.sendall(data)

    def until_tagged(self, tag):
        untagged = []
        while True:
            r = self.response()
            if r.startswith(tag.encode() + b" "):
                return untagged, r
            untagged.append(r)

    def command(self, text):
        tag = self.tag()
        self.send(f"{tag} {text}\r\n".encode())
        return self.until_tagged(tag)

    def ok(self, text, what=None):
        untagged, tagged = self.command(text)
        if tagged.split(b" ", 2)[1:2] != [b"OK"]:
            raise RuntimeError(f"{what or text.split()[0]} answered {shorten(tagged.strip())}")
        return untagged, tagged

    def login(self, user, password):
        return self.ok(f"LOGIN {quote(user)} {quote(password)}", "LOGIN")

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def tagged_status(tagged):
    """b't3 NO [X] text' -> 'NO'."""
    parts = tagged.split(b" ", 2)
    return parts[1].decode(errors="replace") if len(parts) > 1 else ""


def literal_from(resp, item=rb"BODY\[\]"):
    m = re.search(item + rb" \{(\d+)\}\r\n", resp)
    if not m:
        return None
    return resp[m.end():m.end() + int(m.group(1))]


# ----------------------------------------------------------------- reference

class Reference:
    """What a client sees on Dovecot's plain port with LOGIN: the basis the
    route checks compare with."""

    def __init__(self, port, user, password):
        m = imap_connect(port)
        try:
            self.pre_caps = {c.upper() for c in m.capabilities}
            self.login_resp = imap_login(m, "login", user, password)
            typ, dat = m.capability()
            self.post_caps = caps_set(dat[0])
            typ, self.list = m.list()
            self.exists, self.uidvalidity = select(m)
            self.bodies = fetch_all(m)
            m.logout()
        except Exception:
            m.shutdown()
            raise


# ----------------------------------------------------------------- shared checks

def check_messages(R, what, bodies, expected, ref=None, pop3=None):
    """Every fetched message is a seeded one byte for byte (and equal to the
    direct fetch and to the POP3 path when given)."""
    R.equal(f"{what}: one message per seeded message", len(bodies), len(expected), "message count")
    for uid in sorted(bodies):
        size, body = bodies[uid]
        mid = mid_of(body)
        want = expected.get(mid)
        if want is None:
            R.record(False, f"{what}: UID {uid} is a seeded message", f"unknown Message-ID {mid}")
            continue
        name = f"{what}: UID {uid} ({want['name']})"
        R.equal(f"{name} BODY[] equals the seeded message", body, want["data"], "message")
        R.equal(f"{name} RFC822.SIZE is its length", size, len(body), "size")
        if ref is not None:
            R.equal(f"{name} equals Dovecot's FETCH directly", body, ref.get(uid, (None, None))[1], "message")
        if pop3 is not None:
            R.equal(f"{name} equals the POP3 path's RETR", body, pop3.get(mid), "message")


def big_message(marker):
    """About 10 MB, CRLF, 8-bit, with lines that look like IMAP protocol
    (* CAPABILITY and a tagged OK with a capability list naming STARTTLS,
    * BYE, +, DONE, a literal marker) so that a relay that parsed (or
    rewrote capabilities in) message data would show."""
    head = ("From: Postern Interop <sender@interop.invalid>\r\n"
            "To: Mailbox Owner <owner@interop.invalid>\r\n"
            "Subject: 10 MB APPEND through postern\r\n"
            "Date: Mon, 27 Nov 2023 10:00:10 +0000\r\n"
            f"Message-ID: <{marker}@postern-interop.invalid>\r\n"
            "MIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n"
            "Content-Transfer-Encoding: 8bit\r\n\r\n").encode()
    traps = [b"A001 OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED AUTH=PLAIN] not a response",
             b"* CAPABILITY IMAP4rev1 STARTTLS AUTH=CRAM-MD5 COMPRESS=DEFLATE not a response",
             b"* BYE not a response", b"+ not a continuation", b"DONE", b"{1024}", b")", b".", b"",
             "Grüße aus Köln — ✉ 8-bit".encode(), b"* 99 EXISTS", b"t1 NO [AUTHENTICATIONFAILED] text",
             ("0123456789" * 100)[:998].encode()]
    lines, size, i = [head], len(head), 0
    while size < APPEND_SIZE:
        if i % 11 == 5:
            line = traps[(i // 11) % len(traps)] + b"\r\n"
        else:
            h = hashlib.sha256(str(i).encode()).hexdigest()
            line = ("%08d " % i + (h + h)[: 50 + i % 25]).encode() + b"\r\n"
        lines.append(line)
        size += len(line)
        i += 1
    lines.append(b"End of the 10 MB message.\r\n")
    return b"".join(lines)


def small_message(marker):
    return ("From: Postern Interop <sender@interop.invalid>\r\n"
            "To: Mailbox Owner <owner@interop.invalid>\r\n"
            "Subject: LITERAL+ APPEND\r\n"
            f"Message-ID: <{marker}@postern-interop.invalid>\r\n\r\n"
            "Appended with a non-synchronising literal.\r\n"
            "A001 OK [CAPABILITY STARTTLS] inside the literal\r\n"
            "* CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN inside the literal\r\n").encode()


def check_append(R, a, port, direct_port, prefix):
    """CREATE a new mailbox, APPEND ~10 MB (synchronising literal, imaplib)
    and a small message with LITERAL+ (raw socket, when advertised), FETCH
    both back through `port` and directly from Dovecot, DELETE the mailbox."""
    box = f"postern-interop-{prefix}-{os.getpid()}-{time.time_ns() % 10**9}"
    marker = f"{prefix}-append-{os.getpid()}-{time.time_ns()}"
    big = big_message(marker)
    small = small_message(marker + "-literal-plus")
    want = {mid_of(big): ("10 MB", big)}
    created = False
    try:
        with R.block("APPEND of a 10 MB message"):
            m = imap_connect(port)
            imap_login(m, "login", a.user, a.password)
            typ, dat = m.create(box)
            created = typ == "OK"
            R.record(created, f"CREATE a new mailbox ({box})", f"{typ} {shorten(dat)}")
            started = time.monotonic()
            typ, dat = m.append(box, r"(\Seen)", None, big)
            took = time.monotonic() - started
            R.record(typ == "OK", f"APPEND of {len(big)} bytes (synchronising literal) answered OK",
                     f"{typ} {shorten(dat)} in {took:.1f}s")
            with _closing(RawIMAP(port)) as raw:
                raw.login(a.user, a.password)
                caps = caps_set(b" ".join(raw.command("CAPABILITY")[0]))
                if "LITERAL+" in caps:
                    tag = raw.tag()
                    raw.send(f"{tag} APPEND {quote(box)} {{{len(small)}+}}\r\n".encode() + small + b"\r\n")
                    untagged, tagged = raw.until_tagged(tag)
                    conts = [u for u in untagged if u.startswith(b"+")]
                    R.record(tagged_status(tagged) == "OK" and not conts,
                             "APPEND with a non-synchronising literal {n+} (LITERAL+) answered OK, no continuation",
                             shorten(tagged.strip()))
                    want[mid_of(small)] = ("LITERAL+", small)
                else:
                    R.record(True, "APPEND with LITERAL+", "LITERAL+ not advertised after login, so clients must not use it")
                raw.command("LOGOUT")
            exists, _ = select(m, box)
            R.equal("SELECT of the new mailbox: EXISTS counts the appended messages", exists, len(want))
            started = time.monotonic()
            got = fetch_all(m)
            took = time.monotonic() - started
            for sessname, bodies in (("back", got), ("directly from Dovecot", None)):
                if bodies is None:
                    d = imap_connect(direct_port)
                    imap_login(d, "login", a.user, a.password)
                    select(d, box)
                    bodies = fetch_all(d)
                    d.logout()
                by_mid = {mid_of(b): (s, b) for s, b in bodies.values()}
                for mid, (what, data) in want.items():
                    size, body = by_mid.get(mid, (None, b""))
                    R.equal(f"{what} message FETCHed {sessname} byte for byte"
                            + (f" ({took:.2f}s)" if sessname == "back" and what == "10 MB" else ""),
                            body, data, "message")
                    R.equal(f"{what} message RFC822.SIZE {sessname}", size, len(data))
            m.close()
            typ, dat = m.delete(box)
            R.record(typ == "OK", "DELETE the new mailbox", f"{typ} {shorten(dat)}")
            created = typ != "OK"
            m.logout()
    finally:
        if created:  # leave no mailbox behind, whatever failed
            try:
                d = imap_connect(direct_port)
                imap_login(d, "login", a.user, a.password)
                d.delete(box)
                d.logout()
            except Exception as e:  # noqa: BLE001 - only cleanup
                print(f"[interop] could not delete {box}: {e}", file=sys.stderr)


def check_compress(R, a, port, bodies, must_offer):
    """COMPRESS=DEFLATE (RFC 4978; Dovecot's imap_zlib plugin offers it).
    Where it is offered after login it must work in both directions (the
    session goes on compressed: SELECT, FETCH of every message byte for
    byte); where it is not (postern may refuse COMPRESS, issue 13), the
    command must be refused with a tagged NO or BAD and the session must go
    on uncompressed."""
    with R.block("COMPRESS=DEFLATE"):
        with _closing(RawIMAP(port)) as r:
            r.login(a.user, a.password)
            untagged, _ = r.ok("CAPABILITY")
            caps = caps_set(b" ".join(untagged))
            offered = "COMPRESS=DEFLATE" in caps
            if must_offer:
                R.record(offered, "CAPABILITY after login offers COMPRESS=DEFLATE (imap_zlib)", describe_caps(caps))
            _, tagged = r.command("COMPRESS DEFLATE")
            status = tagged_status(tagged)
            if offered:
                if not R.record(status == "OK", "COMPRESS DEFLATE (offered) answered OK", shorten(tagged.strip())):
                    return
                r.start_deflate()
                what = "compressed session"
            else:
                R.record(status in ("NO", "BAD"), "COMPRESS DEFLATE (not offered) refused with a tagged NO or BAD",
                         shorten(tagged.strip()))
                what = "session after the refused COMPRESS"
            untagged, tagged = r.command("SELECT INBOX")
            R.record(tagged_status(tagged) == "OK", f"{what}: SELECT INBOX answered OK", shorten(tagged.strip()))
            untagged, tagged = r.command("UID FETCH 1:* (UID BODY.PEEK[])")
            got = {}
            for u in untagged:
                uid = re.search(rb"UID (\d+)", u)
                body = literal_from(u)
                if uid and body is not None:
                    got[int(uid.group(1))] = body
            R.equal(f"{what}: FETCH of every message byte for byte", [got.get(k) for k in sorted(bodies)],
                    [bodies[k][1] for k in sorted(bodies)])
            r.command("LOGOUT")
        return offered


def run(argv, timeout=120, **kw):
    return subprocess.run(argv, capture_output=True, timeout=timeout, **kw)


def check_curl(R, a, port, bodies, tmp):
    """curl imap://HOST:PORT/INBOX;UID=n for every message."""
    used = set()
    for uid in sorted(bodies):
        want = bodies[uid][1]
        label = f"curl imap:// INBOX;UID={uid} ({label_for(a.expected, want)})"
        out = os.path.join(tmp, f"curl-{uid}")
        with R.block(label):
            proc = run(["curl", "-sS", "-v", "--max-time", "120", "--user", f"{a.user}:{a.password}",
                        "-o", out, f"imap://{HOST}:{port}/INBOX;UID={uid}"], timeout=150)
            trace = proc.stderr.decode(errors="replace")
            sent = [ln[2:] for ln in trace.splitlines() if ln.startswith("> ")]
            login = "no login command"
            for s in sent:
                words = s.split()
                if len(words) >= 2 and words[1].upper() == "LOGIN":
                    login = "LOGIN"
                elif len(words) >= 3 and words[1].upper() == "AUTHENTICATE":
                    login = f"AUTHENTICATE {words[2]}" + (" (SASL-IR)" if len(words) > 3 else "")
            used.add(login)
            if proc.returncode != 0:
                errors = [ln for ln in trace.splitlines() if ln.startswith("curl:") or re.match(r"< \S+ (NO|BAD)", ln)]
                R.record(False, label, f"exit {proc.returncode}, login {login}: {' | '.join(errors)}")
                continue
            with open(out, "rb") as f:
                got = f.read()
            R.equal(f"{label} byte for byte (curl logged in with {login})", got, want, "curl output")
    return used


def check_fetchmail(R, a, port, expected, tmp, name, auth=None, want_login=None):
    """fetchmail, protocol IMAP, keep + fetchall, no TLS, an MDA writing one
    file per message: every seeded message, with LF line ends. `auth`
    forces fetchmail's auth option (`password`: LOGIN); `want_login` is the
    login command it must have sent."""
    with tempfile.TemporaryDirectory(dir=tmp) as home:
        out = os.path.join(home, "out")
        os.mkdir(out)
        rc_path = os.path.join(home, "fetchmailrc")
        fd = os.open(rc_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("set no syslog\n"
                    "set invisible\n"  # no Received: header of its own
                    f"poll {HOST} with protocol IMAP port {port}" + (f" auth {auth}" if auth else "") + " timeout 60:\n"
                    f'  user "{a.user}" there with password "{a.password}"\n'
                    "  keep fetchall no mimedecode\n"
                    "  sslproto ''\n"  # no STARTTLS: postern's listener is plain
                    f"  mda \"/bin/sh -c 'cat > {out}/msg.$$'\"\n")
        env = dict(os.environ, FETCHMAILHOME=home)
        proc = run(["fetchmail", "-v", "--nosyslog", "-f", rc_path], env=env, timeout=180)
        text = (proc.stdout + proc.stderr).decode(errors="replace")
        sent = []
        for ln in text.splitlines():
            if "IMAP> " in ln:
                words = ln.split("IMAP> ", 1)[1].split()
                if len(words) >= 2:
                    sent.append(words[1].upper() + (" " + words[2] if words[1].upper() == "AUTHENTICATE" else ""))
        logins = [s for s in sent if s == "LOGIN" or s.startswith("AUTHENTICATE")]
        retrieved = re.search(r"(\d+) messages? for \S+ at", text)
        files = sorted(glob.glob(os.path.join(out, "msg.*")))
        R.record(proc.returncode == 0 and logins and "STARTTLS" not in sent
                 and (want_login is None or logins == [want_login])
                 and retrieved is not None and int(retrieved.group(1)) == len(files) == len(expected),
                 f"{name}: logs in and retrieves every message (keep)",
                 f"exit {proc.returncode}; login {logins}; {len(files)} files; "
                 + " | ".join(ln for ln in text.splitlines() if "fetchmail:" in ln and "IMAP" not in ln)[:250])
        by_mid = {}
        for path in files:
            with open(path, "rb") as f:
                data = f.read()
            by_mid[message_id(data.split(b"\n"))] = data
        for mid, entry in sorted(expected.items(), key=lambda kv: kv[1]["name"]):
            want = entry["data"].replace(b"\r\n", b"\n")
            R.equal(f"{name}: {entry['name']} delivered to the MDA byte for byte (LF line ends)",
                    by_mid.get(mid, b""), want, "message")
        return logins


def deliver_smtp(port, user, password, rcpt, route, client):
    """Send one message to rcpt with smtplib AUTH; returns the Message."""
    msg = smtp_message(route, client, "small")
    s = smtplib.SMTP(HOST, port, timeout=TIMEOUT, local_hostname="client.interop.test")
    try:
        s.ehlo()
        s.login(user, password)
        s.sendmail(rcpt, [rcpt], msg.wire)
        s.quit()
    except Exception:
        s.close()
        raise
    return msg


def check_idle(R, a, port, deliver, received_with, what):
    """IDLE on a raw socket: `+` continuation, a message delivered through
    SMTP shows as `* n EXISTS` within IDLE_WAIT seconds, DONE ends it with a
    tagged OK; the message is then fetched (trace headers + the sent bytes)
    and expunged."""
    with R.block("IDLE"):
        with _closing(RawIMAP(port)) as r:
            r.login(a.idle_user, a.idle_password)
            untagged, _ = r.ok("SELECT INBOX")
            exists = max((int(m.group(1)) for u in untagged
                          if (m := re.match(rb"\* (\d+) EXISTS", u))), default=None)
            if exists is None:
                raise RuntimeError("SELECT INBOX sent no * n EXISTS")
            tag = r.tag()
            r.send(f"{tag} IDLE\r\n".encode())
            cont = r.line()
            R.record(cont.startswith(b"+"), f"IDLE ({a.idle_user}, {exists} messages) answered with a + continuation",
                     shorten(cont.strip()))
            msg = deliver()
            delivered_at = time.monotonic()
            deadline = delivered_at + IDLE_WAIT
            got, seen = None, []
            while got is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                r.sock.settimeout(left)
                try:
                    line = r.line()
                except socket.timeout:
                    break
                seen.append(line.strip())
                mm = re.match(rb"\* (\d+) EXISTS\r\n", line)
                if mm and int(mm.group(1)) > exists:
                    got = int(mm.group(1))
            took = time.monotonic() - delivered_at
            r.sock.settimeout(TIMEOUT)
            R.record(got is not None, f"IDLE: * {exists + 1} EXISTS within {IDLE_WAIT}s of the delivery ({what})",
                     f"after {took:.1f}s; untagged: {shorten(b' | '.join(seen))}")
            r.send(b"DONE\r\n")
            untagged, tagged = r.until_tagged(tag)
            R.record(tagged_status(tagged) == "OK", "IDLE ended by DONE with a tagged OK", shorten(tagged.strip()))
            # The message itself (found by its Message-ID, should anything else arrive too).
            deadline = time.monotonic() + 60
            while True:
                untagged, _ = r.ok(f'SEARCH HEADER Message-ID {quote(msg.marker)}')
                nums = [int(x) for u in untagged if u.startswith(b"* SEARCH") for x in u.split()[2:]]
                if nums or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            if not nums:
                R.record(False, "the IDLE message is in the mailbox", f"no message with {msg.marker}")
                return
            untagged, _ = r.ok(f"FETCH {nums[0]} (BODY.PEEK[])")
            body = next((b for u in untagged if (b := literal_from(u)) is not None), None)
            if body is None:
                R.record(False, "FETCH of the IDLE message", "no BODY[] literal in the response")
            else:
                check_delivered(R, "the message seen in IDLE, FETCHed", body, msg, received_with)
            r.ok(f"STORE {nums[0]} +FLAGS.SILENT (\\Deleted)")
            r.ok("EXPUNGE")
            r.command("LOGOUT")


def check_wrong_password(R, port, user, password, what, ctx=None, server_name=None, source=None):
    with R.block(f"wrong password ({what})"):
        with _closing(RawIMAP(port, ctx=ctx, server_name=server_name, source=source)) as r:
            started = time.monotonic()
            _, tagged = r.command(f"LOGIN {quote(user)} {quote(password + '-wrong')}")
            R.record(re.match(rb"t\d+ NO \[AUTHENTICATIONFAILED\]", tagged) is not None,
                     f"a wrong password gets NO [AUTHENTICATIONFAILED] ({what})",
                     f"{shorten(tagged.strip())} after {time.monotonic() - started:.1f}s")
            try:
                r.command("LOGOUT")
            except (OSError, ConnectionError, ValueError):
                pass  # closing after a failed login is allowed


# ----------------------------------------------------------------- baseline

def cmd_baseline(a):
    R = Results(a.results, "imap/baseline")
    ctx = ssl.create_default_context(cafile=a.ca)
    expected = a.expected

    with R.block("plain port before login"):
        m = imap_connect(a.plain_port)
        caps = {c.upper() for c in m.capabilities}
        R.record(m.welcome.startswith(b"* OK") and b"Dovecot" in m.welcome, "greeting is Dovecot's * OK",
                 m.welcome.decode(errors="replace"))
        want = {"IMAP4REV1", "STARTTLS", "SASL-IR", "LITERAL+", "AUTH=PLAIN", "AUTH=LOGIN", "AUTH=CRAM-MD5"}
        R.record(want <= caps and "LOGINDISABLED" not in caps,
                 "plain port on loopback offers STARTTLS, SASL-IR, LITERAL+, AUTH=PLAIN LOGIN CRAM-MD5 "
                 "and no LOGINDISABLED (127.0.0.1 -> 127.0.0.1 counts as secured)", describe_caps(caps))
        m.logout()

    with R.block("LOGIN session"):
        ref = Reference(a.plain_port, a.user, a.password)
        R.record({"IDLE", "LITERAL+", "COMPRESS=DEFLATE"} <= ref.post_caps
                 and not auth_caps(ref.post_caps) and not set(FILTERED_AFTER_LOGIN) & ref.post_caps,
                 "CAPABILITY after LOGIN: IDLE, LITERAL+, COMPRESS=DEFLATE; no STARTTLS, LOGINDISABLED, AUTH=",
                 describe_caps(ref.post_caps))
        R.record(any(re.search(rb'"?INBOX"?$', ln) for ln in ref.list), "LIST shows INBOX",
                 shorten(b" | ".join(ref.list)))
        R.equal("SELECT INBOX: EXISTS counts the seeded messages", ref.exists, len(expected))
        pop3 = pop3_bodies(a.pop3_port, a.user, a.password)
        check_messages(R, "LOGIN session", ref.bodies, expected, pop3=pop3)

    for mech, label in (("plain", "AUTHENTICATE PLAIN"), ("auth-login", "AUTHENTICATE LOGIN"),
                        ("cram-md5", "AUTHENTICATE CRAM-MD5")):
        with R.block(label):
            m = imap_connect(a.plain_port)
            imap_login(m, mech, a.user, a.password)
            exists, _ = select(m)
            R.equal(f"{label} (imaplib, no initial response) logs in; SELECT counts the seeded messages",
                    exists, len(expected))
            m.logout()

    with R.block("AUTHENTICATE PLAIN with SASL-IR"):
        with _closing(RawIMAP(a.plain_port)) as r:
            ir = base64.b64encode(f"\0{a.user}\0{a.password}".encode()).decode()
            _, tagged = r.command(f"AUTHENTICATE PLAIN {ir}")
            R.record(tagged_status(tagged) == "OK", "AUTHENTICATE PLAIN with an initial response (SASL-IR) logs in",
                     shorten(re.sub(rb"\[CAPABILITY[^\]]*\] ?", b"", tagged).strip()))
            r.command("LOGOUT")

    with R.block("STARTTLS then LOGIN"):
        m = imap_connect(a.plain_port, "starttls", ctx)
        typ, dat = m.capability()
        caps = caps_set(dat[0])
        R.record("STARTTLS" not in caps and "AUTH=PLAIN" in caps,
                 "STARTTLS (certificate verified for 127.0.0.1); CAPABILITY after it: no STARTTLS, AUTH=PLAIN",
                 f"{m.sock.version()}; {describe_caps(auth_caps(caps))}")
        imap_login(m, "login", a.user, a.password)
        R.equal("STARTTLS + LOGIN: SELECT counts the seeded messages", select(m)[0], len(expected))
        m.logout()

    with R.block("IMAPS then LOGIN"):
        m = imap_connect(a.imaps_port, "tls", ctx)
        imap_login(m, "login", a.user, a.password)
        R.equal("IMAPS (certificate verified for localhost) + LOGIN: SELECT counts the seeded messages",
                select(m)[0], len(expected))
        R.record(True, "IMAPS protocol", m.sock.version())
        m.logout()

    check_compress(R, a, a.plain_port, ref.bodies, must_offer=True)

    with R.block("ID before login"):
        with _closing(RawIMAP(a.plain_port)) as r:
            untagged, tagged = r.command('ID ("name" "postern-interop")')
            R.record(tagged_status(tagged) == "OK" and any(u.startswith(b"* ID ") for u in untagged),
                     "ID before login answered (* ID, tagged OK)", shorten(b" | ".join(untagged)))
            r.command("LOGOUT")

    # Every route's upstream port, the way postern will use it.
    for spec in a.route_port:
        name, security, mech, port = spec.split(":")
        with R.block(f"route port {name}"):
            m = imap_connect(int(port), security, ctx)
            imap_login(m, "login" if mech == "login" else mech, a.user, a.password)
            R.equal(f"{name}'s port {port} accepts {security} + {mech} directly (SELECT counts the seeded messages)",
                    select(m)[0], len(expected))
            m.logout()

    check_append(R, a, a.plain_port, a.plain_port, "baseline")

    with tempfile.TemporaryDirectory(dir=a.tmp) as tmp:
        used = check_curl(R, a, a.plain_port, ref.bodies, tmp)
        print(f"[interop] curl's login against Dovecot: {sorted(used)}", file=sys.stderr)
        logins = check_fetchmail(R, a, a.plain_port, expected, tmp, "fetchmail --protocol IMAP (Dovecot directly)")
        print(f"[interop] fetchmail's login against Dovecot: {logins}", file=sys.stderr)
        # What it does through postern, whose listener offers no STARTTLS:
        # LOGIN with the password in the clear (sslproto '' allows it).
        check_fetchmail(R, a, a.plain_port, expected, tmp,
                        "fetchmail --protocol IMAP --auth password (Dovecot directly, LOGIN without TLS)",
                        auth="password", want_login="LOGIN")

    check_idle(R, a, a.plain_port,
               lambda: deliver_smtp(a.smtp_port, a.idle_user, a.idle_password, a.idle_rcpt, "imap-baseline", "idle"),
               a.received_with, "Postfix directly")

    with R.block("plain port from another address"):
        with _closing(RawIMAP(a.plain_port, source=NON_LOOPBACK_SOURCE)) as r:
            untagged, _ = r.command("CAPABILITY")
            caps = caps_set(b" ".join(untagged))
            R.record({"STARTTLS", "LOGINDISABLED", "AUTH=CRAM-MD5"} <= caps and not caps & PASSTHROUGH_MECHS,
                     f"from {NON_LOOPBACK_SOURCE} (not loopback-secured) the plain port shows STARTTLS LOGINDISABLED "
                     "and only AUTH=CRAM-MD5 (no AUTH=PLAIN/LOGIN before TLS)", describe_caps(caps))
            _, tagged = r.command(f"LOGIN {quote(a.user)} {quote('not-the-password')}")
            R.record(b"NO [PRIVACYREQUIRED]" in tagged,
                     f"from {NON_LOOPBACK_SOURCE} LOGIN before STARTTLS gets NO [PRIVACYREQUIRED]", shorten(tagged.strip()))
            r.command("LOGOUT")

    check_wrong_password(R, a.imaps_port, a.user, a.password, f"IMAPS from {BAD_PASSWORD_SOURCE}",
                         ctx=ctx, server_name="localhost", source=BAD_PASSWORD_SOURCE)
    return R.finish("IMAP baseline")


# ----------------------------------------------------------------- route

def cmd_route(a):
    R = Results(a.results, f"imap/{a.route}")
    expected = a.expected
    try:
        ref = Reference(a.direct_port, a.user, a.password)
    except Exception as e:  # noqa: BLE001 - reported, then stop: nothing to compare with
        R.record(False, "direct reference session with Dovecot", repr(e))
        return R.finish(f"route {a.route}")
    if ref.exists != len(expected):
        R.record(False, "direct reference session with Dovecot",
                 f"INBOX has {ref.exists} messages, {len(expected)} were seeded")
        return R.finish(f"route {a.route}")

    with R.block("greeting and CAPABILITY before login"):
        with _closing(RawIMAP(a.via_port)) as r:
            g = r.greeting
            R.record(g.startswith(b"* OK") and b"Dovecot" not in g,
                     "greeting is postern's own * OK (not Dovecot's)", shorten(g.strip()))
            untagged, tagged = r.command("CAPABILITY")
            caps = caps_set(b" ".join(u for u in untagged if u.upper().startswith(b"* CAPABILITY")))
            if b"[CAPABILITY" in g.upper():
                caps_g = caps_set(g)
                R.record("STARTTLS" not in caps_g and auth_caps(caps_g) <= PASSTHROUGH_MECHS,
                         "greeting's [CAPABILITY] has no STARTTLS and no AUTH= postern cannot carry",
                         describe_caps(caps_g))
            R.record(tagged_status(tagged) == "OK" and "IMAP4REV1" in caps,
                     "CAPABILITY before login answered, IMAP4rev1", describe_caps(caps))
            R.record("STARTTLS" not in caps, "CAPABILITY before login: no STARTTLS (postern's listener is plain)",
                     describe_caps(caps))
            R.record("LOGINDISABLED" not in caps, "CAPABILITY before login: no LOGINDISABLED (LOGIN is how legacy clients log in)",
                     describe_caps(caps))
            R.record(auth_caps(caps) <= PASSTHROUGH_MECHS,
                     "CAPABILITY before login: no upstream AUTH= (only PLAIN/LOGIN, which carry the password through)",
                     describe_caps(auth_caps(caps)) or "no AUTH=")
            untagged, tagged = r.command('ID ("name" "postern-interop")')
            R.record(tagged_status(tagged) == "OK", "ID before login answered OK",
                     shorten(b" | ".join(untagged + [tagged.strip()])))
            r.command("LOGOUT")

    pop3 = None
    with R.block("POP3 path"):
        pop3 = pop3_bodies(a.pop3_port, a.user, a.password)
        R.equal(f"POP3 path (postern route {a.pop3_route}) serves every seeded message", len(pop3), len(expected))

    logged_in = False
    with R.block("imaplib session"):
        m = imap_connect(a.via_port)
        resp = imap_login(m, "login", a.user, a.password)
        logged_in = R.record(True, "LOGIN through postern answered OK")
        if b"[CAPABILITY" in resp.upper():
            c = caps_set(resp)
            R.record(not (set(FILTERED_AFTER_LOGIN) & c) and not auth_caps(c),
                     "LOGIN's [CAPABILITY] response code: no STARTTLS, LOGINDISABLED, AUTH=", describe_caps(c))
        typ, dat = m.capability()
        caps = caps_set(dat[0])
        R.record(not (set(FILTERED_AFTER_LOGIN) & caps) and not auth_caps(caps) and {"IMAP4REV1", "IDLE"} <= caps,
                 "CAPABILITY after login: IMAP4rev1, IDLE; no STARTTLS, LOGINDISABLED, AUTH=", describe_caps(caps))
        want = {c for c in ref.post_caps if c not in FILTERED_AFTER_LOGIN and not c.startswith("AUTH=")}
        # postern may refuse COMPRESS instead of relaying it (checked below).
        missing = {c for c in want - caps
                   if not c.startswith("COMPRESS=") and c not in WITHHELD_AFTER_LOGIN}
        R.record(not missing and caps <= want,
                 "CAPABILITY after login is Dovecot's, minus STARTTLS/LOGINDISABLED/AUTH= "
                 "(and COMPRESS=, SASL-IR, UNAUTHENTICATE if refused) only",
                 f"missing {describe_caps(missing) or '-'}; added {describe_caps(caps - want) or '-'}"
                 + ("; COMPRESS=DEFLATE dropped" if "COMPRESS=DEFLATE" in want - caps else ""))
        typ, lst = m.list()
        R.equal("LIST equals Dovecot's directly", sorted(lst), sorted(ref.list))
        exists, uidvalidity = select(m)
        R.equal("SELECT INBOX: EXISTS counts the seeded messages", exists, len(expected))
        R.equal("SELECT INBOX: UIDVALIDITY equals Dovecot's directly", uidvalidity, ref.uidvalidity)
        bodies = fetch_all(m)
        check_messages(R, "FETCH through postern", bodies, expected, ref=ref.bodies, pop3=pop3)
        R.equal("NOOP", m.noop()[0], "OK")
        typ, dat = m.logout()
        R.equal("LOGOUT answered with BYE", typ, "BYE")
    if not logged_in:
        # Every further check logs in the same way; with a route that cannot
        # log in they would only pile up timeouts.
        R.record(False, "remaining checks", "not run: logging in through the route failed")
        return R.finish(f"route {a.route}")

    check_append(R, a, a.via_port, a.direct_port, a.route)
    check_concurrent(R, a, ref)
    relayed = check_compress(R, a, a.via_port, ref.bodies, must_offer=False)
    print(f"[interop] {a.route}: COMPRESS=DEFLATE " + ("relayed" if relayed else "refused"), file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=a.tmp) as tmp:
        used = check_curl(R, a, a.via_port, ref.bodies, tmp)
        print(f"[interop] curl's login through {a.route}: {sorted(used)}", file=sys.stderr)
        check_fetchmail(R, a, a.via_port, expected, tmp, "fetchmail --protocol IMAP through postern")
    check_idle(R, a, a.via_port,
               lambda: deliver_smtp(a.smtp_port, a.idle_user, a.idle_password, a.idle_rcpt, a.route, "idle"),
               a.received_with, f"postern SMTP route {a.smtp_route}")
    # Last: Dovecot's auth penalty slows the next logins from 127.0.0.1.
    check_wrong_password(R, a.via_port, a.user, a.password, "through postern")
    return R.finish(f"route {a.route}")


def check_concurrent(R, a, ref, sessions=4):
    results = [None] * sessions

    def worker(i):
        try:
            m = imap_connect(a.via_port)
            imap_login(m, "login", a.user, a.password)
            select(m)
            got = fetch_all(m)
            m.logout()
            results[i] = got == ref.bodies or "content differs"
        except Exception as e:  # noqa: BLE001 - reported below
            results[i] = repr(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT * 2)
    bad = [f"session {i}: {r}" for i, r in enumerate(results) if r is not True]
    R.record(not bad, f"{sessions} concurrent sessions each FETCH every message", "; ".join(bad))


# ----------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--results", required=True)
    common.add_argument("--expected", required=True, help="seed_maildir.py --expected directory")
    common.add_argument("--user", required=True)
    common.add_argument("--password-env", default="POP3_PASSWORD")
    common.add_argument("--pop3-port", type=int, required=True, help="POP3 port to compare with (Dovecot / postern)")
    common.add_argument("--idle-user", required=True, help="the user who receives mail through Postfix")
    common.add_argument("--idle-password-env", default="SMTP_PASSWORD")
    common.add_argument("--idle-rcpt", required=True)
    common.add_argument("--smtp-port", type=int, required=True, help="where the IDLE message is sent (AUTH as --idle-user)")
    common.add_argument("--received-with", required=True, help="what Postfix's Received says for that path")
    common.add_argument("--tmp", required=True)

    b = sub.add_parser("baseline", parents=[common])
    b.add_argument("--plain-port", type=int, required=True)
    b.add_argument("--imaps-port", type=int, required=True)
    b.add_argument("--ca", required=True)
    b.add_argument("--route-port", action="append", default=[], help="NAME:SECURITY:AUTH:PORT, repeatable")

    r = sub.add_parser("route", parents=[common])
    r.add_argument("--route", required=True)
    r.add_argument("--via-port", type=int, required=True, help="postern's listen port for the route")
    r.add_argument("--direct-port", type=int, required=True, help="Dovecot plain port for reference sessions")
    r.add_argument("--pop3-route", required=True)
    r.add_argument("--smtp-route", required=True)

    a = ap.parse_args()
    a.password = os.environ[a.password_env]
    a.idle_password = os.environ[a.idle_password_env]
    a.expected = load_expected(a.expected)
    with tempfile.TemporaryDirectory(dir=a.tmp) as tmp:
        a.tmp = tmp
        return cmd_baseline(a) if a.cmd == "baseline" else cmd_route(a)


if __name__ == "__main__":
    sys.exit(main())
