//! IMAP on the core session skeleton: the [`Protocol`] impl and the
//! not-authenticated state. postern greets and answers CAPABILITY, ID,
//! NOOP and STARTTLS itself; the upstream connection is opened only when
//! the client gives credentials ([`login`]); after login the session is
//! relayed both ways ([`relay`]).
//!
//! Invariants kept here:
//! - a client that has not logged in holds nothing upstream, and no longer
//!   than `timeouts.login_total`; a literal before login is capped before
//!   a byte of it is read;
//! - every response reaches the client exactly as the server sent it,
//!   except capability lists (filtered); if the server dies inside a
//!   response, the client connection is closed, never completed;
//! - no password, token or SASL payload is ever logged.

mod login;
mod relay;

use postern_core::credentials::fresh_msg_id;
use postern_core::session::{Closed, Protocol, Route, Session, SessionEnd, Snapshot};
use postern_core::upstream::{Link, UpstreamError};

use crate::proto::capability::Capabilities;
use crate::proto::client::{self, LocalAuth, NotAuthenticated, Step, MAX_SASL_LINE};
use crate::proto::command::{Assembled, CommandReader, Limits, Read, CONTINUE};
use crate::proto::upstream::Ready;

/// The IMAP protocol, as the session skeleton runs it.
#[derive(Debug)]
pub struct Imap;

/// What every IMAP session of one route shares beyond the common route.
#[derive(Debug, Default)]
pub struct ImapExtra {
    /// The upstream's capabilities before login, as the last session saw
    /// them (what postern advertises before login; conservative until the
    /// first login).
    capabilities: Snapshot<Capabilities>,
}

/// Written when the upstream fails before or during login.
const UNAVAILABLE: &[u8] =
    b"* BYE [UNAVAILABLE] The mail server is not available; try again later\r\n";

impl Protocol for Imap {
    const NAME: &'static str = "imap";
    type Extra = ImapExtra;

    fn extra(_route: &postern_core::config::Route) -> ImapExtra {
        ImapExtra::default()
    }

    fn refusal() -> &'static [u8] {
        b"* BYE [UNAVAILABLE] Access denied\r\n"
    }

    fn busy() -> &'static [u8] {
        b"* BYE [UNAVAILABLE] Too many sessions; try again later\r\n"
    }

    fn shutting_down() -> &'static [u8] {
        b"* BYE [UNAVAILABLE] postern is shutting down; try again later\r\n"
    }

    fn blocked() -> &'static [u8] {
        login::BLOCKED
    }

    async fn probe(
        route: &Route<Imap>,
        login: Option<postern_core::login::Login>,
    ) -> postern_core::probe::Probe {
        login::probe(route, login).await
    }

    async fn run(route: &Route<Imap>, s: &mut Session) -> Result<(), SessionEnd> {
        // Boxed: the greeting and the login are freed once they are done,
        // so a logged-in session keeps only the relay's state (memory per
        // idle session, issue 14).
        let Some(mut up) = Box::pin(greet_and_log_in(route, s)).await? else {
            return Ok(());
        };
        s.client.logged_in();
        relay::authenticated(route, s, &mut up).await
    }
}

/// Greets the client and runs the not-authenticated state: `Some` with the
/// logged-in upstream, `None` when the client logged out.
async fn greet_and_log_in(
    route: &Route<Imap>,
    s: &mut Session,
) -> Result<Option<Link>, SessionEnd> {
    let mut state = NotAuthenticated::new(
        route.extra.capabilities.get(),
        s.client.tls(),
        LocalAuth {
            passwords: route.credentials.offers_login(),
            challenge: route.credentials.offers_challenges().then(fresh_msg_id),
        },
    );
    s.client
        .greet(
            &state.greeting(),
            b"* BYE Protocol error: data sent before the greeting\r\n",
        )
        .await?;
    not_authenticated(route, s, &mut state).await
}

/// An upstream connection that is connected but not logged in yet (kept
/// across refused logins).
type Pending = Option<(Link, Ready)>;

