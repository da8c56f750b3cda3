//! Drive `FakePop3` with `LineClient` over plain TCP, implicit TLS and STLS.
#![allow(clippy::unwrap_used)]

use std::io;
use std::time::Duration;

use base64::Engine as _;
use postern_testkit::{
    cram_md5_response, dot_unstuff, rfc1939_apop_digest, sasl_plain_response, CapaBehaviour,
    FakePop3, FakeSecurity, LineClient, Pop3Event, Pop3Script, StlsBehaviour, TestPki,
};

const WAIT: Duration = Duration::from_secs(5);
const MSG1: &[u8] =
    b"From: a@example.test\r\nSubject: dots\r\n\r\n.leading dot\r\nmiddle\r\n.\r\n..two\r\nend\r\n";
const MSG2: &[u8] = b"Subject: two\r\n\r\nline 1\r\nline 2\r\nline 3\r\n";

fn script() -> Pop3Script {
    Pop3Script::new()
        .credentials("alice", "pass with spaces")
        .message(MSG1)
        .message(MSG2)
}

async fn connect(fake: &FakePop3) -> (LineClient, String) {
    let mut client = LineClient::connect(fake.addr()).await.unwrap();
    let greeting = client.read_line().await.unwrap();
    (client, greeting)
}

async fn quit(fake: &FakePop3, client: &mut LineClient) {
    assert!(client.command("QUIT").await.unwrap().starts_with("+OK"));
    let (rest, end) = client.read_to_close().await;
    assert!(rest.is_empty());
    end.unwrap();
    assert!(fake.wait_closed(fake.connections(), WAIT).await);
}

fn no_violations(fake: &FakePop3) {
    let bad: Vec<_> = fake
        .events()
        .into_iter()
        .filter(|e| {
            matches!(
                e,
                Pop3Event::ClientViolation(_) | Pop3Event::SessionPanicked(_)
            )
        })
        .collect();
    assert!(bad.is_empty(), "{bad:?}");
}

/// The challenge inside a "+ base64" CRAM-MD5 continuation.
fn challenge_of(line: &str) -> String {
    let encoded = line.strip_prefix("+ ").expect("continuation");
    let raw = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap();
    String::from_utf8(raw).unwrap()
}

