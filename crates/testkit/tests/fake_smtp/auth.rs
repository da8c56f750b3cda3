//! AUTH PLAIN, LOGIN and CRAM-MD5, and the advertised mechanism list.

use super::*;

#[tokio::test]
async fn auth_plain_ok_and_failures() {
    let fake = FakeSmtp::start(script()).await;
    let mut c = connect(&fake).await;
    ehlo(&mut c).await;

    let wrong = sasl_plain_response("", "alice", "not it");
    assert_eq!(
        c.command(&format!("AUTH PLAIN {wrong}")).await.unwrap(),
        "535 5.7.8 Authentication credentials invalid"
    );
    // authzid differing from authcid is refused.
    let other = sasl_plain_response("root", "alice", PASSWORD);
    assert_eq!(
        c.command(&format!("AUTH PLAIN {other}")).await.unwrap(),
        "535 5.7.8 Authentication credentials invalid"
    );
    assert_eq!(
        c.command("AUTH PLAIN !!!").await.unwrap(),
        "501 5.5.2 Cannot decode response"
    );
    assert_eq!(c.command("AUTH PLAIN").await.unwrap(), "334 ");
    assert_eq!(
        c.command("*").await.unwrap(),
        "501 5.7.0 Authentication cancelled"
    );
    // Continuation form.
    assert_eq!(c.command("auth plain").await.unwrap(), "334 ");
    let good = sasl_plain_response("alice", "alice", PASSWORD);
    assert_eq!(
        c.command(&good).await.unwrap(),
        "235 2.7.0 Authentication successful"
    );
    assert_eq!(
        c.command("AUTH PLAIN =").await.unwrap(),
        "503 5.5.1 Already authenticated"
    );
    quit(&fake, &mut c).await;

    // Initial-response form.
    let mut c = connect(&fake).await;
    ehlo(&mut c).await;
    login(&mut c).await;
    quit(&fake, &mut c).await;

    let events = fake.events();
    let oks = events
        .iter()
        .filter(|e| {
            **e == SmtpEvent::AuthOk {
                mechanism: "PLAIN".into(),
                tls: false,
            }
        })
        .count();
    assert_eq!(oks, 2);
    let fails = events
        .iter()
        .filter(|e| matches!(e, SmtpEvent::AuthFailed { mechanism } if mechanism == "PLAIN"))
        .count();
    assert_eq!(fails, 3);
    assert!(events.contains(&SmtpEvent::AuthCancelled {
        mechanism: "PLAIN".into()
    }));
    let commands = fake.commands();
    assert!(commands.contains(&"AUTH PLAIN ***".to_owned()));
    assert!(commands.contains(&"auth plain".to_owned()));
    // Neither initial responses nor continuation lines are logged.
    assert!(!commands.iter().any(|c| c.contains(&good) || c == "*"));
    assert!(!format!("{events:?}").contains(PASSWORD));
}

