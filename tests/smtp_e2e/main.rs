//! End-to-end SMTP: the real gateway in-process, a client speaking plain
//! SMTP to it, and a scripted fake upstream that checks credentials, speaks
//! TLS and records message data byte for byte. The tests are grouped in
//! `login`, `upstream_tls`, `relay`, `data` and `listen_tls`; this file
//! holds what they share.

#[path = "../common/mod.rs"]
mod common;

mod data;
mod listen_tls;
mod login;
mod relay;
mod upstream_tls;

use std::path::PathBuf;
use std::time::Duration;

use common::{start, RouteYaml, SMTP_GREETING};
use postern_testkit::{
    login_base64, sasl_plain_response, DataEnd, EhloBehaviour, FakeSecurity, FakeSmtp, LineClient,
    SmtpEvent, SmtpScript, StarttlsBehaviour, TempDir, TestPki,
};

const WAIT: Duration = Duration::from_secs(5);

struct Upstream {
    fake: FakeSmtp,
    /// The CA file a TLS route to the fake trusts.
    ca: Option<PathBuf>,
    _dir: TempDir,
}

impl Upstream {
    /// Route `r` to the fake; over TLS it trusts the fake's CA for the
    /// name `localhost`.
    fn route(&self, security: &str, auth: &str) -> RouteYaml {
        let route = RouteYaml::smtp("r", self.fake.addr())
            .security(security)
            .auth(auth);
        match &self.ca {
            Some(ca) => route.ca(ca).server_name("localhost"),
            None => route,
        }
    }
}

async fn upstream(pki: &TestPki, security: &str, script: SmtpScript) -> Upstream {
    let dir = TempDir::new("postern-smtp-e2e");
    let ca = pki.write_ca_pem(dir.path());
    let (sec, ca) = match security {
        "none" => (FakeSecurity::Plain, None),
        "tls" => (FakeSecurity::Tls(pki.server_config()), Some(ca)),
        "starttls" => (FakeSecurity::Starttls(pki.server_config()), Some(ca)),
        other => panic!("{other}"),
    };
    Upstream {
        fake: FakeSmtp::start(script.security(sec)).await,
        ca,
        _dir: dir,
    }
}

/// One gateway with one route to a fresh fake upstream.
async fn gateway(
    pki: &TestPki,
    security: &str,
    auth: &str,
    script: SmtpScript,
) -> (Upstream, common::Running) {
    let up = upstream(pki, security, script).await;
    let gw = start(&up.route(security, auth).yaml()).await;
    (up, gw)
}

async fn connect(gw: &common::Running) -> LineClient {
    let mut c = LineClient::connect(gw.addr("r")).await.expect("connect");
    let greeting = c.read_smtp_reply().await.expect("greeting");
    assert!(greeting[0].starts_with("220"), "{greeting:?}");
    c
}

/// Connects, checks postern's own greeting, EHLO (answered locally), then
/// AUTH PLAIN as alice: returns the reply to AUTH, the command that opens
/// the upstream on routes with auth.
async fn greet_ehlo_auth(gw: &common::Running) -> Vec<String> {
    let mut c = LineClient::connect(gw.addr("r")).await.expect("connect");
    let greeting = c.read_smtp_reply().await.expect("greeting");
    assert!(greeting[0].starts_with(SMTP_GREETING), "{greeting:?}");
    let ehlo = c.smtp_command("EHLO c").await.expect("ehlo");
    assert_eq!(code(&ehlo), "250", "{ehlo:?}");
    c.smtp_command(&format!(
        "AUTH PLAIN {}",
        sasl_plain_response("", "alice", "wonderland")
    ))
    .await
    .expect("auth")
}

fn code(reply: &[String]) -> &str {
    &reply.last().expect("a reply")[..3]
}

/// EHLO, then AUTH PLAIN as alice.
async fn login(c: &mut LineClient) {
    let ehlo = c.smtp_command("EHLO client.example").await.expect("ehlo");
    assert_eq!(code(&ehlo), "250");
    let r = c
        .smtp_command(&format!(
            "AUTH PLAIN {}",
            sasl_plain_response("", "alice", "wonderland")
        ))
        .await
        .expect("auth");
    assert_eq!(code(&r), "235", "{r:?}");
}

/// A body exercising dot-stuffing, 8-bit text and a 998-octet line, as the
/// client sends it (already stuffed), without the terminator.
fn tricky_body() -> Vec<u8> {
    let mut b = b"Subject: test\r\n\r\n..leading dot (stuffed)\r\n...two dots\r\n".to_vec();
    b.extend_from_slice("8-bit: Gr\u{fc}\u{df}e \u{65e5}\u{672c}\r\n".as_bytes());
    b.extend_from_slice(&[b'x'; 998]);
    b.extend_from_slice(b"\r\n\r\nlast line\r\n");
    b
}

async fn send_message(c: &mut LineClient, from: &str, rcpts: &[&str], body: &[u8]) -> Vec<String> {
    let r = c
        .smtp_command(&format!("MAIL FROM:<{from}>"))
        .await
        .expect("mail");
    assert_eq!(code(&r), "250", "{r:?}");
    for rcpt in rcpts {
        let r = c
            .smtp_command(&format!("RCPT TO:<{rcpt}>"))
            .await
            .expect("rcpt");
        assert_eq!(code(&r), "250", "{r:?}");
    }
    let r = c.smtp_command("DATA").await.expect("data");
    assert_eq!(code(&r), "354", "{r:?}");
    c.send_raw(body).await.expect("body");
    c.send_raw(b".\r\n").await.expect("end");
    c.read_smtp_reply().await.expect("final reply")
}
