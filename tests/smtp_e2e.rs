//! End-to-end SMTP: the real gateway in-process, a client speaking plain
//! SMTP to it, and a scripted fake upstream that checks credentials, speaks
//! TLS and records message data byte for byte.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{start, SMTP_GREETING};
use postern_testkit::{
    login_base64, sasl_plain_response, DataEnd, EhloBehaviour, FakeSecurity, FakeSmtp, LineClient,
    SmtpEvent, SmtpScript, StarttlsBehaviour, TempDir, TestPki,
};

const WAIT: Duration = Duration::from_secs(5);

fn smtp_route(name: &str, upstream: SocketAddr, security: &str, auth: &str, extra: &str) -> String {
    let plaintext = if security == "none" && (auth == "plain" || auth == "login") {
        ", allow_plaintext_password: true"
    } else {
        ""
    };
    format!(
        "  - name: {name}\n    protocol: smtp\n    listen: 127.0.0.1:0\n    upstream: {{ address: \"{upstream}\", security: {security}, auth: {auth}{plaintext}{extra} }}\n"
    )
}

struct Upstream {
    fake: FakeSmtp,
    extra: String,
    _dir: TempDir,
}

async fn upstream(pki: &TestPki, security: &str, script: SmtpScript) -> Upstream {
    let dir = TempDir::new("postern-smtp-e2e");
    let ca = pki.write_ca_pem(dir.path());
    let tls_extra = format!(", ca: \"{}\", server_name: localhost", ca.display());
    let (sec, extra) = match security {
        "none" => (FakeSecurity::Plain, String::new()),
        "tls" => (FakeSecurity::Tls(pki.server_config()), tls_extra),
        "starttls" => (FakeSecurity::Starttls(pki.server_config()), tls_extra),
        other => panic!("{other}"),
    };
    Upstream {
        fake: FakeSmtp::start(script.security(sec)).await,
        extra,
        _dir: dir,
    }
}

/// One gateway with one route to a fresh fake upstream.
async fn gateway(
    pki: &TestPki,
    security: &str,
    auth: &str,
    script: SmtpScript,
) -> (Upstream, common::Running) {
    let up = upstream(pki, security, script).await;
    let gw = start(&format!(
        "routes:\n{}",
        smtp_route("r", up.fake.addr(), security, auth, &up.extra)
    ))
    .await;
    (up, gw)
}

async fn connect(gw: &common::Running) -> LineClient {
    let mut c = LineClient::connect(gw.addr("r")).await.expect("connect");
    let greeting = c.read_smtp_reply().await.expect("greeting");
    assert!(greeting[0].starts_with("220"), "{greeting:?}");
    c
}

/// Connects, checks postern's own greeting, EHLO (answered locally), then
/// AUTH PLAIN as alice: returns the reply to AUTH, the command that opens
/// the upstream on routes with auth.
async fn greet_ehlo_auth(gw: &common::Running) -> Vec<String> {
    let mut c = LineClient::connect(gw.addr("r")).await.expect("connect");
    let greeting = c.read_smtp_reply().await.expect("greeting");
    assert!(greeting[0].starts_with(SMTP_GREETING), "{greeting:?}");
    let ehlo = c.smtp_command("EHLO c").await.expect("ehlo");
    assert_eq!(code(&ehlo), "250", "{ehlo:?}");
    c.smtp_command(&format!(
        "AUTH PLAIN {}",
        sasl_plain_response("", "alice", "wonderland")
    ))
    .await
    .expect("auth")
}

fn code(reply: &[String]) -> &str {
    &reply.last().expect("a reply")[..3]
}

/// EHLO, then AUTH PLAIN as alice.
async fn login(c: &mut LineClient) {
    let ehlo = c.smtp_command("EHLO client.example").await.expect("ehlo");
    assert_eq!(code(&ehlo), "250");
    let r = c
        .smtp_command(&format!(
            "AUTH PLAIN {}",
            sasl_plain_response("", "alice", "wonderland")
        ))
        .await
        .expect("auth");
    assert_eq!(code(&r), "235", "{r:?}");
}

