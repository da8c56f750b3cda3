//! The authenticated state: a transparent relay both ways, except for
//! what postern controls.

use postern_testkit::{ImapMoment, INJECTED_CAPABILITY};

use super::*;

/// A gateway (route `r`, `security` × plain) to a fake with `script`,
/// and a client logged in through it; the login's tagged OK line.
async fn logged_in(
    pki: &TestPki,
    security: &str,
    script: ImapScript,
) -> (Upstream, common::Running, LineClient, String) {
    let up = upstream(pki, security, script).await;
    let gw = gateway(&up, security, "plain").await;
    let (mut c, _) = connect(gw.addr("r")).await;
    let ok = login(&mut c, USER, PASSWORD, security).await;
    (up, gw, c, ok)
}

fn appended(fake: &FakeImap) -> Vec<(usize, bool)> {
    fake.events()
        .into_iter()
        .filter_map(|e| match e {
            ImapEvent::Appended {
                size,
                synchronizing,
                ..
            } => Some((size, synchronizing)),
            _ => None,
        })
        .collect()
}

/// APPEND of megabytes with a synchronising literal (the server's `+`
/// relayed) and with LITERAL+ (offered after login because the upstream
/// offers it), then FETCH of both: byte-identical in the fake's mailbox
/// and back at the client, over TLS upstream.
#[tokio::test]
async fn append_and_fetch_of_large_messages_are_byte_identical() {
    let pki = TestPki::new();
    let (up, gw, mut c, ok) = logged_in(&pki, "tls", script(PASSWORD)).await;
    let caps = code_capabilities(&ok).expect("capabilities after login");
    assert!(has(&caps, "LITERAL+"), "{caps:?}");

    let sync = big_message(3 * 1024 * 1024 + 17, 1);
    let plus = big_message(2 * 1024 * 1024 + 5, 2);

    let r = c
        .imap_command(&format!("a1 APPEND INBOX {{{}}}", sync.len()))
        .await
        .expect("append");
    assert!(
        r.starts_with(b"+ "),
        "the upstream's go-ahead: {}",
        text(&r)
    );
    let mut bytes = sync.clone();
    bytes.extend_from_slice(b"\r\n");
    c.send_raw(&bytes).await.expect("literal");
    let r = c.read_imap_response("a1").await.expect("append");
    assert_tagged(&r, "a1", "OK", "synchronising APPEND");

    let mut bytes = format!("a2 APPEND INBOX (\\Seen) {{{}+}}\r\n", plus.len()).into_bytes();
    bytes.extend_from_slice(&plus);
    bytes.extend_from_slice(b"\r\n");
    c.send_raw(&bytes).await.expect("append");
    let r = c.read_imap_response("a2").await.expect("append");
    assert!(r.starts_with(b"a2 OK"), "no `+` for LITERAL+: {}", text(&r));

    assert_eq!(
        appended(&up.fake),
        [(sync.len(), true), (plus.len(), false)]
    );
    let stored = up.fake.messages("INBOX");
    assert_eq!(stored.len(), 3);
    assert!(
        stored[1].body == sync,
        "synchronising APPEND not byte-identical"
    );
    assert!(stored[2].body == plus, "LITERAL+ APPEND not byte-identical");
    assert!(stored[2].has_flag("\\Seen"));

    select_and_fetch(&mut c, 2, &sync, "FETCH 2").await;
    select_and_fetch(&mut c, 3, &plus, "FETCH 3").await;
    logout(&mut c, "large messages").await;
    assert_eq!(violations(&up.fake), Vec::<String>::new());
    gw.stop().await;
}

