//! AUTH XOAUTH2 and OAUTHBEARER: the exact wire forms, both SASL forms,
//! long response lines, and the error challenge on a refused token.

use super::*;

const USER: &str = "alice@example.test";

/// A Microsoft-sized token: its XOAUTH2 response line is over 2,500
/// octets.
fn long_token() -> String {
    format!("EwB4A{}", "x7-_Q".repeat(400))
}

fn bearer_script(token: &str) -> Pop3Script {
    script()
        .credentials(USER, "unused")
        .sasl(&["XOAUTH2", "OAUTHBEARER"])
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

fn bearer_events(fake: &FakePop3) -> Vec<BearerAttempt> {
    fake.events()
        .into_iter()
        .filter_map(|e| match e {
            Pop3Event::BearerAuth(a) => Some(a),
            _ => None,
        })
        .collect()
}

fn violations(fake: &FakePop3) -> Vec<String> {
    fake.events()
        .into_iter()
        .filter_map(|e| match e {
            Pop3Event::ClientViolation(v) => Some(v),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn xoauth2_two_line_form_with_a_long_token() {
    let token = long_token();
    let fake = FakePop3::start(bearer_script(&token)).await;
    let (mut c, _) = connect(&fake).await;
    c.command("CAPA").await.unwrap();
    let caps = c.read_multiline_lines().await.unwrap();
    assert!(
        caps.contains(&"SASL XOAUTH2 OAUTHBEARER".to_owned()),
        "{caps:?}"
    );

    assert_eq!(c.command("AUTH XOAUTH2").await.unwrap(), "+ ");
    let response = xoauth2_response(USER, &token);
    assert!(response.len() > 2500, "{}", response.len());
    assert_eq!(
        c.command(&response).await.unwrap(),
        "+OK logged in, 2 messages"
    );
    c.command("RETR 2").await.unwrap();
    assert_eq!(
        dot_unstuff(&c.read_multiline().await.unwrap()).unwrap(),
        MSG2
    );
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
    assert!(fake.events().contains(&Pop3Event::LoggedIn {
        method: "XOAUTH2".into(),
        tls: false
    }));
    no_violations(&fake);
    // The token is never logged.
    assert!(!format!("{:?}", fake.logged_events()).contains(&token));
}

#[tokio::test]
async fn initial_response_form_is_accepted_and_recorded() {
    let fake = FakePop3::start(bearer_script("short.token")).await;
    let (mut c, _) = connect(&fake).await;
    let ir = xoauth2_response(USER, "short.token");
    assert!(c
        .command(&format!("AUTH XOAUTH2 {ir}"))
        .await
        .unwrap()
        .starts_with("+OK"));
    quit(&fake, &mut c).await;
    assert_eq!(bearer_events(&fake)[0].form, SaslForm::InitialResponse);
    assert!(fake.commands().contains(&"AUTH XOAUTH2 ***".to_owned()));
    no_violations(&fake);

    // Over 255 octets on the AUTH line: accepted, but a violation.
    let token = long_token();
    let fake = FakePop3::start(bearer_script(&token)).await;
    let (mut c, _) = connect(&fake).await;
    let ir = xoauth2_response(USER, &token);
    assert!(c
        .command(&format!("AUTH XOAUTH2 {ir}"))
        .await
        .unwrap()
        .starts_with("+OK"));
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
    let fake = FakePop3::start(bearer_script(&token)).await;
    let port = fake.addr().port();

    let (mut c, _) = connect(&fake).await;
    assert_eq!(c.command("AUTH OAUTHBEARER").await.unwrap(), "+ ");
    let right = oauthbearer_response(USER, "127.0.0.1", port, &token);
    assert!(c.command(&right).await.unwrap().starts_with("+OK"));
    quit(&fake, &mut c).await;
    no_violations(&fake);

    // The wrong port is a malformed response: no challenge, straight -ERR.
    let (mut c, _) = connect(&fake).await;
    c.command("AUTH OAUTHBEARER").await.unwrap();
    let wrong = oauthbearer_response(USER, "127.0.0.1", 995, &token);
    assert_eq!(
        c.command(&wrong).await.unwrap(),
        "-ERR [AUTH] Authentication failed"
    );
    quit(&fake, &mut c).await;
    let attempts = bearer_events(&fake);
    assert!(
        matches!(&attempts[1].outcome, BearerOutcome::Malformed(w) if w.contains("port=995")),
        "{attempts:?}"
    );
    let v = violations(&fake);
    assert!(
        v.iter().any(|v| v.starts_with("OAUTHBEARER response:")),
        "{v:?}"
    );
    assert!(fake.events().contains(&Pop3Event::AuthFailed {
        method: "OAUTHBEARER".into()
    }));
}

#[tokio::test]
async fn scripted_oauthbearer_host_and_port() {
    let token = long_token();
    let fake = FakePop3::start(
        bearer_script(&token)
            .oauthbearer_host("pop.example.test")
            .oauthbearer_port(995),
    )
    .await;
    let (mut c, _) = connect(&fake).await;
    c.command("AUTH OAUTHBEARER").await.unwrap();
    let listening = oauthbearer_response(USER, "127.0.0.1", fake.addr().port(), &token);
    assert!(c.command(&listening).await.unwrap().starts_with("-ERR"));
    c.command("AUTH OAUTHBEARER").await.unwrap();
    let scripted = oauthbearer_response(USER, "pop.example.test", 995, &token);
    assert!(c.command(&scripted).await.unwrap().starts_with("+OK"));
    quit(&fake, &mut c).await;
    let attempts = bearer_events(&fake);
    assert!(
        matches!(&attempts[0].outcome, BearerOutcome::Malformed(w) if w.contains("host=pop.example.test")),
        "{attempts:?}"
    );
    assert_eq!(attempts[1].outcome, BearerOutcome::Accepted);
}

#[tokio::test]
async fn refused_token_gets_the_error_challenge() {
    let token = long_token();
    let fake = FakePop3::start(bearer_script(&token)).await;
    let (mut c, _) = connect(&fake).await;

    // XOAUTH2, unknown token: the JSON challenge, an empty line, -ERR.
    c.command("AUTH XOAUTH2").await.unwrap();
    let line = c
        .command(&xoauth2_response(USER, "expired.token"))
        .await
        .unwrap();
    assert_eq!(challenge_of(&line), DEFAULT_BEARER_ERROR);
    assert_eq!(
        c.command("").await.unwrap(),
        "-ERR [AUTH] Authentication failed"
    );
    no_violations(&fake);

    // OAUTHBEARER, right token but another user: challenge, AQ==, -ERR.
    let port = fake.addr().port();
    c.command("AUTH OAUTHBEARER").await.unwrap();
    let line = c
        .command(&oauthbearer_response(
            "bob@example.test",
            "127.0.0.1",
            port,
            &token,
        ))
        .await
        .unwrap();
    assert!(line.starts_with("+ ey"), "{line}");
    assert_eq!(
        c.command("AQ==").await.unwrap(),
        "-ERR [AUTH] Authentication failed"
    );
    no_violations(&fake);

    // The wrong dummy answer is a violation, and still -ERR.
    c.command("AUTH OAUTHBEARER").await.unwrap();
    c.command(&oauthbearer_response(USER, "127.0.0.1", port, "nope"))
        .await
        .unwrap();
    assert!(c.command("").await.unwrap().starts_with("-ERR [AUTH]"));
    let v = violations(&fake);
    assert!(
        v.len() == 1 && v[0].contains("error challenge answered with 0 octets, not \"AQ==\""),
        "{v:?}"
    );

    // Still in AUTHORIZATION: the right token logs in.
    c.command("AUTH XOAUTH2").await.unwrap();
    assert!(c
        .command(&xoauth2_response(USER, &token))
        .await
        .unwrap()
        .starts_with("+OK"));
    quit(&fake, &mut c).await;

    let outcomes: Vec<BearerOutcome> = bearer_events(&fake)
        .into_iter()
        .map(|a| a.outcome)
        .collect();
    assert!(matches!(&outcomes[0], BearerOutcome::Refused(w) if w.contains("not valid")));
    assert!(matches!(&outcomes[1], BearerOutcome::Refused(w) if w.contains("script's user")));
    assert!(matches!(&outcomes[2], BearerOutcome::Refused(_)));
    assert_eq!(outcomes[3], BearerOutcome::Accepted);
    let fails = fake
        .events()
        .into_iter()
        .filter(|e| matches!(e, Pop3Event::AuthFailed { .. }))
        .count();
    assert_eq!(fails, 3);
}

#[tokio::test]
async fn scripted_error_json_cancel_and_no_verifier() {
    let json = r#"{"status":"400","schemes":"Bearer","scope":"https://mail.google.com/"}"#;
    let fake = FakePop3::start(
        script()
            .credentials(USER, "unused")
            .sasl(&["XOAUTH2"])
            .bearer_error(json),
    )
    .await;
    let (mut c, _) = connect(&fake).await;
    // OAUTHBEARER is not listed.
    assert!(c
        .command("AUTH OAUTHBEARER")
        .await
        .unwrap()
        .starts_with("-ERR"));
    // Cancelling at the prompt.
    c.command("AUTH XOAUTH2").await.unwrap();
    assert!(c.command("*").await.unwrap().starts_with("-ERR"));
    // No verifier: every token is refused, with the scripted JSON.
    c.command("AUTH XOAUTH2").await.unwrap();
    let line = c.command(&xoauth2_response(USER, "any")).await.unwrap();
    assert_eq!(challenge_of(&line), json);
    assert!(c.command("").await.unwrap().starts_with("-ERR"));
    // Not base64: malformed, straight -ERR.
    c.command("AUTH XOAUTH2").await.unwrap();
    assert!(c.command("!!").await.unwrap().starts_with("-ERR [AUTH]"));
    quit(&fake, &mut c).await;

    let events = fake.events();
    assert!(events.contains(&Pop3Event::AuthCancelled {
        method: "XOAUTH2".into()
    }));
    let attempts = bearer_events(&fake);
    assert!(
        matches!(&attempts[0].outcome, BearerOutcome::Refused(w) if w.contains("no bearer verifier"))
    );
    assert_eq!(
        attempts[1],
        BearerAttempt {
            mechanism: BearerMechanism::XOAuth2,
            form: SaslForm::Continuation,
            user: None,
            outcome: BearerOutcome::Malformed("not base64".into()),
        }
    );
}

#[tokio::test]
async fn bearer_login_over_tls_with_the_idp_shape_of_verifier() {
    let pki = TestPki::new();
    // A verifier as a test would build one by hand: any token ending in
    // "-alice" is alice's.
    let verifier = BearerVerifier::new(|t| t.ends_with("-alice").then(|| USER.to_owned()));
    let fake = FakePop3::start(
        script()
            .credentials(USER, "unused")
            .sasl(&["XOAUTH2"])
            .bearer(verifier)
            .security(FakeSecurity::Tls(pki.server_config())),
    )
    .await;
    let mut c = LineClient::connect_tls(fake.addr(), pki.client_config(), "localhost")
        .await
        .unwrap();
    c.read_line().await.unwrap();
    c.command("AUTH XOAUTH2").await.unwrap();
    assert!(c
        .command(&xoauth2_response(USER, "t0k3n-alice"))
        .await
        .unwrap()
        .starts_with("+OK"));
    quit(&fake, &mut c).await;
    assert!(fake.events().contains(&Pop3Event::LoggedIn {
        method: "XOAUTH2".into(),
        tls: true
    }));
    no_violations(&fake);
}

#[tokio::test]
async fn someone_elses_valid_token_is_refused() {
    let fake = FakePop3::start(bearer_script(&long_token())).await;
    let (mut c, _) = connect(&fake).await;
    // bob's valid token, presented as the script's user.
    c.command("AUTH XOAUTH2").await.unwrap();
    let line = c
        .command(&xoauth2_response(USER, "bobs.token"))
        .await
        .unwrap();
    assert_eq!(challenge_of(&line), DEFAULT_BEARER_ERROR);
    assert!(c.command("").await.unwrap().starts_with("-ERR [AUTH]"));
    // bob's valid token as bob, who is not the script's user.
    c.command("AUTH XOAUTH2").await.unwrap();
    c.command(&xoauth2_response("bob@example.test", "bobs.token"))
        .await
        .unwrap();
    assert!(c.command("").await.unwrap().starts_with("-ERR [AUTH]"));
    quit(&fake, &mut c).await;
    let attempts = bearer_events(&fake);
    assert!(
        matches!(&attempts[0].outcome, BearerOutcome::Refused(w) if w.contains("belongs to \"bob@example.test\"")),
        "{attempts:?}"
    );
    assert!(
        matches!(&attempts[1].outcome, BearerOutcome::Refused(w) if w.contains("script's user"))
    );
    assert!(!fake
        .events()
        .iter()
        .any(|e| matches!(e, Pop3Event::LoggedIn { .. })));
    no_violations(&fake);
}
