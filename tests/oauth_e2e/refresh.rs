//! Refresh under load: access tokens live 2 s; once the first one has
//! expired, 50 sessions at once cause exactly one token request, and every
//! one of them logs in with the new token at the first try.

use std::time::Duration;

use postern_testkit::{BearerOutcome, GrantType, SaslForm};

use crate::common::{start, RouteYaml};
use crate::setup::*;

const SESSIONS: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_sessions_after_expiry_make_one_token_request() {
    let w = World::new(
        idp_script()
            .access_token_len(200)
            .access_token_lifetime(Duration::from_secs(2)),
    )
    .await;
    let fake = w.pop3("tls", "XOAUTH2").await;
    let route = w
        .upstream(RouteYaml::pop3("r", fake.addr()), "tls", "xoauth2")
        .account(w.scanner(w.app()));
    let gw = start(
        &w.gateway()
            .limits("sessions_per_client: 200")
            .route(route)
            .to_string(),
    )
    .await;
    let addr = gw.addr("r");

    let (mut c, r) = pop3_login(addr, LOCAL_USER, LOCAL_PASSWORD).await;
    assert!(r.starts_with("+OK"), "{r}");
    c.command("QUIT").await.expect("quit");
    assert_eq!(w.idp.token_requests_for(GrantType::ClientCredentials), 1);

    // The first token expires; the refresh is slow, so every session
    // arrives while it is in flight.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert!(
        w.idp.issued_access_tokens().iter().all(|t| !t.is_valid()),
        "the first token should have expired"
    );
    w.idp.set_response_delay(Duration::from_millis(300));
    let sessions: Vec<_> = (0..SESSIONS)
        .map(|_| {
            tokio::spawn(async move {
                let (mut c, r) = pop3_login(addr, LOCAL_USER, LOCAL_PASSWORD).await;
                if r.starts_with("+OK") {
                    c.command("QUIT").await.expect("quit");
                }
                r
            })
        })
        .collect();
    for s in sessions {
        let r = s.await.expect("session task");
        assert!(r.starts_with("+OK"), "{r}");
    }

    assert_eq!(
        w.idp.token_requests_for(GrantType::ClientCredentials),
        2,
        "one refresh for all {SESSIONS} sessions"
    );
    assert_eq!(w.idp.token_requests(), 2);
    let logins = pop3_bearer(&fake);
    assert_eq!(logins.len(), 1 + SESSIONS, "{logins:?}");
    assert!(
        logins.iter().all(|a| a.outcome == BearerOutcome::Accepted
            && a.form == SaslForm::Continuation
            && a.user.as_deref() == Some(USER)),
        "a session used an expired token or retried: {logins:?}"
    );
    assert_eq!(pop3_violations(&fake), Vec::<String>::new());
    gw.stop().await;
}
