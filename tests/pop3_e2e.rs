//! End-to-end: the real gateway in-process, a legacy client speaking plain
//! POP3 to it, and a scripted fake upstream that really checks digests and
//! really speaks TLS (certificates minted per run).

mod common;

use std::time::Duration;

use common::{pop3_greet_and_pass, pop3_route, start, POP3_GREETING};
use postern_testkit::{
    dot_stuff, sasl_plain_response, CapaBehaviour, FakePop3, FakeSecurity, LineClient, Pop3Event,
    Pop3Script, StlsBehaviour, TempDir, TestPki,
};

const WAIT: Duration = Duration::from_secs(5);

fn messages() -> Vec<Vec<u8>> {
    vec![
        b"Subject: one\r\n\r\nHello.\r\n".to_vec(),
        b"Subject: dots\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nafter a lone dot\r\n".to_vec(),
        "Subject: 8bit\r\n\r\nGr\u{fc}\u{df}e, \u{65e5}\u{672c}\u{8a9e}\r\n"
            .as_bytes()
            .iter()
            .copied()
            .chain(b"\xfe\xff raw bytes\r\n".iter().copied())
            .collect(),
    ]
}

/// The bytes a RETR reply body must carry: stuffed body + terminator.
fn wire(body: &[u8]) -> Vec<u8> {
    let mut v = dot_stuff(body);
    v.extend_from_slice(b".\r\n");
    v
}

struct Upstream {
    fake: FakePop3,
    extra: String,
    _dir: TempDir,
}

async fn upstream(pki: &TestPki, security: &str, script: Pop3Script) -> Upstream {
    let dir = TempDir::new("postern-e2e");
    let ca = pki.write_ca_pem(dir.path());
    let (sec, extra) = match security {
        "none" => (FakeSecurity::Plain, String::new()),
        "tls" => (
            FakeSecurity::Tls(pki.server_config()),
            format!(", ca: \"{}\", server_name: localhost", ca.display()),
        ),
        "starttls" => (
            FakeSecurity::Starttls(pki.server_config()),
            format!(", ca: \"{}\", server_name: localhost", ca.display()),
        ),
        other => panic!("{other}"),
    };
    let fake = FakePop3::start(script.security(sec)).await;
    Upstream {
        fake,
        extra,
        _dir: dir,
    }
}

async fn read_reply_body(c: &mut LineClient) -> Vec<u8> {
    c.read_multiline().await.expect("multi-line reply")
}

/// Every security × auth combination: log in with USER/PASS (and with AUTH
/// PLAIN from the client), list, retrieve byte-exactly, delete, QUIT.
#[tokio::test]
async fn every_security_and_auth_combination() {
    let pki = TestPki::new();
    for security in ["none", "tls", "starttls"] {
        for (auth, method) in [
            ("user", "USER"),
            ("apop", "APOP"),
            ("plain", "PLAIN"),
            ("cram-md5", "CRAM-MD5"),
        ] {
            let what = format!("{security} × {auth}");
            let up = upstream(
                &pki,
                security,
                Pop3Script::new()
                    .credentials("alice", "wonder land")
                    .messages(messages()),
            )
            .await;
            let yaml = format!(
                "routes:\n{}",
                pop3_route("r", up.fake.addr(), security, auth, &up.extra)
            );
            let gw = start(&yaml).await;
            let mut c = LineClient::connect(gw.addr("r")).await.expect("connect");
            assert!(
                c.read_line().await.expect("greeting").starts_with("+OK"),
                "{what}"
            );

            // A wrong password is refused with [AUTH] and may be retried.
            assert!(c
                .command("USER alice")
                .await
                .expect("user")
                .starts_with("+OK"));
            let r = c.command("PASS wrong").await.expect("pass");
            assert!(r.starts_with("-ERR [AUTH]"), "{what}: {r}");

            assert!(c
                .command("USER alice")
                .await
                .expect("user")
                .starts_with("+OK"));
            let r = c.command("PASS wonder land").await.expect("pass");
            assert!(r.starts_with("+OK"), "{what}: {r}");
            up.fake
                .expect_event(&what, |e| {
                    matches!(e, Pop3Event::LoggedIn { method: m, tls } if m == method && *tls == (security != "none"))
                }, WAIT)
                .await;

            let r = c.command("STAT").await.expect("stat");
            assert!(r.starts_with("+OK 3 "), "{what}: {r}");
            for (i, body) in messages().iter().enumerate() {
                let r = c.command(&format!("RETR {}", i + 1)).await.expect("retr");
                assert!(r.starts_with("+OK"), "{what}: {r}");
                assert_eq!(
                    read_reply_body(&mut c).await,
                    wire(body),
                    "{what}: message {}",
                    i + 1
                );
            }
            assert!(c.command("DELE 1").await.expect("dele").starts_with("+OK"));
            let r = c.command("QUIT").await.expect("quit");
            assert!(r.starts_with("+OK"), "{what}: {r}");
            up.fake
                .expect_event(
                    &what,
                    |e| matches!(e, Pop3Event::QuitCommitted { deleted } if deleted == &vec![1]),
                    WAIT,
                )
                .await;
            assert_eq!(up.fake.mailbox_len(), 2, "{what}");
            gw.stop().await;
        }
    }
}

