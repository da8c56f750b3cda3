#!/usr/bin/env python3
"""POP3 interop checks, driven by tests/interop/run.sh.

  baseline  talks to Dovecot directly: proves the test server serves the
            seeded messages and accepts USER/PASS, APOP, AUTH PLAIN,
            AUTH CRAM-MD5, STLS and POP3S before postern is involved.
  route     talks to one postern route the way legacy clients do (poplib
            USER/PASS, a raw socket, curl) and compares every answer with
            what the same client gets from Dovecot directly, and with the
            seeded messages.

Each check appends "PASS|FAIL<TAB>name<TAB>detail" to --results. Exit
status: 0 all passed, 3 some check failed (see --results), anything else
means the driver itself broke. Passwords are never printed.
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import poplib
import re
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse

HOST = "127.0.0.1"
CHECKS_FAILED = 3
TIMEOUT = 20  # seconds per socket operation; the big message takes well under 1s


# ----------------------------------------------------------------- results

class Results:
    def __init__(self, path, prefix):
        self.path = path
        self.prefix = prefix
        self.failed = 0
        self.count = 0

    def record(self, ok, name, detail=""):
        status = "PASS" if ok else "FAIL"
        name = f"{self.prefix}/{name}"
        detail = " ".join(str(detail).split())
        if len(detail) > 300:
            detail = detail[:300] + "..."
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(f"{status}\t{name}\t{detail}\n")
        print(f"[interop] {status:4} {name}" + (f" -- {detail}" if detail else ""), file=sys.stderr, flush=True)
        self.count += 1
        if not ok:
            self.failed += 1
        return ok

    def equal(self, name, got, want, what="value"):
        if got == want:
            return self.record(True, name)
        return self.record(False, name, f"{what} differs: {describe_diff(got, want)}")

    def finish(self, what):
        print(f"[interop] {what}: {self.count - self.failed}/{self.count} passed", file=sys.stderr)
        return CHECKS_FAILED if self.failed or self.count == 0 else 0

    def block(self, name):
        """Context manager: an exception inside is one FAIL named `name`."""
        return _Block(self, name)


class _Block:
    def __init__(self, results, name):
        self.results, self.name = results, name

    def __enter__(self):
        return self

    def __exit__(self, etype, exc, tb):
        if exc is None:
            return False
        if etype is KeyboardInterrupt:
            return False
        # Name the line of this script that was running, not poplib's.
        here = [f for f in traceback.extract_tb(tb) if f.filename == __file__] or traceback.extract_tb(tb)
        where = here[-1]
        self.results.record(False, self.name, f"{etype.__name__}: {exc} (at line {where.lineno}: {where.line})")
        return True


def describe_diff(got, want):
    if isinstance(got, (bytes, bytearray)) and isinstance(want, (bytes, bytearray)):
        i = next((k for k in range(min(len(got), len(want))) if got[k] != want[k]), min(len(got), len(want)))
        return (f"got {len(got)} bytes, want {len(want)}; first difference at byte {i}: "
                f"got {bytes(got[max(0, i - 20):i + 20])!r}, want {bytes(want[max(0, i - 20):i + 20])!r}")
    if isinstance(got, (list, tuple)) and isinstance(want, (list, tuple)):
        if len(got) != len(want):
            return f"got {len(got)} items, want {len(want)}"
        i = next(k for k in range(len(got)) if got[k] != want[k])
        return f"item {i}: {describe_diff(got[i], want[i])}"
    return f"got {shorten(got)}, want {shorten(want)}"


def shorten(v):
    r = repr(v)
    return r if len(r) <= 200 else r[:200] + "..."


# ----------------------------------------------------------------- clients

def poplib_login(port, user, password):
    p = poplib.POP3(HOST, port, timeout=TIMEOUT)
    p.user(user)
    p.pass_(password)
    return p


def joined(lines):
    """poplib's un-stuffed lines back to the message bytes as served."""
    return b"".join(line + b"\r\n" for line in lines)


