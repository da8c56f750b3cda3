//! DATA drip: a client sending its message a byte at a time is cut at
//! `data_total` or by `data_min_rate`.

use super::*;

/// After 354 the client sends its message one byte every 100 ms (final dot
/// included, so an unlimited drip would end the message after
/// `body.len()` tenths of a second). Returns when the gateway answered or
/// closed (after how long, and the reply if any), or None if the whole
/// message went through without either.
async fn drip(c: &mut LineClient, body: &[u8]) -> Option<(Duration, Option<String>)> {
    let began = Instant::now();
    c.set_timeout(Duration::from_millis(100));
    for byte in body {
        if c.send_raw(std::slice::from_ref(byte)).await.is_err() {
            return Some((began.elapsed(), None));
        }
        match c.read_line().await {
            Ok(line) => return Some((began.elapsed(), Some(line))),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return Some((began.elapsed(), None)),
        }
    }
    None
}

fn drip_body(len: usize) -> Vec<u8> {
    let mut body = b"Subject: drip\r\n\r\n".to_vec();
    while body.len() + 7 < len {
        body.push(b'x');
    }
    body.extend_from_slice(b"\r\n.\r\n");
    body
}

/// `data_total: 2s`: a 1-byte-per-100-ms drip (4 s for the whole message)
/// is cut at about 2 s with a 4xx or a close; the upstream never gets the
/// final dot and the client never a 250.
#[tokio::test]
async fn smtp_data_drip_is_cut_at_data_total() {
    let b = SmtpBehaviour {
        final_reply: Some(b"250 2.0.0 queued\r\n"),
        ..SmtpBehaviour::default()
    };
    let (up, seen) = scripted(move |p| smtp_server(p, b)).await;
    let gw = start(&smtp_yaml(up, "upstream_reply: 2s, data_total: 2s")).await;
    let mut c = smtp_to_data(gw.addr("s")).await;
    let outcome = drip(&mut c, &drip_body(40)).await;
    let after_body = match outcome {
        None => {
            c.set_timeout(Duration::from_secs(2));
            c.read_line().await.ok()
        }
        Some(_) => None,
    };
    assert!(
        matches!(&outcome, Some((t, r)) if *t < Duration::from_millis(3500)
            && r.as_deref().is_none_or(|r| r.starts_with('4'))),
        "the drip was not cut at data_total (2 s): {outcome:?}; reply after the whole body: {after_body:?}"
    );
    assert!(
        !seen.received("."),
        "the dripped message reached its end upstream"
    );
    gw.stop().await;
}

/// `limits.data_min_rate: 1000` (enforced after a 10 s grace): a drip at
/// 10 bytes/s is cut soon after the grace, never completed.
#[tokio::test]
async fn smtp_data_drip_is_cut_by_data_min_rate() {
    let b = SmtpBehaviour {
        final_reply: Some(b"250 2.0.0 queued\r\n"),
        ..SmtpBehaviour::default()
    };
    let (up, seen) = scripted(move |p| smtp_server(p, b)).await;
    let gw = start(
        &smtp_route(up, "upstream_reply: 2s")
            .limits("data_min_rate: 1000")
            .yaml(),
    )
    .await;
    let mut c = smtp_to_data(gw.addr("s")).await;
    // 140 bytes: 14 s for the whole message.
    let outcome = drip(&mut c, &drip_body(140)).await;
    assert!(
        matches!(&outcome, Some((t, r)) if *t < Duration::from_millis(13_000)
            && r.as_deref().is_none_or(|r| r.starts_with('4'))),
        "the drip was not cut by data_min_rate: {outcome:?}"
    );
    assert!(
        !seen.received("."),
        "the dripped message reached its end upstream"
    );
    gw.stop().await;
}