/// IDLE: a message delivered to the mailbox wakes the idling client with
/// `* 2 EXISTS` at once; DONE completes the command.
#[tokio::test]
async fn idle_sees_a_delivery_and_done_completes() {
    let pki = TestPki::new();
    let (up, gw, mut c, _) = logged_in(&pki, "starttls", script(PASSWORD)).await;
    let r = c.imap_command("s SELECT INBOX").await.expect("select");
    assert!(text(&r).contains("* 1 EXISTS\r\n"), "{}", text(&r));
    let r = c.imap_command("i IDLE").await.expect("idle");
    assert_eq!(text(&r), "+ idling\r\n");
    up.fake
        .expect_event("idling", |e| *e == ImapEvent::IdleStarted, WAIT)
        .await;
    assert!(up.fake.deliver("INBOX", big_message(200, 3)).is_some());
    assert_eq!(c.read_line().await.expect("exists"), "* 2 EXISTS");
    c.send("DONE").await.expect("done");
    let r = c.read_imap_response("i").await.expect("idle");
    assert_eq!(text(&r), "i OK IDLE terminated\r\n");
    up.fake
        .expect_event("done", |e| *e == ImapEvent::IdleDone, WAIT)
        .await;
    select_and_fetch(&mut c, 2, &big_message(200, 3), "after IDLE").await;
    logout(&mut c, "IDLE").await;
    gw.stop().await;
}

/// Commands pipelined in one write (a LITERAL+ APPEND among them) are
/// relayed in order and answered in order.
#[tokio::test]
async fn pipelined_commands_are_answered_in_order() {
    let pki = TestPki::new();
    let (up, gw, mut c, _) = logged_in(&pki, "none", script(PASSWORD)).await;
    c.send_raw(
        b"p1 NOOP\r\np2 SELECT INBOX\r\np3 FETCH 1 BODY.PEEK[]\r\n\
          p4 APPEND INBOX {5+}\r\nhello\r\np5 NOOP\r\np6 FETCH 2 BODY.PEEK[]\r\n",
    )
    .await
    .expect("pipeline");
    for tag in ["p1", "p2"] {
        let r = c.read_imap_response(tag).await.expect(tag);
        assert_tagged(&r, tag, "OK", tag);
    }
    let r = c.read_imap_response("p3").await.expect("p3");
    assert!(
        r == fetch_response(1, &trap_message(), "p3"),
        "{}",
        text(&r)
    );
    for tag in ["p4", "p5"] {
        let r = c.read_imap_response(tag).await.expect(tag);
        assert_tagged(&r, tag, "OK", tag);
    }
    let r = c.read_imap_response("p6").await.expect("p6");
    assert!(r == fetch_response(2, b"hello", "p6"), "{}", text(&r));
    let commands: Vec<String> = up
        .fake
        .commands()
        .into_iter()
        .skip_while(|c| c != "NOOP")
        .collect();
    assert_eq!(
        commands,
        ["NOOP", "SELECT", "FETCH", "APPEND", "NOOP", "FETCH"]
    );
    logout(&mut c, "pipelining").await;
    assert_eq!(violations(&up.fake), Vec::<String>::new());
    gw.stop().await;
}

/// COMPRESS, STARTTLS and UNAUTHENTICATE after login are answered by
/// postern and never reach the upstream; the session goes on.
#[tokio::test]
async fn compress_starttls_and_unauthenticate_are_refused_locally() {
    let pki = TestPki::new();
    let (up, gw, mut c, ok) = logged_in(&pki, "tls", script(PASSWORD)).await;
    let caps = code_capabilities(&ok).expect("capabilities");
    assert!(!has(&caps, "COMPRESS=DEFLATE"), "{caps:?}");
    let r = c
        .imap_command("c1 COMPRESS DEFLATE")
        .await
        .expect("compress");
    assert_eq!(
        text(&r),
        "c1 NO [CANNOT] postern does not relay COMPRESS: it must read the session\r\n"
    );
    let r = c.imap_command("c2 STARTTLS").await.expect("starttls");
    assert_tagged(&r, "c2", "BAD", "STARTTLS after login");
    assert_eq!(r.iter().filter(|b| **b == b'\n').count(), 1);
    let r = c
        .imap_command("c3 UNAUTHENTICATE")
        .await
        .expect("unauthenticate");
    assert_tagged(&r, "c3", "NO", "UNAUTHENTICATE");
    // The connection stays plain and usable.
    select_and_fetch(&mut c, 1, &trap_message(), "after the refusals").await;
    let commands = up.fake.commands();
    for refused in ["COMPRESS", "STARTTLS", "UNAUTHENTICATE"] {
        assert!(
            !commands.iter().any(|c| c == refused),
            "{refused} reached the upstream: {commands:?}"
        );
    }
    logout(&mut c, "refusals").await;
    gw.stop().await;
}

