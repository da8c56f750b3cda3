//! AUTHENTICATE XOAUTH2 and OAUTHBEARER: the exact wire forms, SASL-IR
//! and continuation, long tokens, and the error challenge on a refused
//! token.

use super::*;

const USER: &str = "alice@example.test";

/// A Microsoft-sized token: its XOAUTH2 response is over 2,500 octets.
fn long_token() -> String {
    format!("EwB4A{}", "x7-_Q".repeat(400))
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

fn bearer_script(token: &str) -> ImapScript {
    script()
        .credentials(USER, "unused")
        .mechanisms(&["XOAUTH2", "OAUTHBEARER"])
        .bearer(two_users(token))
}

fn bearer_events(fake: &FakeImap) -> Vec<BearerAttempt> {
    fake.events()
        .into_iter()
        .filter_map(|e| match e {
            ImapEvent::BearerAuth(a) => Some(a),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn xoauth2_initial_response_with_a_long_token() {
    let token = long_token();
    let fake = FakeImap::start(bearer_script(&token)).await;
    let (mut c, greeting) = connect(&fake).await;
    let caps = caps_in(&greeting);
    assert!(caps.contains(&"AUTH=XOAUTH2".to_owned()), "{caps:?}");
    assert!(caps.contains(&"AUTH=OAUTHBEARER".to_owned()), "{caps:?}");
    let ir = xoauth2_response(USER, &token);
    assert!(ir.len() > 2500, "{}", ir.len());
    let response = cmd(&mut c, &format!("a AUTHENTICATE XOAUTH2 {ir}")).await;
    assert!(response.starts_with("a OK [CAPABILITY "), "{response}");
    logout(&fake, &mut c).await;

    assert_eq!(
        bearer_events(&fake),
        [BearerAttempt {
            mechanism: BearerMechanism::XOAuth2,
            form: SaslForm::InitialResponse,
            user: Some(USER.into()),
            outcome: BearerOutcome::Accepted,
        }]
    );
    assert_eq!(
        logged_in(&fake),
        [ImapEvent::LoggedIn {
            mechanism: "AUTHENTICATE XOAUTH2".into(),
            user: USER.into(),
            initial_response: true,
            tls: false
        }]
    );
    assert!(!format!("{:?}", fake.logged_events()).contains(&token));
    no_violations(&fake);
}

#[tokio::test]
async fn oauthbearer_continuation_checks_host_and_port() {
    let token = long_token();
    let fake = FakeImap::start(bearer_script(&token)).await;
    let port = fake.addr().port();
    let (mut c, _) = connect(&fake).await;

    // Wrong host: malformed, no error challenge, NO at once.
    assert_eq!(c.command("a AUTHENTICATE OAUTHBEARER").await.unwrap(), "+ ");
    let wrong = oauthbearer_response(USER, "localhost", port, &token);
    assert_eq!(
        reply(&mut c, "a", &wrong).await,
        "a NO [AUTHENTICATIONFAILED] Authentication failed\r\n"
    );
    // Not base64 at all: BAD.
    c.command("b AUTHENTICATE OAUTHBEARER").await.unwrap();
    assert_eq!(
        reply(&mut c, "b", "!!").await,
        "b BAD Invalid base64 in SASL response\r\n"
    );
    assert_eq!(c.command("c AUTHENTICATE OAUTHBEARER").await.unwrap(), "+ ");
    let right = oauthbearer_response(USER, "127.0.0.1", port, &token);
    assert!(reply(&mut c, "c", &right).await.starts_with("c OK "));
    logout(&fake, &mut c).await;

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
    assert!(attempts.iter().all(|a| a.form == SaslForm::Continuation));
    let v = violations(&fake);
    assert_eq!(v.len(), 2, "{v:?}");
    assert!(v.iter().all(|v| v.starts_with("OAUTHBEARER response:")));
    assert_eq!(
        logged_in(&fake),
        [ImapEvent::LoggedIn {
            mechanism: "AUTHENTICATE OAUTHBEARER".into(),
            user: USER.into(),
            initial_response: false,
            tls: false
        }]
    );
}

#[tokio::test]
async fn refused_token_gets_the_error_challenge() {
    let token = long_token();
    let fake = FakeImap::start(bearer_script(&token)).await;
    let port = fake.addr().port();
    let (mut c, _) = connect(&fake).await;

    // XOAUTH2 initial response with an unknown token: JSON challenge,
    // empty dummy response, then NO.
    let ir = xoauth2_response(USER, "expired");
    let line = c
        .command(&format!("a AUTHENTICATE XOAUTH2 {ir}"))
        .await
        .unwrap();
    assert_eq!(challenge_of(&line), DEFAULT_BEARER_ERROR);
    assert_eq!(
        reply(&mut c, "a", "").await,
        "a NO [AUTHENTICATIONFAILED] Authentication failed\r\n"
    );
    no_violations(&fake);

    // OAUTHBEARER with someone else's name; dummy response AQ==.
    c.command("b AUTHENTICATE OAUTHBEARER").await.unwrap();
    let other = oauthbearer_response("bob@example.test", "127.0.0.1", port, &token);
    let line = c.command(&other).await.unwrap();
    assert_eq!(challenge_of(&line), DEFAULT_BEARER_ERROR);
    assert!(reply(&mut c, "b", "AQ==")
        .await
        .starts_with("b NO [AUTHENTICATIONFAILED]"));
    no_violations(&fake);

    // XOAUTH2 answered with OAUTHBEARER's dummy: a violation.
    c.command("c AUTHENTICATE XOAUTH2").await.unwrap();
    c.command(&xoauth2_response(USER, "bobs.token"))
        .await
        .unwrap();
    assert!(reply(&mut c, "c", "AQ==").await.starts_with("c NO "));
    let v = violations(&fake);
    assert!(
        v.len() == 1 && v[0].contains("XOAUTH2 error challenge answered with 4 octets, not \"\""),
        "{v:?}"
    );

    // Still not logged in; the right token works.
    assert_eq!(
        cmd(&mut c, "d SELECT INBOX").await,
        "d BAD Log in first\r\n"
    );
    let ir = xoauth2_response(USER, &token);
    assert!(cmd(&mut c, &format!("e AUTHENTICATE XOAUTH2 {ir}"))
        .await
        .starts_with("e OK "));
    logout(&fake, &mut c).await;

    let attempts = bearer_events(&fake);
    let forms: Vec<SaslForm> = attempts.iter().map(|a| a.form).collect();
    assert_eq!(
        forms,
        [
            SaslForm::InitialResponse,
            SaslForm::Continuation,
            SaslForm::Continuation,
            SaslForm::InitialResponse
        ]
    );
    assert!(matches!(&attempts[0].outcome, BearerOutcome::Refused(w) if w.contains("not valid")));
    assert!(
        matches!(&attempts[1].outcome, BearerOutcome::Refused(w) if w.contains("script's user"))
    );
    assert!(
        matches!(&attempts[2].outcome, BearerOutcome::Refused(w) if w.contains("belongs to \"bob@example.test\""))
    );
    assert_eq!(attempts[3].outcome, BearerOutcome::Accepted);
    let failed = fake
        .events()
        .into_iter()
        .filter(|e| matches!(e, ImapEvent::AuthFailed { .. }))
        .count();
    assert_eq!(failed, 3);
}

#[tokio::test]
async fn scripted_error_json_cancel_and_no_verifier_over_implicit_tls() {
    let pki = TestPki::new();
    let json = r#"{"status":"400","schemes":"Bearer","scope":"https://mail.google.com/"}"#;
    let fake = FakeImap::start(
        script()
            .credentials(USER, "unused")
            .mechanisms(&["XOAUTH2"])
            .bearer_error(json)
            .security(FakeSecurity::Tls(pki.server_config())),
    )
    .await;
    let mut c = LineClient::connect_tls(fake.addr(), pki.client_config(), "localhost")
        .await
        .unwrap();
    c.read_line().await.unwrap();
    assert_eq!(
        cmd(&mut c, "a AUTHENTICATE OAUTHBEARER").await,
        "a NO Unsupported authentication mechanism\r\n"
    );
    c.command("b AUTHENTICATE XOAUTH2").await.unwrap();
    assert_eq!(
        reply(&mut c, "b", "*").await,
        "b BAD Authentication cancelled\r\n"
    );
    // No verifier in the script: refused, with the scripted JSON.
    let line = c
        .command(&format!(
            "c AUTHENTICATE XOAUTH2 {}",
            xoauth2_response(USER, "any")
        ))
        .await
        .unwrap();
    assert_eq!(challenge_of(&line), json);
    assert!(reply(&mut c, "c", "")
        .await
        .starts_with("c NO [AUTHENTICATIONFAILED]"));
    logout(&fake, &mut c).await;

    assert!(fake.events().contains(&ImapEvent::AuthCancelled {
        mechanism: "AUTHENTICATE XOAUTH2".into()
    }));
    let attempts = bearer_events(&fake);
    assert!(
        matches!(&attempts[..], [BearerAttempt { outcome: BearerOutcome::Refused(w), .. }] if w.contains("no bearer verifier")),
        "{attempts:?}"
    );
    no_violations(&fake);
}