#[tokio::test]
async fn plain_user_pass_and_transaction_commands() {
    let fake = FakePop3::start(script()).await;
    let (mut c, greeting) = connect(&fake).await;
    assert!(
        greeting.starts_with("+OK fake ready <") && greeting.ends_with("@fake.test>"),
        "{greeting}"
    );
    let (mut c2, greeting2) = connect(&fake).await;
    c2.command("QUIT").await.unwrap();
    drop(c2);
    assert_ne!(greeting, greeting2, "a fresh timestamp per connection");

    assert!(c.command("CAPA").await.unwrap().starts_with("+OK"));
    let caps = c.read_multiline_lines().await.unwrap();
    assert_eq!(
        caps,
        [
            "TOP",
            "UIDL",
            "USER",
            "RESP-CODES",
            "PIPELINING",
            "SASL PLAIN CRAM-MD5"
        ]
    );

    assert!(c.command("STAT").await.unwrap().starts_with("-ERR"));
    assert!(c.command("USER alice").await.unwrap().starts_with("+OK"));
    assert_eq!(
        c.command("PASS pass with spaces").await.unwrap(),
        "+OK logged in, 2 messages"
    );
    let total = MSG1.len() + MSG2.len();
    assert_eq!(c.command("STAT").await.unwrap(), format!("+OK 2 {total}"));
    assert!(c.command("LIST").await.unwrap().starts_with("+OK"));
    assert_eq!(
        c.read_multiline_lines().await.unwrap(),
        [format!("1 {}", MSG1.len()), format!("2 {}", MSG2.len())]
    );
    assert_eq!(
        c.command("LIST 2").await.unwrap(),
        format!("+OK 2 {}", MSG2.len())
    );
    assert!(c.command("LIST 3").await.unwrap().starts_with("-ERR"));
    assert!(c.command("UIDL").await.unwrap().starts_with("+OK"));
    assert_eq!(
        c.read_multiline_lines().await.unwrap(),
        ["1 fake-uid-1", "2 fake-uid-2"]
    );

    // RETR: status line, stuffed body, CRLF.CRLF.
    assert_eq!(
        c.command("RETR 1").await.unwrap(),
        format!("+OK {} octets", MSG1.len())
    );
    let raw = c.read_multiline().await.unwrap();
    assert_eq!(
        raw,
        b"From: a@example.test\r\nSubject: dots\r\n\r\n..leading dot\r\nmiddle\r\n..\r\n...two\r\nend\r\n.\r\n"
    );
    assert_eq!(dot_unstuff(&raw).unwrap(), MSG1);
    assert!(c.buffered().is_empty());

    // TOP: headers, blank line, k body lines.
    assert!(c.command("TOP 2 1").await.unwrap().starts_with("+OK"));
    assert_eq!(
        c.read_multiline().await.unwrap(),
        b"Subject: two\r\n\r\nline 1\r\n.\r\n"
    );

    assert!(c.command("NOOP").await.unwrap().starts_with("+OK"));
    assert!(c.command("DELE 1").await.unwrap().starts_with("+OK"));
    assert!(c.command("DELE 1").await.unwrap().starts_with("-ERR"));
    assert!(c.command("RETR 1").await.unwrap().starts_with("-ERR"));
    assert!(c.command("RSET").await.unwrap().starts_with("+OK"));
    assert!(c.command("DELE 2").await.unwrap().starts_with("+OK"));
    assert_eq!(
        c.command("STAT").await.unwrap(),
        format!("+OK 1 {}", MSG1.len())
    );
    quit(&fake, &mut c).await;

    let events = fake.events();
    assert!(events.contains(&Pop3Event::LoggedIn {
        method: "USER".into(),
        tls: false
    }));
    assert!(events.contains(&Pop3Event::QuitCommitted { deleted: vec![2] }));
    assert!(!events.contains(&Pop3Event::ClosedWithoutQuit));
    assert_eq!(events.last(), Some(&Pop3Event::Closed));
    assert!(fake.commands().contains(&"PASS ***".to_owned()));
    assert!(!format!("{events:?}").contains("pass with spaces"));
    assert_eq!(fake.mailbox_len(), 1);
    no_violations(&fake);

    // The deletion is visible to the next session.
    let (mut c, _) = connect(&fake).await;
    c.command("USER alice").await.unwrap();
    assert_eq!(
        c.command("PASS pass with spaces").await.unwrap(),
        "+OK logged in, 1 messages"
    );
    quit(&fake, &mut c).await;
}

#[tokio::test]
async fn wrong_password_is_auth_error() {
    let fake = FakePop3::start(script()).await;
    let (mut c, _) = connect(&fake).await;
    assert!(c.command("PASS early").await.unwrap().starts_with("-ERR"));
    c.command("USER alice").await.unwrap();
    assert_eq!(
        c.command("PASS pass with").await.unwrap(),
        "-ERR [AUTH] Authentication failed"
    );
    c.command("USER bob").await.unwrap();
    assert_eq!(
        c.command("PASS pass with spaces").await.unwrap(),
        "-ERR [AUTH] Authentication failed"
    );
    drop(c);
    fake.expect_event("Closed", |e| *e == Pop3Event::Closed, WAIT)
        .await;
    let events = fake.events();
    let fails = events
        .iter()
        .filter(|e| {
            **e == Pop3Event::AuthFailed {
                method: "USER".into(),
            }
        })
        .count();
    assert_eq!(fails, 2);
    assert!(events.contains(&Pop3Event::ClosedWithoutQuit));
}

