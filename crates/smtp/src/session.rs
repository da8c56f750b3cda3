//! The tokio driver of one SMTP session: it owns both sockets, their
//! buffers and deadlines, and executes what the `proto` machines decide.
//!
//! Phases: connect upstream (TLS or STARTTLS, EHLO) → greet the client →
//! client commands one at a time, MAIL/RCPT/RSET/DATA forwarded and the
//! upstream's replies relayed → message data streamed through the DATA
//! scanner.
//!
//! Invariants kept here:
//! - the client's 354 is the upstream's 354, relayed after it arrived;
//! - the reply to the end of data is the upstream's own reply; if the
//!   upstream dies or times out the client gets `451 4.4.2`, never `250`;
//! - a message the client did not finish (disconnect, bare CR/LF, too big)
//!   is never terminated upstream: the upstream connection is dropped;
//! - no password or SASL payload is ever logged.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use postern_core::config::{ListenMap, Route, Security, UpstreamAuth};
use postern_core::credentials::{fresh_msg_id, ClientAuth, CredentialSource, Refusal};
use postern_core::io::{Conn, LineRead, Stream, READ_BUFFER};
use postern_core::limits::{self, Limits, Timeouts};
use postern_core::server::{Frontend, SessionFuture, SetupError};
use postern_core::session::{serve_client, SessionEnd as End};
use postern_core::tls::RouteTls;
use postern_core::upstream::{self, TlsTarget, UpstreamError};
use tokio::net::TcpStream;
use tracing::Instrument;

use crate::proto::client::{Action, ClientSession, ListenTls, LocalAuth, LoginOutcome};
use crate::proto::data::{DataScanner, Scan};
use crate::proto::ehlo::Policy;
use crate::proto::reply::{Reply, ReplyBuilder, MAX_REPLY_LINE};
use crate::proto::upstream::{Step, UpstreamSetup};

/// The name postern gives itself in greetings and EHLO replies.
const HOSTNAME: &str = "postern";

#[derive(Debug)]
struct RouteContext {
    name: String,
    listen: ListenMap,
    acceptor: Option<Arc<rustls::ServerConfig>>,
    upstream: postern_core::config::Upstream,
    tls: Option<TlsTarget>,
    credentials: CredentialSource,
    limits: Limits,
    timeouts: Timeouts,
}

/// The SMTP front end of one route.
#[derive(Debug, Clone)]
pub struct SmtpFrontend {
    ctx: Arc<RouteContext>,
}

impl SmtpFrontend {
    /// Prepares a route: builds its TLS configurations once.
    pub fn new(route: &Route, timeouts: Timeouts, limits: Limits) -> Result<Self, SetupError> {
        let listen = route.listen.0.clone();
        let RouteTls {
            listen: acceptor,
            upstream: tls,
        } = RouteTls::prepare(route)?;
        Ok(Self {
            ctx: Arc::new(RouteContext {
                name: route.name.clone(),
                listen,
                acceptor,
                upstream: route.upstream.clone(),
                tls,
                credentials: CredentialSource::from_config(&route.credentials)
                    .map_err(SetupError::Credentials)?,
                limits,
                timeouts,
            }),
        })
    }
}

impl Frontend for SmtpFrontend {
    fn refusal(&self) -> &'static [u8] {
        b"554 5.7.1 Access denied\r\n"
    }

    fn busy(&self) -> &'static [u8] {
        b"421 4.7.0 postern: too many connections; try again later\r\n"
    }

    fn session(&self, stream: TcpStream, peer: SocketAddr) -> SessionFuture {
        let ctx = self.ctx.clone();
        let span = tracing::info_span!("smtp", route = %ctx.name, client = %peer);
        Box::pin(
            async move {
                let implicit = (ctx.listen.security == Security::Tls)
                    .then_some(ctx.acceptor.as_ref())
                    .flatten();
                serve_client(
                    stream,
                    implicit,
                    &ctx.timeouts,
                    &ctx.upstream.address,
                    async |client, user| run(&ctx, client, peer, user).await,
                )
                .await;
            }
            .instrument(span),
        )
    }
}

const BLOCKED: &[u8] =
    b"421 4.7.0 postern: too many failed logins from your address; try again later\r\n";