/// The not-authenticated state: `Some` with the logged-in upstream, `None`
/// when the client logged out.
async fn not_authenticated(
    route: &Route<Imap>,
    s: &mut Session,
    state: &mut NotAuthenticated,
) -> Result<Option<Link>, SessionEnd> {
    let mut pending: Pending = None;
    let mut reader = CommandReader::new(Limits::BEFORE_LOGIN);
    loop {
        let step = if state.in_sasl() {
            match read_line(s, MAX_SASL_LINE, &mut pending).await? {
                Some(line) => state.on_sasl_line(&line),
                None => state.on_sasl_too_long(),
            }
        } else {
            match next_command(s, &mut reader, &mut pending).await? {
                Some(command) => state.on_command(command),
                None => continue,
            }
        };
        match step {
            Step::Reply(bytes) | Step::SaslContinue(bytes) => s.client.write(&bytes).await?,
            Step::Login { tag, auth } => {
                if let Some(link) = login::attempt(route, s, &tag, auth, &mut pending).await? {
                    return Ok(Some(link));
                }
            }
            Step::StartTls { tag } => {
                s.client.start_tls(&client::starttls_go_ahead(&tag)).await?;
                state.on_tls();
                reader = CommandReader::new(Limits::BEFORE_LOGIN);
            }
            Step::Logout { tag } => {
                if let Some((link, ready)) = pending.take() {
                    link.goodbye(&ready.logout()).await;
                }
                s.client.write(&client::logout(&tag)).await?;
                return Ok(None);
            }
            Step::Close(bytes) => {
                tracing::warn!("too many bad commands before login; closing");
                let _ = s.client.write(&bytes).await;
                return Err(Closed::ProtocolViolation.into());
            }
        }
    }
}

/// Reads until one command is assembled (`None`: it was refused and the
/// client told; read the next one).
async fn next_command(
    s: &mut Session,
    reader: &mut CommandReader,
    pending: &mut Pending,
) -> Result<Option<crate::proto::command::Command>, SessionEnd> {
    loop {
        let mut http = false;
        let assembled = match reader.expects() {
            Read::Line => match read_line(s, reader.max_line(), pending).await? {
                Some(line) => {
                    http = postern_core::sniff::looks_like_http(&line);
                    reader.feed_line(&line)
                }
                None => reader.too_long(),
            },
            // The reader has checked n against its caps before asking.
            Read::Literal(n) => {
                let bytes = s.client.read_exact(n).await?;
                reader.feed_literal(&bytes)
            }
        };
        match assembled {
            Assembled::Need(_) => {}
            Assembled::Continue(_) => s.client.write(CONTINUE).await?,
            Assembled::Command(command) => return Ok(Some(command)),
            Assembled::Bad { reply, fatal, .. } => {
                if fatal {
                    tracing::warn!(http, "the client broke the protocol before login; closing");
                    let _ = s.client.write(&reply).await;
                    return Err(if http {
                        Closed::HttpRequest
                    } else {
                        Closed::ProtocolViolation
                    }
                    .into());
                }
                s.client.write(&reply).await?;
                return Ok(None);
            }
        }
    }
}

/// The client's next line. While an upstream connection kept from a
/// refused login is pending it is watched: if the server speaks (an
/// untagged `* OK`, a `* BYE` as it times the connection out) or closes,
/// that connection is dropped and the next login opens a fresh one; the
/// client's session goes on.
async fn read_line(
    s: &mut Session,
    max: usize,
    pending: &mut Pending,
) -> Result<Option<Vec<u8>>, SessionEnd> {
    if let Some((link, _)) = pending {
        match s.client.read_line_watching(max, link).await {
            Ok(line) => return Ok(line?),
            Err(e) => {
                tracing::debug!(cause = %e, "the upstream kept after a refused login spoke; dropping it");
                *pending = None;
            }
        }
    }
    Ok(s.client.read_line(max).await?)
}

/// The upstream failed: the client hears `* BYE [UNAVAILABLE]`, the
/// session ends.
async fn temporary(s: &mut Session, e: UpstreamError) -> SessionEnd {
    let _ = s.client.write(UNAVAILABLE).await;
    SessionEnd::Upstream(e)
}
