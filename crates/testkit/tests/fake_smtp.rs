//! Drive `FakeSmtp` with `LineClient` over plain TCP, implicit TLS and
//! STARTTLS.
#![allow(clippy::unwrap_used)]

use std::io;
use std::time::Duration;

use base64::Engine as _;
use postern_testkit::{
    cram_md5_response, dot_stuff, login_base64, sasl_plain_response, BareKind, DataEnd,
    EhloBehaviour, FakeSecurity, FakeSmtp, LineClient, SmtpEvent, SmtpScript, StarttlsBehaviour,
    TestPki,
};

const WAIT: Duration = Duration::from_secs(5);
const PASSWORD: &str = "pass with spaces";
/// Unstuffed; lines starting with "." exercise dot-stuffing.
const MSG: &[u8] =
    b"From: a@x.test\r\nSubject: dots\r\n\r\n.leading dot\r\nmiddle\r\n.\r\n..two\r\nend\r\n";

fn script() -> SmtpScript {
    SmtpScript::new().credentials("alice", PASSWORD)
}

async fn connect(fake: &FakeSmtp) -> LineClient {
    let mut c = LineClient::connect(fake.addr()).await.unwrap();
    let greeting = c.read_smtp_reply().await.unwrap();
    assert_eq!(greeting, ["220 fake.test ESMTP ready"]);
    c
}

async fn ehlo(c: &mut LineClient) -> Vec<String> {
    let lines = c.smtp_command("EHLO client.test").await.unwrap();
    assert!(lines[0].starts_with("250"), "{lines:?}");
    lines
}

async fn login(c: &mut LineClient) {
    let ir = sasl_plain_response("", "alice", PASSWORD);
    assert_eq!(
        c.command(&format!("AUTH PLAIN {ir}")).await.unwrap(),
        "235 2.7.0 Authentication successful"
    );
}

/// Greeted and authenticated plain session.
async fn ready(fake: &FakeSmtp) -> LineClient {
    let mut c = connect(fake).await;
    ehlo(&mut c).await;
    login(&mut c).await;
    c
}

/// MAIL, one RCPT, DATA; returns after the 354.
async fn open_data(c: &mut LineClient, rcpt: &str) {
    assert_eq!(
        c.command("MAIL FROM:<sender@x.test>").await.unwrap(),
        "250 2.1.0 Ok"
    );
    assert_eq!(
        c.command(&format!("RCPT TO:<{rcpt}>")).await.unwrap(),
        "250 2.1.5 Ok"
    );
    assert!(c.command("DATA").await.unwrap().starts_with("354 "));
}

async fn quit(fake: &FakeSmtp, c: &mut LineClient) {
    assert_eq!(c.command("QUIT").await.unwrap(), "221 2.0.0 Bye");
    let (rest, end) = c.read_to_close().await;
    assert!(rest.is_empty());
    end.unwrap();
    assert!(fake.wait_closed(fake.connections(), WAIT).await);
}

fn no_violations(fake: &FakeSmtp) {
    let bad: Vec<_> = fake
        .events()
        .into_iter()
        .filter(|e| {
            matches!(
                e,
                SmtpEvent::ClientViolation(_)
                    | SmtpEvent::BareLineEnding { .. }
                    | SmtpEvent::SessionPanicked(_)
            )
        })
        .collect();
    assert!(bad.is_empty(), "{bad:?}");
}