#[tokio::test]
async fn apop_login() {
    let fake = FakePop3::start(script()).await;
    let (mut c, greeting) = connect(&fake).await;
    let ts = greeting.rsplit_once(' ').unwrap().1;
    let digest = rfc1939_apop_digest(ts, "pass with spaces");

    // Upper-case hex is not what RFC 1939 §7 asks for.
    let upper = digest.to_ascii_uppercase();
    assert_eq!(
        c.command(&format!("APOP alice {upper}")).await.unwrap(),
        "-ERR [AUTH] Authentication failed"
    );
    assert_eq!(
        c.command(&format!("APOP alice {digest}")).await.unwrap(),
        "+OK logged in, 2 messages"
    );
    quit(&fake, &mut c).await;
    let events = fake.events();
    assert!(events.contains(&Pop3Event::AuthFailed {
        method: "APOP".into()
    }));
    assert!(events.contains(&Pop3Event::LoggedIn {
        method: "APOP".into(),
        tls: false
    }));
    assert!(fake.commands().contains(&"APOP alice ***".to_owned()));
}

#[tokio::test]
async fn greeting_timestamp_is_verbatim_or_absent() {
    let fake = FakePop3::start(script().greeting_timestamp(Some("<no-at-sign> x"))).await;
    let (_c, greeting) = connect(&fake).await;
    assert_eq!(greeting, "+OK fake ready <no-at-sign> x");

    let fake = FakePop3::start(script().greeting_timestamp(None)).await;
    let (mut c, greeting) = connect(&fake).await;
    assert_eq!(greeting, "+OK fake ready");
    let digest = rfc1939_apop_digest("", "pass with spaces");
    assert!(c
        .command(&format!("APOP alice {digest}"))
        .await
        .unwrap()
        .starts_with("-ERR"));
}

#[tokio::test]
async fn auth_plain_with_and_without_initial_response() {
    let fake = FakePop3::start(script()).await;
    let (mut c, _) = connect(&fake).await;

    // authzid different from authcid: refused.
    let bad = sasl_plain_response("root", "alice", "pass with spaces");
    assert_eq!(
        c.command(&format!("AUTH PLAIN {bad}")).await.unwrap(),
        "-ERR [AUTH] Authentication failed"
    );
    // Cancelled continuation.
    assert_eq!(c.command("AUTH PLAIN").await.unwrap(), "+ ");
    assert!(c.command("*").await.unwrap().starts_with("-ERR"));
    // Continuation.
    assert_eq!(c.command("AUTH PLAIN").await.unwrap(), "+ ");
    let good = sasl_plain_response("", "alice", "pass with spaces");
    assert_eq!(c.command(&good).await.unwrap(), "+OK logged in, 2 messages");
    quit(&fake, &mut c).await;

    // Initial response, authzid == authcid.
    let (mut c, _) = connect(&fake).await;
    let ir = sasl_plain_response("alice", "alice", "pass with spaces");
    assert!(c
        .command(&format!("AUTH PLAIN {ir}"))
        .await
        .unwrap()
        .starts_with("+OK"));
    quit(&fake, &mut c).await;

    let events = fake.events();
    assert!(events.contains(&Pop3Event::AuthCancelled {
        method: "PLAIN".into()
    }));
    let logins = events
        .iter()
        .filter(|e| matches!(e, Pop3Event::LoggedIn { method, .. } if method == "PLAIN"))
        .count();
    assert_eq!(logins, 2);
    assert!(fake.commands().contains(&"AUTH PLAIN ***".to_owned()));
    // The continuation line carrying the credentials is never logged.
    assert!(!fake.commands().iter().any(|c| c.contains(&good)));
}

