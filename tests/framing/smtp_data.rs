//! SMTP DATA: early replies, `250` to DATA, silence after the end of data.

use super::*;

/// The server sends `250 early ok` after two body lines, before the end of
/// data, and `554` after the real end: the client must get `451 4.4.2`,
/// and the server must never get the final dot (the upstream is dropped).
#[tokio::test]
async fn smtp_250_sent_during_data_never_becomes_the_final_reply() {
    let b = SmtpBehaviour {
        early: Some((2, b"250 2.0.0 early ok\r\n")),
        final_reply: Some(b"554 5.7.1 rejected\r\n"),
        ..SmtpBehaviour::default()
    };
    let (up, seen) = scripted(move |p| smtp_server(p, b)).await;
    let gw = start(&smtp_yaml(up, FAST)).await;
    let mut c = smtp_to_data(gw.addr("s")).await;
    c.send_raw(b"Subject: early\r\n\r\nfirst line\r\n")
        .await
        .expect("first part");
    // The early reply arrives while postern waits for the rest.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = c.send_raw(b"second line\r\n.\r\n").await;
    let r = c
        .read_smtp_reply()
        .await
        .map(|r| r.join(" / "))
        .map_err(|e| e.to_string());
    assert!(
        matches!(&r, Ok(r) if r.starts_with("451 4.4.2")),
        "the reply to the end of data was {r:?}, not 451 4.4.2"
    );
    assert!(
        !seen.received("."),
        "postern ended the message upstream after the server had spoken out of turn"
    );
    gw.stop().await;
}

/// The server answers DATA with `250` instead of `354`.
#[tokio::test]
async fn smtp_250_in_answer_to_data_is_a_protocol_error() {
    let b = SmtpBehaviour {
        data: Some(b"250 2.0.0 ok\r\n"),
        ..SmtpBehaviour::default()
    };
    let (up, _seen) = scripted(move |p| smtp_server(p, b)).await;
    let gw = start(&smtp_yaml(up, FAST)).await;
    let mut c = smtp_hello(gw.addr("s")).await;
    for cmd in ["MAIL FROM:<a@x>", "RCPT TO:<b@y>"] {
        let r = smtp_reply(&mut c, cmd).await;
        assert!(matches!(&r, Ok(r) if r.starts_with("250")), "{cmd}: {r:?}");
    }
    let r = smtp_reply(&mut c, "DATA").await;
    assert!(
        matches!(&r, Ok(r) if r.starts_with("451")),
        "DATA answered 250 upstream reached the client as {r:?}, not 451"
    );
    // The upstream is gone: NOOP and RSET, which postern could answer
    // itself, get 421 like any other command (the README's promise).
    let r = smtp_reply(&mut c, "NOOP").await;
    assert!(
        matches!(&r, Ok(r) if r.starts_with("421")),
        "NOOP after the upstream was dropped got {r:?}, not 421"
    );
    gw.stop().await;
}

/// The server never answers the end of data: `451 4.4.2` within
/// `final_reply` (1 s), never `250`.
#[tokio::test]
async fn smtp_silent_upstream_after_end_of_data_gives_451_in_time() {
    let b = SmtpBehaviour {
        final_reply: None,
        ..SmtpBehaviour::default()
    };
    let (up, seen) = scripted(move |p| smtp_server(p, b)).await;
    let gw = start(&smtp_yaml(up, "upstream_reply: 2s, final_reply: 1s")).await;
    let mut c = smtp_to_data(gw.addr("s")).await;
    c.send_raw(b"Subject: silent\r\n\r\nbody\r\n.\r\n")
        .await
        .expect("body");
    let sent = Instant::now();
    let r = c
        .read_smtp_reply()
        .await
        .map(|r| r.join(" / "))
        .map_err(|e| e.to_string());
    let took = sent.elapsed();
    assert!(
        matches!(&r, Ok(r) if r.starts_with("451 4.4.2")),
        "the reply to the end of data was {r:?}"
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "451 after {took:?}, final_reply is 1 s"
    );
    assert!(
        seen.received("."),
        "the whole message should have reached the upstream"
    );
    gw.stop().await;
}
