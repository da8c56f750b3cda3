//! The session's upstream connection: opened lazily (at AUTH, or at the
//! first command that needs it for devices and `auth: none` routes), kept
//! while it behaves, dropped for good once it does not.

use std::net::IpAddr;

use postern_core::credentials::{ClientAuth, Refusal, Resolved};
use postern_core::metrics::{self, LoginResult};
use postern_core::oauth::OAuthError;
use postern_core::session::{refuse_locally, Closed, LocalRefusal, Route, Session, SessionEnd};
use postern_core::upstream::{drive, Link, Misbehaved, UpstreamError};

use super::{Smtp, BLOCKED, DEVICE_REFUSED, HOSTNAME, UPSTREAM_LOST};
use crate::proto::client::{Action, ClientSession, Forward, Kind, LoginOutcome};
use crate::proto::reply::ReplyBuilder;
use crate::proto::upstream::{Connect, LoginDone, Ready};

const NO_TOKEN: &[u8] =
    b"421 4.7.0 postern: no valid access token for this device's account; try again later\r\n";
const DATA_NOT_STARTED: &[u8] =
    b"451 4.4.2 postern: the mail server answered DATA wrongly; the message was not sent, try again\r\n";

/// How one upstream login attempt ended.
#[derive(Debug)]
enum Attempt {
    /// The server answered the login.
    Done(LoginDone),
    /// No access token could be had for an OAuth2 account.
    NoToken(OAuthError),
}

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
        let done = match self.authenticate(route, s, resolved, &name).await? {
            Ok(Attempt::Done(done)) => done,
            Ok(Attempt::NoToken(e)) => {
                tracing::error!(user = ?name, error = %e, "no OAuth2 access token for the account");
                metrics::login(&route.name, LoginResult::Temporary);
                return Ok(LoginOutcome::TemporaryFailure);
            }
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

    /// Opens the connection if needed and runs the login machine; a
    /// refused OAuth2 token is replaced once and tried again on a new
    /// connection. The outer error is the client's side (already told); the
    /// inner one the upstream's (the caller tells the client).
    async fn authenticate(
        &mut self,
        route: &Route<Smtp>,
        s: &mut Session,
        mut resolved: Resolved,
        name: &str,
    ) -> Result<Result<Attempt, UpstreamError>, SessionEnd> {
        loop {
            let login = match resolved.login().await {
                Ok(l) => l,
                Err(e) => return Ok(Ok(Attempt::NoToken(e))),
            };
            let (link, ready) = match self.open.as_mut() {
                Some(open) => open,
                None => self.open.insert(open(route, s).await?),
            };
            let Some((mut machine, first)) = ready.login(login.clone()) else {
                return Ok(Err(UpstreamError::Protocol(
                    "this route does not log in upstream (auth: none)".to_owned(),
                )));
            };
            let done = match drive(link, &mut machine, first).await {
                Ok(done) => done,
                Err(e) => return Ok(Err(e)),
            };
            if let LoginDone::Refused(reply) = &done {
                let challenge = machine.bearer_error().unwrap_or("-").to_owned();
                if resolved.retry_with_fresh_token(&login).await {
                    tracing::info!(user = ?name, reply = %reply.summary(), challenge = %challenge,
                        "the upstream refused the access token; retrying once with a fresh one on a new connection");
                    self.goodbye().await;
                    continue;
                }
                if challenge != "-" {
                    tracing::warn!(user = ?name, challenge = %challenge, "the upstream explained the refusal");
                }
            }
            return Ok(Ok(Attempt::Done(done)));
        }
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
        let Some(dev) = device else {
            self.open = Some(open(route, s).await?);
            s.client.logged_in();
            return Ok(());
        };
        let name = dev.upstream.user().to_owned();
        let done = match self.authenticate(route, s, dev.clone(), &name).await? {
            Ok(done) => done,
            Err(e) => return Err(self.fail(s, e).await),
        };
        match (done, dev.account) {
            (Attempt::Done(LoginDone::Authenticated), id) => {
                if let Some(id) = id {
                    route.credentials.upstream_accepted(id);
                }
                tracing::info!(user = ?name, "device logged in upstream with stored credentials");
                s.user = Some(name);
            }
            (Attempt::NoToken(e), _) => {
                tracing::error!(user = ?name, error = %e, "no OAuth2 access token for the device's account");
                self.goodbye().await;
                let _ = s.client.write(NO_TOKEN).await;
                return Err(Closed::DeviceRefused.into());
            }
            (Attempt::Done(done), id) => {
                if let Some(id) = id {
                    route.credentials.upstream_rejected(id);
                }
                tracing::warn!(user = ?name, step = ?done, "the upstream refused a device's stored credentials");
                self.goodbye().await;
                let _ = s.client.write(DEVICE_REFUSED).await;
                return Err(Closed::DeviceRefused.into());
            }
        }
        s.client.logged_in();
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
            let m = Connect::new(route.transport.security(), route.auth, name)
                .target(&route.address.host, route.address.port);
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