const DEVICE_REFUSED: &[u8] =
    b"421 4.7.0 postern: the mail server is refusing this device's account for now; try again later\r\n";
const TOO_BIG_CLOSED: &[u8] =
    b"421 4.3.4 postern: the mail server connection was closed to refuse the oversized message; reconnect to send more\r\n";
const UPSTREAM_LOST: &[u8] =
    b"421 4.4.2 postern: the connection to the mail server was lost; closing\r\n";

async fn run(
    ctx: &RouteContext,
    client: &mut Conn,
    peer: SocketAddr,
    user: &mut Option<String>,
) -> End {
    if ctx.credentials.address_blocked(peer.ip()) {
        let _ = write_client(client, BLOCKED).await;
        return End::Closed("address blocked after failed logins");
    }
    let (up, setup) = match connect(ctx).await {
        Ok(x) => x,
        Err((e, on_tls)) => {
            let msg: &[u8] = if on_tls {
                b"421 4.7.0 postern: no secure connection to the mail server is possible; try again later\r\n"
            } else {
                b"421 4.4.1 postern: the mail server is not available; try again later\r\n"
            };
            let _ = write_client(client, msg).await;
            return End::Upstream(e);
        }
    };
    tracing::debug!(tls = ?up.stream().tls_version(), "upstream ready");
    let mut setup = setup;
    // A device identified by its address logs in with its stored
    // credentials now; a refusal is temporary for the device, and the
    // account backs off so the provider does not lock it.
    let mut up = up;
    let device = match ctx.credentials.device(peer.ip()) {
        None => false,
        Some(Err(_)) => {
            let _ = write_client(client, DEVICE_REFUSED).await;
            return End::Closed("device account in backoff");
        }
        Some(Ok(resolved)) => {
            let first = setup.authenticate(resolved.upstream.clone());
            let (conn, step) = match drive(ctx, up, &mut setup, first).await {
                Ok(x) => x,
                Err((e, _)) => {
                    let _ = write_client(client, UPSTREAM_LOST).await;
                    return End::Upstream(e);
                }
            };
            up = conn;
            let name = resolved.upstream.user().to_owned();
            match (step, resolved.account) {
                (Step::Authenticated, Some(id)) => {
                    ctx.credentials.upstream_accepted(id);
                    tracing::info!(user = %name, "device logged in upstream with stored credentials");
                    *user = Some(name);
                    true
                }
                (step, id) => {
                    if let Some(id) = id {
                        ctx.credentials.upstream_rejected(id);
                    }
                    tracing::warn!(user = %name, ?step, "the upstream refused a device's stored credentials");
                    let _ = write_client(client, DEVICE_REFUSED).await;
                    return End::Closed("device credentials refused upstream");
                }
            }
        }
    };
    let mut up = Some(up);
    // What a client hears if it goes on after the upstream was dropped.
    let mut lost: &'static [u8] = UPSTREAM_LOST;
    let policy = Policy {
        max_size: ctx.limits.message_size,
        max_recipients: ctx.limits.max_recipients,
        auth: "",
        offer_starttls: false,
    };
    let mut session = ClientSession::new(
        setup.extensions().clone(),
        policy,
        HOSTNAME,
        ListenTls {
            starttls: ctx.listen.security == Security::Starttls,
            active: client.stream().is_tls(),
            required_for_auth: ctx.listen.requires_tls_for_auth(),
        },
        LocalAuth {
            required: ctx.upstream.auth != UpstreamAuth::None,
            passwords: ctx.credentials.offers_login(),
            challenge: ctx.credentials.offers_challenges().then(fresh_msg_id),
            device,
        },
    );
    // An early talker sends before the greeting: a spam bot or a
    // desynchronised client. Real clients wait.
    if client.has_pending_input().await {
        if postern_core::sniff::looks_like_tls(client.buffered()) {
            // A TLS client on a plain port: nothing it could read.
            return End::Closed("TLS handshake on a plain port");
        }
        let _ = write_client(
            client,
            b"554 5.5.1 postern: protocol error: data sent before the greeting; closing\r\n",
        )
        .await;
        return End::Closed("client talked before the greeting");
    }
    if let Err(why) = write_client(client, b"220 postern ESMTP gateway ready\r\n").await {
        return End::Closed(why);
    }

    loop {
        let line = match client
            .read_line_within(session.max_line(), ctx.timeouts.client_idle)
            .await
        {
            Ok(Some(line)) => line,
            Ok(None) => {
                let a = session.on_too_long();
                if let Action::Reply(r) = a {
                    if let Err(why) = write_client(client, &r).await {
                        return End::Closed(why);
                    }
                }
                continue;
            }
            Err(why) => return End::Closed(why),
        };
        let mut action = session.on_line(&line);
        // An action may lead to another (a forwarded command's reply).
        loop {
            match action {
                Action::Reply(bytes) => {
                    if let Err(why) = write_client(client, &bytes).await {
                        return End::Closed(why);
                    }
                    break;
                }
                Action::Close(bytes) => {
                    tracing::warn!("the client sent an HTTP request; closing");
                    let _ = write_client(client, bytes).await;
                    return End::Closed("HTTP request on an SMTP port");
                }
                Action::Quit => {
                    if let Some(mut conn) = up.take() {
                        // Best effort: the mail is already accepted or not;
                        // a failing QUIT changes nothing for the client.
                        let _ = tokio::time::timeout(Duration::from_secs(5), async {
                            conn.write_all(b"QUIT\r\n").await?;
                            conn.read_line(MAX_REPLY_LINE).await
                        })
                        .await;
                    }
                    let _ = write_client(client, b"221 2.0.0 Bye\r\n").await;
                    return End::Quit;
                }
                Action::StartTls => {
                    // CVE-2011-0411: anything pipelined after STARTTLS was
                    // sent in clear; it must not be read as coming from
                    // inside TLS.
                    if !client.buffered().is_empty() {
                        tracing::warn!("the client sent more after STARTTLS in the same packet (command injection?); closing");
                        return End::Closed("bytes after STARTTLS");
                    }
                    if let Err(why) =
                        write_client(client, b"220 2.0.0 Ready to start TLS\r\n").await
                    {
                        return End::Closed(why);
                    }
                    let Some(config) = &ctx.acceptor else {
                        return End::Closed("internal: STARTTLS without a certificate");
                    };
                    if client
                        .upgrade_server(config, ctx.timeouts.tls_handshake)
                        .await
                        .is_err()
                    {
                        return End::Closed("TLS handshake with the client failed");
                    }
                    session.on_tls();
                    break;
                }
                Action::Login(login) => {
                    let Some(conn) = up.take() else {
                        let _ = write_client(client, lost).await;
                        return End::Closed("upstream lost earlier");
                    };
                    let outcome =
                        match login_upstream(ctx, conn, &mut setup, login, peer, user).await {
                            Ok((conn, Some(outcome))) => {
                                up = Some(conn);
                                outcome
                            }
                            Ok((_, None)) => {
                                let _ = write_client(client, BLOCKED).await;
                                return End::Closed("address blocked after failed logins");
                            }
                            Err(e) => {
                                let _ = write_client(client, UPSTREAM_LOST).await;
                                return End::Upstream(e);
                            }
                        };
                    if let Err(why) = write_client(client, session.on_login(outcome)).await {
                        return End::Closed(why);
                    }
                    break;
                }
                Action::Forward(fwd) => {
                    let Some(conn) = up.as_mut() else {
                        let _ = write_client(client, lost).await;
                        return End::Closed("upstream lost earlier");
                    };
                    let reply = match command(conn, &fwd.line, ctx.timeouts.upstream_reply).await {
                        Ok(r) => r,
                        Err(e) => {
                            let _ = write_client(client, UPSTREAM_LOST).await;
                            return End::Upstream(e);
                        }
                    };
                    action = session.on_upstream(fwd.kind, &reply);
                }
                Action::Data(go_ahead) => {
                    let Some(conn) = up.as_mut() else {
                        let _ = write_client(client, lost).await;
                        return End::Closed("upstream lost earlier");
                    };
                    if let Err(why) = write_client(client, &go_ahead).await {
                        return End::Closed(why);
                    }
                    let started = Instant::now();
                    let rcpts = session.accepted_rcpts();
                    let outcome = relay_data(client, conn, session.max_size(), &ctx.timeouts).await;
                    session.on_message_done();
                    let ms = started.elapsed().as_millis() as u64;
                    let answer: Cow<'static, [u8]> = match outcome {
                        DataOutcome::Relayed { reply, bytes } => {
                            tracing::info!(
                                rcpts,
                                bytes,
                                code = reply.code(),
                                ms,
                                "message relayed"
                            );
                            Cow::Owned(reply.sanitized())
                        }
                        DataOutcome::UpstreamLost { error, bytes } => {
                            tracing::warn!(rcpts, bytes, ms, cause = %error, upstream = %ctx.upstream.address, "message NOT delivered: upstream lost during DATA");
                            up = None;
                            Cow::Borrowed(b"451 4.4.2 postern: the connection to the mail server was lost; the message was not accepted, try again\r\n")
                        }
                        DataOutcome::TooBig { bytes } => {
                            tracing::warn!(
                                rcpts,
                                bytes,
                                ms,
                                "message refused: larger than the SIZE limit"
                            );
                            // The only way to abandon DATA upstream is to
                            // drop the connection; the next command is told.
                            up = None;
                            lost = TOO_BIG_CLOSED;
                            Cow::Borrowed(
                                b"552 5.3.4 Message size exceeds fixed maximum message size\r\n",
                            )
                        }
                        DataOutcome::BareLineEnding { bytes } => {
                            tracing::warn!(rcpts, bytes, ms, "message refused: bare CR or LF in the data; upstream dropped without end of data");
                            let _ = write_client(
                                client,
                                b"521 5.5.2 postern: bare CR or LF in the message data; message refused, closing\r\n",
                            )
                            .await;
                            return End::Closed("bare line ending in DATA");
                        }
                        DataOutcome::ClientGone { why, bytes } => {
                            tracing::warn!(
                                rcpts,
                                bytes,
                                ms,
                                why,
                                "client left during DATA; upstream dropped without end of data"
                            );
                            return End::Closed(why);
                        }
                    };
                    if let Err(why) = write_client(client, &answer).await {
                        return End::Closed(why);
                    }
                    break;
                }
            }
        }
    }
}

