//! End-to-end: the real gateway in-process, a legacy client speaking plain
//! POP3 to it, and a scripted fake upstream that really checks digests and
//! really speaks TLS (certificates minted per run). The tests are grouped
//! in `login`, `upstream_tls`, `relay`, `sessions` and `listen_tls`; this
//! file holds what they share.

#[path = "../common/mod.rs"]
mod common;

mod listen_tls;
mod login;
mod relay;
mod sessions;
mod upstream_tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::{pop3_greet_and_pass, routes_yaml, start, RouteYaml, POP3_GREETING};
use postern_testkit::{
    dot_stuff, sasl_plain_response, CapaBehaviour, FakePop3, FakeSecurity, LineClient, Pop3Event,
    Pop3Script, StlsBehaviour, TempDir, TestPki,
};

const WAIT: Duration = Duration::from_secs(5);

fn messages() -> Vec<Vec<u8>> {
    vec![
        b"Subject: one\r\n\r\nHello.\r\n".to_vec(),
        b"Subject: dots\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nafter a lone dot\r\n".to_vec(),
        "Subject: 8bit\r\n\r\nGr\u{fc}\u{df}e, \u{65e5}\u{672c}\u{8a9e}\r\n"
            .as_bytes()
            .iter()
            .copied()
            .chain(b"\xfe\xff raw bytes\r\n".iter().copied())
            .collect(),
    ]
}

/// The bytes a RETR reply body must carry: stuffed body + terminator.
fn wire(body: &[u8]) -> Vec<u8> {
    let mut v = dot_stuff(body);
    v.extend_from_slice(b".\r\n");
    v
}

struct Upstream {
    fake: FakePop3,
    /// The CA file a TLS route to the fake trusts.
    ca: Option<PathBuf>,
    _dir: TempDir,
}

impl Upstream {
    /// Route `r` to the fake; over TLS it trusts the fake's CA for the
    /// name `localhost`.
    fn route(&self, security: &str, auth: &str) -> RouteYaml {
        let route = RouteYaml::pop3("r", self.fake.addr())
            .security(security)
            .auth(auth);
        match &self.ca {
            Some(ca) => route.ca(ca).server_name("localhost"),
            None => route,
        }
    }
}

async fn upstream(pki: &TestPki, security: &str, script: Pop3Script) -> Upstream {
    let dir = TempDir::new("postern-e2e");
    let ca = pki.write_ca_pem(dir.path());
    let (sec, ca) = match security {
        "none" => (FakeSecurity::Plain, None),
        "tls" => (FakeSecurity::Tls(pki.server_config()), Some(ca)),
        "starttls" => (FakeSecurity::Starttls(pki.server_config()), Some(ca)),
        other => panic!("{other}"),
    };
    let fake = FakePop3::start(script.security(sec)).await;
    Upstream {
        fake,
        ca,
        _dir: dir,
    }
}

async fn read_reply_body(c: &mut LineClient) -> Vec<u8> {
    c.read_multiline().await.expect("multi-line reply")
}

/// Route `r` to a plain-text upstream at `addr`, as a whole configuration.
fn plain_route(addr: SocketAddr, auth: &str) -> String {
    RouteYaml::pop3("r", addr)
        .security("none")
        .auth(auth)
        .yaml()
}
