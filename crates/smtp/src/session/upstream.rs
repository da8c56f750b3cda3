//! The session's upstream connection: opened lazily (at AUTH, or at the
//! first command that needs it for devices and `auth: none` routes), kept
//! while it behaves, dropped for good once it does not.

use std::net::IpAddr;

use postern_core::credentials::{ClientAuth, Refusal, Resolved};
use postern_core::metrics::{self, LoginResult};
use postern_core::session::{refuse_locally, Closed, LocalRefusal, Route, Session, SessionEnd};
use postern_core::upstream::{drive, Link, Misbehaved, UpstreamError};

use super::{Smtp, BLOCKED, DEVICE_REFUSED, HOSTNAME, UPSTREAM_LOST};
use crate::proto::client::{Action, ClientSession, Forward, Kind, LoginOutcome};
use crate::proto::reply::ReplyBuilder;
use crate::proto::upstream::{Connect, LoginDone, Ready};

const DATA_NOT_STARTED: &[u8] =
    b"451 4.4.2 postern: the mail server answered DATA wrongly; the message was not sent, try again\r\n";

/// The upstream side of one SMTP session.
#[derive(Debug, Default)]
pub(super) struct Slot {
    /// The open connection and its machine (after setup).
    open: Option<(Link, Ready)>,
    /// Set when the connection was dropped: what every later command hears.
    lost: Option<&'static [u8]>,
}

