//! Both mechanisms × POP3/SMTP × tls/starttls: a legacy client logs in to
//! postern with its local password (POP3 USER/PASS, SMTP AUTH PLAIN) and
//! the upstream sees one accepted bearer login for alice, with a token the
//! identity provider issued, in the form the protocol needs: POP3 always
//! the two-line form (`AUTH XOAUTH2`, token after `+ `), SMTP an initial
//! response only when the AUTH line stays within 512 octets.

use postern_testkit::{BearerAttempt, BearerOutcome, GrantType, Pop3Event, SaslForm, SmtpEvent};

use crate::common::{start, RouteYaml};
use crate::setup::*;

/// Long tokens, as Microsoft's are (over 2,500 octets in XOAUTH2).
const LONG: usize = 2000;
/// Short tokens, whose SASL string would fit any command line.
const SHORT: usize = 64;

fn accepted(auth: &str, form: SaslForm) -> BearerAttempt {
    BearerAttempt {
        mechanism: mechanism(auth),
        form,
        user: Some(USER.to_owned()),
        outcome: BearerOutcome::Accepted,
    }
}

async fn pop3(auth: &str, security: &str, token_len: usize) {
    let what = format!("POP3 {auth} over {security}, {token_len}-octet tokens");
    let w = World::new(idp_script().access_token_len(token_len)).await;
    let fake = w.pop3(security, mechanism(auth).as_str()).await;
    let route = w
        .upstream(RouteYaml::pop3("r", fake.addr()), security, auth)
        .account(w.scanner(w.app()));
    let gw = start(&w.yaml(route)).await;

    let (mut c, r) = pop3_login(gw.addr("r"), LOCAL_USER, LOCAL_PASSWORD).await;
    assert!(r.starts_with("+OK"), "{what}: {r}");
    let r = c.command("RETR 1").await.expect("retr");
    assert!(r.starts_with("+OK"), "{what}: {r}");
    let mut wire = MESSAGE.to_vec();
    wire.extend_from_slice(b".\r\n");
    assert_eq!(c.read_multiline().await.expect("body"), wire, "{what}");
    assert!(c.command("QUIT").await.expect("quit").starts_with("+OK"));
    assert!(fake.wait_closed(1, WAIT).await, "{what}: upstream open");

    assert_eq!(
        pop3_bearer(&fake),
        [accepted(auth, SaslForm::Continuation)],
        "{what}"
    );
    let method = mechanism(auth).as_str().to_owned();
    assert!(
        fake.events()
            .contains(&Pop3Event::LoggedIn { method, tls: true }),
        "{what}: {:?}",
        fake.events()
    );
    assert_eq!(
        fake.commands()
            .iter()
            .filter(|l| l.starts_with("AUTH"))
            .collect::<Vec<_>>(),
        [&format!("AUTH {}", mechanism(auth))],
        "{what}: the token never goes on the AUTH line"
    );
    assert_eq!(pop3_violations(&fake), Vec::<String>::new(), "{what}");
    assert_eq!(
        w.idp.token_requests_for(GrantType::ClientCredentials),
        1,
        "{what}"
    );
    gw.stop().await;
}

async fn smtp(auth: &str, security: &str, token_len: usize, form: SaslForm) {
    let what = format!("SMTP {auth} over {security}, {token_len}-octet tokens");
    let w = World::new(idp_script().access_token_len(token_len)).await;
    let fake = w.smtp(security, mechanism(auth).as_str()).await;
    let route = w
        .upstream(RouteYaml::smtp("s", fake.addr()), security, auth)
        .account(w.scanner(w.app()));
    let gw = start(&w.yaml(route)).await;

    let (mut c, r) = smtp_login(gw.addr("s"), LOCAL_USER, LOCAL_PASSWORD).await;
    assert!(r[0].starts_with("235"), "{what}: {r:?}");
    let r = smtp_send(&mut c).await;
    assert!(r[0].starts_with("250"), "{what}: {r:?}");
    c.smtp_command("QUIT").await.expect("quit");

    let messages = fake.accepted_messages();
    assert_eq!(messages.len(), 1, "{what}");
    assert_eq!(messages[0].unstuffed, SENT.as_bytes(), "{what}");
    assert_eq!(messages[0].auth_user.as_deref(), Some(USER), "{what}");
    assert!(messages[0].tls, "{what}");
    assert_eq!(smtp_bearer(&fake), [accepted(auth, form)], "{what}");
    let mechanism = mechanism(auth).as_str().to_owned();
    assert!(
        fake.events().contains(&SmtpEvent::AuthOk {
            mechanism,
            tls: true
        }),
        "{what}: {:?}",
        fake.events()
    );
    assert_eq!(smtp_violations(&fake), Vec::<String>::new(), "{what}");
    assert_eq!(
        w.idp.token_requests_for(GrantType::ClientCredentials),
        1,
        "{what}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn pop3_xoauth2_tls() {
    pop3("xoauth2", "tls", LONG).await;
}

#[tokio::test]
async fn pop3_xoauth2_starttls() {
    // Two lines even when the token would fit the command line.
    pop3("xoauth2", "starttls", SHORT).await;
}

#[tokio::test]
async fn pop3_oauthbearer_tls() {
    pop3("oauthbearer", "tls", LONG).await;
}

#[tokio::test]
async fn pop3_oauthbearer_starttls() {
    pop3("oauthbearer", "starttls", SHORT).await;
}

#[tokio::test]
async fn smtp_xoauth2_tls() {
    smtp("xoauth2", "tls", LONG, SaslForm::Continuation).await;
}

#[tokio::test]
async fn smtp_xoauth2_starttls() {
    smtp("xoauth2", "starttls", SHORT, SaslForm::InitialResponse).await;
}

#[tokio::test]
async fn smtp_oauthbearer_tls() {
    smtp("oauthbearer", "tls", LONG, SaslForm::Continuation).await;
}

#[tokio::test]
async fn smtp_oauthbearer_starttls() {
    smtp("oauthbearer", "starttls", SHORT, SaslForm::InitialResponse).await;
}

/// RFC 4954 §4: the AUTH command stays within RFC 5321's 512-octet command
/// line (CRLF included); a longer initial response goes after `334`.
/// XOAUTH2 for alice is `25 + token` octets before base64: a 347-octet
/// token makes a 511-octet AUTH line, a 350-octet one 515, a 420-octet one
/// 611 (long for SMTP, short for a token: Google's vary up to 2 KB).
#[tokio::test]
async fn smtp_initial_response_only_within_the_command_line() {
    smtp("xoauth2", "tls", 347, SaslForm::InitialResponse).await;
    smtp("xoauth2", "tls", 350, SaslForm::Continuation).await;
    smtp("xoauth2", "starttls", 420, SaslForm::Continuation).await;
}
