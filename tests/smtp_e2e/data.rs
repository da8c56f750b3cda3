//! Message data that must never be delivered: an upstream dying during
//! DATA, a client leaving mid-DATA, SMTP smuggling.

use super::*;

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

/// A message arriving a byte at a time puts every chunk boundary inside a
/// CRLF, after a line's dot and inside the terminator: postern holds those
/// bytes back and joins them to the next chunk (everything else goes
/// upstream straight from the client's buffer), and the upstream receives
/// exactly the client's message.
#[tokio::test]
async fn a_message_split_at_every_byte_arrives_exactly() {
    let pki = TestPki::new();
    // Dot-stuffed lines, one that is only a (stuffed) dot, an empty line.
    let body = b"Subject: split\r\n\r\n..stuffed\r\n..\r\nx\r\n\r\nline\r\n".to_vec();
    for security in ["none", "tls"] {
        let (up, gw) = gateway(&pki, security, "plain", SmtpScript::new()).await;
        let mut c = connect(&gw).await;
        login(&mut c).await;
        c.smtp_command("MAIL FROM:<a@x>").await.expect("mail");
        c.smtp_command("RCPT TO:<b@y>").await.expect("rcpt");
        assert_eq!(code(&c.smtp_command("DATA").await.expect("data")), "354");
        for b in body.iter().chain(b".\r\n") {
            c.send_raw(&[*b]).await.expect("byte");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let r = c.read_smtp_reply().await.expect("final reply");
        assert_eq!(code(&r), "250", "{security}: {r:?}");
        let got = up.fake.messages();
        assert_eq!(got.len(), 1, "{security}");
        assert_eq!(
            String::from_utf8_lossy(&got[0].raw),
            String::from_utf8_lossy(&body),
            "{security}: the upstream's copy differs"
        );
        gw.stop().await;
    }
}
