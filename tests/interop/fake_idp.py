#!/usr/bin/env python3
"""A small fake OAuth2 authorization server over HTTPS for the interop run.

Endpoints (all POST, application/x-www-form-urlencoded, JSON answers):

  /token        grant_type=client_credentials   client_id + client_secret
                                                (HTTP Basic, RFC 6749 2.3.1,
                                                or form fields)
                grant_type=refresh_token        rotation: every refresh issues
                                                a new refresh token and
                                                invalidates the one used
                grant_type=urn:ietf:params:oauth:grant-type:device_code
                                                RFC 8628 polling: the first
                                                --pending-polls polls answer
                                                authorization_pending, the
                                                next one gets the tokens;
                                                polling faster than the
                                                interval answers slow_down
  /devicecode   RFC 8628 device authorization (device_code, user_code,
                verification_uri, verification_uri_complete, expires_in,
                interval=1)
  /introspect   RFC 7662 (what Dovecot's oauth2 passdb calls with
                introspection_mode = post): {"active": true, "sub": USER,
                "username": USER, ...} for a live access token issued here,
                {"active": false} for anything else
  /admin/revoke X-Admin-Key header; form client_id: every access token that
                client holds becomes inactive (the checks use it to make a
                real server refuse a cached token)

Access tokens are random, --token-length characters (default 1,200:
Microsoft's exceed 1 KB; a client may override it in the clients file),
of the RFC 6750 b64token alphabet, valid --lifetime seconds. Every token
maps to one user: the client's "user" in the clients file, or, for the
device flow, --device-user.

Clients file (JSON): {"CLIENT_ID": {"secret": "S" or null (public client),
"user": "U" (client_credentials), "token_length": N (optional)}}.

State directory (read by the checks):
  counts.json      flat counters, e.g. "token.client_credentials.ok.CLIENT",
                   "token.device_code.authorization_pending.CLIENT",
                   "token.refresh_token.invalid_grant.CLIENT",
                   "devicecode.ok.CLIENT", "introspect.active.CLIENT",
                   "introspect.inactive.unknown"; rewritten atomically
                   after every request
  issued-secrets   every access token, refresh token and device code issued
                   (one per line, mode 0600): what must never reach a log
  user-codes       every user code issued (meant to be shown to a person)
  admin-key        the X-Admin-Key value (mode 0600)
The log (--log) names requests, outcomes and token fingerprints (the first
12 hex digits of SHA-256), never a token or secret.
"""

import argparse
import base64
import hashlib
import http.server
import json
import os
import secrets
import socket
import ssl
import sys
import threading
import time
import urllib.parse

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
TOKEN_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"


def fingerprint(secret):
    return hashlib.sha256(secret.encode()).hexdigest()[:12]


def random_token(length):
    return "".join(secrets.choice(TOKEN_ALPHABET) for _ in range(length))


