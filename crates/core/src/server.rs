//! Listeners: accept, check the allow-list, spawn one session per
//! connection; on shutdown stop accepting, let sessions finish within a
//! grace period, then close what is left.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::acl::Acl;
use crate::limits;

/// A session running to completion.
pub type SessionFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// How long refusals of one kind on a listener are counted before one line
/// reports them (the first of a quiet period is logged at once).
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// How often a listener looks for refusal counts whose interval is over.
const REFUSAL_REPORT_TICK: Duration = Duration::from_secs(1);

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

/// One protocol front end, as the listener sees it.
pub trait Frontend: Send + Sync + 'static {
    /// Written to a client the allow-list refuses, before closing.
    fn refusal(&self) -> &'static [u8];
    /// Written to a client over a session limit, before closing.
    fn busy(&self) -> &'static [u8];
    /// Runs one client session.
    /// Runs one client session; `stop` is cancelled when the gateway
    /// shuts down (a session waiting for its client then ends at once).
    fn session(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        stop: CancellationToken,
    ) -> SessionFuture;
}

/// A listener bound for one route.
pub struct Listener {
    route: Arc<str>,
    listener: TcpListener,
    acl: Arc<Acl>,
    frontend: Arc<dyn Frontend>,
    options: ListenOptions,
    sessions: Arc<Sessions>,
    refusals: Arc<Refusals>,
}

/// A listener's [`RefusalLog`], shared by its connection tasks.
#[derive(Debug)]
struct Refusals {
    route: Arc<str>,
    log: std::sync::Mutex<RefusalLog>,
}

impl Refusals {
    /// Logs a refusal now, or counts it for the next summary.
    fn refused(
        &self,
        kind: RefusalKind,
        client: SocketAddr,
        detail: Option<&dyn std::fmt::Display>,
    ) {
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
    fn report(&self, drain: bool) {
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

/// How a listener admits connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenOptions {
    /// Expect a PROXY protocol header first.
    pub proxy_protocol: bool,
    /// Sessions at once on this listener.
    pub max_sessions: usize,
    /// Sessions at once from one client address.
    pub max_per_client: usize,
}

/// The gateway-wide cap on sessions, shared by every listener.
#[derive(Debug)]
pub struct SessionBudget {
    running: std::sync::atomic::AtomicUsize,
    max: usize,
}

impl SessionBudget {
    /// A budget of `max` sessions at once across all routes.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            running: std::sync::atomic::AtomicUsize::new(0),
            max,
        })
    }

    fn take(&self) -> bool {
        use std::sync::atomic::Ordering;
        let prev = self.running.fetch_add(1, Ordering::AcqRel);
        if prev >= self.max {
            self.running.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    fn give_back(&self) {
        self.running
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Counts running sessions of one listener, in total and per client address.
#[derive(Debug)]
struct Sessions {
    by_client: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
    budget: Arc<SessionBudget>,
}

/// One admitted session; dropping it frees its places.
struct SessionSlot {
    sessions: Arc<Sessions>,
    ip: std::net::IpAddr,
}

impl Sessions {
    fn admit(self: &Arc<Self>, ip: std::net::IpAddr, o: &ListenOptions) -> Option<SessionSlot> {
        let ip = ip.to_canonical();
        let mut map = self.by_client.lock().ok()?;
        let total: usize = map.values().sum();
        let mine = map.get(&ip).copied().unwrap_or(0);
        if total >= o.max_sessions || mine >= o.max_per_client || !self.budget.take() {
            return None;
        }
        *map.entry(ip).or_insert(0) += 1;
        Some(SessionSlot {
            sessions: self.clone(),
            ip,
        })
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.sessions.budget.give_back();
        if let Ok(mut map) = self.sessions.by_client.lock() {
            if let Some(n) = map.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&self.ip);
                }
            }
        }
    }
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("route", &self.route)
            .field("listener", &self.listener)
            .finish_non_exhaustive()
    }
}

/// A listen address could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("route \"{route}\": cannot listen on {address}: {source}")]
pub struct BindError {
    /// The route.
    pub route: String,
    /// The address.
    pub address: SocketAddr,
    /// Why (in use, permission denied, no such address).
    pub source: std::io::Error,
}

