//! The TRANSACTION state: one command at a time, in order. While postern
//! waits for the client it watches the upstream: anything the server says
//! unasked ends the session, so no reply is ever paired with the wrong
//! command.

use std::borrow::Cow;

use postern_core::metrics;
use postern_core::session::{Route, Session, SessionEnd};
use postern_core::upstream::{Link, UpstreamError};

use super::{temporary, Pop3};
use crate::proto::capa;
use crate::proto::command::{self, Command, Transaction, MAX_COMMAND_LINE};
use crate::proto::framer::{CommandFramer, StatusFramer};
use crate::proto::reply::{parse_status, sanitize_status, BodyEnd, Capabilities, Status};

/// Relays until QUIT (`Ok`) or the end of the session.
pub(super) async fn transaction(
    route: &Route<Pop3>,
    s: &mut Session,
    up: &mut Link,
) -> Result<(), SessionEnd> {
    let mut cmd = Vec::with_capacity(64);
    loop {
        let line = match s.client.read_line_watching(MAX_COMMAND_LINE, up).await {
            // RFC 1939 §3: an idle or vanished client never commits deletions.
            Ok(line) => line?,
            Err(e) => return Err(temporary(s, e).await),
        };
        let Some(line) = line else {
            s.client.write(b"-ERR Line too long\r\n").await?;
            continue;
        };
        let local: Cow<'static, [u8]> = match command::parse(&line) {
            Command::Transaction(tx) => {
                cmd.clear();
                tx.write_to(&mut cmd);
                let body = match tx {
                    Transaction::Retr(_) => Body::Message,
                    Transaction::Top(..) => Body::Part,
                    _ if tx.multiline() => Body::Listing,
                    _ => Body::None,
                };
                relay(route, s, up, &cmd, body).await?;
                continue;
            }
            Command::Capa => {
                relay_capa(s, up).await?;
                continue;
            }
            Command::Quit => return quit(s, up).await,
            Command::User(_) | Command::Pass(_) | Command::Apop(..) | Command::Auth { .. } => {
                Cow::Borrowed(b"-ERR Already logged in\r\n")
            }
            Command::Stls => Cow::Borrowed(b"-ERR STLS is not available after login\r\n"),
            Command::Empty => Cow::Borrowed(b"-ERR Empty command\r\n"),
            // Unknown verbs are answered here, not forwarded: guessing the
            // shape of an unknown reply would desynchronise the framing.
            Command::Invalid(why) => Cow::Owned(format!("-ERR {why}\r\n").into_bytes()),
        };
        s.client.write(&local).await?;
    }
}

/// What follows a positive reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    /// A status line alone.
    None,
    /// A listing (LIST, UIDL without an argument).
    Listing,
    /// A whole message (RETR): counted as retrieved.
    Message,
    /// The top of a message (TOP).
    Part,
}

/// Sends one command and relays its reply; a multi-line body is streamed.
async fn relay(
    route: &Route<Pop3>,
    s: &mut Session,
    up: &mut Link,
    cmd: &[u8],
    body: Body,
) -> Result<(), SessionEnd> {
    let status = match up.command(cmd, CommandFramer, "a command reply").await {
        Ok(status) => status,
        Err(e) => return Err(temporary(s, e).await),
    };
    s.client.write(&sanitize_status(&status)).await?;
    if body != Body::None && matches!(parse_status(&status), Some(Status::Ok(_))) {
        let bytes = relay_body(route, s, up).await?;
        if body != Body::Listing {
            metrics::bytes(&route.name, "to_client", bytes);
            s.stats.bytes_to_client += bytes;
        }
        if body == Body::Message {
            metrics::message(&route.name, "retrieved");
            s.stats.messages += 1;
        }
    }
    Ok(())
}

/// Streams a multi-line body to the client up to and including the
/// server's own terminator. Nothing is collected: each chunk read is
/// written on. If the server stops early the error closes the client.
/// Returns the bytes relayed.
async fn relay_body(
    route: &Route<Pop3>,
    s: &mut Session,
    up: &mut Link,
) -> Result<u64, SessionEnd> {
    let mut end = BodyEnd::new();
    let mut relayed = 0u64;
    loop {
        if up.conn().buffered().is_empty() {
            let n = up
                .fill(route.timeouts.upstream_reply, "a message transfer")
                .await?;
            if n == 0 {
                return Err(UpstreamError::Closed("in the middle of a multi-line reply").into());
            }
        }
        let chunk = up.conn().buffered();
        let (take, done) = match end.feed(chunk) {
            Some(n) => (n, true),
            None => (chunk.len(), false),
        };
        s.client.write(&chunk[..take]).await?;
        up.conn().consume(take);
        relayed += take as u64;
        if done {
            return Ok(relayed);
        }
    }
}

/// CAPA after login: the server's list, rewritten (see [`capa::after_login`]).
async fn relay_capa(s: &mut Session, up: &mut Link) -> Result<(), SessionEnd> {
    let reply = match up
        .command(b"CAPA\r\n", StatusFramer::new(true), "CAPA")
        .await
    {
        Ok(r) => r,
        Err(e) => return Err(temporary(s, e).await),
    };
    let answer = match parse_status(&reply.status) {
        Some(Status::Ok(_)) => {
            capa::after_login(&Capabilities::parse(reply.body.iter().map(Vec::as_slice)))
        }
        _ => b"-ERR CAPA is not supported by the mail server\r\n".to_vec(),
    };
    s.client.write(&answer).await?;
    Ok(())
}

/// QUIT after login: the server commits deletions (UPDATE state) and its
/// answer, good or bad, is the client's answer.
async fn quit(s: &mut Session, up: &mut Link) -> Result<(), SessionEnd> {
    match up.command(b"QUIT\r\n", CommandFramer, "QUIT").await {
        Ok(status) => {
            let _ = s.client.write(&sanitize_status(&status)).await;
            Ok(())
        }
        Err(e) => {
            let _ = s
                .client
                .write(b"-ERR [SYS/TEMP] The mail server did not confirm QUIT; deletions may not have been made\r\n")
                .await;
            Err(e.into())
        }
    }
}