/// A body exercising dot-stuffing, 8-bit text and a 998-octet line, as the
/// client sends it (already stuffed), without the terminator.
fn tricky_body() -> Vec<u8> {
    let mut b = b"Subject: test\r\n\r\n..leading dot (stuffed)\r\n...two dots\r\n".to_vec();
    b.extend_from_slice("8-bit: Gr\u{fc}\u{df}e \u{65e5}\u{672c}\r\n".as_bytes());
    b.extend_from_slice(&[b'x'; 998]);
    b.extend_from_slice(b"\r\n\r\nlast line\r\n");
    b
}

async fn send_message(c: &mut LineClient, from: &str, rcpts: &[&str], body: &[u8]) -> Vec<String> {
    let r = c
        .smtp_command(&format!("MAIL FROM:<{from}>"))
        .await
        .expect("mail");
    assert_eq!(code(&r), "250", "{r:?}");
    for rcpt in rcpts {
        let r = c
            .smtp_command(&format!("RCPT TO:<{rcpt}>"))
            .await
            .expect("rcpt");
        assert_eq!(code(&r), "250", "{r:?}");
    }
    let r = c.smtp_command("DATA").await.expect("data");
    assert_eq!(code(&r), "354", "{r:?}");
    c.send_raw(body).await.expect("body");
    c.send_raw(b".\r\n").await.expect("end");
    c.read_smtp_reply().await.expect("final reply")
}

#[tokio::test]
async fn every_security_and_auth_combination() {
    let pki = TestPki::new();
    for security in ["none", "tls", "starttls"] {
        for (auth, mechanism) in [
            ("plain", "PLAIN"),
            ("login", "LOGIN"),
            ("cram-md5", "CRAM-MD5"),
            ("none", ""),
        ] {
            let what = format!("{security} × {auth}");
            let script = SmtpScript::new().require_auth(auth != "none");
            let (up, gw) = gateway(&pki, security, auth, script).await;
            let mut c = connect(&gw).await;
            let ehlo = c.smtp_command("EHLO client.example").await.expect("ehlo");
            assert!(
                !ehlo.iter().any(|l| l.contains("STARTTLS")),
                "{what}: {ehlo:?}"
            );
            assert!(
                !ehlo.iter().any(|l| l.contains("CRAM-MD5")),
                "{what}: upstream AUTH list leaked {ehlo:?}"
            );
            assert_eq!(
                ehlo.iter().any(|l| l.contains("AUTH PLAIN LOGIN")),
                auth != "none",
                "{what}: {ehlo:?}"
            );
            if auth != "none" {
                // A wrong password is refused, then AUTH LOGIN succeeds.
                let r = c
                    .smtp_command(&format!(
                        "AUTH PLAIN {}",
                        sasl_plain_response("", "alice", "nope")
                    ))
                    .await
                    .expect("auth");
                assert_eq!(code(&r), "535", "{what}: {r:?}");
                assert_eq!(
                    code(&c.smtp_command("AUTH LOGIN").await.expect("auth")),
                    "334"
                );
                assert_eq!(
                    code(&c.smtp_command(&login_base64("alice")).await.expect("user")),
                    "334"
                );
                let r = c
                    .smtp_command(&login_base64("wonderland"))
                    .await
                    .expect("pass");
                assert_eq!(code(&r), "235", "{what}: {r:?}");
                up.fake
                    .expect_event(&what, |e| {
                        matches!(e, SmtpEvent::AuthOk { mechanism: m, tls } if m == mechanism && *tls == (security != "none"))
                    }, WAIT)
                    .await;
            }
            let body = tricky_body();
            let r = send_message(&mut c, "alice@example.net", &["bob@example.org"], &body).await;
            assert_eq!(code(&r), "250", "{what}: {r:?}");
            assert!(
                r[0].contains("queued as FAKE"),
                "{what}: the reply is the upstream's own: {r:?}"
            );
            let msgs = up.fake.accepted_messages();
            assert_eq!(msgs.len(), 1, "{what}");
            assert_eq!(msgs[0].raw, body, "{what}: data not byte-identical");
            assert_eq!(msgs[0].rcpts, vec!["bob@example.org".to_owned()]);
            assert_eq!(code(&c.smtp_command("QUIT").await.expect("quit")), "221");
            gw.stop().await;
        }
    }
}

