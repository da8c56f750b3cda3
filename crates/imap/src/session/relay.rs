//! The authenticated state: both directions at once (IMAP servers speak
//! unasked — IDLE, EXISTS, EXPUNGE — and clients pipeline), through the
//! two scanners of [`crate::proto::relay`], which find where responses and
//! commands start so that literals of any size stream through untouched.
//!
//! Nothing is held but a line's first words or a capability line being
//! rewritten. A server that stops inside a response gets the client
//! connection closed with nothing more written (never a completed
//! literal, never a synthetic tagged OK); a client that goes away makes
//! postern close the upstream.

use postern_core::io::Duplex;
use postern_core::metrics;
use postern_core::session::{Closed, Route, Session, SessionEnd};
use postern_core::upstream::{Link, UpstreamError};

use super::Imap;
use crate::proto::relay::{ClientOut, ClientScanner, Out, ServerScanner, Verb};

/// The state of one relay: both scanners and what postern owes the
/// client itself.
struct Relay {
    server: ServerScanner,
    client: ClientScanner,
    /// Replies postern makes itself (a refused COMPRESS), held until the
    /// server side is between responses.
    held: Vec<u8>,
    /// The client sent LOGOUT: the server closing is the normal end.
    logged_out: bool,
    /// The server's end of stream was seen while writing to it.
    server_eof: bool,
    /// Client bytes on their way upstream (reused).
    scratch: Vec<u8>,
}

/// Relays until the client logs out and the server closes (`Ok`) or the
/// session ends otherwise.
pub(super) async fn authenticated(
    route: &Route<Imap>,
    s: &mut Session,
    up: &mut Link,
) -> Result<(), SessionEnd> {
    let mut r = Relay {
        server: ServerScanner::new(),
        client: ClientScanner::new(),
        held: Vec::new(),
        logged_out: false,
        server_eof: false,
        scratch: Vec::new(),
    };
    // RFC 9051 §5.4: the autologout timer counts the client's silence
    // only; what the server pushes (IDLE updates) does not extend it.
    let idle = route.timeouts.client_idle;
    let mut client_deadline = tokio::time::Instant::now() + idle;
    let stop = s.client.stopping();
    let mut stopping = false;
    loop {
        to_client(route, s, up, &mut r).await?;
        flush_held(s, &mut r).await?;
        to_server(route, s, up, &mut r).await?;
        flush_held(s, &mut r).await?;
        if r.server_eof {
            to_client(route, s, up, &mut r).await?;
            return server_closed(up, &r);
        }
        // Shutting down: once neither side is inside a response or a
        // command, say BYE (RFC 9051 §7.1.5: a server may at any time)
        // and end; until then the relay goes on, within the grace period.
        let client_between = r.client.eof(s.client.conn().buffered().len()).is_ok();
        if stopping && r.server.at_boundary() && client_between && r.held.is_empty() {
            let _ = s
                .client
                .write(b"* BYE [UNAVAILABLE] postern is shutting down; try again later\r\n")
                .await;
            return Err(Closed::ShuttingDown.into());
        }
        tokio::select! {
            () = stop.cancelled(), if !stopping => stopping = true,
            () = tokio::time::sleep_until(client_deadline) => {
                if r.server.at_boundary() {
                    let _ = s.client.write(b"* BYE Autologout; idle for too long\r\n").await;
                }
                return Err(Closed::Idle.into());
            }
            read = s.client.conn().fill() => match read {
                Err(_) => return Err(Closed::ClientFailed.into()),
                Ok(0) => {
                    let unconsumed = s.client.conn().buffered().len();
                    if let Err(e) = r.client.eof(unconsumed) {
                        tracing::info!(cause = %e, "the client went away inside a command");
                    }
                    return Err(Closed::ClientGone.into());
                }
                Ok(_) => client_deadline = tokio::time::Instant::now() + idle,
            },
            read = up.conn().fill() => match read {
                Err(e) => return Err(UpstreamError::Io(e).into()),
                Ok(0) => return server_closed(up, &r),
                Ok(_) => {}
            },
        }
    }
}

/// The server closed its side (everything it sent before has been
/// forwarded as far as it could be).
fn server_closed(up: &mut Link, r: &Relay) -> Result<(), SessionEnd> {
    let unconsumed = up.conn().buffered().len();
    match r.server.eof(unconsumed) {
        // The server closed between responses: after the client's LOGOUT
        // that is the normal end; else the client has had everything the
        // server said (its `* BYE` included).
        Ok(()) if r.logged_out => Ok(()),
        Ok(()) => Err(UpstreamError::Closed("after a complete response").into()),
        Err(e) => {
            tracing::warn!(cause = %e, "the server stopped inside a response; closing the client without completing it");
            Err(UpstreamError::Closed("inside a response").into())
        }
    }
}