#[tokio::test]
async fn auth_cram_md5() {
    let fake = FakePop3::start(script()).await;
    let (mut c, _) = connect(&fake).await;

    let line = c.command("AUTH CRAM-MD5").await.unwrap();
    let challenge = challenge_of(&line);
    assert!(challenge.starts_with('<') && challenge.ends_with("@fake.test>"));
    let wrong = cram_md5_response("alice", "not it", &challenge);
    assert_eq!(
        c.command(&wrong).await.unwrap(),
        "-ERR [AUTH] Authentication failed"
    );

    let line = c.command("AUTH cram-md5").await.unwrap();
    let second = challenge_of(&line);
    assert_ne!(challenge, second, "challenges must be fresh");
    // Replaying the response to the first challenge fails.
    let replay = cram_md5_response("alice", "pass with spaces", &challenge);
    assert!(c.command(&replay).await.unwrap().starts_with("-ERR"));

    let line = c.command("AUTH CRAM-MD5").await.unwrap();
    let third = challenge_of(&line);
    let right = cram_md5_response("alice", "pass with spaces", &third);
    assert!(c.command(&right).await.unwrap().starts_with("+OK"));
    quit(&fake, &mut c).await;
    assert!(fake.events().contains(&Pop3Event::LoggedIn {
        method: "CRAM-MD5".into(),
        tls: false
    }));
}

#[tokio::test]
async fn sasl_list_controls_capa_and_auth() {
    let fake = FakePop3::start(script().sasl(&["CRAM-MD5"])).await;
    let (mut c, _) = connect(&fake).await;
    c.command("CAPA").await.unwrap();
    let caps = c.read_multiline_lines().await.unwrap();
    assert!(caps.contains(&"SASL CRAM-MD5".to_owned()), "{caps:?}");
    assert!(c.command("AUTH PLAIN").await.unwrap().starts_with("-ERR"));

    let fake = FakePop3::start(script().sasl(&[]).capa(CapaBehaviour::Unsupported)).await;
    let (mut c, _) = connect(&fake).await;
    assert!(c.command("CAPA").await.unwrap().starts_with("-ERR"));
    assert!(c
        .command("AUTH CRAM-MD5")
        .await
        .unwrap()
        .starts_with("-ERR"));
}

#[tokio::test]
async fn implicit_tls_login() {
    let pki = TestPki::new();
    let fake = FakePop3::start(script().security(FakeSecurity::Tls(pki.server_config()))).await;
    let mut c = LineClient::connect_tls(fake.addr(), pki.client_config(), "localhost")
        .await
        .unwrap();
    assert!(c.is_tls());
    assert!(c.read_line().await.unwrap().starts_with("+OK fake ready"));
    c.command("CAPA").await.unwrap();
    let caps = c.read_multiline_lines().await.unwrap();
    assert!(!caps.contains(&"STLS".to_owned()));
    c.command("USER alice").await.unwrap();
    assert!(c
        .command("PASS pass with spaces")
        .await
        .unwrap()
        .starts_with("+OK"));
    c.command("RETR 1").await.unwrap();
    assert_eq!(
        dot_unstuff(&c.read_multiline().await.unwrap()).unwrap(),
        MSG1
    );
    quit(&fake, &mut c).await;
    let events = fake.events();
    assert_eq!(
        &events[..2],
        [Pop3Event::Connected, Pop3Event::TlsEstablished]
    );
    assert!(events.contains(&Pop3Event::LoggedIn {
        method: "USER".into(),
        tls: true
    }));
    no_violations(&fake);
}

#[tokio::test]
async fn implicit_tls_by_ip_and_unknown_ca() {
    let pki = TestPki::new();
    let fake = FakePop3::start(script().security(FakeSecurity::Tls(pki.server_config()))).await;
    let mut c = LineClient::connect_tls(fake.addr(), pki.client_config(), "127.0.0.1")
        .await
        .unwrap();
    assert!(c.read_line().await.unwrap().starts_with("+OK"));
    drop(c);

    let stranger = TestPki::new();
    let err = LineClient::connect_tls(fake.addr(), stranger.client_config(), "localhost")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    fake.expect_event("TlsFailed", |e| matches!(e, Pop3Event::TlsFailed(_)), WAIT)
        .await;
    assert!(fake.wait_closed(2, WAIT).await);
}