class Raw:
    """A POP3 client on a bare socket: sees the exact bytes on the wire."""

    def __init__(self, port):
        self.sock = socket.create_connection((HOST, port), timeout=TIMEOUT)
        self.file = self.sock.makefile("rb")
        self.greeting = self.line()

    def line(self):
        data = self.file.readline(65536)
        if not data:
            raise ConnectionError("connection closed by the server")
        if not data.endswith(b"\r\n"):
            raise ValueError(f"line not ended by CRLF: {data[-40:]!r}")
        return data

    def send(self, text):
        self.sock.sendall(text.encode() + b"\r\n")

    def cmd(self, text):
        self.send(text)
        return self.line()

    def ok(self, text):
        resp = self.cmd(text)
        if not resp.startswith(b"+OK"):
            raise RuntimeError(f"{text.split()[0]} answered {resp.strip()!r}")
        return resp

    def multiline(self):
        """Body of a multi-line reply, exactly as sent, terminator included."""
        chunks = []
        while True:
            line = self.line()
            chunks.append(line)
            if line == b".\r\n":
                return b"".join(chunks)

    def user_pass(self, user, password):
        self.ok(f"USER {user}")
        self.ok(f"PASS {password}")

    def auth_plain(self, user, password):
        blob = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        resp = self.cmd("AUTH PLAIN")
        if not resp.startswith(b"+"):
            raise RuntimeError(f"AUTH PLAIN answered {resp.strip()!r}")
        self.ok_line(self.cmd(blob), "AUTH PLAIN")

    def cram_md5(self, user, password):
        resp = self.cmd("AUTH CRAM-MD5")
        if not resp.startswith(b"+ "):
            raise RuntimeError(f"AUTH CRAM-MD5 answered {resp.strip()!r}")
        challenge = base64.b64decode(resp[2:].strip())
        digest = hmac.new(password.encode(), challenge, hashlib.md5).hexdigest()
        self.ok_line(self.cmd(base64.b64encode(f"{user} {digest}".encode()).decode()), "AUTH CRAM-MD5")

    @staticmethod
    def ok_line(resp, what):
        if not resp.startswith(b"+OK"):
            raise RuntimeError(f"{what} answered {resp.strip()!r}")

    def retr(self, n):
        status = self.ok(f"RETR {n}")
        return status, self.multiline()

    def quit(self):
        resp = self.cmd("QUIT")
        self.close()
        return resp

    def close(self):
        try:
            self.file.close()
        finally:
            self.sock.close()

    def abort(self, reset=False):
        """Vanish without QUIT: a plain close (FIN), or a reset (RST) as
        when a client crashes or its machine loses power."""
        if reset:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close()


# ----------------------------------------------------------------- reference

def load_expected(directory):
    with open(os.path.join(directory, "index.json")) as f:
        index = json.load(f)
    for entry in index:
        with open(entry["file"], "rb") as f:
            entry["data"] = f.read()
    return {e["message_id"]: e for e in index}


def message_id(lines):
    for line in lines:
        if line == b"":
            break
        if line.lower().startswith(b"message-id:"):
            return line.split(b":", 1)[1].strip().decode()
    return None


class Mailbox:
    """What a client sees on one port with USER/PASS: the comparison basis."""

    def __init__(self, port, user, password, expected):
        self.expected = expected
        p = poplib_login(port, user, password)
        try:
            self.stat = p.stat()
            self.list = p.list()
            self.uidl = p.uidl()
            self.count = self.stat[0]
            self.retr = {n: p.retr(n) for n in range(1, self.count + 1)}
            self.top0 = {n: p.top(n, 0) for n in range(1, self.count + 1)}
            self.top2 = {n: p.top(n, 2) for n in range(1, self.count + 1)}
            self.list_n = {n: p.list(n) for n in range(1, self.count + 1)}
            self.uidl_n = {n: p.uidl(n) for n in range(1, self.count + 1)}
            p.quit()
        except Exception:
            p.close()
            raise
        raw = Raw(port)
        try:
            raw.user_pass(user, password)
            self.raw_retr = {n: raw.retr(n) for n in range(1, self.count + 1)}
            raw.quit()
        except Exception:
            raw.close()
            raise

    def label(self, n):
        entry = self.expected.get(message_id(self.retr[n][1]))
        return f"{n} ({entry['name']})" if entry else str(n)


