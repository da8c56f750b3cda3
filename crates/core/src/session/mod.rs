//! The session skeleton every front end shares. A protocol fills in one
//! trait ([`Protocol`]); core owns the lifecycle:
//!
//! ```text
//! accept → ACL → PROXY (server.rs) → client TLS → blocked? → Protocol::run
//!   (greet → login, upstream opened only now → relay) → close → one log line
//! ```
//!
//! [`ClientSide`] is the client half (deadlines, the early-talker check,
//! STLS/STARTTLS with the injection check); [`crate::upstream::Link`] is
//! the upstream half (quiet check before every command, the generic
//! machine driver). Every phase returns `Result<_, SessionEnd>`.

mod client;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use crate::tls::ListenSide;
pub use client::ClientSide;

use crate::config::HostPort;
use crate::credentials::CredentialSource;
use crate::limits::{Limits, Timeouts};
use crate::prepare::PreparedRoute;
use crate::server::{Frontend, SessionFuture};
use crate::upstream::{UpstreamError, UpstreamTransport};

/// Why postern or the client closed a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Closed {
    /// The client closed the connection.
    #[error("client closed the connection")]
    ClientGone,
    /// Reading from or writing to the client failed.
    #[error("client connection failed")]
    ClientFailed,
    /// The client sent nothing for too long.
    #[error("client idle timeout")]
    Idle,
    /// The client did not log in within `timeouts.login_total`.
    #[error("client did not log in in time (login_total)")]
    LoginTimeout,
    /// The client did not read what postern wrote.
    #[error("client stopped reading")]
    StoppedReading,
    /// The TLS handshake with the client failed.
    #[error("TLS handshake with the client failed")]
    TlsFailed,
    /// A TLS ClientHello arrived on a plain port.
    #[error("TLS handshake on a plain port")]
    TlsOnPlainPort,
    /// The client talked before the greeting.
    #[error("client talked before the greeting")]
    EarlyTalker,
    /// Bytes were pipelined after STLS/STARTTLS (CVE-2011-0411).
    #[error("bytes after STARTTLS")]
    BytesAfterStartTls,
    /// An HTTP request arrived on a mail port.
    #[error("HTTP request on a mail port")]
    HttpRequest,
    /// The client broke the protocol past recovery (IMAP: a
    /// non-synchronising literal over the cap, too many bad commands).
    #[error("protocol violation")]
    ProtocolViolation,
    /// The client's address is blocked after failed logins.
    #[error("address blocked after failed logins")]
    AddressBlocked,
    /// A device's stored account is backing off.
    #[error("device account in backoff")]
    DeviceBackoff,
    /// The upstream refused a device's stored credentials.
    #[error("device credentials refused upstream")]
    DeviceRefused,
    /// The client went on after the upstream connection was dropped.
    #[error("upstream lost earlier")]
    UpstreamLostEarlier,
    /// SMTP: a bare CR or LF in message data.
    #[error("bare line ending in DATA")]
    BareLineEnding,
    /// SMTP: the client's message data stalled.
    #[error("client data timeout")]
    DataTimeout,
    /// SMTP: the client's message data took too long in total or came too slowly.
    #[error("client data too slow (data_total / data_min_rate)")]
    DataTooSlow,
    /// The gateway shut down while the session waited for its client.
    #[error("gateway shutting down")]
    ShuttingDown,
}

/// How a session ended; decides the log line.
#[derive(Debug)]
pub enum SessionEnd {
    /// The client said goodbye.
    Quit,
    /// The session was closed on the client side or by postern.
    Closed(Closed),
    /// The upstream failed.
    Upstream(UpstreamError),
}

impl From<UpstreamError> for SessionEnd {
    fn from(e: UpstreamError) -> Self {
        SessionEnd::Upstream(e)
    }
}

impl From<Closed> for SessionEnd {
    fn from(c: Closed) -> Self {
        SessionEnd::Closed(c)
    }
}

