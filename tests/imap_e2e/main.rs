//! End-to-end: the real gateway in-process, a legacy client speaking plain
//! IMAP to it (a `LineClient`), and a scripted fake IMAP upstream that
//! really checks every login mechanism and really speaks TLS (certificates
//! minted per run). The tests are grouped in
//!
//! - `login`: every upstream security × auth, every LOGIN and
//!   AUTHENTICATE PLAIN form a client may use, capabilities on both sides
//!   of login;
//! - `accounts`: stored accounts (local LOGIN, PLAIN, CRAM-MD5) and OAuth2
//!   accounts (XOAUTH2, OAUTHBEARER, a revoked token replaced once);
//! - `relay`: the authenticated state (APPEND and FETCH of megabytes,
//!   IDLE, pipelining, what postern refuses, capability filtering, a cut
//!   response, LOGOUT);
//! - `fail_closed`: upstreams that must not get credentials (PREAUTH,
//!   STARTTLS stripped, refused or injected, LOGINDISABLED, certificates);
//! - `limits`: postern's not-authenticated state under attack (literal and
//!   line caps, HTTP, early talkers, TLS on the plain port, STARTTLS
//!   injection, timeouts).
//!
//! This file holds what they share.

#[path = "../common/mod.rs"]
mod common;
#[path = "../oauth_e2e/setup.rs"]
mod setup;

mod accounts;
mod fail_closed;
mod limits;
mod login;
mod relay;

use std::path::PathBuf;
use std::time::Duration;

use common::{start, GatewayYaml, RouteYaml};
use postern_testkit::{
    FakeImap, FakeSecurity, ImapEvent, ImapScript, LineClient, TempDir, TestPki,
};

const WAIT: Duration = Duration::from_secs(5);

/// The fake's one account.
const USER: &str = "alice";
/// A password only a quoted string (with both escapes) or a literal can
/// carry.
const PASSWORD: &str = r#"wonder "land" \ 42"#;
/// A password that is an IMAP atom.
const ATOM_PASSWORD: &str = "wonderland";

/// The start of postern's own greeting (its capabilities follow).
const GREETING_START: &str = "* OK [CAPABILITY ";
const GREETING_END: &str = "] postern IMAP gateway ready";

/// A message whose body holds IMAP protocol lines: a capability line a
/// relay must not rewrite, a literal announcement it must not follow, a
/// tagged status and a BYE it must not act on.
fn trap_message() -> Vec<u8> {
    b"From: a@example.org\r\nSubject: traps\r\n\r\n\
      * CAPABILITY IMAP4rev1 STARTTLS\r\n\
      {5}\r\n\
      hello\r\n\
      * OK [CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN] in a body\r\n\
      a1 OK LOGIN completed\r\n\
      * BYE not really\r\n\
      8-bit: \xe4\xf6\xfc\xff\r\n"
        .to_vec()
}

/// A message of about `size` octets: CRLF lines with protocol traps every
/// so often (server responses, a bare `{n}` announcement, client commands
/// postern refuses), the line counter making it unique.
fn big_message(size: usize, seed: u32) -> Vec<u8> {
    let mut out = format!("From: big@example.org\r\nSubject: big {seed}\r\n\r\n").into_bytes();
    let mut i: u32 = 0;
    while out.len() < size {
        let line = match i % 97 {
            0 => "* CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN LOGINDISABLED".to_owned(),
            1 => "{5}".to_owned(),
            2 => format!("a{seed} OK done"),
            3 => "* 1 EXISTS".to_owned(),
            // Client commands postern refuses after login, and IDLE's end:
            // message data, never commands.
            4 => "x STARTTLS".to_owned(),
            5 => "y COMPRESS DEFLATE".to_owned(),
            6 => "DONE".to_owned(),
            _ => format!(
                "line {i:08} of message {seed}: the quick brown fox jumps over the lazy dog"
            ),
        };
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
        i += 1;
    }
    out
}

/// The fake's default script for these tests: the account, every
/// password mechanism plus an XOAUTH2 postern must never advertise, a
/// post-login capability list full of what postern must withhold, and
/// [`trap_message`] in INBOX.
fn script(password: &str) -> ImapScript {
    ImapScript::new()
        .credentials(USER, password)
        .mechanisms(&["PLAIN", "LOGIN", "CRAM-MD5", "XOAUTH2"])
        .post_login_capabilities(&[
            "IMAP4rev1",
            "LITERAL+",
            "SASL-IR",
            "IDLE",
            "ID",
            "STARTTLS",
            "LOGINDISABLED",
            "AUTH=PLAIN",
            "AUTH=XOAUTH2",
            "COMPRESS=DEFLATE",
            "UNAUTHENTICATE",
        ])
        .message(trap_message())
}

