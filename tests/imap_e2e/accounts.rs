//! Stored accounts: a local login (LOGIN, AUTHENTICATE PLAIN, CRAM-MD5
//! against postern's own challenge) mapped to the stored upstream login,
//! and OAuth2 accounts whose upstream login is a bearer token from the
//! identity provider.

use base64::Engine as _;
use postern_testkit::{
    cram_md5_response, sasl_plain_response, BearerAttempt, BearerOutcome, GrantType, SaslForm,
};

use super::*;
use crate::common::{secret_file, Account, Secret};
use crate::setup::{
    idp_script, mechanism, World, LOCAL_PASSWORD, LOCAL_USER, MESSAGE, USER as OAUTH_USER,
};

const LOCAL: &str = "local secret";

/// Local user `scanner` / [`LOCAL`], upstream alice / [`PASSWORD`], in
/// 0600 files of the returned directory.
fn scanner() -> (Account, TempDir) {
    let dir = TempDir::new("postern-imap-accounts");
    let local = Secret::file(secret_file(&dir, "local_pw", LOCAL));
    let upstream = Secret::file(secret_file(&dir, "upstream_pw", PASSWORD));
    (
        Account::upstream(USER, upstream).local("scanner", local),
        dir,
    )
}

/// The CRAM-MD5 challenge in a `+ base64` continuation.
fn challenge(continuation: &[u8]) -> String {
    let t = text(continuation);
    let b64 = t
        .strip_prefix("+ ")
        .and_then(|r| r.strip_suffix("\r\n"))
        .unwrap_or_else(|| panic!("not a challenge: {t}"));
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64 challenge");
    String::from_utf8(raw).expect("ASCII challenge")
}

#[tokio::test]
async fn local_logins_use_the_stored_upstream_login() {
    let pki = TestPki::new();
    for (security, auth, mechanism) in [
        ("none", "cram-md5", "AUTHENTICATE CRAM-MD5"),
        ("starttls", "login", "LOGIN"),
        ("tls", "plain", "AUTHENTICATE PLAIN"),
    ] {
        let what = format!("{security} × {auth}");
        let up = upstream(&pki, security, script(PASSWORD)).await;
        let (account, _dir) = scanner();
        let gw = start(
            &GatewayYaml::new()
                .route(
                    up.route("r", security, auth)
                        .passthrough(false)
                        .account(account),
                )
                .to_string(),
        )
        .await;

        // postern holds local secrets: it offers CRAM-MD5 too.
        let (mut c, caps) = connect(gw.addr("r")).await;
        let mut mechanisms = auth_mechanisms(&caps);
        mechanisms.sort();
        assert_eq!(
            mechanisms,
            ["CRAM-MD5", "LOGIN", "PLAIN"],
            "{what}: {caps:?}"
        );

        // Wrong local password, and the upstream login itself (no
        // passthrough): refused by postern, nothing goes upstream.
        for (tag, user, password) in [("a", "scanner", "wrong"), ("b", USER, PASSWORD)] {
            let r = c
                .imap_command(&format!(
                    "{tag} LOGIN {} {}",
                    quoted(user),
                    quoted(password)
                ))
                .await
                .expect("login");
            assert_tagged(&r, tag, "NO [AUTHENTICATIONFAILED]", &what);
        }
        assert_eq!(up.fake.connections(), 0, "{what}");

        // LOGIN with the local password.
        let r = c
            .imap_command(&format!("c LOGIN scanner {}", quoted(LOCAL)))
            .await
            .expect("login");
        assert_tagged(&r, "c", "OK", &what);
        select_and_fetch(&mut c, 1, &trap_message(), &what).await;
        logout(&mut c, &what).await;

        // AUTHENTICATE PLAIN with the local password.
        let (mut c, _) = connect(gw.addr("r")).await;
        let r = c
            .imap_command(&format!(
                "d AUTHENTICATE PLAIN {}",
                sasl_plain_response("", "scanner", LOCAL)
            ))
            .await
            .expect("authenticate");
        assert_tagged(&r, "d", "OK", &what);
        logout(&mut c, &what).await;

        // CRAM-MD5 against postern's challenge: a fresh one each time.
        let mut seen = Vec::new();
        for password in ["wrong", LOCAL] {
            let (mut c, _) = connect(gw.addr("r")).await;
            let r = c
                .imap_command("e AUTHENTICATE CRAM-MD5")
                .await
                .expect("authenticate");
            let ch = challenge(&r);
            assert!(ch.starts_with('<') && ch.ends_with('>'), "{what}: {ch}");
            assert!(!seen.contains(&ch), "{what}: challenge reused: {ch}");
            seen.push(ch.clone());
            c.send(&cram_md5_response("scanner", password, &ch))
                .await
                .expect("response");
            let r = c.read_imap_response("e").await.expect("authenticate");
            if password == LOCAL {
                assert_tagged(&r, "e", "OK", &what);
                logout(&mut c, &what).await;
            } else {
                assert_tagged(&r, "e", "NO [AUTHENTICATIONFAILED]", &what);
            }
        }

        assert_eq!(
            logins(&up.fake),
            vec![
                (
                    mechanism.to_owned(),
                    USER.to_owned(),
                    auth == "plain",
                    security != "none"
                );
                3
            ],
            "{what}: the stored login, three times"
        );
        assert_eq!(up.fake.connections(), 3, "{what}");
        assert_eq!(violations(&up.fake), Vec::<String>::new(), "{what}");
        gw.stop().await;
    }
}

