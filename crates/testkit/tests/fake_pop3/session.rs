//! A whole session, scripted deaths mid-RETR, concurrency and the event log.

use super::*;

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
    let framing = log.iter().map(|e| (e.session, &e.event));
    assert_sessions_framed(framing, 4, &Pop3Event::Connected, &Pop3Event::Closed);
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
