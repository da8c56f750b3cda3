//! The token endpoint's other grants and its checks: refresh (rotation,
//! scripted invalid_grant, revocation), client credentials (Basic and
//! form), client authentication, malformed requests, scripted 5xx,
//! delays, lifetimes.

use super::*;

/// A device-code login as the default client; returns the token JSON.
async fn login(https: &Https) -> Value {
    let dc = device_code(https, "scope-a offline_access").await;
    let resp = poll(https, dc["device_code"].as_str().unwrap()).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    resp.json()
}

#[tokio::test]
async fn refresh_without_rotation_keeps_the_token() {
    let (idp, https, _pki) = start(IdpScript::new().interval(0)).await;
    let tokens = login(&https).await;
    let rt = tokens["refresh_token"].as_str().unwrap();
    let first = tokens["access_token"].as_str().unwrap();
    for _ in 0..2 {
        let resp = refresh(&https, rt).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        let json = resp.json();
        assert!(json.get("refresh_token").is_none(), "{json}");
        assert_eq!(json["scope"], "scope-a offline_access");
        assert_ne!(json["access_token"].as_str().unwrap(), first);
    }
    assert_eq!(idp.token_requests_for(GrantType::RefreshToken), 2);
    let rts = idp.refresh_tokens();
    assert_eq!(rts.len(), 1);
    assert_eq!(rts[0].uses, 2);
    assert_eq!(rts[0].state, RefreshTokenState::Live);
    assert_eq!(rts[0].user, "alice");
    // A narrower scope may be asked for.
    let resp = https
        .token(&format!(
            "grant_type=refresh_token&client_id={DEFAULT_CLIENT_ID}&refresh_token={}&scope=scope-a",
            enc(rt)
        ))
        .await;
    assert_eq!(resp.json()["scope"], "scope-a");
    // Every access token is still valid.
    let verifier = idp.verifier();
    for t in idp.issued_access_tokens() {
        assert_eq!(verifier.user_of(&t.access_token).as_deref(), Some("alice"));
    }
    no_violations(&idp);
}

