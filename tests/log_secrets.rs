//! No password, digest or SASL payload appears in any log line at any
//! level: sessions of every login method run at TRACE and the whole captured
//! output is searched for every form of the secrets.

mod common;

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{start, RouteYaml};
use postern_testkit::{
    cram_md5_digest, login_base64, rfc1939_apop_digest, sasl_plain_response, FakePop3,
    FakeSecurity, FakeSmtp, LineClient, Pop3Event, Pop3Script, SmtpEvent, SmtpScript, TempDir,
    TestPki, RFC1939_TIMESTAMP,
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
    // No base64 blob of the shape of a CRAM-MD5 response ("carol <32 hex>").
    let cram_prefix = base64::engine::general_purpose::STANDARD.encode("carol ");
    assert!(
        !log.contains(&cram_prefix[..6]),
        "a CRAM-MD5 response appears in the log"
    );
}