struct Upstream {
    fake: FakeImap,
    /// The CA file a TLS route to the fake trusts.
    ca: Option<PathBuf>,
    _dir: TempDir,
}

impl Upstream {
    /// Route `name` to the fake with `security` and `auth`; over TLS it
    /// trusts the fake's CA for the name `localhost`.
    fn route(&self, name: &str, security: &str, auth: &str) -> RouteYaml {
        let route = RouteYaml::imap(name, self.fake.addr())
            .security(security)
            .auth(auth);
        match &self.ca {
            Some(ca) => route.ca(ca).server_name("localhost"),
            None => route,
        }
    }
}

fn fake_security(pki: &TestPki, security: &str) -> FakeSecurity {
    match security {
        "none" => FakeSecurity::Plain,
        "tls" => FakeSecurity::Tls(pki.server_config()),
        "starttls" => FakeSecurity::Starttls(pki.server_config()),
        other => panic!("{other}"),
    }
}

async fn upstream(pki: &TestPki, security: &str, script: ImapScript) -> Upstream {
    let dir = TempDir::new("postern-imap-e2e");
    let ca = (security != "none").then(|| pki.write_ca_pem(dir.path()));
    let fake = FakeImap::start(script.security(fake_security(pki, security))).await;
    Upstream {
        fake,
        ca,
        _dir: dir,
    }
}

