//! Bulk transfers: RETR of the message on 1 or 4 sessions at once, SMTP
//! DATA of a message as large, and the slow reader. Every transfer is
//! checked byte for byte in length (the fake's STAT and its reply to the
//! end of data say how much it sent or received).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::script;
use crate::client::{Conn, Endpoint, Kind, BULK_BUFFER};
use crate::error::{BenchError, Result};
use crate::measure::{Errors, Metric, Probe, Sample};
use crate::procfs;
use crate::profile::Profile;
use crate::wire::EndFinder;

/// Transfers one session repeats, at most: the window bounds the time,
/// this the count.
const MAX_REPEATS: u32 = 64;

/// RETR of the `len`-byte message on `metric.clients()` sessions at once,
/// each repeating it until the window has passed; timed from the first
/// RETR sent to the last message's terminator read.
pub async fn retr(
    ep: &Endpoint,
    metric: Metric,
    len: usize,
    p: &Profile,
    probe: &Probe,
    round: usize,
) -> Sample {
    let errors = Errors::default();
    let mut conns = Vec::new();
    for r in super::bounded(metric.clients(), 4, |_| {
        let ep = ep.clone();
        async move { script::pop3_mailbox(&ep, BULK_BUFFER, len).await }
    })
    .await
    {
        match r {
            Ok(c) => conns.push(c),
            Err(e) => errors.record(&e),
        }
    }
    let a = probe.snapshot();
    let started = Instant::now();
    let (window, limit) = (p.window, p.transfer);
    let mut set = tokio::task::JoinSet::new();
    for mut c in conns {
        set.spawn(async move {
            let mut bytes = 0u64;
            for _ in 0..MAX_REPEATS {
                match retr_one(&mut c, len, limit).await {
                    Ok(n) => bytes += n,
                    Err(e) => return (c, bytes, Some(e)),
                }
                if started.elapsed() >= window {
                    break;
                }
            }
            (c, bytes, None)
        });
    }
    let mut bytes = 0u64;
    let mut done = Vec::new();
    while let Some(joined) = set.join_next().await {
        if let Ok((c, n, e)) = joined {
            bytes += n;
            if let Some(e) = e {
                errors.record(&e);
            }
            done.push(c);
        }
    }
    let b = probe.snapshot();
    for mut c in done {
        let _ = tokio::time::timeout(Duration::from_secs(2), c.send("QUIT", b"QUIT\r\n")).await;
    }
    Sample::new(metric, ep.kind, round, bytes, probe.usage(&a, &b), &errors)
}

async fn retr_one(c: &mut Conn, len: usize, limit: Duration) -> Result<u64> {
    c.send("RETR", b"RETR 1\r\n").await?;
    c.pop3_ok("RETR").await?;
    let n = c.body("RETR body", limit).await?;
    if n != len as u64 {
        return Err(BenchError::reply(
            "RETR length",
            format!("{n} bytes, not {len}").as_bytes(),
        ));
    }
    Ok(n)
}

/// SMTP DATA of `body` on one session, one transaction after another
/// until the window has passed; timed from the first byte of data sent
/// to the upstream's (relayed) reply to the last end of data.
pub async fn data(
    ep: &Endpoint,
    body: &Arc<[u8]>,
    p: &Profile,
    probe: &Probe,
    round: usize,
) -> Sample {
    let errors = Errors::default();
    let (bytes, usage) = match script::smtp_to_data(ep, BULK_BUFFER).await {
        Err(e) => {
            errors.record(&e);
            (0, Default::default())
        }
        Ok(mut c) => {
            let a = probe.snapshot();
            let started = Instant::now();
            let mut bytes = 0u64;
            for i in 0..MAX_REPEATS {
                let sent = async {
                    if i > 0 {
                        script::smtp_transaction(&mut c).await?;
                    }
                    data_one(&mut c, body, p.transfer).await
                };
                match sent.await {
                    Ok(n) => bytes += n,
                    Err(e) => {
                        errors.record(&e);
                        break;
                    }
                }
                if started.elapsed() >= p.window {
                    break;
                }
            }
            let b = probe.snapshot();
            let _ = c.send("QUIT", b"QUIT\r\n").await;
            (bytes, probe.usage(&a, &b))
        }
    };
    Sample::new(Metric::Data, ep.kind, round, bytes, usage, &errors)
}

