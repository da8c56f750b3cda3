//! A reload keeps an account's cached token (no token request for it) and
//! applies the account's new settings: a rotated client secret is what the
//! next token request uses.

use std::time::Duration;

use postern::Gateway;
use postern_testkit::{GrantType, IdpEvent};
use tokio_util::sync::CancellationToken;

use crate::common::{config, RouteYaml};
use crate::setup::*;

const ROTATED_SECRET: &str = "cs-rotated-9Kd3-unique-client-secret";

#[tokio::test]
async fn a_reload_keeps_the_cached_token_and_applies_a_rotated_client_secret() {
    let w = World::new(idp_script()).await;
    let fake = w.pop3("tls", "XOAUTH2").await;
    let yaml = w.yaml(
        w.upstream(RouteYaml::pop3("r", fake.addr()), "tls", "xoauth2")
            .account(w.scanner(w.app())),
    );
    let gateway = Gateway::bind(&config(&yaml)).await.expect("bind");
    let addr = gateway.local_addrs()[0].1;
    let shutdown = CancellationToken::new();
    let serving = tokio::spawn(
        gateway
            .clone()
            .serve(shutdown.clone(), Duration::from_secs(2)),
    );
    let login = || async {
        let (mut c, r) = pop3_login(addr, LOCAL_USER, LOCAL_PASSWORD).await;
        if r.starts_with("+OK") {
            c.command("QUIT").await.expect("quit");
        }
        r
    };
    let r = login().await;
    assert!(r.starts_with("+OK"), "{r}");
    assert_eq!(w.idp.token_requests_for(GrantType::ClientCredentials), 1);

    // The app's secret is rotated: the provider takes only the new one,
    // the secret file holds it, postern reloads.
    w.idp.update_script(|s| {
        for c in &mut s.clients {
            if c.client_id == APP_CLIENT {
                c.client_secret = Some(ROTATED_SECRET.to_owned());
            }
        }
    });
    std::fs::write(&w.client_secret, format!("{ROTATED_SECRET}\n")).expect("rotate");
    gateway.reload(&config(&yaml)).await.expect("reload");

    let r = login().await;
    assert!(r.starts_with("+OK"), "{r}");
    assert_eq!(
        w.idp.token_requests_for(GrantType::ClientCredentials),
        1,
        "the cached token was lost in the reload"
    );
    // Once that token is refused, the new one is asked for with the new
    // secret.
    w.idp.revoke_access_tokens(USER);
    let r = login().await;
    let refused: Vec<_> = w
        .idp
        .events()
        .into_iter()
        .filter(|e| matches!(e, IdpEvent::Refused { .. }))
        .collect();
    assert!(r.starts_with("+OK"), "{r}; the IdP refused: {refused:?}");
    assert_eq!(refused, []);
    assert_eq!(w.idp.token_requests_for(GrantType::ClientCredentials), 2);

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), serving)
        .await
        .expect("drained")
        .expect("no panic");
}
