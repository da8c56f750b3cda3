//! End-to-end: stored accounts, local APOP / CRAM-MD5, devices without
//! login, the mixing rules, address blocking, HTTP refusal and the PROXY
//! protocol, through the real gateway against checking fake upstreams.

mod common;

use std::time::{Duration, Instant};

use common::{routes_yaml, secret_file, start, Account, RouteYaml, Secret};
use postern_testkit::{
    cram_md5_response, login_base64, rfc1939_apop_digest, sasl_plain_response, FakePop3, FakeSmtp,
    LineClient, Pop3Event, Pop3Script, SmtpEvent, SmtpScript, TempDir,
};

const WAIT: Duration = Duration::from_secs(5);

/// Stored secrets, in 0600 files of a directory of the test's own (tests
/// run in parallel threads of one process, so none may change the process
/// environment; `*_env` secrets are tested through the binary in cli/secrets.rs).
struct Secrets {
    local: Secret,
    upstream: Secret,
    device: Secret,
    _dir: TempDir,
}

impl Secrets {
    fn new() -> Self {
        let dir = TempDir::new("postern-accounts");
        Secrets {
            local: Secret::file(secret_file(&dir, "local_pw", "local secret")),
            upstream: Secret::file(secret_file(&dir, "upstream_pw", "wonderland")),
            device: Secret::file(secret_file(&dir, "device_pw", "wonderland")),
            _dir: dir,
        }
    }

    /// scanner / "local secret" locally, alice / "wonderland" upstream.
    fn scanner(&self) -> Account {
        Account::upstream("alice", self.upstream.clone()).local("scanner", self.local.clone())
    }
}

fn pop3_accounts_route(
    upstream: std::net::SocketAddr,
    auth: &str,
    secrets: &Secrets,
    passthrough: bool,
) -> String {
    RouteYaml::pop3("r", upstream)
        .security("none")
        .auth(auth)
        .passthrough(passthrough)
        .account(secrets.scanner())
        .yaml()
}

/// The `<...>` timestamp in a greeting.
fn timestamp(greeting: &str) -> String {
    let start = greeting.find('<').expect("a timestamp in the greeting");
    let end = greeting[start..].find('>').expect("closing >") + start;
    greeting[start..=end].to_owned()
}

#[tokio::test]
async fn local_apop_and_cram_md5_use_the_stored_upstream_login() {
    let fake =
        FakePop3::start(Pop3Script::new().message(b"Subject: x\r\n\r\nhi\r\n".to_vec())).await;
    let secrets = Secrets::new();
    let gw = start(&pop3_accounts_route(
        fake.addr(),
        "cram-md5",
        &secrets,
        false,
    ))
    .await;

    // postern as an APOP server (the qpopper row of the seed).
    let mut c = LineClient::connect(gw.addr("r")).await.expect("connect");
    let greeting = c.read_line().await.expect("greeting");
    let ts = timestamp(&greeting);
    assert!(ts.ends_with("@postern>"), "{greeting}");
    let digest = rfc1939_apop_digest(&ts, "local secret");
    let r = c
        .command(&format!("APOP scanner {digest}"))
        .await
        .expect("apop");
    assert!(r.starts_with("+OK"), "{r}");
    fake.expect_event(
        "stored login",
        |e| matches!(e, Pop3Event::LoggedIn { method, .. } if method == "CRAM-MD5"),
        WAIT,
    )
    .await;
    assert!(c.command("STAT").await.expect("stat").starts_with("+OK 1"));
    c.command("QUIT").await.expect("quit");

    // A second session gets a different timestamp.
    let mut c = LineClient::connect(gw.addr("r")).await.expect("connect");
    let greeting2 = c.read_line().await.expect("greeting");
    assert_ne!(timestamp(&greeting2), ts, "timestamps must not repeat");

    // Local AUTH CRAM-MD5.
    let prompt = c.command("AUTH CRAM-MD5").await.expect("auth");
    let challenge =
        String::from_utf8(base64_decode(prompt.trim_start_matches("+ "))).expect("ascii challenge");
    let r = c
        .command(&cram_md5_response("scanner", "local secret", &challenge))
        .await
        .expect("resp");
    assert!(r.starts_with("+OK"), "{r}");
    c.command("QUIT").await.expect("quit");
    gw.stop().await;
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .expect("base64")
}