impl SessionEnd {
    /// The outcome word of the end-of-session line.
    fn outcome(&self) -> &'static str {
        match self {
            SessionEnd::Quit => "quit",
            SessionEnd::Closed(_) => "closed",
            SessionEnd::Upstream(_) => "upstream failed",
        }
    }

    /// Logs the one summary line of a session (inside the session's span:
    /// route, client). Client-chosen strings are logged quoted and escaped.
    pub fn log(&self, s: &Summary<'_>) {
        let ms = s.started.elapsed().as_millis() as u64;
        let user = s.user.unwrap_or("-");
        let client_tls = s.client_tls.as_deref().unwrap_or("none");
        let stats = s.stats;
        let upstream_tls = stats.upstream_tls.as_deref().unwrap_or("none");
        macro_rules! line {
            ($level:ident, $($why:tt)*) => {
                tracing::$level!(
                    outcome = self.outcome(),
                    $($why)*
                    user = ?user,
                    upstream = %s.upstream,
                    auth = %s.auth,
                    client_tls,
                    upstream_tls,
                    messages = stats.messages,
                    bytes_to_client = stats.bytes_to_client,
                    bytes_to_upstream = stats.bytes_to_upstream,
                    ms,
                    "session ended"
                )
            };
        }
        match self {
            SessionEnd::Quit => line!(info,),
            SessionEnd::Closed(why) => line!(info, why = %why,),
            SessionEnd::Upstream(e) => line!(warn, cause = %e,),
        }
    }
}

/// What a session did, as the front end counts it.
#[derive(Debug, Default)]
pub struct SessionStats {
    /// The upstream connection's TLS version and cipher suite.
    pub upstream_tls: Option<String>,
    /// Messages retrieved (POP3 RETR) or relayed (SMTP, whatever the reply).
    pub messages: u64,
    /// Message bytes relayed to the client (RETR, TOP).
    pub bytes_to_client: u64,
    /// Message bytes relayed to the upstream (DATA).
    pub bytes_to_upstream: u64,
}

/// Everything the end-of-session line says.
#[derive(Debug)]
pub struct Summary<'a> {
    /// When the connection was accepted.
    pub started: Instant,
    /// Who logged in.
    pub user: Option<&'a str>,
    /// The route's upstream.
    pub upstream: &'a HostPort,
    /// The route's upstream login method.
    pub auth: crate::config::UpstreamAuth,
    /// The client side's TLS.
    pub client_tls: Option<String>,
    /// What the session did.
    pub stats: &'a SessionStats,
}

/// What the last upstream session of a route learnt (POP3 CAPA, SMTP
/// EHLO), for what postern answers before it has an upstream connection.
#[derive(Debug)]
pub struct Snapshot<T>(std::sync::Mutex<Option<T>>);

impl<T> Default for Snapshot<T> {
    fn default() -> Self {
        Self(std::sync::Mutex::new(None))
    }
}

impl<T: Clone> Snapshot<T> {
    /// The last value learnt, if any.
    pub fn get(&self) -> Option<T> {
        self.0.lock().ok().and_then(|v| v.clone())
    }

    /// Records what a new upstream session learnt.
    pub fn set(&self, value: Option<T>) {
        if let Ok(mut v) = self.0.lock() {
            *v = value;
        }
    }
}

/// What postern's own refusal of a login means for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalRefusal {
    /// Wrong or unknown credentials (after the anti-guessing delay): the
    /// client may try again.
    BadCredentials,
    /// The account is backing off after upstream refusals: a temporary error.
    Temporary,
    /// The client's address is blocked: say so and close.
    Blocked,
}

