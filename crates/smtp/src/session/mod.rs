//! SMTP on the core session skeleton: the [`Protocol`] impl and the
//! command loop. postern greets and answers EHLO itself from the route's
//! snapshot of the upstream's extensions; the upstream connection is
//! opened only at AUTH, or — for devices and `auth: none` routes — at the
//! first command that needs it ([`upstream`]). Message data is streamed
//! through the DATA scanner ([`data`]).
//!
//! Invariants kept here:
//! - the client's 354 is the upstream's 354, relayed after it arrived;
//! - the reply to the end of data is the upstream's own reply to that end
//!   of data; anything the upstream says earlier, or no reply at all,
//!   gives `451 4.4.2`, never `250`;
//! - a message the client did not finish is never terminated upstream;
//! - once the upstream is dropped every command but QUIT gets `421`;
//! - no password or SASL payload is ever logged.

mod data;
mod upstream;

use std::ops::ControlFlow;

use postern_core::config::UpstreamAuth;
use postern_core::credentials::{fresh_msg_id, Resolved};
use postern_core::session::{Closed, Protocol, Route, Session, SessionEnd, Snapshot};

use crate::proto::client::{Action, ClientSession, LocalAuth};
use crate::proto::command::{self, Command};
use crate::proto::ehlo::{Extensions, Policy};
use upstream::Slot;

/// The name postern gives itself in greetings and EHLO replies.
const HOSTNAME: &str = "postern";

const BLOCKED: &[u8] =
    b"421 4.7.0 postern: too many failed logins from your address; try again later\r\n";
const DEVICE_REFUSED: &[u8] =
    b"421 4.7.0 postern: the mail server is refusing this device's account for now; try again later\r\n";
const UPSTREAM_LOST: &[u8] =
    b"421 4.4.2 postern: the connection to the mail server was lost; closing\r\n";

/// The SMTP protocol, as the session skeleton runs it.
#[derive(Debug)]
pub struct Smtp;

/// What every SMTP session of one route shares beyond the common route.
#[derive(Debug, Default)]
pub struct SmtpExtra {
    /// The upstream's extensions as the last session saw them (what EHLO
    /// advertises before the upstream is opened; conservative at first).
    extensions: Snapshot<Extensions>,
}

impl Protocol for Smtp {
    const NAME: &'static str = "smtp";
    type Extra = SmtpExtra;

    fn extra(_route: &postern_core::config::Route) -> SmtpExtra {
        SmtpExtra::default()
    }

    fn refusal() -> &'static [u8] {
        b"554 5.7.1 Access denied\r\n"
    }

    fn busy() -> &'static [u8] {
        b"421 4.7.0 postern: too many connections; try again later\r\n"
    }

    fn shutting_down() -> &'static [u8] {
        b"421 4.3.2 postern: shutting down; try again later\r\n"
    }

    fn blocked() -> &'static [u8] {
        BLOCKED
    }

    async fn probe(
        route: &Route<Smtp>,
        login: Option<postern_core::login::Login>,
    ) -> postern_core::probe::Probe {
        upstream::probe(route, login).await
    }

    async fn run(route: &Route<Smtp>, s: &mut Session) -> Result<(), SessionEnd> {
        // A device identified by its address uses its stored account; one
        // in backoff after upstream refusals is told so at once.
        let device = match route.credentials.device(s.peer.ip()) {
            None => None,
            Some(Ok(resolved)) => Some(resolved),
            Some(Err(_)) => {
                let _ = s.client.write(DEVICE_REFUSED).await;
                return Err(Closed::DeviceBackoff.into());
            }
        };
        let mut session = client_session(route, s, device.is_some());
        s.client
            .greet(
                b"220 postern ESMTP gateway ready\r\n",
                b"554 5.5.1 postern: protocol error: data sent before the greeting; closing\r\n",
            )
            .await?;
        let mut slot = Slot::default();
        loop {
            let line = match slot.next_line(s, session.max_line()).await? {
                Some(line) => line,
                None => {
                    if let Action::Reply(r) = session.on_too_long() {
                        s.client.write(&r).await?;
                    }
                    continue;
                }
            };
            if let Some(lost) = slot.lost() {
                // After the upstream was dropped only QUIT is answered normally.
                if !is_quit(&line) {
                    let _ = s.client.write(lost).await;
                    return Err(Closed::UpstreamLostEarlier.into());
                }
            }
            let action = session.on_line(&line);
            // Boxed: connecting, logging in and relaying a message are
            // freed once the command is done, so a session waiting for its
            // next command keeps only the loop's state (issue 14).
            if Box::pin(act(
                route,
                s,
                &mut session,
                &mut slot,
                device.as_ref(),
                action,
            ))
            .await?
            .is_break()
            {
                return Ok(());
            }
        }
    }
}

/// The client-facing machine for this session.
fn client_session(route: &Route<Smtp>, s: &Session, device: bool) -> ClientSession {
    let snapshot = route.extra.extensions.get().unwrap_or_default();
    let policy = Policy {
        max_size: route.limits.message_size,
        max_recipients: route.limits.max_recipients,
        auth: postern_core::sasl::Mechanisms::NONE,
        offer_starttls: false,
    };
    ClientSession::new(
        snapshot,
        policy,
        HOSTNAME,
        s.client.tls(),
        LocalAuth {
            required: route.auth != UpstreamAuth::None,
            passwords: route.credentials.offers_login(),
            challenge: route.credentials.offers_challenges().then(fresh_msg_id),
            device,
        },
    )
}

fn is_quit(line: &[u8]) -> bool {
    matches!(command::parse(line), Command::Quit)
}

/// Carries out one action of the client machine (and the actions that
/// follow from a forwarded command's reply). `Break` when the client quit.
async fn act(
    route: &Route<Smtp>,
    s: &mut Session,
    session: &mut ClientSession,
    slot: &mut Slot,
    device: Option<&Resolved>,
    mut action: Action,
) -> Result<ControlFlow<()>, SessionEnd> {
    loop {
        match action {
            Action::Reply(bytes) => s.client.write(&bytes).await?,
            Action::Close(bytes) => {
                tracing::warn!("the client sent an HTTP request; closing");
                let _ = s.client.write(bytes).await;
                return Err(Closed::HttpRequest.into());
            }
            Action::Quit => {
                // Best effort: the mail is already accepted or not.
                slot.goodbye().await;
                let _ = s.client.write(b"221 2.0.0 Bye\r\n").await;
                return Ok(ControlFlow::Break(()));
            }
            Action::StartTls => {
                s.client
                    .start_tls(b"220 2.0.0 Ready to start TLS\r\n")
                    .await?;
                session.on_tls();
            }
            Action::Login(auth) => {
                let outcome = slot.login(route, s, auth).await?;
                s.client.write(session.on_login(outcome)).await?;
            }
            Action::Forward(fwd) => {
                if let Some(next) = slot.forward(route, s, session, device, fwd).await? {
                    action = next;
                    continue;
                }
            }
            Action::Data(go_ahead) => data::message(route, s, session, slot, &go_ahead).await?,
        }
        return Ok(ControlFlow::Continue(()));
    }
}