#[tokio::test]
async fn rotation_invalidates_the_old_refresh_token() {
    let (idp, https, _pki) = start(IdpScript::new().interval(0).rotate_refresh_tokens(true)).await;
    let rt0 = login(&https).await["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let json = refresh(&https, &rt0).await.json();
    let rt1 = json["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(rt0, rt1);
    let resp = refresh(&https, &rt0).await;
    assert_eq!(resp.error(), (400, "invalid_grant".to_owned()));
    assert!(resp.text().contains("rotated"));
    assert_eq!(refresh(&https, &rt1).await.status, 200);
    let states: Vec<RefreshTokenState> = idp.refresh_tokens().iter().map(|r| r.state).collect();
    assert_eq!(
        states,
        [
            RefreshTokenState::Rotated,
            RefreshTokenState::Rotated,
            RefreshTokenState::Live
        ]
    );
    assert!(idp.events().iter().any(|e| matches!(
        e,
        IdpEvent::TokensIssued {
            grant: GrantType::RefreshToken,
            refresh_token: true,
            rotated: true,
            ..
        }
    )));
    // Turned off while running: no new refresh token.
    idp.set_rotation(false);
    let rt2 = &idp.refresh_tokens()[2].refresh_token;
    assert!(refresh(&https, rt2)
        .await
        .json()
        .get("refresh_token")
        .is_none());
}

#[tokio::test]
async fn scripted_invalid_grant_revocation_and_preseeded_tokens() {
    let (idp, https, _pki) = start(IdpScript::new().interval(0)).await;
    let rt = idp.issue_refresh_token("carol@example.test");
    idp.fail_refreshes(2);
    for _ in 0..2 {
        assert_eq!(
            refresh(&https, &rt).await.error(),
            (400, "invalid_grant".to_owned())
        );
    }
    let json = refresh(&https, &rt).await.json();
    let access = json["access_token"].as_str().unwrap();
    assert_eq!(
        idp.verifier().user_of(access).as_deref(),
        Some("carol@example.test")
    );
    assert_eq!(idp.revoke_refresh_tokens("carol@example.test"), 1);
    let resp = refresh(&https, &rt).await;
    assert_eq!(resp.error().1, "invalid_grant");
    assert!(resp.text().contains("revoked"));
    assert_eq!(
        refresh(&https, "fake-rt.never-issued").await.error().1,
        "invalid_grant"
    );
    // Bound to another client: refused.
    let other = idp.issue_refresh_token_for("other-app", "carol@example.test", "s");
    assert_eq!(refresh(&https, &other).await.error().1, "invalid_grant");
    let refused = idp
        .events()
        .into_iter()
        .filter(|e| {
            matches!(e, IdpEvent::Refused { grant: Some(GrantType::RefreshToken), error, .. } if error == "invalid_grant")
        })
        .count();
    assert_eq!(refused, 5);
    assert_eq!(idp.token_requests_for(GrantType::RefreshToken), 6);
}

#[tokio::test]
async fn client_credentials_with_basic_and_with_form_fields() {
    let (idp, https, _pki) = start(
        IdpScript::new()
            .client(IdpClient::confidential("app", "s3:cr&t").app_user("scanner@example.test"))
            .client(IdpClient::confidential("no-user", "x")),
    )
    .await;
    let scope = "https://outlook.office365.com/.default";
    let form = format!("grant_type=client_credentials&scope={}", enc(scope));
    // RFC 6749 §2.3.1: Basic credentials are form-encoded first.
    let resp = https.token_basic("app", "s3%3Acr%26t", &form).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let json = resp.json();
    assert!(json.get("refresh_token").is_none());
    assert_eq!(json["scope"], scope);
    let by_basic = json["access_token"].as_str().unwrap().to_owned();

    let resp = https
        .token(&format!(
            "{form}&client_id=app&client_secret={}",
            enc("s3:cr&t")
        ))
        .await;
    assert_eq!(resp.status, 200);
    let by_form = resp.json()["access_token"].as_str().unwrap().to_owned();
    let verifier = idp.verifier();
    for t in [&by_basic, &by_form] {
        assert_eq!(verifier.user_of(t).as_deref(), Some("scanner@example.test"));
    }
    let auths: Vec<ClientAuth> = idp
        .events()
        .into_iter()
        .filter_map(|e| match e {
            IdpEvent::TokensIssued {
                grant: GrantType::ClientCredentials,
                client_auth,
                refresh_token: false,
                ..
            } => Some(client_auth),
            _ => None,
        })
        .collect();
    assert_eq!(auths, [ClientAuth::BasicHeader, ClientAuth::FormBody]);

    // No app user, or a public client: unauthorized_client.
    let resp = https.token_basic("no-user", "x", &form).await;
    assert_eq!(resp.error(), (400, "unauthorized_client".to_owned()));
    let resp = https
        .token(&format!("{form}&client_id={DEFAULT_CLIENT_ID}"))
        .await;
    assert_eq!(resp.error(), (400, "unauthorized_client".to_owned()));
    assert_eq!(idp.token_requests_for(GrantType::ClientCredentials), 4);
    no_violations(&idp);
}

#[tokio::test]
async fn client_authentication_is_checked() {
    let (idp, https, _pki) =
        start(IdpScript::new().client(IdpClient::confidential("app", "s3cret").app_user("u")))
            .await;
    let form = "grant_type=client_credentials";

    let resp = https.token_basic("app", "wrong", form).await;
    assert_eq!(resp.error(), (401, "invalid_client".to_owned()));
    assert_eq!(
        resp.header("www-authenticate"),
        Some("Basic realm=\"fake-idp\"")
    );
    let resp = https
        .token(&format!("{form}&client_id=app&client_secret=wrong"))
        .await;
    assert_eq!(resp.error(), (401, "invalid_client".to_owned()));
    assert_eq!(resp.header("www-authenticate"), None);
    let resp = https.token(&format!("{form}&client_id=app")).await;
    assert_eq!(resp.error(), (401, "invalid_client".to_owned()));
    let resp = https.token(form).await;
    assert_eq!(resp.error(), (401, "invalid_client".to_owned()));
    let resp = https.token(&format!("{form}&client_id=stranger")).await;
    assert_eq!(resp.error(), (401, "invalid_client".to_owned()));
    // A public client must not send a secret.
    let resp = https
        .token(&format!(
            "grant_type=refresh_token&refresh_token=x&client_id={DEFAULT_CLIENT_ID}&client_secret=s"
        ))
        .await;
    assert_eq!(resp.error(), (401, "invalid_client".to_owned()));
    // Basic with a different body client_id.
    let resp = https
        .token_basic("app", "s3cret", &format!("{form}&client_id=other"))
        .await;
    assert_eq!(resp.error(), (401, "invalid_client".to_owned()));
    // Basic with the same client_id in the body is fine.
    let resp = https
        .token_basic("app", "s3cret", &format!("{form}&client_id=app"))
        .await;
    assert_eq!(resp.status, 200);
    no_violations(&idp);

    // Two methods at once: invalid_request and a violation.
    let resp = https
        .token_basic("app", "s3cret", &format!("{form}&client_secret=s3cret"))
        .await;
    assert_eq!(resp.error(), (400, "invalid_request".to_owned()));
    let v = violations(&idp);
    assert!(
        v.len() == 1 && v[0].contains("both in Basic and in the body"),
        "{v:?}"
    );
    let refused_401 = idp
        .events()
        .into_iter()
        .filter(|e| matches!(e, IdpEvent::Refused { status: 401, .. }))
        .count();
    assert_eq!(refused_401, 7);
}

#[tokio::test]
async fn malformed_requests() {
    let (idp, https, _pki) = start(IdpScript::new()).await;
    // Unsupported and missing grant types.
    let resp = https
        .token(&format!(
            "grant_type=password&client_id={DEFAULT_CLIENT_ID}"
        ))
        .await;
    assert_eq!(resp.error(), (400, "unsupported_grant_type".to_owned()));
    let resp = https.token(&format!("client_id={DEFAULT_CLIENT_ID}")).await;
    assert_eq!(resp.error(), (400, "invalid_request".to_owned()));
    let resp = https
        .token(&format!(
            "grant_type=refresh_token&client_id={DEFAULT_CLIENT_ID}"
        ))
        .await;
    assert_eq!(resp.error(), (400, "invalid_request".to_owned()));
    no_violations(&idp);

    // JSON instead of a form.
    let resp = https
        .request(
            "POST",
            "/token",
            &[("Content-Type", "application/json")],
            r#"{"grant_type":"refresh_token"}"#,
        )
        .await
        .unwrap();
    assert_eq!(resp.error(), (400, "invalid_request".to_owned()));
    // A repeated parameter (RFC 6749 §3.1).
    let resp = https
        .token(&format!(
            "grant_type=refresh_token&grant_type=refresh_token&client_id={DEFAULT_CLIENT_ID}"
        ))
        .await;
    assert_eq!(resp.error(), (400, "invalid_request".to_owned()));
    let v = violations(&idp);
    assert_eq!(v.len(), 2, "{v:?}");
    assert!(v[0].contains("content type") && v[1].contains("more than once"));

    // Wrong method, unknown path.
    let resp = https.request("GET", "/token", &[], "").await.unwrap();
    assert_eq!(resp.status, 405);
    assert_eq!(resp.header("allow"), Some("POST"));
    assert_eq!(
        https.request("GET", "/nope", &[], "").await.unwrap().status,
        404
    );
    assert_eq!(
        https
            .request("GET", "/device", &[], "")
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(idp.token_requests(), 5);
    assert_eq!(
        idp.commands()[..2],
        ["POST /token".to_owned(), "POST /token".to_owned()]
    );
}

#[tokio::test]
async fn scripted_server_errors_and_delays() {
    let (idp, https, _pki) = start(IdpScript::new().interval(0)).await;
    let rt = idp.issue_refresh_token("alice");
    idp.fail_token_requests(2, 503);
    for _ in 0..2 {
        let resp = refresh(&https, &rt).await;
        assert_eq!(resp.status, 503);
        assert!(resp
            .header("content-type")
            .unwrap()
            .starts_with("text/plain"));
    }
    assert_eq!(refresh(&https, &rt).await.status, 200);
    idp.fail_token_requests(1, 500);
    assert_eq!(refresh(&https, &rt).await.status, 500);
    assert_eq!(idp.token_requests_for(GrantType::RefreshToken), 4);
    assert_eq!(
        idp.events()
            .into_iter()
            .filter(|e| matches!(
                e,
                IdpEvent::ScriptedFailure {
                    grant: Some(GrantType::RefreshToken),
                    ..
                }
            ))
            .count(),
        3
    );

    idp.set_response_delay(Duration::from_millis(300));
    let started = std::time::Instant::now();
    assert_eq!(refresh(&https, &rt).await.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn short_lifetimes_expire_and_expires_in_can_be_omitted() {
    let (idp, https, _pki) = start(
        IdpScript::new()
            .interval(0)
            .access_token_lifetime(Duration::from_secs(2))
            .access_token_len(1200),
    )
    .await;
    let tokens = login(&https).await;
    assert_eq!(tokens["expires_in"], 2);
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(access.len(), 1200);
    let verifier = idp.verifier();
    assert_eq!(verifier.user_of(access).as_deref(), Some("alice"));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(verifier.user_of(access), None);
    assert!(!idp.issued_access_tokens()[0].is_valid());

    idp.set_omit_expires_in(true);
    idp.set_access_token_lifetime(Duration::from_secs(3600));
    let json = refresh(&https, tokens["refresh_token"].as_str().unwrap())
        .await
        .json();
    assert!(json.get("expires_in").is_none(), "{json}");
    let fresh = json["access_token"].as_str().unwrap();
    assert_eq!(verifier.user_of(fresh).as_deref(), Some("alice"));
    assert_eq!(idp.revoke_access_tokens("alice"), 2);
    assert_eq!(verifier.user_of(fresh), None);

    // Minted directly, for a fake upstream.
    let minted = idp.issue_access_token("dave", Duration::from_secs(60));
    assert_eq!(minted.len(), 1200);
    assert_eq!(verifier.user_of(&minted).as_deref(), Some("dave"));
    let last = idp.issued_access_tokens().pop().unwrap();
    assert_eq!((last.grant, last.client_id), (None, None));
}
