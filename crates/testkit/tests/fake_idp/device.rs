//! The device authorization grant (RFC 8628): codes, pending polls,
//! slow_down and pace, approval, denial, expiry, redemption.

use super::*;

const SCOPE: &str = "https://outlook.office.com/POP.AccessAsUser.All offline_access";

#[tokio::test]
async fn pending_twice_then_tokens() {
    let (idp, https, _pki) = start(
        IdpScript::new()
            .interval(0)
            .pending_polls(2)
            .approve_device_as("alice@example.test"),
    )
    .await;
    let dc = device_code(&https, SCOPE).await;
    let code = dc["device_code"].as_str().unwrap();
    let user_code = dc["user_code"].as_str().unwrap();
    assert_eq!(user_code.len(), 9, "{dc}");
    assert_eq!(
        dc["verification_uri"].as_str().unwrap(),
        format!("{}/device", idp.base_url())
    );
    assert_eq!(dc["interval"], 0);
    assert_eq!(dc["expires_in"], 900);
    assert!(dc["message"].as_str().unwrap().contains(user_code));

    for _ in 0..2 {
        let resp = poll(&https, code).await;
        assert_eq!(resp.error(), (400, "authorization_pending".to_owned()));
    }
    let resp = poll(&https, code).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("cache-control"), Some("no-store"));
    let tokens = resp.json();
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["expires_in"], 3600);
    assert_eq!(tokens["scope"], SCOPE);
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(access.len(), 2000);
    assert!(tokens["refresh_token"]
        .as_str()
        .unwrap()
        .starts_with("fake-rt."));

    // Redeemed: a fourth poll is invalid_grant.
    assert_eq!(
        poll(&https, code).await.error(),
        (400, "invalid_grant".to_owned())
    );

    assert_eq!(
        poll_answers(&idp),
        [
            "authorization_pending",
            "authorization_pending",
            "tokens",
            "invalid_grant"
        ]
    );
    assert_eq!(idp.device_authorizations(), 1);
    assert_eq!(idp.token_requests(), 4);
    assert_eq!(idp.token_requests_for(GrantType::DeviceCode), 4);
    assert_eq!(idp.token_requests_for(GrantType::RefreshToken), 0);
    let issued = idp.issued_access_tokens();
    assert_eq!(issued.len(), 1);
    assert_eq!(issued[0].access_token, access);
    assert_eq!(issued[0].user, "alice@example.test");
    assert_eq!(issued[0].grant, Some(GrantType::DeviceCode));
    assert_eq!(issued[0].client_id.as_deref(), Some(DEFAULT_CLIENT_ID));
    assert!(issued[0].is_valid());
    assert_eq!(
        idp.verifier().user_of(access).as_deref(),
        Some("alice@example.test")
    );
    assert!(idp.events().contains(&IdpEvent::DeviceAuthorized {
        client_id: DEFAULT_CLIENT_ID.into(),
        scope: SCOPE.into(),
        user_code: user_code.into(),
    }));
    assert!(idp.events().contains(&IdpEvent::TokensIssued {
        grant: GrantType::DeviceCode,
        client_id: DEFAULT_CLIENT_ID.into(),
        user: "alice@example.test".into(),
        client_auth: ClientAuth::FormBody,
        refresh_token: true,
        rotated: false,
    }));
    no_violations(&idp);
    // No secret in the log.
    let log = format!("{:?}", idp.logged_events());
    assert!(!log.contains(access) && !log.contains(code));
}

#[tokio::test]
async fn slow_down_raises_the_interval_the_client_must_keep() {
    let (idp, https, _pki) = start(
        IdpScript::new()
            .interval(0)
            .slow_down(true)
            .slow_down_increment(Duration::from_millis(400)),
    )
    .await;
    let dc = device_code(&https, "").await;
    let code = dc["device_code"].as_str().unwrap();
    assert_eq!(
        poll(&https, code).await.error(),
        (400, "slow_down".to_owned())
    );
    // Too soon: answered, but a violation.
    assert_eq!(poll(&https, code).await.status, 200);
    let v = violations(&idp);
    assert!(
        v.len() == 1 && v[0].contains("the interval is 0 s"),
        "{v:?}"
    );

    // Again, but the client waits as told.
    idp.slow_down_once();
    idp.update_script(|s| s.pending_polls = 1);
    let dc = device_code(&https, "").await;
    let code = dc["device_code"].as_str().unwrap();
    assert_eq!(poll(&https, code).await.error().1, "slow_down");
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(poll(&https, code).await.error().1, "authorization_pending");
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(poll(&https, code).await.status, 200);
    assert_eq!(violations(&idp).len(), 1);
    let gaps: Vec<Option<Duration>> = idp
        .events()
        .into_iter()
        .filter_map(|e| match e {
            IdpEvent::DevicePoll { since_previous, .. } => Some(since_previous),
            _ => None,
        })
        .collect();
    assert_eq!(gaps.len(), 5);
    assert!(gaps[2].is_none() && gaps[3].unwrap() >= Duration::from_millis(400));
}

