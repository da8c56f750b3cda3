//! USER/PASS, APOP, AUTH PLAIN and CRAM-MD5, and the advertised SASL list.

use super::*;

#[tokio::test]
async fn wrong_password_is_auth_error() {
    let fake = FakePop3::start(script()).await;
    let (mut c, _) = connect(&fake).await;
    assert!(c.command("PASS early").await.unwrap().starts_with("-ERR"));
    c.command("USER alice").await.unwrap();
    assert_eq!(
        c.command("PASS pass with").await.unwrap(),
        "-ERR [AUTH] Authentication failed"
    );
    c.command("USER bob").await.unwrap();
    assert_eq!(
        c.command("PASS pass with spaces").await.unwrap(),
        "-ERR [AUTH] Authentication failed"
    );
    drop(c);
    fake.expect_event("Closed", |e| *e == Pop3Event::Closed, WAIT)
        .await;
    let events = fake.events();
    let fails = events
        .iter()
        .filter(|e| {
            **e == Pop3Event::AuthFailed {
                method: "USER".into(),
            }
        })
        .count();
    assert_eq!(fails, 2);
    assert!(events.contains(&Pop3Event::ClosedWithoutQuit));
}

#[tokio::test]
async fn apop_login() {
    let fake = FakePop3::start(script()).await;
    let (mut c, greeting) = connect(&fake).await;
    let ts = greeting.rsplit_once(' ').unwrap().1;
    let digest = rfc1939_apop_digest(ts, "pass with spaces");

    // Upper-case hex is not what RFC 1939 §7 asks for.
    let upper = digest.to_ascii_uppercase();
    assert_eq!(
        c.command(&format!("APOP alice {upper}")).await.unwrap(),
        "-ERR [AUTH] Authentication failed"
    );
    assert_eq!(
        c.command(&format!("APOP alice {digest}")).await.unwrap(),
        "+OK logged in, 2 messages"
    );
    quit(&fake, &mut c).await;
    let events = fake.events();
    assert!(events.contains(&Pop3Event::AuthFailed {
        method: "APOP".into()
    }));
    assert!(events.contains(&Pop3Event::LoggedIn {
        method: "APOP".into(),
        tls: false
    }));
    assert!(fake.commands().contains(&"APOP alice ***".to_owned()));
}

#[tokio::test]
async fn greeting_timestamp_is_verbatim_or_absent() {
    let fake = FakePop3::start(script().greeting_timestamp(Some("<no-at-sign> x"))).await;
    let (_c, greeting) = connect(&fake).await;
    assert_eq!(greeting, "+OK fake ready <no-at-sign> x");

    let fake = FakePop3::start(script().greeting_timestamp(None)).await;
    let (mut c, greeting) = connect(&fake).await;
    assert_eq!(greeting, "+OK fake ready");
    let digest = rfc1939_apop_digest("", "pass with spaces");
    assert!(c
        .command(&format!("APOP alice {digest}"))
        .await
        .unwrap()
        .starts_with("-ERR"));
}

#[tokio::test]
async fn auth_plain_with_and_without_initial_response() {
    let fake = FakePop3::start(script()).await;
    let (mut c, _) = connect(&fake).await;

    // authzid different from authcid: refused.
    let bad = sasl_plain_response("root", "alice", "pass with spaces");
    assert_eq!(
        c.command(&format!("AUTH PLAIN {bad}")).await.unwrap(),
        "-ERR [AUTH] Authentication failed"
    );
    // Cancelled continuation.
    assert_eq!(c.command("AUTH PLAIN").await.unwrap(), "+ ");
    assert!(c.command("*").await.unwrap().starts_with("-ERR"));
    // Continuation.
    assert_eq!(c.command("AUTH PLAIN").await.unwrap(), "+ ");
    let good = sasl_plain_response("", "alice", "pass with spaces");
    assert_eq!(c.command(&good).await.unwrap(), "+OK logged in, 2 messages");
    quit(&fake, &mut c).await;

    // Initial response, authzid == authcid.
    let (mut c, _) = connect(&fake).await;
    let ir = sasl_plain_response("alice", "alice", "pass with spaces");
    assert!(c
        .command(&format!("AUTH PLAIN {ir}"))
        .await
        .unwrap()
        .starts_with("+OK"));
    quit(&fake, &mut c).await;

    let events = fake.events();
    assert!(events.contains(&Pop3Event::AuthCancelled {
        method: "PLAIN".into()
    }));
    let logins = events
        .iter()
        .filter(|e| matches!(e, Pop3Event::LoggedIn { method, .. } if method == "PLAIN"))
        .count();
    assert_eq!(logins, 2);
    assert!(fake.commands().contains(&"AUTH PLAIN ***".to_owned()));
    // The continuation line carrying the credentials is never logged.
    assert!(!fake.commands().iter().any(|c| c.contains(&good)));
}

#[tokio::test]
async fn auth_cram_md5() {
    let fake = FakePop3::start(script()).await;
    let (mut c, _) = connect(&fake).await;

    let line = c.command("AUTH CRAM-MD5").await.unwrap();
    let challenge = challenge_of(&line);
    assert!(challenge.starts_with('<') && challenge.ends_with("@fake.test>"));
    let wrong = cram_md5_response("alice", "not it", &challenge);
    assert_eq!(
        c.command(&wrong).await.unwrap(),
        "-ERR [AUTH] Authentication failed"
    );

    let line = c.command("AUTH cram-md5").await.unwrap();
    let second = challenge_of(&line);
    assert_ne!(challenge, second, "challenges must be fresh");
    // Replaying the response to the first challenge fails.
    let replay = cram_md5_response("alice", "pass with spaces", &challenge);
    assert!(c.command(&replay).await.unwrap().starts_with("-ERR"));

    let line = c.command("AUTH CRAM-MD5").await.unwrap();
    let third = challenge_of(&line);
    let right = cram_md5_response("alice", "pass with spaces", &third);
    assert!(c.command(&right).await.unwrap().starts_with("+OK"));
    quit(&fake, &mut c).await;
    assert!(fake.events().contains(&Pop3Event::LoggedIn {
        method: "CRAM-MD5".into(),
        tls: false
    }));
}

#[tokio::test]
async fn sasl_list_controls_capa_and_auth() {
    let fake = FakePop3::start(script().sasl(&["CRAM-MD5"])).await;
    let (mut c, _) = connect(&fake).await;
    c.command("CAPA").await.unwrap();
    let caps = c.read_multiline_lines().await.unwrap();
    assert!(caps.contains(&"SASL CRAM-MD5".to_owned()), "{caps:?}");
    assert!(c.command("AUTH PLAIN").await.unwrap().starts_with("-ERR"));

    let fake = FakePop3::start(script().sasl(&[]).capa(CapaBehaviour::Unsupported)).await;
    let (mut c, _) = connect(&fake).await;
    assert!(c.command("CAPA").await.unwrap().starts_with("-ERR"));
    assert!(c
        .command("AUTH CRAM-MD5")
        .await
        .unwrap()
        .starts_with("-ERR"));
}
