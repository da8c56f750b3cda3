//! Implicit TLS and STARTTLS: upgrade, refusal, injection, pipelining.

use super::*;

#[tokio::test]
async fn implicit_tls_session() {
    let pki = TestPki::new();
    let fake = FakeSmtp::start(script().security(FakeSecurity::Tls(pki.server_config()))).await;
    let mut c = LineClient::connect_tls(fake.addr(), pki.client_config(), "localhost")
        .await
        .unwrap();
    assert_eq!(
        c.read_smtp_reply().await.unwrap(),
        ["220 fake.test ESMTP ready"]
    );
    let caps = ehlo(&mut c).await;
    assert!(!caps.iter().any(|l| l.contains("STARTTLS")), "{caps:?}");
    assert_eq!(
        c.command("STARTTLS").await.unwrap(),
        "502 5.5.1 STARTTLS not supported"
    );
    let challenge = challenge_of(&c.command("AUTH CRAM-MD5").await.unwrap());
    let right = cram_md5_response("alice", PASSWORD, &challenge);
    assert!(c.command(&right).await.unwrap().starts_with("235 "));
    open_data(&mut c, "r@x.test").await;
    c.send_raw(b"over tls\r\n.\r\n").await.unwrap();
    assert!(c.read_line().await.unwrap().starts_with("250 "));
    quit(&fake, &mut c).await;

    let events = fake.events();
    assert_eq!(
        &events[..2],
        [SmtpEvent::Connected, SmtpEvent::TlsEstablished]
    );
    assert!(events.contains(&SmtpEvent::AuthOk {
        mechanism: "CRAM-MD5".into(),
        tls: true
    }));
    assert!(fake.messages()[0].tls);
    no_violations(&fake);

    // An untrusted CA fails the handshake on both sides.
    let stranger = TestPki::new();
    let err = LineClient::connect_tls(fake.addr(), stranger.client_config(), "localhost")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    fake.expect_event("TlsFailed", |e| matches!(e, SmtpEvent::TlsFailed(_)), WAIT)
        .await;
}

#[tokio::test]
async fn starttls_upgrade_resets_state() {
    let pki = TestPki::new();
    let fake = FakeSmtp::start(
        script()
            .security(FakeSecurity::Starttls(pki.server_config()))
            .auth_only_after_tls(true),
    )
    .await;
    let mut c = connect(&fake).await;
    assert_eq!(
        c.command("STARTTLS").await.unwrap(),
        "503 5.5.1 Send EHLO first"
    );
    let caps = ehlo(&mut c).await;
    assert_eq!(caps.last().unwrap(), "250 STARTTLS");
    assert!(!caps.iter().any(|l| l.contains("AUTH")), "{caps:?}");
    let ir = sasl_plain_response("", "alice", PASSWORD);
    assert_eq!(
        c.command(&format!("AUTH PLAIN {ir}")).await.unwrap(),
        "538 5.7.11 Encryption required for requested authentication mechanism"
    );
    assert!(c.command("STARTTLS now").await.unwrap().starts_with("501 "));
    assert_eq!(
        c.command("STARTTLS").await.unwrap(),
        "220 2.0.0 Ready to start TLS"
    );
    c.upgrade_tls(pki.client_config(), "localhost")
        .await
        .unwrap();

    // RFC 3207 §4.2: the client must EHLO again.
    assert_eq!(
        c.command("MAIL FROM:<s@x.test>").await.unwrap(),
        "503 5.5.1 Send EHLO first"
    );
    let caps = ehlo(&mut c).await;
    assert!(!caps.iter().any(|l| l.contains("STARTTLS")), "{caps:?}");
    assert_eq!(caps.last().unwrap(), "250 AUTH PLAIN LOGIN CRAM-MD5");
    assert_eq!(
        c.command("STARTTLS").await.unwrap(),
        "503 5.5.1 TLS already active"
    );
    login(&mut c).await;
    open_data(&mut c, "r@x.test").await;
    assert!(c.command(".").await.unwrap().starts_with("250 "));
    quit(&fake, &mut c).await;

    let events = fake.events();
    assert!(events.contains(&SmtpEvent::TlsEstablished));
    assert!(events.contains(&SmtpEvent::AuthOk {
        mechanism: "PLAIN".into(),
        tls: true
    }));
    assert!(fake.messages()[0].tls);
    no_violations(&fake);
}

#[tokio::test]
async fn starttls_refused_or_not_offered() {
    let pki = TestPki::new();
    let fake = FakeSmtp::start(
        script()
            .security(FakeSecurity::Starttls(pki.server_config()))
            .starttls(StarttlsBehaviour::Refuse),
    )
    .await;
    let mut c = connect(&fake).await;
    assert!(ehlo(&mut c).await.contains(&"250 STARTTLS".to_owned()));
    assert_eq!(
        c.command("STARTTLS").await.unwrap(),
        "454 4.7.0 TLS not available due to temporary reason"
    );
    // Still plain and usable.
    login(&mut c).await;
    quit(&fake, &mut c).await;

    let fake = FakeSmtp::start(
        script()
            .security(FakeSecurity::Starttls(pki.server_config()))
            .starttls(StarttlsBehaviour::NotOffered),
    )
    .await;
    let mut c = connect(&fake).await;
    let caps = ehlo(&mut c).await;
    assert!(!caps.iter().any(|l| l.contains("STARTTLS")), "{caps:?}");
    assert_eq!(
        c.command("STARTTLS").await.unwrap(),
        "502 5.5.1 STARTTLS not supported"
    );
}

#[tokio::test]
async fn starttls_accept_then_inject_writes_extra_bytes() {
    let pki = TestPki::new();
    let injected = b"250 2.1.0 injected\r\n".to_vec();
    let fake = FakeSmtp::start(
        script()
            .security(FakeSecurity::Starttls(pki.server_config()))
            .starttls(StarttlsBehaviour::AcceptThenInject(injected.clone())),
    )
    .await;
    let mut c = connect(&fake).await;
    ehlo(&mut c).await;
    assert_eq!(
        c.command("STARTTLS").await.unwrap(),
        "220 2.0.0 Ready to start TLS"
    );
    c.fill_to(injected.len()).await.unwrap();
    assert_eq!(c.buffered(), &injected[..]);
    let err = c
        .upgrade_tls(pki.client_config(), "localhost")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
}

#[tokio::test]
async fn pipelining_after_starttls_is_flagged() {
    let pki = TestPki::new();
    let fake =
        FakeSmtp::start(script().security(FakeSecurity::Starttls(pki.server_config()))).await;
    let mut c = connect(&fake).await;
    ehlo(&mut c).await;
    c.send_raw(b"STARTTLS\r\nEHLO client.test\r\n")
        .await
        .unwrap();
    fake.expect_event(
        "violation",
        |e| matches!(e, SmtpEvent::ClientViolation(v) if v.contains("after STARTTLS")),
        WAIT,
    )
    .await;
    let (rest, _) = c.read_to_close().await;
    assert!(rest.is_empty(), "no go-ahead after a violation");
    assert!(fake.wait_closed(1, WAIT).await);
}