#[tokio::test]
async fn wrong_name_leaf_is_rejected() {
    let pki = TestPki::new();
    let config = pki.server_config_for_names(&["other.example"]);
    let fake = FakePop3::start(script().security(FakeSecurity::Tls(config))).await;
    let err = LineClient::connect_tls(fake.addr(), pki.client_config(), "localhost")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not valid for name"), "{err}");
    let mut c = LineClient::connect_tls(fake.addr(), pki.client_config(), "other.example")
        .await
        .unwrap();
    assert!(c.read_line().await.unwrap().starts_with("+OK"));
}

#[tokio::test]
async fn stls_upgrade_then_login() {
    let pki = TestPki::new();
    let fake = FakePop3::start(
        script()
            .security(FakeSecurity::Starttls(pki.server_config()))
            .require_tls_for_auth(true),
    )
    .await;
    let (mut c, _) = connect(&fake).await;
    c.command("CAPA").await.unwrap();
    let caps = c.read_multiline_lines().await.unwrap();
    assert_eq!(caps.last().map(String::as_str), Some("STLS"));
    assert_eq!(
        c.command("USER alice").await.unwrap(),
        "-ERR [AUTH] TLS required"
    );
    assert_eq!(
        c.command("AUTH PLAIN =").await.unwrap(),
        "-ERR [AUTH] TLS required"
    );

    assert_eq!(c.command("STLS").await.unwrap(), "+OK Begin TLS");
    c.upgrade_tls(pki.client_config(), "localhost")
        .await
        .unwrap();
    c.command("CAPA").await.unwrap();
    let caps = c.read_multiline_lines().await.unwrap();
    assert!(!caps.contains(&"STLS".to_owned()), "{caps:?}");
    assert!(c.command("STLS").await.unwrap().starts_with("-ERR"));
    let ir = sasl_plain_response("", "alice", "pass with spaces");
    assert!(c
        .command(&format!("AUTH PLAIN {ir}"))
        .await
        .unwrap()
        .starts_with("+OK"));
    quit(&fake, &mut c).await;
    assert!(fake.events().contains(&Pop3Event::LoggedIn {
        method: "PLAIN".into(),
        tls: true
    }));
    no_violations(&fake);
}

#[tokio::test]
async fn stls_refused_and_hidden() {
    let pki = TestPki::new();
    let fake = FakePop3::start(
        script()
            .security(FakeSecurity::Starttls(pki.server_config()))
            .stls(StlsBehaviour::Refuse),
    )
    .await;
    let (mut c, _) = connect(&fake).await;
    assert!(c.command("STLS").await.unwrap().starts_with("-ERR"));
    // Still plain and usable.
    c.command("USER alice").await.unwrap();
    assert!(c
        .command("PASS pass with spaces")
        .await
        .unwrap()
        .starts_with("+OK"));

    let fake = FakePop3::start(
        script()
            .security(FakeSecurity::Starttls(pki.server_config()))
            .capa(CapaBehaviour::WithoutStls),
    )
    .await;
    let (mut c, _) = connect(&fake).await;
    c.command("CAPA").await.unwrap();
    let caps = c.read_multiline_lines().await.unwrap();
    assert!(!caps.contains(&"STLS".to_owned()));
    assert_eq!(c.command("STLS").await.unwrap(), "+OK Begin TLS");
    c.upgrade_tls(pki.client_config(), "localhost")
        .await
        .unwrap();
    assert!(c.command("NOOP").await.unwrap().starts_with("-ERR"));
}

#[tokio::test]
async fn stls_accept_then_inject_writes_extra_bytes() {
    let pki = TestPki::new();
    let injected = b"+OK injected\r\n".to_vec();
    let fake = FakePop3::start(
        script()
            .security(FakeSecurity::Starttls(pki.server_config()))
            .stls(StlsBehaviour::AcceptThenInject(injected.clone())),
    )
    .await;
    let (mut c, _) = connect(&fake).await;
    assert_eq!(c.command("STLS").await.unwrap(), "+OK Begin TLS");
    c.fill_to(injected.len()).await.unwrap();
    assert_eq!(c.buffered(), &injected[..]);
    let err = c
        .upgrade_tls(pki.client_config(), "localhost")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
}

