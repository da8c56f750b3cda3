//! Implicit TLS and STARTTLS: upgrade, LOGINDISABLED, refusal, response
//! injection, pipelining and plaintext before the handshake.

use std::io;

use super::*;

fn starttls_script(pki: &TestPki) -> ImapScript {
    script().security(FakeSecurity::Starttls(pki.server_config()))
}

#[tokio::test]
async fn implicit_tls_session() {
    let pki = TestPki::new();
    let fake = FakeImap::start(script().security(FakeSecurity::Tls(pki.server_config()))).await;
    let mut c = LineClient::connect_tls(fake.addr(), pki.client_config(), "localhost")
        .await
        .unwrap();
    assert!(c
        .read_line()
        .await
        .unwrap()
        .starts_with("* OK [CAPABILITY IMAP4rev1 "));
    assert!(!capabilities(&mut c).await.contains(&"STARTTLS".to_owned()));
    assert_eq!(
        cmd(&mut c, "a STARTTLS").await,
        "a BAD STARTTLS not supported\r\n"
    );
    let challenge = challenge_of(&c.command("b AUTHENTICATE CRAM-MD5").await.unwrap());
    let right = cram_md5_response("alice", PASSWORD, &challenge);
    assert!(reply(&mut c, "b", &right).await.starts_with("b OK "));
    cmd(&mut c, "c SELECT INBOX").await;
    let response = cmd(&mut c, "d FETCH 2 BODY[]").await;
    let literal = format!("BODY[] {{{}}}\r\n{}", MSG2.len(), text(MSG2));
    assert!(response.contains(&literal), "{response}");
    logout(&fake, &mut c).await;

    let events = fake.events();
    assert_eq!(
        &events[..2],
        [ImapEvent::Connected, ImapEvent::TlsEstablished]
    );
    assert!(events.contains(&ImapEvent::LoggedIn {
        mechanism: "AUTHENTICATE CRAM-MD5".into(),
        user: "alice".into(),
        initial_response: false,
        tls: true
    }));
    no_violations(&fake);

    // An untrusted CA fails the handshake on both sides.
    let stranger = TestPki::new();
    let err = LineClient::connect_tls(fake.addr(), stranger.client_config(), "localhost")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    fake.expect_event("TlsFailed", |e| matches!(e, ImapEvent::TlsFailed(_)), WAIT)
        .await;
}

#[tokio::test]
async fn starttls_lifts_logindisabled() {
    let pki = TestPki::new();
    let fake = FakeImap::start(starttls_script(&pki).login_disabled_before_tls(true)).await;
    let (mut c, greeting) = connect(&fake).await;
    let caps = caps_in(&greeting);
    assert!(caps.contains(&"STARTTLS".to_owned()), "{caps:?}");
    assert!(caps.contains(&"LOGINDISABLED".to_owned()), "{caps:?}");
    assert_eq!(
        cmd(&mut c, &format!("a LOGIN alice {QUOTED_PASSWORD}")).await,
        "a NO [PRIVACYREQUIRED] LOGIN is disabled before TLS\r\n"
    );
    assert_eq!(
        cmd(&mut c, "b STARTTLS now").await,
        "b BAD STARTTLS takes no arguments\r\n"
    );
    assert_eq!(
        cmd(&mut c, "c STARTTLS").await,
        "c OK Begin TLS negotiation now\r\n"
    );
    c.upgrade_tls(pki.client_config(), "localhost")
        .await
        .unwrap();

    let caps = capabilities(&mut c).await;
    assert!(!caps.contains(&"STARTTLS".to_owned()), "{caps:?}");
    assert!(!caps.contains(&"LOGINDISABLED".to_owned()), "{caps:?}");
    assert!(caps.contains(&"AUTH=PLAIN".to_owned()), "{caps:?}");
    assert_eq!(
        cmd(&mut c, "d STARTTLS").await,
        "d BAD TLS is already active\r\n"
    );
    login(&mut c).await;
    logout(&fake, &mut c).await;

    assert_eq!(
        logged_in(&fake),
        [ImapEvent::LoggedIn {
            mechanism: "LOGIN".into(),
            user: "alice".into(),
            initial_response: false,
            tls: true
        }]
    );
    assert_eq!(
        violations(&fake),
        ["LOGIN sent although LOGINDISABLED was advertised"]
    );
}