#[tokio::test]
async fn upstream_replies_are_relayed_with_their_codes() {
    let pki = TestPki::new();
    // DATA refused upstream: the client never sees a 354.
    for reply in [
        "554 5.5.1 Error: no valid recipients",
        "451 4.3.0 Try again",
    ] {
        let (up, gw) = gateway(
            &pki,
            "tls",
            "plain",
            SmtpScript::new().data_command_reply(reply),
        )
        .await;
        let mut c = connect(&gw).await;
        login(&mut c).await;
        c.smtp_command("MAIL FROM:<a@x>").await.expect("mail");
        c.smtp_command("RCPT TO:<b@y>").await.expect("rcpt");
        let r = c.smtp_command("DATA").await.expect("data");
        assert_eq!(r, vec![reply.to_owned()]);
        assert!(up.fake.messages().is_empty());
        gw.stop().await;
    }
    // The final reply is the upstream's, 4xx and 5xx alike.
    for reply in [
        "554 5.7.1 Rejected by policy",
        "451 4.3.0 Temporary failure",
        "452 4.3.1 Insufficient storage",
    ] {
        let (_up, gw) = gateway(
            &pki,
            "tls",
            "plain",
            SmtpScript::new().data_end(DataEnd::Reply(reply.to_owned())),
        )
        .await;
        let mut c = connect(&gw).await;
        login(&mut c).await;
        let r = send_message(&mut c, "a@x", &["b@y"], b"Subject: x\r\n\r\nhi\r\n").await;
        assert_eq!(r, vec![reply.to_owned()]);
        gw.stop().await;
    }
}

#[tokio::test]
async fn mixed_recipients_and_data_only_with_an_accepted_one() {
    let pki = TestPki::new();
    let script = SmtpScript::new()
        .rcpt_reply("nobody@y", "550 5.1.1 No such user")
        .rcpt_reply("later@y", "451 4.3.0 Try later");
    let (up, gw) = gateway(&pki, "starttls", "cram-md5", script).await;
    let mut c = connect(&gw).await;
    login(&mut c).await;
    // Pipelined: one reply per command, in order.
    c.send_raw(
        b"MAIL FROM:<a@x>\r\nRCPT TO:<nobody@y>\r\nRCPT TO:<later@y>\r\nRCPT TO:<ok@y>\r\nDATA\r\n",
    )
    .await
    .expect("batch");
    let codes: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..5 {
            v.push(code(&c.read_smtp_reply().await.expect("reply")).to_owned());
        }
        v
    };
    assert_eq!(codes, ["250", "550", "451", "250", "354"]);
    c.send_raw(b"Subject: x\r\n\r\nhi\r\n.\r\n")
        .await
        .expect("body");
    assert_eq!(code(&c.read_smtp_reply().await.expect("final")), "250");
    assert_eq!(
        up.fake.accepted_messages()[0].rcpts,
        vec!["ok@y".to_owned()]
    );

    // Every recipient refused: DATA is answered by postern, never sent upstream.
    c.smtp_command("MAIL FROM:<a@x>").await.expect("mail");
    assert_eq!(
        code(&c.smtp_command("RCPT TO:<nobody@y>").await.expect("rcpt")),
        "550"
    );
    let r = c.smtp_command("DATA").await.expect("data");
    assert!(r[0].starts_with("554 5.5.1"), "{r:?}");
    let datas = up
        .fake
        .commands()
        .iter()
        .filter(|l| l.as_str() == "DATA")
        .count();
    assert_eq!(
        datas, 1,
        "DATA reached the upstream without an accepted recipient"
    );
    gw.stop().await;
}