/// The challenge inside a "334 base64" CRAM-MD5 continuation.
fn challenge_of(line: &str) -> String {
    let encoded = line.strip_prefix("334 ").expect("continuation");
    let raw = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap();
    String::from_utf8(raw).unwrap()
}

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
async fn auth_plain_ok_and_failures() {
    let fake = FakeSmtp::start(script()).await;
    let mut c = connect(&fake).await;
    ehlo(&mut c).await;

    let wrong = sasl_plain_response("", "alice", "not it");
    assert_eq!(
        c.command(&format!("AUTH PLAIN {wrong}")).await.unwrap(),
        "535 5.7.8 Authentication credentials invalid"
    );
    // authzid differing from authcid is refused.
    let other = sasl_plain_response("root", "alice", PASSWORD);
    assert_eq!(
        c.command(&format!("AUTH PLAIN {other}")).await.unwrap(),
        "535 5.7.8 Authentication credentials invalid"
    );
    assert_eq!(
        c.command("AUTH PLAIN !!!").await.unwrap(),
        "501 5.5.2 Cannot decode response"
    );
    assert_eq!(c.command("AUTH PLAIN").await.unwrap(), "334 ");
    assert_eq!(
        c.command("*").await.unwrap(),
        "501 5.7.0 Authentication cancelled"
    );
    // Continuation form.
    assert_eq!(c.command("auth plain").await.unwrap(), "334 ");
    let good = sasl_plain_response("alice", "alice", PASSWORD);
    assert_eq!(
        c.command(&good).await.unwrap(),
        "235 2.7.0 Authentication successful"
    );
    assert_eq!(
        c.command("AUTH PLAIN =").await.unwrap(),
        "503 5.5.1 Already authenticated"
    );
    quit(&fake, &mut c).await;

    // Initial-response form.
    let mut c = connect(&fake).await;
    ehlo(&mut c).await;
    login(&mut c).await;
    quit(&fake, &mut c).await;

    let events = fake.events();
    let oks = events
        .iter()
        .filter(|e| {
            **e == SmtpEvent::AuthOk {
                mechanism: "PLAIN".into(),
                tls: false,
            }
        })
        .count();
    assert_eq!(oks, 2);
    let fails = events
        .iter()
        .filter(|e| matches!(e, SmtpEvent::AuthFailed { mechanism } if mechanism == "PLAIN"))
        .count();
    assert_eq!(fails, 3);
    assert!(events.contains(&SmtpEvent::AuthCancelled {
        mechanism: "PLAIN".into()
    }));
    let commands = fake.commands();
    assert!(commands.contains(&"AUTH PLAIN ***".to_owned()));
    assert!(commands.contains(&"auth plain".to_owned()));
    // Neither initial responses nor continuation lines are logged.
    assert!(!commands.iter().any(|c| c.contains(&good) || c == "*"));
    assert!(!format!("{events:?}").contains(PASSWORD));
}

#[tokio::test]
async fn auth_login_with_and_without_initial_response() {
    let fake = FakeSmtp::start(script()).await;
    let mut c = connect(&fake).await;
    ehlo(&mut c).await;

    assert_eq!(c.command("AUTH LOGIN").await.unwrap(), "334 VXNlcm5hbWU6");
    assert_eq!(
        c.command(&login_base64("alice")).await.unwrap(),
        "334 UGFzc3dvcmQ6"
    );
    assert_eq!(
        c.command(&login_base64("wrong")).await.unwrap(),
        "535 5.7.8 Authentication credentials invalid"
    );
    // Cancel at the password prompt.
    let ir = login_base64("alice");
    assert_eq!(
        c.command(&format!("AUTH LOGIN {ir}")).await.unwrap(),
        "334 UGFzc3dvcmQ6"
    );
    assert_eq!(
        c.command("*").await.unwrap(),
        "501 5.7.0 Authentication cancelled"
    );
    // Initial response carries the user name.
    assert_eq!(
        c.command(&format!("AUTH LOGIN {ir}")).await.unwrap(),
        "334 UGFzc3dvcmQ6"
    );
    assert_eq!(
        c.command(&login_base64(PASSWORD)).await.unwrap(),
        "235 2.7.0 Authentication successful"
    );
    quit(&fake, &mut c).await;

    let mut c = connect(&fake).await;
    ehlo(&mut c).await;
    c.command("AUTH LOGIN").await.unwrap();
    c.command(&login_base64("alice")).await.unwrap();
    assert_eq!(
        c.command(&login_base64(PASSWORD)).await.unwrap(),
        "235 2.7.0 Authentication successful"
    );
    quit(&fake, &mut c).await;

    let events = fake.events();
    assert!(events.contains(&SmtpEvent::AuthFailed {
        mechanism: "LOGIN".into()
    }));
    assert!(events.contains(&SmtpEvent::AuthCancelled {
        mechanism: "LOGIN".into()
    }));
    let oks = events
        .iter()
        .filter(|e| matches!(e, SmtpEvent::AuthOk { mechanism, .. } if mechanism == "LOGIN"))
        .count();
    assert_eq!(oks, 2);
    assert!(fake.commands().contains(&"AUTH LOGIN ***".to_owned()));
    assert!(!fake.commands().iter().any(|c| c.contains(&ir)));
}