impl Slot {
    /// What later commands hear, once the upstream was dropped.
    pub(super) fn lost(&self) -> Option<&'static [u8]> {
        self.lost
    }

    /// Drops the upstream for the rest of the session.
    pub(super) fn lose(&mut self, later: &'static [u8]) {
        self.open = None;
        self.lost = Some(later);
    }

    /// The open link, for message data.
    pub(super) fn link(&mut self) -> Option<&mut Link> {
        self.open.as_mut().map(|(link, _)| link)
    }

    /// The client's next line; while an upstream is open it is watched, and
    /// anything it says unasked ends the session with `421`.
    pub(super) async fn next_line(
        &mut self,
        s: &mut Session,
        max: usize,
    ) -> Result<Option<Vec<u8>>, SessionEnd> {
        let read = match self.open.as_mut() {
            Some((link, _)) => s.client.read_line_watching(max, link).await,
            None => Ok(s.client.read_line(max).await),
        };
        match read {
            Ok(line) => Ok(line?),
            Err(e) => {
                let _ = s.client.write(UPSTREAM_LOST).await;
                Err(e.into())
            }
        }
    }

    /// Says QUIT upstream, if a connection is open.
    pub(super) async fn goodbye(&mut self) {
        if let Some((link, _)) = self.open.take() {
            link.goodbye(b"QUIT\r\n").await;
        }
    }

    /// Checks a client's authentication and carries the login upstream,
    /// opening the connection now if needed.
    pub(super) async fn login(
        &mut self,
        route: &Route<Smtp>,
        s: &mut Session,
        auth: ClientAuth,
    ) -> Result<LoginOutcome, SessionEnd> {
        let name = auth.user().to_owned();
        let resolved = match route.credentials.resolve(auth, s.peer.ip()) {
            Ok(r) => r,
            Err(refusal) => return refused_locally(&route.name, s, &name, refusal).await,
        };
        let stored = resolved.account;
        let done = match self.authenticate(route, s, resolved).await? {
            Ok(done) => done,
            Err(e) => return Err(self.fail(s, e).await),
        };
        let outcome = match done {
            LoginDone::Authenticated => {
                if let Some(id) = stored {
                    route.credentials.upstream_accepted(id);
                }
                tracing::info!(user = ?name, stored = stored.is_some(), "logged in upstream");
                s.user = Some(name);
                s.client.logged_in();
                LoginOutcome::Accepted
            }
            // Stored credentials: a temporary, non-credential error, so the
            // client does not prompt for a password it does not own; back off.
            LoginDone::Refused(reply) if stored.is_some() => {
                if let Some(id) = stored {
                    route.credentials.upstream_rejected(id);
                }
                tracing::warn!(user = ?name, reply = %reply.summary(), "the upstream refused stored credentials; backing off");
                LoginOutcome::TemporaryFailure
            }
            LoginDone::Refused(reply) if reply.is_transient() => {
                tracing::warn!(user = ?name, reply = %reply.summary(), "the upstream refused the login for now");
                LoginOutcome::TemporaryFailure
            }
            LoginDone::Refused(reply) => {
                tracing::warn!(user = ?name, reply = %reply.summary(), "the upstream refused the login");
                LoginOutcome::Rejected
            }
        };
        metrics::login(
            &route.name,
            match outcome {
                LoginOutcome::Accepted => LoginResult::Accepted,
                LoginOutcome::TemporaryFailure => LoginResult::Temporary,
                LoginOutcome::Rejected => LoginResult::RefusedUpstream,
            },
        );
        Ok(outcome)
    }

    /// Opens the connection if needed and runs the login machine. The
    /// outer error is the client's side (already told); the inner one the
    /// upstream's (the caller tells the client).
    async fn authenticate(
        &mut self,
        route: &Route<Smtp>,
        s: &mut Session,
        resolved: Resolved,
    ) -> Result<Result<LoginDone, UpstreamError>, SessionEnd> {
        let (link, ready) = match self.open.as_mut() {
            Some(open) => open,
            None => self.open.insert(open(route, s).await?),
        };
        Ok(match ready.login(resolved.upstream) {
            Some((mut machine, first)) => drive(link, &mut machine, first).await,
            None => Err(UpstreamError::Protocol(
                "this route does not log in upstream (auth: none)".to_owned(),
            )),
        })
    }

    /// Forwards one command (opening the upstream first for devices and
    /// `auth: none` routes) and hands its reply to the client machine.
    /// `None` when the client has been answered already.
    pub(super) async fn forward(
        &mut self,
        route: &Route<Smtp>,
        s: &mut Session,
        session: &mut ClientSession,
        device: Option<&Resolved>,
        fwd: Forward,
    ) -> Result<Option<Action>, SessionEnd> {
        if self.open.is_none() {
            self.open_for_relay(route, s, device).await?;
        }
        let Some((link, _)) = self.open.as_mut() else {
            let _ = s.client.write(UPSTREAM_LOST).await;
            return Err(Closed::UpstreamLostEarlier.into());
        };
        let reply = match link
            .command(&fwd.line, ReplyBuilder::new(), "a command reply")
            .await
        {
            Ok(r) => r,
            Err(e) => return Err(self.fail(s, e).await),
        };
        if fwd.kind == Kind::Data && (200..400).contains(&reply.code()) && reply.code() != 354 {
            // Only a 354 opens the data phase; any other positive reply
            // would make the client believe a message it never sent was taken.
            tracing::warn!(cause = %Misbehaved::DataNotStarted(reply.code()), upstream = %route.address, "upstream dropped");
            self.lose(UPSTREAM_LOST);
            s.client.write(DATA_NOT_STARTED).await?;
            return Ok(None);
        }
        Ok(Some(session.on_upstream(fwd.kind, &reply)))
    }

    /// Opens the upstream for a session that does not log in itself: a
    /// device logs in with its stored account; an `auth: none` route just
    /// connects. From now on the pre-login deadline no longer applies.
    async fn open_for_relay(
        &mut self,
        route: &Route<Smtp>,
        s: &mut Session,
        device: Option<&Resolved>,
    ) -> Result<(), SessionEnd> {
        let (mut link, ready) = open(route, s).await?;
        if let Some(dev) = device {
            let name = dev.upstream.user().to_owned();
            let done = match ready.login(dev.upstream.clone()) {
                Some((mut machine, first)) => drive(&mut link, &mut machine, first).await,
                None => Err(UpstreamError::Protocol(
                    "a device on a route that does not log in upstream".to_owned(),
                )),
            };
            match (done, dev.account) {
                (Ok(LoginDone::Authenticated), id) => {
                    if let Some(id) = id {
                        route.credentials.upstream_accepted(id);
                    }
                    tracing::info!(user = ?name, "device logged in upstream with stored credentials");
                    s.user = Some(name);
                }
                (Err(e), _) => return Err(self.fail(s, e).await),
                (Ok(done), id) => {
                    if let Some(id) = id {
                        route.credentials.upstream_rejected(id);
                    }
                    tracing::warn!(user = ?name, step = ?done, "the upstream refused a device's stored credentials");
                    let _ = s.client.write(DEVICE_REFUSED).await;
                    return Err(Closed::DeviceRefused.into());
                }
            }
        }
        s.client.logged_in();
        self.open = Some((link, ready));
        Ok(())
    }

    /// The upstream failed: drop it, tell the client `421`, end the session.
    async fn fail(&mut self, s: &mut Session, e: UpstreamError) -> SessionEnd {
        self.lose(UPSTREAM_LOST);
        let _ = s.client.write(UPSTREAM_LOST).await;
        SessionEnd::Upstream(e)
    }
}

