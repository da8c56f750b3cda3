//! DATA and BDAT: byte-exact messages, smuggling, scripted endings.

use super::*;

#[tokio::test]
async fn message_recorded_byte_exactly() {
    let fake = FakeSmtp::start(script()).await;
    let mut c = ready(&fake).await;
    assert_eq!(
        c.command("MAIL FROM:<sender@x.test> BODY=8BITMIME AUTH=<> SIZE=120")
            .await
            .unwrap(),
        "250 2.1.0 Ok"
    );
    assert_eq!(
        c.command("MAIL FROM:<again@x.test>").await.unwrap(),
        "503 5.5.1 Nested MAIL command"
    );
    assert_eq!(
        c.command("RCPT TO:<one@x.test>").await.unwrap(),
        "250 2.1.5 Ok"
    );
    assert_eq!(
        c.command("RCPT TO:<two@x.test> NOTIFY=NEVER")
            .await
            .unwrap(),
        "250 2.1.5 Ok"
    );
    assert_eq!(
        c.command("DATA").await.unwrap(),
        "354 End data with <CR><LF>.<CR><LF>"
    );
    let stuffed = dot_stuff(MSG);
    assert!(stuffed.windows(4).any(|w| w == b"\n..\r"));
    // Body, terminator and a pipelined QUIT in one write.
    c.send_raw(&[&stuffed[..], b".\r\nQUIT\r\n"].concat())
        .await
        .unwrap();
    assert_eq!(
        c.read_line().await.unwrap(),
        "250 2.0.0 Ok: queued as FAKE1"
    );
    assert_eq!(c.read_line().await.unwrap(), "221 2.0.0 Bye");
    assert!(fake.wait_closed(1, WAIT).await);

    let messages = fake.messages();
    assert_eq!(messages.len(), 1);
    let m = &messages[0];
    assert_eq!(m.raw, stuffed);
    assert_eq!(m.unstuffed, MSG);
    assert_eq!(m.mail_from, "sender@x.test");
    assert_eq!(m.rcpts, ["one@x.test", "two@x.test"]);
    assert!(!m.tls);
    assert!(!m.chunked);
    assert_eq!(m.auth_user.as_deref(), Some("alice"));
    assert_eq!(
        m.final_reply.as_deref(),
        Some("250 2.0.0 Ok: queued as FAKE1")
    );
    assert!(m.accepted());
    assert_eq!(fake.accepted_messages(), messages);

    let events = fake.events();
    // Parameters are recorded verbatim, so tests can see what was forwarded.
    assert!(events.contains(&SmtpEvent::MailFrom(
        "<sender@x.test> BODY=8BITMIME AUTH=<> SIZE=120".into()
    )));
    assert!(events.contains(&SmtpEvent::RcptTo("<two@x.test> NOTIFY=NEVER".into())));
    assert!(events.contains(&SmtpEvent::DataStarted));
    assert!(events.contains(&SmtpEvent::MessageReceived {
        index: 0,
        size: stuffed.len()
    }));
    assert!(events.contains(&SmtpEvent::Quit));
    no_violations(&fake);
}

#[tokio::test]
async fn empty_message_and_second_transaction() {
    let fake = FakeSmtp::start(script()).await;
    let mut c = ready(&fake).await;
    open_data(&mut c, "r@x.test").await;
    // ".\r\n" right after 354: the DATA line's CRLF precedes it.
    assert_eq!(
        c.command(".").await.unwrap(),
        "250 2.0.0 Ok: queued as FAKE1"
    );
    // The transaction is over: a new MAIL is fine, a lone RCPT is not.
    assert!(c
        .command("RCPT TO:<r@x.test>")
        .await
        .unwrap()
        .starts_with("503 "));
    open_data(&mut c, "r@x.test").await;
    // One empty line.
    c.send_raw(b"\r\n.\r\n").await.unwrap();
    assert_eq!(
        c.read_line().await.unwrap(),
        "250 2.0.0 Ok: queued as FAKE2"
    );
    quit(&fake, &mut c).await;
    let messages = fake.messages();
    assert_eq!(messages.len(), 2);
    assert!(messages[0].raw.is_empty() && messages[0].unstuffed.is_empty());
    assert_eq!(messages[1].raw, b"\r\n");
    assert_eq!(messages[1].unstuffed, b"\r\n");
    no_violations(&fake);
}

