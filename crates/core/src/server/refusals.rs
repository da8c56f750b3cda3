//! Refused connections, logged without letting a flood become a log flood.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long refusals of one kind on a listener are counted before one line
/// reports them (the first of a quiet period is logged at once).
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Why a listener turned a connection away before any session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// The client address is not in the route's allow list.
    NotAllowed,
    /// A session limit (route, per client or gateway-wide) was reached.
    OverLimit,
    /// A PROXY protocol listener got no valid header.
    NoProxyHeader,
}

impl RefusalKind {
    const ALL: [RefusalKind; 3] = [Self::NotAllowed, Self::OverLimit, Self::NoProxyHeader];

    /// The reason, as logged.
    pub fn reason(self) -> &'static str {
        match self {
            Self::NotAllowed => "address not in the route's allow list",
            Self::OverLimit => "too many sessions",
            Self::NoProxyHeader => "no valid PROXY protocol header",
        }
    }

    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Self::NotAllowed => "allow_list",
            Self::OverLimit => "session_limit",
            Self::NoProxyHeader => "no_proxy_header",
        }
    }

    fn index(self) -> usize {
        match self {
            Self::NotAllowed => 0,
            Self::OverLimit => 1,
            Self::NoProxyHeader => 2,
        }
    }
}

/// Refusals of one kind that were counted instead of logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefusalSummary {
    /// Why they were refused.
    pub kind: RefusalKind,
    /// How many were counted.
    pub count: u64,
    /// The time they were counted over.
    pub period: Duration,
}

impl std::fmt::Display for RefusalSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} connection{} refused in the last {}s: {}",
            self.count,
            if self.count == 1 { "" } else { "s" },
            // Whole seconds; a drain at shutdown may cover less than one.
            self.period.as_secs().max(1),
            self.kind.reason()
        )
    }
}

/// Keeps a connection flood from turning into a log flood: per listener
/// and kind of refusal, the first refusal after a quiet interval is logged
/// on its own (with the client), later ones are counted and reported as one
/// line per interval. No clock of its own: callers pass `now`.
#[derive(Debug, Clone)]
pub struct RefusalLog {
    interval: Duration,
    /// Per kind: when the current interval started, and how many refusals
    /// in it were not logged.
    windows: [Option<(Instant, u64)>; 3],
}

impl RefusalLog {
    /// Counts over `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            windows: [None; 3],
        }
    }

    /// Records a refusal; true if it should be logged on its own.
    pub fn record(&mut self, kind: RefusalKind, now: Instant) -> bool {
        let interval = self.interval;
        let window = &mut self.windows[kind.index()];
        match window {
            Some((started, counted)) if *counted > 0 || now < *started + interval => {
                // A summary still to come covers this one.
                *counted += 1;
                false
            }
            _ => {
                *window = Some((now, 0));
                true
            }
        }
    }

    /// Ends every interval that is over by `now`: one summary per kind with
    /// refusals counted in it. A kind with a summary keeps counting (the
    /// flood goes on); a kind without one logs its next refusal at once.
    pub fn flush(&mut self, now: Instant) -> Vec<RefusalSummary> {
        self.take(now, false)
    }

    /// Every count still held, interval over or not (shutdown).
    pub fn drain(&mut self, now: Instant) -> Vec<RefusalSummary> {
        self.take(now, true)
    }

    fn take(&mut self, now: Instant, all: bool) -> Vec<RefusalSummary> {
        let mut out = Vec::new();
        for kind in RefusalKind::ALL {
            let window = &mut self.windows[kind.index()];
            let Some((started, count)) = *window else {
                continue;
            };
            if !all && now < started + self.interval {
                continue;
            }
            if count == 0 {
                *window = None;
                continue;
            }
            out.push(RefusalSummary {
                kind,
                count,
                period: now.saturating_duration_since(started),
            });
            *window = if all { None } else { Some((now, 0)) };
        }
        out
    }
}

/// A listener's [`RefusalLog`], shared by its connection tasks.
#[derive(Debug)]
pub(super) struct Refusals {
    pub(super) route: Arc<str>,
    pub(super) log: std::sync::Mutex<RefusalLog>,
}

impl Refusals {
    /// Logs a refusal now, or counts it for the next summary.
    pub(super) fn refused(
        &self,
        kind: RefusalKind,
        client: SocketAddr,
        detail: Option<&dyn std::fmt::Display>,
    ) {
        crate::metrics::refused(&self.route, kind.label());
        // A poisoned lock loses the aggregation, never the log line.
        let now = Instant::now();
        let alone = self.log.lock().map_or(true, |mut l| l.record(kind, now));
        if !alone {
            return;
        }
        let route = &self.route;
        match detail {
            Some(e) => {
                tracing::warn!(route = %route, client = %client, error = %e, "refused: {}", kind.reason())
            }
            None => tracing::warn!(route = %route, client = %client, "refused: {}", kind.reason()),
        }
    }