/// Capability lists the upstream volunteers after login reach the client
/// filtered: an unsolicited `* CAPABILITY` right after the login OK, and a
/// `[CAPABILITY]` code on an untagged OK.
#[tokio::test]
async fn unsolicited_capabilities_are_filtered() {
    let pki = TestPki::new();
    let (_up, gw, mut c, _) = logged_in(
        &pki,
        "tls",
        script(PASSWORD)
            .unsolicited_capability_after_login()
            .untagged(
                ImapMoment::BeforeTagged("NOOP".to_owned()),
                "* OK [CAPABILITY IMAP4rev1 STARTTLS IDLE AUTH=PLAIN LOGINDISABLED] note",
            ),
    )
    .await;
    assert!(INJECTED_CAPABILITY.contains("STARTTLS"));
    let r = c.imap_command("n NOOP").await.expect("noop");
    assert_eq!(
        text(&r),
        "* CAPABILITY IMAP4rev1\r\n* OK [CAPABILITY IMAP4rev1 IDLE] note\r\nn OK NOOP completed\r\n"
    );
    logout(&mut c, "unsolicited").await;
    gw.stop().await;
}

/// The upstream dies inside a FETCH body literal: the client gets exactly
/// what the server sent (postern streams, it does not hold the response),
/// then the connection closes; never the rest, never a tagged OK.
#[tokio::test]
async fn an_upstream_cut_mid_literal_closes_the_client() {
    let pki = TestPki::new();
    let body = big_message(256 * 1024, 4);
    for security in ["none", "tls"] {
        let cut = 100_000;
        let (up, gw, mut c, _) = logged_in(
            &pki,
            security,
            script(PASSWORD).message(body.clone()).die_mid_fetch(cut),
        )
        .await;
        let r = c.imap_command("s SELECT INBOX").await.expect("select");
        assert_tagged(&r, "s", "OK", security);
        c.send("f FETCH 2 BODY.PEEK[]").await.expect("fetch");
        let (got, _) = c.read_to_close().await;
        let mut sent = format!("* 2 FETCH (BODY[] {{{}}}\r\n", body.len()).into_bytes();
        sent.extend_from_slice(&body[..cut]);
        assert_eq!(got.len(), sent.len(), "{security}");
        assert!(got == sent, "{security}: not what the server sent");
        up.fake
            .expect_event(
                security,
                |e| matches!(e, ImapEvent::DroppedByScript(_)),
                WAIT,
            )
            .await;
        gw.stop().await;
    }
}

/// LOGOUT: the upstream's BYE and OK reach the client, both connections
/// close, and the fake saw a LOGOUT (not a dropped connection).
#[tokio::test]
async fn logout_ends_both_sides_cleanly() {
    let pki = TestPki::new();
    let (up, gw, mut c, _) = logged_in(&pki, "starttls", script(PASSWORD)).await;
    logout(&mut c, "logout").await;
    assert!(up.fake.wait_closed(1, WAIT).await);
    let events = up.fake.events();
    assert!(events.contains(&ImapEvent::Logout), "{events:?}");
    assert!(
        !events.contains(&ImapEvent::ClosedWithoutQuit),
        "{events:?}"
    );
    assert_eq!(violations(&up.fake), Vec::<String>::new());
    gw.stop().await;
}

