//! The scanner story: a device that never issues AUTH (identified by its
//! address, `sources:`) sends mail through an upstream that takes only
//! XOAUTH2; postern logs in for it with the account's token.

use postern_testkit::{BearerOutcome, GrantType, SaslForm};

use crate::common::{start, Account, RouteYaml};
use crate::setup::*;

#[tokio::test]
async fn a_device_without_auth_sends_through_an_xoauth2_upstream() {
    let w = World::new(idp_script()).await;
    let fake = w.smtp("starttls", "XOAUTH2").await;
    let route = w
        .upstream(RouteYaml::smtp("s", fake.addr()), "starttls", "xoauth2")
        .account(Account::oauth(USER, w.device()).sources(&["127.0.0.1/32"]));
    let yaml = w.yaml(route);
    let file = w.config_file("postern.yaml", &yaml);
    // A device's account is named by its upstream user.
    w.oauth_login(&file, "s", USER).await;

    let gw = start(&yaml).await;
    for _ in 0..2 {
        let mut c = smtp_ehlo(gw.addr("s")).await;
        let r = smtp_send(&mut c).await;
        assert!(r[0].starts_with("250"), "{r:?}");
        c.smtp_command("QUIT").await.expect("quit");
    }
    let messages = fake.accepted_messages();
    assert_eq!(messages.len(), 2);
    for m in &messages {
        assert_eq!(m.auth_user.as_deref(), Some(USER));
        assert!(m.tls);
        assert_eq!(m.unstuffed, SENT.as_bytes());
    }
    let attempts = smtp_bearer(&fake);
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert!(attempts.iter().all(|a| a.outcome == BearerOutcome::Accepted
        && a.form == SaslForm::Continuation
        && a.user.as_deref() == Some(USER)));
    assert_eq!(smtp_violations(&fake), Vec::<String>::new());
    assert_eq!(
        w.idp.token_requests_for(GrantType::RefreshToken),
        1,
        "the second message reuses the cached token"
    );
    gw.stop().await;
}