/// Logs and counts a login postern refused itself; a bad password waits
/// [`crate::limits::AUTH_FAILURE_DELAY`] first (the same for unknown users).
pub async fn refuse_locally(
    route: &str,
    user: &str,
    refusal: crate::credentials::Refusal,
) -> LocalRefusal {
    use crate::credentials::Refusal;
    use crate::metrics::{login, LoginResult};
    tracing::warn!(user = ?user, %refusal, "login refused by postern");
    match refusal {
        Refusal::BadCredentials => {
            login(route, LoginResult::RefusedLocally);
            tokio::time::sleep(crate::limits::AUTH_FAILURE_DELAY).await;
            LocalRefusal::BadCredentials
        }
        Refusal::AddressBlocked => {
            login(route, LoginResult::RefusedLocally);
            LocalRefusal::Blocked
        }
        Refusal::AccountBackoff => {
            login(route, LoginResult::Temporary);
            LocalRefusal::Temporary
        }
    }
}

/// One protocol front end: its parser and machines live in its crate; this
/// trait is all core needs to run its sessions.
pub trait Protocol: Send + Sync + Sized + 'static {
    /// The span name (`pop3`, `smtp`).
    const NAME: &'static str;
    /// The protocol's own per-route data (snapshots, guards, limits).
    type Extra: Send + Sync + std::fmt::Debug + 'static;
    /// The per-route data, built once when the route is prepared.
    fn extra(route: &crate::config::Route) -> Self::Extra;
    /// Written to a client the allow-list refuses.
    fn refusal() -> &'static [u8];
    /// Written to a client over a session limit.
    fn busy() -> &'static [u8];
    /// Written to a client whose address is blocked after failed logins.
    fn blocked() -> &'static [u8];
    /// Written to a client waiting for its next command when the gateway
    /// shuts down.
    fn shutting_down() -> &'static [u8];
    /// Connects to the route's upstream as a session would and reports what
    /// it offers (`postern probe`); logs in with `login` if given, then QUITs.
    fn probe(
        route: &Route<Self>,
        login: Option<crate::login::Login>,
    ) -> impl std::future::Future<Output = crate::probe::Probe> + Send;
    /// Runs one session after the client side is open: greet, log in,
    /// relay. `Ok(())` means the client quit.
    fn run(
        route: &Route<Self>,
        session: &mut Session,
    ) -> impl std::future::Future<Output = Result<(), SessionEnd>> + Send;
}

/// What every session of one route shares.
#[derive(Debug)]
pub struct Route<P: Protocol> {
    /// The route's name, for logs.
    pub name: String,
    /// How postern listens.
    pub listen: ListenSide,
    /// The upstream's address (resolved afresh per session).
    pub address: HostPort,
    /// How the upstream is reached.
    pub transport: UpstreamTransport,
    /// The route's upstream login method.
    pub auth: crate::config::UpstreamAuth,
    /// Where upstream credentials come from.
    pub credentials: CredentialSource,
    /// Deadlines.
    pub timeouts: Timeouts,
    /// Limits.
    pub limits: Limits,
    /// The protocol's own.
    pub extra: P::Extra,
}

impl<P: Protocol> Route<P> {
    /// A running route from its prepared parts (see [`crate::prepare`]).
    pub fn new(prepared: PreparedRoute, timeouts: Timeouts, limits: Limits) -> Self {
        let PreparedRoute {
            config,
            listen,
            transport,
            credentials,
        } = prepared;
        Self {
            extra: P::extra(&config),
            name: config.name,
            listen,
            address: config.upstream.address,
            transport,
            auth: config.upstream.auth,
            credentials,
            timeouts,
            limits,
        }
    }

    /// An empty probe report for this route.
    pub fn probe_report(&self) -> crate::probe::Probe {
        crate::probe::Probe::new(
            &self.name,
            P::NAME,
            &self.address.to_string(),
            &self.transport.security().to_string(),
            &self.auth.to_string(),
        )
    }

