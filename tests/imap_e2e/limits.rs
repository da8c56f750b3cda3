//! postern's not-authenticated state under attack: caps checked before a
//! byte is read, protocol confusion, STARTTLS on the listen side and its
//! injection, deadlines. No upstream is ever opened for any of it.

use std::time::Instant;

use super::*;

/// A plain-listener route `r` (none × cram-md5) to a fake, with extra
/// route `timeouts:` if given.
async fn plain(timeouts: Option<&str>) -> (FakeImap, common::Running) {
    let fake = FakeImap::start(script(PASSWORD)).await;
    let mut route = RouteYaml::imap("r", fake.addr())
        .security("none")
        .auth("cram-md5");
    if let Some(t) = timeouts {
        route = route.timeouts(t);
    }
    let gw = start(&route.yaml()).await;
    (fake, gw)
}

/// A synchronising literal over the cap is refused before the `+` (the
/// client never sends it), the connection stays usable; a
/// non-synchronising one is on its way and ends the session.
#[tokio::test]
async fn oversized_literals_before_login() {
    let (fake, gw) = plain(None).await;
    let (mut c, _) = connect(gw.addr("r")).await;
    for (tag, n) in [("a", 1_000_000_000u64), ("b", 16 * 1024 + 1)] {
        let r = c
            .imap_command(&format!("{tag} LOGIN {{{n}}}"))
            .await
            .expect("login");
        assert_eq!(
            text(&r),
            format!("{tag} BAD [LIMIT] Literal too large before login\r\n")
        );
    }
    // Usable: a literal within the cap, then a login.
    let r = c.imap_command("c NOOP").await.expect("noop");
    assert_eq!(text(&r), "c OK NOOP completed\r\n");
    let r = c
        .imap_command(&format!("d LOGIN {USER} {{{}}}", PASSWORD.len()))
        .await
        .expect("login");
    assert!(r.starts_with(b"+ "), "{}", text(&r));
    c.send(PASSWORD).await.expect("password");
    let r = c.read_imap_response("d").await.expect("login");
    assert_tagged(&r, "d", "OK", "a literal within the cap");
    logout(&mut c, "literal").await;

    // A non-synchronising literal over the cap: `* BYE`, closed, even
    // though the client goes on sending.
    let (mut c, _) = connect(gw.addr("r")).await;
    c.send_raw(b"a LOGIN alice {1000000000+}\r\nxxxxxxxxxxxxxxxx")
        .await
        .expect("send");
    let (got, _) = c.read_to_close().await;
    let got = text(&got);
    assert!(
        got.starts_with("* BYE [LIMIT] Non-synchronising literal too large"),
        "{got:?}"
    );
    assert_eq!(got.matches("\r\n").count(), 1, "{got:?}");
    assert_eq!(fake.connections(), 1, "only the login above went upstream");
    gw.stop().await;
}

/// A command line over the cap (8 KiB) is discarded and refused; the
/// connection goes on. Ten bad commands close it.
#[tokio::test]
async fn overlong_lines_and_bad_commands() {
    let (fake, gw) = plain(None).await;
    let (mut c, _) = connect(gw.addr("r")).await;
    let line = format!("a LOGIN {USER} {}", "x".repeat(10_000));
    c.send(&line).await.expect("send");
    // The tag was discarded with the line.
    assert_eq!(
        c.read_line().await.expect("reply"),
        "* BAD Command line too long"
    );
    let r = c.imap_command("b NOOP").await.expect("noop");
    assert_eq!(text(&r), "b OK NOOP completed\r\n");

    let r = c.imap_command("c FETCH 1 BODY[]").await.expect("fetch");
    assert_tagged(&r, "c", "BAD [CLIENTBUG] Log in first", "FETCH");
    for i in 2..10 {
        let r = c.imap_command("x EHLO there").await.expect("bad");
        assert_eq!(text(&r), "x BAD Unknown command\r\n", "{i}");
    }
    c.send("y EHLO there").await.expect("bad");
    let (got, _) = c.read_to_close().await;
    assert_eq!(
        text(&got),
        "y BAD Unknown command\r\n* BYE Too many invalid commands\r\n"
    );
    assert_eq!(fake.connections(), 0);
    gw.stop().await;
}

/// An HTTP request after the greeting, a client that talks before it, a
/// TLS ClientHello on the plain port: closed, never logged in.
#[tokio::test]
async fn http_early_talkers_and_tls_on_the_plain_port_are_closed() {
    let (fake, gw) = plain(None).await;

    let (mut c, _) = connect(gw.addr("r")).await;
    c.send_raw(b"GET / HTTP/1.1\r\nHost: mail.example\r\n\r\n")
        .await
        .expect("http");
    let (got, _) = c.read_to_close().await;
    assert_eq!(
        text(&got),
        "* BYE This is an IMAP service, not a web server\r\n"
    );

    let mut c = LineClient::connect(gw.addr("r")).await.expect("connect");
    c.send_raw(format!("a LOGIN {USER} {}\r\n", quoted(PASSWORD)).as_bytes())
        .await
        .expect("early");
    let (got, _) = c.read_to_close().await;
    assert_eq!(
        text(&got),
        "* BYE Protocol error: data sent before the greeting\r\n"
    );

    let mut c = LineClient::connect(gw.addr("r")).await.expect("connect");
    // The start of a TLS 1.2 ClientHello record.
    c.send_raw(&[
        0x16, 0x03, 0x01, 0x00, 0x2f, 0x01, 0x00, 0x00, 0x2b, 0x03, 0x03,
    ])
    .await
    .expect("hello");
    let (got, _) = c.read_to_close().await;
    assert!(got.is_empty(), "{:?}", text(&got));
    assert_eq!(fake.connections(), 0);
    gw.stop().await;
}

