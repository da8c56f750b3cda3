//! Logging in: every security × auth combination, AUTH PLAIN from the
//! client, CAPA before and after login, and the APOP timestamp rules.

use super::*;

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
            let gw = start(&up.route(security, auth).yaml()).await;
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
        let gw = start(&up.route("tls", auth).yaml()).await;
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
    let gw = start(&up.route("starttls", "cram-md5").yaml()).await;
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
        let gw = start(&plain_route(fake.addr(), "apop")).await;
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
    let gw = start(&plain_route(fixed.addr(), "apop")).await;
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
    let gw = start(&plain_route(fake.addr(), "apop")).await;
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
