//! Hostile or broken upstreams, one small scripted server per failure mode:
//! framing anomalies close the upstream and give the client a temporary
//! error, never a hang and never a stray line attributed to the next command.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{start, RouteYaml};
use postern_testkit::LineClient;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// A server that answers each received line with the next scripted reply
/// (the first entry is the greeting); after the last reply it waits for
/// one more line. Returns its address.
async fn scripted(replies: Vec<&'static [u8]>) -> SocketAddr {
    scripted_with(replies, false).await
}

/// Like [`scripted`]; with `close_after_last` the server hangs up right
/// after writing its last reply.
async fn scripted_with(replies: Vec<&'static [u8]>, close_after_last: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let (r, mut w) = stream.into_split();
        let mut lines = BufReader::new(r).lines();
        let mut replies = replies.into_iter().peekable();
        if let Some(greeting) = replies.next() {
            let _ = w.write_all(greeting).await;
        }
        while let Ok(Some(_line)) = lines.next_line().await {
            match replies.next() {
                Some(reply) => {
                    let _ = w.write_all(reply).await;
                    if close_after_last && replies.peek().is_none() {
                        break;
                    }
                }
                None => break,
            }
        }
    });
    addr
}

fn pop3(upstream: SocketAddr) -> String {
    RouteYaml::pop3("r", upstream)
        .security("none")
        .auth("user")
        .yaml()
}

fn smtp(upstream: SocketAddr) -> String {
    RouteYaml::smtp("r", upstream)
        .security("none")
        .auth("none")
        .yaml()
}

#[tokio::test]
async fn pop3_unsolicited_line_is_not_attributed_to_the_next_command() {
    let up = scripted(vec![
        b"+OK ready\r\n",
        b"-ERR no CAPA\r\n",                // CAPA
        b"+OK\r\n",                         // USER
        b"+OK logged in\r\n",               // PASS
        b"+OK 1 10\r\n+OK 9 999 extra\r\n", // STAT, plus a line nobody asked for
        b"+OK noop\r\n",
    ])
    .await;
    let gw = start(&pop3(up)).await;
    let mut c = LineClient::connect(gw.addr("r")).await.expect("connect");
    c.read_line().await.expect("greeting");
    c.command("USER a").await.expect("user");
    assert!(c.command("PASS b").await.expect("pass").starts_with("+OK"));
    assert_eq!(c.command("STAT").await.expect("stat"), "+OK 1 10");
    let r = c.command("NOOP").await.expect("noop");
    assert!(
        r.starts_with("-ERR [SYS/TEMP]"),
        "the stray line was relayed as the NOOP reply: {r}"
    );
    let (rest, _) = c.read_to_close().await;
    assert!(rest.is_empty());
    gw.stop().await;
}

#[tokio::test]
async fn pop3_status_text_is_sanitized_and_garbage_fails() {
    let up = scripted(vec![
        b"+OK ready\r\n",
        b"-ERR\r\n",
        b"+OK\r\n",
        b"+OK\r\n",
        b"+OK 1 10 \x1b]0;owned\x07\r\n",
        b"* OK this is IMAP\r\n",
    ])
    .await;
    let gw = start(&pop3(up)).await;
    let mut c = LineClient::connect(gw.addr("r")).await.expect("connect");
    c.read_line().await.expect("greeting");
    c.command("USER a").await.expect("user");
    c.command("PASS b").await.expect("pass");
    assert_eq!(
        c.command("STAT").await.expect("stat"),
        "+OK 1 10 ?]0;owned?"
    );
    let r = c.command("NOOP").await.expect("noop");
    assert!(r.starts_with("-ERR [SYS/TEMP]"), "{r}");
    gw.stop().await;
}

#[tokio::test]
async fn pop3_upstream_closing_inside_a_multiline_reply_gives_a_temporary_error() {
    // CAPA's body is cut before its terminator: the client's login gets
    // SYS/TEMP, not a login built on half a capability list.
    let up = scripted_with(vec![b"+OK ready\r\n", b"+OK capa follows\r\nTOP\r\n"], true).await;
    let gw = start(&pop3(up)).await;
    let mut c = LineClient::connect(gw.addr("r")).await.expect("connect");
    c.set_timeout(Duration::from_secs(10));
    let r = common::pop3_greet_and_pass(&mut c, "a", "b").await;
    assert!(r.starts_with("-ERR [SYS/TEMP]"), "{r}");
    gw.stop().await;
}

