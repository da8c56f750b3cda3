//! Drive `FakeSmtp` with `LineClient` over plain TCP, implicit TLS and
//! STARTTLS. The tests are grouped in `session`, `auth`, `envelope`,
//! `data` and `tls`; this file holds what they share.
#![allow(clippy::unwrap_used)]

#[path = "../support/mod.rs"]
mod support;

mod auth;
mod bearer;
mod data;
mod envelope;
mod session;
mod tls;

use std::io;
use std::time::Duration;

use postern_testkit::{
    cram_md5_response, dot_stuff, login_base64, oauthbearer_response, sasl_plain_response,
    xoauth2_response, BareKind, BearerAttempt, BearerMechanism, BearerOutcome, BearerVerifier,
    DataEnd, EhloBehaviour, FakeSecurity, FakeSmtp, LineClient, SaslForm, SmtpEvent, SmtpScript,
    StarttlsBehaviour, TestPki, DEFAULT_BEARER_ERROR,
};

use support::{assert_sessions_framed, WAIT};

const PASSWORD: &str = "pass with spaces";
/// Unstuffed; lines starting with "." exercise dot-stuffing.
const MSG: &[u8] =
    b"From: a@x.test\r\nSubject: dots\r\n\r\n.leading dot\r\nmiddle\r\n.\r\n..two\r\nend\r\n";

fn script() -> SmtpScript {
    SmtpScript::new().credentials("alice", PASSWORD)
}

async fn connect(fake: &FakeSmtp) -> LineClient {
    let mut c = LineClient::connect(fake.addr()).await.unwrap();
    let greeting = c.read_smtp_reply().await.unwrap();
    assert_eq!(greeting, ["220 fake.test ESMTP ready"]);
    c
}

async fn ehlo(c: &mut LineClient) -> Vec<String> {
    let lines = c.smtp_command("EHLO client.test").await.unwrap();
    assert!(lines[0].starts_with("250"), "{lines:?}");
    lines
}

async fn login(c: &mut LineClient) {
    let ir = sasl_plain_response("", "alice", PASSWORD);
    assert_eq!(
        c.command(&format!("AUTH PLAIN {ir}")).await.unwrap(),
        "235 2.7.0 Authentication successful"
    );
}

/// Greeted and authenticated plain session.
async fn ready(fake: &FakeSmtp) -> LineClient {
    let mut c = connect(fake).await;
    ehlo(&mut c).await;
    login(&mut c).await;
    c
}

/// MAIL, one RCPT, DATA; returns after the 354.
async fn open_data(c: &mut LineClient, rcpt: &str) {
    assert_eq!(
        c.command("MAIL FROM:<sender@x.test>").await.unwrap(),
        "250 2.1.0 Ok"
    );
    assert_eq!(
        c.command(&format!("RCPT TO:<{rcpt}>")).await.unwrap(),
        "250 2.1.5 Ok"
    );
    assert!(c.command("DATA").await.unwrap().starts_with("354 "));
}

async fn quit(fake: &FakeSmtp, c: &mut LineClient) {
    assert_eq!(c.command("QUIT").await.unwrap(), "221 2.0.0 Bye");
    let (rest, end) = c.read_to_close().await;
    assert!(rest.is_empty());
    end.unwrap();
    assert!(fake.wait_closed(fake.connections(), WAIT).await);
}

fn no_violations(fake: &FakeSmtp) {
    let bad: Vec<_> = fake
        .events()
        .into_iter()
        .filter(|e| {
            matches!(
                e,
                SmtpEvent::ClientViolation(_)
                    | SmtpEvent::BareLineEnding { .. }
                    | SmtpEvent::SessionPanicked(_)
            )
        })
        .collect();
    assert!(bad.is_empty(), "{bad:?}");
}

/// The challenge inside a "334 base64" CRAM-MD5 continuation.
fn challenge_of(line: &str) -> String {
    support::challenge_after("334 ", line)
}
