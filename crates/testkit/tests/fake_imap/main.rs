//! Drive `FakeImap` with `LineClient` over plain TCP, implicit TLS and
//! STARTTLS. The tests are grouped in `login`, `bearer`, `tls`, `mailbox`
//! and `faults`; this file holds what they share.
#![allow(clippy::unwrap_used)]

#[path = "../support/mod.rs"]
mod support;

mod bearer;
mod faults;
mod login;
mod mailbox;
mod tls;

use postern_testkit::{
    cram_md5_response, login_base64, oauthbearer_response, sasl_plain_response, xoauth2_response,
    BearerAttempt, BearerMechanism, BearerOutcome, BearerVerifier, FakeImap, FakeSecurity,
    ImapEvent, ImapGreeting, ImapMoment, ImapScript, ImapStarttls, LineClient, SaslForm, TestPki,
    DEFAULT_BEARER_ERROR, INJECTED_CAPABILITY, STRAY_OK,
};

use support::{assert_sessions_framed, WAIT};

const PASSWORD: &str = "pass \"word\"";
/// The password as an IMAP quoted string.
const QUOTED_PASSWORD: &str = r#""pass \"word\"""#;

/// A body whose lines look like IMAP responses: only literal framing by
/// count keeps a client in step.
const MSG1: &[u8] = b"From: a@example.test\r\nSubject: framing\r\n\r\na1 OK not the end\r\n* 2 EXPUNGE\r\n) {5}\r\n";
const MSG2: &[u8] = b"Subject: two\r\n\r\nline 1\r\nline 2\r\n";

fn script() -> ImapScript {
    ImapScript::new()
        .credentials("alice", PASSWORD)
        .message(MSG1)
        .message(MSG2)
        .mailbox("Sent Items")
}

/// Connect in plain TCP; the greeting line.
async fn connect(fake: &FakeImap) -> (LineClient, String) {
    let mut client = LineClient::connect(fake.addr()).await.unwrap();
    let greeting = client.read_line().await.unwrap();
    (client, greeting)
}

/// Bytes as text, for assertions.
fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Send `line` and return every response up to its tagged one, as text.
async fn cmd(client: &mut LineClient, line: &str) -> String {
    text(&client.imap_command(line).await.unwrap())
}

/// The last (tagged) line of a response, without CRLF.
fn tagged(response: &str) -> &str {
    response
        .trim_end_matches("\r\n")
        .rsplit("\r\n")
        .next()
        .unwrap_or("")
}

async fn login(client: &mut LineClient) {
    let response = cmd(client, &format!("L1 LOGIN alice {QUOTED_PASSWORD}")).await;
    assert!(tagged(&response).starts_with("L1 OK "), "{response}");
}

/// LOGOUT, and wait for the fake to close that session (every session
/// that logged out so far is closed).
async fn logout(fake: &FakeImap, client: &mut LineClient) {
    let response = cmd(client, "Z LOGOUT").await;
    assert_eq!(
        response,
        "* BYE fake IMAP server logging out\r\nZ OK LOGOUT completed\r\n"
    );
    let (rest, end) = client.read_to_close().await;
    assert!(rest.is_empty());
    end.unwrap();
    let closed = fake
        .wait_until(
            |log| {
                let count = |want: &ImapEvent| log.iter().filter(|e| e.event == *want).count();
                count(&ImapEvent::Closed) >= count(&ImapEvent::Logout)
            },
            WAIT,
        )
        .await;
    assert!(closed, "session not closed after LOGOUT");
}

fn violations(fake: &FakeImap) -> Vec<String> {
    fake.events()
        .into_iter()
        .filter_map(|e| match e {
            ImapEvent::ClientViolation(v) => Some(v),
            ImapEvent::SessionPanicked(p) => Some(format!("panic: {p}")),
            _ => None,
        })
        .collect()
}

fn no_violations(fake: &FakeImap) {
    let v = violations(fake);
    assert!(v.is_empty(), "{v:?}");
}

/// The challenge inside a `+ base64` continuation.
fn challenge_of(line: &str) -> String {
    support::challenge_after("+ ", line)
}

/// The capability list in a `* CAPABILITY` line or `[CAPABILITY ...]` code.
fn caps_in(response: &str) -> Vec<String> {
    let list = if let Some(at) = response.find("[CAPABILITY ") {
        let rest = &response[at + "[CAPABILITY ".len()..];
        &rest[..rest.find(']').unwrap()]
    } else {
        let at = response.find("* CAPABILITY ").unwrap();
        let rest = &response[at + "* CAPABILITY ".len()..];
        &rest[..rest.find("\r\n").unwrap_or(rest.len())]
    };
    list.split(' ').map(str::to_owned).collect()
}

async fn capabilities(client: &mut LineClient) -> Vec<String> {
    caps_in(&cmd(client, "C CAPABILITY").await)
}

fn logged_in(fake: &FakeImap) -> Vec<ImapEvent> {
    fake.events()
        .into_iter()
        .filter(|e| matches!(e, ImapEvent::LoggedIn { .. }))
        .collect()
}

/// Send a SASL or literal continuation `line` for the command tagged
/// `tag` and return every response up to its tagged one, as text.
async fn reply(client: &mut LineClient, tag: &str, line: &str) -> String {
    client.send(line).await.unwrap();
    text(&client.read_imap_response(tag).await.unwrap())
}
