//! The listen side of TLS: implicit TLS and STLS listeners.

use super::*;

/// A route whose listen side is `tls` or `starttls`, with a cert from `pki`.
async fn tls_listener(
    pki: &TestPki,
    listen_security: &str,
    fake: &FakePop3,
) -> (common::Running, TempDir) {
    let dir = TempDir::new("postern-listen");
    let (cert, key) = pki.write_leaf_pem(dir.path());
    let yaml = RouteYaml::pop3("r", fake.addr())
        .listen_tls(listen_security, &cert, &key)
        .security("none")
        .auth("apop")
        .yaml();
    (start(&yaml).await, dir)
}

#[tokio::test]
async fn implicit_tls_listener() {
    let pki = TestPki::new();
    let fake = FakePop3::start(Pop3Script::new().credentials("a", "b").messages(messages())).await;
    let (gw, _dir) = tls_listener(&pki, "tls", &fake).await;
    let mut c = LineClient::connect_tls(gw.addr("r"), pki.client_config(), "localhost")
        .await
        .expect("TLS connect");
    assert!(c.read_line().await.expect("greeting").starts_with("+OK"));
    c.command("USER a").await.expect("user");
    assert!(c.command("PASS b").await.expect("pass").starts_with("+OK"));
    assert!(c.command("RETR 2").await.expect("retr").starts_with("+OK"));
    assert_eq!(
        c.read_multiline().await.expect("body"),
        wire(&messages()[1])
    );
    c.command("QUIT").await.expect("quit");

    // Plain text on the TLS port: the handshake fails and the connection closes.
    let mut plain = LineClient::connect(gw.addr("r")).await.expect("connect");
    plain.send_raw(b"USER a\r\n").await.expect("send");
    let (got, _) = plain.read_to_close().await;
    assert!(!String::from_utf8_lossy(&got).contains("+OK"), "{got:?}");
    gw.stop().await;
}

#[tokio::test]
async fn stls_listener_requires_tls_for_login_and_resets_state() {
    let pki = TestPki::new();
    let fake = FakePop3::start(Pop3Script::new().credentials("a", "b").messages(messages())).await;
    let (gw, _dir) = tls_listener(&pki, "starttls", &fake).await;
    let mut c = LineClient::connect(gw.addr("r")).await.expect("connect");
    c.read_line().await.expect("greeting");
    assert!(c.command("CAPA").await.expect("capa").starts_with("+OK"));
    let caps = c.read_multiline_lines().await.expect("caps");
    assert!(caps.iter().any(|l| l == "STLS"), "{caps:?}");
    assert!(
        !caps.iter().any(|l| l == "USER" || l.starts_with("SASL")),
        "login advertised before TLS: {caps:?}"
    );
    let r = c.command("USER a").await.expect("user");
    assert!(r.starts_with("-ERR"), "{r}");
    assert!(!fake.commands().iter().any(|l| l.starts_with("APOP")));
    assert!(c.command("STLS").await.expect("stls").starts_with("+OK"));
    c.upgrade_tls(pki.client_config(), "localhost")
        .await
        .expect("handshake");
    assert!(c.command("CAPA").await.expect("capa").starts_with("+OK"));
    let caps = c.read_multiline_lines().await.expect("caps");
    assert!(
        caps.iter().any(|l| l == "USER") && !caps.iter().any(|l| l == "STLS"),
        "{caps:?}"
    );
    assert!(
        c.command("STLS").await.expect("stls").starts_with("-ERR"),
        "no second STLS"
    );
    c.command("USER a").await.expect("user");
    assert!(c.command("PASS b").await.expect("pass").starts_with("+OK"));
    assert!(c.command("STAT").await.expect("stat").starts_with("+OK 3"));
    c.command("QUIT").await.expect("quit");
    gw.stop().await;
}

/// CVE-2011-0411: commands pipelined after STLS in the same segment would
/// be read as if sent inside TLS. postern closes the session instead.
#[tokio::test]
async fn stls_command_injection_closes_the_session() {
    let pki = TestPki::new();
    let fake = FakePop3::start(Pop3Script::new().credentials("a", "b")).await;
    let (gw, _dir) = tls_listener(&pki, "starttls", &fake).await;
    let mut c = LineClient::connect(gw.addr("r")).await.expect("connect");
    c.read_line().await.expect("greeting");
    c.send_raw(b"STLS\r\nCAPA\r\n").await.expect("send");
    let (got, _) = c.read_to_close().await;
    assert!(
        got.is_empty(),
        "postern answered after an injection attempt: {:?}",
        String::from_utf8_lossy(&got)
    );
    gw.stop().await;
}