#[tokio::test]
async fn client_auth_plain_is_converted_to_the_upstream_method() {
    let pki = TestPki::new();
    for (auth, method) in [("apop", "APOP"), ("cram-md5", "CRAM-MD5")] {
        let up = upstream(
            &pki,
            "tls",
            Pop3Script::new()
                .credentials("bob", "s3cret")
                .messages(messages()),
        )
        .await;
        let gw = start(&format!(
            "routes:\n{}",
            pop3_route("r", up.fake.addr(), "tls", auth, &up.extra)
        ))
        .await;
        let mut c = LineClient::connect(gw.addr("r")).await.expect("connect");
        c.read_line().await.expect("greeting");
        // Continuation form.
        assert_eq!(c.command("AUTH PLAIN").await.expect("auth"), "+ ");
        let r = c
            .command(&sasl_plain_response("", "bob", "s3cret"))
            .await
            .expect("resp");
        assert!(r.starts_with("+OK"), "{auth}: {r}");
        up.fake
            .expect_event(
                auth,
                |e| matches!(e, Pop3Event::LoggedIn { method: m, .. } if m == method),
                WAIT,
            )
            .await;
        c.command("QUIT").await.expect("quit");

        // Initial-response form.
        let mut c = LineClient::connect(gw.addr("r")).await.expect("connect");
        c.read_line().await.expect("greeting");
        let r = c
            .command(&format!(
                "AUTH PLAIN {}",
                sasl_plain_response("bob", "bob", "s3cret")
            ))
            .await
            .expect("auth");
        assert!(r.starts_with("+OK"), "{auth}: {r}");
        let r = c.command("LIST").await.expect("list");
        assert!(r.starts_with("+OK"));
        let list = read_reply_body(&mut c).await;
        assert_eq!(
            list.iter().filter(|b| **b == b'\n').count(),
            4,
            "3 entries + terminator"
        );
        c.command("QUIT").await.expect("quit");
        gw.stop().await;
    }
}

