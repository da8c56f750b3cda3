//! One message's data, streamed from the client to the upstream.
//!
//! Every chunk is scanned before a byte of it is sent; bytes whose meaning
//! depends on what follows (a trailing CR, a `.` at line start) are held
//! back until resolved. The terminator is sent only when the client sent
//! it. The upstream is watched the whole time: anything it says before the
//! end of data is a protocol error, so its final reply is always its
//! answer to this end of data. The data has a total deadline and a
//! minimum average rate, so a drip cannot hold the session for hours.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use postern_core::io::READ_BUFFER;
use postern_core::limits::DATA_RATE_GRACE;
use postern_core::session::{ClientSide, Closed, Route, Session, SessionEnd};
use postern_core::upstream::{Link, Misbehaved, UpstreamError};

use super::upstream::Slot;
use super::{Smtp, UPSTREAM_LOST};
use crate::proto::client::ClientSession;
use crate::proto::data::{DataScanner, Scan};
use crate::proto::reply::{Reply, ReplyBuilder};

const TOO_BIG_CLOSED: &[u8] =
    b"421 4.3.4 postern: the mail server connection was closed to refuse the oversized message; reconnect to send more\r\n";
const NOT_ACCEPTED: &[u8] =
    b"451 4.4.2 postern: the connection to the mail server was lost; the message was not accepted, try again\r\n";

/// How one message's data went.
#[derive(Debug)]
enum Outcome {
    /// The upstream gave its final reply.
    Relayed { reply: Reply, bytes: u64 },
    /// The upstream failed or misbehaved; the client's data was read to its end.
    UpstreamLost { error: UpstreamError, bytes: u64 },
    /// Over the SIZE limit; the client's data was read to its end.
    TooBig { bytes: u64 },
    /// A bare CR or LF: the data cannot be framed safely.
    BareLineEnding { bytes: u64 },
    /// The client went away, stalled or dripped before the end of data.
    ClientGone { why: Closed, bytes: u64 },
}

/// Relays the upstream's 354, the message, and the final reply.
pub(super) async fn message(
    route: &Route<Smtp>,
    s: &mut Session,
    session: &mut ClientSession,
    slot: &mut Slot,
    go_ahead: &[u8],
) -> Result<(), SessionEnd> {
    let Some(link) = slot.link() else {
        let _ = s.client.write(UPSTREAM_LOST).await;
        return Err(Closed::UpstreamLostEarlier.into());
    };
    s.client.write(go_ahead).await?;
    let started = Instant::now();
    let rcpts = session.accepted_rcpts();
    let outcome = relay(route, &mut s.client, link, session.max_size()).await;
    session.on_message_done();
    let ms = started.elapsed().as_millis() as u64;
    let answer: Cow<'static, [u8]> = match outcome {
        Outcome::Relayed { reply, bytes } => {
            tracing::info!(rcpts, bytes, code = reply.code(), ms, "message relayed");
            Cow::Owned(reply.sanitized())
        }
        Outcome::UpstreamLost { error, bytes } => {
            tracing::warn!(rcpts, bytes, ms, cause = %error, upstream = %route.address, "message NOT delivered: upstream lost during DATA");
            slot.lose(UPSTREAM_LOST);
            Cow::Borrowed(NOT_ACCEPTED)
        }
        Outcome::TooBig { bytes } => {
            tracing::warn!(
                rcpts,
                bytes,
                ms,
                "message refused: larger than the SIZE limit"
            );
            // The only way to abandon DATA upstream is to drop the
            // connection; the next command is told.
            slot.lose(TOO_BIG_CLOSED);
            Cow::Borrowed(b"552 5.3.4 Message size exceeds fixed maximum message size\r\n")
        }
        Outcome::BareLineEnding { bytes } => {
            tracing::warn!(
                rcpts,
                bytes,
                ms,
                "message refused: bare CR or LF in the data; upstream dropped without end of data"
            );
            let _ = s
                .client
                .write(b"521 5.5.2 postern: bare CR or LF in the message data; message refused, closing\r\n")
                .await;
            return Err(Closed::BareLineEnding.into());
        }
        Outcome::ClientGone { why, bytes } => {
            tracing::warn!(rcpts, bytes, ms, why = %why, "client left or stalled during DATA; upstream dropped without end of data");
            if matches!(why, Closed::DataTooSlow | Closed::DataTimeout) {
                let _ = s
                    .client
                    .write(b"421 4.4.2 postern: message data too slow; the message was not sent, closing\r\n")
                    .await;
            }
            return Err(why.into());
        }
    };
    s.client.write(&answer).await?;
    Ok(())
}

