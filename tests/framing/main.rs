//! Reply framing that cannot be fooled, and no upstream for a client that
//! has not logged in (issue 9).
//!
//! Every upstream here is a small scripted server that answers commands by
//! verb, so it does not care whether postern opens the connection before
//! the greeting or only at login, and counts the connections it accepted.
//! A stray line is written as its own segment after a reply and only while
//! nothing else is pending from postern: a line that arrives after postern
//! already sent its next command cannot be told apart from the reply to it,
//! by postern or by anyone.
//!
//! The scripted upstream is in `upstream`; the tests are grouped in
//! `pop3_stray`, `smtp_stray`, `smtp_data`, `idle` and `drip`; this file
//! holds the routes and client steps they share.

#[path = "../common/mod.rs"]
mod common;
mod upstream;

mod drip;
mod idle;
mod pop3_stray;
mod smtp_data;
mod smtp_stray;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{start, GatewayYaml, RouteYaml};
use postern_testkit::LineClient;
use upstream::{pop3_server, scripted, smtp_server, SmtpBehaviour, Stray};

/// A POP3 route passing USER/PASS through in plain text.
fn pop3_yaml(upstream: SocketAddr, timeouts: &str) -> String {
    RouteYaml::pop3("p", upstream)
        .security("none")
        .auth("user")
        .timeouts(timeouts)
        .yaml()
}

/// An SMTP route `s` without authentication (`auth: none`).
fn smtp_route(upstream: SocketAddr, timeouts: &str) -> RouteYaml {
    RouteYaml::smtp("s", upstream)
        .security("none")
        .auth("none")
        .timeouts(timeouts)
}

/// [`smtp_route`] as a whole configuration.
fn smtp_yaml(upstream: SocketAddr, timeouts: &str) -> String {
    smtp_route(upstream, timeouts).yaml()
}

const FAST: &str = "upstream_reply: 2s, final_reply: 2s";

/// Logs in to a POP3 route; panics unless the login works.
async fn pop3_login(gw: SocketAddr) -> LineClient {
    let mut c = LineClient::connect(gw).await.expect("connect");
    c.set_timeout(Duration::from_secs(3));
    let greeting = c.read_line().await.expect("greeting");
    assert!(greeting.starts_with("+OK"), "{greeting}");
    let r = c.command("USER a").await.expect("USER");
    assert!(r.starts_with("+OK"), "USER: {r}");
    let r = c.command("PASS b").await.expect("PASS");
    assert!(r.starts_with("+OK"), "PASS: {r}");
    c
}

/// The reply to `cmd`: Ok(line), or Err if the connection closed instead.
async fn pop3_reply(c: &mut LineClient, cmd: &str) -> Result<String, String> {
    c.command(cmd).await.map_err(|e| e.to_string())
}

/// Asserts a POP3 reply was a temporary error or the connection closed,
/// and that nothing but that reached the client afterwards.
async fn assert_pop3_temp_failure(c: &mut LineClient, cmd: &str, reply: Result<String, String>) {
    // An Err is a closed connection: acceptable.
    if let Ok(r) = &reply {
        assert!(
            r.starts_with("-ERR [SYS/TEMP]"),
            "{cmd} got {r:?} (the stray line or a shifted reply), not a temporary error"
        );
    }
    let (rest, _) = c.read_to_close().await;
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        !rest.contains("+OK") && !rest.contains("STRAY"),
        "after the stray line the client still got: {rest:?}"
    );
}

/// Greets, sends `EHLO c` and returns the client.
async fn smtp_hello(gw: SocketAddr) -> LineClient {
    let mut c = LineClient::connect(gw).await.expect("connect");
    c.set_timeout(Duration::from_secs(4));
    let greeting = c.read_smtp_reply().await.expect("greeting");
    assert!(greeting[0].starts_with("220"), "{greeting:?}");
    let r = c.smtp_command("EHLO c").await.expect("EHLO");
    assert!(r[0].starts_with("250"), "EHLO: {r:?}");
    c
}

/// An SMTP reply's first line, or why there was none.
async fn smtp_reply(c: &mut LineClient, cmd: &str) -> Result<String, String> {
    match c.smtp_command(cmd).await {
        Ok(r) => Ok(r.join(" / ")),
        Err(e) => Err(e.to_string()),
    }
}

fn assert_not_success(cmd: &str, reply: &Result<String, String>) {
    if let Ok(r) = reply {
        assert!(
            !r.starts_with('2') && !r.starts_with('3') && !r.contains("STRAY"),
            "{cmd} got {r:?}, a reply the upstream did not give to it"
        );
    }
}

/// Runs EHLO, MAIL, RCPT, DATA; returns the client after the 354.
async fn smtp_to_data(gw: SocketAddr) -> LineClient {
    let mut c = smtp_hello(gw).await;
    for cmd in ["MAIL FROM:<a@x>", "RCPT TO:<b@y>"] {
        let r = smtp_reply(&mut c, cmd).await;
        assert!(matches!(&r, Ok(r) if r.starts_with("250")), "{cmd}: {r:?}");
    }
    let r = smtp_reply(&mut c, "DATA").await;
    assert!(matches!(&r, Ok(r) if r.starts_with("354")), "DATA: {r:?}");
    c
}
