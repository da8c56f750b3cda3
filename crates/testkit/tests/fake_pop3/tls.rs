//! Implicit TLS and STLS: certificates, upgrade, refusal, injection, pipelining.

use super::*;

#[tokio::test]
async fn implicit_tls_login() {
    let pki = TestPki::new();
    let fake = FakePop3::start(script().security(FakeSecurity::Tls(pki.server_config()))).await;
    let mut c = LineClient::connect_tls(fake.addr(), pki.client_config(), "localhost")
        .await
        .unwrap();
    assert!(c.is_tls());
    assert!(c.read_line().await.unwrap().starts_with("+OK fake ready"));
    c.command("CAPA").await.unwrap();
    let caps = c.read_multiline_lines().await.unwrap();
    assert!(!caps.contains(&"STLS".to_owned()));
    c.command("USER alice").await.unwrap();
    assert!(c
        .command("PASS pass with spaces")
        .await
        .unwrap()
        .starts_with("+OK"));
    c.command("RETR 1").await.unwrap();
    assert_eq!(
        dot_unstuff(&c.read_multiline().await.unwrap()).unwrap(),
        MSG1
    );
    quit(&fake, &mut c).await;
    let events = fake.events();
    assert_eq!(
        &events[..2],
        [Pop3Event::Connected, Pop3Event::TlsEstablished]
    );
    assert!(events.contains(&Pop3Event::LoggedIn {
        method: "USER".into(),
        tls: true
    }));
    no_violations(&fake);
}

#[tokio::test]
async fn implicit_tls_by_ip_and_unknown_ca() {
    let pki = TestPki::new();
    let fake = FakePop3::start(script().security(FakeSecurity::Tls(pki.server_config()))).await;
    let mut c = LineClient::connect_tls(fake.addr(), pki.client_config(), "127.0.0.1")
        .await
        .unwrap();
    assert!(c.read_line().await.unwrap().starts_with("+OK"));
    drop(c);

    let stranger = TestPki::new();
    let err = LineClient::connect_tls(fake.addr(), stranger.client_config(), "localhost")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    fake.expect_event("TlsFailed", |e| matches!(e, Pop3Event::TlsFailed(_)), WAIT)
        .await;
    assert!(fake.wait_closed(2, WAIT).await);
}

#[tokio::test]
async fn wrong_name_leaf_is_rejected() {
    let pki = TestPki::new();
    let config = pki.server_config_for_names(&["other.example"]);
    let fake = FakePop3::start(script().security(FakeSecurity::Tls(config))).await;
    let err = LineClient::connect_tls(fake.addr(), pki.client_config(), "localhost")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not valid for name"), "{err}");
    let mut c = LineClient::connect_tls(fake.addr(), pki.client_config(), "other.example")
        .await
        .unwrap();
    assert!(c.read_line().await.unwrap().starts_with("+OK"));
}

#[tokio::test]
async fn stls_upgrade_then_login() {
    let pki = TestPki::new();
    let fake = FakePop3::start(
        script()
            .security(FakeSecurity::Starttls(pki.server_config()))
            .require_tls_for_auth(true),
    )
    .await;
    let (mut c, _) = connect(&fake).await;
    c.command("CAPA").await.unwrap();
    let caps = c.read_multiline_lines().await.unwrap();
    assert_eq!(caps.last().map(String::as_str), Some("STLS"));
    assert_eq!(
        c.command("USER alice").await.unwrap(),
        "-ERR [AUTH] TLS required"
    );
    assert_eq!(
        c.command("AUTH PLAIN =").await.unwrap(),
        "-ERR [AUTH] TLS required"
    );

    assert_eq!(c.command("STLS").await.unwrap(), "+OK Begin TLS");
    c.upgrade_tls(pki.client_config(), "localhost")
        .await
        .unwrap();
    c.command("CAPA").await.unwrap();
    let caps = c.read_multiline_lines().await.unwrap();
    assert!(!caps.contains(&"STLS".to_owned()), "{caps:?}");
    assert!(c.command("STLS").await.unwrap().starts_with("-ERR"));
    let ir = sasl_plain_response("", "alice", "pass with spaces");
    assert!(c
        .command(&format!("AUTH PLAIN {ir}"))
        .await
        .unwrap()
        .starts_with("+OK"));
    quit(&fake, &mut c).await;
    assert!(fake.events().contains(&Pop3Event::LoggedIn {
        method: "PLAIN".into(),
        tls: true
    }));
    no_violations(&fake);
}

#[tokio::test]
async fn stls_refused_and_hidden() {
    let pki = TestPki::new();
    let fake = FakePop3::start(
        script()
            .security(FakeSecurity::Starttls(pki.server_config()))
            .stls(StlsBehaviour::Refuse),
    )
    .await;
    let (mut c, _) = connect(&fake).await;
    assert!(c.command("STLS").await.unwrap().starts_with("-ERR"));
    // Still plain and usable.
    c.command("USER alice").await.unwrap();
    assert!(c
        .command("PASS pass with spaces")
        .await
        .unwrap()
        .starts_with("+OK"));

    let fake = FakePop3::start(
        script()
            .security(FakeSecurity::Starttls(pki.server_config()))
            .capa(CapaBehaviour::WithoutStls),
    )
    .await;
    let (mut c, _) = connect(&fake).await;
    c.command("CAPA").await.unwrap();
    let caps = c.read_multiline_lines().await.unwrap();
    assert!(!caps.contains(&"STLS".to_owned()));
    assert_eq!(c.command("STLS").await.unwrap(), "+OK Begin TLS");
    c.upgrade_tls(pki.client_config(), "localhost")
        .await
        .unwrap();
    assert!(c.command("NOOP").await.unwrap().starts_with("-ERR"));
}

#[tokio::test]
async fn stls_accept_then_inject_writes_extra_bytes() {
    let pki = TestPki::new();
    let injected = b"+OK injected\r\n".to_vec();
    let fake = FakePop3::start(
        script()
            .security(FakeSecurity::Starttls(pki.server_config()))
            .stls(StlsBehaviour::AcceptThenInject(injected.clone())),
    )
    .await;
    let (mut c, _) = connect(&fake).await;
    assert_eq!(c.command("STLS").await.unwrap(), "+OK Begin TLS");
    c.fill_to(injected.len()).await.unwrap();
    assert_eq!(c.buffered(), &injected[..]);
    let err = c
        .upgrade_tls(pki.client_config(), "localhost")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
}

#[tokio::test]
async fn pipelining_after_stls_is_flagged() {
    let pki = TestPki::new();
    let fake =
        FakePop3::start(script().security(FakeSecurity::Starttls(pki.server_config()))).await;
    let (mut c, _) = connect(&fake).await;
    c.send_raw(b"STLS\r\nCAPA\r\n").await.unwrap();
    fake.expect_event(
        "violation",
        |e| matches!(e, Pop3Event::ClientViolation(_)),
        WAIT,
    )
    .await;
    let (_, _) = c.read_to_close().await;
    assert!(fake.wait_closed(1, WAIT).await);
}