#[tokio::test]
async fn polling_faster_than_the_interval_is_a_violation() {
    let (idp, https, _pki) = start(IdpScript::new().interval(1).pending_polls(1)).await;
    let dc = device_code(&https, "").await;
    assert_eq!(dc["interval"], 1);
    let code = dc["device_code"].as_str().unwrap();
    poll(&https, code).await;
    poll(&https, code).await;
    let v = violations(&idp);
    assert!(v.len() == 1 && v[0].contains("interval is 1 s"), "{v:?}");

    // Not enforced: no violation.
    idp.update_script(|s| s.enforce_interval = false);
    let dc = device_code(&https, "").await;
    let code = dc["device_code"].as_str().unwrap();
    poll(&https, code).await;
    poll(&https, code).await;
    assert_eq!(violations(&idp).len(), 1);
}

#[tokio::test]
async fn denied_and_expired_codes() {
    let (idp, https, _pki) = start(IdpScript::new().interval(0).deny_device()).await;
    let dc = device_code(&https, "").await;
    let code = dc["device_code"].as_str().unwrap();
    assert_eq!(
        poll(&https, code).await.error(),
        (400, "access_denied".to_owned())
    );
    idp.expire_device();
    assert_eq!(poll(&https, code).await.error().1, "expired_token");

    // Expiry by lifetime, whatever the outcome.
    let (idp, https, _pki) = start(
        IdpScript::new()
            .interval(0)
            .device_code_lifetime(Duration::from_millis(300)),
    )
    .await;
    let dc = device_code(&https, "").await;
    assert_eq!(dc["expires_in"], 0);
    tokio::time::sleep(Duration::from_millis(350)).await;
    let code = dc["device_code"].as_str().unwrap();
    assert_eq!(poll(&https, code).await.error().1, "expired_token");
    assert!(idp.issued_access_tokens().is_empty());
}

#[tokio::test]
async fn held_code_is_approved_while_the_client_polls() {
    let (idp, https, _pki) = start(IdpScript::new().interval(0).hold_device()).await;
    assert_eq!(idp.script().device_outcome, DeviceOutcome::Pending);
    let dc = device_code(&https, "").await;
    let code = dc["device_code"].as_str().unwrap();
    for _ in 0..3 {
        assert_eq!(poll(&https, code).await.error().1, "authorization_pending");
    }
    idp.set_pending_polls(1);
    idp.approve_device_as("bob@example.test");
    assert_eq!(poll(&https, code).await.error().1, "authorization_pending");
    let tokens = poll(&https, code).await.json();
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(
        idp.verifier().user_of(access).as_deref(),
        Some("bob@example.test")
    );
}

#[tokio::test]
async fn codes_are_bound_to_their_client() {
    let (idp, https, _pki) = start(
        IdpScript::new()
            .interval(0)
            .client(IdpClient::confidential("app", "s3cret")),
    )
    .await;
    let dc = device_code(&https, "").await;
    let code = dc["device_code"].as_str().unwrap();
    let form = format!(
        "grant_type={}&device_code={}",
        enc(DEVICE_CODE_GRANT),
        enc(code)
    );
    let resp = https.token_basic("app", "s3cret", &form).await;
    assert_eq!(resp.error(), (400, "invalid_grant".to_owned()));
    assert_eq!(
        poll(&https, "fake-dc.unknown").await.error(),
        (400, "invalid_grant".to_owned())
    );
    // A confidential client asks for its own code with Basic.
    let resp = https
        .post_form(
            "/devicecode",
            &[("Authorization", &basic("app", "s3cret"))],
            "scope=x",
        )
        .await;
    assert_eq!(resp.status, 200);
    let own = resp.json()["device_code"].as_str().unwrap().to_owned();
    let form = format!(
        "grant_type={}&device_code={}",
        enc(DEVICE_CODE_GRANT),
        enc(&own)
    );
    assert_eq!(https.token_basic("app", "s3cret", &form).await.status, 200);
    // An unknown client gets no code.
    let resp = https
        .post_form("/devicecode", &[], "client_id=nobody&scope=x")
        .await;
    assert_eq!(resp.error(), (401, "invalid_client".to_owned()));
    assert_eq!(idp.device_authorizations(), 2);
}

#[tokio::test]
async fn offline_access_rule() {
    let (_idp, https, _pki) =
        start(IdpScript::new().interval(0).require_offline_access(true)).await;
    let dc = device_code(&https, "https://outlook.office.com/SMTP.Send").await;
    let tokens = poll(&https, dc["device_code"].as_str().unwrap())
        .await
        .json();
    assert!(tokens.get("refresh_token").is_none(), "{tokens}");
    let dc = device_code(
        &https,
        "https://outlook.office.com/SMTP.Send offline_access",
    )
    .await;
    let tokens = poll(&https, dc["device_code"].as_str().unwrap())
        .await
        .json();
    assert!(tokens["refresh_token"].is_string(), "{tokens}");
}