#[tokio::test]
async fn starttls_after_login_is_bad() {
    let pki = TestPki::new();
    let fake = FakeImap::start(starttls_script(&pki)).await;
    let (mut c, _) = connect(&fake).await;
    login(&mut c).await;
    assert_eq!(
        cmd(&mut c, "a STARTTLS").await,
        "a BAD Not allowed in the authenticated state\r\n"
    );
    logout(&fake, &mut c).await;
    assert!(!fake.events().contains(&ImapEvent::TlsEstablished));
}

#[tokio::test]
async fn starttls_refused_or_not_offered() {
    let pki = TestPki::new();
    let fake = FakeImap::start(starttls_script(&pki).starttls(ImapStarttls::Refuse)).await;
    let (mut c, greeting) = connect(&fake).await;
    assert!(caps_in(&greeting).contains(&"STARTTLS".to_owned()));
    assert_eq!(
        cmd(&mut c, "a STARTTLS").await,
        "a NO [UNAVAILABLE] TLS not available now\r\n"
    );
    // Still plain and usable.
    login(&mut c).await;
    logout(&fake, &mut c).await;

    for fake in [
        FakeImap::start(starttls_script(&pki).starttls(ImapStarttls::NotOffered)).await,
        FakeImap::start(script()).await,
    ] {
        let (mut c, greeting) = connect(&fake).await;
        assert!(
            !caps_in(&greeting).contains(&"STARTTLS".to_owned()),
            "{greeting}"
        );
        assert_eq!(
            cmd(&mut c, "a STARTTLS").await,
            "a BAD STARTTLS not supported\r\n"
        );
        logout(&fake, &mut c).await;
    }
}

#[tokio::test]
async fn starttls_accept_then_inject_writes_extra_bytes() {
    let pki = TestPki::new();
    let injected = b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] injected\r\n".to_vec();
    let fake = FakeImap::start(
        starttls_script(&pki).starttls(ImapStarttls::AcceptThenInject(injected.clone())),
    )
    .await;
    let (mut c, _) = connect(&fake).await;
    assert_eq!(
        cmd(&mut c, "a STARTTLS").await,
        "a OK Begin TLS negotiation now\r\n"
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
    let fake = FakeImap::start(starttls_script(&pki)).await;
    let (mut c, _) = connect(&fake).await;
    c.send_raw(b"a STARTTLS\r\nb LOGIN alice x\r\n")
        .await
        .unwrap();
    fake.expect_event(
        "violation",
        |e| matches!(e, ImapEvent::ClientViolation(v) if v.contains("pipelined after STARTTLS")),
        WAIT,
    )
    .await;
    let (rest, _) = c.read_to_close().await;
    assert!(rest.is_empty(), "no go-ahead after a violation");
    assert!(fake.wait_closed(1, WAIT).await);
}

#[tokio::test]
async fn plaintext_after_the_go_ahead_is_flagged() {
    let pki = TestPki::new();
    let fake = FakeImap::start(starttls_script(&pki)).await;
    let (mut c, _) = connect(&fake).await;
    assert!(cmd(&mut c, "a STARTTLS").await.starts_with("a OK "));
    // A client that reads the OK but then carries on in plaintext.
    c.send(&format!("b LOGIN alice {QUOTED_PASSWORD}"))
        .await
        .unwrap();
    fake.expect_event("TlsFailed", |e| matches!(e, ImapEvent::TlsFailed(_)), WAIT)
        .await;
    let v = violations(&fake);
    let line_len = format!("b LOGIN alice {QUOTED_PASSWORD}\r\n").len();
    assert_eq!(
        v,
        [format!(
            "{line_len} bytes of plaintext after the STARTTLS go-ahead, before the TLS handshake"
        )]
    );
    assert!(!format!("{:?}", fake.logged_events()).contains("word"));

    // A well-behaved upgrade right after is not flagged.
    let (mut c, _) = connect(&fake).await;
    assert!(cmd(&mut c, "a STARTTLS").await.starts_with("a OK "));
    c.upgrade_tls(pki.client_config(), "localhost")
        .await
        .unwrap();
    login(&mut c).await;
    logout(&fake, &mut c).await;
    assert_eq!(violations(&fake).len(), 1);
}