async fn data_one(c: &mut Conn, body: &[u8], limit: Duration) -> Result<u64> {
    let started = Instant::now();
    c.send_bulk("DATA body", body, limit).await?;
    c.send("end of data", b".\r\n").await?;
    let left = limit.saturating_sub(started.elapsed());
    let reply = match tokio::time::timeout(left, c.smtp("end of data", b"250")).await {
        Ok(r) => r?,
        Err(_) => return Err(BenchError::Timeout("end of data")),
    };
    match script::received_octets(&reply) {
        Some(n) if n == body.len() as u64 => Ok(n),
        _ => Err(BenchError::reply("end of data (octet count)", &reply)),
    }
}

/// The proxy's RSS while a client reads a large RETR slowly.
#[derive(Debug, Clone, Serialize)]
pub struct SlowSample {
    pub target: Kind,
    pub round: usize,
    pub before_kib: u64,
    pub max_kib: u64,
    /// The most RSS grew over `before` while the client read slowly.
    pub growth_kib: u64,
    pub slow_s: f64,
    pub slow_bytes: u64,
    pub message_ok: bool,
    pub first_error: Option<String>,
}

/// One session RETRs the message and reads it at `slow_chunk` per
/// `slow_pause` for `slow_window`, while the proxy's RSS is sampled every
/// 100 ms; then it reads the rest at full speed and checks the length.
pub async fn slow_reader(
    ep: &Endpoint,
    pid: u32,
    len: usize,
    p: &Profile,
    round: usize,
) -> SlowSample {
    let mut s = SlowSample {
        target: ep.kind,
        round,
        before_kib: 0,
        max_kib: 0,
        growth_kib: 0,
        slow_s: 0.0,
        slow_bytes: 0,
        message_ok: false,
        first_error: None,
    };
    if let Err(e) = read_slowly(ep, pid, len, p, &mut s).await {
        s.first_error = Some(e.to_string());
    }
    s.growth_kib = s.max_kib.saturating_sub(s.before_kib);
    s
}

async fn read_slowly(
    ep: &Endpoint,
    pid: u32,
    len: usize,
    p: &Profile,
    s: &mut SlowSample,
) -> Result<()> {
    let rss = || procfs::rss_kib(pid).unwrap_or(0);
    let mut c = script::pop3_mailbox(ep, BULK_BUFFER, len).await?;
    tokio::time::sleep(p.settle).await;
    s.before_kib = rss();
    s.max_kib = s.before_kib;
    c.send("RETR", b"RETR 1\r\n").await?;
    c.pop3_ok("RETR").await?;
    let mut end = EndFinder::default();
    let (started, mut sampled) = (Instant::now(), Instant::now());
    let mut finished = false;
    while started.elapsed() < p.slow_window && !finished {
        let (n, done) = c.body_some("slow RETR", &mut end, p.slow_chunk).await?;
        s.slow_bytes += n as u64;
        finished = done;
        tokio::time::sleep(p.slow_pause).await;
        if sampled.elapsed() >= Duration::from_millis(100) {
            s.max_kib = s.max_kib.max(rss());
            sampled = Instant::now();
        }
    }
    s.slow_s = started.elapsed().as_secs_f64();
    s.max_kib = s.max_kib.max(rss());
    let rest = if finished {
        0
    } else {
        c.body_rest("RETR rest", &mut end, p.transfer).await?
    };
    let total = s.slow_bytes + rest;
    if total != len as u64 + 3 {
        return Err(BenchError::reply(
            "slow RETR length",
            format!("{total} bytes").as_bytes(),
        ));
    }
    s.message_ok = true;
    let _ = c.send("QUIT", b"QUIT\r\n").await;
    Ok(())
}
