//! One listening socket: accept, PROXY header, allow-list, session caps,
//! then the route's session. What it serves ([`Serving`]) can be swapped by
//! a reload while the socket stays open, so no connection is refused
//! during a reload and running sessions keep the route they started with.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::refusals::{RefusalKind, RefusalLog, Refusals, REFUSAL_LOG_INTERVAL};
use super::slots::{SessionBudget, Sessions};
use super::{Frontend, ListenOptions};
use crate::acl::Acl;
use crate::limits;

/// How often a listener looks for refusal counts whose interval is over.
const REFUSAL_REPORT_TICK: Duration = Duration::from_secs(1);

/// What a listener serves: the route's front end and admission rules.
#[derive(Clone)]
pub struct Serving {
    /// The route name, for logs.
    pub route: Arc<str>,
    /// Who may connect.
    pub acl: Arc<Acl>,
    /// The protocol front end with the route's prepared settings.
    pub frontend: Arc<dyn Frontend>,
    /// PROXY protocol and session caps.
    pub options: ListenOptions,
}

impl std::fmt::Debug for Serving {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serving")
            .field("route", &self.route)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// A bound socket and what it serves.
#[derive(Debug)]
pub(super) struct Listener {
    listener: TcpListener,
    serving: watch::Receiver<Serving>,
    sessions: Arc<Sessions>,
    refusals: Arc<Refusals>,
}

impl Listener {
    pub(super) fn new(
        listener: TcpListener,
        serving: watch::Receiver<Serving>,
        budget: Arc<SessionBudget>,
    ) -> Self {
        let route = serving.borrow().route.clone();
        Self {
            listener,
            serving,
            sessions: Arc::new(Sessions {
                by_client: std::sync::Mutex::new(std::collections::HashMap::new()),
                budget,
            }),
            refusals: Arc::new(Refusals {
                route,
                log: std::sync::Mutex::new(RefusalLog::new(REFUSAL_LOG_INTERVAL)),
            }),
        }
    }

    /// Accepts until `stop`; each connection becomes a task on `tracker`,
    /// cut by `abort` (the end of the grace period) and told of shutdown
    /// through `sessions_stop`.
    pub(super) async fn accept_loop(
        self,
        stop: CancellationToken,
        tracker: TaskTracker,
        abort: CancellationToken,
        sessions_stop: CancellationToken,
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
                    let route = self.serving.borrow().route.clone();
                    tracing::warn!(route = %route, error = %e, "accept failed; pausing");
                    tokio::time::sleep(limits::ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            // The settings current at accept time serve this connection
            // for its whole life, whatever later reloads do.
            let serving = self.serving.borrow().clone();
            let (refusals, sessions) = (self.refusals.clone(), self.sessions.clone());
            let (abort, stop) = (abort.clone(), sessions_stop.clone());
            tracker.spawn(async move {
                let work = admit(serving, refusals, sessions, stream, peer, stop);
                tokio::select! {
                    _ = work => {}
                    _ = abort.cancelled() => {}
                }
            });
        }
        self.refusals.report(true);
        let route = self.serving.borrow().route.clone();
        tracing::info!(route = %route, "stopped accepting");
    }
}

/// One accepted connection: learn the real client address (PROXY
/// protocol), check the allow-list and the caps, then run the session.
async fn admit(
    serving: Serving,
    refusals: Arc<Refusals>,
    sessions: Arc<Sessions>,
    mut stream: TcpStream,
    socket_peer: SocketAddr,
    stop: CancellationToken,
) {
    let peer = if serving.options.proxy_protocol {
        // Boxed: its buffers are freed once the header is read.
        match Box::pin(crate::proxy::read_header(
            &mut stream,
            limits::PROXY_HEADER_TIMEOUT,
        ))
        .await
        {
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
    if !serving.acl.allows(peer.ip()) {
        refusals.refused(RefusalKind::NotAllowed, peer, None);
        turn_away(&mut stream, serving.frontend.refusal()).await;
        return;
    }
    let Some(_slot) = sessions.admit(peer.ip(), &serving.options) else {
        refusals.refused(RefusalKind::OverLimit, peer, None);
        turn_away(&mut stream, serving.frontend.busy()).await;
        return;
    };
    serving.frontend.session(stream, peer, stop).await;
}

/// Writes a refusal and closes, giving up on a client that does not read.
async fn turn_away(stream: &mut TcpStream, reply: &[u8]) {
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = stream.write_all(reply).await;
        let _ = stream.shutdown().await;
    })
    .await;
}
