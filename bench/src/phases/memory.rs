//! Memory: the proxy's RSS per idle logged-in session (delta over its
//! baseline, divided by the sessions) at each step, then a burst's end:
//! every session QUITs and the RSS is read again after a wait.

use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::task::JoinSet;

use super::script;
use crate::client::{Conn, Endpoint, Kind, LINE_BUFFER};
use crate::measure::Errors;
use crate::procfs;
use crate::profile::Profile;

/// Logins in flight at once while sessions are opened: enough to open
/// thousands in seconds, few enough not to overflow an accept queue.
const OPEN_WIDTH: usize = 64;
/// Tasks that QUIT the sessions at the end of the burst.
const CLOSE_TASKS: usize = 64;

#[derive(Debug, Clone, Serialize)]
pub struct MemoryStep {
    /// Idle logged-in sessions held.
    pub sessions: usize,
    pub rss_kib: u64,
    /// (RSS - baseline) / sessions.
    pub per_session_kib: f64,
    /// The proxy's open file descriptors (two sockets per session).
    pub fds: Option<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemorySample {
    pub target: Kind,
    pub round: usize,
    /// RSS before the first session of the burst.
    pub baseline_kib: u64,
    pub steps: Vec<MemoryStep>,
    /// RSS right after the sessions ended (plus the settling time).
    pub closed_kib: u64,
    /// RSS `wait_s` after the sessions ended.
    pub after_wait_kib: Option<u64>,
    /// The proxy's open file descriptors then: back to a handful shows
    /// every session really ended.
    pub after_wait_fds: Option<usize>,
    pub wait_s: f64,
    pub errors: u64,
    pub first_error: Option<String>,
    #[serde(skip)]
    pub closed_at: Option<Instant>,
    #[serde(skip)]
    pub pid: u32,
}

impl MemorySample {
    /// RSS after the wait relative to the baseline (1.0 = back to it).
    pub fn after_vs_before(&self) -> Option<f64> {
        let after = self.after_wait_kib? as f64;
        (self.baseline_kib > 0).then(|| after / self.baseline_kib as f64)
    }

    /// Reads the RSS once `wait` has passed since the sessions ended.
    pub async fn finish(&mut self, wait: Duration) {
        if let Some(at) = self.closed_at {
            tokio::time::sleep_until((at + wait).into()).await;
            self.after_wait_kib = procfs::rss_kib(self.pid);
            self.after_wait_fds = procfs::open_fds(self.pid);
            self.wait_s = at.elapsed().as_secs_f64();
        }
    }
}

/// Opens the profile's steps of idle logged-in sessions through `ep`
/// (proxy `pid`), reading the RSS at each, then ends them all with QUIT.
/// [`MemorySample::finish`] reads the RSS after the wait.
pub async fn burst(ep: &Endpoint, pid: u32, p: &Profile, round: usize) -> MemorySample {
    let rss = || procfs::rss_kib(pid).unwrap_or(0);
    let errors = Errors::default();
    tokio::time::sleep(p.settle).await;
    let baseline = rss();
    let mut conns: Vec<Conn> = Vec::new();
    let mut steps = Vec::new();
    for &goal in &p.idle_steps {
        let need = goal.saturating_sub(conns.len());
        let limit = p.step * 4 + Duration::from_millis(20 * need as u64);
        let opened = tokio::time::timeout(
            limit,
            super::bounded(need, OPEN_WIDTH, |_| {
                let ep = ep.clone();
                async move { script::pop3_login(&ep, LINE_BUFFER).await }
            }),
        )
        .await;
        match opened {
            Ok(results) => {
                for r in results {
                    match r {
                        Ok(c) => conns.push(c),
                        Err(e) => errors.record(&e),
                    }
                }
            }
            Err(_) => errors.record(&crate::error::BenchError::Timeout("opening idle sessions")),
        }
        tokio::time::sleep(p.settle).await;
        let now = rss();
        let fds = procfs::open_fds(pid);
        // Each idle session holds a client and an upstream socket in the
        // proxy: fewer descriptors means the RSS read is some other
        // process's (a wrapper script given as --postern), not a result.
        if fds.is_some_and(|n| n < 2 * conns.len()) {
            errors.record(&crate::error::BenchError::Setup(format!(
                "process {pid} has {} open files for {} sessions: it is not the proxy \
                 (is --postern a wrapper? give the binary itself)",
                fds.unwrap_or(0),
                conns.len()
            )));
        }
        steps.push(MemoryStep {
            sessions: conns.len(),
            rss_kib: now,
            per_session_kib: now.saturating_sub(baseline) as f64 / conns.len().max(1) as f64,
            fds,
        });
    }
    close_all(conns).await;
    let closed_at = Instant::now();
    tokio::time::sleep(p.settle).await;
    MemorySample {
        target: ep.kind,
        round,
        baseline_kib: baseline,
        steps,
        closed_kib: rss(),
        after_wait_kib: None,
        after_wait_fds: None,
        wait_s: 0.0,
        errors: errors.count(),
        first_error: errors.first(),
        closed_at: Some(closed_at),
        pid,
    }
}

/// Every session says QUIT and reads the goodbye (bounded), then closes.
async fn close_all(conns: Vec<Conn>) {
    let mut groups: Vec<Vec<Conn>> = (0..CLOSE_TASKS).map(|_| Vec::new()).collect();
    for (i, c) in conns.into_iter().enumerate() {
        groups[i % CLOSE_TASKS].push(c);
    }
    let mut set = JoinSet::new();
    for group in groups {
        set.spawn(async move {
            for mut c in group {
                let _ =
                    tokio::time::timeout(Duration::from_secs(5), c.pop3("QUIT", b"QUIT\r\n")).await;
            }
        });
    }
    let _ = tokio::time::timeout(Duration::from_secs(120), async {
        while set.join_next().await.is_some() {}
    })
    .await;
}