impl Listener {
    /// Binds the route's address now, so errors surface at start-up.
    pub async fn bind(
        route: &str,
        address: SocketAddr,
        acl: Acl,
        frontend: Arc<dyn Frontend>,
        options: ListenOptions,
        budget: Arc<SessionBudget>,
    ) -> Result<Self, BindError> {
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| BindError {
                route: route.to_owned(),
                address,
                source,
            })?;
        let route: Arc<str> = Arc::from(route);
        Ok(Self {
            refusals: Arc::new(Refusals {
                route: route.clone(),
                log: std::sync::Mutex::new(RefusalLog::new(REFUSAL_LOG_INTERVAL)),
            }),
            route,
            listener,
            acl: Arc::new(acl),
            frontend,
            options,
            sessions: Arc::new(Sessions {
                by_client: std::sync::Mutex::new(std::collections::HashMap::new()),
                budget,
            }),
        })
    }

    /// The route name.
    pub fn route(&self) -> &str {
        &self.route
    }

    /// The bound address (the real port when 0 was asked for).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    async fn accept_loop(
        self,
        stop: CancellationToken,
        tracker: TaskTracker,
        abort: CancellationToken,
    ) {
        let mut report = tokio::time::interval(REFUSAL_REPORT_TICK);
        report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => break,
                _ = report.tick() => {
                    self.refusals.report(false);
                    continue;
                }
                r = self.listener.accept() => r,
            };
            let (stream, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE/ENFILE and friends: back off instead of spinning.
                    tracing::warn!(route = %self.route, error = %e, "accept failed; pausing");
                    tokio::time::sleep(limits::ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let (refusals, acl, frontend, sessions) = (
                self.refusals.clone(),
                self.acl.clone(),
                self.frontend.clone(),
                self.sessions.clone(),
            );
            let options = self.options;
            let abort = abort.clone();
            let stop = stop.clone();
            tracker.spawn(async move {
                let work = admit(
                    refusals, acl, frontend, options, sessions, stream, peer, stop,
                );
                tokio::select! {
                    _ = work => {}
                    _ = abort.cancelled() => {}
                }
            });
        }
        self.refusals.report(true);
        tracing::debug!(route = %self.route, "stopped accepting");
    }
}

/// One accepted connection: learn the real client address (PROXY
/// protocol), check the allow-list, then run the session.
#[allow(clippy::too_many_arguments)]
async fn admit(
    refusals: Arc<Refusals>,
    acl: Arc<Acl>,
    frontend: Arc<dyn Frontend>,
    options: ListenOptions,
    sessions: Arc<Sessions>,
    mut stream: TcpStream,
    socket_peer: SocketAddr,
    stop: CancellationToken,
) {
    let peer = if options.proxy_protocol {
        match crate::proxy::read_header(&mut stream, limits::PROXY_HEADER_TIMEOUT).await {
            Ok(addr) => addr.source_or(socket_peer),
            Err(e) => {
                // No reply: the peer is not speaking the protocol we expect.
                refusals.refused(RefusalKind::NoProxyHeader, socket_peer, Some(&e));
                return;
            }
        }
    } else {
        socket_peer
    };
    if !acl.allows(peer.ip()) {
        refusals.refused(RefusalKind::NotAllowed, peer, None);
        let refusal = frontend.refusal();
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            let _ = stream.write_all(refusal).await;
            let _ = stream.shutdown().await;
        })
        .await;
        return;
    }
    let Some(_slot) = sessions.admit(peer.ip(), &options) else {
        refusals.refused(RefusalKind::OverLimit, peer, None);
        let busy = frontend.busy();
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            let _ = stream.write_all(busy).await;
            let _ = stream.shutdown().await;
        })
        .await;
        return;
    };
    frontend.session(stream, peer, stop).await;
}

/// All listeners of a running gateway.
#[derive(Debug)]
pub struct Server {
    listeners: Vec<Listener>,
}

impl Server {
    /// A server over already-bound listeners.
    pub fn new(listeners: Vec<Listener>) -> Self {
        Self { listeners }
    }

    /// Route names and bound addresses.
    pub fn local_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.listeners
            .iter()
            .filter_map(|l| Some((l.route.to_string(), l.local_addr().ok()?)))
            .collect()
    }

    /// Serves until `shutdown` is cancelled, then drains: sessions get
    /// `grace` to finish before their connections are closed.
    pub async fn serve(self, shutdown: CancellationToken, grace: Duration) {
        let tracker = TaskTracker::new();
        let abort = CancellationToken::new();
        let mut loops = Vec::new();
        for l in self.listeners {
            match l.local_addr() {
                Ok(addr) => tracing::info!(route = %l.route, listen = %addr, "listening"),
                Err(e) => {
                    tracing::info!(route = %l.route, error = %e, "listening (address unknown)")
                }
            }
            loops.push(tokio::spawn(l.accept_loop(
                shutdown.clone(),
                tracker.clone(),
                abort.clone(),
            )));
        }
        shutdown.cancelled().await;
        for l in loops {
            let _ = l.await;
        }
        tracker.close();
        if !tracker.is_empty() {
            tracing::info!(
                sessions = tracker.len(),
                grace = %format_args!("{}s", grace.as_secs_f64()),
                "shutting down: idle sessions close now, busy ones get the grace period"
            );
        }
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            tracing::warn!(
                sessions = tracker.len(),
                "grace period over: closing the remaining sessions"
            );
            abort.cancel();
            tracker.wait().await;
        }
        tracing::info!("stopped");
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
