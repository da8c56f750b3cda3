//! Relaying after login: an upstream dying mid-RETR, a client leaving
//! without QUIT, a multi-megabyte message.

use super::*;

/// Logs in through a route over `security` to an upstream that sends `cut`
/// bytes of `body` after RETR's status line and dies; returns what the
/// client received after the status line, up to the close.
async fn retr_until_the_server_dies(
    pki: &TestPki,
    security: &str,
    body: Vec<u8>,
    cut: usize,
) -> Vec<u8> {
    let up = upstream(
        pki,
        security,
        Pop3Script::new()
            .credentials("a", "b")
            .message(body)
            .die_mid_retr(cut),
    )
    .await;
    let gw = start(&up.route(security, "apop").yaml()).await;
    let mut c = LineClient::connect(gw.addr("r")).await.expect("connect");
    c.read_line().await.expect("greeting");
    c.command("USER a").await.expect("user");
    assert!(c.command("PASS b").await.expect("pass").starts_with("+OK"));
    assert!(c.command("RETR 1").await.expect("retr").starts_with("+OK"));
    let (rest, _) = c.read_to_close().await;
    gw.stop().await;
    rest
}

/// The upstream dies in the middle of RETR: the client sees the bytes that
/// came, then the connection closes, and never a terminating ".".
#[tokio::test]
async fn upstream_death_mid_retr_closes_the_client_without_a_terminator() {
    let pki = TestPki::new();
    for security in ["none", "tls"] {
        let body: Vec<u8> = (0..2000)
            .flat_map(|i| format!("line {i}\r\n").into_bytes())
            .collect();
        let rest = retr_until_the_server_dies(&pki, security, body, 5000).await;
        assert!(
            rest.len() >= 4000 && rest.len() <= 5000,
            "{security}: got {} bytes",
            rest.len()
        );
        assert!(
            !rest.ends_with(b"\r\n.\r\n"),
            "{security}: synthetic terminator"
        );
    }
}

/// The same cut after many TLS records that arrive together: the relay
/// takes every record that is ready in one batch (issue 14) and must still
/// hand the client exactly the bytes the server sent before it died — none
/// lost with the error that follows them, no terminator added.
#[tokio::test]
async fn a_batched_relay_stops_exactly_at_an_upstream_cut() {
    const CUT: usize = 200_000;
    let pki = TestPki::new();
    for security in ["none", "tls"] {
        let body: Vec<u8> = (0..30_000)
            .flat_map(|i| format!("line {i:05}\r\n").into_bytes())
            .collect();
        let rest = retr_until_the_server_dies(&pki, security, body.clone(), CUT).await;
        assert_eq!(rest.len(), CUT, "{security}: bytes relayed before the cut");
        assert!(rest == body[..CUT], "{security}: the bytes differ");
    }
}

/// A client that leaves without QUIT: the upstream is dropped without QUIT,
/// so the deletion is never committed (RFC 1939 §6).
#[tokio::test]
async fn client_disconnect_without_quit_commits_nothing() {
    let fake = FakePop3::start(Pop3Script::new().credentials("a", "b").messages(messages())).await;
    let gw = start(&plain_route(fake.addr(), "cram-md5")).await;
    let mut c = LineClient::connect(gw.addr("r")).await.expect("connect");
    c.read_line().await.expect("greeting");
    c.command("USER a").await.expect("user");
    assert!(c.command("PASS b").await.expect("pass").starts_with("+OK"));
    assert!(c.command("DELE 1").await.expect("dele").starts_with("+OK"));
    drop(c);
    fake.expect_event(
        "closed without QUIT",
        |e| matches!(e, Pop3Event::ClosedWithoutQuit),
        WAIT,
    )
    .await;
    assert!(
        !fake.commands().iter().any(|l| l == "QUIT"),
        "{:?}",
        fake.commands()
    );
    assert_eq!(fake.mailbox_len(), 3);
    gw.stop().await;
}

/// A multi-megabyte message is relayed byte-exactly (streamed, not collected).
#[tokio::test]
async fn large_message_relays_byte_exactly() {
    let line: Vec<u8> = (0..78u8).map(|i| b'!' + (i % 90)).chain(*b"\r\n").collect();
    let mut body = Vec::new();
    while body.len() < 8 * 1024 * 1024 {
        body.extend_from_slice(&line);
        body.extend_from_slice(b".dot line\r\n");
    }
    let pki = TestPki::new();
    let up = upstream(
        &pki,
        "tls",
        Pop3Script::new()
            .credentials("a", "b")
            .message(body.clone()),
    )
    .await;
    let gw = start(&up.route("tls", "user").yaml()).await;
    let mut c = LineClient::connect(gw.addr("r")).await.expect("connect");
    c.set_timeout(Duration::from_secs(30));
    c.read_line().await.expect("greeting");
    c.command("USER a").await.expect("user");
    assert!(c.command("PASS b").await.expect("pass").starts_with("+OK"));
    assert!(c.command("RETR 1").await.expect("retr").starts_with("+OK"));
    let got = c.read_multiline().await.expect("body");
    assert!(
        got == wire(&body),
        "large body differs (len {} vs {})",
        got.len(),
        wire(&body).len()
    );
    assert!(c.command("QUIT").await.expect("quit").starts_with("+OK"));
    gw.stop().await;
}