/// Checks a client's authentication and carries the resulting login to the
/// upstream with the route's mechanism. `None`: the address is blocked.
async fn login_upstream(
    ctx: &RouteContext,
    conn: Conn,
    setup: &mut UpstreamSetup,
    auth: ClientAuth,
    peer: SocketAddr,
    user: &mut Option<String>,
) -> Result<(Conn, Option<LoginOutcome>), UpstreamError> {
    let name = auth.user().to_owned();
    let resolved = match ctx.credentials.resolve(auth, peer.ip()) {
        Ok(r) => r,
        Err(refusal) => {
            tracing::warn!(user = %name, %refusal, "login refused by postern");
            let outcome = match refusal {
                Refusal::BadCredentials => {
                    // Slow down guessing; same delay whether or not the user exists.
                    tokio::time::sleep(limits::AUTH_FAILURE_DELAY).await;
                    Some(LoginOutcome::Rejected)
                }
                Refusal::AddressBlocked => None,
                _ => Some(LoginOutcome::TemporaryFailure),
            };
            return Ok((conn, outcome));
        }
    };
    let first = setup.authenticate(resolved.upstream);
    let (conn, step) = drive(ctx, conn, setup, first).await.map_err(|(e, _)| e)?;
    let stored = resolved.account;
    let outcome = match (step, stored) {
        (Step::Authenticated, _) => {
            if let Some(id) = stored {
                ctx.credentials.upstream_accepted(id);
            }
            tracing::info!(user = %name, stored = stored.is_some(), "logged in upstream");
            *user = Some(name);
            LoginOutcome::Accepted
        }
        // Stored credentials: a temporary, non-credential error, so the
        // client does not prompt for a password it does not own; back off.
        (Step::Refused(reply), Some(id)) => {
            ctx.credentials.upstream_rejected(id);
            tracing::warn!(user = %name, reply = %reply.summary(), "the upstream refused stored credentials; backing off");
            LoginOutcome::TemporaryFailure
        }
        (Step::Refused(reply), None) if reply.is_transient() => {
            tracing::warn!(user = %name, reply = %reply.summary(), "the upstream refused the login for now");
            LoginOutcome::TemporaryFailure
        }
        (Step::Refused(reply), None) => {
            tracing::warn!(user = %name, reply = %reply.summary(), "the upstream refused the login");
            LoginOutcome::Rejected
        }
        (other, _) => {
            return Err(UpstreamError::Protocol(format!(
                "internal: unexpected login step {other:?}"
            )))
        }
    };
    Ok((conn, Some(outcome)))
}

