//! Drive `FakePop3` with `LineClient` over plain TCP, implicit TLS and STLS.
//! The tests are grouped in `login`, `session` and `tls`; this file holds
//! what they share.
#![allow(clippy::unwrap_used)]

#[path = "../support/mod.rs"]
mod support;

mod bearer;
mod login;
mod session;
mod tls;

use std::io;
use std::time::Duration;

use postern_testkit::{
    cram_md5_response, dot_unstuff, oauthbearer_response, rfc1939_apop_digest, sasl_plain_response,
    xoauth2_response, BearerAttempt, BearerMechanism, BearerOutcome, BearerVerifier, CapaBehaviour,
    FakePop3, FakeSecurity, LineClient, Pop3Event, Pop3Script, SaslForm, StlsBehaviour, TestPki,
    DEFAULT_BEARER_ERROR,
};

use support::{assert_sessions_framed, WAIT};

const MSG1: &[u8] =
    b"From: a@example.test\r\nSubject: dots\r\n\r\n.leading dot\r\nmiddle\r\n.\r\n..two\r\nend\r\n";
const MSG2: &[u8] = b"Subject: two\r\n\r\nline 1\r\nline 2\r\nline 3\r\n";

fn script() -> Pop3Script {
    Pop3Script::new()
        .credentials("alice", "pass with spaces")
        .message(MSG1)
        .message(MSG2)
}

async fn connect(fake: &FakePop3) -> (LineClient, String) {
    let mut client = LineClient::connect(fake.addr()).await.unwrap();
    let greeting = client.read_line().await.unwrap();
    (client, greeting)
}

async fn quit(fake: &FakePop3, client: &mut LineClient) {
    assert!(client.command("QUIT").await.unwrap().starts_with("+OK"));
    let (rest, end) = client.read_to_close().await;
    assert!(rest.is_empty());
    end.unwrap();
    assert!(fake.wait_closed(fake.connections(), WAIT).await);
}

fn no_violations(fake: &FakePop3) {
    let bad: Vec<_> = fake
        .events()
        .into_iter()
        .filter(|e| {
            matches!(
                e,
                Pop3Event::ClientViolation(_) | Pop3Event::SessionPanicked(_)
            )
        })
        .collect();
    assert!(bad.is_empty(), "{bad:?}");
}

/// The challenge inside a "+ base64" CRAM-MD5 continuation.
fn challenge_of(line: &str) -> String {
    support::challenge_after("+ ", line)
}
