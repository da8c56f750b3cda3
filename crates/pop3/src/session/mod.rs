//! POP3 on the core session skeleton: the [`Protocol`] impl and the
//! AUTHORIZATION phase. postern greets and answers CAPA itself; the
//! upstream connection is opened only when the client gives credentials
//! ([`login`]); after login the TRANSACTION state is relayed ([`relay`]).
//!
//! Invariants kept here:
//! - a client that has not logged in holds nothing upstream, and no longer
//!   than `timeouts.login_total`;
//! - a multi-line reply reaches the client exactly as the server sent it;
//!   if the server dies before its terminator the client connection is
//!   closed, never completed with a synthetic `.`;
//! - a client that goes away without QUIT makes postern drop the upstream
//!   without QUIT, so nothing is deleted (RFC 1939 §6);
//! - no password, digest or SASL payload is ever logged.

mod login;
mod relay;

use std::sync::Mutex;

use postern_core::credentials::fresh_msg_id;
use postern_core::session::{Closed, Protocol, Route, Session, SessionEnd, Snapshot};
use postern_core::upstream::{Link, UpstreamError};

use crate::proto::apop::ApopGuard;
use crate::proto::client::{self, Authorization, LocalAuth};
use crate::proto::reply::Capabilities;
use crate::proto::upstream::Ready;

/// The POP3 protocol, as the session skeleton runs it.
#[derive(Debug)]
pub struct Pop3;

/// What every POP3 session of one route shares beyond the common route.
#[derive(Debug, Default)]
pub struct Pop3Extra {
    /// Refuses repeated upstream APOP timestamps; pauses failing APOP users.
    apop: Mutex<ApopGuard>,
    /// The upstream's capabilities as the last session saw them (the CAPA
    /// postern answers before login; conservative until the first login).
    capabilities: Snapshot<Capabilities>,
}

const TEMP_FAILURE: &[u8] =
    b"-ERR [SYS/TEMP] The mail server is not available; try again later\r\n";

impl Protocol for Pop3 {
    const NAME: &'static str = "pop3";
    type Extra = Pop3Extra;

    fn extra(_route: &postern_core::config::Route) -> Pop3Extra {
        Pop3Extra::default()
    }

    fn refusal() -> &'static [u8] {
        b"-ERR [SYS/PERM] Access denied\r\n"
    }

    fn busy() -> &'static [u8] {
        b"-ERR [SYS/TEMP] Too many sessions; try again later\r\n"
    }

    fn shutting_down() -> &'static [u8] {
        b"-ERR [SYS/TEMP] postern is shutting down; try again later\r\n"
    }

    fn blocked() -> &'static [u8] {
        login::BLOCKED
    }

    async fn probe(
        route: &Route<Pop3>,
        login: Option<postern_core::login::Login>,
    ) -> postern_core::probe::Probe {
        login::probe(route, login).await
    }

    async fn run(route: &Route<Pop3>, s: &mut Session) -> Result<(), SessionEnd> {
        // Boxed: the greeting and the login are freed once they are done,
        // so a logged-in session keeps only the relay's state (memory per
        // idle session, issue 14).
        let Some(mut up) = Box::pin(greet_and_authorize(route, s)).await? else {
            return Ok(());
        };
        s.client.logged_in();
        relay::transaction(route, s, &mut up).await
    }
}

/// Greets the client and runs the AUTHORIZATION state: `Some` with the
/// logged-in upstream, `None` when the client quit.
async fn greet_and_authorize(
    route: &Route<Pop3>,
    s: &mut Session,
) -> Result<Option<Link>, SessionEnd> {
    // With local secrets postern is an APOP server itself: its greeting
    // carries a fresh msg-id timestamp (RFC 1939 §7).
    let timestamp = route.credentials.offers_challenges().then(fresh_msg_id);
    let greeting = match &timestamp {
        Some(ts) => format!(
            "+OK postern POP3 gateway ready {}\r\n",
            String::from_utf8_lossy(ts)
        ),
        None => "+OK postern POP3 gateway ready\r\n".to_owned(),
    };
    s.client
        .greet(
            greeting.as_bytes(),
            b"-ERR Protocol error: data sent before the greeting\r\n",
        )
        .await?;
    let snapshot = route.extra.capabilities.get();
    let mut auth = Authorization::new(
        snapshot,
        s.client.tls(),
        LocalAuth {
            passwords: route.credentials.offers_login(),
            timestamp,
        },
    );
    authorization(route, s, &mut auth).await
}

/// An upstream connection that is connected but not logged in yet (kept
/// across refused logins).
type Pending = Option<(Link, Ready)>;

/// The AUTHORIZATION state: `Some` with the logged-in upstream, `None`
/// when the client quit.
async fn authorization(
    route: &Route<Pop3>,
    s: &mut Session,
    auth: &mut Authorization,
) -> Result<Option<Link>, SessionEnd> {
    let mut pending: Pending = None;
    loop {
        let read = match &mut pending {
            Some((link, _)) => s.client.read_line_watching(auth.max_line(), link).await,
            None => Ok(s.client.read_line(auth.max_line()).await),
        };
        let line = match read {
            Ok(line) => line?,
            Err(e) => return Err(temporary(s, e).await),
        };
        let Some(line) = line else {
            if let client::Step::Reply(bytes) = auth.on_too_long() {
                s.client.write(&bytes).await?;
            }
            continue;
        };
        match auth.on_line(&line) {
            client::Step::Login(credentials) => {
                if let Some(link) = login::attempt(route, s, credentials, &mut pending).await? {
                    return Ok(Some(link));
                }
            }
            client::Step::Reply(bytes) => s.client.write(&bytes).await?,
            client::Step::StartTls => {
                s.client.start_tls(b"+OK Begin TLS negotiation\r\n").await?;
                auth.on_tls();
            }
            client::Step::Close(bytes) => {
                tracing::warn!("the client sent an HTTP request; closing");
                let _ = s.client.write(bytes).await;
                return Err(Closed::HttpRequest.into());
            }
            client::Step::Quit => {
                // Nothing to commit before login; tell the server politely.
                if let Some((link, _)) = pending.take() {
                    link.goodbye(b"QUIT\r\n").await;
                }
                s.client.write(b"+OK Bye\r\n").await?;
                return Ok(None);
            }
        }
    }
}

/// The upstream failed: the client hears a temporary error, the session ends.
async fn temporary(s: &mut Session, e: UpstreamError) -> SessionEnd {
    let _ = s.client.write(TEMP_FAILURE).await;
    SessionEnd::Upstream(e)
}