/// A client that reads while it writes (as IMAP allows): it pipelines a
/// FETCH of a large message and a large LITERAL+ APPEND. The server
/// writes the whole FETCH response before it reads the APPEND, so a relay
/// that stops reading the server while its write to the server is blocked
/// deadlocks (until the write deadline). Through postern both complete.
#[tokio::test]
async fn a_full_duplex_client_does_not_deadlock_the_relay() {
    use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};

    let pki = TestPki::new();
    let size = 12 * 1024 * 1024;
    let stored = big_message(size, 5);
    let sent = big_message(size, 6);
    let up = upstream(&pki, "none", script(PASSWORD).message(stored.clone())).await;
    let gw = start(
        &GatewayYaml::new()
            .route(up.route("r", "none", "plain").timeouts("write: 5s"))
            .to_string(),
    )
    .await;
    let stream = tokio::net::TcpStream::connect(gw.addr("r"))
        .await
        .expect("connect");
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    async fn until(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>, tag: &str) -> String {
        let mut line = String::new();
        loop {
            line.clear();
            r.read_line(&mut line).await.expect("line");
            assert!(!line.is_empty(), "EOF waiting for {tag}");
            if line.starts_with(tag) {
                return line;
            }
        }
    }
    until(&mut r, "* OK").await;
    w.write_all(format!("L LOGIN {USER} {}\r\nS SELECT INBOX\r\n", quoted(PASSWORD)).as_bytes())
        .await
        .expect("login");
    assert!(until(&mut r, "L ").await.starts_with("L OK"));
    assert!(until(&mut r, "S ").await.starts_with("S OK"));

    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let n = r.read(&mut chunk).await.expect("read");
            assert!(n > 0, "EOF after {} octets", got.len());
            got.extend_from_slice(&chunk[..n]);
            let tail = &got[got.len().saturating_sub(256)..];
            if tail.ends_with(b"\r\n") && memfind(tail, b"\r\nzz9 ").is_some() {
                return got;
            }
        }
    });
    let mut bytes = b"ff9 FETCH 2 BODY.PEEK[]\r\n".to_vec();
    bytes.extend_from_slice(format!("zz9 APPEND INBOX {{{}+}}\r\n", sent.len()).as_bytes());
    bytes.extend_from_slice(&sent);
    bytes.extend_from_slice(b"\r\n");
    w.write_all(&bytes).await.expect("pipeline");
    let got = tokio::time::timeout(Duration::from_secs(20), reader)
        .await
        .expect("deadlocked")
        .expect("reader");
    let want = fetch_response(2, &stored, "ff9");
    assert!(got.starts_with(&want), "FETCH not byte-identical");
    assert!(
        last_line(&got[want.len()..]).starts_with("zz9 OK"),
        "{}",
        text(&got[want.len()..])
    );
    let messages = up.fake.messages("INBOX");
    assert!(messages.last().map(|m| &m.body) == Some(&sent));
    gw.stop().await;
}

