//! Relaying commands and replies: the upstream's codes, recipients, SIZE,
//! empty and large messages, commands answered locally.

use super::*;

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