/// How one message's data went.
#[derive(Debug)]
enum DataOutcome {
    /// The upstream gave its final reply.
    Relayed { reply: Reply, bytes: u64 },
    /// The upstream failed; the client's data was read to its end.
    UpstreamLost { error: UpstreamError, bytes: u64 },
    /// Over the SIZE limit; the client's data was read to its end.
    TooBig { bytes: u64 },
    /// A bare CR or LF: the data cannot be framed safely.
    BareLineEnding { bytes: u64 },
    /// The client went away before the end of data.
    ClientGone { why: &'static str, bytes: u64 },
}

/// Streams one message from the client to the upstream.
///
/// Every chunk is scanned before a byte of it is sent; bytes whose meaning
/// depends on what follows (a trailing CR, a `.` at line start) are held
/// back until resolved. The terminator is sent only when the client sent it.
async fn relay_data(client: &mut Conn, up: &mut Conn, max_size: u64, t: &Timeouts) -> DataOutcome {
    let mut scan = DataScanner::new();
    let mut out: Vec<u8> = Vec::with_capacity(READ_BUFFER + 2);
    let mut failure: Option<UpstreamError> = None;
    let mut too_big = false;
    loop {
        if client.buffered().is_empty() {
            match tokio::time::timeout(t.data_block, client.fill()).await {
                Ok(Ok(0)) => {
                    return DataOutcome::ClientGone {
                        why: "client closed the connection",
                        bytes: scan.bytes(),
                    }
                }
                Ok(Ok(_)) => {}
                Ok(Err(_)) => {
                    return DataOutcome::ClientGone {
                        why: "client connection failed",
                        bytes: scan.bytes(),
                    }
                }
                Err(_) => {
                    return DataOutcome::ClientGone {
                        why: "client data timeout",
                        bytes: scan.bytes(),
                    }
                }
            }
        }
        let chunk = client.buffered();
        let held_before = scan.held();
        let (take, end) = match scan.feed(chunk) {
            Scan::End(n) => (n, true),
            Scan::BareLineEnding(_) => {
                return DataOutcome::BareLineEnding {
                    bytes: scan.bytes(),
                }
            }
            _ => (chunk.len(), false),
        };
        if scan.bytes() > max_size {
            too_big = true;
        }
        if failure.is_none() && !too_big {
            out.clear();
            out.extend_from_slice(held_before);
            out.extend_from_slice(&chunk[..take]);
            let send = if end {
                out.len()
            } else {
                out.len() - scan.held().len()
            };
            if send > 0 {
                let written = upstream::deadline(
                    up.write_timeout(),
                    "sending message data",
                    up.write_all(&out[..send]),
                )
                .await;
                if let Err(e) = written {
                    failure = Some(e);
                }
            }
        }
        client.consume(take);
        if end {
            break;
        }
    }
    let bytes = scan.bytes();
    if too_big {
        return DataOutcome::TooBig { bytes };
    }
    if let Some(error) = failure {
        return DataOutcome::UpstreamLost { error, bytes };
    }
    match read_reply(up, t.final_reply, "the reply to the end of data").await {
        Ok(reply) => DataOutcome::Relayed { reply, bytes },
        Err(error) => DataOutcome::UpstreamLost { error, bytes },
    }
}

/// Connects, secures and greets the upstream up to the point of login.
/// The flag says whether the failure was about TLS.
async fn connect(ctx: &RouteContext) -> Result<(Conn, UpstreamSetup), (UpstreamError, bool)> {
    let up = &ctx.upstream;
    let conn = match (&ctx.tls, up.security) {
        (Some(tls), Security::Tls) => upstream::connect_tls(&up.address, tls, &ctx.timeouts)
            .await
            .map_err(|e| {
                let tls = matches!(e, UpstreamError::Tls(_));
                (e, tls)
            })?,
        _ => Conn::new(Stream::Tcp(
            upstream::connect_tcp(&up.address, ctx.timeouts.connect)
                .await
                .map_err(|e| (e, false))?,
        )),
    };
    let mut conn = conn;
    conn.set_write_timeout(ctx.timeouts.write);
    let ehlo_name = match conn.stream().local_addr().map(|a| a.ip()) {
        Ok(IpAddr::V4(ip)) => format!("[{ip}]"),
        Ok(IpAddr::V6(ip)) => format!("[IPv6:{ip}]"),
        Err(_) => HOSTNAME.to_owned(),
    };
    let mut setup = UpstreamSetup::new(
        up.security,
        up.auth,
        ehlo_name,
        up.security == Security::Tls,
    );
    let first = setup.start();
    let (conn, step) = drive(ctx, conn, &mut setup, first).await?;
    match step {
        Step::Ready => Ok((conn, setup)),
        other => Err((
            UpstreamError::Protocol(format!("internal: unexpected step before login {other:?}")),
            false,
        )),
    }
}

/// Executes upstream steps until the machine needs the client again.
async fn drive(
    ctx: &RouteContext,
    mut up: Conn,
    setup: &mut UpstreamSetup,
    mut step: Step,
) -> Result<(Conn, Step), (UpstreamError, bool)> {
    loop {
        step = match step {
            Step::Read => {
                let reply = read_reply(&mut up, ctx.timeouts.upstream_reply, setup.phase())
                    .await
                    .map_err(|e| (e, false))?;
                setup.on_reply(&reply)
            }
            Step::Send(bytes) => {
                // The bytes may hold a password or digest: log the phase only.
                tracing::trace!(phase = setup.phase(), "sending to upstream");
                let reply = command(&mut up, &bytes, ctx.timeouts.upstream_reply)
                    .await
                    .map_err(|e| (e, false))?;
                setup.on_reply(&reply)
            }
            Step::StartTls => {
                let Some(tls) = &ctx.tls else {
                    return Err((
                        UpstreamError::Protocol(
                            "internal: STARTTLS without TLS settings".to_owned(),
                        ),
                        true,
                    ));
                };
                up = upstream::starttls(up, tls, &ctx.timeouts)
                    .await
                    .map_err(|e| (e, true))?;
                tracing::debug!(tls = ?up.stream().tls_version(), "upstream STARTTLS done");
                setup.on_tls()
            }
            Step::Fail(why) => return Err((UpstreamError::Protocol(why), setup.failed_on_tls())),
            done => return Ok((up, done)),
        }
    }
}

/// Sends one command and reads its complete reply.
async fn command(up: &mut Conn, line: &[u8], timeout: Duration) -> Result<Reply, UpstreamError> {
    // Anything already buffered was sent unasked: it would be taken as the
    // reply to this command and shift every later reply by one.
    if !up.buffered().is_empty() {
        return Err(UpstreamError::Protocol(
            "the server sent data nobody asked for (unsolicited reply)".to_owned(),
        ));
    }
    upstream::deadline(
        up.write_timeout(),
        "writing to the server",
        up.write_all(line),
    )
    .await?;
    read_reply(up, timeout, "a command reply").await
}

/// Reads one complete (possibly multi-line) reply under one deadline.
async fn read_reply(
    up: &mut Conn,
    timeout: Duration,
    phase: &'static str,
) -> Result<Reply, UpstreamError> {
    let read = async {
        let mut builder = ReplyBuilder::new();
        loop {
            let line = match up.read_line(MAX_REPLY_LINE).await? {
                LineRead::Line(l) => l,
                LineRead::TooLong => {
                    return Err(UpstreamError::Protocol(format!(
                        "the server sent a reply line longer than {MAX_REPLY_LINE} bytes during {phase}"
                    )))
                }
                _ => return Err(UpstreamError::Closed(phase)),
            };
            match builder.push(&line) {
                Ok(Some(reply)) => return Ok(reply),
                Ok(None) => {}
                Err(e) => return Err(UpstreamError::Protocol(format!("{e} during {phase}"))),
            }
        }
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(r) => r,
        Err(_) => Err(UpstreamError::Timeout(phase)),
    }
}

async fn write_client(client: &mut Conn, bytes: &[u8]) -> Result<(), &'static str> {
    client.write_within(bytes).await
}
