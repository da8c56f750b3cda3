//! What the fake servers share: the accept loop ([`Listener`]), the
//! per-connection stream and line reader ([`Link`]), the event log
//! ([`EventLog`]) and the session lifecycle ([`run_session`]). A fake
//! protocol implements [`Protocol`] (greeting, read a command, handle it,
//! forget state after TLS) and gets the rest:
//!
//! ```text
//!   accept ─> Connected ─(Tls: handshake)─> greeting ─> command loop ──> QUIT: close_notify, FIN
//!                                                        │        ▲    └─> else: ClosedWithoutQuit
//!                                         STLS/STARTTLS  └─ TLS ──┘        then always: Closed
//! ```

mod link;
mod listener;
mod log;

use std::future::Future;
use std::io;
use std::sync::Arc;

pub(crate) use link::{LineRules, Link};
pub(crate) use listener::Listener;
pub(crate) use log::{event_log_api, fake_event, Event, EventLog, SessionEvent};

/// How the fake secures its side of the connection.
#[derive(Clone, Debug)]
pub enum FakeSecurity {
    /// Plain TCP; STLS is not offered.
    Plain,
    /// Implicit TLS from the first byte (port 995 style).
    Tls(Arc<rustls::ServerConfig>),
    /// Plain first, STLS (RFC 2595 §4) / STARTTLS (RFC 3207) offered and
    /// upgrades with this config.
    Starttls(Arc<rustls::ServerConfig>),
}

/// What the command loop does after a command.
pub(crate) enum Step {
    Continue,
    /// QUIT answered: close cleanly.
    Quit,
    /// STLS/STARTTLS accepted: write these bytes in one go, then handshake.
    StartTls(Vec<u8>),
    /// Drop the connection now (scripted death, fatal violation).
    Die,
    /// Never answer again; wait for the client to leave.
    Hang,
}

/// How a session's command loop ended.
enum End {
    /// QUIT answered.
    Quit,
    /// EOF, I/O error, TLS failure, violation or scripted death.
    Dropped,
}

/// One fake protocol's session: its state plus the [`Link`] it talks over.
pub(crate) trait Protocol: Send {
    type Event: SessionEvent;

    /// The command that upgrades to TLS, as named in violations.
    const UPGRADE_VERB: &'static str;

    fn link(&mut self) -> &mut Link<Self::Event>;

    fn security(&self) -> &FakeSecurity;

    /// The greeting, CRLF included.
    fn greeting(&self) -> Vec<u8>;

    /// The next command line; `None` ends the session.
    fn read_command(&mut self) -> impl Future<Output = Option<String>> + Send;

    /// Answer one command.
    fn handle(&mut self, line: &str) -> impl Future<Output = io::Result<Step>> + Send;

    /// Forget everything learned before TLS (RFC 2595 §4, RFC 3207 §4.2).
    fn reset_after_tls(&mut self);
}

/// One connection from accept to close: `Connected`, the session, then
/// `ClosedWithoutQuit` unless it ended with QUIT, and always `Closed`,
/// recorded after the socket is gone.
pub(crate) async fn run_session<P: Protocol>(mut session: P) {
    let link = session.link();
    let log = link.log().clone();
    let id = link.id();
    log.push(id, P::Event::connected());
    // `serve` consumes the session and its socket, so the socket is closed
    // by the time it returns.
    let end = serve(session).await;
    if matches!(end, End::Dropped) {
        log.push(id, P::Event::closed_without_quit());
    }
    log.push(id, P::Event::closed());
}

async fn serve<P: Protocol>(mut session: P) -> End {
    if let FakeSecurity::Tls(config) = session.security().clone() {
        if !session.link().accept_tls(config).await {
            return End::Dropped;
        }
    }
    let greeting = session.greeting();
    if session.link().write(&greeting).await.is_err() {
        return End::Dropped;
    }
    loop {
        let Some(line) = session.read_command().await else {
            return End::Dropped;
        };
        let Ok(step) = session.handle(&line).await else {
            return End::Dropped;
        };
        match step {
            Step::Continue => {}
            Step::Quit => {
                session.link().shutdown().await;
                return End::Quit;
            }
            Step::Die => return End::Dropped,
            Step::Hang => {
                session.link().drain().await;
                return End::Dropped;
            }
            Step::StartTls(go_ahead) => {
                // The protocol only says yes on a plain Starttls session.
                let FakeSecurity::Starttls(config) = session.security().clone() else {
                    return End::Dropped;
                };
                if !session
                    .link()
                    .start_tls(P::UPGRADE_VERB, &go_ahead, config)
                    .await
                {
                    return End::Dropped;
                }
                session.reset_after_tls();
            }
        }
    }
}