#[tokio::test]
async fn capa_before_login_reflects_the_upstream_and_top_uidl_relay() {
    let pki = TestPki::new();
    let up = upstream(
        &pki,
        "starttls",
        Pop3Script::new().credentials("a", "b").messages(messages()),
    )
    .await;
    let gw = start(&format!(
        "routes:\n{}",
        pop3_route("r", up.fake.addr(), "starttls", "cram-md5", &up.extra)
    ))
    .await;
    // Before any session has logged in, postern knows nothing of the
    // upstream: CAPA is its own, conservative list (no relayed TOP/UIDL).
    let mut c = LineClient::connect(gw.addr("r")).await.expect("connect");
    let greeting = c.read_line().await.expect("greeting");
    assert!(greeting.starts_with(POP3_GREETING), "{greeting}");
    assert!(c.command("CAPA").await.expect("capa").starts_with("+OK"));
    let caps = c.read_multiline_lines().await.expect("caps");
    for want in [
        "USER",
        "SASL PLAIN",
        "RESP-CODES",
        "AUTH-RESP-CODE",
        "PIPELINING",
    ] {
        assert!(
            caps.iter().any(|l| l == want),
            "{want} missing from {caps:?}"
        );
    }
    assert!(
        !caps.iter().any(|l| l == "TOP" || l == "UIDL"),
        "relayed commands offered before the upstream was ever seen: {caps:?}"
    );
    assert!(
        !caps.iter().any(|l| l == "STLS" || l.contains("CRAM-MD5")),
        "{caps:?}"
    );
    assert_eq!(up.fake.connections(), 0, "CAPA before login went upstream");
    // One complete session teaches postern the upstream's capabilities.
    assert!(c.command("USER a").await.expect("user").starts_with("+OK"));
    assert!(c.command("PASS b").await.expect("pass").starts_with("+OK"));
    assert!(c.command("QUIT").await.expect("quit").starts_with("+OK"));
    drop(c);

    // The next session's CAPA before login reflects them.
    let mut c = LineClient::connect(gw.addr("r")).await.expect("connect");
    c.read_line().await.expect("greeting");
    assert!(c.command("CAPA").await.expect("capa").starts_with("+OK"));
    let caps = c.read_multiline_lines().await.expect("caps");
    for want in [
        "USER",
        "SASL PLAIN",
        "RESP-CODES",
        "AUTH-RESP-CODE",
        "PIPELINING",
        "TOP",
        "UIDL",
    ] {
        assert!(
            caps.iter().any(|l| l == want),
            "{want} missing from {caps:?}"
        );
    }
    assert!(
        !caps.iter().any(|l| l == "STLS"),
        "upstream STLS leaked: {caps:?}"
    );
    assert!(
        !caps.iter().any(|l| l.contains("CRAM-MD5")),
        "upstream SASL leaked: {caps:?}"
    );

    // Pipelined login and commands in one segment: answered in order.
    c.send_raw(b"USER a\r\nPASS b\r\nUIDL\r\nTOP 2 0\r\nNOOP\r\n")
        .await
        .expect("send");
    assert!(c.read_line().await.expect("user").starts_with("+OK"));
    assert!(c.read_line().await.expect("pass").starts_with("+OK"));
    assert!(c.read_line().await.expect("uidl").starts_with("+OK"));
    let uidl = c.read_multiline_lines().await.expect("uidl body");
    assert_eq!(uidl.len(), 3, "{uidl:?}");
    assert!(c.read_line().await.expect("top").starts_with("+OK"));
    let top = c.read_multiline().await.expect("top body");
    assert!(
        top.starts_with(b"Subject: dots\r\n\r\n"),
        "{:?}",
        String::from_utf8_lossy(&top)
    );
    assert!(c.read_line().await.expect("noop").starts_with("+OK"));

    // After login, CAPA is the upstream's list without login entries.
    assert!(c.command("CAPA").await.expect("capa").starts_with("+OK"));
    let caps = c.read_multiline_lines().await.expect("caps");
    assert!(caps.iter().any(|l| l == "TOP"), "{caps:?}");
    assert!(
        !caps.iter().any(|l| l == "STLS" || l.starts_with("SASL")),
        "{caps:?}"
    );
    // Unknown verbs are answered locally, never forwarded.
    assert!(c.command("XTND XLST").await.expect("x").starts_with("-ERR"));
    assert!(!up.fake.commands().iter().any(|l| l.starts_with("XTND")));
    c.command("QUIT").await.expect("quit");
    gw.stop().await;
}