#[tokio::test]
async fn auth_cram_md5_fresh_challenges() {
    let fake = FakeSmtp::start(script()).await;
    let mut c = connect(&fake).await;
    ehlo(&mut c).await;

    let first = challenge_of(&c.command("AUTH CRAM-MD5").await.unwrap());
    assert!(first.starts_with('<') && first.ends_with("@fake.test>"));
    let wrong = cram_md5_response("alice", "not it", &first);
    assert_eq!(
        c.command(&wrong).await.unwrap(),
        "535 5.7.8 Authentication credentials invalid"
    );
    let second = challenge_of(&c.command("AUTH cram-md5").await.unwrap());
    assert_ne!(first, second, "challenges must be fresh");
    // The right answer to an old challenge is a replay.
    let replay = cram_md5_response("alice", PASSWORD, &first);
    assert!(c.command(&replay).await.unwrap().starts_with("535 "));
    // No initial response in CRAM-MD5.
    assert!(c
        .command("AUTH CRAM-MD5 abc")
        .await
        .unwrap()
        .starts_with("501 "));
    let third = challenge_of(&c.command("AUTH CRAM-MD5").await.unwrap());
    let right = cram_md5_response("alice", PASSWORD, &third);
    assert_eq!(
        c.command(&right).await.unwrap(),
        "235 2.7.0 Authentication successful"
    );
    quit(&fake, &mut c).await;
    assert!(fake.events().contains(&SmtpEvent::AuthOk {
        mechanism: "CRAM-MD5".into(),
        tls: false
    }));
}

#[tokio::test]
async fn mechanism_list_controls_ehlo_and_auth() {
    let fake = FakeSmtp::start(script().auth_mechanisms(&["CRAM-MD5"])).await;
    let mut c = connect(&fake).await;
    assert_eq!(ehlo(&mut c).await.last().unwrap(), "250 AUTH CRAM-MD5");
    assert_eq!(
        c.command("AUTH PLAIN =").await.unwrap(),
        "504 5.5.4 Unrecognized authentication type"
    );

    let fake = FakeSmtp::start(script().auth_mechanisms(&[]).require_auth(false)).await;
    let mut c = connect(&fake).await;
    let caps = ehlo(&mut c).await;
    assert!(!caps.iter().any(|l| l.contains("AUTH")), "{caps:?}");
    assert!(c.command("AUTH PLAIN =").await.unwrap().starts_with("502 "));
    assert_eq!(
        c.command("MAIL FROM:<a@x.test>").await.unwrap(),
        "250 2.1.0 Ok"
    );
    // AUTH= needs the AUTH extension (RFC 4954 §5).
    c.command("RSET").await.unwrap();
    assert!(c
        .command("MAIL FROM:<a@x.test> AUTH=<>")
        .await
        .unwrap()
        .starts_with("555 5.5.4"));
}

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
async fn rcpt_replies_are_per_address() {
    let fake = FakeSmtp::start(
        script()
            .rcpt_reply("bad@x.test", "550 5.1.1 No such user")
            .rcpt_reply("later@x.test", "451 4.3.0 Try later"),
    )
    .await;
    let mut c = ready(&fake).await;
    assert_eq!(
        c.command("RCPT TO:<r@x.test>").await.unwrap(),
        "503 5.5.1 Need MAIL command"
    );
    c.command("MAIL FROM:<>").await.unwrap();
    assert_eq!(
        c.command("RCPT TO:<bad@x.test>").await.unwrap(),
        "550 5.1.1 No such user"
    );
    assert_eq!(
        c.command("RCPT TO:<BAD@X.test>").await.unwrap(),
        "550 5.1.1 No such user"
    );
    assert_eq!(
        c.command("DATA").await.unwrap(),
        "554 5.5.1 No valid recipients"
    );
    assert_eq!(
        c.command("RCPT TO:<later@x.test>").await.unwrap(),
        "451 4.3.0 Try later"
    );
    assert!(c.command("RCPT TO:<>").await.unwrap().starts_with("501 "));
    assert!(c.command("RCPT TO:good").await.unwrap().starts_with("501 "));
    assert_eq!(
        c.command("RCPT TO:<good@x.test>").await.unwrap(),
        "250 2.1.5 Ok"
    );
    assert!(c.command("DATA").await.unwrap().starts_with("354 "));
    assert!(c.command("hi\r\n.").await.unwrap().starts_with("250 "));
    quit(&fake, &mut c).await;

    let m = &fake.messages()[0];
    assert_eq!(m.mail_from, "");
    assert_eq!(m.rcpts, ["good@x.test"]);
    assert_eq!(m.raw, b"hi\r\n");
    let rcpts: Vec<_> = fake
        .events()
        .into_iter()
        .filter(|e| matches!(e, SmtpEvent::RcptTo(_)))
        .collect();
    assert_eq!(rcpts, [SmtpEvent::RcptTo("<good@x.test>".into())]);
}

