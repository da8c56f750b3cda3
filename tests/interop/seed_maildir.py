#!/usr/bin/env python3
"""Seed a Maildir with the interop test messages.

Writes each message with LF line ends into MAILDIR/new (via tmp/, the
Maildir delivery protocol) and the form a POP3 server must serve it in
(CRLF line ends, not dot-stuffed) into EXPECTED/<n>.eml, plus
EXPECTED/index.json mapping Message-ID to file. The POP3 checks compare
what they retrieve against these files.

Messages:
  1 small      plain ASCII, with one 998-character line (the RFC 5322 maximum)
  2 dots       lines ".hello", "..", "...", ". x" and a line that is only "."
               (in the middle and as the last line of the body)
  3 utf8       8-bit UTF-8 body and a raw ISO-8859-1 byte line
  4 big        about 3 MiB, with dot-leading lines scattered through it so that
               dot-stuffed lines and "."-like lines fall on every read-chunk
               boundary a relay might use
"""

import argparse
import base64
import hashlib
import json
import os


def headers(n, subject, extra=()):
    lines = [
        "From: Postern Interop <sender@interop.invalid>",
        "To: Mailbox Owner <owner@interop.invalid>",
        f"Subject: {subject}",
        "Date: Mon, 27 Nov 2023 10:00:0%d +0000" % n,
        f"Message-ID: <seed-{n}@postern-interop.invalid>",
        "MIME-Version: 1.0",
    ]
    lines.extend(extra)
    return "\n".join(lines).encode() + b"\n\n"


def msg_small():
    body = (
        "Hello,\n"
        "this is the small test message.\n"
        "\n"
        "The next line is 998 characters long, the longest RFC 5322 allows:\n"
        + ("0123456789" * 100)[:998]
        + "\nEnd of message.\n"
    )
    return headers(1, "small", ["Content-Type: text/plain; charset=us-ascii"]) + body.encode()


def msg_dots():
    body = (
        ".hello starts with a dot\n"
        "..\n"
        "...\n"
        ". x\n"
        ".\n"
        "a line after a lone dot\n"
        "\n"
        ".\n"
        "..\n"
        "text.\n"
        " .\n"
        ".\n"
    )
    return headers(2, "dots", ["Content-Type: text/plain; charset=us-ascii"]) + body.encode()


def msg_utf8():
    body = (
        "こんにちは。APOP でログインします。\n"
        "Grüße aus Köln — naïve café, ½ €.\n"
        "Emoji: \U0001F4EC \U0001F510\n"
        ".行頭のドット\n"
    ).encode("utf-8")
    # A raw 8-bit byte that is not UTF-8: a relay must not "fix" it.
    body += b"latin-1: caf\xe9 na\xefve\n"
    return headers(
        3,
        "=?UTF-8?B?" + base64.b64encode("8ビット テスト".encode()).decode() + "?=",
        ["Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: 8bit"],
    ) + body


def msg_big(target=3 * 1024 * 1024):
    out = [headers(4, "big", ["Content-Type: text/plain; charset=us-ascii"])]
    size = len(out[0])
    i = 0
    specials = [b".", b"..", b".dot-leading line", b"...", b""]
    while size < target:
        if i % 7 == 3:
            line = specials[(i // 7) % len(specials)] + b"\n"
        else:
            h = hashlib.sha256(str(i).encode()).hexdigest()
            line = ("%08d " % i + (h + h)[: 60 + i % 15]).encode() + b"\n"
        out.append(line)
        size += len(line)
        i += 1
    out.append(b"End of the big message.\n")
    return b"".join(out)


MESSAGES = [("small", msg_small), ("dots", msg_dots), ("utf8", msg_utf8), ("big", msg_big)]


def deliver(maildir, seq, data, uid):
    # Names sort in delivery order; Dovecot assigns UIDs in that order.
    name = "%d.M%dP%d.postern-interop" % (1700000000 + seq, seq, os.getpid())
    tmp = os.path.join(maildir, "tmp", name)
    with open(tmp, "wb") as f:
        f.write(data)
    if uid is not None:
        os.chown(tmp, uid, uid)
    os.rename(tmp, os.path.join(maildir, "new", name))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--maildir", required=True)
    ap.add_argument("--expected", required=True, help="directory for the expected CRLF forms")
    ap.add_argument("--uid", type=int, help="owner uid (and gid) of the delivered files")
    a = ap.parse_args()
    os.makedirs(a.expected, exist_ok=True)
    index = []
    for seq, (name, make) in enumerate(MESSAGES, start=1):
        data = make()
        assert data.endswith(b"\n") and b"\r" not in data
        deliver(a.maildir, seq, data, a.uid)
        crlf = data.replace(b"\n", b"\r\n")
        path = os.path.join(a.expected, "%d-%s.eml" % (seq, name))
        with open(path, "wb") as f:
            f.write(crlf)
        index.append({
            "name": name,
            "message_id": "<seed-%d@postern-interop.invalid>" % seq,
            "file": path,
            "size": len(crlf),
        })
        print("seeded %-5s %8d bytes (%d as served)" % (name, len(data), len(crlf)))
    with open(os.path.join(a.expected, "index.json"), "w") as f:
        json.dump(index, f, indent=1)


if __name__ == "__main__":
    main()