def uidl_list(port, user, password):
    p = poplib_login(port, user, password)
    try:
        return p.uidl()[1]
    finally:
        p.quit()


# ----------------------------------------------------------------- dovecot log

class DovecotLog:
    def __init__(self, path):
        self.path = path

    def size(self):
        return os.path.getsize(self.path)

    def read_from(self, offset):
        with open(self.path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")

    def wait_session_end(self, offset, lport, user, timeout=15):
        """Find the first login after `offset` on `lport` for `user` and wait
        for its "Disconnected" line. Returns (session, line) or raises."""
        deadline = time.monotonic() + timeout
        session = None
        while time.monotonic() < deadline:
            text = self.read_from(offset)
            if session is None:
                m = re.search(rf"Login: user=<{re.escape(user)}>, .*?, lport={lport}, .*?session=<([^>]+)>", text)
                if m:
                    session = m.group(1)
            if session is not None:
                m = re.search(rf"<{re.escape(session)}>: Info: (Disconnected[^\n]*)", text)
                if m:
                    return session, m.group(1)
            time.sleep(0.2)
        if session is None:
            raise TimeoutError(f"no login of {user} on upstream port {lport} in the Dovecot log")
        raise TimeoutError(f"upstream session {session} still open {timeout}s after the client vanished")


# ----------------------------------------------------------------- baseline

def cmd_baseline(a):
    R = Results(a.results, "dovecot")
    expected = load_expected(a.expected)
    ctx = ssl.create_default_context(cafile=a.ca)

    with R.block("greeting carries an APOP timestamp"):
        p = poplib.POP3(HOST, a.plain_port, timeout=TIMEOUT)
        welcome = p.getwelcome()
        R.record(re.search(rb"<[^<>]+@[^<>]+>", welcome) is not None, "greeting carries an APOP timestamp",
                 welcome.decode(errors="replace"))
        caps = p.capa()
        p.quit()
        R.record("STLS" in caps and "USER" in caps and {"PLAIN", "CRAM-MD5"} <= set(caps.get("SASL", [])),
                 "CAPA offers STLS, USER, SASL PLAIN CRAM-MD5", " ".join(sorted(caps)) + " SASL=" + " ".join(caps.get("SASL", [])))

    with R.block("USER/PASS session serves the seeded messages"):
        box = Mailbox(a.plain_port, a.user, a.password, expected)
        R.equal("USER/PASS login, STAT counts the seeded messages", box.count, len(expected), "message count")
        for n in range(1, box.count + 1):
            lines = box.retr[n][1]
            mid = message_id(lines)
            want = expected.get(mid)
            if want is None:
                R.record(False, f"RETR {n} is a seeded message", f"unknown Message-ID {mid}")
                continue
            R.equal(f"RETR {n} ({want['name']}) equals the seeded message (CRLF)", joined(lines), want["data"], "message")
            R.equal(f"raw RETR {n} ({want['name']}) is the seeded message dot-stuffed",
                    box.raw_retr[n][1], dot_stuff(want["data"]) + b".\r\n", "wire bytes")
        R.record(all(re.fullmatch(rb"\d+ [0-9a-fA-F]{16}", u) for u in box.uidl[1]),
                 "UIDL follows pop3_uidl_format %08Xu%08Xv (Dovecot prints lower-case hex)", b" ".join(box.uidl[1]).decode())

    with R.block("APOP login"):
        p = poplib.POP3(HOST, a.plain_port, timeout=TIMEOUT)
        R.record(p.apop(a.user, a.password).startswith(b"+OK"), "APOP login")
        R.equal("APOP session STAT", p.stat()[0], len(expected))
        p.quit()

    with R.block("AUTH CRAM-MD5 login"):
        r = Raw(a.plain_port)
        r.cram_md5(a.user, a.password)
        R.record(True, "AUTH CRAM-MD5 login (raw socket)")
        R.record(r.cmd("STAT").startswith(b"+OK %d " % len(expected)), "AUTH CRAM-MD5 session STAT")
        r.quit()

    with R.block("AUTH PLAIN login"):
        r = Raw(a.plain_port)
        r.auth_plain(a.user, a.password)
        R.record(True, "AUTH PLAIN login (raw socket)")
        r.quit()

    with R.block("STLS then USER/PASS"):
        p = poplib.POP3(HOST, a.plain_port, timeout=TIMEOUT)
        p.stls(ssl.create_default_context(cafile=a.ca))  # checks the name "127.0.0.1"
        p.user(a.user)
        p.pass_(a.password)
        R.record(True, "STLS (certificate verified for 127.0.0.1) then USER/PASS", p.sock.version())
        p.quit()

    with R.block("POP3S"):
        p = poplib.POP3_SSL("localhost", a.pop3s_port, timeout=TIMEOUT, context=ctx)
        p.user(a.user)
        p.pass_(a.password)
        R.record(True, "POP3S (certificate verified for localhost) then USER/PASS", p.sock.version())
        p.quit()

    return R.finish("baseline")


def dot_stuff(data):
    out = []
    for line in data.split(b"\r\n")[:-1]:
        out.append((b"." + line if line.startswith(b".") else line) + b"\r\n")
    return b"".join(out)


# ----------------------------------------------------------------- route

def cmd_route(a):
    R = Results(a.results, f"pop3/{a.route}")
    expected = load_expected(a.expected)
    dlog = DovecotLog(a.dovecot_log)

    # The reference: the same questions asked of Dovecot directly.
    try:
        ref = Mailbox(a.direct_port, a.user, a.password, expected)
    except Exception as e:  # noqa: BLE001 - reported, then stop: nothing to compare with
        R.record(False, "direct reference fetch from Dovecot", repr(e))
        return R.finish(f"route {a.route}")
    if ref.count != len(expected):
        R.record(False, "direct reference fetch from Dovecot",
                 f"Dovecot has {ref.count} messages, {len(expected)} were seeded (did a manual session delete some?)")
        return R.finish(f"route {a.route}")

    if not check_poplib_session(R, a, ref, expected):
        # Every further check logs in the same way; with a route that cannot
        # log in they would only pile up timeouts.
        R.record(False, "remaining checks", "not run: logging in through the route failed")
        return R.finish(f"route {a.route}")
    check_raw_wire(R, a, ref)
    check_pipelining(R, a, ref)
    check_concurrent(R, a, ref)
    check_dele_without_quit(R, a, ref, dlog)
    check_dele_quit(R, a)
    check_curl(R, a, ref)
    check_bad_password(R, a)

    return R.finish(f"route {a.route}")


def check_poplib_session(R, a, ref, expected):
    """The classic client session. Returns whether logging in worked."""
    logged_in = False
    with R.block("poplib session"):
        p = poplib.POP3(HOST, a.via_port, timeout=TIMEOUT)
        welcome = p.getwelcome()
        R.record(welcome.startswith(b"+OK"), "greeting is +OK", welcome.decode(errors="replace"))
        try:
            caps = p.capa()
            print(f"[interop] {a.route}: CAPA {caps}", file=sys.stderr)
        except poplib.error_proto as e:
            print(f"[interop] {a.route}: CAPA refused: {e}", file=sys.stderr)
        R.record(p.user(a.user).startswith(b"+OK"), "USER accepted")
        logged_in = R.record(p.pass_(a.password).startswith(b"+OK"), "PASS accepted (postern logged in upstream)")
        R.equal("STAT equals direct", p.stat(), ref.stat)
        R.equal("LIST equals direct", p.list(), ref.list)
        R.equal("UIDL equals direct", p.uidl(), ref.uidl)
        for n in range(1, ref.count + 1):
            label = ref.label(n)
            resp, lines, octets = p.retr(n)
            R.equal(f"RETR {label} equals direct", (resp, lines, octets), ref.retr[n])
            want = expected[message_id(ref.retr[n][1])]["data"]
            R.equal(f"RETR {label} equals the seeded message", joined(lines), want, "message")
        for n in range(1, ref.count + 1):
            label = ref.label(n)
            R.equal(f"TOP {label} 0 equals direct", p.top(n, 0), ref.top0[n])
            R.equal(f"TOP {label} 2 equals direct", p.top(n, 2), ref.top2[n])
            R.equal(f"LIST {n} equals direct", p.list(n), ref.list_n[n])
            R.equal(f"UIDL {n} equals direct", p.uidl(n), ref.uidl_n[n])
        R.record(p.noop().startswith(b"+OK"), "NOOP")
        R.record(p.dele(1).startswith(b"+OK"), "DELE 1 (undone by RSET below)")
        R.equal("STAT after DELE counts one message less", p.stat()[0], ref.count - 1)
        R.record(p.rset().startswith(b"+OK"), "RSET")
        R.equal("STAT after RSET equals direct", p.stat(), ref.stat)
        expect_err(R, "unknown command gets -ERR", lambda: p._shortcmd("XYZZY"))  # noqa: SLF001
        expect_err(R, "RETR of a missing message gets -ERR", lambda: p.retr(ref.count + 1))
        R.equal("session still usable after -ERR (STAT)", p.stat(), ref.stat)
        R.record(p.quit().startswith(b"+OK"), "QUIT")
    return logged_in


def expect_err(R, name, call):
    """`call` must get a -ERR reply (poplib raises error_proto with it)."""
    try:
        resp = call()
        R.record(False, name, f"got {shorten(resp)}")
    except poplib.error_proto as e:
        # poplib reports a closed connection as the str "-ERR EOF"; a real
        # reply arrives as bytes.
        reply = e.args[0] if e.args else b""
        R.record(isinstance(reply, bytes) and reply.startswith(b"-ERR"), name, shorten(reply))


def check_pipelining(R, a, ref):
    """RFC 2449 PIPELINING: when postern advertises it, a client may send
    everything in one write, login included. Postern must answer each
    command once and in order, even for bytes that arrive while it is
    still logging in upstream."""
    with R.block("pipelining"):
        p = poplib.POP3(HOST, a.via_port, timeout=TIMEOUT)
        try:
            caps = p.capa()
        except poplib.error_proto:
            caps = {}
        p.quit()
        if "PIPELINING" not in caps:
            R.record(True, "pipelined session", "PIPELINING not advertised, so clients must not pipeline")
            return
        tail = ["STAT", "LIST", "UIDL", "RETR 2", "TOP 1 0", "NOOP"]
        multi = {"LIST", "UIDL", "RETR", "TOP"}

        def run(port):
            r = Raw(port)
            r.sock.sendall("".join(f"{c}\r\n" for c in
                                   [f"USER {a.user}", f"PASS {a.password}"] + tail + ["QUIT"]).encode())
            login = [r.line(), r.line()]
            replies = []
            for c in tail:
                status = r.line()
                body = r.multiline() if status.startswith(b"+OK") and c.split()[0] in multi else b""
                replies.append(status + body)
            bye = r.line()
            r.close()
            return login, replies, bye

        login, replies, bye = run(a.via_port)
        R.record(all(x.startswith(b"+OK") for x in login), "pipelined USER and PASS accepted",
                 b" | ".join(x.strip() for x in login).decode(errors="replace"))
        _, want, _ = run(a.direct_port)
        R.equal("pipelined STAT LIST UIDL RETR TOP NOOP answered in order, bytes equal direct", replies, want)
        R.record(bye.startswith(b"+OK"), "pipelined QUIT")


def check_raw_wire(R, a, ref):
    with R.block("raw wire session"):
        r = Raw(a.via_port)
        r.user_pass(a.user, a.password)
        for n in range(1, ref.count + 1):
            status, body = r.retr(n)
            R.equal(f"wire bytes of RETR {ref.label(n)} equal direct (dot-stuffing kept)",
                    status + body, ref.raw_retr[n][0] + ref.raw_retr[n][1], "wire bytes")
        r.quit()


def check_concurrent(R, a, ref, sessions=4):
    results = [None] * sessions

    def worker(i):
        try:
            p = poplib_login(a.via_port, a.user, a.password)
            got = [p.retr(n) for n in range(1, ref.count + 1)]
            p.quit()
            results[i] = got == [ref.retr[n] for n in range(1, ref.count + 1)] or "content differs"
        except Exception as e:  # noqa: BLE001 - reported below
            results[i] = repr(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT * 2)
    bad = [f"session {i}: {r}" for i, r in enumerate(results) if r is not True]
    R.record(not bad, f"{sessions} concurrent sessions each RETR every message", "; ".join(bad))


def check_dele_without_quit(R, a, ref, dlog):
    for how, reset in (("close", False), ("reset", True)):
        name = f"DELE then {how} without QUIT"
        with R.block(f"{name} keeps the message"):
            offset = dlog.size()
            r = Raw(a.via_port)
            r.user_pass(a.user, a.password)
            R.record(r.cmd("DELE 1").startswith(b"+OK"), f"{name}: DELE 1 accepted")
            r.abort(reset=reset)
            session, line = dlog.wait_session_end(offset, a.upstream_lport, a.user)
            R.record(True, f"{name}: upstream session ends too", f"{session}: {line}")
            R.equal(f"{name}: direct UIDL unchanged", uidl_list(a.direct_port, a.user, a.password), ref.uidl[1])
            R.equal(f"{name}: UIDL via postern unchanged", uidl_list(a.via_port, a.user, a.password), ref.uidl[1])


def deliver_marker(maildir, uid, route):
    marker = f"{route}-{os.getpid()}-{time.time_ns()}"
    data = (f"From: sender@interop.invalid\nTo: bob@interop.invalid\nSubject: delete me\n"
            f"Message-ID: <{marker}@postern-interop.invalid>\nX-Postern-Marker: {marker}\n\n"
            f"This message is deleted through route {route}.\n").encode()
    name = f"{time.time_ns()}.M{os.getpid()}.postern-interop-marker"
    tmp = os.path.join(maildir, "tmp", name)
    with open(tmp, "wb") as f:
        f.write(data)
    os.chown(tmp, uid, uid)
    os.rename(tmp, os.path.join(maildir, "new", name))
    return marker


def find_marker(port, user, password, marker):
    """(message number, uidl) of the marker message, or None."""
    p = poplib_login(port, user, password)
    try:
        for entry in p.uidl()[1]:
            n, uid = entry.split()
            head = p.top(int(n), 0)[1]
            if any(marker.encode() in line for line in head):
                return int(n), uid
        return None
    finally:
        p.quit()


def check_dele_quit(R, a):
    with R.block("DELE then QUIT deletes the message"):
        marker = deliver_marker(a.dele_maildir, a.mail_uid, a.route)
        found = find_marker(a.direct_port, a.dele_user, a.dele_password, marker)
        if found is None:
            R.record(False, "DELE then QUIT deletes the message", "the marker message did not arrive in Dovecot")
            return
        before = uidl_list(a.direct_port, a.dele_user, a.dele_password)
        p = poplib_login(a.via_port, a.dele_user, a.dele_password)
        n = next(int(e.split()[0]) for e in p.uidl()[1] if e.split()[1] == found[1])
        R.record(p.dele(n).startswith(b"+OK"), f"DELE {n} (second user)")
        R.record(p.quit().startswith(b"+OK"), "QUIT after DELE")
        after = uidl_list(a.direct_port, a.dele_user, a.dele_password)
        R.equal("DELE then QUIT removed exactly that message", after, [e for e in before if e.split()[1] != found[1]])


def check_curl(R, a, ref):
    user = urllib.parse.quote(a.user, safe="")
    password = urllib.parse.quote(a.password, safe="")
    base = f"pop3://{user}:{password}@{HOST}:{a.via_port}/"
    with tempfile.TemporaryDirectory(dir=a.tmp) as tmp:
        for n, want, label in [(None, joined(ref.list[1]), "LIST")] + [
                (n, joined(ref.retr[n][1]), f"RETR {ref.label(n)}") for n in range(1, ref.count + 1)]:
            out = os.path.join(tmp, "out")
            with R.block(f"curl {label}"):
                proc = subprocess.run(
                    ["curl", "-sS", "-v", "--max-time", "60", "-o", out, base + ("" if n is None else str(n))],
                    capture_output=True, timeout=90)
                trace = proc.stderr.decode(errors="replace")
                sent = [ln[2:] for ln in trace.splitlines() if ln.startswith("> ")]
                login = next((s.split(" ")[0] + (" " + s.split(" ")[1] if s.startswith("AUTH") else "")
                              for s in sent if s.startswith(("AUTH", "APOP", "USER"))), "no login command")
                if proc.returncode != 0:
                    errors = [ln for ln in trace.splitlines() if ln.startswith(("curl:", "< -ERR"))]
                    R.record(False, f"curl {label}", f"exit {proc.returncode}, login {login}: {' | '.join(errors)}")
                    continue
                with open(out, "rb") as f:
                    got = f.read()
                R.equal(f"curl {label} equals direct (curl logged in with {login})", got, want, "curl output")


def check_bad_password(R, a):
    with R.block("wrong password is refused"):
        p = poplib.POP3(HOST, a.via_port, timeout=TIMEOUT)
        p.user(a.user)
        expect_err(R, "wrong password is refused with -ERR", lambda: p.pass_(a.password + "-wrong"))
        try:
            p.quit()
        except (poplib.error_proto, OSError, EOFError):
            pass  # closing the session after a failed login is allowed


# ----------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--results", required=True)
    common.add_argument("--expected", required=True, help="seed_maildir.py --expected directory")
    common.add_argument("--user", required=True)
    common.add_argument("--password-env", default="POP3_PASSWORD")

    b = sub.add_parser("baseline", parents=[common])
    b.add_argument("--plain-port", type=int, required=True)
    b.add_argument("--pop3s-port", type=int, required=True)
    b.add_argument("--ca", required=True)

    r = sub.add_parser("route", parents=[common])
    r.add_argument("--route", required=True)
    r.add_argument("--via-port", type=int, required=True, help="postern's listen port for the route")
    r.add_argument("--direct-port", type=int, required=True, help="Dovecot plain port for reference fetches")
    r.add_argument("--upstream-lport", type=int, required=True, help="Dovecot port the route connects to")
    r.add_argument("--dovecot-log", required=True)
    r.add_argument("--dele-user", required=True)
    r.add_argument("--dele-password-env", default="POP3_DELE_PASSWORD")
    r.add_argument("--dele-maildir", required=True)
    r.add_argument("--mail-uid", type=int, required=True)
    r.add_argument("--tmp", required=True)

    a = ap.parse_args()
    a.password = os.environ[a.password_env]
    if a.cmd == "baseline":
        return cmd_baseline(a)
    a.dele_password = os.environ[a.dele_password_env]
    return cmd_route(a)


if __name__ == "__main__":
    sys.exit(main())