/// The mixing rules: a configured user with a wrong password is refused and
/// never tried upstream; other users pass through only when allowed; the
/// reply does not tell whether the user exists.
#[tokio::test]
async fn mixing_rules_and_uniform_refusals() {
    let fake = FakePop3::start(Pop3Script::new().credentials("someone", "theirs")).await;
    let secrets = Secrets::new();
    let gw = start(&pop3_accounts_route(fake.addr(), "apop", &secrets, true)).await;
    let mut c = LineClient::connect(gw.addr("r")).await.expect("connect");
    c.read_line().await.expect("greeting");
    c.command("USER scanner").await.expect("user");
    let started = Instant::now();
    let wrong = c.command("PASS theirs").await.expect("pass");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "local failures are delayed"
    );
    c.command("USER nobody-here").await.expect("user");
    let unknown = c.command("PASS whatever").await.expect("pass");
    assert!(unknown.starts_with("-ERR [AUTH]"), "{unknown}");
    assert!(wrong.starts_with("-ERR [AUTH]"), "{wrong}");
    // passthrough: true sends unknown names upstream, so the upstream saw
    // `nobody-here` but never `scanner`.
    let cmds = fake.commands();
    assert!(
        !cmds.iter().any(|l| l.contains("scanner")),
        "a local user's login went upstream: {cmds:?}"
    );
    // A non-account user passes through with their own password.
    c.command("USER someone").await.expect("user");
    let r = c.command("PASS theirs").await.expect("pass");
    assert!(r.starts_with("+OK"), "{r}");
    c.command("QUIT").await.expect("quit");
    gw.stop().await;

    // Without passthrough, unknown users are refused locally.
    let fake = FakePop3::start(Pop3Script::new().credentials("someone", "theirs")).await;
    let gw = start(&pop3_accounts_route(fake.addr(), "apop", &secrets, false)).await;
    let mut c = LineClient::connect(gw.addr("r")).await.expect("connect");
    c.read_line().await.expect("greeting");
    c.command("USER someone").await.expect("user");
    assert!(c
        .command("PASS theirs")
        .await
        .expect("pass")
        .starts_with("-ERR [AUTH]"));
    assert!(
        !fake.commands().iter().any(|l| l.starts_with("APOP")),
        "{:?}",
        fake.commands()
    );
    gw.stop().await;
}

#[tokio::test]
async fn repeated_failures_block_the_address() {
    let fake = FakePop3::start(Pop3Script::new()).await;
    let secrets = Secrets::new();
    let gw = start(&pop3_accounts_route(fake.addr(), "apop", &secrets, false)).await;
    // Five failures in parallel (each is delayed), from 127.0.0.7.
    let me: std::net::IpAddr = "127.0.0.7".parse().expect("ip");
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let addr = gw.addr("r");
        tasks.push(tokio::spawn(async move {
            let mut c = LineClient::connect_from(me, addr).await.expect("connect");
            c.read_line().await.expect("greeting");
            c.command("USER scanner").await.expect("user");
            c.command("PASS guess").await.expect("pass")
        }));
    }
    for t in tasks {
        assert!(t.await.expect("task").starts_with("-ERR [AUTH]"));
    }
    let mut c = LineClient::connect_from(me, gw.addr("r"))
        .await
        .expect("connect");
    let r = c.read_line().await.expect("refusal");
    assert!(
        r.starts_with("-ERR [SYS/TEMP]") && r.contains("failed logins"),
        "{r}"
    );
    // Another address is not affected.
    let mut c = LineClient::connect_from("127.0.0.8".parse().expect("ip"), gw.addr("r"))
        .await
        .expect("connect");
    assert!(c.read_line().await.expect("greeting").starts_with("+OK"));
    gw.stop().await;
}

/// The upstream refuses the stored credentials: the client gets a temporary
/// error (not an [AUTH] it could not fix), and postern does not retry the
/// account at once.
#[tokio::test]
async fn upstream_refusing_stored_credentials_is_temporary_and_backs_off() {
    let fake =
        FakePop3::start(Pop3Script::new().credentials("alice", "a different password")).await;
    let secrets = Secrets::new();
    let gw = start(&pop3_accounts_route(
        fake.addr(),
        "cram-md5",
        &secrets,
        false,
    ))
    .await;
    for attempt in 0..2 {
        let mut c = LineClient::connect(gw.addr("r")).await.expect("connect");
        c.read_line().await.expect("greeting");
        c.command("USER scanner").await.expect("user");
        let r = c.command("PASS local secret").await.expect("pass");
        assert!(r.starts_with("-ERR [SYS/TEMP]"), "attempt {attempt}: {r}");
    }
    let failures = fake
        .events()
        .iter()
        .filter(|e| matches!(e, Pop3Event::AuthFailed { .. }))
        .count();
    assert_eq!(
        failures, 1,
        "postern retried an account the upstream had just refused"
    );
    gw.stop().await;
}