/// Connects, secures and greets the upstream up to the point of login,
/// and refreshes the route's snapshot of its extensions. A failure is told
/// to the client (a security failure as such).
async fn open(route: &Route<Smtp>, s: &mut Session) -> Result<(Link, Ready), SessionEnd> {
    match connect(route).await {
        Ok(open) => {
            s.stats.upstream_tls = open.0.tls_description();
            Ok(open)
        }
        Err(e) => {
            let msg: &[u8] = if e.is_tls() {
                b"421 4.7.0 postern: no secure connection to the mail server is possible; try again later\r\n"
            } else {
                b"421 4.4.1 postern: the mail server is not available; try again later\r\n"
            };
            let _ = s.client.write(msg).await;
            Err(e.into())
        }
    }
}

async fn connect(route: &Route<Smtp>) -> Result<(Link, Ready), UpstreamError> {
    let (link, ready) = route
        .open(|link| {
            // EHLO names postern by the address literal of its own socket.
            let name = match link.local_addr().map(|a| a.ip()) {
                Ok(IpAddr::V4(ip)) => format!("[{ip}]"),
                Ok(IpAddr::V6(ip)) => format!("[IPv6:{ip}]"),
                Err(_) => HOSTNAME.to_owned(),
            };
            let m = Connect::new(route.transport.security(), route.auth, name);
            let first = m.begin();
            (m, first)
        })
        .await?;
    route.extra.extensions.set(Some(ready.extensions().clone()));
    Ok((link, ready))
}

/// postern itself refused the credentials.
async fn refused_locally(
    route: &str,
    s: &mut Session,
    name: &str,
    refusal: Refusal,
) -> Result<LoginOutcome, SessionEnd> {
    match refuse_locally(route, name, refusal).await {
        LocalRefusal::BadCredentials => Ok(LoginOutcome::Rejected),
        LocalRefusal::Temporary => Ok(LoginOutcome::TemporaryFailure),
        LocalRefusal::Blocked => {
            let _ = s.client.write(BLOCKED).await;
            Err(Closed::AddressBlocked.into())
        }
    }
}

/// `postern probe`: connect exactly as a session would, report what the
/// upstream offers, log in only when asked (then QUIT).
pub(super) async fn probe(
    route: &Route<Smtp>,
    credentials: Option<postern_core::login::Login>,
) -> postern_core::probe::Probe {
    let mut p = route.probe_report();
    let (mut link, ready) = match connect(route).await {
        Ok(x) => x,
        Err(e) => {
            p.problems.push(e.to_string());
            return p;
        }
    };
    p.connected(&link, ready.seen());
    p.capabilities = ready
        .extensions()
        .lines()
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect();
    if let Some(login) = credentials {
        p.login = Some(match ready.login(login) {
            None => "not tried: the route does not log in upstream (auth: none)".to_owned(),
            Some((mut machine, first)) => match drive(&mut link, &mut machine, first).await {
                Ok(LoginDone::Authenticated) => "accepted".to_owned(),
                Ok(LoginDone::Refused(reply)) => {
                    p.problems.push(format!(
                        "the server refused the stored account's login: {}",
                        reply.summary()
                    ));
                    "refused".to_owned()
                }
                Err(e) => {
                    p.problems.push(e.to_string());
                    "failed".to_owned()
                }
            },
        });
    }
    link.goodbye(b"QUIT\r\n").await;
    p
}