/// A fake IMAP upstream for an OAuth2 world: alice's mailbox holding
/// [`MESSAGE`], offering only the route's bearer mechanism.
fn bearer_script(w: &World, security: &str, auth: &str) -> ImapScript {
    ImapScript::new()
        .security(w.fake_security(security))
        .credentials(OAUTH_USER, "no password works here")
        .mechanisms(&[mechanism(auth).as_str()])
        .bearer(w.idp.verifier())
        .message(MESSAGE.to_vec())
}

fn bearer_attempts(fake: &FakeImap) -> Vec<BearerAttempt> {
    fake.events()
        .into_iter()
        .filter_map(|e| match e {
            ImapEvent::BearerAuth(a) => Some(a),
            _ => None,
        })
        .collect()
}

fn outcomes(attempts: &[BearerAttempt]) -> Vec<&'static str> {
    attempts
        .iter()
        .map(|a| match &a.outcome {
            BearerOutcome::Accepted => "accepted",
            BearerOutcome::Refused(_) => "refused",
            BearerOutcome::Malformed(_) => "malformed",
        })
        .collect()
}

/// Both bearer mechanisms over TLS and STARTTLS: the legacy client logs
/// in with its local password; the upstream sees one accepted bearer
/// login for alice with a token the identity provider issued, as an
/// initial response when the AUTHENTICATE line stays within 8192 octets,
/// after the `+` otherwise.
#[tokio::test]
async fn oauth2_accounts_log_in_with_bearer_tokens() {
    for (auth, security, token_len, form) in [
        ("xoauth2", "tls", 2000, SaslForm::InitialResponse),
        ("xoauth2", "starttls", 7000, SaslForm::Continuation),
        ("oauthbearer", "tls", 64, SaslForm::InitialResponse),
        ("oauthbearer", "starttls", 2000, SaslForm::InitialResponse),
    ] {
        let what = format!("{auth} over {security}, {token_len}-octet tokens");
        let w = World::new(idp_script().access_token_len(token_len)).await;
        let fake = FakeImap::start(bearer_script(&w, security, auth)).await;
        let route = w
            .upstream(RouteYaml::imap("i", fake.addr()), security, auth)
            .account(w.scanner(w.app()));
        let gw = start(&w.yaml(route)).await;

        let (mut c, caps) = connect(gw.addr("i")).await;
        assert!(
            !auth_mechanisms(&caps)
                .iter()
                .any(|m| m == "XOAUTH2" || m == "OAUTHBEARER"),
            "{what}: {caps:?}"
        );
        let r = c
            .imap_command(&format!("a LOGIN {LOCAL_USER} {}", quoted(LOCAL_PASSWORD)))
            .await
            .expect("login");
        assert_tagged(&r, "a", "OK", &what);
        select_and_fetch(&mut c, 1, MESSAGE, &what).await;
        logout(&mut c, &what).await;

        assert_eq!(
            bearer_attempts(&fake),
            [BearerAttempt {
                mechanism: mechanism(auth),
                form,
                user: Some(OAUTH_USER.to_owned()),
                outcome: BearerOutcome::Accepted,
            }],
            "{what}"
        );
        assert_eq!(
            logins(&fake),
            [(
                format!("AUTHENTICATE {}", mechanism(auth).as_str()),
                OAUTH_USER.to_owned(),
                form == SaslForm::InitialResponse,
                true
            )],
            "{what}"
        );
        assert_eq!(violations(&fake), Vec::<String>::new(), "{what}");
        assert_eq!(
            w.idp.token_requests_for(GrantType::ClientCredentials),
            1,
            "{what}"
        );
        gw.stop().await;
    }
}