#[tokio::test]
async fn upstream_death_during_data_is_never_a_250() {
    let pki = TestPki::new();
    for (what, end) in [
        ("dies after 100 data bytes", DataEnd::DieAfterBytes(100)),
        ("dies before the final reply", DataEnd::DieBeforeFinalReply),
    ] {
        let (_up, gw) = gateway(&pki, "tls", "plain", SmtpScript::new().data_end(end)).await;
        let mut c = connect(&gw).await;
        login(&mut c).await;
        let body: Vec<u8> = (0..200)
            .flat_map(|i| format!("line {i}\r\n").into_bytes())
            .collect();
        let r = send_message(&mut c, "a@x", &["b@y"], &body).await;
        assert!(r[0].starts_with("451 4.4.2"), "{what}: {r:?}");
        // The session cannot go on without its upstream: 421 and close.
        let r = c.smtp_command("MAIL FROM:<a@x>").await.expect("next");
        assert!(r[0].starts_with("421"), "{what}: {r:?}");
        gw.stop().await;
    }
}

#[tokio::test]
async fn client_leaving_mid_data_never_terminates_the_message_upstream() {
    let pki = TestPki::new();
    for tail in [
        &b"partial line"[..],
        b"line\r\n",
        b"line\r\n.",
        b"line\r\n.\r",
        b"line\r",
    ] {
        let (up, gw) = gateway(&pki, "none", "cram-md5", SmtpScript::new()).await;
        let mut c = connect(&gw).await;
        login(&mut c).await;
        c.smtp_command("MAIL FROM:<a@x>").await.expect("mail");
        c.smtp_command("RCPT TO:<b@y>").await.expect("rcpt");
        assert_eq!(code(&c.smtp_command("DATA").await.expect("data")), "354");
        c.send_raw(b"Subject: cut\r\n\r\n").await.expect("body");
        c.send_raw(tail).await.expect("tail");
        drop(c);
        up.fake
            .expect_event(
                "aborted",
                |e| matches!(e, SmtpEvent::MessageAborted { .. }),
                WAIT,
            )
            .await;
        assert!(
            up.fake.messages().is_empty(),
            "{:?}: a truncated message was delivered",
            String::from_utf8_lossy(tail)
        );
        gw.stop().await;
    }
}

/// SMTP smuggling (CVE-2023-51764/51765/51766): no variant may end or split
/// a message. postern refuses the data (521 5.5.2) and drops the upstream,
/// which therefore receives neither a message nor a bare line ending.
#[tokio::test]
async fn smuggling_vectors_never_reach_the_upstream() {
    let pki = TestPki::new();
    let smuggled = b"MAIL FROM:<admin@victim>\r\nRCPT TO:<x@y>\r\nDATA\r\nforged\r\n.\r\n";
    let vectors: [&[u8]; 8] = [
        b"\n.\n",
        b"\r.\r",
        b"\r\n.\n",
        b"\n.\r\n",
        b"\r.\r\n",
        b"\n.\r",
        b"\r\n.\r",
        b"\r\n.\r\r\n",
    ];
    for v in vectors {
        let (up, gw) = gateway(&pki, "tls", "plain", SmtpScript::new()).await;
        let mut c = connect(&gw).await;
        login(&mut c).await;
        c.smtp_command("MAIL FROM:<a@x>").await.expect("mail");
        c.smtp_command("RCPT TO:<b@y>").await.expect("rcpt");
        assert_eq!(code(&c.smtp_command("DATA").await.expect("data")), "354");
        let mut data = b"Subject: smuggle\r\n\r\nbody".to_vec();
        data.extend_from_slice(v);
        data.extend_from_slice(smuggled);
        data.extend_from_slice(b"more\r\n.\r\n");
        c.send_raw(&data).await.expect("data");
        let r = c.read_smtp_reply().await.expect("reply");
        assert!(r[0].starts_with("521 5.5.2"), "{v:?}: {r:?}");
        up.fake
            .expect_event(
                "aborted",
                |e| matches!(e, SmtpEvent::MessageAborted { .. }),
                WAIT,
            )
            .await;
        assert!(
            up.fake.messages().is_empty(),
            "{v:?}: {:?}",
            up.fake.messages()
        );
        assert!(
            !up.fake
                .events()
                .iter()
                .any(|e| matches!(e, SmtpEvent::BareLineEnding { .. })),
            "{v:?}: a bare line ending reached the upstream"
        );
        assert!(
            !up.fake
                .commands()
                .iter()
                .any(|l| l.contains("admin@victim")),
            "{v:?}"
        );
        gw.stop().await;
    }
}

