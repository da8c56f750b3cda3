//! Stamps that do not repeat within a process or across runs: the process
//! id, a counter and the wall clock. Used for CA names and SASL/APOP
//! challenges.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub(crate) struct Stamp {
    pub(crate) pid: u32,
    /// Counts up from 0 per process.
    pub(crate) n: u64,
    /// Nanoseconds since the Unix epoch (0 if the clock is before it).
    pub(crate) nanos: u128,
}

pub(crate) fn stamp() -> Stamp {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    Stamp {
        pid: std::process::id(),
        n,
        nanos,
    }
}
