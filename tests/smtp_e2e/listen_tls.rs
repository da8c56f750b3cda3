//! The listen side of TLS: SMTPS and STARTTLS listeners.

use super::*;

async fn tls_listener(
    pki: &TestPki,
    listen_security: &str,
    fake: &FakeSmtp,
) -> (common::Running, TempDir) {
    let dir = TempDir::new("postern-smtp-listen");
    let (cert, key) = pki.write_leaf_pem(dir.path());
    let yaml = RouteYaml::smtp("r", fake.addr())
        .listen_tls(listen_security, &cert, &key)
        .security("none")
        .auth("cram-md5")
        .yaml();
    (start(&yaml).await, dir)
}

#[tokio::test]
async fn smtps_listener() {
    let pki = TestPki::new();
    let fake = FakeSmtp::start(SmtpScript::new()).await;
    let (gw, _dir) = tls_listener(&pki, "tls", &fake).await;
    let mut c = LineClient::connect_tls(gw.addr("r"), pki.client_config(), "localhost")
        .await
        .expect("TLS");
    assert_eq!(code(&c.read_smtp_reply().await.expect("greeting")), "220");
    login(&mut c).await;
    let r = send_message(&mut c, "a@x", &["b@y"], b"Subject: tls\r\n\r\nhi\r\n").await;
    assert_eq!(code(&r), "250");
    assert_eq!(fake.accepted_messages().len(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn starttls_listener_requires_tls_for_auth_and_starts_over() {
    let pki = TestPki::new();
    let fake = FakeSmtp::start(SmtpScript::new()).await;
    let (gw, _dir) = tls_listener(&pki, "starttls", &fake).await;
    let mut c = connect(&gw).await;
    let ehlo = c.smtp_command("EHLO c").await.expect("ehlo");
    assert!(ehlo.iter().any(|l| l.ends_with("STARTTLS")), "{ehlo:?}");
    assert!(
        !ehlo.iter().any(|l| l.contains("AUTH")),
        "AUTH advertised before TLS: {ehlo:?}"
    );
    let r = c
        .smtp_command(&format!(
            "AUTH PLAIN {}",
            sasl_plain_response("", "alice", "wonderland")
        ))
        .await
        .expect("auth");
    assert!(r[0].starts_with("538 5.7.11"), "{r:?}");
    assert_eq!(
        code(&c.smtp_command("STARTTLS").await.expect("starttls")),
        "220"
    );
    c.upgrade_tls(pki.client_config(), "localhost")
        .await
        .expect("handshake");
    let r = c.smtp_command("MAIL FROM:<a@x>").await.expect("mail");
    assert!(r[0].starts_with("503"), "EHLO state kept across TLS: {r:?}");
    let ehlo = c.smtp_command("EHLO c").await.expect("ehlo");
    assert!(
        ehlo.iter().any(|l| l.contains("AUTH PLAIN LOGIN"))
            && !ehlo.iter().any(|l| l.contains("STARTTLS")),
        "{ehlo:?}"
    );
    assert!(c.smtp_command("STARTTLS").await.expect("again")[0].starts_with("503"));
    let r = c
        .smtp_command(&format!(
            "AUTH PLAIN {}",
            sasl_plain_response("", "alice", "wonderland")
        ))
        .await
        .expect("auth");
    assert_eq!(code(&r), "235");
    let r = send_message(&mut c, "a@x", &["b@y"], b"Subject: starttls\r\n\r\nhi\r\n").await;
    assert_eq!(code(&r), "250");
    gw.stop().await;
}

/// CVE-2011-0411 on the listen side: `STARTTLS\r\nEHLO x\r\n` in one segment.
#[tokio::test]
async fn starttls_command_injection_closes_the_session() {
    let pki = TestPki::new();
    let fake = FakeSmtp::start(SmtpScript::new()).await;
    let (gw, _dir) = tls_listener(&pki, "starttls", &fake).await;
    let mut c = connect(&gw).await;
    c.smtp_command("EHLO c").await.expect("ehlo");
    c.send_raw(b"STARTTLS\r\nEHLO x\r\n").await.expect("send");
    let (got, _) = c.read_to_close().await;
    assert!(
        got.is_empty(),
        "postern answered after an injection attempt: {:?}",
        String::from_utf8_lossy(&got)
    );
    gw.stop().await;
}