#[tokio::test]
async fn smuggling_sequences_are_content_and_bare_endings_logged() {
    let fake = FakeSmtp::start(script()).await;
    let mut c = ready(&fake).await;
    open_data(&mut c, "r@x.test").await;
    let body = b"a\n.\nMAIL FROM:<evil@x.test>\r\n.\rb\r\nc\r\n.\nd\r\n";
    c.send_raw(&[&body[..], b".\r\n"].concat()).await.unwrap();
    assert_eq!(
        c.read_line().await.unwrap(),
        "250 2.0.0 Ok: queued as FAKE1"
    );
    quit(&fake, &mut c).await;

    let messages = fake.messages();
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0].raw, body);
    let bare: Vec<_> = fake
        .events()
        .into_iter()
        .filter_map(|e| match e {
            SmtpEvent::BareLineEnding { kind, offset } => Some((kind, offset)),
            _ => None,
        })
        .collect();
    assert_eq!(
        bare,
        [
            (BareKind::Lf, 1),
            (BareKind::Lf, 3),
            (BareKind::Cr, 30),
            (BareKind::Lf, 38)
        ]
    );
    // The smuggled MAIL was never a command.
    assert!(!fake.commands().iter().any(|c| c.contains("evil")));
    assert!(!fake
        .events()
        .iter()
        .any(|e| matches!(e, SmtpEvent::MailFrom(m) if m.contains("evil"))));
}

#[tokio::test]
async fn data_before_354_is_flagged() {
    let fake = FakeSmtp::start(script()).await;
    let mut c = ready(&fake).await;
    c.command("MAIL FROM:<s@x.test>").await.unwrap();
    c.command("RCPT TO:<r@x.test>").await.unwrap();
    c.send_raw(b"DATA\r\nearly\r\n.\r\n").await.unwrap();
    assert!(c.read_line().await.unwrap().starts_with("354 "));
    assert!(c.read_line().await.unwrap().starts_with("250 "));
    fake.expect_event(
        "violation",
        |e| matches!(e, SmtpEvent::ClientViolation(v) if v.contains("before the 354")),
        WAIT,
    )
    .await;
    assert_eq!(fake.messages()[0].raw, b"early\r\n");
}

#[tokio::test]
async fn data_end_reply_is_given_and_recorded() {
    for answer in ["451 4.3.0 Temporary failure", "554 5.7.1 Rejected"] {
        let fake = FakeSmtp::start(script().data_end(DataEnd::Reply(answer.into()))).await;
        let mut c = ready(&fake).await;
        open_data(&mut c, "r@x.test").await;
        c.send_raw(b"Subject: x\r\n\r\nbody\r\n.\r\n")
            .await
            .unwrap();
        assert_eq!(c.read_line().await.unwrap(), answer);
        // The session goes on.
        assert_eq!(
            c.command("MAIL FROM:<s@x.test>").await.unwrap(),
            "250 2.1.0 Ok"
        );
        quit(&fake, &mut c).await;
        let messages = fake.messages();
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].final_reply.as_deref(), Some(answer));
        assert!(!messages[0].accepted());
        assert!(fake.accepted_messages().is_empty());
    }
}

