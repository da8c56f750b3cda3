//! Listeners and the server that owns them: accept, check the allow-list,
//! spawn one session per connection; apply a new configuration without
//! dropping a session; on shutdown stop accepting, let sessions finish
//! within a grace period, then close what is left.
//!
//! [`Server::apply`] is the one way listeners change, at start-up and at
//! every reload: sockets whose configured address is unchanged are kept
//! (they only get the new [`Serving`]), new addresses are bound before
//! anything changes (a failed bind leaves the running configuration as it
//! was), and removed ones stop accepting while their sessions finish.

mod listener;
mod refusals;
mod slots;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use listener::Serving;
pub use refusals::{RefusalKind, RefusalLog, RefusalSummary, REFUSAL_LOG_INTERVAL};
pub use slots::SessionBudget;

/// A session running to completion.
pub type SessionFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// One protocol front end, as the listener sees it.
pub trait Frontend: Send + Sync + 'static {
    /// Written to a client the allow-list refuses, before closing.
    fn refusal(&self) -> &'static [u8];
    /// Written to a client over a session limit, before closing.
    fn busy(&self) -> &'static [u8];
    /// Runs one client session; `stop` is cancelled when the gateway
    /// shuts down (a session waiting for its client then ends soon).
    fn session(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        stop: CancellationToken,
    ) -> SessionFuture;
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

/// One route's listener, as a configuration wants it.
#[derive(Debug)]
pub struct ListenerSpec {
    /// The configured address (port 0: any free port).
    pub address: SocketAddr,
    /// What it serves.
    pub serving: Serving,
}

