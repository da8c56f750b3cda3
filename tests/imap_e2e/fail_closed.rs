//! Upstreams that must not get credentials: each refuses the client's
//! login with a temporary answer, and the fake records no login command,
//! no login and no failed login.

use postern_testkit::{ImapGreeting, ImapStarttls};

use super::*;

/// Logs in (LOGIN, then on a new connection AUTHENTICATE PLAIN) through
/// route `r` and expects `NO [UNAVAILABLE]`, then `* BYE` and the close;
/// never a login.
async fn refused(gw: &common::Running, what: &str) {
    let (mut c, _) = connect(gw.addr("r")).await;
    let r = c
        .imap_command(&format!("a LOGIN {USER} {}", quoted(PASSWORD)))
        .await
        .expect("login");
    assert_tagged(&r, "a", "NO [UNAVAILABLE]", what);
    let (rest, _) = c.read_to_close().await;
    let rest = text(&rest);
    assert!(rest.starts_with("* BYE [UNAVAILABLE]"), "{what}: {rest:?}");
    assert!(!rest.contains(" OK"), "{what}: {rest:?}");
}

#[tokio::test]
async fn insecure_or_hostile_upstreams_get_no_credentials() {
    let pki = TestPki::new();
    let cases: Vec<(&str, &str, &str, ImapScript)> = vec![
        (
            "PREAUTH greeting on a STARTTLS route (the downgrade)",
            "starttls",
            "login",
            script(PASSWORD).greeting(ImapGreeting::Preauth),
        ),
        (
            "PREAUTH greeting on a TLS route",
            "tls",
            "plain",
            script(PASSWORD).greeting(ImapGreeting::Preauth),
        ),
        (
            "PREAUTH greeting on a plain route",
            "none",
            "cram-md5",
            script(PASSWORD).greeting(ImapGreeting::Preauth),
        ),
        (
            "STARTTLS not offered",
            "starttls",
            "login",
            script(PASSWORD).starttls(ImapStarttls::NotOffered),
        ),
        (
            "STARTTLS not offered, greeting without capabilities",
            "starttls",
            "plain",
            script(PASSWORD)
                .greeting(ImapGreeting::Plain)
                .starttls(ImapStarttls::NotOffered),
        ),
        (
            "STARTTLS refused",
            "starttls",
            "cram-md5",
            script(PASSWORD).starttls(ImapStarttls::Refuse),
        ),
        (
            "a response injected after the STARTTLS go-ahead",
            "starttls",
            "login",
            script(PASSWORD).starttls(ImapStarttls::AcceptThenInject(
                b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] injected\r\n".to_vec(),
            )),
        ),
        (
            "LOGINDISABLED with auth: login",
            "none",
            "login",
            script(PASSWORD).login_disabled_before_tls(true),
        ),
        (
            "the route's mechanism not offered",
            "tls",
            "cram-md5",
            script(PASSWORD).mechanisms(&["PLAIN", "LOGIN"]),
        ),
        (
            "a BYE greeting",
            "tls",
            "login",
            script(PASSWORD).greeting(ImapGreeting::Bye),
        ),
    ];
    for (what, security, auth, script) in cases {
        let up = upstream(&pki, security, script).await;
        let gw = gateway(&up, security, auth).await;
        refused(&gw, what).await;
        assert!(
            up.fake.wait_closed(1, WAIT).await,
            "{what}: the upstream connection stays open"
        );
        assert_eq!(credentials_seen(&up.fake), Vec::<String>::new(), "{what}");
        gw.stop().await;
    }
}

/// Certificate checks on the upstream: a wrong name, an untrusted CA, a
/// STARTTLS upgrade to a wrong name: no credentials.
#[tokio::test]
async fn upstream_certificates_are_checked() {
    let pki = TestPki::new();
    let other = TestPki::new();
    let dir = TempDir::new("postern-imap-certs");
    let good_ca = pki.write_ca_pem(dir.path());
    let other_dir = TempDir::new("postern-imap-other");
    let other_ca = other.write_ca_pem(other_dir.path());
    for (what, security, tls, ca) in [
        (
            "wrong certificate name",
            "tls",
            FakeSecurity::Tls(pki.server_config_for_names(&["other.test"])),
            &good_ca,
        ),
        (
            "unknown CA",
            "tls",
            FakeSecurity::Tls(pki.server_config()),
            &other_ca,
        ),
        (
            "STARTTLS to a wrong certificate name",
            "starttls",
            FakeSecurity::Starttls(pki.server_config_for_names(&["other.test"])),
            &good_ca,
        ),
    ] {
        let fake = FakeImap::start(script(PASSWORD).security(tls)).await;
        let gw = start(
            &RouteYaml::imap("r", fake.addr())
                .security(security)
                .auth("login")
                .ca(ca)
                .server_name("localhost")
                .yaml(),
        )
        .await;
        refused(&gw, what).await;
        assert_eq!(credentials_seen(&fake), Vec::<String>::new(), "{what}");
        gw.stop().await;
    }
}