#[tokio::test]
async fn auth_login_with_and_without_initial_response() {
    let fake = FakeSmtp::start(script()).await;
    let mut c = connect(&fake).await;
    ehlo(&mut c).await;

    assert_eq!(c.command("AUTH LOGIN").await.unwrap(), "334 VXNlcm5hbWU6");
    assert_eq!(
        c.command(&login_base64("alice")).await.unwrap(),
        "334 UGFzc3dvcmQ6"
    );
    assert_eq!(
        c.command(&login_base64("wrong")).await.unwrap(),
        "535 5.7.8 Authentication credentials invalid"
    );
    // Cancel at the password prompt.
    let ir = login_base64("alice");
    assert_eq!(
        c.command(&format!("AUTH LOGIN {ir}")).await.unwrap(),
        "334 UGFzc3dvcmQ6"
    );
    assert_eq!(
        c.command("*").await.unwrap(),
        "501 5.7.0 Authentication cancelled"
    );
    // Initial response carries the user name.
    assert_eq!(
        c.command(&format!("AUTH LOGIN {ir}")).await.unwrap(),
        "334 UGFzc3dvcmQ6"
    );
    assert_eq!(
        c.command(&login_base64(PASSWORD)).await.unwrap(),
        "235 2.7.0 Authentication successful"
    );
    quit(&fake, &mut c).await;

    let mut c = connect(&fake).await;
    ehlo(&mut c).await;
    c.command("AUTH LOGIN").await.unwrap();
    c.command(&login_base64("alice")).await.unwrap();
    assert_eq!(
        c.command(&login_base64(PASSWORD)).await.unwrap(),
        "235 2.7.0 Authentication successful"
    );
    quit(&fake, &mut c).await;

    let events = fake.events();
    assert!(events.contains(&SmtpEvent::AuthFailed {
        mechanism: "LOGIN".into()
    }));
    assert!(events.contains(&SmtpEvent::AuthCancelled {
        mechanism: "LOGIN".into()
    }));
    let oks = events
        .iter()
        .filter(|e| matches!(e, SmtpEvent::AuthOk { mechanism, .. } if mechanism == "LOGIN"))
        .count();
    assert_eq!(oks, 2);
    assert!(fake.commands().contains(&"AUTH LOGIN ***".to_owned()));
    assert!(!fake.commands().iter().any(|c| c.contains(&ir)));
}

#[tokio::test]
async fn auth_cram_md5_fresh_challenges() {
    let fake = FakeSmtp::start(script()).await;
    let mut c = connect(&fake).await;
    ehlo(&mut c).await;

    let first = challenge_of(&c.command("AUTH CRAM-MD5").await.unwrap());
    assert!(first.starts_with('<') && first.ends_with("@fake.test>"));
    let wrong = cram_md5_response("alice", "not it", &first);
    assert_eq!(
        c.command(&wrong).await.unwrap(),
        "535 5.7.8 Authentication credentials invalid"
    );
    let second = challenge_of(&c.command("AUTH cram-md5").await.unwrap());
    assert_ne!(first, second, "challenges must be fresh");
    // The right answer to an old challenge is a replay.
    let replay = cram_md5_response("alice", PASSWORD, &first);
    assert!(c.command(&replay).await.unwrap().starts_with("535 "));
    // No initial response in CRAM-MD5.
    assert!(c
        .command("AUTH CRAM-MD5 abc")
        .await
        .unwrap()
        .starts_with("501 "));
    let third = challenge_of(&c.command("AUTH CRAM-MD5").await.unwrap());
    let right = cram_md5_response("alice", PASSWORD, &third);
    assert_eq!(
        c.command(&right).await.unwrap(),
        "235 2.7.0 Authentication successful"
    );
    quit(&fake, &mut c).await;
    assert!(fake.events().contains(&SmtpEvent::AuthOk {
        mechanism: "CRAM-MD5".into(),
        tls: false
    }));
}

#[tokio::test]
async fn mechanism_list_controls_ehlo_and_auth() {
    let fake = FakeSmtp::start(script().auth_mechanisms(&["CRAM-MD5"])).await;
    let mut c = connect(&fake).await;
    assert_eq!(ehlo(&mut c).await.last().unwrap(), "250 AUTH CRAM-MD5");
    assert_eq!(
        c.command("AUTH PLAIN =").await.unwrap(),
        "504 5.5.4 Unrecognized authentication type"
    );

    let fake = FakeSmtp::start(script().auth_mechanisms(&[]).require_auth(false)).await;
    let mut c = connect(&fake).await;
    let caps = ehlo(&mut c).await;
    assert!(!caps.iter().any(|l| l.contains("AUTH")), "{caps:?}");
    assert!(c.command("AUTH PLAIN =").await.unwrap().starts_with("502 "));
    assert_eq!(
        c.command("MAIL FROM:<a@x.test>").await.unwrap(),
        "250 2.1.0 Ok"
    );
    // AUTH= needs the AUTH extension (RFC 4954 §5).
    c.command("RSET").await.unwrap();
    assert!(c
        .command("MAIL FROM:<a@x.test> AUTH=<>")
        .await
        .unwrap()
        .starts_with("555 5.5.4"));
}