/// A STARTTLS listener: no login before TLS (LOGINDISABLED, no AUTH=,
/// `NO [PRIVACYREQUIRED]`), STARTTLS, then the login; a command pipelined
/// after STARTTLS in the same packet closes the session with no go-ahead
/// (CVE-2011-0411).
#[tokio::test]
async fn starttls_listener_and_command_injection() {
    let pki = TestPki::new();
    let dir = TempDir::new("postern-imap-listen");
    let (cert, key) = pki.write_leaf_pem(dir.path());
    let fake = FakeImap::start(script(PASSWORD)).await;
    let gw = start(
        &RouteYaml::imap("r", fake.addr())
            .listen_tls("starttls", &cert, &key)
            .security("none")
            .auth("cram-md5")
            .yaml(),
    )
    .await;

    let (mut c, caps) = connect(gw.addr("r")).await;
    assert!(
        has(&caps, "STARTTLS") && has(&caps, "LOGINDISABLED"),
        "{caps:?}"
    );
    assert_eq!(auth_mechanisms(&caps), Vec::<String>::new(), "{caps:?}");
    let r = c
        .imap_command(&format!("a LOGIN {USER} {}", quoted(PASSWORD)))
        .await
        .expect("login");
    assert_tagged(&r, "a", "NO [PRIVACYREQUIRED]", "login before TLS");
    let r = c.imap_command("b STARTTLS").await.expect("starttls");
    assert_eq!(text(&r), "b OK Begin TLS negotiation now\r\n");
    c.upgrade_tls(pki.client_config(), "localhost")
        .await
        .expect("handshake");
    let r = c.imap_command("c CAPABILITY").await.expect("capability");
    let caps = untagged_capabilities(&r).remove(0);
    assert!(
        !has(&caps, "STARTTLS") && !has(&caps, "LOGINDISABLED"),
        "{caps:?}"
    );
    assert_eq!(auth_mechanisms(&caps), ["PLAIN", "LOGIN"], "{caps:?}");
    let r = c.imap_command("d STARTTLS").await.expect("starttls");
    assert_tagged(&r, "d", "BAD", "a second STARTTLS");
    login(&mut c, USER, PASSWORD, "after STARTTLS").await;
    select_and_fetch(&mut c, 1, &trap_message(), "after STARTTLS").await;
    logout(&mut c, "after STARTTLS").await;
    assert_eq!(logins(&fake).len(), 1);

    let (mut c, _) = connect(gw.addr("r")).await;
    c.send_raw(b"a STARTTLS\r\nb LOGIN alice wonderland\r\n")
        .await
        .expect("inject");
    let (got, _) = c.read_to_close().await;
    assert!(
        got.is_empty(),
        "postern answered after an injection attempt: {:?}",
        text(&got)
    );
    assert_eq!(fake.connections(), 1);
    gw.stop().await;
}

/// `login_total` bounds everything before login, however busy the client
/// keeps it (NOOPs), and a literal that never comes.
#[tokio::test]
async fn login_total_applies_before_login() {
    let (fake, gw) = plain(Some("login_total: 1s, client_login: 10s")).await;

    let (mut c, _) = connect(gw.addr("r")).await;
    let started = Instant::now();
    let closed = loop {
        match c.imap_command("n NOOP").await {
            Ok(r) if r == b"n OK NOOP completed\r\n" => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(r) if r.is_empty() => break started.elapsed(),
            Ok(r) => panic!("{}", text(&r)),
            Err(_) => break started.elapsed(),
        }
        assert!(started.elapsed() < Duration::from_secs(4), "still open");
    };
    assert!(
        closed >= Duration::from_millis(800) && closed < Duration::from_secs(3),
        "{closed:?}"
    );

    let (mut c, _) = connect(gw.addr("r")).await;
    let started = Instant::now();
    let r = c
        .imap_command(&format!("a LOGIN {USER} {{{}}}", PASSWORD.len()))
        .await
        .expect("login");
    assert!(r.starts_with(b"+ "), "{}", text(&r));
    let (got, _) = c.read_to_close().await;
    assert!(got.is_empty(), "{:?}", text(&got));
    let closed = started.elapsed();
    assert!(
        closed >= Duration::from_millis(800) && closed < Duration::from_secs(3),
        "{closed:?}"
    );
    assert_eq!(fake.connections(), 0);
    gw.stop().await;
}