/// A gateway with one route `r` to `up`.
async fn gateway(up: &Upstream, security: &str, auth: &str) -> common::Running {
    start(
        &GatewayYaml::new()
            .route(up.route("r", security, auth))
            .to_string(),
    )
    .await
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The last line of a response (its tagged status, or a `+`).
fn last_line(response: &[u8]) -> String {
    let t = text(response);
    t.trim_end_matches("\r\n")
        .rsplit("\r\n")
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Asserts that `response` ends in `tag status` (e.g. `a OK`); its last line.
#[track_caller]
fn assert_tagged(response: &[u8], tag: &str, status: &str, what: &str) -> String {
    let last = last_line(response);
    assert!(
        last.starts_with(&format!("{tag} {status}")),
        "{what}: wanted {tag} {status}, got {:?}",
        text(response)
    );
    last
}

/// Connects and reads postern's own greeting (never the upstream's); its
/// capability list.
async fn connect(addr: std::net::SocketAddr) -> (LineClient, Vec<String>) {
    let mut c = LineClient::connect(addr).await.expect("connect");
    let greeting = c.read_line().await.expect("greeting");
    (c, greeting_capabilities(&greeting))
}

/// The capabilities of postern's greeting line, which must be postern's.
#[track_caller]
fn greeting_capabilities(greeting: &str) -> Vec<String> {
    assert!(
        greeting.starts_with(GREETING_START) && greeting.ends_with(GREETING_END),
        "not postern's own greeting: {greeting}"
    );
    atoms(&greeting[GREETING_START.len()..greeting.len() - GREETING_END.len()])
}

fn atoms(list: &str) -> Vec<String> {
    list.split(' ')
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The atoms of every untagged `* CAPABILITY` line of `response`, one
/// list per line.
fn untagged_capabilities(response: &[u8]) -> Vec<Vec<String>> {
    text(response)
        .split("\r\n")
        .filter_map(|l| l.strip_prefix("* CAPABILITY "))
        .map(atoms)
        .collect()
}

/// The atoms of the `[CAPABILITY ...]` code of `line`, if it has one.
fn code_capabilities(line: &str) -> Option<Vec<String>> {
    let at = line.find("[CAPABILITY ")?;
    let rest = &line[at + "[CAPABILITY ".len()..];
    Some(atoms(&rest[..rest.find(']')?]))
}

fn has(caps: &[String], name: &str) -> bool {
    caps.iter().any(|c| c.eq_ignore_ascii_case(name))
}

fn auth_mechanisms(caps: &[String]) -> Vec<String> {
    caps.iter()
        .filter_map(|c| {
            c.get(..5)
                .filter(|p| p.eq_ignore_ascii_case("AUTH="))
                .map(|_| c[5..].to_ascii_uppercase())
        })
        .collect()
}

/// After login, nothing of what postern controls is offered: no TLS, no
/// login, no compression, no way back to the not-authenticated state.
#[track_caller]
fn assert_relayed_capabilities(caps: &[String], what: &str) {
    assert!(has(caps, "IMAP4rev1"), "{what}: {caps:?}");
    for c in caps {
        let upper = c.to_ascii_uppercase();
        assert!(
            !matches!(
                upper.as_str(),
                "STARTTLS" | "LOGINDISABLED" | "SASL-IR" | "UNAUTHENTICATE"
            ) && !upper.starts_with("AUTH=")
                && !upper.starts_with("COMPRESS="),
            "{what}: {c} relayed after login: {caps:?}"
        );
    }
}

/// Quotes `s` as an IMAP quoted string (`\` and `"` escaped).
fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Logs in with LOGIN and quoted strings; the tagged OK line.
async fn login(c: &mut LineClient, user: &str, password: &str, what: &str) -> String {
    let r = c
        .imap_command(&format!("L LOGIN {} {}", quoted(user), quoted(password)))
        .await
        .expect("login");
    assert_tagged(&r, "L", "OK", what)
}

/// The response FETCH of `body` as message `seq` with `BODY.PEEK[]` gets
/// from the fake, byte for byte, tagged `tag`.
fn fetch_response(seq: usize, body: &[u8], tag: &str) -> Vec<u8> {
    let mut want = format!("* {seq} FETCH (BODY[] {{{}}}\r\n", body.len()).into_bytes();
    want.extend_from_slice(body);
    want.extend_from_slice(format!(")\r\n{tag} OK FETCH completed\r\n").as_bytes());
    want
}

/// SELECT INBOX, then FETCH message `seq` and check it is `body`, the
/// whole response byte-identical to what the fake sent.
async fn select_and_fetch(c: &mut LineClient, seq: usize, body: &[u8], what: &str) {
    let r = c.imap_command("S SELECT INBOX").await.expect("select");
    assert_tagged(&r, "S", "OK", what);
    let r = c
        .imap_command(&format!("F FETCH {seq} BODY.PEEK[]"))
        .await
        .expect("fetch");
    assert!(
        r == fetch_response(seq, body, "F"),
        "{what}: FETCH not byte-identical: {:?}",
        text(&r[..r.len().min(2048)])
    );
}

/// LOGOUT after login: the upstream's `* BYE` and tagged OK reach the
/// client, then both connections close.
async fn logout(c: &mut LineClient, what: &str) {
    let r = c.imap_command("Z LOGOUT").await.expect("logout");
    assert!(text(&r).starts_with("* BYE "), "{what}: {}", text(&r));
    assert_tagged(&r, "Z", "OK", what);
    let (rest, end) = c.read_to_close().await;
    assert!(rest.is_empty(), "{what}: {:?} after LOGOUT", text(&rest));
    assert!(end.is_ok(), "{what}: {end:?}");
}

/// The fake's successful logins: (mechanism, user, initial response, TLS).
fn logins(fake: &FakeImap) -> Vec<(String, String, bool, bool)> {
    fake.events()
        .into_iter()
        .filter_map(|e| match e {
            ImapEvent::LoggedIn {
                mechanism,
                user,
                initial_response,
                tls,
            } => Some((mechanism, user, initial_response, tls)),
            _ => None,
        })
        .collect()
}

/// What the fake counts as the client breaking the protocol (postern
/// never should).
fn violations(fake: &FakeImap) -> Vec<String> {
    fake.events()
        .into_iter()
        .filter_map(|e| match e {
            ImapEvent::ClientViolation(v) => Some(v),
            _ => None,
        })
        .collect()
}

/// Whether any credential reached the fake: a login command, a login
/// or a failed one.
fn credentials_seen(fake: &FakeImap) -> Vec<String> {
    fake.events()
        .into_iter()
        .filter_map(|e| match e {
            ImapEvent::Command(c) if c == "LOGIN" || c == "AUTHENTICATE" => Some(c),
            ImapEvent::LoggedIn { mechanism, .. } => Some(format!("logged in: {mechanism}")),
            ImapEvent::AuthFailed { mechanism } => Some(format!("failed: {mechanism}")),
            ImapEvent::BearerAuth(a) => Some(format!("bearer: {a:?}")),
            _ => None,
        })
        .collect()
}