class State:
    def __init__(self, a):
        self.a = a
        self.lock = threading.Lock()
        self.counts = {}
        self.access = {}    # token -> {client, user, scope, exp, revoked}
        self.refresh = {}   # token -> {client, user, scope}
        self.spent_refresh = {}  # rotated-out token -> client (for the log)
        self.devices = {}   # device_code -> {client, user_code, scope, polls, last_poll, interval, exp, done}
        with open(a.clients) as f:
            self.clients = json.load(f)
        os.makedirs(a.state_dir, exist_ok=True)
        self.secrets_path = os.path.join(a.state_dir, "issued-secrets")
        self.admin_key = secrets.token_urlsafe(24)
        for name, content in (("issued-secrets", ""), ("user-codes", ""), ("admin-key", self.admin_key + "\n")):
            path = os.path.join(a.state_dir, name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(content)
        self.save_counts()

    # -- bookkeeping (callers hold the lock)

    def count(self, key):
        self.counts[key] = self.counts.get(key, 0) + 1

    def save_counts(self):
        path = os.path.join(self.a.state_dir, "counts.json")
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.counts, f, indent=1, sort_keys=True)
        os.replace(tmp, path)

    def remember(self, filename, value):
        with open(os.path.join(self.a.state_dir, filename), "a") as f:
            f.write(value + "\n")

    def token_length(self, client):
        return int(self.clients.get(client, {}).get("token_length") or self.a.token_length)

    def issue(self, client, user, scope, with_refresh):
        token = random_token(self.token_length(client))
        self.access[token] = {"client": client, "user": user, "scope": scope,
                              "iat": int(time.time()), "exp": time.time() + self.a.lifetime, "revoked": False}
        self.remember("issued-secrets", token)
        body = {"access_token": token, "token_type": "Bearer", "expires_in": self.a.lifetime, "scope": scope}
        if with_refresh:
            rt = "rt-" + secrets.token_urlsafe(48)
            self.refresh[rt] = {"client": client, "user": user, "scope": scope}
            self.remember("issued-secrets", rt)
            body["refresh_token"] = rt
        return body


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"   # keep-alive: Dovecot's HTTP client reuses connections
    server_version = "postern-interop-fake-idp/1"
    timeout = 120

    # ---------------------------------------------------------------- io

    def log_message(self, fmt, *args):  # noqa: D102 - the request line is logged by log_event instead
        pass

    def log_event(self, what, **fields):
        extra = " ".join(f"{k}={v}" for k, v in fields.items())
        line = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {self.client_address[0]}:{self.client_address[1]} {what} {extra}"
        with self.server.log_lock:
            with open(self.server.args.log, "a") as f:
                f.write(line.rstrip() + "\n")

    def reply(self, status, body, headers=()):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Pragma", "no-cache")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def form(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode("ascii", "replace") if length else ""
        return {k: v[0] for k, v in urllib.parse.parse_qs(raw, keep_blank_values=True).items()}

    def do_GET(self):  # noqa: N802 - http.server's naming
        if self.path.startswith("/device"):
            data = b"postern interop fake IdP: device codes are approved automatically.\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            self.log_event("GET /device")
            return
        self.reply(404, {"error": "not_found"})

    def do_POST(self):  # noqa: N802
        form = self.form()
        state = self.server.state
        route = {"/token": self.token, "/devicecode": self.devicecode,
                 "/introspect": self.introspect, "/admin/revoke": self.revoke}.get(self.path.split("?")[0])
        if route is None:
            self.log_event(f"POST {self.path}", result="404")
            self.reply(404, {"error": "not_found"})
            return
        with state.lock:
            status, body, headers, event = route(state, form)
            state.save_counts()
        self.log_event(f"POST {self.path.split('?')[0]}", **event)
        self.reply(status, body, headers)

    # ---------------------------------------------------------------- client auth

    def client_auth(self, state, form):
        """(client_id, error reply or None). Basic auth or form fields; a
        client with a secret must present it, a public one must not need to."""
        client, secret, how = form.get("client_id"), form.get("client_secret"), "form"
        auth = self.headers.get("Authorization", "")
        if auth.lower().startswith("basic "):
            try:
                decoded = base64.b64decode(auth[6:].strip(), validate=True).decode()
                user, _, pw = decoded.partition(":")
                client, secret, how = urllib.parse.unquote_plus(user), urllib.parse.unquote_plus(pw), "basic"
            except (ValueError, UnicodeDecodeError):
                return None, (401, {"error": "invalid_client", "error_description": "bad Basic header"}, how)
        conf = state.clients.get(client or "")
        if conf is None:
            return client, (401, {"error": "invalid_client", "error_description": "unknown client"}, how)
        want = conf.get("secret")
        if want is not None and (secret is None or not secrets.compare_digest(secret, want)):
            return client, (401, {"error": "invalid_client", "error_description": "bad client secret"}, how)
        return client, (None, None, how)

    def auth_failure(self, state, prefix, client, err):
        status, body, how = err
        state.count(f"{prefix}.invalid_client.{client or '-'}")
        headers = [("WWW-Authenticate", 'Basic realm="fake-idp"')] if how == "basic" else []
        return status, body, headers, {"client": client or "-", "auth": how, "result": "invalid_client"}

    # ---------------------------------------------------------------- endpoints

    def token(self, state, form):
        grant = form.get("grant_type", "")
        kind = {"client_credentials": "client_credentials", "refresh_token": "refresh_token",
                DEVICE_GRANT: "device_code"}.get(grant)
        client, err = self.client_auth(state, form)
        if kind is None:
            state.count("token.unsupported_grant_type")
            return 400, {"error": "unsupported_grant_type"}, [], {"grant": grant or "-", "result": "unsupported"}
        if err[0] is not None:
            return self.auth_failure(state, f"token.{kind}", client, err)
        how = err[2]
        scope = form.get("scope", "")
        ev = {"grant": kind, "client": client, "auth": how}

        if kind == "client_credentials":
            user = state.clients[client].get("user")
            if not user:
                state.count(f"token.client_credentials.unauthorized_client.{client}")
                return 400, {"error": "unauthorized_client"}, [], {**ev, "result": "unauthorized_client"}
            body = state.issue(client, user, scope, with_refresh=False)
            state.count(f"token.client_credentials.ok.{client}")
            return 200, body, [], {**ev, "scope": repr(scope), "user": user, "result": "ok",
                                   "access": fingerprint(body["access_token"])}

        if kind == "refresh_token":
            rt = form.get("refresh_token", "")
            entry = state.refresh.get(rt)
            if entry is None or entry["client"] != client:
                why = "spent (rotated out)" if rt in state.spent_refresh else "unknown"
                state.count(f"token.refresh_token.invalid_grant.{client}")
                return 400, {"error": "invalid_grant", "error_description": f"refresh token {why}"}, [], \
                    {**ev, "result": "invalid_grant", "why": why.split()[0], "refresh": fingerprint(rt) if rt else "-"}
            del state.refresh[rt]
            state.spent_refresh[rt] = client
            body = state.issue(client, entry["user"], scope or entry["scope"], with_refresh=True)
            state.count(f"token.refresh_token.ok.{client}")
            return 200, body, [], {**ev, "user": entry["user"], "result": "ok", "used": fingerprint(rt),
                                   "access": fingerprint(body["access_token"]),
                                   "refresh": fingerprint(body["refresh_token"])}

        # device_code polling
        code = form.get("device_code", "")
        dev = state.devices.get(code)
        if dev is None or dev["client"] != client:
            state.count(f"token.device_code.invalid_grant.{client}")
            return 400, {"error": "invalid_grant"}, [], {**ev, "result": "invalid_grant"}
        now = time.monotonic()
        if dev["done"]:
            state.count(f"token.device_code.invalid_grant.{client}")
            return 400, {"error": "invalid_grant", "error_description": "device code already used"}, [], \
                {**ev, "result": "invalid_grant", "why": "used"}
        if now > dev["exp"]:
            state.count(f"token.device_code.expired_token.{client}")
            return 400, {"error": "expired_token"}, [], {**ev, "result": "expired_token"}
        last, dev["last_poll"] = dev["last_poll"], now
        if last is not None and now - last < dev["interval"] - 0.25:
            dev["interval"] += 5  # RFC 8628 3.5
            state.count(f"token.device_code.slow_down.{client}")
            return 400, {"error": "slow_down"}, [], {**ev, "result": "slow_down", "after": f"{now - last:.2f}s"}
        dev["polls"] += 1
        if dev["polls"] <= state.a.pending_polls:
            state.count(f"token.device_code.authorization_pending.{client}")
            return 400, {"error": "authorization_pending"}, [], {**ev, "result": "authorization_pending",
                                                                  "poll": dev["polls"]}
        dev["done"] = True
        body = state.issue(client, state.a.device_user, scope or dev["scope"], with_refresh=True)
        state.count(f"token.device_code.ok.{client}")
        return 200, body, [], {**ev, "user": state.a.device_user, "result": "ok", "poll": dev["polls"],
                               "access": fingerprint(body["access_token"]),
                               "refresh": fingerprint(body["refresh_token"])}

    def devicecode(self, state, form):
        client, err = self.client_auth(state, form)
        if err[0] is not None:
            return self.auth_failure(state, "devicecode", client, err)
        code = "dc-" + secrets.token_urlsafe(32)
        user_code = "-".join("".join(secrets.choice("BCDFGHJKLMNPQRSTVWXZ") for _ in range(4)) for _ in range(2))
        scope = form.get("scope", "")
        state.devices[code] = {"client": client, "user_code": user_code, "scope": scope, "polls": 0,
                               "last_poll": None, "interval": 1, "exp": time.monotonic() + state.a.device_expires,
                               "done": False}
        state.remember("issued-secrets", code)
        state.remember("user-codes", user_code)
        state.count(f"devicecode.ok.{client}")
        base = f"https://{state.a.public_host}:{state.a.port}/device"
        body = {"device_code": code, "user_code": user_code, "verification_uri": base,
                "verification_uri_complete": f"{base}?user_code={user_code}",
                "expires_in": state.a.device_expires, "interval": 1,
                "message": f"To sign in, open {base} and enter the code {user_code}."}
        return 200, body, [], {"client": client, "scope": repr(scope), "user_code": user_code, "result": "ok"}

    def introspect(self, state, form):
        token = form.get("token", "")
        entry = state.access.get(token)
        if entry is None:
            state.count("introspect.inactive.unknown")
            return 200, {"active": False}, [], {"result": "inactive", "why": "unknown",
                                                "token": fingerprint(token) if token else "-", "len": len(token)}
        if entry["revoked"] or time.time() > entry["exp"]:
            why = "revoked" if entry["revoked"] else "expired"
            state.count(f"introspect.inactive.{why}.{entry['client']}")
            return 200, {"active": False}, [], {"result": "inactive", "why": why, "client": entry["client"],
                                                "token": fingerprint(token)}
        state.count(f"introspect.active.{entry['client']}")
        body = {"active": True, "sub": entry["user"], "username": entry["user"], "client_id": entry["client"],
                "scope": entry["scope"], "token_type": "Bearer", "iat": entry["iat"], "exp": int(entry["exp"])}
        return 200, body, [], {"result": "active", "client": entry["client"], "user": entry["user"],
                               "token": fingerprint(token)}

    def revoke(self, state, form):
        key = self.headers.get("X-Admin-Key", "")
        if not secrets.compare_digest(key, state.admin_key):
            return 403, {"error": "forbidden"}, [], {"result": "forbidden"}
        client = form.get("client_id", "")
        n = 0
        for entry in state.access.values():
            if entry["client"] == client and not entry["revoked"]:
                entry["revoked"] = True
                n += 1
        state.count(f"admin.revoke.{client}")
        return 200, {"revoked": n}, [], {"client": client, "revoked": n}


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def finish_request(self, request, client_address):
        # The TLS handshake runs in the request's own thread, so a client
        # that connects and says nothing cannot stall the accept loop.
        request.settimeout(30)
        try:
            request.do_handshake()
        except (ssl.SSLError, OSError) as e:
            with self.log_lock:
                with open(self.args.log, "a") as f:
                    f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {client_address[0]}:{client_address[1]} "
                            f"TLS handshake failed: {e}\n")
            return
        super().finish_request(request, client_address)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--public-host", default="127.0.0.1", help="host in verification_uri")
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--clients", required=True, help="JSON file: client_id -> {secret, user, token_length}")
    ap.add_argument("--device-user", required=True, help="the user device-flow tokens are issued for")
    ap.add_argument("--lifetime", type=int, default=3600, help="access token lifetime, seconds")
    ap.add_argument("--token-length", type=int, default=1200)
    ap.add_argument("--pending-polls", type=int, default=2,
                    help="device-code polls answered authorization_pending before approval")
    ap.add_argument("--device-expires", type=int, default=600)
    ap.add_argument("--state-dir", required=True)
    ap.add_argument("--log", required=True)
    a = ap.parse_args()
    if a.token_length < 20:
        sys.exit("--token-length must be at least 20")

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(a.cert, a.key)

    httpd = Server((a.host, a.port), Handler, bind_and_activate=False)
    httpd.socket = ctx.wrap_socket(socket.socket(socket.AF_INET, socket.SOCK_STREAM), server_side=True,
                                   do_handshake_on_connect=False)
    httpd.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    httpd.server_bind()
    httpd.server_activate()
    httpd.args = a
    httpd.state = State(a)
    httpd.log_lock = threading.Lock()
    with open(a.log, "a") as f:
        f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} listening on https://{a.host}:{a.port} "
                f"(token length {a.token_length}, lifetime {a.lifetime}s, device user {a.device_user}, "
                f"{len(httpd.state.clients)} clients)\n")
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
