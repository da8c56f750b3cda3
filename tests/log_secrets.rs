//! No password, digest or SASL payload appears in any log line at any
//! level: sessions of every login method run at TRACE and the whole captured
//! output is searched for every form of the secrets. OAuth2 sessions too:
//! no access token, refresh token, client secret or state key, whether the
//! token was accepted, refused and replaced, or refused for good.

mod common;
#[path = "oauth_e2e/setup.rs"]
mod setup;

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{start, RouteYaml};
use postern_testkit::{
    cram_md5_digest, login_base64, rfc1939_apop_digest, sasl_plain_response, FakeImap, FakePop3,
    FakeSecurity, FakeSmtp, ImapEvent, ImapScript, LineClient, Pop3Event, Pop3Script, SmtpEvent,
    SmtpScript, TempDir, TestPki, RFC1939_TIMESTAMP,
};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const PASSWORD: &str = "Tr0ub4dor&3-unique-pw";
const WRONG: &str = "wrong-Pa55word-unique";
const FORGED_USER: &str = "bob\" user=\"admin\u{2028}x";

/// `route` with `security` and `auth`; over TLS it trusts `ca` for the
/// name `localhost`.
fn trusting(route: RouteYaml, security: &str, auth: &str, ca: &Path) -> RouteYaml {
    let route = route.security(security).auth(auth);
    if security == "none" {
        route
    } else {
        route.ca(ca).server_name("localhost")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_log_at_trace_level() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let pki = TestPki::new();
    let dir = TempDir::new("postern-secrets");
    let ca = pki.write_ca_pem(dir.path());
    let mut sessions = 0;
    for (security, auth) in [
        ("none", "apop"),
        ("starttls", "user"),
        ("tls", "plain"),
        ("none", "cram-md5"),
    ] {
        let sec = match security {
            "none" => FakeSecurity::Plain,
            "tls" => FakeSecurity::Tls(pki.server_config()),
            _ => FakeSecurity::Starttls(pki.server_config()),
        };
        let fake = FakePop3::start(
            Pop3Script::new()
                .greeting_timestamp(Some(RFC1939_TIMESTAMP))
                .credentials("carol", PASSWORD)
                .security(sec)
                .message(b"Subject: x\r\n\r\nbody\r\n".to_vec()),
        )
        .await;
        let gw =
            start(&trusting(RouteYaml::pop3("r", fake.addr()), security, auth, &ca).yaml()).await;
        // A failed USER/PASS, then AUTH PLAIN with the right password.
        let mut c = LineClient::connect(gw.addr("r")).await.expect("connect");
        c.read_line().await.expect("greeting");
        c.command("USER carol").await.expect("user");
        assert!(c
            .command(&format!("PASS {WRONG}"))
            .await
            .expect("pass")
            .starts_with("-ERR"));
        let r = c
            .command(&format!(
                "AUTH PLAIN {}",
                sasl_plain_response("", "carol", PASSWORD)
            ))
            .await
            .expect("auth");
        assert!(r.starts_with("+OK"), "{security}/{auth}: {r}");
        assert!(c.command("RETR 1").await.expect("retr").starts_with("+OK"));
        c.read_multiline().await.expect("body");
        c.command("QUIT").await.expect("quit");
        fake.expect_event(
            "login",
            |e| matches!(e, Pop3Event::LoggedIn { .. }),
            Duration::from_secs(5),
        )
        .await;
        gw.stop().await;
        sessions += 1;
    }
    for (security, auth) in [
        ("none", "cram-md5"),
        ("starttls", "plain"),
        ("tls", "login"),
    ] {
        let sec = match security {
            "none" => FakeSecurity::Plain,
            "tls" => FakeSecurity::Tls(pki.server_config()),
            _ => FakeSecurity::Starttls(pki.server_config()),
        };
        let fake = FakeSmtp::start(
            SmtpScript::new()
                .credentials("carol", PASSWORD)
                .security(sec),
        )
        .await;
        let gw =
            start(&trusting(RouteYaml::smtp("s", fake.addr()), security, auth, &ca).yaml()).await;
        let mut c = LineClient::connect(gw.addr("s")).await.expect("connect");
        c.read_smtp_reply().await.expect("greeting");
        c.smtp_command("EHLO c").await.expect("ehlo");
        // A failed AUTH PLAIN, then AUTH LOGIN with the right password.
        let r = c
            .smtp_command(&format!(
                "AUTH PLAIN {}",
                sasl_plain_response("", "carol", WRONG)
            ))
            .await
            .expect("auth");
        assert!(r[0].starts_with("535"), "{r:?}");
        c.smtp_command("AUTH LOGIN").await.expect("login");
        c.smtp_command(&login_base64("carol")).await.expect("user");
        let r = c.smtp_command(&login_base64(PASSWORD)).await.expect("pass");
        assert!(r[0].starts_with("235"), "{security}/{auth}: {r:?}");
        c.smtp_command("QUIT").await.expect("quit");
        fake.expect_event(
            "login",
            |e| matches!(e, SmtpEvent::AuthOk { .. }),
            Duration::from_secs(5),
        )
        .await;
        gw.stop().await;
        sessions += 1;
    }
    assert_eq!(sessions, 7);
    imap_sessions(&pki, &ca).await;
    let oauth_secrets = oauth_sessions().await;

    // A client-chosen user name that tries to forge log fields: a quote
    // that would end the field, a fake `user=` and U+2028 (a line break to
    // many log viewers). It must be logged quoted and escaped.
    let fake = FakeSmtp::start(SmtpScript::new().credentials("carol", PASSWORD)).await;
    let gw = start(
        &RouteYaml::smtp("s", fake.addr())
            .security("none")
            .auth("plain")
            .yaml(),
    )
    .await;
    let mut c = LineClient::connect(gw.addr("s")).await.expect("connect");
    c.read_smtp_reply().await.expect("greeting");
    c.smtp_command("EHLO c").await.expect("ehlo");
    let r = c
        .smtp_command(&format!(
            "AUTH PLAIN {}",
            sasl_plain_response("", FORGED_USER, WRONG)
        ))
        .await
        .expect("auth");
    assert!(r[0].starts_with("535"), "{r:?}");
    c.smtp_command("QUIT").await.expect("quit");
    gw.stop().await;

    let log = String::from_utf8_lossy(&capture.0.lock().expect("lock")).into_owned();
    // One summary line per session: outcome, upstream, auth, TLS on each
    // side (version and cipher suite), messages and bytes, duration.
    let summaries: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("session ended"))
        .collect();
    assert!(
        summaries.len() >= 8,
        "{} summary lines:\n{log}",
        summaries.len()
    );
    for want in [
        "outcome=\"quit\"",
        "upstream_tls=\"TLSv1_3 TLS13_",
        "client_tls=\"none\"",
        "auth=cram-md5",
        "messages=1 ",
        "bytes_to_client=",
        "bytes_to_upstream=",
        "ms=",
    ] {
        assert!(
            summaries.iter().any(|l| l.contains(want)),
            "no summary line with {want:?}:\n{}",
            summaries.join("\n")
        );
    }
    assert!(
        !log.contains('\u{2028}'),
        "a raw U+2028 from a client reached the log"
    );
    assert!(
        !log.contains(r#"bob" user="admin"#),
        "a client-chosen quote ended a log field"
    );
    assert!(
        log.contains(r#"bob\" user=\"admin\u{2028}x"#),
        "the forged name is not in the log quoted and escaped:\n{log}"
    );
    assert!(
        log.contains("logged in upstream"),
        "the capture is empty or not at TRACE:\n{log}"
    );
    assert!(log.contains("TRACE"), "no TRACE lines captured");
    assert!(
        log.contains("proto=\"imap\"") || log.contains("proto=imap"),
        "no IMAP session in the log:\n{log}"
    );
    let mut needles = vec![
        PASSWORD.to_owned(),
        WRONG.to_owned(),
        sasl_plain_response("", "carol", PASSWORD),
        sasl_plain_response("", "carol", WRONG),
        rfc1939_apop_digest(RFC1939_TIMESTAMP, PASSWORD),
        rfc1939_apop_digest(RFC1939_TIMESTAMP, WRONG),
    ];
    // CRAM-MD5 digests depend on the fake's fresh challenges; the digest of
    // any challenge is a 32-hex string, so look for the hex of a known one
    // and for the base64 of the password itself.
    needles.push(cram_md5_digest(PASSWORD, RFC1939_TIMESTAMP));
    use base64::Engine as _;
    needles.push(base64::engine::general_purpose::STANDARD.encode(PASSWORD));
    needles.push(login_base64(PASSWORD));
    needles.push(login_base64(WRONG));
    for needle in &needles {
        assert!(
            !log.contains(needle.as_str()),
            "secret {needle:?} found in the log"
        );
    }
    // The OAuth2 paths ran (and say why a token was refused), and none of
    // their secrets, whole or in part, reached the log.
    for want in [
        "OAuth2 access token obtained",
        "retrying once with a fresh one on a new connection",
        "status=401 scope=https://mail.example/",
        "no longer accepts this account's refresh token",
    ] {
        assert!(log.contains(want), "no {want:?} in the log:\n{log}");
    }
    assert!(oauth_secrets.len() > 10, "{}", oauth_secrets.len());
    for needle in &oauth_secrets {
        assert!(
            !log.contains(needle.as_str()),
            "OAuth2 secret {needle:?} found in the log"
        );
    }
    // No base64 blob of the shape of a CRAM-MD5 response ("carol <32 hex>").
    let cram_prefix = base64::engine::general_purpose::STANDARD.encode("carol ");
    assert!(
        !log.contains(&cram_prefix[..6]),
        "a CRAM-MD5 response appears in the log"
    );
}

/// IMAP sessions at TRACE with `carol`'s password: a wrong and a right
/// LOGIN with the password as a synchronising literal, AUTHENTICATE PLAIN
/// wrong with SASL-IR and right after the continuation, carried upstream
/// as LOGIN, PLAIN and CRAM-MD5 over each security.
async fn imap_sessions(pki: &TestPki, ca: &Path) {
    for (security, auth) in [
        ("none", "cram-md5"),
        ("starttls", "login"),
        ("tls", "plain"),
    ] {
        let what = format!("IMAP {security}/{auth}");
        let sec = match security {
            "none" => FakeSecurity::Plain,
            "tls" => FakeSecurity::Tls(pki.server_config()),
            _ => FakeSecurity::Starttls(pki.server_config()),
        };
        let fake = FakeImap::start(
            ImapScript::new()
                .credentials("carol", PASSWORD)
                .security(sec)
                .message(b"Subject: x\r\n\r\nbody\r\n".to_vec()),
        )
        .await;
        let gw =
            start(&trusting(RouteYaml::imap("i", fake.addr()), security, auth, ca).yaml()).await;
        let mut c = LineClient::connect(gw.addr("i")).await.expect("connect");
        c.read_line().await.expect("greeting");
        for (tag, password, answer) in [("a", WRONG, "a NO"), ("b", PASSWORD, "b OK")] {
            let r = c
                .imap_command(&format!("{tag} LOGIN carol {{{}}}", password.len()))
                .await
                .expect("login");
            assert!(r.starts_with(b"+ "), "{what}");
            c.send(password).await.expect("literal");
            let r = c.read_imap_response(tag).await.expect("login");
            assert!(r.starts_with(answer.as_bytes()), "{what}: {r:?}");
        }
        let r = c.imap_command("s SELECT INBOX").await.expect("select");
        assert!(String::from_utf8_lossy(&r).contains("s OK"), "{what}");
        let r = c.imap_command("f FETCH 1 BODY[]").await.expect("fetch");
        assert!(String::from_utf8_lossy(&r).contains("f OK"), "{what}");
        c.imap_command("z LOGOUT").await.expect("logout");

        let mut c = LineClient::connect(gw.addr("i")).await.expect("connect");
        c.read_line().await.expect("greeting");
        let r = c
            .imap_command(&format!(
                "c AUTHENTICATE PLAIN {}",
                sasl_plain_response("", "carol", WRONG)
            ))
            .await
            .expect("authenticate");
        assert!(r.starts_with(b"c NO"), "{what}: {r:?}");
        let r = c.imap_command("d AUTHENTICATE PLAIN").await.expect("auth");
        assert_eq!(r, b"+ \r\n", "{what}");
        c.send(&sasl_plain_response("", "carol", PASSWORD))
            .await
            .expect("response");
        let r = c.read_imap_response("d").await.expect("authenticate");
        assert!(r.starts_with(b"d OK"), "{what}: {r:?}");
        c.imap_command("z LOGOUT").await.expect("logout");
        assert!(
            fake.wait_closed(2, Duration::from_secs(5)).await,
            "{what}: upstream sessions still open"
        );
        let logins = fake
            .events()
            .iter()
            .filter(|e| matches!(e, ImapEvent::LoggedIn { .. }))
            .count();
        assert_eq!(logins, 2, "{what}");
        gw.stop().await;
    }
}

/// OAuth2 sessions at TRACE: app-only (client secret) and delegated
/// (refresh tokens, rotated) accounts, both mechanisms, a token refused and
/// replaced, a token refused for good, and `invalid_grant`. Returns every
/// secret they involved, in every form that could be logged.
async fn oauth_sessions() -> Vec<String> {
    use postern_testkit::{oauthbearer_response, xoauth2_response, BearerVerifier};
    use setup::*;

    let w = World::new(idp_script().rotate_refresh_tokens(true)).await;
    // POP3, XOAUTH2, client credentials: accepted, then revoked and
    // replaced; and an upstream that refuses every token.
    let pop3 = w.pop3("tls", "XOAUTH2").await;
    let refusing = postern_testkit::FakePop3::start(
        w.pop3_script("starttls", "XOAUTH2")
            .bearer(BearerVerifier::new(|_| None)),
    )
    .await;
    let yaml = w
        .gateway()
        .route(
            w.upstream(RouteYaml::pop3("r", pop3.addr()), "tls", "xoauth2")
                .account(w.scanner(w.app())),
        )
        .route(
            w.upstream(
                RouteYaml::pop3("no", refusing.addr()),
                "starttls",
                "xoauth2",
            )
            .account(w.scanner(w.app())),
        )
        .to_string();
    let gw = start(&yaml).await;
    for expect in ["+OK", "+OK"] {
        let (mut c, r) = pop3_login(gw.addr("r"), LOCAL_USER, LOCAL_PASSWORD).await;
        assert!(r.starts_with(expect), "{r}");
        c.command("QUIT").await.expect("quit");
        w.idp.revoke_access_tokens(USER);
    }
    let (_c, r) = pop3_login(gw.addr("no"), LOCAL_USER, LOCAL_PASSWORD).await;
    assert!(r.starts_with("-ERR [SYS/TEMP]"), "{r}");
    gw.stop().await;

    // IMAP, XOAUTH2, client credentials: accepted, then revoked and
    // replaced (the client logs in to postern with LOGIN).
    let imap = FakeImap::start(
        ImapScript::new()
            .security(w.fake_security("tls"))
            .credentials(USER, "no password works here")
            .mechanisms(&["XOAUTH2"])
            .bearer(w.idp.verifier()),
    )
    .await;
    let yaml = w.yaml(
        w.upstream(RouteYaml::imap("i", imap.addr()), "tls", "xoauth2")
            .account(w.scanner(w.app())),
    );
    let gw = start(&yaml).await;
    for _ in 0..2 {
        let mut c = LineClient::connect(gw.addr("i")).await.expect("connect");
        c.read_line().await.expect("greeting");
        let r = c
            .imap_command(&format!("a LOGIN {LOCAL_USER} \"{LOCAL_PASSWORD}\""))
            .await
            .expect("login");
        assert!(r.starts_with(b"a OK"), "{r:?}");
        c.imap_command("z LOGOUT").await.expect("logout");
        w.idp.revoke_access_tokens(USER);
    }
    gw.stop().await;
    let imap_logins = imap
        .events()
        .iter()
        .filter(|e| matches!(e, ImapEvent::LoggedIn { .. }))
        .count();
    assert_eq!(imap_logins, 2);

    // SMTP, OAUTHBEARER, device code with rotating refresh tokens:
    // accepted, refused and replaced, then the refresh token revoked.
    let smtp = w.smtp("starttls", "OAUTHBEARER").await;
    let yaml = w.yaml(
        w.upstream(RouteYaml::smtp("s", smtp.addr()), "starttls", "oauthbearer")
            .account(w.scanner(w.device())),
    );
    let file = w.config_file("postern.yaml", &yaml);
    w.oauth_login(&file, "s", LOCAL_USER).await;
    let gw = start(&yaml).await;
    for _ in 0..2 {
        let (mut c, r) = smtp_login(gw.addr("s"), LOCAL_USER, LOCAL_PASSWORD).await;
        assert!(r[0].starts_with("235"), "{r:?}");
        assert!(smtp_send(&mut c).await[0].starts_with("250"));
        c.smtp_command("QUIT").await.expect("quit");
        w.idp.revoke_access_tokens(USER);
    }
    w.idp.revoke_refresh_tokens(USER);
    let (_c, r) = smtp_login(gw.addr("s"), LOCAL_USER, LOCAL_PASSWORD).await;
    assert!(r[0].starts_with("454"), "{r:?}");
    gw.stop().await;
    assert_eq!(smtp.accepted_messages().len(), 2);

    let mut secrets = vec![
        CLIENT_SECRET.to_owned(),
        w.state_key.clone(),
        LOCAL_PASSWORD.to_owned(),
    ];
    let access = w.idp.issued_access_tokens();
    assert!(access.len() >= 6, "{}", access.len());
    for t in access {
        let token = t.access_token;
        // Any 40 characters of it, past the fake's `fake-at.` prefix.
        secrets.push(token[8..48].to_owned());
        secrets.push(xoauth2_response(USER, &token));
        secrets.push(oauthbearer_response(
            USER,
            "127.0.0.1",
            smtp.addr().port(),
            &token,
        ));
        secrets.push(token);
    }
    let refresh = w.idp.refresh_tokens();
    assert!(refresh.len() >= 3, "{}", refresh.len());
    for t in refresh {
        secrets.push(t.refresh_token[8..].to_owned());
    }
    secrets
}