#[tokio::test]
async fn mail_and_data_command_overrides() {
    let fake = FakeSmtp::start(script().mail_reply("451 4.7.1 Greylisted, try later")).await;
    let mut c = ready(&fake).await;
    assert_eq!(
        c.command("MAIL FROM:<s@x.test>").await.unwrap(),
        "451 4.7.1 Greylisted, try later"
    );
    assert!(c
        .command("RCPT TO:<r@x.test>")
        .await
        .unwrap()
        .starts_with("503 "));
    assert!(!fake
        .events()
        .iter()
        .any(|e| matches!(e, SmtpEvent::MailFrom(_))));

    let fake = FakeSmtp::start(script().data_command_reply("554 5.5.1 No valid recipients")).await;
    let mut c = ready(&fake).await;
    c.command("MAIL FROM:<s@x.test>").await.unwrap();
    c.command("RCPT TO:<r@x.test>").await.unwrap();
    assert_eq!(
        c.command("DATA").await.unwrap(),
        "554 5.5.1 No valid recipients"
    );
    assert_eq!(c.command("RSET").await.unwrap(), "250 2.0.0 Ok");
    quit(&fake, &mut c).await;
    assert!(!fake.events().contains(&SmtpEvent::DataStarted));
    assert!(fake.messages().is_empty());
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
async fn implicit_tls_session() {
    let pki = TestPki::new();
    let fake = FakeSmtp::start(script().security(FakeSecurity::Tls(pki.server_config()))).await;
    let mut c = LineClient::connect_tls(fake.addr(), pki.client_config(), "localhost")
        .await
        .unwrap();
    assert_eq!(
        c.read_smtp_reply().await.unwrap(),
        ["220 fake.test ESMTP ready"]
    );
    let caps = ehlo(&mut c).await;
    assert!(!caps.iter().any(|l| l.contains("STARTTLS")), "{caps:?}");
    assert_eq!(
        c.command("STARTTLS").await.unwrap(),
        "502 5.5.1 STARTTLS not supported"
    );
    let challenge = challenge_of(&c.command("AUTH CRAM-MD5").await.unwrap());
    let right = cram_md5_response("alice", PASSWORD, &challenge);
    assert!(c.command(&right).await.unwrap().starts_with("235 "));
    open_data(&mut c, "r@x.test").await;
    c.send_raw(b"over tls\r\n.\r\n").await.unwrap();
    assert!(c.read_line().await.unwrap().starts_with("250 "));
    quit(&fake, &mut c).await;

    let events = fake.events();
    assert_eq!(
        &events[..2],
        [SmtpEvent::Connected, SmtpEvent::TlsEstablished]
    );
    assert!(events.contains(&SmtpEvent::AuthOk {
        mechanism: "CRAM-MD5".into(),
        tls: true
    }));
    assert!(fake.messages()[0].tls);
    no_violations(&fake);

    // An untrusted CA fails the handshake on both sides.
    let stranger = TestPki::new();
    let err = LineClient::connect_tls(fake.addr(), stranger.client_config(), "localhost")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    fake.expect_event("TlsFailed", |e| matches!(e, SmtpEvent::TlsFailed(_)), WAIT)
        .await;
}

#[tokio::test]
async fn starttls_upgrade_resets_state() {
    let pki = TestPki::new();
    let fake = FakeSmtp::start(
        script()
            .security(FakeSecurity::Starttls(pki.server_config()))
            .auth_only_after_tls(true),
    )
    .await;
    let mut c = connect(&fake).await;
    assert_eq!(
        c.command("STARTTLS").await.unwrap(),
        "503 5.5.1 Send EHLO first"
    );
    let caps = ehlo(&mut c).await;
    assert_eq!(caps.last().unwrap(), "250 STARTTLS");
    assert!(!caps.iter().any(|l| l.contains("AUTH")), "{caps:?}");
    let ir = sasl_plain_response("", "alice", PASSWORD);
    assert_eq!(
        c.command(&format!("AUTH PLAIN {ir}")).await.unwrap(),
        "538 5.7.11 Encryption required for requested authentication mechanism"
    );
    assert!(c.command("STARTTLS now").await.unwrap().starts_with("501 "));
    assert_eq!(
        c.command("STARTTLS").await.unwrap(),
        "220 2.0.0 Ready to start TLS"
    );
    c.upgrade_tls(pki.client_config(), "localhost")
        .await
        .unwrap();

    // RFC 3207 §4.2: the client must EHLO again.
    assert_eq!(
        c.command("MAIL FROM:<s@x.test>").await.unwrap(),
        "503 5.5.1 Send EHLO first"
    );
    let caps = ehlo(&mut c).await;
    assert!(!caps.iter().any(|l| l.contains("STARTTLS")), "{caps:?}");
    assert_eq!(caps.last().unwrap(), "250 AUTH PLAIN LOGIN CRAM-MD5");
    assert_eq!(
        c.command("STARTTLS").await.unwrap(),
        "503 5.5.1 TLS already active"
    );
    login(&mut c).await;
    open_data(&mut c, "r@x.test").await;
    assert!(c.command(".").await.unwrap().starts_with("250 "));
    quit(&fake, &mut c).await;

    let events = fake.events();
    assert!(events.contains(&SmtpEvent::TlsEstablished));
    assert!(events.contains(&SmtpEvent::AuthOk {
        mechanism: "PLAIN".into(),
        tls: true
    }));
    assert!(fake.messages()[0].tls);
    no_violations(&fake);
}

#[tokio::test]
async fn starttls_refused_or_not_offered() {
    let pki = TestPki::new();
    let fake = FakeSmtp::start(
        script()
            .security(FakeSecurity::Starttls(pki.server_config()))
            .starttls(StarttlsBehaviour::Refuse),
    )
    .await;
    let mut c = connect(&fake).await;
    assert!(ehlo(&mut c).await.contains(&"250 STARTTLS".to_owned()));
    assert_eq!(
        c.command("STARTTLS").await.unwrap(),
        "454 4.7.0 TLS not available due to temporary reason"
    );
    // Still plain and usable.
    login(&mut c).await;
    quit(&fake, &mut c).await;

    let fake = FakeSmtp::start(
        script()
            .security(FakeSecurity::Starttls(pki.server_config()))
            .starttls(StarttlsBehaviour::NotOffered),
    )
    .await;
    let mut c = connect(&fake).await;
    let caps = ehlo(&mut c).await;
    assert!(!caps.iter().any(|l| l.contains("STARTTLS")), "{caps:?}");
    assert_eq!(
        c.command("STARTTLS").await.unwrap(),
        "502 5.5.1 STARTTLS not supported"
    );
}

#[tokio::test]
async fn starttls_accept_then_inject_writes_extra_bytes() {
    let pki = TestPki::new();
    let injected = b"250 2.1.0 injected\r\n".to_vec();
    let fake = FakeSmtp::start(
        script()
            .security(FakeSecurity::Starttls(pki.server_config()))
            .starttls(StarttlsBehaviour::AcceptThenInject(injected.clone())),
    )
    .await;
    let mut c = connect(&fake).await;
    ehlo(&mut c).await;
    assert_eq!(
        c.command("STARTTLS").await.unwrap(),
        "220 2.0.0 Ready to start TLS"
    );
    c.fill_to(injected.len()).await.unwrap();
    assert_eq!(c.buffered(), &injected[..]);
    let err = c
        .upgrade_tls(pki.client_config(), "localhost")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
}

#[tokio::test]
async fn pipelining_after_starttls_is_flagged() {
    let pki = TestPki::new();
    let fake =
        FakeSmtp::start(script().security(FakeSecurity::Starttls(pki.server_config()))).await;
    let mut c = connect(&fake).await;
    ehlo(&mut c).await;
    c.send_raw(b"STARTTLS\r\nEHLO client.test\r\n")
        .await
        .unwrap();
    fake.expect_event(
        "violation",
        |e| matches!(e, SmtpEvent::ClientViolation(v) if v.contains("after STARTTLS")),
        WAIT,
    )
    .await;
    let (rest, _) = c.read_to_close().await;
    assert!(rest.is_empty(), "no go-ahead after a violation");
    assert!(fake.wait_closed(1, WAIT).await);
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
async fn size_limit_and_parameters_are_enforced() {
    let fake = FakeSmtp::start(script().extensions(&["PIPELINING", "SIZE 100"])).await;
    let mut c = ready(&fake).await;
    assert_eq!(
        c.command("MAIL FROM:<s@x.test> SIZE=101").await.unwrap(),
        "552 5.3.4 Message size exceeds fixed maximum message size"
    );
    assert!(c
        .command("MAIL FROM:<s@x.test> SIZE=lots")
        .await
        .unwrap()
        .starts_with("501 "));
    // 8BITMIME and DSN are not advertised here.
    assert!(c
        .command("MAIL FROM:<s@x.test> BODY=8BITMIME")
        .await
        .unwrap()
        .starts_with("555 5.5.4"));
    assert!(c
        .command("MAIL FROM:<s@x.test> FOO=1")
        .await
        .unwrap()
        .starts_with("555 5.5.4"));
    // RFC 5321 §4.1.2: no space between the colon and the path.
    assert!(c
        .command("MAIL FROM: <s@x.test>")
        .await
        .unwrap()
        .starts_with("501 "));
    assert_eq!(
        c.command("MAIL FROM:<s@x.test> SIZE=100").await.unwrap(),
        "250 2.1.0 Ok"
    );
    assert!(c
        .command("RCPT TO:<r@x.test> NOTIFY=NEVER")
        .await
        .unwrap()
        .starts_with("555 "));
    c.command("RCPT TO:<r@x.test>").await.unwrap();
    assert!(c.command("DATA").await.unwrap().starts_with("354 "));
    // The declared size lied: the data is over the limit.
    let big = [b'x'; 150];
    c.send_raw(&[&big[..], b"\r\n.\r\n"].concat())
        .await
        .unwrap();
    assert_eq!(
        c.read_line().await.unwrap(),
        "552 5.3.4 Message size exceeds fixed maximum message size"
    );
    quit(&fake, &mut c).await;
    let messages = fake.messages();
    assert_eq!(messages.len(), 1);
    assert!(!messages[0].accepted());
    assert!(fake.accepted_messages().is_empty());
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
    for session in 0..4 {
        let own: Vec<_> = log
            .iter()
            .filter(|e| e.session == session)
            .map(|e| &e.event)
            .collect();
        assert_eq!(own.first(), Some(&&SmtpEvent::Connected));
        assert_eq!(own.last(), Some(&&SmtpEvent::Closed));
    }
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
