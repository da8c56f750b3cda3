//! AUTH XOAUTH2 and OAUTHBEARER: the exact wire forms, initial response or
//! `334` continuation, long response lines, and the error challenge on a
//! refused token.

use super::*;

const USER: &str = "scanner@example.test";

/// A Microsoft-sized token: its XOAUTH2 response line is over 2,500
/// octets.
fn long_token() -> String {
    format!("EwB4A{}", "x7-_Q".repeat(400))
}

fn bearer_script(token: &str) -> SmtpScript {
    script()
        .credentials(USER, "unused")
        .auth_mechanisms(&["XOAUTH2", "OAUTHBEARER"])
        .bearer(two_users(token))
}

/// `token` is USER's; `bobs.token` is bob's.
fn two_users(token: &str) -> BearerVerifier {
    let token = token.to_owned();
    BearerVerifier::new(move |t| match t {
        "bobs.token" => Some("bob@example.test".to_owned()),
        t if t == token => Some(USER.to_owned()),
        _ => None,
    })
}

fn bearer_events(fake: &FakeSmtp) -> Vec<BearerAttempt> {
    fake.events()
        .into_iter()
        .filter_map(|e| match e {
            SmtpEvent::BearerAuth(a) => Some(a),
            _ => None,
        })
        .collect()
}

