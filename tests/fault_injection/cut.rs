//! A proxy that cuts the upstream connection after N bytes from the
//! server, for N across a whole SMTP transaction or POP3 RETR.

use postern_testkit::{dot_stuff, sasl_plain_response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

/// Proxies one connection at a time to `target`, passing at most `limit`
/// bytes from the server to postern, then cutting both directions.
async fn cutting_proxy(target: SocketAddr, limit: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut down, _)) = listener.accept().await {
            let Ok(mut up) = TcpStream::connect(target).await else {
                return;
            };
            tokio::spawn(async move {
                let (mut dr, mut dw) = down.split();
                let (mut ur, mut uw) = up.split();
                let to_server = tokio::io::copy(&mut dr, &mut uw);
                let to_client = async {
                    let mut left = limit;
                    let mut buf = [0u8; 4096];
                    while left > 0 {
                        let n = match ur.read(&mut buf[..left.min(4096)]).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if dw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        left -= n;
                    }
                };
                tokio::select! {
                    _ = to_server => {}
                    _ = to_client => {}
                }
                // Dropping both halves cuts the connection (a server crash).
            });
        }
    });
    addr
}

fn smtp_yaml(upstream: SocketAddr) -> String {
    RouteYaml::smtp("s", upstream)
        .security("none")
        .auth("plain")
        .timeouts("upstream_reply: 2s, final_reply: 2s")
        .yaml()
}

/// Runs one SMTP transaction through postern; returns the final reply code
/// the client saw for the message, if it got that far.
async fn smtp_transaction(gw_addr: SocketAddr) -> Option<String> {
    let mut c = LineClient::connect(gw_addr).await.ok()?;
    c.set_timeout(Duration::from_secs(5));
    let greet = c.read_smtp_reply().await.ok()?;
    if !greet[0].starts_with("220") {
        return None;
    }
    let steps = [
        "EHLO c".to_owned(),
        format!(
            "AUTH PLAIN {}",
            sasl_plain_response("", "alice", "wonderland")
        ),
        "MAIL FROM:<a@x>".to_owned(),
        "RCPT TO:<b@y>".to_owned(),
        "DATA".to_owned(),
    ];
    for s in &steps {
        let r = c.smtp_command(s).await.ok()?;
        let code = &r.last()?[..3];
        if !(code.starts_with('2') || code.starts_with('3')) {
            return None;
        }
    }
    c.send_raw(b"Subject: cut\r\n\r\n.leading dot\r\nbody\r\n.\r\n")
        .await
        .ok()?;
    let r = c.read_smtp_reply().await.ok()?;
    Some(r.last()?[..3].to_owned())
}

#[tokio::test]
async fn smtp_upstream_cut_at_every_point_never_fakes_a_250() {
    // The server's bytes for a whole transaction are a few hundred; cut
    // at every point in that range (and once beyond it: no cut).
    let mut saw_success = false;
    let mut saw_failure = false;
    for limit in (0..420).step_by(7).chain([100_000]) {
        let fake = FakeSmtp::start(SmtpScript::new()).await;
        let proxy = cutting_proxy(fake.addr(), limit).await;
        let gw = start(&smtp_yaml(proxy)).await;
        let code = smtp_transaction(gw.addr("s")).await;
        // Give the fake a moment to record what it received.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let accepted = fake.accepted_messages().len();
        match code.as_deref() {
            Some("250") => {
                assert_eq!(
                    accepted, 1,
                    "cut at {limit}: client told 250 but the upstream has no message"
                );
                saw_success = true;
            }
            Some(other) => {
                assert!(
                    other.starts_with('4'),
                    "cut at {limit}: upstream trouble reported as {other}"
                );
                saw_failure = true;
            }
            None => saw_failure = true,
        }
        gw.stop().await;
    }
    assert!(
        saw_success && saw_failure,
        "the cut range did not cover both outcomes"
    );
}

#[tokio::test]
async fn pop3_upstream_cut_at_every_point_never_completes_a_retr() {
    let body: Vec<u8> = (0..60)
        .flat_map(|i| format!(".line {i}\r\n").into_bytes())
        .collect();
    let mut wire = dot_stuff(&body);
    wire.extend_from_slice(b".\r\n");
    let mut complete = 0;
    for limit in (0..1400).step_by(23).chain([1_000_000]) {
        let fake = FakePop3::start(
            Pop3Script::new()
                .credentials("a", "b")
                .message(body.clone()),
        )
        .await;
        let proxy = cutting_proxy(fake.addr(), limit).await;
        let gw = start(
            &RouteYaml::pop3("p", proxy)
                .security("none")
                .auth("apop")
                .timeouts("upstream_reply: 2s")
                .yaml(),
        )
        .await;
        let result: Option<Vec<u8>> = async {
            let mut c = LineClient::connect(gw.addr("p")).await.ok()?;
            c.set_timeout(Duration::from_secs(5));
            if !c.read_line().await.ok()?.starts_with("+OK") {
                return None;
            }
            c.command("USER a").await.ok()?;
            if !c.command("PASS b").await.ok()?.starts_with("+OK") {
                return None;
            }
            if !c.command("RETR 1").await.ok()?.starts_with("+OK") {
                return None;
            }
            // A terminated body, or nothing if the connection closed first.
            let body = tokio::time::timeout(Duration::from_secs(5), c.read_multiline())
                .await
                .ok()?;
            Some(body.unwrap_or_default())
        }
        .await;
        if let Some(got) = result {
            if !got.is_empty() {
                // A terminated body must be exactly the server's.
                assert_eq!(
                    got, wire,
                    "cut at {limit}: a RETR ended that the server did not end"
                );
                complete += 1;
            }
        }
        gw.stop().await;
    }
    assert!(complete >= 1, "no run completed: the uncut case must");
}
