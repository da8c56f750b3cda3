//! Token introspection (RFC 7662), as Dovecot's `passdb oauth2` uses it.

use super::*;

#[tokio::test]
async fn post_form_without_and_with_client_auth() {
    let (idp, https, _pki) =
        start(IdpScript::new().client(IdpClient::confidential("dovecot", "d0v3"))).await;
    let token = idp.issue_access_token("alice@example.test", Duration::from_secs(60));

    // Dovecot's introspection_mode = post: a form with the token only.
    let resp = https
        .post_form("/introspect", &[], &format!("token={}", enc(&token)))
        .await;
    assert_eq!(resp.status, 200);
    let json = resp.json();
    assert_eq!(json["active"], true);
    assert_eq!(json["sub"], "alice@example.test");
    assert_eq!(json["username"], "alice@example.test");
    assert_eq!(json["email"], "alice@example.test");
    assert_eq!(json["token_type"], "Bearer");
    let exp = json["exp"].as_u64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!((now + 55..=now + 61).contains(&exp), "{exp} vs {now}");

    // With Basic client credentials.
    let auth = basic("dovecot", "d0v3");
    let resp = https
        .post_form(
            "/introspect",
            &[("Authorization", &auth)],
            &format!("token={}", enc(&token)),
        )
        .await;
    assert_eq!(resp.json()["active"], true);
    // Wrong ones are refused rather than ignored.
    let auth = basic("dovecot", "wrong");
    let resp = https
        .post_form(
            "/introspect",
            &[("Authorization", &auth)],
            &format!("token={}", enc(&token)),
        )
        .await;
    assert_eq!(resp.error(), (401, "invalid_client".to_owned()));

    // Unknown, expired and revoked tokens are inactive, with nothing else.
    let expired = idp.issue_access_token("alice@example.test", Duration::ZERO);
    for t in ["fake-at.unknown", expired.as_str()] {
        let resp = https
            .post_form("/introspect", &[], &format!("token={}", enc(t)))
            .await;
        assert_eq!(resp.json(), serde_json::json!({ "active": false }));
    }
    idp.revoke_access_tokens("alice@example.test");
    let resp = https
        .post_form("/introspect", &[], &format!("token={}", enc(&token)))
        .await;
    assert_eq!(resp.json()["active"], false);
    // No token at all.
    let resp = https.post_form("/introspect", &[], "").await;
    assert_eq!(resp.error(), (400, "invalid_request".to_owned()));

    assert_eq!(idp.introspections(), 5);
    let seen: Vec<(bool, ClientAuth)> = idp
        .events()
        .into_iter()
        .filter_map(|e| match e {
            IdpEvent::Introspection {
                active,
                client_auth,
                ..
            } => Some((active, client_auth)),
            _ => None,
        })
        .collect();
    assert_eq!(
        seen,
        [
            (true, ClientAuth::Anonymous),
            (true, ClientAuth::BasicHeader),
            (false, ClientAuth::Anonymous),
            (false, ClientAuth::Anonymous),
            (false, ClientAuth::Anonymous),
        ]
    );
    no_violations(&idp);
}

#[tokio::test]
async fn get_with_query_or_bearer_header() {
    let (idp, https, _pki) = start(IdpScript::new()).await;
    let token = idp.issue_access_token("bob", Duration::from_secs(60));
    let resp = https
        .request(
            "GET",
            &format!("/introspect?token={}", enc(&token)),
            &[],
            "",
        )
        .await
        .unwrap();
    assert_eq!(resp.json()["username"], "bob");
    let resp = https
        .request(
            "GET",
            &format!("/introspect?access_token={}", enc(&token)),
            &[],
            "",
        )
        .await
        .unwrap();
    assert_eq!(resp.json()["active"], true);
    let bearer = format!("Bearer {token}");
    let resp = https
        .request("GET", "/introspect", &[("Authorization", &bearer)], "")
        .await
        .unwrap();
    assert_eq!(resp.json()["sub"], "bob");
    // The query (a token) never reaches the log.
    assert!(idp.commands().iter().all(|c| c == "GET /introspect"));
    assert!(!format!("{:?}", idp.logged_events()).contains(&token));
    let resp = https.request("PUT", "/introspect", &[], "").await.unwrap();
    assert_eq!(resp.status, 405);
}
