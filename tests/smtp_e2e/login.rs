//! Logging in: every security × auth combination, never an open relay,
//! an unreachable upstream met at AUTH.

use super::*;

#[tokio::test]
async fn every_security_and_auth_combination() {
    let pki = TestPki::new();
    for security in ["none", "tls", "starttls"] {
        for (auth, mechanism) in [
            ("plain", "PLAIN"),
            ("login", "LOGIN"),
            ("cram-md5", "CRAM-MD5"),
            ("none", ""),
        ] {
            let what = format!("{security} × {auth}");
            let script = SmtpScript::new().require_auth(auth != "none");
            let (up, gw) = gateway(&pki, security, auth, script).await;
            let mut c = connect(&gw).await;
            let ehlo = c.smtp_command("EHLO client.example").await.expect("ehlo");
            assert!(
                !ehlo.iter().any(|l| l.contains("STARTTLS")),
                "{what}: {ehlo:?}"
            );
            assert!(
                !ehlo.iter().any(|l| l.contains("CRAM-MD5")),
                "{what}: upstream AUTH list leaked {ehlo:?}"
            );
            assert_eq!(
                ehlo.iter().any(|l| l.contains("AUTH PLAIN LOGIN")),
                auth != "none",
                "{what}: {ehlo:?}"
            );
            if auth != "none" {
                // A wrong password is refused, then AUTH LOGIN succeeds.
                let r = c
                    .smtp_command(&format!(
                        "AUTH PLAIN {}",
                        sasl_plain_response("", "alice", "nope")
                    ))
                    .await
                    .expect("auth");
                assert_eq!(code(&r), "535", "{what}: {r:?}");
                assert_eq!(
                    code(&c.smtp_command("AUTH LOGIN").await.expect("auth")),
                    "334"
                );
                assert_eq!(
                    code(&c.smtp_command(&login_base64("alice")).await.expect("user")),
                    "334"
                );
                let r = c
                    .smtp_command(&login_base64("wonderland"))
                    .await
                    .expect("pass");
                assert_eq!(code(&r), "235", "{what}: {r:?}");
                up.fake
                    .expect_event(&what, |e| {
                        matches!(e, SmtpEvent::AuthOk { mechanism: m, tls } if m == mechanism && *tls == (security != "none"))
                    }, WAIT)
                    .await;
            }
            let body = tricky_body();
            let r = send_message(&mut c, "alice@example.net", &["bob@example.org"], &body).await;
            assert_eq!(code(&r), "250", "{what}: {r:?}");
            assert!(
                r[0].contains("queued as FAKE"),
                "{what}: the reply is the upstream's own: {r:?}"
            );
            let msgs = up.fake.accepted_messages();
            assert_eq!(msgs.len(), 1, "{what}");
            assert_eq!(msgs[0].raw, body, "{what}: data not byte-identical");
            assert_eq!(msgs[0].rcpts, vec!["bob@example.org".to_owned()]);
            assert_eq!(code(&c.smtp_command("QUIT").await.expect("quit")), "221");
            gw.stop().await;
        }
    }
}

#[tokio::test]
async fn never_an_open_relay() {
    let pki = TestPki::new();
    let (up, gw) = gateway(&pki, "tls", "plain", SmtpScript::new()).await;
    let mut c = connect(&gw).await;
    c.smtp_command("EHLO c").await.expect("ehlo");
    let r = c.smtp_command("MAIL FROM:<a@x>").await.expect("mail");
    assert!(r[0].starts_with("530 5.7.0"), "{r:?}");
    // Acting as another user is refused before anything goes upstream.
    let r = c
        .smtp_command(&format!(
            "AUTH PLAIN {}",
            sasl_plain_response("bob", "alice", "wonderland")
        ))
        .await
        .expect("auth");
    assert_eq!(code(&r), "535", "{r:?}");
    assert!(
        !up.fake.commands().iter().any(|l| l.starts_with("AUTH")),
        "{:?}",
        up.fake.commands()
    );
    // A client AUTH= parameter is not forwarded.
    let r = c
        .smtp_command(&format!(
            "AUTH PLAIN {}",
            sasl_plain_response("", "alice", "wonderland")
        ))
        .await
        .expect("auth");
    assert_eq!(code(&r), "235");
    assert_eq!(
        code(
            &c.smtp_command("MAIL FROM:<a@x> AUTH=<admin@x>")
                .await
                .expect("mail")
        ),
        "250"
    );
    let mail = up
        .fake
        .expect_event("mail", |e| matches!(e, SmtpEvent::MailFrom(_)), WAIT)
        .await;
    assert!(
        matches!(&mail, SmtpEvent::MailFrom(m) if !m.contains("AUTH=")),
        "{mail:?}"
    );
    gw.stop().await;

    // The allow-list is enforced before the greeting.
    let yaml = RouteYaml::smtp("r", up.fake.addr())
        .allow(&["192.0.2.0/24"])
        .security("tls")
        .auth("plain")
        .yaml();
    let before = up.fake.connections();
    let gw = start(&yaml).await;
    let mut c = LineClient::connect(gw.addr("r")).await.expect("connect");
    let r = c.read_smtp_reply().await.expect("refusal");
    assert!(r[0].starts_with("554 5.7.1"), "{r:?}");
    assert_eq!(
        up.fake.connections(),
        before,
        "the upstream was contacted for a refused client"
    );
    gw.stop().await;
}

#[tokio::test]
async fn unreachable_upstream_gives_a_temporary_error() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let gw = start(
        &RouteYaml::smtp("r", closed)
            .security("none")
            .auth("cram-md5")
            .yaml(),
    )
    .await;
    // postern greets and answers EHLO itself; the upstream is tried at AUTH.
    let r = greet_ehlo_auth(&gw).await;
    assert!(r[0].starts_with("421 4.4.1"), "{r:?}");
    gw.stop().await;
}