/// The scanner account, and a device at 127.0.0.9 with its own file.
fn smtp_accounts_route(upstream: std::net::SocketAddr, secrets: &Secrets) -> String {
    RouteYaml::smtp("s", upstream)
        .security("none")
        .auth("cram-md5")
        .account(secrets.scanner())
        .account(Account::upstream("alice", secrets.device.clone()).sources(&["127.0.0.9/32"]))
        .yaml()
}

#[tokio::test]
async fn smtp_device_without_login_and_local_cram_md5() {
    let fake = FakeSmtp::start(SmtpScript::new()).await;
    let secrets = Secrets::new();
    let gw = start(&smtp_accounts_route(fake.addr(), &secrets)).await;

    // The device at 127.0.0.9: no AUTH offered, mail goes through with the
    // stored upstream login.
    let mut d = LineClient::connect_from("127.0.0.9".parse().expect("ip"), gw.addr("s"))
        .await
        .expect("connect");
    assert!(d.read_smtp_reply().await.expect("greeting")[0].starts_with("220"));
    let ehlo = d.smtp_command("EHLO printer").await.expect("ehlo");
    assert!(!ehlo.iter().any(|l| l.contains("AUTH")), "{ehlo:?}");
    assert!(d.smtp_command("MAIL FROM:<printer@x>").await.expect("mail")[0].starts_with("250"));
    assert!(d.smtp_command("RCPT TO:<b@y>").await.expect("rcpt")[0].starts_with("250"));
    assert!(d.smtp_command("DATA").await.expect("data")[0].starts_with("354"));
    d.send_raw(b"Subject: scan\r\n\r\npage 1\r\n.\r\n")
        .await
        .expect("body");
    assert!(d.read_smtp_reply().await.expect("final")[0].starts_with("250"));
    assert_eq!(
        fake.accepted_messages()[0].auth_user.as_deref(),
        Some("alice")
    );

    // Any other address gets no device login: MAIL needs AUTH.
    let mut o = LineClient::connect_from("127.0.0.10".parse().expect("ip"), gw.addr("s"))
        .await
        .expect("connect");
    o.read_smtp_reply().await.expect("greeting");
    let ehlo = o.smtp_command("EHLO other").await.expect("ehlo");
    assert!(
        ehlo.iter().any(|l| l.contains("AUTH PLAIN LOGIN CRAM-MD5")),
        "{ehlo:?}"
    );
    assert!(o.smtp_command("MAIL FROM:<x@x>").await.expect("mail")[0].starts_with("530"));
    // Local CRAM-MD5 (what swaks --auth CRAM-MD5 does).
    let prompt = o.smtp_command("AUTH CRAM-MD5").await.expect("auth");
    let challenge = String::from_utf8(base64_decode(&prompt[0][4..])).expect("ascii");
    let r = o
        .smtp_command(&cram_md5_response("scanner", "local secret", &challenge))
        .await
        .expect("resp");
    assert!(r[0].starts_with("235"), "{r:?}");
    fake.expect_event(
        "stored AUTH",
        |e| matches!(e, SmtpEvent::AuthOk { mechanism, .. } if mechanism == "CRAM-MD5"),
        WAIT,
    )
    .await;
    // Without passthrough, a login that is not a local account is refused
    // and never reaches the upstream.
    let mut p = LineClient::connect_from("127.0.0.10".parse().expect("ip"), gw.addr("s"))
        .await
        .expect("connect");
    p.read_smtp_reply().await.expect("greeting");
    p.smtp_command("EHLO other").await.expect("ehlo");
    let r = p
        .smtp_command(&format!(
            "AUTH PLAIN {}",
            sasl_plain_response("", "alice", "wonderland")
        ))
        .await
        .expect("auth");
    assert!(r[0].starts_with("535"), "{r:?}");
    gw.stop().await;
}

