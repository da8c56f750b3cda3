//! How big and how long: the full run and `--quick`.

use std::time::Duration;

use serde::{Serialize, Serializer};

fn secs<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// Sizes, counts and durations of one benchmark run.
#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    pub name: &'static str,
    pub rounds: usize,
    /// Load runs this long before a rate is measured...
    #[serde(serialize_with = "secs")]
    pub warmup: Duration,
    /// ...and is then measured over this window; transfers repeat until
    /// they have run this long.
    #[serde(serialize_with = "secs")]
    pub window: Duration,
    /// The POP3 message (RETR) and the SMTP message (DATA), in bytes.
    pub message_bytes: usize,
    /// Idle logged-in sessions held at each step of the memory phase.
    pub idle_steps: Vec<usize>,
    /// RSS is read this long after the burst of sessions ended.
    #[serde(serialize_with = "secs")]
    pub burst_wait: Duration,
    /// The slow reader reads slowly for this long.
    #[serde(serialize_with = "secs")]
    pub slow_window: Duration,
    /// The slow reader's pace: this many bytes...
    pub slow_chunk: usize,
    /// ...every this long.
    #[serde(serialize_with = "secs")]
    pub slow_pause: Duration,
    /// Settling time before RSS is read.
    #[serde(serialize_with = "secs")]
    pub settle: Duration,
    /// Deadline of each step of a session (connect, one reply).
    #[serde(serialize_with = "secs")]
    pub step: Duration,
    /// Deadline of one whole transfer (RETR or DATA).
    #[serde(serialize_with = "secs")]
    pub transfer: Duration,
    /// Deadline of the whole run.
    #[serde(serialize_with = "secs")]
    pub total: Duration,
}

impl Profile {
    /// The measurement: about 10 minutes on 2 cores.
    pub fn full() -> Self {
        Profile {
            name: "full",
            rounds: 3,
            warmup: Duration::from_secs(1),
            window: Duration::from_secs(4),
            message_bytes: 256 << 20,
            idle_steps: vec![1000, 4000, 8000],
            burst_wait: Duration::from_secs(30),
            slow_window: Duration::from_secs(5),
            slow_chunk: 16 * 1024,
            slow_pause: Duration::from_millis(10),
            settle: Duration::from_secs(1),
            step: Duration::from_secs(30),
            transfer: Duration::from_secs(180),
            total: Duration::from_secs(25 * 60),
        }
    }

    /// Validation: every phase, small, two rounds; 1 to 2 minutes.
    pub fn quick() -> Self {
        Profile {
            name: "quick",
            rounds: 2,
            warmup: Duration::from_millis(300),
            window: Duration::from_secs(1),
            message_bytes: 16 << 20,
            idle_steps: vec![250, 500, 1000],
            burst_wait: Duration::from_secs(5),
            slow_window: Duration::from_secs(1),
            slow_chunk: 16 * 1024,
            slow_pause: Duration::from_millis(10),
            settle: Duration::from_millis(500),
            step: Duration::from_secs(15),
            transfer: Duration::from_secs(60),
            total: Duration::from_secs(6 * 60),
        }
    }

    /// Open files this process needs: a client socket and an upstream
    /// socket per idle session, and room for the few others (the proxies
    /// need as many: each holds a client and an upstream socket).
    pub fn open_files_needed(&self) -> u64 {
        let most = self.idle_steps.iter().copied().max().unwrap_or(0) as u64;
        2 * most + 1024
    }
}
