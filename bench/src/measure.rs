//! What one measurement records: the value, the errors, and the CPU each
//! party used meanwhile (the proxy, the load generator, the upstreams),
//! with the upstream handshakes by kind.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

use crate::client::Kind;
use crate::error::BenchError;
use crate::fake::{Handshakes, UpstreamStats};
use crate::procfs;

/// Thread-name prefix of the load generator's runtime.
pub const LOADGEN_THREADS: &str = "bench-load";
/// Thread-name prefix of the fake upstreams' runtime.
pub const UPSTREAM_THREADS: &str = "bench-up";

/// The metrics with a value per target and round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    Sessions1,
    Sessions32,
    Sessions128,
    Retr1,
    Retr4,
    Data,
    Noop64,
}

impl Metric {
    pub const ALL: [Metric; 7] = [
        Metric::Sessions1,
        Metric::Sessions32,
        Metric::Sessions128,
        Metric::Retr1,
        Metric::Retr4,
        Metric::Data,
        Metric::Noop64,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Metric::Sessions1 => "sessions/s, 1 client",
            Metric::Sessions32 => "sessions/s, 32 clients",
            Metric::Sessions128 => "sessions/s, 128 clients",
            Metric::Retr1 => "RETR MiB/s, 1 session",
            Metric::Retr4 => "RETR MiB/s, 4 sessions",
            Metric::Data => "SMTP DATA MiB/s",
            Metric::Noop64 => "NOOP commands/s, 64 sessions",
        }
    }

    /// Concurrent clients or sessions.
    pub fn clients(self) -> usize {
        match self {
            Metric::Sessions1 | Metric::Retr1 | Metric::Data => 1,
            Metric::Sessions32 => 32,
            Metric::Sessions128 => 128,
            Metric::Retr4 => 4,
            Metric::Noop64 => 64,
        }
    }

    /// Whether the value is bytes moved (MiB/s) rather than a rate of
    /// sessions or commands.
    pub fn is_bulk(self) -> bool {
        matches!(self, Metric::Retr1 | Metric::Retr4 | Metric::Data)
    }
}

/// What the `/proc` counters and the upstream said at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot {
    at: Instant,
    proxy: Option<u64>,
    loadgen: u64,
    upstream: u64,
    handshakes: Handshakes,
}

/// The parties' use of the machine over a measured window.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Usage {
    pub wall_s: f64,
    /// The proxy process (postern or stunnel); none for direct.
    pub proxy_cpu_s: Option<f64>,
    pub loadgen_cpu_s: f64,
    pub upstream_cpu_s: f64,
    /// Upstream TLS handshakes completed in the window.
    pub handshakes: Handshakes,
}

impl Usage {
    /// The load generator's CPU as a share of one core.
    pub fn loadgen_cores(&self) -> f64 {
        if self.wall_s > 0.0 {
            self.loadgen_cpu_s / self.wall_s
        } else {
            0.0
        }
    }
}

/// Reads the counters for one target.
#[derive(Debug, Clone)]
pub struct Probe {
    pub pid: Option<u32>,
    pub upstream: Arc<UpstreamStats>,
    pub ticks_per_second: f64,
}

impl Probe {
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            at: Instant::now(),
            proxy: self.pid.and_then(procfs::process_ticks),
            loadgen: procfs::own_thread_ticks(LOADGEN_THREADS),
            upstream: procfs::own_thread_ticks(UPSTREAM_THREADS),
            handshakes: self.upstream.handshakes(),
        }
    }

    pub fn usage(&self, a: &Snapshot, b: &Snapshot) -> Usage {
        let s = |t: u64| t as f64 / self.ticks_per_second;
        Usage {
            wall_s: b.at.duration_since(a.at).as_secs_f64(),
            proxy_cpu_s: match (a.proxy, b.proxy) {
                (Some(x), Some(y)) => Some(s(y.saturating_sub(x))),
                _ => None,
            },
            loadgen_cpu_s: s(b.loadgen.saturating_sub(a.loadgen)),
            upstream_cpu_s: s(b.upstream.saturating_sub(a.upstream)),
            handshakes: b.handshakes.since(a.handshakes),
        }
    }
}

/// Errors of concurrent clients: how many, and the first one in words.
#[derive(Debug, Default)]
pub struct Errors {
    count: AtomicU64,
    first: Mutex<Option<String>>,
}

impl Errors {
    pub fn record(&self, e: &BenchError) {
        self.count.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut first) = self.first.lock() {
            first.get_or_insert_with(|| e.to_string());
        }
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn first(&self) -> Option<String> {
        self.first.lock().ok().and_then(|f| f.clone())
    }
}

/// One target's value for one metric in one round.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub metric: Metric,
    pub target: Kind,
    pub round: usize,
    /// Sessions/s, MiB/s or commands/s; `None` if nothing completed.
    pub value: Option<f64>,
    /// Sessions, bytes or commands completed in the measured window.
    pub count: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub usage: Usage,
}

impl Sample {
    pub fn new(
        metric: Metric,
        target: Kind,
        round: usize,
        count: u64,
        usage: Usage,
        errors: &Errors,
    ) -> Self {
        let value = if count == 0 || usage.wall_s <= 0.0 {
            None
        } else if metric.is_bulk() {
            Some(count as f64 / MIB / usage.wall_s)
        } else {
            Some(count as f64 / usage.wall_s)
        };
        Sample {
            metric,
            target,
            round,
            value,
            count,
            errors: errors.count(),
            first_error: errors.first(),
            usage,
        }
    }

    /// Proxy CPU seconds per GiB moved (bulk metrics).
    pub fn cpu_per_gib(&self) -> Option<f64> {
        let cpu = self.usage.proxy_cpu_s?;
        (self.metric.is_bulk() && self.count > 0).then(|| cpu / (self.count as f64 / GIB))
    }

    /// Proxy CPU milliseconds per session (session metrics).
    pub fn cpu_ms_per_session(&self) -> Option<f64> {
        let cpu = self.usage.proxy_cpu_s?;
        let sessions = matches!(
            self.metric,
            Metric::Sessions1 | Metric::Sessions32 | Metric::Sessions128
        );
        (sessions && self.count > 0).then(|| cpu * 1000.0 / self.count as f64)
    }
}

pub const MIB: f64 = 1024.0 * 1024.0;
pub const GIB: f64 = 1024.0 * MIB;
