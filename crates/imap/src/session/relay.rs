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

use postern_core::metrics;
use postern_core::session::{Closed, Route, Session, SessionEnd};
use postern_core::upstream::{Link, UpstreamError};

use super::Imap;
use crate::proto::relay::{ClientOut, ClientScanner, Out, ServerScanner, Verb};

/// Relays until the client logs out and the server closes (`Ok`) or the
/// session ends otherwise.
pub(super) async fn authenticated(
    route: &Route<Imap>,
    s: &mut Session,
    up: &mut Link,
) -> Result<(), SessionEnd> {
    let mut server = ServerScanner::new();
    let mut client = ClientScanner::new();
    // Replies postern makes itself (a refused COMPRESS), held until the
    // server side is between responses.
    let mut held: Vec<u8> = Vec::new();
    let idle = route.timeouts.client_idle;
    let mut logged_out = false;
    loop {
        to_client(route, s, up, &mut server, &mut client).await?;
        if server.at_boundary() && !held.is_empty() {
            s.client.write(&held).await?;
            held.clear();
        }
        to_server(s, up, &mut client, &server, &mut held, &mut logged_out).await?;
        if server.at_boundary() && !held.is_empty() {
            s.client.write(&held).await?;
            held.clear();
        }
        tokio::select! {
            read = tokio::time::timeout(idle, s.client.conn().fill()) => match read {
                Err(_) => {
                    // RFC 9051 §5.4: the autologout timer.
                    if server.at_boundary() {
                        let _ = s.client.write(b"* BYE Autologout; idle for too long\r\n").await;
                    }
                    return Err(Closed::Idle.into());
                }
                Ok(Err(_)) => return Err(Closed::ClientFailed.into()),
                Ok(Ok(0)) => {
                    let unconsumed = s.client.conn().buffered().len();
                    if let Err(e) = client.eof(unconsumed) {
                        tracing::info!(cause = %e, "the client went away inside a command");
                    }
                    return Err(Closed::ClientGone.into());
                }
                Ok(Ok(_)) => {}
            },
            read = up.conn().fill() => match read {
                Err(e) => return Err(UpstreamError::Io(e).into()),
                Ok(0) => {
                    let unconsumed = up.conn().buffered().len();
                    return match server.eof(unconsumed) {
                        // The server closed between responses: after the
                        // client's LOGOUT that is the normal end; else the
                        // client has had everything the server said
                        // (its `* BYE` included).
                        Ok(()) if logged_out => Ok(()),
                        Ok(()) => Err(UpstreamError::Closed("after a complete response").into()),
                        Err(e) => {
                            tracing::warn!(cause = %e, "the server stopped inside a response; closing the client without completing it");
                            Err(UpstreamError::Closed("inside a response").into())
                        }
                    };
                }
                Ok(_) => {}
            },
        }
    }
}

/// Forwards what the server has sent, as far as it can be decided.
async fn to_client(
    route: &Route<Imap>,
    s: &mut Session,
    up: &mut Link,
    server: &mut ServerScanner,
    client: &mut ClientScanner,
) -> Result<(), SessionEnd> {
    let mut relayed = 0u64;
    loop {
        let buf = up.conn().buffered();
        if buf.is_empty() {
            break;
        }
        let out = match server.scan(buf) {
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
                client.on_completion(&buf[..n]);
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
    s: &mut Session,
    up: &mut Link,
    client: &mut ClientScanner,
    server: &ServerScanner,
    held: &mut Vec<u8>,
    logged_out: &mut bool,
) -> Result<(), SessionEnd> {
    loop {
        let buf = s.client.conn().buffered();
        if buf.is_empty() {
            break;
        }
        let out = match client.scan(buf) {
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
        match out {
            ClientOut::Pass(n) => {
                let bytes = buf[..n].to_vec();
                s.client.conn().consume(n);
                forward(s, up, &bytes).await?;
            }
            ClientOut::Command { len, verb } => {
                if verb == Verb::Logout {
                    *logged_out = true;
                }
                let bytes = buf[..len].to_vec();
                s.client.conn().consume(len);
                forward(s, up, &bytes).await?;
            }
            ClientOut::Refuse { len, reply, verb } => {
                tracing::info!(
                    command = verb.name(),
                    "refused after login: postern controls it"
                );
                s.client.conn().consume(len);
                if server.at_boundary() && held.is_empty() {
                    s.client.write(&reply).await?;
                } else {
                    held.extend_from_slice(&reply);
                }
            }
            ClientOut::NeedMore => break,
        }
    }
    Ok(())
}

/// Writes client bytes upstream (no quiet check: the server may speak at
/// any time in this state).
async fn forward(s: &mut Session, up: &mut Link, bytes: &[u8]) -> Result<(), SessionEnd> {
    match up.write_raw(bytes).await {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = s.client.write(super::UNAVAILABLE).await;
            Err(e.into())
        }
    }
}