#[tokio::test]
async fn die_after_bytes_drops_mid_data() {
    let fake = FakeSmtp::start(script().data_end(DataEnd::DieAfterBytes(10))).await;
    let mut c = ready(&fake).await;
    open_data(&mut c, "r@x.test").await;
    c.send_raw(&[&dot_stuff(MSG)[..], b".\r\n"].concat())
        .await
        .unwrap();
    let (rest, _end) = c.read_to_close().await;
    assert!(rest.is_empty(), "{rest:?}");
    assert!(fake.wait_closed(1, WAIT).await);
    assert!(fake.messages().is_empty());
    let events = fake.events();
    assert!(events
        .iter()
        .any(|e| matches!(e, SmtpEvent::DroppedByScript(_))));
    assert!(!events
        .iter()
        .any(|e| matches!(e, SmtpEvent::MessageAborted { .. })));
    let n = events.len();
    assert_eq!(
        &events[n - 2..],
        [SmtpEvent::ClosedWithoutQuit, SmtpEvent::Closed]
    );

    // A message shorter than the cut is still never answered or stored.
    let fake = FakeSmtp::start(script().data_end(DataEnd::DieAfterBytes(10_000))).await;
    let mut c = ready(&fake).await;
    open_data(&mut c, "r@x.test").await;
    c.send_raw(b"short\r\n.\r\n").await.unwrap();
    let (rest, _end) = c.read_to_close().await;
    assert!(rest.is_empty());
    assert!(fake.wait_closed(1, WAIT).await);
    assert!(fake.messages().is_empty());
}

#[tokio::test]
async fn die_before_final_reply_over_tls_has_no_close_notify() {
    let pki = TestPki::new();
    let fake = FakeSmtp::start(
        script()
            .security(FakeSecurity::Tls(pki.server_config()))
            .data_end(DataEnd::DieBeforeFinalReply),
    )
    .await;
    let mut c = LineClient::connect_tls(fake.addr(), pki.client_config(), "localhost")
        .await
        .unwrap();
    c.read_smtp_reply().await.unwrap();
    ehlo(&mut c).await;
    login(&mut c).await;
    open_data(&mut c, "r@x.test").await;
    c.send_raw(b"body\r\n.\r\n").await.unwrap();
    let (rest, end) = c.read_to_close().await;
    assert!(rest.is_empty());
    assert_eq!(end.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    assert!(fake.wait_closed(1, WAIT).await);
    let messages = fake.messages();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].raw, b"body\r\n");
    assert!(messages[0].tls);
    assert_eq!(messages[0].final_reply, None);
    assert!(fake
        .events()
        .iter()
        .any(|e| matches!(e, SmtpEvent::DroppedByScript(_))));
}

#[tokio::test]
async fn hang_before_final_reply_until_dropped() {
    let fake = FakeSmtp::start(script().data_end(DataEnd::HangBeforeFinalReply)).await;
    let mut c = ready(&fake).await;
    open_data(&mut c, "r@x.test").await;
    c.send_raw(b"body\r\n.\r\n").await.unwrap();
    c.set_timeout(Duration::from_millis(100));
    let err = c.read_line().await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    // Still silent after another command.
    c.send("NOOP").await.unwrap();
    assert_eq!(
        c.read_line().await.unwrap_err().kind(),
        io::ErrorKind::TimedOut
    );
    fake.expect_event(
        "MessageReceived",
        |e| matches!(e, SmtpEvent::MessageReceived { .. }),
        WAIT,
    )
    .await;
    assert_eq!(fake.messages()[0].final_reply, None);

    // Dropping the fake aborts the hung session.
    drop(fake);
    c.set_timeout(WAIT);
    let (rest, _end) = c.read_to_close().await;
    assert!(rest.is_empty());
}

#[tokio::test]
async fn client_drop_mid_data_is_aborted_not_received() {
    let fake = FakeSmtp::start(script()).await;
    let mut c = ready(&fake).await;
    open_data(&mut c, "r@x.test").await;
    c.send_raw(b"partial\r\nbody").await.unwrap();
    drop(c);
    fake.expect_event(
        "MessageAborted",
        |e| *e == SmtpEvent::MessageAborted { partial_bytes: 13 },
        WAIT,
    )
    .await;
    assert!(fake.wait_closed(1, WAIT).await);
    assert!(fake.messages().is_empty());
    assert!(fake.events().contains(&SmtpEvent::ClosedWithoutQuit));

    let fake = FakeSmtp::start(script().bdat(true)).await;
    let mut c = ready(&fake).await;
    c.command("MAIL FROM:<s@x.test>").await.unwrap();
    c.command("RCPT TO:<r@x.test>").await.unwrap();
    c.send_raw(b"BDAT 100 LAST\r\n0123456789").await.unwrap();
    drop(c);
    fake.expect_event(
        "MessageAborted",
        |e| *e == SmtpEvent::MessageAborted { partial_bytes: 10 },
        WAIT,
    )
    .await;
    assert!(fake.messages().is_empty());
}

