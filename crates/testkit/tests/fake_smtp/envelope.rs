//! MAIL/RCPT replies, scripted overrides, SIZE and parameters.

use super::*;

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