#[tokio::test]
async fn empty_and_large_messages_arrive_byte_identical() {
    let pki = TestPki::new();
    let script = SmtpScript::new().extensions(&[
        "PIPELINING",
        "SIZE 104857600",
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
    ]);
    let (up, gw) = gateway(&pki, "starttls", "login", script).await;
    let mut c = connect(&gw).await;
    c.set_timeout(Duration::from_secs(60));
    login(&mut c).await;
    let r = send_message(&mut c, "a@x", &["b@y"], b"").await;
    assert_eq!(code(&r), "250", "{r:?}");
    let mut big = Vec::with_capacity(50 * 1024 * 1024 + 100);
    let line: Vec<u8> = (0..76u8).map(|i| b'0' + i % 75).chain(*b"\r\n").collect();
    while big.len() < 50 * 1024 * 1024 {
        big.extend_from_slice(&line);
        big.extend_from_slice(b"..dot\r\n");
    }
    let r = send_message(&mut c, "a@x", &["b@y"], &big).await;
    assert_eq!(code(&r), "250", "{r:?}");
    let msgs = up.fake.accepted_messages();
    assert_eq!(msgs[0].raw, b"", "empty body");
    assert!(
        msgs[1].raw == big,
        "50 MB body differs ({} vs {} bytes)",
        msgs[1].raw.len(),
        big.len()
    );
    gw.stop().await;
}