#[tokio::test]
async fn smtp_code_change_inside_a_multiline_reply_fails_closed() {
    let up = scripted(vec![b"220 hi\r\n", b"250-fake\r\n251 PIPELINING\r\n"]).await;
    let gw = start(&smtp(up)).await;
    let mut c = LineClient::connect(gw.addr("r")).await.expect("connect");
    // postern greets and answers EHLO itself; an `auth: none` route opens
    // the upstream (and meets its broken EHLO reply) at the first MAIL.
    let r = c.read_smtp_reply().await.expect("greeting");
    assert!(r[0].starts_with(common::SMTP_GREETING), "{r:?}");
    let r = c.smtp_command("EHLO c").await.expect("ehlo");
    assert!(r.last().expect("a reply").starts_with("250 "), "{r:?}");
    let r = c.smtp_command("MAIL FROM:<a@x>").await.expect("mail");
    assert!(r[0].starts_with("421"), "{r:?}");
    gw.stop().await;
}

#[tokio::test]
async fn smtp_unsolicited_reply_is_not_attributed_to_the_next_command() {
    let up = scripted(vec![
        b"220 hi\r\n",
        b"250 fake\r\n",                           // EHLO
        b"250 2.1.0 Ok\r\n",                       // MAIL
        b"250 2.1.5 Ok\r\n250 2.0.0 surprise\r\n", // RCPT + a stray reply
        b"354 go\r\n",
    ])
    .await;
    let gw = start(&smtp(up)).await;
    let mut c = LineClient::connect(gw.addr("r")).await.expect("connect");
    c.read_smtp_reply().await.expect("greeting");
    c.smtp_command("EHLO c").await.expect("ehlo");
    assert!(c.smtp_command("MAIL FROM:<a@x>").await.expect("mail")[0].starts_with("250"));
    assert!(c.smtp_command("RCPT TO:<b@y>").await.expect("rcpt")[0].starts_with("250"));
    let r = c.smtp_command("DATA").await.expect("data");
    assert!(
        r[0].starts_with("421"),
        "the stray 250 became DATA's reply: {r:?}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn smtp_reply_text_is_sanitized() {
    let up = scripted(vec![
        b"220 hi\r\n",
        b"250 fake\r\n",
        b"550 5.1.1 \x1b[5mno such user\x1b[0m\r\n",
    ])
    .await;
    let gw = start(&smtp(up)).await;
    let mut c = LineClient::connect(gw.addr("r")).await.expect("connect");
    c.read_smtp_reply().await.expect("greeting");
    c.smtp_command("EHLO c").await.expect("ehlo");
    let r = c.smtp_command("MAIL FROM:<a@x>").await.expect("mail");
    assert_eq!(r, vec!["550 5.1.1 ?[5mno such user?[0m".to_owned()]);
    gw.stop().await;
}

/// A server that greets only after a pause, so a client can talk first.
async fn slow_greeting(greeting: &'static [u8], then: Vec<&'static [u8]>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (r, mut w) = stream.into_split();
        let _ = w.write_all(greeting).await;
        let mut lines = BufReader::new(r).lines();
        let mut then = then.into_iter();
        while let Ok(Some(_)) = lines.next_line().await {
            match then.next() {
                Some(reply) => {
                    let _ = w.write_all(reply).await;
                }
                None => break,
            }
        }
    });
    addr
}

#[tokio::test]
async fn early_talkers_are_refused() {
    let up = slow_greeting(b"220 hi\r\n", vec![b"250 fake\r\n"]).await;
    let gw = start(&smtp(up)).await;
    let mut c = LineClient::connect(gw.addr("r")).await.expect("connect");
    c.send_raw(b"EHLO spam\r\nMAIL FROM:<x@y>\r\n")
        .await
        .expect("early");
    let r = c.read_smtp_reply().await.expect("reply");
    assert!(r[0].starts_with("554 5.5.1"), "{r:?}");
    gw.stop().await;

    let up = slow_greeting(b"+OK hi\r\n", vec![b"-ERR no capa\r\n"]).await;
    let gw = start(&pop3(up)).await;
    let mut c = LineClient::connect(gw.addr("r")).await.expect("connect");
    c.send_raw(b"USER a\r\n").await.expect("early");
    let r = c.read_line().await.expect("reply");
    assert!(r.starts_with("-ERR"), "{r}");
    gw.stop().await;
}

#[tokio::test]
async fn a_tls_client_on_a_plain_port_is_closed_quietly() {
    let up = slow_greeting(b"220 hi\r\n", vec![b"250 fake\r\n"]).await;
    let gw = start(&smtp(up)).await;
    let mut c = LineClient::connect(gw.addr("r")).await.expect("connect");
    // The start of a TLS 1.2 ClientHello record.
    c.send_raw(&[
        0x16, 0x03, 0x01, 0x00, 0x2f, 0x01, 0x00, 0x00, 0x2b, 0x03, 0x03,
    ])
    .await
    .expect("hello");
    let (rest, _) = c.read_to_close().await;
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    gw.stop().await;
}