/// Each way of stripping or subverting STLS fails closed: the client gets
/// `-ERR [SYS/TEMP]` and no credential ever reaches the upstream.
#[tokio::test]
async fn stls_stripping_and_injection_fail_closed() {
    let pki = TestPki::new();
    let cases = [
        (
            "no STLS in CAPA",
            Pop3Script::new().capa(CapaBehaviour::WithoutStls),
        ),
        (
            "no CAPA, STLS refused",
            Pop3Script::new()
                .capa(CapaBehaviour::Unsupported)
                .stls(StlsBehaviour::Refuse),
        ),
        (
            "STLS refused",
            Pop3Script::new().stls(StlsBehaviour::Refuse),
        ),
        (
            "response injection after +OK",
            Pop3Script::new().stls(StlsBehaviour::AcceptThenInject(
                b"+OK injected\r\n".to_vec(),
            )),
        ),
    ];
    for (what, script) in cases {
        let up = upstream(&pki, "starttls", script.credentials("a", "b")).await;
        let gw = start(&format!(
            "routes:\n{}",
            pop3_route("r", up.fake.addr(), "starttls", "user", &up.extra)
        ))
        .await;
        let mut c = LineClient::connect(gw.addr("r")).await.expect("connect");
        // postern greets itself; the upstream is opened (and found
        // insecure) only when the client logs in.
        let r = pop3_greet_and_pass(&mut c, "a", "b").await;
        assert!(r.starts_with("-ERR [SYS/TEMP]"), "{what}: {r}");
        let (_, _) = c.read_to_close().await;
        assert!(
            up.fake.wait_closed(1, WAIT).await,
            "{what}: upstream not closed"
        );
        let cmds = up.fake.commands();
        assert!(
            !cmds
                .iter()
                .any(|l| l.starts_with("USER") || l.starts_with("PASS")),
            "{what}: {cmds:?}"
        );
        gw.stop().await;
    }
}

/// Certificate problems: wrong name, unknown CA, pin mismatch all fail;
/// a matching pin works.
#[tokio::test]
async fn certificate_verification_name_ca_and_pins() {
    let pki = TestPki::new();
    let other = TestPki::new();
    let dir = TempDir::new("postern-certs");
    let good_ca = pki.write_ca_pem(dir.path());
    let other_dir = TempDir::new("postern-other");
    let other_ca = other.write_ca_pem(other_dir.path());
    let good_pin = pki.leaf_spki_sha256_base64();
    let bad_pin = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

    let cases: Vec<(&str, FakeSecurity, String, bool)> = vec![
        (
            "wrong certificate name",
            FakeSecurity::Tls(pki.server_config_for_names(&["other.test"])),
            format!(", ca: \"{}\", server_name: localhost", good_ca.display()),
            false,
        ),
        (
            "unknown CA",
            FakeSecurity::Tls(pki.server_config()),
            format!(", ca: \"{}\", server_name: localhost", other_ca.display()),
            false,
        ),
        (
            "default roots do not trust a private CA",
            FakeSecurity::Tls(pki.server_config()),
            ", server_name: localhost".to_owned(),
            false,
        ),
        (
            "pin mismatch",
            FakeSecurity::Tls(pki.server_config()),
            format!(
                ", ca: \"{}\", server_name: localhost, pin_sha256: [\"{bad_pin}\"]",
                good_ca.display()
            ),
            false,
        ),
        (
            "pin match",
            FakeSecurity::Tls(pki.server_config()),
            format!(
                ", ca: \"{}\", server_name: localhost, pin_sha256: [\"{bad_pin}\", \"{good_pin}\"]",
                good_ca.display()
            ),
            true,
        ),
        (
            "STLS with a wrong certificate name",
            FakeSecurity::Starttls(pki.server_config_for_names(&["other.test"])),
            format!(", ca: \"{}\", server_name: localhost", good_ca.display()),
            false,
        ),
    ];
    for (what, sec, extra, works) in cases {
        let starttls = matches!(sec, FakeSecurity::Starttls(_));
        let fake = FakePop3::start(Pop3Script::new().credentials("a", "b").security(sec)).await;
        let security = if starttls { "starttls" } else { "tls" };
        let gw = start(&format!(
            "routes:\n{}",
            pop3_route("r", fake.addr(), security, "user", &extra)
        ))
        .await;
        let mut c = LineClient::connect(gw.addr("r")).await.expect("connect");
        // The certificate is checked when the login opens the upstream.
        let r = pop3_greet_and_pass(&mut c, "a", "b").await;
        if works {
            assert!(r.starts_with("+OK"), "{what}: {r}");
        } else {
            assert!(r.starts_with("-ERR [SYS/TEMP]"), "{what}: {r}");
            assert!(
                !fake
                    .events()
                    .iter()
                    .any(|e| matches!(e, Pop3Event::LoggedIn { .. })),
                "{what}"
            );
        }
        gw.stop().await;
    }
}