#[tokio::test]
async fn size_limits_follow_the_upstream() {
    let pki = TestPki::new();
    let (up, gw) = gateway(
        &pki,
        "tls",
        "plain",
        SmtpScript::new().extensions(&["SIZE 1000", "8BITMIME"]),
    )
    .await;
    // Before any session postern has not seen the upstream: EHLO offers
    // the route's own SIZE limit and none of the relayed extensions.
    let mut c = connect(&gw).await;
    let ehlo = c.smtp_command("EHLO c").await.expect("ehlo");
    let route_limit = format!("SIZE {}", postern_core::limits::SMTP_MAX_MESSAGE_SIZE);
    assert!(ehlo.iter().any(|l| l.ends_with(&route_limit)), "{ehlo:?}");
    assert!(
        !ehlo
            .iter()
            .any(|l| l.ends_with("8BITMIME") || l.contains("SMTPUTF8") || l.ends_with("DSN")),
        "offered before the upstream was ever seen: {ehlo:?}"
    );
    assert_eq!(up.fake.connections(), 0, "EHLO before login went upstream");
    // One complete session (a login through the fake) teaches postern the
    // upstream's extensions.
    let r = c
        .smtp_command(&format!(
            "AUTH PLAIN {}",
            sasl_plain_response("", "alice", "wonderland")
        ))
        .await
        .expect("auth");
    assert_eq!(code(&r), "235", "{r:?}");
    assert_eq!(code(&c.smtp_command("QUIT").await.expect("quit")), "221");
    drop(c);

    // The next session's EHLO follows the upstream.
    let mut c = connect(&gw).await;
    let ehlo = c.smtp_command("EHLO c").await.expect("ehlo");
    assert!(ehlo.iter().any(|l| l.ends_with("SIZE 1000")), "{ehlo:?}");
    assert!(ehlo.iter().any(|l| l.ends_with("8BITMIME")), "{ehlo:?}");
    assert!(
        !ehlo.iter().any(|l| l.contains("SMTPUTF8")),
        "not offered by the upstream: {ehlo:?}"
    );
    c.smtp_command(&format!(
        "AUTH PLAIN {}",
        sasl_plain_response("", "alice", "wonderland")
    ))
    .await
    .expect("auth");
    let r = c
        .smtp_command("MAIL FROM:<a@x> SIZE=5000")
        .await
        .expect("mail");
    assert!(r[0].starts_with("552 5.3.4"), "{r:?}");
    // Data larger than declared: refused, and the upstream never gets an end of data.
    c.smtp_command("MAIL FROM:<a@x>").await.expect("mail");
    c.smtp_command("RCPT TO:<b@y>").await.expect("rcpt");
    assert_eq!(code(&c.smtp_command("DATA").await.expect("data")), "354");
    let body = vec![b'y'; 3000];
    c.send_raw(&body).await.expect("body");
    c.send_raw(b"\r\n.\r\n").await.expect("end");
    let r = c.read_smtp_reply().await.expect("final");
    assert!(r[0].starts_with("552 5.3.4"), "{r:?}");
    assert!(up.fake.messages().is_empty());
    let r = c.smtp_command("MAIL FROM:<a@x>").await.expect("next");
    assert!(
        r[0].starts_with("421") && r[0].contains("oversized"),
        "{r:?}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn never_an_open_relay() {
    let pki = TestPki::new();
    let (up, gw) = gateway(&pki, "tls", "plain", SmtpScript::new()).await;
    let mut c = connect(&gw).await;
    c.smtp_command("EHLO c").await.expect("ehlo");
    let r = c.smtp_command("MAIL FROM:<a@x>").await.expect("mail");
    assert!(r[0].starts_with("530 5.7.0"), "{r:?}");
    // Acting as another user is refused before anything goes upstream.
    let r = c
        .smtp_command(&format!(
            "AUTH PLAIN {}",
            sasl_plain_response("bob", "alice", "wonderland")
        ))
        .await
        .expect("auth");
    assert_eq!(code(&r), "535", "{r:?}");
    assert!(
        !up.fake.commands().iter().any(|l| l.starts_with("AUTH")),
        "{:?}",
        up.fake.commands()
    );
    // A client AUTH= parameter is not forwarded.
    let r = c
        .smtp_command(&format!(
            "AUTH PLAIN {}",
            sasl_plain_response("", "alice", "wonderland")
        ))
        .await
        .expect("auth");
    assert_eq!(code(&r), "235");
    assert_eq!(
        code(
            &c.smtp_command("MAIL FROM:<a@x> AUTH=<admin@x>")
                .await
                .expect("mail")
        ),
        "250"
    );
    let mail = up
        .fake
        .expect_event("mail", |e| matches!(e, SmtpEvent::MailFrom(_)), WAIT)
        .await;
    assert!(
        matches!(&mail, SmtpEvent::MailFrom(m) if !m.contains("AUTH=")),
        "{mail:?}"
    );
    gw.stop().await;

    // The allow-list is enforced before the greeting.
    let yaml = format!(
        "routes:\n  - name: r\n    protocol: smtp\n    listen: 127.0.0.1:0\n    allow: [192.0.2.0/24]\n    upstream: {{ address: \"{}\", security: tls, auth: plain }}\n",
        up.fake.addr()
    );
    let before = up.fake.connections();
    let gw = start(&yaml).await;
    let mut c = LineClient::connect(gw.addr("r")).await.expect("connect");
    let r = c.read_smtp_reply().await.expect("refusal");
    assert!(r[0].starts_with("554 5.7.1"), "{r:?}");
    assert_eq!(
        up.fake.connections(),
        before,
        "the upstream was contacted for a refused client"
    );
    gw.stop().await;
}

#[tokio::test]
async fn starttls_stripping_and_injection_fail_closed() {
    let pki = TestPki::new();
    let cases = [
        (
            "not offered",
            SmtpScript::new().starttls(StarttlsBehaviour::NotOffered),
        ),
        (
            "refused",
            SmtpScript::new().starttls(StarttlsBehaviour::Refuse),
        ),
        (
            "EHLO refused, only HELO",
            SmtpScript::new().ehlo(EhloBehaviour::Refused),
        ),
        (
            "bytes after the go-ahead",
            SmtpScript::new().starttls(StarttlsBehaviour::AcceptThenInject(
                b"250 injected\r\n".to_vec(),
            )),
        ),
    ];
    for (what, script) in cases {
        let (up, gw) = gateway(&pki, "starttls", "plain", script).await;
        // postern greets and answers EHLO itself; the upstream is opened
        // (and found insecure) at AUTH.
        let r = greet_ehlo_auth(&gw).await;
        assert!(r[0].starts_with("421 4.7.0"), "{what}: {r:?}");
        assert!(up.fake.wait_closed(1, WAIT).await, "{what}");
        assert!(
            !up.fake.commands().iter().any(|l| l.starts_with("AUTH")),
            "{what}"
        );
        gw.stop().await;
    }
    // The route's mechanism must be offered after TLS: no weaker fallback.
    let (up, gw) = gateway(
        &pki,
        "starttls",
        "cram-md5",
        SmtpScript::new().auth_mechanisms(&["PLAIN", "LOGIN"]),
    )
    .await;
    let r = greet_ehlo_auth(&gw).await;
    assert!(r[0].starts_with("421"), "{r:?}");
    assert!(!up.fake.commands().iter().any(|l| l.starts_with("AUTH")));
    gw.stop().await;
}

#[tokio::test]
async fn unreachable_upstream_gives_a_temporary_error() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let gw = start(&format!(
        "routes:\n{}",
        smtp_route("r", closed, "none", "cram-md5", "")
    ))
    .await;
    // postern greets and answers EHLO itself; the upstream is tried at AUTH.
    let r = greet_ehlo_auth(&gw).await;
    assert!(r[0].starts_with("421 4.4.1"), "{r:?}");
    gw.stop().await;
}