#[tokio::test]
async fn pipelining_after_stls_is_flagged() {
    let pki = TestPki::new();
    let fake =
        FakePop3::start(script().security(FakeSecurity::Starttls(pki.server_config()))).await;
    let (mut c, _) = connect(&fake).await;
    c.send_raw(b"STLS\r\nCAPA\r\n").await.unwrap();
    fake.expect_event(
        "violation",
        |e| matches!(e, Pop3Event::ClientViolation(_)),
        WAIT,
    )
    .await;
    let (_, _) = c.read_to_close().await;
    assert!(fake.wait_closed(1, WAIT).await);
}

#[tokio::test]
async fn die_mid_retr_plain() {
    let fake = FakePop3::start(script().die_mid_retr(30)).await;
    let (mut c, _) = connect(&fake).await;
    c.command("USER alice").await.unwrap();
    c.command("PASS pass with spaces").await.unwrap();
    c.send("RETR 1").await.unwrap();
    assert_eq!(
        c.read_line().await.unwrap(),
        format!("+OK {} octets", MSG1.len())
    );
    let (rest, end) = c.read_to_close().await;
    end.unwrap();
    assert_eq!(rest, &MSG1[..30]);
    assert!(fake.wait_closed(1, WAIT).await);
    let events = fake.events();
    let n = events.len();
    assert_eq!(
        &events[n - 2..],
        [Pop3Event::ClosedWithoutQuit, Pop3Event::Closed]
    );
}

#[tokio::test]
async fn die_mid_retr_tls_has_no_close_notify() {
    let pki = TestPki::new();
    let fake = FakePop3::start(
        script()
            .security(FakeSecurity::Tls(pki.server_config()))
            .die_mid_retr(10_000),
    )
    .await;
    let mut c = LineClient::connect_tls(fake.addr(), pki.client_config(), "localhost")
        .await
        .unwrap();
    c.read_line().await.unwrap();
    c.command("USER alice").await.unwrap();
    c.command("PASS pass with spaces").await.unwrap();
    assert!(c.command("RETR 1").await.unwrap().starts_with("+OK"));
    let (rest, end) = c.read_to_close().await;
    // The cut is past the body: all of it, still no terminator.
    assert_eq!(dot_unstuff(&[&rest[..], b".\r\n"].concat()).unwrap(), MSG1);
    assert_eq!(end.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
}

#[tokio::test]
async fn concurrent_sessions() {
    let fake = FakePop3::start(script()).await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let addr = fake.addr();
        tasks.spawn(async move {
            let mut c = LineClient::connect(addr).await.unwrap();
            c.read_line().await.unwrap();
            c.command("USER alice").await.unwrap();
            let reply = c.command("PASS pass with spaces").await.unwrap();
            assert!(reply.starts_with("+OK"), "{reply}");
            assert!(c.command("QUIT").await.unwrap().starts_with("+OK"));
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.unwrap();
    }
    assert!(fake.wait_closed(4, WAIT).await);
    assert_eq!(fake.connections(), 4);
    let log = fake.logged_events();
    for session in 0..4 {
        let own: Vec<_> = log
            .iter()
            .filter(|e| e.session == session)
            .map(|e| &e.event)
            .collect();
        assert_eq!(own.first(), Some(&&Pop3Event::Connected));
        assert_eq!(own.last(), Some(&&Pop3Event::Closed));
    }
    no_violations(&fake);
}

#[tokio::test]
async fn wait_for_times_out() {
    let fake = FakePop3::start(script()).await;
    let got = fake
        .wait_for(|e| *e == Pop3Event::Closed, Duration::from_millis(50))
        .await;
    assert_eq!(got, None);
}