    /// Logs the summaries of intervals that are over (all of them on `drain`).
    pub(super) fn report(&self, drain: bool) {
        let now = Instant::now();
        let summaries = match self.log.lock() {
            Ok(mut l) if drain => l.drain(now),
            Ok(mut l) => l.flush(now),
            Err(_) => return,
        };
        for s in summaries {
            tracing::warn!(route = %self.route, refused = s.count, reason = s.kind.reason(), "{s}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEN: Duration = Duration::from_secs(10);

    fn secs(t0: Instant, s: u64) -> Instant {
        t0 + Duration::from_secs(s)
    }

    #[test]
    fn the_first_refusal_is_logged_and_a_flood_becomes_one_line_per_interval() {
        let t0 = Instant::now();
        let mut log = RefusalLog::new(TEN);
        assert!(
            log.record(RefusalKind::NotAllowed, t0),
            "the first is logged"
        );
        // A flood: 1,000 refusals in the first 9 seconds, none logged alone.
        for i in 0..1000 {
            let at = t0 + Duration::from_millis(9 * i);
            assert!(!log.record(RefusalKind::NotAllowed, at), "refusal {i}");
        }
        assert_eq!(log.flush(secs(t0, 9)), Vec::new(), "interval not over");
        let s = log.flush(secs(t0, 10));
        assert_eq!(
            s,
            vec![RefusalSummary {
                kind: RefusalKind::NotAllowed,
                count: 1000,
                period: TEN
            }]
        );
        assert_eq!(
            s[0].to_string(),
            "1000 connections refused in the last 10s: address not in the route's allow list"
        );
        // The flood goes on: still counted, reported an interval later.
        assert!(!log.record(RefusalKind::NotAllowed, secs(t0, 12)));
        assert!(!log.record(RefusalKind::NotAllowed, secs(t0, 13)));
        assert_eq!(log.flush(secs(t0, 15)), Vec::new());
        let s = log.flush(secs(t0, 20));
        assert_eq!((s.len(), s[0].count), (1, 2), "{s:?}");
        // A quiet interval: nothing to report, and the next one is logged.
        assert_eq!(log.flush(secs(t0, 30)), Vec::new());
        assert!(log.record(RefusalKind::NotAllowed, secs(t0, 31)));
    }

    #[test]
    fn a_lone_refusal_leaves_no_summary_and_the_next_quiet_one_is_logged() {
        let t0 = Instant::now();
        let mut log = RefusalLog::new(TEN);
        assert!(log.record(RefusalKind::OverLimit, t0));
        assert_eq!(log.flush(secs(t0, 10)), Vec::new());
        assert!(log.record(RefusalKind::OverLimit, secs(t0, 11)));
        // Even with no flush in between, a refusal after a quiet interval is logged.
        assert!(log.record(RefusalKind::OverLimit, secs(t0, 40)));
    }

    #[test]
    fn kinds_are_counted_apart() {
        let t0 = Instant::now();
        let mut log = RefusalLog::new(TEN);
        assert!(log.record(RefusalKind::NotAllowed, t0));
        assert!(!log.record(RefusalKind::NotAllowed, secs(t0, 1)));
        // A flood of one kind does not hide the first of another.
        assert!(log.record(RefusalKind::OverLimit, secs(t0, 2)));
        assert!(log.record(RefusalKind::NoProxyHeader, secs(t0, 3)));
        assert!(!log.record(RefusalKind::NoProxyHeader, secs(t0, 4)));
        assert!(!log.record(RefusalKind::NoProxyHeader, secs(t0, 5)));
        let s = log.flush(secs(t0, 20));
        assert_eq!(
            s.iter().map(|s| (s.kind, s.count)).collect::<Vec<_>>(),
            vec![
                (RefusalKind::NotAllowed, 1),
                (RefusalKind::NoProxyHeader, 2)
            ]
        );
        assert_eq!(
            s[0].to_string(),
            "1 connection refused in the last 20s: address not in the route's allow list"
        );
    }

    #[test]
    fn draining_reports_counts_whose_interval_is_not_over() {
        let t0 = Instant::now();
        let mut log = RefusalLog::new(TEN);
        assert!(log.record(RefusalKind::OverLimit, t0));
        assert!(!log.record(RefusalKind::OverLimit, secs(t0, 1)));
        assert_eq!(log.flush(secs(t0, 3)), Vec::new());
        let s = log.drain(secs(t0, 3));
        assert_eq!(
            s,
            vec![RefusalSummary {
                kind: RefusalKind::OverLimit,
                count: 1,
                period: Duration::from_secs(3)
            }]
        );
        assert_eq!(log.drain(secs(t0, 4)), Vec::new(), "drained once");
        assert!(log.record(RefusalKind::OverLimit, secs(t0, 5)));
    }
}