#[tokio::test]
async fn local_commands_and_bare_line_endings_in_commands() {
    let pki = TestPki::new();
    let (up, gw) = gateway(&pki, "none", "none", SmtpScript::new().require_auth(false)).await;
    let mut c = connect(&gw).await;
    assert!(
        code(&c.smtp_command("MAIL FROM:<a@x>").await.expect("mail")).starts_with('5'),
        "EHLO first"
    );
    c.smtp_command("HELO c").await.expect("helo");
    assert_eq!(
        code(&c.smtp_command("VRFY root").await.expect("vrfy")),
        "252"
    );
    assert_eq!(code(&c.smtp_command("HELP").await.expect("help")), "214");
    assert_eq!(code(&c.smtp_command("NOOP").await.expect("noop")), "250");
    assert_eq!(
        code(&c.smtp_command("XCLIENT ADDR=1.2.3.4").await.expect("x")),
        "500"
    );
    c.send_raw(b"MAIL FROM:<a@x>\n").await.expect("bare");
    assert!(c.read_smtp_reply().await.expect("r")[0].starts_with("500 5.5.2"));
    assert_eq!(
        code(&c.smtp_command("MAIL FROM:<a@x>").await.expect("mail")),
        "250"
    );
    assert_eq!(code(&c.smtp_command("RSET").await.expect("rset")), "250");
    assert_eq!(code(&c.smtp_command("QUIT").await.expect("quit")), "221");
    let cmds = up.fake.commands();
    assert!(
        !cmds
            .iter()
            .any(|l| l.starts_with("VRFY") || l.starts_with("XCLIENT") || l.starts_with("HELP")),
        "{cmds:?}"
    );
    assert!(
        cmds.iter().any(|l| l == "RSET"),
        "RSET reset the upstream transaction: {cmds:?}"
    );
    gw.stop().await;
}

