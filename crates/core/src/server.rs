//! Listeners: accept, check the allow-list, spawn one session per
//! connection; on shutdown stop accepting, let sessions finish within a
//! grace period, then close what is left.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::acl::Acl;
use crate::limits;

/// A session running to completion.
pub type SessionFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// One protocol front end, as the listener sees it.
pub trait Frontend: Send + Sync + 'static {
    /// Written to a client the allow-list refuses, before closing.
    fn refusal(&self) -> &'static [u8];
    /// Written to a client over a session limit, before closing.
    fn busy(&self) -> &'static [u8];
    /// Runs one client session.
    fn session(&self, stream: TcpStream, peer: SocketAddr) -> SessionFuture;
}

/// A listener bound for one route.
pub struct Listener {
    route: Arc<str>,
    listener: TcpListener,
    acl: Arc<Acl>,
    frontend: Arc<dyn Frontend>,
    options: ListenOptions,
    sessions: Arc<Sessions>,
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

/// A route could not be prepared for serving.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// Its TLS settings could not be loaded.
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsSetupError),
    /// A stored credential could not be loaded.
    #[error("{0}")]
    Credentials(String),
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
        Ok(Self {
            route: Arc::from(route),
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
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => break,
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
            let (route, acl, frontend, sessions) = (
                self.route.clone(),
                self.acl.clone(),
                self.frontend.clone(),
                self.sessions.clone(),
            );
            let options = self.options;
            let abort = abort.clone();
            tracker.spawn(async move {
                let work = admit(route, acl, frontend, options, sessions, stream, peer);
                tokio::select! {
                    _ = work => {}
                    _ = abort.cancelled() => {}
                }
            });
        }
        tracing::debug!(route = %self.route, "stopped accepting");
    }
}

/// One accepted connection: learn the real client address (PROXY
/// protocol), check the allow-list, then run the session.
async fn admit(
    route: Arc<str>,
    acl: Arc<Acl>,
    frontend: Arc<dyn Frontend>,
    options: ListenOptions,
    sessions: Arc<Sessions>,
    mut stream: TcpStream,
    socket_peer: SocketAddr,
) {
    let peer = if options.proxy_protocol {
        match crate::proxy::read_header(&mut stream, limits::PROXY_HEADER_TIMEOUT).await {
            Ok(addr) => addr.source_or(socket_peer),
            Err(e) => {
                // No reply: the peer is not speaking the protocol we expect.
                tracing::warn!(route = %route, proxy = %socket_peer, error = %e, "closed: no valid PROXY protocol header");
                return;
            }
        }
    } else {
        socket_peer
    };
    if !acl.allows(peer.ip()) {
        tracing::warn!(route = %route, client = %peer, "refused: address not in the route's allow list");
        let refusal = frontend.refusal();
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            let _ = stream.write_all(refusal).await;
            let _ = stream.shutdown().await;
        })
        .await;
        return;
    }
    let Some(_slot) = sessions.admit(peer.ip(), &options) else {
        tracing::warn!(route = %route, client = %peer, "refused: too many sessions");
        let busy = frontend.busy();
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            let _ = stream.write_all(busy).await;
            let _ = stream.shutdown().await;
        })
        .await;
        return;
    };
    frontend.session(stream, peer).await;
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
            tracing::info!(route = %l.route, listen = ?l.local_addr().ok(), "listening");
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
            tracing::info!(sessions = tracker.len(), grace = ?grace, "shutting down: waiting for sessions to finish");
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