#[tokio::test]
async fn bdat_chunks_are_read_exactly() {
    let fake = FakeSmtp::start(script().bdat(true)).await;
    let mut c = ready(&fake).await;
    c.send("EHLO again.test").await.unwrap();
    let caps = c.read_smtp_reply().await.unwrap();
    assert!(caps.contains(&"250-CHUNKING".to_owned()), "{caps:?}");

    // Refused outside a transaction, but the chunk is still consumed.
    c.send_raw(b"BDAT 6\r\nNOOP\r\n").await.unwrap();
    assert_eq!(c.read_line().await.unwrap(), "503 5.5.1 Need MAIL command");
    assert_eq!(c.command("NOOP").await.unwrap(), "250 2.0.0 Ok");
    assert!(c.command("BDAT x").await.unwrap().starts_with("501 "));

    c.command("MAIL FROM:<s@x.test>").await.unwrap();
    c.command("RCPT TO:<r@x.test>").await.unwrap();
    // Chunks are not dot-stuffed and may hold anything, even ".\r\n".
    let first = b"Subject: x\r\n\r\n.\r\n";
    let second = b"..two\r\n";
    c.send_raw(&[&b"BDAT 17\r\n"[..], first, b"BDAT 7 LAST\r\n", second].concat())
        .await
        .unwrap();
    assert_eq!(c.read_line().await.unwrap(), "250 2.0.0 17 octets received");
    assert_eq!(
        c.read_line().await.unwrap(),
        "250 2.0.0 Ok: queued as FAKE1"
    );

    // DATA may not follow BDAT in one transaction.
    c.command("MAIL FROM:<s@x.test>").await.unwrap();
    c.command("RCPT TO:<r@x.test>").await.unwrap();
    c.send_raw(b"BDAT 3\r\nabc").await.unwrap();
    assert!(c.read_line().await.unwrap().starts_with("250 "));
    assert_eq!(
        c.command("DATA").await.unwrap(),
        "503 5.5.1 DATA not allowed after BDAT"
    );
    c.send_raw(b"BDAT 0 LAST\r\n").await.unwrap();
    assert_eq!(
        c.read_line().await.unwrap(),
        "250 2.0.0 Ok: queued as FAKE2"
    );
    quit(&fake, &mut c).await;

    let messages = fake.messages();
    assert_eq!(messages.len(), 2);
    let expected = [&first[..], &second[..]].concat();
    assert_eq!(messages[0].raw, expected);
    assert_eq!(messages[0].unstuffed, expected);
    assert!(messages[0].chunked);
    assert_eq!(messages[1].raw, b"abc");
    let chunks: Vec<_> = fake
        .events()
        .into_iter()
        .filter(|e| matches!(e, SmtpEvent::BdatChunk { .. }))
        .collect();
    assert_eq!(
        chunks,
        [
            SmtpEvent::BdatChunk {
                size: 17,
                last: false
            },
            SmtpEvent::BdatChunk {
                size: 7,
                last: true
            },
            SmtpEvent::BdatChunk {
                size: 3,
                last: false
            },
            SmtpEvent::BdatChunk {
                size: 0,
                last: true
            },
        ]
    );
    no_violations(&fake);

    // Without `bdat`, neither CHUNKING nor BDAT.
    let fake = FakeSmtp::start(script()).await;
    let mut c = ready(&fake).await;
    assert_eq!(
        c.command("BDAT 0 LAST").await.unwrap(),
        "502 5.5.2 Command not recognized"
    );
}