impl ListenerSpec {
    /// Which running listener a spec continues: the same configured
    /// address; with port 0 (a fresh port each bind) the same route too.
    fn key(&self) -> ListenKey {
        if self.address.port() == 0 {
            ListenKey::Ephemeral(self.serving.route.to_string(), self.address)
        } else {
            ListenKey::Fixed(self.address)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum ListenKey {
    Fixed(SocketAddr),
    Ephemeral(String, SocketAddr),
}

/// What [`Server::apply`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Routes whose listener was bound now.
    pub added: Vec<String>,
    /// Routes whose socket was kept (with their settings as now configured).
    pub kept: Vec<String>,
    /// Routes that stopped accepting (their sessions finish).
    pub removed: Vec<String>,
}

#[derive(Debug)]
struct Running {
    serving: watch::Sender<Serving>,
    local: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// Every listener of a gateway, and its sessions.
#[derive(Debug)]
pub struct Server {
    running: std::sync::Mutex<HashMap<ListenKey, Running>>,
    /// One reload at a time (binding happens outside `running`'s lock).
    applying: tokio::sync::Mutex<()>,
    budget: Arc<SessionBudget>,
    tracker: TaskTracker,
    /// Ends every session at once (after the grace period).
    abort: CancellationToken,
    /// Tells sessions the gateway is shutting down.
    sessions_stop: CancellationToken,
}

impl Server {
    /// A server with no listeners yet and a gateway-wide session cap.
    pub fn new(total_sessions: usize) -> Self {
        Self {
            running: std::sync::Mutex::new(HashMap::new()),
            applying: tokio::sync::Mutex::new(()),
            budget: SessionBudget::new(total_sessions),
            tracker: TaskTracker::new(),
            abort: CancellationToken::new(),
            sessions_stop: CancellationToken::new(),
        }
    }

    /// Makes the listeners match `specs`: binds the new addresses first
    /// (on any failure nothing changes), then gives kept sockets their new
    /// settings, starts the new ones and stops the removed ones. Sessions
    /// are never touched: each keeps the settings it started with.
    pub async fn apply(
        &self,
        specs: Vec<ListenerSpec>,
        total_sessions: usize,
    ) -> Result<Applied, BindError> {
        let _one_at_a_time = self.applying.lock().await;
        let present: std::collections::HashSet<ListenKey> =
            self.lock_running().keys().cloned().collect();
        let mut bound = Vec::new();
        for spec in &specs {
            if present.contains(&spec.key()) {
                continue;
            }
            let socket = TcpListener::bind(spec.address)
                .await
                .map_err(|source| BindError {
                    route: spec.serving.route.to_string(),
                    address: spec.address,
                    source,
                })?;
            bound.push((spec.key(), socket));
        }
        let mut bound: HashMap<ListenKey, TcpListener> = bound.into_iter().collect();
        self.budget.set_max(total_sessions);
        let mut running = self.lock_running();
        let mut applied = Applied::default();
        let mut wanted = std::collections::HashSet::new();
        for spec in specs {
            let key = spec.key();
            wanted.insert(key.clone());
            let route = spec.serving.route.to_string();
            if let Some(r) = running.get(&key) {
                r.serving.send_replace(spec.serving);
                applied.kept.push(route);
            } else if let Some(socket) = bound.remove(&key) {
                let r = self.start(socket, spec.serving);
                tracing::info!(route = %route, listen = %r.local, "listening");
                running.insert(key, r);
                applied.added.push(route);
            }
        }
        let gone: Vec<ListenKey> = running
            .keys()
            .filter(|k| !wanted.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            if let Some(r) = running.remove(&key) {
                applied.removed.push(r.serving.borrow().route.to_string());
                r.stop.cancel();
            }
        }
        Ok(applied)
    }

    fn start(&self, socket: TcpListener, serving: Serving) -> Running {
        let local = socket
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0)));
        let (tx, rx) = watch::channel(serving);
        let stop = CancellationToken::new();
        let l = listener::Listener::new(socket, rx, self.budget.clone());
        let task = tokio::spawn(l.accept_loop(
            stop.clone(),
            self.tracker.clone(),
            self.abort.clone(),
            self.sessions_stop.clone(),
        ));
        Running {
            serving: tx,
            local,
            stop,
            task,
        }
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, HashMap<ListenKey, Running>> {
        // A panic while holding the lock cannot leave the map half-changed
        // in a way that matters more than stopping service would.
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether every listener is serving (none has stopped on its own).
    pub fn healthy(&self) -> bool {
        let running = self.lock_running();
        !running.is_empty() && running.values().all(|r| !r.task.is_finished())
    }

    /// Whether new sessions are taken (false once shutdown began).
    pub fn ready(&self) -> bool {
        !self.sessions_stop.is_cancelled() && self.healthy()
    }

    /// Route names and bound addresses (real ports when 0 was configured).
    pub fn local_addrs(&self) -> Vec<(String, SocketAddr)> {
        let running = self.lock_running();
        let mut out: Vec<_> = running
            .values()
            .map(|r| (r.serving.borrow().route.to_string(), r.local))
            .collect();
        out.sort();
        out
    }

    /// Waits for `shutdown`, then drains: listeners stop accepting,
    /// sessions waiting for their client are told, the others get `grace`
    /// to finish before their connections are closed.
    pub async fn serve(&self, shutdown: CancellationToken, grace: Duration) {
        shutdown.cancelled().await;
        self.sessions_stop.cancel();
        let loops: Vec<Running> = self.lock_running().drain().map(|(_, r)| r).collect();
        for r in &loops {
            r.stop.cancel();
        }
        for r in loops {
            let _ = r.task.await;
        }
        self.tracker.close();
        if !self.tracker.is_empty() {
            tracing::info!(
                sessions = self.tracker.len(),
                grace = %format_args!("{}s", grace.as_secs_f64()),
                "shutting down: sessions get the grace period to finish"
            );
        }
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                sessions = self.tracker.len(),
                "grace period over: closing the remaining sessions"
            );
            self.abort.cancel();
            self.tracker.wait().await;
        }
        tracing::info!("stopped");
    }
}