/// Writes postern's own replies once the server side is between
/// responses.
async fn flush_held(s: &mut Session, r: &mut Relay) -> Result<(), SessionEnd> {
    if r.server.at_boundary() && !r.held.is_empty() {
        s.client.write(&r.held).await?;
        r.held.clear();
    }
    Ok(())
}

/// Forwards what the server has sent, as far as it can be decided.
async fn to_client(
    route: &Route<Imap>,
    s: &mut Session,
    up: &mut Link,
    r: &mut Relay,
) -> Result<(), SessionEnd> {
    let mut relayed = 0u64;
    loop {
        let buf = up.conn().buffered();
        if buf.is_empty() {
            break;
        }
        let out = match r.server.scan(buf) {
            Ok(out) => out,
            Err(e) => {
                tracing::warn!(cause = %e, "the server's response cannot be relayed");
                return Err(UpstreamError::Protocol(e.to_string()).into());
            }
        };
        match out {
            Out::Pass(n) => {
                s.client.write(&buf[..n]).await?;
                up.conn().consume(n);
                relayed += n as u64;
            }
            Out::Completion(n) => {
                r.client.on_completion(&buf[..n]);
                s.client.write(&buf[..n]).await?;
                up.conn().consume(n);
                relayed += n as u64;
            }
            Out::Replace { len, with } => {
                s.client.write(&with).await?;
                up.conn().consume(len);
                relayed += with.len() as u64;
            }
            Out::NeedMore => break,
        }
    }
    if relayed > 0 {
        metrics::bytes(&route.name, "to_client", relayed);
        s.stats.bytes_to_client += relayed;
    }
    Ok(())
}

/// Forwards what the client has sent, as far as it can be decided;
/// commands postern refuses are answered (now, or once the server side is
/// between responses).
async fn to_server(
    route: &Route<Imap>,
    s: &mut Session,
    up: &mut Link,
    r: &mut Relay,
) -> Result<(), SessionEnd> {
    loop {
        let buf = s.client.conn().buffered();
        if buf.is_empty() {
            break;
        }
        let out = match r.client.scan(buf) {
            Ok(out) => out,
            Err(e) => {
                tracing::warn!(cause = %e, "the client's command cannot be relayed; closing");
                let _ = s
                    .client
                    .write(b"* BYE Protocol error: command too long\r\n")
                    .await;
                return Err(Closed::ProtocolViolation.into());
            }
        };
        let pass = match out {
            ClientOut::Pass(n) => n,
            ClientOut::Command { len, verb } => {
                r.logged_out |= verb == Verb::Logout;
                len
            }
            ClientOut::Refuse { len, reply, verb } => {
                tracing::info!(
                    command = verb.name(),
                    "refused after login: postern controls it"
                );
                s.client.conn().consume(len);
                if r.server.at_boundary() && r.held.is_empty() {
                    s.client.write(&reply).await?;
                } else {
                    r.held.extend_from_slice(&reply);
                }
                continue;
            }
            ClientOut::NeedMore => break,
        };
        // The bytes leave the client's buffer before they are written (the
        // write relays server bytes to the client meanwhile), through one
        // scratch buffer reused for the whole session.
        let mut bytes = std::mem::take(&mut r.scratch);
        bytes.clear();
        bytes.extend_from_slice(&s.client.conn().buffered()[..pass]);
        s.client.conn().consume(pass);
        let sent = forward(route, s, up, r, &bytes).await;
        r.scratch = bytes;
        sent?;
    }
    Ok(())
}

/// Writes client bytes upstream (no quiet check: the server may speak at
/// any time in this state), relaying what the server sends meanwhile: a
/// server that writes a long response before it reads the next command
/// must not deadlock with postern waiting on this write.
async fn forward(
    route: &Route<Imap>,
    s: &mut Session,
    up: &mut Link,
    r: &mut Relay,
    bytes: &[u8],
) -> Result<(), SessionEnd> {
    let limit = up.conn().write_timeout();
    let mut rest = bytes;
    loop {
        let reading = !r.server_eof;
        let step = up.within(limit, |c| c.write_or_fill(rest, reading)).await;
        let (written, read) = match step {
            Some(Ok(Duplex::Written)) => return Ok(()),
            Some(Ok(Duplex::Read { written, read })) => (written, read),
            Some(Err(e)) => return Err(unavailable(s, r, UpstreamError::Io(e)).await),
            None => {
                let e = UpstreamError::Timeout("writing to the server");
                return Err(unavailable(s, r, e).await);
            }
        };
        rest = &rest[written..];
        if read == 0 {
            r.server_eof = true;
        }
        to_client(route, s, up, r).await?;
        flush_held(s, r).await?;
    }
}

/// The upstream connection failed: `* BYE [UNAVAILABLE]` unless the
/// client is inside a relayed response (never complete it or write into
/// it).
async fn unavailable(s: &mut Session, r: &Relay, e: UpstreamError) -> SessionEnd {
    if r.server.at_boundary() {
        let _ = s.client.write(super::UNAVAILABLE).await;
    }
    e.into()
}