async fn tls_listener(
    pki: &TestPki,
    listen_security: &str,
    fake: &FakeSmtp,
) -> (common::Running, TempDir) {
    let dir = TempDir::new("postern-smtp-listen");
    let (cert, key) = pki.write_leaf_pem(dir.path());
    let yaml = format!(
        "routes:\n  - name: r\n    protocol: smtp\n    listen: {{ address: 127.0.0.1:0, security: {listen_security}, certificate: \"{}\", key: \"{}\" }}\n    upstream: {{ address: \"{}\", security: none, auth: cram-md5 }}\n",
        cert.display(),
        key.display(),
        fake.addr()
    );
    (start(&yaml).await, dir)
}

#[tokio::test]
async fn smtps_listener() {
    let pki = TestPki::new();
    let fake = FakeSmtp::start(SmtpScript::new()).await;
    let (gw, _dir) = tls_listener(&pki, "tls", &fake).await;
    let mut c = LineClient::connect_tls(gw.addr("r"), pki.client_config(), "localhost")
        .await
        .expect("TLS");
    assert_eq!(code(&c.read_smtp_reply().await.expect("greeting")), "220");
    login(&mut c).await;
    let r = send_message(&mut c, "a@x", &["b@y"], b"Subject: tls\r\n\r\nhi\r\n").await;
    assert_eq!(code(&r), "250");
    assert_eq!(fake.accepted_messages().len(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn starttls_listener_requires_tls_for_auth_and_starts_over() {
    let pki = TestPki::new();
    let fake = FakeSmtp::start(SmtpScript::new()).await;
    let (gw, _dir) = tls_listener(&pki, "starttls", &fake).await;
    let mut c = connect(&gw).await;
    let ehlo = c.smtp_command("EHLO c").await.expect("ehlo");
    assert!(ehlo.iter().any(|l| l.ends_with("STARTTLS")), "{ehlo:?}");
    assert!(
        !ehlo.iter().any(|l| l.contains("AUTH")),
        "AUTH advertised before TLS: {ehlo:?}"
    );
    let r = c
        .smtp_command(&format!(
            "AUTH PLAIN {}",
            sasl_plain_response("", "alice", "wonderland")
        ))
        .await
        .expect("auth");
    assert!(r[0].starts_with("538 5.7.11"), "{r:?}");
    assert_eq!(
        code(&c.smtp_command("STARTTLS").await.expect("starttls")),
        "220"
    );
    c.upgrade_tls(pki.client_config(), "localhost")
        .await
        .expect("handshake");
    let r = c.smtp_command("MAIL FROM:<a@x>").await.expect("mail");
    assert!(r[0].starts_with("503"), "EHLO state kept across TLS: {r:?}");
    let ehlo = c.smtp_command("EHLO c").await.expect("ehlo");
    assert!(
        ehlo.iter().any(|l| l.contains("AUTH PLAIN LOGIN"))
            && !ehlo.iter().any(|l| l.contains("STARTTLS")),
        "{ehlo:?}"
    );
    assert!(c.smtp_command("STARTTLS").await.expect("again")[0].starts_with("503"));
    let r = c
        .smtp_command(&format!(
            "AUTH PLAIN {}",
            sasl_plain_response("", "alice", "wonderland")
        ))
        .await
        .expect("auth");
    assert_eq!(code(&r), "235");
    let r = send_message(&mut c, "a@x", &["b@y"], b"Subject: starttls\r\n\r\nhi\r\n").await;
    assert_eq!(code(&r), "250");
    gw.stop().await;
}

/// CVE-2011-0411 on the listen side: `STARTTLS\r\nEHLO x\r\n` in one segment.
#[tokio::test]
async fn starttls_command_injection_closes_the_session() {
    let pki = TestPki::new();
    let fake = FakeSmtp::start(SmtpScript::new()).await;
    let (gw, _dir) = tls_listener(&pki, "starttls", &fake).await;
    let mut c = connect(&gw).await;
    c.smtp_command("EHLO c").await.expect("ehlo");
    c.send_raw(b"STARTTLS\r\nEHLO x\r\n").await.expect("send");
    let (got, _) = c.read_to_close().await;
    assert!(
        got.is_empty(),
        "postern answered after an injection attempt: {:?}",
        String::from_utf8_lossy(&got)
    );
    gw.stop().await;
}
