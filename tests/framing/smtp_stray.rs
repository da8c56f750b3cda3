//! SMTP: a stray `250` in its own segment is never paired with the next
//! command.

use super::*;

/// A stray `250` 100 ms after MAIL's reply; RCPT (sent after 300 ms) is
/// refused by the server with 550.
#[tokio::test]
async fn smtp_stray_250_in_the_socket_is_not_paired_with_rcpt() {
    let b = SmtpBehaviour {
        stray: Some(Stray {
            after: "MAIL",
            wait: Duration::from_millis(100),
            line: b"250 2.0.0 STRAY\r\n",
        }),
        rcpt: Some(b"550 5.1.1 no such user\r\n"),
        ..SmtpBehaviour::default()
    };
    let (up, seen) = scripted(move |p| smtp_server(p, b)).await;
    let gw = start(&smtp_yaml(up, FAST)).await;
    let mut c = smtp_hello(gw.addr("s")).await;
    let r = smtp_reply(&mut c, "MAIL FROM:<a@x>").await;
    assert!(matches!(&r, Ok(r) if r.starts_with("250")), "MAIL: {r:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(seen.strays(), 1, "the fake did not send its stray line");
    let r = smtp_reply(&mut c, "RCPT TO:<b@y>").await;
    assert_not_success("RCPT", &r);
    assert!(
        matches!(&r, Ok(r) if r.starts_with('4')) || r.is_err(),
        "RCPT got {r:?}: expected a temporary error (the upstream is out of step)"
    );
    assert!(
        !seen.received_prefix("RCPT"),
        "postern sent RCPT upstream with an unsolicited reply pending"
    );
    gw.stop().await;
}

/// The stray `250` is written right after MAIL's reply and lands in
/// postern's buffer; the client sends RCPT at once.
#[tokio::test]
async fn smtp_stray_250_in_the_buffer_is_not_paired_with_rcpt() {
    let b = SmtpBehaviour {
        stray: Some(Stray {
            after: "MAIL",
            wait: Duration::ZERO,
            line: b"250 2.0.0 STRAY\r\n",
        }),
        rcpt: Some(b"550 5.1.1 no such user\r\n"),
        ..SmtpBehaviour::default()
    };
    let (up, _seen) = scripted(move |p| smtp_server(p, b)).await;
    let gw = start(&smtp_yaml(up, FAST)).await;
    let mut c = smtp_hello(gw.addr("s")).await;
    let r = smtp_reply(&mut c, "MAIL FROM:<a@x>").await;
    assert!(matches!(&r, Ok(r) if r.starts_with("250")), "MAIL: {r:?}");
    let r = smtp_reply(&mut c, "RCPT TO:<b@y>").await;
    assert_not_success("RCPT", &r);
    gw.stop().await;
}

/// A stray `250` after the upstream's EHLO reply; MAIL is refused with 550
/// by the server. If postern opens the upstream only at MAIL it sends MAIL
/// straight after the EHLO reply and the fake, seeing it, sends no stray
/// (a stray after that would be undecidable): the test then only checks
/// that MAIL's real 550 reaches the client.
#[tokio::test]
async fn smtp_stray_250_after_the_upstream_ehlo_is_not_paired_with_mail() {
    let b = SmtpBehaviour {
        stray: Some(Stray {
            after: "EHLO",
            wait: Duration::from_millis(100),
            line: b"250 2.0.0 STRAY\r\n",
        }),
        mail: Some(b"550 5.7.1 sender refused\r\n"),
        ..SmtpBehaviour::default()
    };
    let (up, seen) = scripted(move |p| smtp_server(p, b)).await;
    let gw = start(&smtp_yaml(up, FAST)).await;
    let mut c = smtp_hello(gw.addr("s")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = smtp_reply(&mut c, "MAIL FROM:<a@x>").await;
    assert_not_success("MAIL", &r);
    if seen.strays() == 0 {
        assert!(
            matches!(&r, Ok(r) if r.starts_with("550")),
            "no stray was sent, so MAIL should get the server's 550: {r:?}"
        );
    }
    gw.stop().await;
}
