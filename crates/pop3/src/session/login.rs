//! A login attempt: postern's own checks (credentials, blocks, APOP
//! pauses), then — only now — the upstream connection, its greeting,
//! STLS and CAPA, and the login carried upstream.

use std::time::Instant;

use postern_core::config::UpstreamAuth;
use postern_core::credentials::{ClientAuth, Refusal};
use postern_core::metrics::{self, LoginResult};
use postern_core::session::{refuse_locally, Closed, LocalRefusal, Route, Session, SessionEnd};
use postern_core::upstream::{drive, Link, Misbehaved, UpstreamError};

use super::{temporary, Pending, Pop3};
use crate::proto::reply::RespCode;
use crate::proto::upstream::{Connect, LoginDone, Ready};

pub(super) const BLOCKED: &[u8] =
    b"-ERR [SYS/TEMP] Too many failed logins from your address; try again later\r\n";
const APOP_PAUSED: &[u8] =
    b"-ERR [SYS/TEMP] Too many failed logins for this user; postern pauses them for a while\r\n";
const NO_TOKEN: &[u8] =
    b"-ERR [SYS/TEMP] postern has no valid access token for this account; try again later\r\n";
const STORED_REFUSED: &[u8] =
    b"-ERR [SYS/TEMP] The mail server is refusing this account for now; try again later\r\n";

/// Tries one login: `Some` with the logged-in upstream, `None` when the
/// client was refused (and told) and may try again.
pub(super) async fn attempt(
    route: &Route<Pop3>,
    s: &mut Session,
    credentials: ClientAuth,
    pending: &mut Pending,
) -> Result<Option<Link>, SessionEnd> {
    let name = credentials.user().to_owned();
    let resolved = match route.credentials.resolve(credentials, s.peer.ip()) {
        Ok(r) => r,
        Err(refusal) => {
            refused_locally(&route.name, s, &name, refusal).await?;
            return Ok(None);
        }
    };
    let apop_user = (route.auth == UpstreamAuth::Apop).then(|| resolved.upstream.user().to_owned());
    if let Some(u) = &apop_user {
        let allowed = route
            .extra
            .apop
            .lock()
            .map(|g| g.allowed(u, Instant::now()))
            .unwrap_or(false);
        if !allowed {
            tracing::warn!(user = ?name, "APOP logins for this user are paused after repeated failures");
            s.client.write(APOP_PAUSED).await?;
            return Ok(None);
        }
    }
    let mut resolved = resolved;
    let (link, ready, machine, done) = loop {
        let login = match resolved.login().await {
            Ok(l) => l,
            Err(e) => {
                metrics::login(&route.name, LoginResult::Temporary);
                tracing::error!(user = ?name, error = %e, "no OAuth2 access token for the account");
                s.client.write(NO_TOKEN).await?;
                return Ok(None);
            }
        };
        let (mut link, ready) = match pending.take() {
            Some(ready) => ready,
            None => match open(route).await {
                Ok(ready) => ready,
                Err(e) => return Err(temporary(s, e).await),
            },
        };
        s.stats.upstream_tls = link.tls_description();
        let (mut machine, first) = ready.login(login.clone());
        let done = match drive(&mut link, &mut machine, first).await {
            Ok(d) => d,
            Err(e) => return Err(temporary(s, e).await),
        };
        if matches!(done, LoginDone::Refused(_)) && resolved.retry_with_fresh_token(&login).await {
            tracing::info!(user = ?name, challenge = machine.bearer_error().unwrap_or("-"),
                "the upstream refused the access token; retrying once with a fresh one on a new connection");
            link.goodbye(b"QUIT\r\n").await;
            continue;
        }
        break (link, ready, machine, done);
    };
    let account = resolved.account;
    let apop_guard = |succeeded: bool| {
        if let (Some(u), Ok(g)) = (&apop_user, route.extra.apop.lock()) {
            if succeeded {
                g.succeeded(u);
            } else {
                g.failed(u, Instant::now());
            }
        }
    };
    match done {
        LoginDone::LoggedIn => {
            metrics::login(&route.name, LoginResult::Accepted);
            apop_guard(true);
            if let Some(id) = account {
                route.credentials.upstream_accepted(id);
            }
            tracing::info!(user = ?name, stored = account.is_some(), "logged in upstream");
            s.user = Some(name);
            s.client.write(b"+OK Logged in\r\n").await?;
            Ok(Some(link))
        }
        LoginDone::Refused(code) => {
            let result = match (account, code) {
                (Some(_), _)
                | (None, RespCode::InUse | RespCode::LoginDelay | RespCode::SysTemp) => {
                    LoginResult::Temporary
                }
                _ => LoginResult::RefusedUpstream,
            };
            metrics::login(&route.name, result);
            apop_guard(false);
            tracing::warn!(user = ?name, code = ?code, stored = account.is_some(),
                challenge = machine.bearer_error().unwrap_or("-"), "the upstream refused the login");
            let answer: &[u8] = match account {
                // Stored credentials: a temporary, non-credential error, so
                // the client does not prompt for a password it does not
                // own; and back off so the provider does not lock the account.
                Some(id) => {
                    route.credentials.upstream_rejected(id);
                    STORED_REFUSED
                }
                None => refusal_for(code),
            };
            *pending = Some((link, ready));
            s.client.write(answer).await?;
            Ok(None)
        }
    }
}

