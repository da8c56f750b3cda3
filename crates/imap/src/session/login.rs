//! A login attempt: postern's own checks (credentials, blocks), then —
//! only now — the upstream connection, its greeting, STARTTLS and
//! CAPABILITY, and the login carried upstream.

use postern_core::credentials::{ClientAuth, Refusal};
use postern_core::metrics::{self, LoginResult};
use postern_core::session::{refuse_locally, Closed, LocalRefusal, Route, Session, SessionEnd};
use postern_core::upstream::{drive, Link, UpstreamError};

use super::{temporary, Imap, Pending};
use crate::proto::client;
use crate::proto::upstream::{Connect, LoginDone, Ready};

pub(super) const BLOCKED: &[u8] =
    b"* BYE [UNAVAILABLE] Too many failed logins from your address; try again later\r\n";

/// Tries one login: `Some` with the logged-in upstream, `None` when the
/// client was refused (and told under `tag`) and may try again.
pub(super) async fn attempt(
    route: &Route<Imap>,
    s: &mut Session,
    tag: &[u8],
    credentials: ClientAuth,
    pending: &mut Pending,
) -> Result<Option<Link>, SessionEnd> {
    let name = credentials.user().to_owned();
    let mut resolved = match route.credentials.resolve(credentials, s.peer.ip()) {
        Ok(r) => r,
        Err(refusal) => {
            refused_locally(&route.name, s, tag, &name, refusal).await?;
            return Ok(None);
        }
    };
    let (link, ready, machine, done) = loop {
        let login = match resolved.login().await {
            Ok(l) => l,
            Err(e) => {
                metrics::login(&route.name, LoginResult::Temporary);
                tracing::error!(user = ?name, error = %e, "no OAuth2 access token for the account");
                s.client.write(&client::login_unavailable(tag)).await?;
                return Ok(None);
            }
        };
        let (mut link, ready) = match pending.take() {
            Some(open) => open,
            None => match open(route).await {
                Ok(open) => open,
                Err(e) => {
                    let _ = s.client.write(&client::login_unavailable(tag)).await;
                    return Err(temporary(s, e).await);
                }
            },
        };
        s.stats.upstream_tls = link.tls_description();
        let (mut machine, first) = ready.login(login.clone());
        let done = match drive(&mut link, &mut machine, first).await {
            Ok(d) => d,
            Err(e) => {
                let _ = s.client.write(&client::login_unavailable(tag)).await;
                return Err(temporary(s, e).await);
            }
        };
        if matches!(done, LoginDone::Refused { .. })
            && resolved.retry_with_fresh_token(&login).await
        {
            tracing::info!(user = ?name, challenge = machine.bearer_error().unwrap_or("-"),
                "the upstream refused the access token; retrying once with a fresh one on a new connection");
            link.goodbye(&ready.logout()).await;
            continue;
        }
        break (link, ready, machine, done);
    };
    let account = resolved.account;
    match done {
        LoginDone::LoggedIn { capabilities } => {
            metrics::login(&route.name, LoginResult::Accepted);
            if let Some(id) = account {
                route.credentials.upstream_accepted(id);
            }
            tracing::info!(user = ?name, stored = account.is_some(), "logged in upstream");
            s.user = Some(name);
            s.client
                .write(&client::login_ok(tag, capabilities.as_ref()))
                .await?;
            Ok(Some(link))
        }
        LoginDone::Refused { temporary, text } => {
            let result = if account.is_some() || temporary {
                LoginResult::Temporary
            } else {
                LoginResult::RefusedUpstream
            };
            metrics::login(&route.name, result);
            tracing::warn!(user = ?name, reply = %text, stored = account.is_some(),
                challenge = machine.bearer_error().unwrap_or("-"), "the upstream refused the login");
            // Stored credentials: a temporary, non-credential answer, so
            // the client does not prompt for a password it does not own;
            // and back off so the provider does not lock the account.
            let answer = match account {
                Some(id) => {
                    route.credentials.upstream_rejected(id);
                    client::login_unavailable(tag)
                }
                None if temporary => client::login_unavailable(tag),
                None => client::login_failed(tag),
            };
            *pending = Some((link, ready));
            s.client.write(&answer).await?;
            Ok(None)
        }
    }
}

fn connect_machine(route: &Route<Imap>) -> (Connect, postern_core::upstream::Step<Ready>) {
    let m = Connect::new(route.transport.security(), route.auth)
        .target(&route.address.host, route.address.port);
    let first = m.begin();
    (m, first)
}

/// Opens the upstream: connect, greeting, STARTTLS, CAPABILITY.
async fn open(route: &Route<Imap>) -> Result<(Link, Ready), UpstreamError> {
    let (link, ready) = route.open(|_| connect_machine(route)).await?;
    route
        .extra
        .capabilities
        .set(Some(ready.capabilities().clone()));
    Ok((link, ready))
}

/// postern itself refused the credentials.
async fn refused_locally(
    route: &str,
    s: &mut Session,
    tag: &[u8],
    name: &str,
    refusal: Refusal,
) -> Result<(), SessionEnd> {
    let answer = match refuse_locally(route, name, refusal).await {
        LocalRefusal::BadCredentials => client::login_failed(tag),
        LocalRefusal::Temporary => client::login_unavailable(tag),
        LocalRefusal::Blocked => {
            let _ = s.client.write(BLOCKED).await;
            return Err(Closed::AddressBlocked.into());
        }
    };
    s.client.write(&answer).await?;
    Ok(())
}

/// `postern probe`: connect exactly as a session would, report what the
/// upstream offers, log in only when asked (then LOGOUT).
pub(super) async fn probe(
    route: &Route<Imap>,
    credentials: Option<postern_core::login::Login>,
) -> postern_core::probe::Probe {
    let mut p = route.probe_report();
    let (mut link, ready) = match route.open(|_| connect_machine(route)).await {
        Ok(x) => x,
        Err(e) => {
            p.problems.push(e.to_string());
            return p;
        }
    };
    p.connected(&link, ready.seen());
    p.capabilities = ready
        .capabilities()
        .iter()
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    if let Some(login) = credentials {
        let (mut machine, first) = ready.login(login);
        p.login = Some(match drive(&mut link, &mut machine, first).await {
            Ok(LoginDone::LoggedIn { .. }) => "accepted".to_owned(),
            Ok(LoginDone::Refused { text, .. }) => {
                p.problems.push(format!(
                    "the server refused the stored account's login: {text}"
                ));
                "refused".to_owned()
            }
            Err(e) => {
                p.problems.push(e.to_string());
                "failed".to_owned()
            }
        });
    }
    link.goodbye(&ready.logout()).await;
    p
}