fn memfind(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A command postern refuses while the server is inside a long response:
/// the refusal waits until the response is complete, never lands inside
/// it.
#[tokio::test]
async fn a_refusal_never_lands_inside_a_relayed_response() {
    let pki = TestPki::new();
    let body = big_message(8 * 1024 * 1024, 7);
    let (up, gw, mut c, _) = logged_in(&pki, "none", script(PASSWORD).message(body.clone())).await;
    let r = c.imap_command("s SELECT INBOX").await.expect("select");
    assert_tagged(&r, "s", "OK", "select");
    c.send("f FETCH 2 BODY.PEEK[]").await.expect("fetch");
    assert_eq!(
        c.read_line().await.expect("announcement"),
        format!("* 2 FETCH (BODY[] {{{}}}", body.len())
    );
    // The client does not read on: postern is stuck inside the literal.
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.send("c COMPRESS DEFLATE").await.expect("compress");
    let literal = c.read_bytes(body.len()).await.expect("literal");
    assert!(literal == body, "the literal is not byte-identical");
    assert_eq!(c.read_line().await.expect("end"), ")");
    assert_eq!(c.read_line().await.expect("fetch"), "f OK FETCH completed");
    let r = c.read_imap_response("c").await.expect("compress");
    assert_tagged(&r, "c", "NO [CANNOT]", "COMPRESS");
    assert!(!up.fake.commands().iter().any(|c| c == "COMPRESS"));
    logout(&mut c, "refusal").await;
    gw.stop().await;
}

/// The server refuses a synchronising literal without its `+` (RFC 9051
/// §4.3: `NO [TOOBIG]`): the client sends no literal, and its next
/// command is read as a command (a COMPRESS is refused, not relayed as
/// literal data).
#[tokio::test]
async fn a_literal_the_server_refused_does_not_swallow_the_next_command() {
    let pki = TestPki::new();
    let (up, gw, mut c, _) = logged_in(&pki, "tls", script(PASSWORD)).await;
    let r = c
        .imap_command("a APPEND INBOX {70000000}")
        .await
        .expect("append");
    assert_tagged(&r, "a", "NO [TOOBIG]", "oversized APPEND");
    let r = c
        .imap_command("c COMPRESS DEFLATE")
        .await
        .expect("compress");
    assert_tagged(&r, "c", "NO [CANNOT]", "COMPRESS after a refused literal");
    assert!(!up.fake.commands().iter().any(|c| c == "COMPRESS"));
    let r = c.imap_command("n NOOP").await.expect("noop");
    assert_eq!(text(&r), "n OK NOOP completed\r\n");
    logout(&mut c, "refused literal").await;
    gw.stop().await;
}

/// FETCH of several messages at once, an empty one among them (`{0}`).
#[tokio::test]
async fn several_literals_in_one_response_and_an_empty_one() {
    let pki = TestPki::new();
    let bodies = [trap_message(), Vec::new(), big_message(100_000, 8)];
    let mut script = script(PASSWORD);
    for b in &bodies[1..] {
        script = script.message(b.clone());
    }
    let (up, gw, mut c, _) = logged_in(&pki, "none", script).await;
    assert_eq!(up.fake.messages("INBOX").len(), 3);
    let r = c.imap_command("s SELECT INBOX").await.expect("select");
    assert_tagged(&r, "s", "OK", "select");
    let r = c
        .imap_command("f FETCH 1:* BODY.PEEK[]")
        .await
        .expect("fetch");
    let mut want = Vec::new();
    for (i, b) in bodies.iter().enumerate() {
        want.extend_from_slice(format!("* {} FETCH (BODY[] {{{}}}\r\n", i + 1, b.len()).as_bytes());
        want.extend_from_slice(b);
        want.extend_from_slice(b")\r\n");
    }
    want.extend_from_slice(b"f OK FETCH completed\r\n");
    assert!(r == want, "{}", text(&r[..r.len().min(4096)]));
    logout(&mut c, "several literals").await;
    gw.stop().await;
}

/// RFC 9051 §5.4: a logged-in client idle past `client_idle` gets
/// `* BYE` and the close; the upstream connection is closed too.
#[tokio::test]
async fn autologout_after_client_idle() {
    let pki = TestPki::new();
    let up = upstream(&pki, "none", script(PASSWORD)).await;
    let gw = start(
        &GatewayYaml::new()
            .route(up.route("r", "none", "plain").timeouts("client_idle: 1s"))
            .to_string(),
    )
    .await;
    let (mut c, _) = connect(gw.addr("r")).await;
    login(&mut c, USER, PASSWORD, "autologout").await;
    let started = std::time::Instant::now();
    let (got, _) = c.read_to_close().await;
    assert_eq!(text(&got), "* BYE Autologout; idle for too long\r\n");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(up.fake.wait_closed(1, WAIT).await);
    gw.stop().await;
}

/// A client that goes away inside an APPEND literal: postern closes the
/// upstream without completing the literal, so nothing is appended.
#[tokio::test]
async fn a_client_gone_inside_a_literal_appends_nothing() {
    let pki = TestPki::new();
    let (up, gw, mut c, _) = logged_in(&pki, "tls", script(PASSWORD)).await;
    let body = big_message(500_000, 9);
    let mut bytes = format!("a APPEND INBOX {{{}+}}\r\n", body.len()).into_bytes();
    bytes.extend_from_slice(&body[..250_000]);
    c.send_raw(&bytes).await.expect("append");
    c.shutdown().await.expect("shutdown");
    drop(c);
    assert!(up.fake.wait_closed(1, WAIT).await);
    assert_eq!(up.fake.messages("INBOX").len(), 1);
    assert!(appended(&up.fake).is_empty());
    assert!(up.fake.events().contains(&ImapEvent::ClosedWithoutQuit));
    gw.stop().await;
}

/// The autologout timer counts the client's silence only: a client in
/// IDLE whose server keeps pushing updates is still logged out on time.
#[tokio::test]
async fn autologout_counts_only_the_clients_silence() {
    let pki = TestPki::new();
    let up = upstream(&pki, "none", script(PASSWORD).capability("IDLE")).await;
    let gw = start(
        &GatewayYaml::new()
            .route(up.route("r", "none", "plain").timeouts("client_idle: 2s"))
            .to_string(),
    )
    .await;
    let (mut c, _) = connect(gw.addr("r")).await;
    login(&mut c, USER, PASSWORD, "autologout in IDLE").await;
    c.imap_command("s SELECT INBOX").await.expect("select");
    c.send_raw(b"i IDLE\r\n").await.expect("idle");
    let started = std::time::Instant::now();
    // The server speaks every 400 ms; the client says nothing.
    let push = async {
        for n in 0..25 {
            tokio::time::sleep(Duration::from_millis(400)).await;
            up.fake
                .deliver("INBOX", format!("Subject: {n}\r\n\r\nx\r\n").into_bytes());
        }
        std::future::pending::<()>().await;
    };
    let (got, _) = tokio::select! {
        got = c.read_to_close() => got,
        () = push => unreachable!("pending never ends"),
    };
    let elapsed = started.elapsed();
    assert!(
        text(&got).contains("EXISTS"),
        "the updates reached the client: {}",
        text(&got)
    );
    assert!(
        elapsed < Duration::from_secs(4),
        "autologout after {elapsed:?}, though the client was silent for 2 s"
    );
    gw.stop().await;
}

/// A gateway shutting down ends a relayed session at the next point where
/// neither side is inside a response or a command, with `* BYE`, instead
/// of holding it until the grace period runs out and cutting it.
#[tokio::test]
async fn shutdown_says_bye_between_responses() {
    let pki = TestPki::new();
    let up = upstream(&pki, "tls", script(PASSWORD).capability("IDLE")).await;
    let yaml = GatewayYaml::new()
        .route(up.route("r", "tls", "plain"))
        .to_string();
    let gw = common::start_with_grace(&yaml, Duration::from_secs(20)).await;
    let (mut c, _) = connect(gw.addr("r")).await;
    login(&mut c, USER, PASSWORD, "shutdown").await;
    c.imap_command("s SELECT INBOX").await.expect("select");
    c.send_raw(b"i IDLE\r\n").await.expect("idle");
    let started = std::time::Instant::now();
    gw.shutdown.cancel();
    let (got, _) = c.read_to_close().await;
    assert!(
        text(&got).ends_with("* BYE [UNAVAILABLE] postern is shutting down; try again later\r\n"),
        "{}",
        text(&got)
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    gw.stop().await;
}
