//! A token the upstream refuses: postern answers the server's JSON error
//! challenge as the mechanism requires (an empty line for XOAUTH2, `AQ==`
//! for OAUTHBEARER), gets one fresh token and logs in again on a new
//! connection, so the client never notices. When the fresh token is
//! refused too, the client hears a temporary error, never a password
//! prompt, after exactly one retry.

use postern_testkit::{BearerOutcome, BearerVerifier, FakePop3, FakeSmtp, GrantType, SaslForm};

use crate::common::{start, RouteYaml};
use crate::setup::*;

fn outcomes(attempts: &[postern_testkit::BearerAttempt]) -> Vec<&'static str> {
    attempts
        .iter()
        .map(|a| match &a.outcome {
            BearerOutcome::Accepted => "accepted",
            BearerOutcome::Refused(_) => "refused",
            BearerOutcome::Malformed(_) => "malformed",
        })
        .collect()
}

#[tokio::test]
async fn a_revoked_token_is_replaced_once_and_the_login_succeeds() {
    for auth in ["xoauth2", "oauthbearer"] {
        // POP3.
        let w = World::new(idp_script()).await;
        let fake = w.pop3("tls", mechanism(auth).as_str()).await;
        let route = w
            .upstream(RouteYaml::pop3("r", fake.addr()), "tls", auth)
            .account(w.scanner(w.app()));
        let gw = start(&w.yaml(route)).await;
        let (mut c, r) = pop3_login(gw.addr("r"), LOCAL_USER, LOCAL_PASSWORD).await;
        assert!(r.starts_with("+OK"), "{r}");
        c.command("QUIT").await.expect("quit");
        assert_eq!(w.idp.revoke_access_tokens(USER), 1);

        let (mut c, r) = pop3_login(gw.addr("r"), LOCAL_USER, LOCAL_PASSWORD).await;
        assert!(r.starts_with("+OK"), "POP3 {auth}: {r}");
        assert!(c.command("STAT").await.expect("stat").starts_with("+OK 1 "));
        c.command("QUIT").await.expect("quit");
        assert!(fake.wait_closed(3, WAIT).await);
        let attempts = pop3_bearer(&fake);
        assert_eq!(
            outcomes(&attempts),
            ["accepted", "refused", "accepted"],
            "POP3 {auth}: {attempts:?}"
        );
        assert_eq!(
            fake.connections(),
            3,
            "POP3 {auth}: a new connection for the retry"
        );
        assert_eq!(pop3_violations(&fake), Vec::<String>::new(), "POP3 {auth}");
        assert_eq!(w.idp.token_requests_for(GrantType::ClientCredentials), 2);
        gw.stop().await;

        // SMTP.
        let w = World::new(idp_script()).await;
        let fake = w.smtp("starttls", mechanism(auth).as_str()).await;
        let route = w
            .upstream(RouteYaml::smtp("s", fake.addr()), "starttls", auth)
            .account(w.scanner(w.app()));
        let gw = start(&w.yaml(route)).await;
        let (mut c, r) = smtp_login(gw.addr("s"), LOCAL_USER, LOCAL_PASSWORD).await;
        assert!(r[0].starts_with("235"), "{r:?}");
        c.smtp_command("QUIT").await.expect("quit");
        assert_eq!(w.idp.revoke_access_tokens(USER), 1);

        let (mut c, r) = smtp_login(gw.addr("s"), LOCAL_USER, LOCAL_PASSWORD).await;
        assert!(r[0].starts_with("235"), "SMTP {auth}: {r:?}");
        let r = smtp_send(&mut c).await;
        assert!(r[0].starts_with("250"), "{r:?}");
        c.smtp_command("QUIT").await.expect("quit");
        assert_eq!(fake.accepted_messages().len(), 1);
        let attempts = smtp_bearer(&fake);
        assert_eq!(
            outcomes(&attempts),
            ["accepted", "refused", "accepted"],
            "SMTP {auth}: {attempts:?}"
        );
        assert!(attempts.iter().all(|a| a.form == SaslForm::Continuation));
        assert_eq!(
            fake.connections(),
            3,
            "SMTP {auth}: a new connection for the retry"
        );
        assert_eq!(smtp_violations(&fake), Vec::<String>::new(), "SMTP {auth}");
        assert_eq!(w.idp.token_requests_for(GrantType::ClientCredentials), 2);
        gw.stop().await;
    }
}

/// An upstream that refuses every token.
fn refuse_all() -> BearerVerifier {
    BearerVerifier::new(|_| None)
}

#[tokio::test]
async fn a_refused_fresh_token_is_a_temporary_error_after_one_retry() {
    for auth in ["xoauth2", "oauthbearer"] {
        let w = World::new(idp_script()).await;
        let fake = FakePop3::start(
            w.pop3_script("starttls", mechanism(auth).as_str())
                .bearer(refuse_all()),
        )
        .await;
        let route = w
            .upstream(RouteYaml::pop3("r", fake.addr()), "starttls", auth)
            .account(w.scanner(w.app()));
        let gw = start(&w.yaml(route)).await;
        let (mut c, r) = pop3_login(gw.addr("r"), LOCAL_USER, LOCAL_PASSWORD).await;
        assert!(r.starts_with("-ERR [SYS/TEMP]"), "POP3 {auth}: {r}");
        let attempts = pop3_bearer(&fake);
        assert_eq!(outcomes(&attempts), ["refused", "refused"], "POP3 {auth}");
        assert_eq!(fake.connections(), 2, "POP3 {auth}");
        assert_eq!(pop3_violations(&fake), Vec::<String>::new(), "POP3 {auth}");
        assert_eq!(
            w.idp.token_requests(),
            2,
            "POP3 {auth}: the first token and one fresh one"
        );
        // Trying again right away: postern backs off instead of asking the
        // provider or the server again.
        c.command("USER scanner").await.expect("user");
        let r = c
            .command(&format!("PASS {LOCAL_PASSWORD}"))
            .await
            .expect("pass");
        assert!(r.starts_with("-ERR [SYS/TEMP]"), "POP3 {auth}: {r}");
        assert_eq!(pop3_bearer(&fake).len(), 2);
        assert_eq!(w.idp.token_requests(), 2);
        c.command("QUIT").await.expect("quit");
        gw.stop().await;

        let w = World::new(idp_script()).await;
        let fake = FakeSmtp::start(
            w.smtp_script("tls", mechanism(auth).as_str())
                .bearer(refuse_all()),
        )
        .await;
        let route = w
            .upstream(RouteYaml::smtp("s", fake.addr()), "tls", auth)
            .account(w.scanner(w.app()));
        let gw = start(&w.yaml(route)).await;
        let (mut c, r) = smtp_login(gw.addr("s"), LOCAL_USER, LOCAL_PASSWORD).await;
        assert!(r[0].starts_with("454 4.7.0"), "SMTP {auth}: {r:?}");
        let attempts = smtp_bearer(&fake);
        assert_eq!(outcomes(&attempts), ["refused", "refused"], "SMTP {auth}");
        assert_eq!(fake.connections(), 2, "SMTP {auth}");
        assert_eq!(smtp_violations(&fake), Vec::<String>::new(), "SMTP {auth}");
        assert_eq!(w.idp.token_requests(), 2, "SMTP {auth}");
        c.smtp_command("QUIT").await.expect("quit");
        gw.stop().await;
    }
}
