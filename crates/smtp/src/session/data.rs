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

use postern_core::limits::DATA_RATE_GRACE;
use postern_core::metrics;
use postern_core::session::{ClientSide, Closed, Route, Session, SessionEnd, SessionStats};
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
    let answer = answer(route, s, slot, outcome, rcpts, ms).await?;
    s.client.write(&answer).await?;
    Ok(())
}

/// Logs how the message went and decides the client's reply (or the end
/// of the session).
async fn answer(
    route: &Route<Smtp>,
    s: &mut Session,
    slot: &mut Slot,
    outcome: Outcome,
    rcpts: u32,
    ms: u64,
) -> Result<Cow<'static, [u8]>, SessionEnd> {
    record(&route.name, &mut s.stats, &outcome);
    Ok(match outcome {
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
    })
}

/// Counts a message that reached the upstream (relayed or lost) or was
/// refused by postern, in the metrics and the session's summary.
fn record(route: &str, stats: &mut SessionStats, outcome: &Outcome) {
    let (result, bytes) = match outcome {
        Outcome::Relayed { reply, bytes } => (format!("{}xx", reply.code() / 100), *bytes),
        Outcome::UpstreamLost { bytes, .. } => ("lost".to_owned(), *bytes),
        Outcome::TooBig { .. } | Outcome::BareLineEnding { .. } => {
            metrics::message(route, "refused");
            return;
        }
        Outcome::ClientGone { .. } => return,
    };
    metrics::message(route, &result);
    metrics::bytes(route, "to_upstream", bytes);
    stats.messages += 1;
    stats.bytes_to_upstream += bytes;
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
    let fill = client.within(limit, |c| c.fill());
    let read = if watch {
        tokio::select! {
            biased;
            r = fill => r,
            e = up.unsolicited("during message data") => return Ok(Err(during_data(e))),
        }
    } else {
        fill.await
    };
    match read {
        Some(Ok(0)) => Err(Closed::ClientGone),
        Some(Ok(_)) => Ok(Ok(())),
        Some(Err(_)) => Err(Closed::ClientFailed),
        None => Err(expired),
    }
}

/// Whether data is arriving slower than the route's minimum average rate
/// (after a grace period).
fn too_slow(min_rate: u64, bytes: u64, elapsed: Duration) -> bool {
    min_rate > 0
        && elapsed >= DATA_RATE_GRACE
        && (bytes as f64) < (min_rate as f64) * elapsed.as_secs_f64()
}

/// One message in flight: the scanner, what is held back, and whether
/// the upstream is still being fed.
struct Relay {
    scan: DataScanner,
    /// Joins the bytes held back from the last chunk to the next one (the
    /// rare chunk that ended inside a line ending or after a line's dot).
    out: Vec<u8>,
    failure: Option<UpstreamError>,
    too_big: bool,
}

/// What one chunk of client data held.
enum Chunk {
    More,
    End,
    BareLineEnding,
}

impl Relay {
    /// Whether the upstream is still being fed (and so watched).
    fn feeding(&self) -> bool {
        self.failure.is_none() && !self.too_big
    }

    /// Scans the client's buffered chunk and forwards what is resolved.
    async fn chunk(&mut self, client: &mut ClientSide, up: &mut Link, max_size: u64) -> Chunk {
        let chunk = client.conn().buffered();
        let held_before = self.scan.held();
        let (take, end) = match self.scan.feed(chunk) {
            Scan::End(n) => (n, true),
            Scan::BareLineEnding(_) => return Chunk::BareLineEnding,
            _ => (chunk.len(), false),
        };
        if self.scan.bytes() > max_size {
            self.too_big = true;
        }
        if self.feeding() {
            // What goes upstream: the bytes held back from the chunk before,
            // then this chunk's, less the ones held back now.
            let send = held_before.len() + take - if end { 0 } else { self.scan.held().len() };
            let bytes = if held_before.is_empty() {
                // The usual case: straight from the client's buffer.
                &chunk[..send]
            } else {
                self.out.clear();
                self.out.extend_from_slice(held_before);
                self.out.extend_from_slice(&chunk[..take]);
                &self.out[..send]
            };
            if send > 0 {
                if let Err(e) = forward(up, bytes, end).await {
                    self.failure = Some(e);
                }
            }
        }
        client.conn().consume(take);
        if end {
            Chunk::End
        } else {
            Chunk::More
        }
    }
}

/// Writes resolved message data upstream. The write that carries the end
/// of data waits for a quiet upstream: anything it said before cannot be
/// the reply to this message. (While postern waits for client data the
/// upstream is watched anyway, so the chunks in between need no check of
/// their own.)
async fn forward(up: &mut Link, bytes: &[u8], end: bool) -> Result<(), UpstreamError> {
    if end {
        up.ensure_quiet("during message data")
            .await
            .map_err(during_data)?;
    }
    up.write_raw(bytes).await
}

/// Unasked bytes while message data flows are a reply before the end of
/// data: named as such in the log.
fn during_data(e: UpstreamError) -> UpstreamError {
    match e {
        UpstreamError::Misbehaved(Misbehaved::Unsolicited(_)) => Misbehaved::ReplyDuringData.into(),
        other => other,
    }
}

async fn relay(
    route: &Route<Smtp>,
    client: &mut ClientSide,
    up: &mut Link,
    max_size: u64,
) -> Outcome {
    let started = Instant::now();
    let mut r = Relay {
        scan: DataScanner::new(),
        out: Vec::new(),
        failure: None,
        too_big: false,
    };
    loop {
        let gone = |why| Outcome::ClientGone {
            why,
            bytes: r.scan.bytes(),
        };
        if client.conn().buffered().is_empty() {
            match client_data(route, client, up, r.feeding(), started).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => r.failure = Some(e),
                Err(why) => return gone(why),
            }
        }
        if too_slow(
            route.limits.data_min_rate,
            r.scan.bytes(),
            started.elapsed(),
        ) {
            return gone(Closed::DataTooSlow);
        }
        match r.chunk(client, up, max_size).await {
            Chunk::More => {}
            Chunk::End => break,
            Chunk::BareLineEnding => {
                return Outcome::BareLineEnding {
                    bytes: r.scan.bytes(),
                }
            }
        }
    }
    let bytes = r.scan.bytes();
    if r.too_big {
        return Outcome::TooBig { bytes };
    }
    if let Some(error) = r.failure {
        return Outcome::UpstreamLost { error, bytes };
    }
    let phase = "the reply to the end of data";
    match up
        .read_reply(ReplyBuilder::new(), phase, route.timeouts.final_reply)
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
