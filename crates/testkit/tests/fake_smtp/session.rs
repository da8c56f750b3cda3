//! Greeting, EHLO/HELO, command-line violations, concurrency and the event log.

use super::*;

#[tokio::test]
async fn ehlo_lists_extensions_and_basic_commands() {
    let fake = FakeSmtp::start(script()).await;
    let mut c = connect(&fake).await;
    // Nothing but EHLO/HELO opens the session.
    assert_eq!(
        c.command("MAIL FROM:<a@x.test>").await.unwrap(),
        "503 5.5.1 Send EHLO first"
    );
    assert_eq!(
        c.command("AUTH PLAIN =").await.unwrap(),
        "503 5.5.1 Send EHLO first"
    );
    assert!(c.command("EHLO").await.unwrap().starts_with("501 "));
    assert_eq!(
        ehlo(&mut c).await,
        [
            "250-fake.test greets client.test",
            "250-PIPELINING",
            "250-SIZE 10485760",
            "250-8BITMIME",
            "250-ENHANCEDSTATUSCODES",
            "250-SMTPUTF8",
            "250-DSN",
            "250 AUTH PLAIN LOGIN CRAM-MD5",
        ]
    );
    assert_eq!(c.command("NOOP").await.unwrap(), "250 2.0.0 Ok");
    assert_eq!(c.command("RSET").await.unwrap(), "250 2.0.0 Ok");
    assert!(c
        .command("VRFY bob")
        .await
        .unwrap()
        .starts_with("252 2.5.2"));
    assert!(c.command("HELP").await.unwrap().starts_with("214 2.0.0"));
    assert_eq!(
        c.command("EXPN list").await.unwrap(),
        "502 5.5.2 Command not recognized"
    );
    assert_eq!(
        c.command("STARTTLS").await.unwrap(),
        "502 5.5.1 STARTTLS not supported"
    );
    assert_eq!(
        c.command("MAIL FROM:<a@x.test>").await.unwrap(),
        "530 5.7.0 Authentication required"
    );
    quit(&fake, &mut c).await;

    let events = fake.events();
    assert!(events.contains(&SmtpEvent::Ehlo("client.test".into())));
    assert!(events.contains(&SmtpEvent::Quit));
    assert!(!events.contains(&SmtpEvent::ClosedWithoutQuit));
    assert_eq!(events.first(), Some(&SmtpEvent::Connected));
    assert_eq!(events.last(), Some(&SmtpEvent::Closed));
    assert_eq!(fake.commands()[0], "MAIL FROM:<a@x.test>");
    no_violations(&fake);
}

#[tokio::test]
async fn multiline_greeting_is_framed() {
    let fake =
        FakeSmtp::start(script().multiline_greeting(&["fake.test ESMTP", "no spam please"])).await;
    let mut c = LineClient::connect(fake.addr()).await.unwrap();
    assert_eq!(
        c.read_smtp_reply().await.unwrap(),
        ["220-fake.test ESMTP", "220 no spam please"]
    );
    assert!(c.command("NOOP").await.unwrap().starts_with("250"));
}

