//! `invalid_grant`: the provider no longer accepts the stored refresh
//! token. The client hears a temporary error (never a password prompt),
//! `postern oauth status` shows the account needing consent, nothing is
//! deleted, the provider is not asked again until someone consents, and a
//! new `postern oauth login` while the gateway runs brings the account
//! back. A client's wrong local password never causes a token request.

use postern_testkit::GrantType;

use crate::common::{start, RouteYaml};
use crate::setup::*;

#[tokio::test]
async fn invalid_grant_needs_consent_keeps_the_store_and_a_new_login_recovers() {
    let w = World::new(idp_script()).await;
    let fake = w.pop3("tls", "XOAUTH2").await;
    let route = w
        .upstream(RouteYaml::pop3("r", fake.addr()), "tls", "xoauth2")
        .account(w.scanner(w.device()));
    let yaml = w.yaml(route);
    let file = w.config_file("postern.yaml", &yaml);
    let store = w.store("r", LOCAL_USER);

    let status = w.oauth_status(&file).await;
    assert!(status.contains("r scanner"), "{status}");
    assert!(status.contains("no consent yet"), "{status}");
    w.oauth_login(&file, "r", LOCAL_USER).await;
    let sealed = std::fs::read(&store).expect("store");
    let asked = w.idp.token_requests();

    let gw = start(&yaml).await;
    let (_c, r) = pop3_login(gw.addr("r"), LOCAL_USER, "not the local password").await;
    assert!(r.starts_with("-ERR [AUTH]"), "{r}");
    assert_eq!(
        w.idp.token_requests(),
        asked,
        "a wrong local password asked for a token"
    );
    assert_eq!(fake.connections(), 0);
    assert_eq!(std::fs::read(&store).expect("store"), sealed);

    w.idp.fail_refreshes(1);
    let (_c, r) = pop3_login(gw.addr("r"), LOCAL_USER, LOCAL_PASSWORD).await;
    assert!(r.starts_with("-ERR [SYS/TEMP]"), "{r}");
    assert_eq!(w.idp.token_requests_for(GrantType::RefreshToken), 1);
    assert_eq!(fake.connections(), 0, "no token, no upstream connection");
    let status = w.oauth_status(&file).await;
    assert!(status.contains("NEEDS CONSENT"), "{status}");
    assert!(status.contains("invalid_grant"), "{status}");
    assert!(store.is_file(), "the store was deleted");

    // Not asked again until someone consents.
    let (_c, r) = pop3_login(gw.addr("r"), LOCAL_USER, LOCAL_PASSWORD).await;
    assert!(r.starts_with("-ERR [SYS/TEMP]"), "{r}");
    assert_eq!(w.idp.token_requests_for(GrantType::RefreshToken), 1);

    // Consent again while the gateway runs: the next session logs in.
    w.oauth_login(&file, "r", LOCAL_USER).await;
    let (mut c, r) = pop3_login(gw.addr("r"), LOCAL_USER, LOCAL_PASSWORD).await;
    assert!(r.starts_with("+OK"), "{r}");
    c.command("QUIT").await.expect("quit");
    let status = w.oauth_status(&file).await;
    assert!(!status.contains("NEEDS CONSENT"), "{status}");
    assert!(status.contains("refresh token present"), "{status}");
    assert_eq!(pop3_violations(&fake), Vec::<String>::new());
    gw.stop().await;
}

#[tokio::test]
async fn a_revoked_refresh_token_is_a_temporary_error_on_smtp() {
    let w = World::new(idp_script()).await;
    let fake = w.smtp("starttls", "OAUTHBEARER").await;
    let route = w
        .upstream(RouteYaml::smtp("s", fake.addr()), "starttls", "oauthbearer")
        .account(w.scanner(w.device()));
    let yaml = w.yaml(route);
    let file = w.config_file("postern.yaml", &yaml);
    w.oauth_login(&file, "s", LOCAL_USER).await;
    let asked = w.idp.token_requests();

    let gw = start(&yaml).await;
    let (_c, r) = smtp_login(gw.addr("s"), LOCAL_USER, "not the local password").await;
    assert!(r[0].starts_with("535"), "{r:?}");
    assert_eq!(
        w.idp.token_requests(),
        asked,
        "a wrong local password asked for a token"
    );

    assert_eq!(w.idp.revoke_refresh_tokens(USER), 1);
    let (_c, r) = smtp_login(gw.addr("s"), LOCAL_USER, LOCAL_PASSWORD).await;
    assert!(r[0].starts_with("454 4.7.0"), "{r:?}");
    assert_eq!(w.idp.token_requests_for(GrantType::RefreshToken), 1);
    assert_eq!(fake.connections(), 0);
    let status = w.oauth_status(&file).await;
    assert!(status.contains("NEEDS CONSENT"), "{status}");
    assert!(w.store("s", LOCAL_USER).is_file(), "the store was deleted");
    gw.stop().await;
}