/// A revoked token: the upstream's error challenge is answered, postern
/// gets one fresh token and logs in on a new connection; the client never
/// notices.
#[tokio::test]
async fn a_revoked_token_is_replaced_once() {
    for auth in ["xoauth2", "oauthbearer"] {
        let w = World::new(idp_script()).await;
        let fake = FakeImap::start(bearer_script(&w, "tls", auth)).await;
        let route = w
            .upstream(RouteYaml::imap("i", fake.addr()), "tls", auth)
            .account(w.scanner(w.app()));
        let gw = start(&w.yaml(route)).await;
        let (mut c, _) = connect(gw.addr("i")).await;
        login(&mut c, LOCAL_USER, LOCAL_PASSWORD, auth).await;
        logout(&mut c, auth).await;
        assert_eq!(w.idp.revoke_access_tokens(OAUTH_USER), 1);

        let (mut c, _) = connect(gw.addr("i")).await;
        login(&mut c, LOCAL_USER, LOCAL_PASSWORD, auth).await;
        select_and_fetch(&mut c, 1, MESSAGE, auth).await;
        logout(&mut c, auth).await;
        assert!(fake.wait_closed(3, WAIT).await, "{auth}");
        assert_eq!(
            outcomes(&bearer_attempts(&fake)),
            ["accepted", "refused", "accepted"],
            "{auth}"
        );
        assert_eq!(
            fake.connections(),
            3,
            "{auth}: a new connection for the retry"
        );
        assert_eq!(violations(&fake), Vec::<String>::new(), "{auth}");
        assert_eq!(w.idp.token_requests_for(GrantType::ClientCredentials), 2);
        gw.stop().await;
    }
}

/// A token refused for good: a temporary answer after one retry, never a
/// credential refusal; and no new attempt while the account backs off.
#[tokio::test]
async fn a_token_refused_for_good_is_a_temporary_error_after_one_retry() {
    for auth in ["xoauth2", "oauthbearer"] {
        let w = World::new(idp_script()).await;
        let fake = FakeImap::start(
            bearer_script(&w, "starttls", auth)
                .bearer(postern_testkit::BearerVerifier::new(|_| None)),
        )
        .await;
        let route = w
            .upstream(RouteYaml::imap("i", fake.addr()), "starttls", auth)
            .account(w.scanner(w.app()));
        let gw = start(&w.yaml(route)).await;
        let (mut c, _) = connect(gw.addr("i")).await;
        let r = c
            .imap_command(&format!("a LOGIN {LOCAL_USER} {}", quoted(LOCAL_PASSWORD)))
            .await
            .expect("login");
        assert_tagged(&r, "a", "NO [UNAVAILABLE]", auth);
        assert_eq!(
            outcomes(&bearer_attempts(&fake)),
            ["refused", "refused"],
            "{auth}"
        );
        assert_eq!(fake.connections(), 2, "{auth}");
        assert_eq!(w.idp.token_requests(), 2, "{auth}");
        // At once again: postern backs off instead of asking anyone.
        let r = c
            .imap_command(&format!("b LOGIN {LOCAL_USER} {}", quoted(LOCAL_PASSWORD)))
            .await
            .expect("login");
        assert_tagged(&r, "b", "NO [UNAVAILABLE]", auth);
        assert_eq!(bearer_attempts(&fake).len(), 2, "{auth}");
        assert_eq!(w.idp.token_requests(), 2, "{auth}");
        assert_eq!(violations(&fake), Vec::<String>::new(), "{auth}");
        gw.stop().await;
    }
}