#[tokio::test]
async fn ehlo_refused_helo_works_without_extensions() {
    let fake = FakeSmtp::start(
        script()
            .ehlo(EhloBehaviour::Refused)
            .require_auth(false)
            .bdat(true),
    )
    .await;
    let mut c = connect(&fake).await;
    assert_eq!(
        c.command("EHLO client.test").await.unwrap(),
        "502 Command not implemented"
    );
    assert_eq!(
        c.command("HELO client.test").await.unwrap(),
        "250 fake.test"
    );
    let ir = sasl_plain_response("", "alice", PASSWORD);
    assert_eq!(
        c.command(&format!("AUTH PLAIN {ir}")).await.unwrap(),
        "503 5.5.1 Send EHLO first"
    );
    assert!(c
        .command("MAIL FROM:<s@x.test> SIZE=10")
        .await
        .unwrap()
        .starts_with("555 "));
    assert_eq!(
        c.command("MAIL FROM:<s@x.test>").await.unwrap(),
        "250 2.1.0 Ok"
    );
    c.command("RCPT TO:<r@x.test>").await.unwrap();
    // BDAT needs EHLO; its chunk is still consumed.
    c.send_raw(b"BDAT 4 LAST\r\nNOOP").await.unwrap();
    assert_eq!(c.read_line().await.unwrap(), "503 5.5.1 Send EHLO first");
    assert!(c.command("DATA").await.unwrap().starts_with("354 "));
    assert!(c.command("x\r\n.").await.unwrap().starts_with("250 "));
    quit(&fake, &mut c).await;
    let events = fake.events();
    assert!(events.contains(&SmtpEvent::Helo("client.test".into())));
    assert!(!events.iter().any(|e| matches!(e, SmtpEvent::Ehlo(_))));
    assert_eq!(fake.messages()[0].auth_user, None);
}

#[tokio::test]
async fn command_line_violations() {
    let fake = FakeSmtp::start(script()).await;
    let mut c = connect(&fake).await;
    c.send_raw(b"NOOP\n").await.unwrap();
    assert_eq!(c.read_line().await.unwrap(), "250 2.0.0 Ok");
    fake.expect_event(
        "bare LF",
        |e| matches!(e, SmtpEvent::ClientViolation(v) if v.contains("bare LF")),
        WAIT,
    )
    .await;

    let long = "X".repeat(3000);
    assert_eq!(c.command(&long).await.unwrap(), "500 5.5.6 Line too long");
    let (rest, _) = c.read_to_close().await;
    assert!(rest.is_empty());
    assert!(fake.wait_closed(1, WAIT).await);
    assert!(fake
        .events()
        .iter()
        .any(|e| matches!(e, SmtpEvent::ClientViolation(v) if v.contains("longer than 2048"))));
}

#[tokio::test]
async fn concurrent_sessions_get_distinct_queue_ids() {
    let fake = FakeSmtp::start(script()).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..4 {
        let addr = fake.addr();
        tasks.spawn(async move {
            let mut c = LineClient::connect(addr).await.unwrap();
            c.read_smtp_reply().await.unwrap();
            c.smtp_command("EHLO client.test").await.unwrap();
            let ir = sasl_plain_response("", "alice", PASSWORD);
            let reply = c.command(&format!("AUTH PLAIN {ir}")).await.unwrap();
            assert!(reply.starts_with("235"), "{reply}");
            c.command("MAIL FROM:<s@x.test>").await.unwrap();
            c.command(&format!("RCPT TO:<r{i}@x.test>")).await.unwrap();
            c.command("DATA").await.unwrap();
            let queued = c.command(&format!("message {i}\r\n.")).await.unwrap();
            assert!(c.command("QUIT").await.unwrap().starts_with("221"));
            queued
        });
    }
    let mut ids = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        ids.push(joined.unwrap());
    }
    ids.sort();
    assert_eq!(
        ids,
        (1..=4)
            .map(|n| format!("250 2.0.0 Ok: queued as FAKE{n}"))
            .collect::<Vec<_>>()
    );
    assert!(fake.wait_closed(4, WAIT).await);
    assert_eq!(fake.connections(), 4);
    assert_eq!(fake.messages().len(), 4);
    let log = fake.logged_events();
    let framing = log.iter().map(|e| (e.session, &e.event));
    assert_sessions_framed(framing, 4, &SmtpEvent::Connected, &SmtpEvent::Closed);
    no_violations(&fake);
}

#[tokio::test]
async fn wait_for_times_out() {
    let fake = FakeSmtp::start(script()).await;
    let got = fake
        .wait_for(|e| *e == SmtpEvent::Closed, Duration::from_millis(50))
        .await;
    assert_eq!(got, None);
}