#[tokio::test]
async fn bad_apop_timestamps_fail_closed_without_falling_back() {
    for ts in [
        None,
        Some("<no-at-sign>"),
        Some("<with space@host>"),
        Some("<a@b@c>"),
        Some("<unterminated@x"),
    ] {
        let fake = FakePop3::start(
            Pop3Script::new()
                .credentials("a", "b")
                .greeting_timestamp(ts),
        )
        .await;
        let gw = start(&format!(
            "routes:\n{}",
            pop3_route("r", fake.addr(), "none", "apop", "")
        ))
        .await;
        let mut c = LineClient::connect(gw.addr("r")).await.expect("connect");
        // The upstream's timestamp is fetched (and refused) at login.
        let r = pop3_greet_and_pass(&mut c, "a", "b").await;
        assert!(r.starts_with("-ERR [SYS/TEMP]"), "{ts:?}: {r}");
        assert!(fake.wait_closed(1, WAIT).await);
        let cmds = fake.commands();
        assert!(
            !cmds
                .iter()
                .any(|l| l.starts_with("USER") || l.starts_with("APOP") || l.starts_with("PASS")),
            "{ts:?}: {cmds:?}"
        );
        gw.stop().await;
    }
}

/// The upstream dies in the middle of RETR: the client sees the bytes that
/// came, then the connection closes, and never a terminating ".".
#[tokio::test]
async fn upstream_death_mid_retr_closes_the_client_without_a_terminator() {
    let pki = TestPki::new();
    for security in ["none", "tls"] {
        let body: Vec<u8> = (0..2000)
            .flat_map(|i| format!("line {i}\r\n").into_bytes())
            .collect();
        let up = upstream(
            &pki,
            security,
            Pop3Script::new()
                .credentials("a", "b")
                .message(body)
                .die_mid_retr(5000),
        )
        .await;
        let gw = start(&format!(
            "routes:\n{}",
            pop3_route("r", up.fake.addr(), security, "apop", &up.extra)
        ))
        .await;
        let mut c = LineClient::connect(gw.addr("r")).await.expect("connect");
        c.read_line().await.expect("greeting");
        c.command("USER a").await.expect("user");
        assert!(c.command("PASS b").await.expect("pass").starts_with("+OK"));
        assert!(c.command("RETR 1").await.expect("retr").starts_with("+OK"));
        let (rest, _) = c.read_to_close().await;
        assert!(
            rest.len() >= 4000 && rest.len() <= 5000,
            "{security}: got {} bytes",
            rest.len()
        );
        assert!(
            !rest.ends_with(b"\r\n.\r\n"),
            "{security}: synthetic terminator"
        );
        gw.stop().await;
    }
}

/// A client that leaves without QUIT: the upstream is dropped without QUIT,
/// so the deletion is never committed (RFC 1939 §6).
#[tokio::test]
async fn client_disconnect_without_quit_commits_nothing() {
    let fake = FakePop3::start(Pop3Script::new().credentials("a", "b").messages(messages())).await;
    let gw = start(&format!(
        "routes:\n{}",
        pop3_route("r", fake.addr(), "none", "cram-md5", "")
    ))
    .await;
    let mut c = LineClient::connect(gw.addr("r")).await.expect("connect");
    c.read_line().await.expect("greeting");
    c.command("USER a").await.expect("user");
    assert!(c.command("PASS b").await.expect("pass").starts_with("+OK"));
    assert!(c.command("DELE 1").await.expect("dele").starts_with("+OK"));
    drop(c);
    fake.expect_event(
        "closed without QUIT",
        |e| matches!(e, Pop3Event::ClosedWithoutQuit),
        WAIT,
    )
    .await;
    assert!(
        !fake.commands().iter().any(|l| l == "QUIT"),
        "{:?}",
        fake.commands()
    );
    assert_eq!(fake.mailbox_len(), 3);
    gw.stop().await;
}