fn violations(fake: &FakeSmtp) -> Vec<String> {
    fake.events()
        .into_iter()
        .filter_map(|e| match e {
            SmtpEvent::ClientViolation(v) => Some(v),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn xoauth2_continuation_with_a_long_token_then_mail() {
    let token = long_token();
    let fake = FakeSmtp::start(bearer_script(&token)).await;
    let mut c = connect(&fake).await;
    let caps = ehlo(&mut c).await;
    assert!(
        caps.contains(&"250 AUTH XOAUTH2 OAUTHBEARER".to_owned()),
        "{caps:?}"
    );
    assert_eq!(c.command("AUTH XOAUTH2").await.unwrap(), "334 ");
    let response = xoauth2_response(USER, &token);
    assert!(response.len() > 2500, "{}", response.len());
    assert_eq!(
        c.command(&response).await.unwrap(),
        "235 2.7.0 Authentication successful"
    );
    open_data(&mut c, "r@x.test").await;
    c.send_raw(b"Subject: oauth\r\n\r\nhi\r\n.\r\n")
        .await
        .unwrap();
    assert!(c.read_line().await.unwrap().starts_with("250 "));
    quit(&fake, &mut c).await;

    assert_eq!(
        bearer_events(&fake),
        [BearerAttempt {
            mechanism: BearerMechanism::XOAuth2,
            form: SaslForm::Continuation,
            user: Some(USER.into()),
            outcome: BearerOutcome::Accepted,
        }]
    );
    assert!(fake.events().contains(&SmtpEvent::AuthOk {
        mechanism: "XOAUTH2".into(),
        tls: false
    }));
    assert_eq!(fake.messages()[0].auth_user.as_deref(), Some(USER));
    no_violations(&fake);
    assert!(!format!("{:?}", fake.logged_events()).contains(&token));
}

#[tokio::test]
async fn initial_response_when_it_fits_and_a_violation_when_not() {
    let fake = FakeSmtp::start(bearer_script("short.token")).await;
    let mut c = connect(&fake).await;
    ehlo(&mut c).await;
    let ir = xoauth2_response(USER, "short.token");
    assert_eq!(
        c.command(&format!("AUTH XOAUTH2 {ir}")).await.unwrap(),
        "235 2.7.0 Authentication successful"
    );
    quit(&fake, &mut c).await;
    assert_eq!(bearer_events(&fake)[0].form, SaslForm::InitialResponse);
    assert!(fake.commands().contains(&"AUTH XOAUTH2 ***".to_owned()));
    no_violations(&fake);

    // A 600-octet AUTH line: RFC 4954 §4 says continuation. Accepted, but
    // a violation. (Over 2048 octets the fake ends the session.)
    let token = "t".repeat(400);
    let fake = FakeSmtp::start(bearer_script(&token)).await;
    let mut c = connect(&fake).await;
    ehlo(&mut c).await;
    let ir = xoauth2_response(USER, &token);
    assert_eq!(
        c.command(&format!("AUTH XOAUTH2 {ir}")).await.unwrap(),
        "235 2.7.0 Authentication successful"
    );
    quit(&fake, &mut c).await;
    let v = violations(&fake);
    assert!(
        v.len() == 1 && v[0].contains("with an initial response"),
        "{v:?}"
    );
}

#[tokio::test]
async fn oauthbearer_checks_host_and_port() {
    let token = long_token();
    let fake = FakeSmtp::start(bearer_script(&token)).await;
    let port = fake.addr().port();
    let mut c = connect(&fake).await;
    ehlo(&mut c).await;

    // Wrong host: malformed, no challenge, 535 at once.
    assert_eq!(c.command("AUTH OAUTHBEARER").await.unwrap(), "334 ");
    let wrong = oauthbearer_response(USER, "localhost", port, &token);
    assert_eq!(
        c.command(&wrong).await.unwrap(),
        "535 5.7.8 Authentication unsuccessful"
    );
    // Not base64 at all: 501, as for any mechanism.
    c.command("AUTH OAUTHBEARER").await.unwrap();
    assert_eq!(
        c.command("!!").await.unwrap(),
        "501 5.5.2 Cannot decode response"
    );
    assert_eq!(c.command("AUTH OAUTHBEARER").await.unwrap(), "334 ");
    let right = oauthbearer_response(USER, "127.0.0.1", port, &token);
    assert_eq!(
        c.command(&right).await.unwrap(),
        "235 2.7.0 Authentication successful"
    );
    quit(&fake, &mut c).await;

    let attempts = bearer_events(&fake);
    assert!(
        matches!(&attempts[0].outcome, BearerOutcome::Malformed(w) if w.contains("host=localhost")),
        "{attempts:?}"
    );
    assert_eq!(
        attempts[1].outcome,
        BearerOutcome::Malformed("not base64".into())
    );
    assert_eq!(attempts[2].outcome, BearerOutcome::Accepted);
    let v = violations(&fake);
    assert_eq!(v.len(), 2, "{v:?}");
    assert!(v.iter().all(|v| v.starts_with("OAUTHBEARER response:")));
    assert!(fake.events().contains(&SmtpEvent::AuthOk {
        mechanism: "OAUTHBEARER".into(),
        tls: false
    }));
}

#[tokio::test]
async fn refused_token_gets_the_error_challenge() {
    let token = long_token();
    let fake = FakeSmtp::start(bearer_script(&token)).await;
    let port = fake.addr().port();
    let mut c = connect(&fake).await;
    ehlo(&mut c).await;

    // XOAUTH2 initial response with an unknown token.
    let ir = xoauth2_response(USER, "expired");
    let line = c.command(&format!("AUTH XOAUTH2 {ir}")).await.unwrap();
    assert_eq!(challenge_of(&line), DEFAULT_BEARER_ERROR);
    assert_eq!(
        c.command("").await.unwrap(),
        "535 5.7.8 Authentication unsuccessful"
    );
    no_violations(&fake);

    // OAUTHBEARER continuation, someone else's name.
    c.command("AUTH OAUTHBEARER").await.unwrap();
    let other = oauthbearer_response("bob@example.test", "127.0.0.1", port, &token);
    let line = c.command(&other).await.unwrap();
    assert_eq!(challenge_of(&line), DEFAULT_BEARER_ERROR);
    assert_eq!(
        c.command("AQ==").await.unwrap(),
        "535 5.7.8 Authentication unsuccessful"
    );
    no_violations(&fake);

    // XOAUTH2 answered with OAUTHBEARER's dummy: a violation.
    c.command("AUTH XOAUTH2").await.unwrap();
    c.command(&xoauth2_response(USER, "nope")).await.unwrap();
    assert!(c.command("AQ==").await.unwrap().starts_with("535 "));
    let v = violations(&fake);
    assert!(
        v.len() == 1 && v[0].contains("XOAUTH2 error challenge answered with 4 octets, not \"\""),
        "{v:?}"
    );

    // MAIL still needs AUTH; then the right token works.
    assert!(c
        .command("MAIL FROM:<s@x.test>")
        .await
        .unwrap()
        .starts_with("530"));
    c.command("AUTH XOAUTH2").await.unwrap();
    assert!(c
        .command(&xoauth2_response(USER, &token))
        .await
        .unwrap()
        .starts_with("235 "));
    quit(&fake, &mut c).await;

    let attempts = bearer_events(&fake);
    let forms: Vec<SaslForm> = attempts.iter().map(|a| a.form).collect();
    assert_eq!(
        forms,
        [
            SaslForm::InitialResponse,
            SaslForm::Continuation,
            SaslForm::Continuation,
            SaslForm::Continuation
        ]
    );
    assert!(matches!(&attempts[0].outcome, BearerOutcome::Refused(w) if w.contains("not valid")));
    assert!(
        matches!(&attempts[1].outcome, BearerOutcome::Refused(w) if w.contains("script's user"))
    );
    assert_eq!(attempts[3].outcome, BearerOutcome::Accepted);
    let fails = fake
        .events()
        .into_iter()
        .filter(|e| matches!(e, SmtpEvent::AuthFailed { .. }))
        .count();
    assert_eq!(fails, 3);
}

#[tokio::test]
async fn cancel_and_scripted_error_json_over_starttls() {
    let pki = TestPki::new();
    let json = r#"{"status":"400","schemes":"Bearer","scope":"https://mail.google.com/"}"#;
    let fake = FakeSmtp::start(
        script()
            .credentials(USER, "unused")
            .auth_mechanisms(&["XOAUTH2"])
            .auth_only_after_tls(true)
            .bearer_error(json)
            .security(FakeSecurity::Starttls(pki.server_config())),
    )
    .await;
    let mut c = connect(&fake).await;
    let caps = ehlo(&mut c).await;
    assert!(!caps.iter().any(|l| l.contains("AUTH")), "{caps:?}");
    assert!(c.command("STARTTLS").await.unwrap().starts_with("220 "));
    c.upgrade_tls(pki.client_config(), "localhost")
        .await
        .unwrap();
    ehlo(&mut c).await;
    assert_eq!(
        c.command("AUTH OAUTHBEARER").await.unwrap(),
        "504 5.5.4 Unrecognized authentication type"
    );
    c.command("AUTH XOAUTH2").await.unwrap();
    assert_eq!(
        c.command("*").await.unwrap(),
        "501 5.7.0 Authentication cancelled"
    );
    // No verifier in the script: refused, with the scripted JSON.
    c.command("AUTH XOAUTH2").await.unwrap();
    let line = c.command(&xoauth2_response(USER, "any")).await.unwrap();
    assert_eq!(challenge_of(&line), json);
    assert!(c.command("").await.unwrap().starts_with("535 "));
    quit(&fake, &mut c).await;

    assert!(fake.events().contains(&SmtpEvent::AuthCancelled {
        mechanism: "XOAUTH2".into()
    }));
    let attempts = bearer_events(&fake);
    assert!(
        matches!(&attempts[..], [BearerAttempt { outcome: BearerOutcome::Refused(w), .. }] if w.contains("no bearer verifier"))
    );
    no_violations(&fake);
}

#[tokio::test]
async fn someone_elses_valid_token_is_refused() {
    let fake = FakeSmtp::start(bearer_script(&long_token())).await;
    let mut c = connect(&fake).await;
    ehlo(&mut c).await;
    let ir = xoauth2_response(USER, "bobs.token");
    let line = c.command(&format!("AUTH XOAUTH2 {ir}")).await.unwrap();
    assert_eq!(challenge_of(&line), DEFAULT_BEARER_ERROR);
    assert_eq!(
        c.command("").await.unwrap(),
        "535 5.7.8 Authentication unsuccessful"
    );
    quit(&fake, &mut c).await;
    let attempts = bearer_events(&fake);
    assert!(
        matches!(&attempts[..], [BearerAttempt { outcome: BearerOutcome::Refused(w), .. }] if w.contains("belongs to \"bob@example.test\"")),
        "{attempts:?}"
    );
    assert!(!fake
        .events()
        .iter()
        .any(|e| matches!(e, SmtpEvent::AuthOk { .. })));
    no_violations(&fake);
}