/// Opens the upstream: connect, greeting (APOP timestamp), STLS, CAPA.
async fn open(route: &Route<Pop3>) -> Result<(Link, Ready), UpstreamError> {
    let (link, ready) = route
        .open(|_| {
            let m = Connect::new(route.transport.security(), route.auth)
                .target(&route.address.host, route.address.port);
            let first = m.begin();
            (m, first)
        })
        .await?;
    if let Some(ts) = ready.timestamp() {
        let fresh = route
            .extra
            .apop
            .lock()
            .map(|mut g| g.fresh(ts))
            .unwrap_or(false);
        if !fresh {
            return Err(Misbehaved::RepeatedTimestamp.into());
        }
    }
    route.extra.capabilities.set(ready.capabilities().cloned());
    Ok((link, ready))
}

/// postern itself refused the credentials.
async fn refused_locally(
    route: &str,
    s: &mut Session,
    name: &str,
    refusal: Refusal,
) -> Result<(), SessionEnd> {
    let answer: &[u8] = match refuse_locally(route, name, refusal).await {
        LocalRefusal::BadCredentials => b"-ERR [AUTH] Authentication failed\r\n",
        LocalRefusal::Temporary => STORED_REFUSED,
        LocalRefusal::Blocked => {
            let _ = s.client.write(BLOCKED).await;
            return Err(Closed::AddressBlocked.into());
        }
    };
    s.client.write(answer).await?;
    Ok(())
}

/// What a passthrough client hears when the upstream refused its login.
fn refusal_for(code: RespCode) -> &'static [u8] {
    match code {
        RespCode::InUse => b"-ERR [IN-USE] The mailbox is in use by another session\r\n",
        RespCode::LoginDelay => b"-ERR [LOGIN-DELAY] Logged in too recently; try again later\r\n",
        RespCode::SysTemp => {
            b"-ERR [SYS/TEMP] The mail server has a temporary problem; try again later\r\n"
        }
        RespCode::SysPerm => b"-ERR [SYS/PERM] The mail server refused the login\r\n",
        _ => b"-ERR [AUTH] Authentication failed\r\n",
    }
}

/// `postern probe`: connect exactly as a session would, report what the
/// upstream offers, log in only when asked (then QUIT).
pub(super) async fn probe(
    route: &Route<Pop3>,
    credentials: Option<postern_core::login::Login>,
) -> postern_core::probe::Probe {
    let mut p = route.probe_report();
    let (mut link, ready) = match route
        .open(|_| {
            let m = Connect::new(route.transport.security(), route.auth)
                .target(&route.address.host, route.address.port);
            let first = m.begin();
            (m, first)
        })
        .await
    {
        Ok(x) => x,
        Err(e) => {
            p.problems.push(e.to_string());
            return p;
        }
    };
    p.connected(&link, ready.seen());
    if route.auth == UpstreamAuth::Apop {
        p.apop_timestamp = Some(ready.timestamp().is_some());
    }
    p.capabilities = ready
        .capabilities()
        .map(|c| {
            c.lines()
                .map(|l| String::from_utf8_lossy(l).into_owned())
                .collect()
        })
        .unwrap_or_default();
    if ready.capabilities().is_none() {
        p.warnings
            .push("the server does not answer CAPA (TOP and UIDL are unknown)".to_owned());
    }
    if let Some(login) = credentials {
        let (mut machine, first) = ready.login(login);
        p.login = Some(match drive(&mut link, &mut machine, first).await {
            Ok(LoginDone::LoggedIn) => "accepted".to_owned(),
            Ok(LoginDone::Refused(code)) => {
                p.problems
                    .push("the server refused the stored account's login".to_owned());
                format!("refused ({code:?})")
            }
            Err(e) => {
                p.problems.push(e.to_string());
                "failed".to_owned()
            }
        });
    }
    link.goodbye(b"QUIT\r\n").await;
    p
}