/// A route whose upstream does not resolve still starts, and answers each
/// session with a temporary error.
#[tokio::test]
async fn unresolvable_or_refusing_upstreams_give_a_temporary_error() {
    // A port nobody listens on: bind then drop.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let yaml = format!(
        "routes:\n  - name: dns\n    protocol: pop3\n    listen: 127.0.0.1:0\n    upstream: {{ address: \"pop.nonexistent.invalid:995\", auth: user }}\n{}",
        pop3_route("refused", closed, "none", "apop", "")
    );
    let gw = start(&yaml).await;
    for route in ["dns", "refused", "dns"] {
        let mut c = LineClient::connect(gw.addr(route)).await.expect("connect");
        // postern greets itself; the upstream is tried at login.
        let r = pop3_greet_and_pass(&mut c, "a", "b").await;
        assert!(r.starts_with("-ERR [SYS/TEMP]"), "{route}: {r}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn clients_outside_the_allow_list_are_refused() {
    let fake = FakePop3::start(Pop3Script::new()).await;
    let yaml = format!(
        "routes:\n  - name: r\n    protocol: pop3\n    listen: 127.0.0.1:0\n    allow: [10.0.0.0/8]\n    upstream: {{ address: \"{}\", security: none, auth: apop }}\n",
        fake.addr()
    );
    let gw = start(&yaml).await;
    let mut c = LineClient::connect(gw.addr("r")).await.expect("connect");
    let line = c.read_line().await.expect("refusal");
    assert!(line.starts_with("-ERR"), "{line}");
    assert_eq!(
        fake.connections(),
        0,
        "upstream contacted for a refused client"
    );
    gw.stop().await;
}

/// SIGTERM semantics: after shutdown no new session is accepted, but a
/// running one can finish its work within the grace period.
#[tokio::test]
async fn shutdown_drains_running_sessions() {
    let fake = FakePop3::start(Pop3Script::new().credentials("a", "b").messages(messages())).await;
    let gw = start(&format!(
        "routes:\n{}",
        pop3_route("r", fake.addr(), "none", "apop", "")
    ))
    .await;
    let addr = gw.addr("r");
    let mut c = LineClient::connect(addr).await.expect("connect");
    c.read_line().await.expect("greeting");
    gw.shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        LineClient::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
    c.command("USER a").await.expect("user");
    assert!(c.command("PASS b").await.expect("pass").starts_with("+OK"));
    assert!(c.command("RETR 1").await.expect("retr").starts_with("+OK"));
    assert_eq!(
        c.read_multiline().await.expect("body"),
        wire(&messages()[0])
    );
    assert!(c.command("QUIT").await.expect("quit").starts_with("+OK"));
    gw.stop().await;
}

#[tokio::test]
async fn a_session_past_the_grace_period_is_closed() {
    let fake = FakePop3::start(Pop3Script::new().credentials("a", "b")).await;
    let gw = common::start_with_grace(
        &format!(
            "routes:\n{}",
            pop3_route("r", fake.addr(), "none", "apop", "")
        ),
        Duration::from_millis(200),
    )
    .await;
    let mut c = LineClient::connect(gw.addr("r")).await.expect("connect");
    c.read_line().await.expect("greeting");
    gw.stop().await;
    let (rest, _) = c.read_to_close().await;
    assert!(rest.is_empty(), "{rest:?}");
}

/// A multi-megabyte message is relayed byte-exactly (streamed, not collected).
#[tokio::test]
async fn large_message_relays_byte_exactly() {
    let line: Vec<u8> = (0..78u8).map(|i| b'!' + (i % 90)).chain(*b"\r\n").collect();
    let mut body = Vec::new();
    while body.len() < 8 * 1024 * 1024 {
        body.extend_from_slice(&line);
        body.extend_from_slice(b".dot line\r\n");
    }
    let pki = TestPki::new();
    let up = upstream(
        &pki,
        "tls",
        Pop3Script::new()
            .credentials("a", "b")
            .message(body.clone()),
    )
    .await;
    let gw = start(&format!(
        "routes:\n{}",
        pop3_route("r", up.fake.addr(), "tls", "user", &up.extra)
    ))
    .await;
    let mut c = LineClient::connect(gw.addr("r")).await.expect("connect");
    c.set_timeout(Duration::from_secs(30));
    c.read_line().await.expect("greeting");
    c.command("USER a").await.expect("user");
    assert!(c.command("PASS b").await.expect("pass").starts_with("+OK"));
    assert!(c.command("RETR 1").await.expect("retr").starts_with("+OK"));
    let got = c.read_multiline().await.expect("body");
    assert!(
        got == wire(&body),
        "large body differs (len {} vs {})",
        got.len(),
        wire(&body).len()
    );
    assert!(c.command("QUIT").await.expect("quit").starts_with("+OK"));
    gw.stop().await;
}

/// A route whose listen side is `tls` or `starttls`, with a cert from `pki`.
async fn tls_listener(
    pki: &TestPki,
    listen_security: &str,
    fake: &FakePop3,
) -> (common::Running, TempDir) {
    let dir = TempDir::new("postern-listen");
    let (cert, key) = pki.write_leaf_pem(dir.path());
    let yaml = format!(
        "routes:\n  - name: r\n    protocol: pop3\n    listen: {{ address: 127.0.0.1:0, security: {listen_security}, certificate: \"{}\", key: \"{}\" }}\n    upstream: {{ address: \"{}\", security: none, auth: apop }}\n",
        cert.display(),
        key.display(),
        fake.addr()
    );
    (start(&yaml).await, dir)
}

#[tokio::test]
async fn implicit_tls_listener() {
    let pki = TestPki::new();
    let fake = FakePop3::start(Pop3Script::new().credentials("a", "b").messages(messages())).await;
    let (gw, _dir) = tls_listener(&pki, "tls", &fake).await;
    let mut c = LineClient::connect_tls(gw.addr("r"), pki.client_config(), "localhost")
        .await
        .expect("TLS connect");
    assert!(c.read_line().await.expect("greeting").starts_with("+OK"));
    c.command("USER a").await.expect("user");
    assert!(c.command("PASS b").await.expect("pass").starts_with("+OK"));
    assert!(c.command("RETR 2").await.expect("retr").starts_with("+OK"));
    assert_eq!(
        c.read_multiline().await.expect("body"),
        wire(&messages()[1])
    );
    c.command("QUIT").await.expect("quit");

    // Plain text on the TLS port: the handshake fails and the connection closes.
    let mut plain = LineClient::connect(gw.addr("r")).await.expect("connect");
    plain.send_raw(b"USER a\r\n").await.expect("send");
    let (got, _) = plain.read_to_close().await;
    assert!(!String::from_utf8_lossy(&got).contains("+OK"), "{got:?}");
    gw.stop().await;
}

#[tokio::test]
async fn stls_listener_requires_tls_for_login_and_resets_state() {
    let pki = TestPki::new();
    let fake = FakePop3::start(Pop3Script::new().credentials("a", "b").messages(messages())).await;
    let (gw, _dir) = tls_listener(&pki, "starttls", &fake).await;
    let mut c = LineClient::connect(gw.addr("r")).await.expect("connect");
    c.read_line().await.expect("greeting");
    assert!(c.command("CAPA").await.expect("capa").starts_with("+OK"));
    let caps = c.read_multiline_lines().await.expect("caps");
    assert!(caps.iter().any(|l| l == "STLS"), "{caps:?}");
    assert!(
        !caps.iter().any(|l| l == "USER" || l.starts_with("SASL")),
        "login advertised before TLS: {caps:?}"
    );
    let r = c.command("USER a").await.expect("user");
    assert!(r.starts_with("-ERR"), "{r}");
    assert!(!fake.commands().iter().any(|l| l.starts_with("APOP")));
    assert!(c.command("STLS").await.expect("stls").starts_with("+OK"));
    c.upgrade_tls(pki.client_config(), "localhost")
        .await
        .expect("handshake");
    assert!(c.command("CAPA").await.expect("capa").starts_with("+OK"));
    let caps = c.read_multiline_lines().await.expect("caps");
    assert!(
        caps.iter().any(|l| l == "USER") && !caps.iter().any(|l| l == "STLS"),
        "{caps:?}"
    );
    assert!(
        c.command("STLS").await.expect("stls").starts_with("-ERR"),
        "no second STLS"
    );
    c.command("USER a").await.expect("user");
    assert!(c.command("PASS b").await.expect("pass").starts_with("+OK"));
    assert!(c.command("STAT").await.expect("stat").starts_with("+OK 3"));
    c.command("QUIT").await.expect("quit");
    gw.stop().await;
}

/// CVE-2011-0411: commands pipelined after STLS in the same segment would
/// be read as if sent inside TLS. postern closes the session instead.
#[tokio::test]
async fn stls_command_injection_closes_the_session() {
    let pki = TestPki::new();
    let fake = FakePop3::start(Pop3Script::new().credentials("a", "b")).await;
    let (gw, _dir) = tls_listener(&pki, "starttls", &fake).await;
    let mut c = LineClient::connect(gw.addr("r")).await.expect("connect");
    c.read_line().await.expect("greeting");
    c.send_raw(b"STLS\r\nCAPA\r\n").await.expect("send");
    let (got, _) = c.read_to_close().await;
    assert!(
        got.is_empty(),
        "postern answered after an injection attempt: {:?}",
        String::from_utf8_lossy(&got)
    );
    gw.stop().await;
}

/// The APOP MD5 attack needs chosen timestamps and many digests: a repeated
/// timestamp is refused, and repeated failures pause a user's APOP logins.
#[tokio::test]
async fn apop_timestamp_reuse_and_failure_bursts_are_refused() {
    let fixed = FakePop3::start(
        Pop3Script::new()
            .credentials("a", "b")
            .greeting_timestamp(Some("<1.2@fixed>")),
    )
    .await;
    let gw = start(&format!(
        "routes:\n{}",
        pop3_route("r", fixed.addr(), "none", "apop", "")
    ))
    .await;
    // The upstream's timestamp is fetched at login: the first login uses
    // it, a second login meeting the same one is refused before any digest.
    let mut c = LineClient::connect(gw.addr("r")).await.expect("connect");
    let r = pop3_greet_and_pass(&mut c, "a", "b").await;
    assert!(r.starts_with("+OK"), "{r}");
    let mut c2 = LineClient::connect(gw.addr("r")).await.expect("connect");
    let r = pop3_greet_and_pass(&mut c2, "a", "b").await;
    assert!(
        r.starts_with("-ERR [SYS/TEMP]"),
        "a repeated timestamp was accepted: {r}"
    );
    let apops = fixed
        .commands()
        .iter()
        .filter(|l| l.starts_with("APOP"))
        .count();
    assert_eq!(
        apops,
        1,
        "a digest was sent for a repeated timestamp: {:?}",
        fixed.commands()
    );
    drop(c);
    gw.stop().await;

    let fake = FakePop3::start(Pop3Script::new().credentials("a", "b")).await;
    let gw = start(&format!(
        "routes:\n{}",
        pop3_route("r", fake.addr(), "none", "apop", "")
    ))
    .await;
    let mut c = LineClient::connect(gw.addr("r")).await.expect("connect");
    c.read_line().await.expect("greeting");
    for _ in 0..3 {
        c.command("USER a").await.expect("user");
        assert!(c
            .command("PASS wrong")
            .await
            .expect("pass")
            .starts_with("-ERR [AUTH]"));
    }
    c.command("USER a").await.expect("user");
    let r = c.command("PASS b").await.expect("pass");
    assert!(r.starts_with("-ERR [SYS/TEMP]"), "{r}");
    let apops = fake
        .commands()
        .iter()
        .filter(|l| l.starts_with("APOP"))
        .count();
    assert_eq!(
        apops,
        3,
        "postern kept sending digests: {:?}",
        fake.commands()
    );
    gw.stop().await;
}