#[tokio::test]
async fn smtp_stored_credentials_refused_upstream_give_454() {
    let fake =
        FakeSmtp::start(SmtpScript::new().credentials("alice", "not what postern has")).await;
    let secrets = Secrets::new();
    let gw = start(&smtp_accounts_route(fake.addr(), &secrets)).await;
    let mut c = LineClient::connect_from("127.0.0.11".parse().expect("ip"), gw.addr("s"))
        .await
        .expect("connect");
    c.read_smtp_reply().await.expect("greeting");
    c.smtp_command("EHLO c").await.expect("ehlo");
    c.smtp_command("AUTH LOGIN").await.expect("login");
    c.smtp_command(&login_base64("scanner"))
        .await
        .expect("user");
    let r = c
        .smtp_command(&login_base64("local secret"))
        .await
        .expect("pass");
    assert!(r[0].starts_with("454 4.7.0"), "{r:?}");
    // The device account is in backoff too? No: it is a separate account,
    // but it shares the refused upstream password, so it fails and backs off.
    // The device logs in upstream at its first command that needs the
    // upstream (MAIL), not at connect.
    let mut d = LineClient::connect_from("127.0.0.9".parse().expect("ip"), gw.addr("s"))
        .await
        .expect("connect");
    assert!(d.read_smtp_reply().await.expect("greeting")[0].starts_with("220"));
    d.smtp_command("EHLO d").await.expect("ehlo");
    let r = d
        .smtp_command("MAIL FROM:<d@example.org>")
        .await
        .expect("mail");
    assert!(r[0].starts_with("421 4.7.0"), "{r:?}");
    // Now in backoff: refused at once, before any upstream connection.
    let mut d = LineClient::connect_from("127.0.0.9".parse().expect("ip"), gw.addr("s"))
        .await
        .expect("connect");
    assert!(d.read_smtp_reply().await.expect("greeting")[0].starts_with("421 4.7.0"));
    let failures = fake
        .events()
        .iter()
        .filter(|e| matches!(e, SmtpEvent::AuthFailed { .. }))
        .count();
    assert_eq!(failures, 2, "one refusal per account, then backoff");
    gw.stop().await;
}

#[tokio::test]
async fn http_requests_are_refused_on_mail_ports() {
    let pop = FakePop3::start(Pop3Script::new()).await;
    let smtp = FakeSmtp::start(SmtpScript::new()).await;
    let yaml = routes_yaml(&[
        RouteYaml::pop3("p", pop.addr())
            .security("none")
            .auth("apop"),
        RouteYaml::smtp("s", smtp.addr())
            .security("none")
            .auth("cram-md5"),
    ]);
    let gw = start(&yaml).await;
    for route in ["p", "s"] {
        let mut c = LineClient::connect(gw.addr(route)).await.expect("connect");
        c.read_line().await.expect("greeting");
        c.send_raw(
            b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 20\r\n\r\nUSER a\r\nPASS b\r\n",
        )
        .await
        .expect("send");
        let (rest, _) = c.read_to_close().await;
        let text = String::from_utf8_lossy(&rest);
        assert!(text.contains("not a web server"), "{route}: {text}");
        assert_eq!(
            text.matches("\r\n").count(),
            1,
            "{route}: only one reply, then close: {text}"
        );
    }
    gw.stop().await;
}

#[tokio::test]
async fn proxy_protocol_gives_the_real_client_address() {
    let fake = FakePop3::start(Pop3Script::new()).await;
    let yaml = RouteYaml::pop3("r", fake.addr())
        .proxy_protocol()
        .allow(&["10.1.0.0/16"])
        .security("none")
        .auth("apop")
        .yaml();
    let gw = start(&yaml).await;
    // v1 header naming an allowed client.
    let mut c = LineClient::connect(gw.addr("r")).await.expect("connect");
    c.send_raw(b"PROXY TCP4 10.1.2.3 127.0.0.1 40000 3999\r\n")
        .await
        .expect("header");
    assert!(c.read_line().await.expect("greeting").starts_with("+OK"));
    // v2 header naming a client outside the allow-list.
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v2.extend_from_slice(&[
        0x21, 0x11, 0, 12, 192, 0, 2, 1, 127, 0, 0, 1, 0x9c, 0x40, 0x0f, 0x9f,
    ]);
    let mut c = LineClient::connect(gw.addr("r")).await.expect("connect");
    c.send_raw(&v2).await.expect("header");
    assert!(c.read_line().await.expect("refusal").starts_with("-ERR"));
    // No header at all: closed without a word.
    let mut c = LineClient::connect(gw.addr("r")).await.expect("connect");
    c.send_raw(b"USER a\r\n").await.expect("send");
    let (rest, _) = c.read_to_close().await;
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    // The loopback socket itself is not in the allow-list: without the
    // header's address this route would refuse everyone here.
    gw.stop().await;
}