/// Waits for the client's next data, under the block deadline, the total
/// deadline and the minimum rate, watching the upstream meanwhile (when
/// `watch` is set). `Ok(Err(..))`: the upstream spoke or failed.
async fn client_data(
    route: &Route<Smtp>,
    client: &mut ClientSide,
    up: &mut Link,
    watch: bool,
    started: Instant,
) -> Result<Result<(), UpstreamError>, Closed> {
    let t = &route.timeouts;
    let left = t.data_total.saturating_sub(started.elapsed());
    let (limit, expired) = if left < t.data_block {
        (left, Closed::DataTooSlow)
    } else {
        (t.data_block, Closed::DataTimeout)
    };
    let fill = tokio::time::timeout(limit, client.conn().fill());
    let read = if watch {
        tokio::select! {
            biased;
            r = fill => r,
            e = up.unsolicited("during message data") => return Ok(Err(match e {
                UpstreamError::Misbehaved(Misbehaved::Unsolicited(_)) => Misbehaved::ReplyDuringData.into(),
                other => other,
            })),
        }
    } else {
        fill.await
    };
    match read {
        Ok(Ok(0)) => Err(Closed::ClientGone),
        Ok(Ok(_)) => Ok(Ok(())),
        Ok(Err(_)) => Err(Closed::ClientFailed),
        Err(_) => Err(expired),
    }
}

/// Whether data is arriving slower than the route's minimum average rate
/// (after a grace period).
fn too_slow(min_rate: u64, bytes: u64, elapsed: Duration) -> bool {
    min_rate > 0
        && elapsed >= DATA_RATE_GRACE
        && (bytes as f64) < (min_rate as f64) * elapsed.as_secs_f64()
}

async fn relay(
    route: &Route<Smtp>,
    client: &mut ClientSide,
    up: &mut Link,
    max_size: u64,
) -> Outcome {
    let started = Instant::now();
    let mut scan = DataScanner::new();
    let mut out: Vec<u8> = Vec::with_capacity(READ_BUFFER + 2);
    let mut failure: Option<UpstreamError> = None;
    let mut too_big = false;
    loop {
        if client.conn().buffered().is_empty() {
            let watch = failure.is_none() && !too_big;
            match client_data(route, client, up, watch, started).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failure = Some(e),
                Err(why) => {
                    return Outcome::ClientGone {
                        why,
                        bytes: scan.bytes(),
                    }
                }
            }
        }
        if too_slow(route.limits.data_min_rate, scan.bytes(), started.elapsed()) {
            return Outcome::ClientGone {
                why: Closed::DataTooSlow,
                bytes: scan.bytes(),
            };
        }
        let chunk = client.conn().buffered();
        let held_before = scan.held();
        let (take, end) = match scan.feed(chunk) {
            Scan::End(n) => (n, true),
            Scan::BareLineEnding(_) => {
                return Outcome::BareLineEnding {
                    bytes: scan.bytes(),
                }
            }
            _ => (chunk.len(), false),
        };
        if scan.bytes() > max_size {
            too_big = true;
        }
        if failure.is_none() && !too_big {
            out.clear();
            out.extend_from_slice(held_before);
            out.extend_from_slice(&chunk[..take]);
            let send = if end {
                out.len()
            } else {
                out.len() - scan.held().len()
            };
            if send > 0 {
                // Anything the upstream said so far came before the end of
                // data: it cannot be the reply to it.
                let sent = match up.ensure_quiet("during message data").await {
                    Err(UpstreamError::Misbehaved(Misbehaved::Unsolicited(_))) => {
                        Err(Misbehaved::ReplyDuringData.into())
                    }
                    Err(e) => Err(e),
                    Ok(()) => up.write_raw(&out[..send]).await,
                };
                if let Err(e) = sent {
                    failure = Some(e);
                }
            }
        }
        client.conn().consume(take);
        if end {
            break;
        }
    }
    let bytes = scan.bytes();
    if too_big {
        return Outcome::TooBig { bytes };
    }
    if let Some(error) = failure {
        return Outcome::UpstreamLost { error, bytes };
    }
    match up
        .read_reply(
            ReplyBuilder::new(),
            "the reply to the end of data",
            route.timeouts.final_reply,
        )
        .await
    {
        Ok(reply) => Outcome::Relayed { reply, bytes },
        Err(error) => Outcome::UpstreamLost { error, bytes },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_enforced_only_after_the_grace_period() {
        let early = DATA_RATE_GRACE - Duration::from_millis(1);
        assert!(!too_slow(1024, 0, early));
        assert!(too_slow(1024, 10, DATA_RATE_GRACE));
        assert!(!too_slow(1024, 1024 * 20, DATA_RATE_GRACE));
        assert!(!too_slow(0, 0, Duration::from_secs(3600)), "0 disables");
    }
}