    /// Opens a fresh upstream connection (resolve, connect, implicit TLS)
    /// and runs the protocol's connect machine on it (greeting, STARTTLS,
    /// capabilities) until it is ready for a login. `machine` builds the
    /// machine and its first step from the new link (SMTP names itself
    /// after the link's local address).
    pub async fn open<M: crate::upstream::Machine>(
        &self,
        machine: impl FnOnce(&crate::upstream::Link) -> (M, crate::upstream::Step<M::Done>),
    ) -> Result<(crate::upstream::Link, M::Done), UpstreamError> {
        let mut link =
            crate::upstream::Link::connect(&self.address, &self.transport, &self.timeouts).await?;
        let (mut m, first) = machine(&link);
        let ready = crate::upstream::drive(&mut link, &mut m, first).await?;
        tracing::debug!(tls = link.tls_version().unwrap_or("none"), "upstream ready");
        Ok((link, ready))
    }
}

/// One client session in progress.
#[derive(Debug)]
pub struct Session {
    /// The client half.
    pub client: ClientSide,
    /// The client's address (after PROXY).
    pub peer: SocketAddr,
    /// Who logged in (for the final log line).
    pub user: Option<String>,
    /// What the session did (for the final log line).
    pub stats: SessionStats,
}

/// A prepared route, as the listener runs it.
#[derive(Debug)]
pub struct Frontdoor<P: Protocol>(Arc<Route<P>>);

impl<P: Protocol> Frontdoor<P> {
    /// Wraps a prepared route.
    pub fn new(route: Route<P>) -> Self {
        Self(Arc::new(route))
    }
}

impl<P: Protocol> Frontend for Frontdoor<P> {
    fn refusal(&self) -> &'static [u8] {
        P::refusal()
    }

    fn busy(&self) -> &'static [u8] {
        P::busy()
    }

    fn session(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        stop: CancellationToken,
    ) -> SessionFuture {
        let route = self.0.clone();
        let span =
            tracing::info_span!("session", proto = P::NAME, route = %route.name, client = %peer);
        Box::pin(serve::<P>(route, stream, peer, stop).instrument(span))
    }
}

/// One session from the accepted socket to its final log line.
async fn serve<P: Protocol>(
    route: Arc<Route<P>>,
    stream: TcpStream,
    peer: SocketAddr,
    stop: CancellationToken,
) {
    let started = Instant::now();
    crate::metrics::session_started(&route.name);
    // Boxed, like each protocol's login: a phase that ends is freed when
    // it ends instead of sizing the future an idle session keeps.
    let open = Box::pin(ClientSide::open(
        stream,
        &route.listen,
        &route.timeouts,
        stop,
    ));
    let (end, session) = match open.await {
        Err(closed) => (SessionEnd::Closed(closed), None),
        Ok(client) => {
            let mut session = Session {
                client,
                peer,
                user: None,
                stats: SessionStats::default(),
            };
            let end = run::<P>(&route, &mut session).await;
            session.client.shutdown().await;
            (end, Some(session))
        }
    };
    let none = SessionStats::default();
    end.log(&Summary {
        started,
        user: session.as_ref().and_then(|s| s.user.as_deref()),
        upstream: &route.address,
        auth: route.auth,
        client_tls: session.as_ref().and_then(|s| s.client.tls_description()),
        stats: session.as_ref().map_or(&none, |s| &s.stats),
    });
    crate::metrics::session_ended(&route.name, &end, started.elapsed());
}

/// The protocol's part of a session, and the goodbyes core owes the client.
async fn run<P: Protocol>(route: &Route<P>, session: &mut Session) -> SessionEnd {
    if route.credentials.address_blocked(session.peer.ip()) {
        let _ = session.client.write(P::blocked()).await;
        return SessionEnd::Closed(Closed::AddressBlocked);
    }
    match P::run(route, session).await {
        Ok(()) => SessionEnd::Quit,
        Err(SessionEnd::Closed(Closed::ShuttingDown)) => {
            let _ = session.client.write(P::shutting_down()).await;
            SessionEnd::Closed(Closed::ShuttingDown)
        }
        Err(end) => end,
    }
}
