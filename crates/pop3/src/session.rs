//! The tokio driver of one POP3 session: it owns both sockets, their
//! buffers and deadlines, and executes what the `proto` machines decide.
//!
//! Phases: connect upstream (TLS, STLS, CAPA) → greet the client → client
//! AUTHORIZATION, each login carried upstream → TRANSACTION relay. The
//! greeting waits for the upstream so a client of an unreachable server gets
//! `-ERR [SYS/TEMP]` straight away, and so CAPA can tell what the server has.
//!
//! Invariants kept here:
//! - a multi-line reply reaches the client exactly as the server sent it,
//!   streamed chunk by chunk; if the server dies before its terminator the
//!   client connection is closed, never completed with a synthetic `.`;
//! - a client that goes away without QUIT makes postern drop the upstream
//!   without QUIT, so nothing is deleted (RFC 1939 §6);
//! - no password, digest or SASL payload is ever logged.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use postern_core::config::{ListenMap, Route, Security, UpstreamAuth};
use postern_core::credentials::{fresh_msg_id, CredentialSource, Refusal};
use postern_core::io::{Conn, LineRead, Stream};
use postern_core::limits::{self, Timeouts};
use postern_core::server::{Frontend, SessionFuture, SetupError};
use postern_core::session::{serve_client, SessionEnd as End};
use postern_core::tls::RouteTls;
use postern_core::upstream::{self, TlsTarget, UpstreamError};
use tokio::net::TcpStream;
use tracing::Instrument;

use crate::proto::apop::ApopGuard;
use crate::proto::capa;
use crate::proto::client::{self, Authorization, ListenTls, LocalAuth};
use crate::proto::command::{self, Command, MAX_COMMAND_LINE};
use crate::proto::reply::{
    parse_status, sanitize_status, unstuff, BodyEnd, Capabilities, RespCode, Status, MAX_COLLECTED,
    MAX_REPLY_LINE,
};
use crate::proto::upstream::{Step, UpstreamLogin};

/// What every session of one route shares.
#[derive(Debug)]
struct RouteContext {
    name: String,
    listen: ListenMap,
    acceptor: Option<Arc<rustls::ServerConfig>>,
    upstream: postern_core::config::Upstream,
    tls: Option<TlsTarget>,
    credentials: CredentialSource,
    apop: std::sync::Mutex<ApopGuard>,
    timeouts: Timeouts,
}

/// The POP3 front end of one route.
#[derive(Debug, Clone)]
pub struct Pop3Frontend {
    ctx: Arc<RouteContext>,
}

impl Pop3Frontend {
    /// Prepares a route: builds its TLS configurations once.
    pub fn new(route: &Route, timeouts: Timeouts) -> Result<Self, SetupError> {
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
                apop: std::sync::Mutex::new(ApopGuard::default()),
                timeouts,
            }),
        })
    }
}

impl Frontend for Pop3Frontend {
    fn refusal(&self) -> &'static [u8] {
        b"-ERR [SYS/PERM] Access denied\r\n"
    }

    fn busy(&self) -> &'static [u8] {
        b"-ERR [SYS/TEMP] Too many sessions; try again later\r\n"
    }

    fn session(&self, stream: TcpStream, peer: SocketAddr) -> SessionFuture {
        let ctx = self.ctx.clone();
        let span = tracing::info_span!("pop3", route = %ctx.name, client = %peer);
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

const APOP_PAUSED: &[u8] =
    b"-ERR [SYS/TEMP] Too many failed logins for this user; postern pauses them for a while\r\n";
const BLOCKED: &[u8] =
    b"-ERR [SYS/TEMP] Too many failed logins from your address; try again later\r\n";
const STORED_REFUSED: &[u8] =
    b"-ERR [SYS/TEMP] The mail server is refusing this account for now; try again later\r\n";

const TEMP_FAILURE: &[u8] =
    b"-ERR [SYS/TEMP] The mail server is not available; try again later\r\n";

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
    let (mut up, mut machine) = match connect(ctx).await {
        Ok(x) => x,
        Err(e) => {
            let _ = write_client(client, TEMP_FAILURE).await;
            return End::Upstream(e);
        }
    };
    tracing::debug!(tls = ?up.stream().tls_version(), "upstream ready");
    if let Some(ts) = machine.timestamp() {
        let fresh = ctx.apop.lock().map(|mut g| g.fresh(ts)).unwrap_or(false);
        if !fresh {
            let _ = write_client(client, TEMP_FAILURE).await;
            return End::Upstream(UpstreamError::Protocol(
                "the server repeated an APOP timestamp (a chosen-timestamp attack on APOP?); refusing to send a digest".to_owned(),
            ));
        }
    }
    // With local secrets postern is an APOP server itself: its greeting
    // carries a fresh msg-id timestamp (RFC 1939 §7).
    let timestamp = ctx.credentials.offers_challenges().then(fresh_msg_id);
    let greeting = match &timestamp {
        Some(ts) => format!(
            "+OK postern POP3 gateway ready {}\r\n",
            String::from_utf8_lossy(ts)
        ),
        None => "+OK postern POP3 gateway ready\r\n".to_owned(),
    };
    // An early talker sends before the greeting: real clients wait.
    if client.has_pending_input().await {
        if postern_core::sniff::looks_like_tls(client.buffered()) {
            // A TLS client on a plain port: nothing it could read.
            return End::Closed("TLS handshake on a plain port");
        }
        let _ = write_client(
            client,
            b"-ERR Protocol error: data sent before the greeting\r\n",
        )
        .await;
        return End::Closed("client talked before the greeting");
    }
    if let Err(why) = write_client(client, greeting.as_bytes()).await {
        return End::Closed(why);
    }
    let mut auth = Authorization::new(
        machine.capabilities().cloned(),
        ListenTls {
            starttls: ctx.listen.security == Security::Starttls,
            active: client.stream().is_tls(),
            required_for_auth: ctx.listen.requires_tls_for_auth(),
        },
        LocalAuth {
            passwords: ctx.credentials.offers_login(),
            timestamp,
        },
    );

    // AUTHORIZATION: every login the client gives is tried upstream.
    loop {
        let line = match client
            .read_line_within(auth.max_line(), ctx.timeouts.client_login)
            .await
        {
            Ok(Some(line)) => line,
            Ok(None) => {
                let step = auth.on_too_long();
                if let Err(why) = reply_step(client, step).await {
                    return End::Closed(why);
                }
                continue;
            }
            Err(why) => return End::Closed(why),
        };
        let login = match auth.on_line(&line) {
            client::Step::Login(login) => login,
            client::Step::Close(bytes) => {
                tracing::warn!("the client sent an HTTP request; closing");
                let _ = write_client(client, bytes).await;
                return End::Closed("HTTP request on a POP3 port");
            }
            client::Step::Quit => {
                // Nothing to commit before login; tell the server politely.
                let _ =
                    tokio::time::timeout(Duration::from_secs(2), up.write_all(b"QUIT\r\n")).await;
                let _ = write_client(client, b"+OK Bye\r\n").await;
                return End::Quit;
            }
            client::Step::StartTls => {
                // CVE-2011-0411: anything pipelined after STLS was sent in
                // clear; it must not be read as coming from inside TLS.
                if !client.buffered().is_empty() {
                    tracing::warn!("the client sent more after STLS in the same packet (command injection?); closing");
                    return End::Closed("bytes after STLS");
                }
                if let Err(why) = write_client(client, b"+OK Begin TLS negotiation\r\n").await {
                    return End::Closed(why);
                }
                let Some(acceptor) = &ctx.acceptor else {
                    return End::Closed("internal: STLS without a certificate");
                };
                if client
                    .upgrade_server(acceptor, ctx.timeouts.tls_handshake)
                    .await
                    .is_err()
                {
                    return End::Closed("TLS handshake with the client failed");
                }
                auth.on_tls();
                continue;
            }
            step => {
                if let Err(why) = reply_step(client, step).await {
                    return End::Closed(why);
                }
                continue;
            }
        };
        let name = login.user().to_owned();
        let resolved = match ctx.credentials.resolve(login, peer.ip()) {
            Ok(r) => r,
            Err(refusal) => {
                tracing::warn!(user = %name, %refusal, "login refused by postern");
                let answer: &[u8] = match refusal {
                    Refusal::BadCredentials => {
                        // Slow down guessing; same delay whether or not the user exists.
                        tokio::time::sleep(limits::AUTH_FAILURE_DELAY).await;
                        b"-ERR [AUTH] Authentication failed\r\n"
                    }
                    Refusal::AddressBlocked => {
                        let _ = write_client(client, BLOCKED).await;
                        return End::Closed("address blocked after failed logins");
                    }
                    _ => STORED_REFUSED,
                };
                if let Err(why) = write_client(client, answer).await {
                    return End::Closed(why);
                }
                continue;
            }
        };
        let account = resolved.account;
        let login = resolved.upstream;
        let apop_user = (ctx.upstream.auth == UpstreamAuth::Apop).then(|| login.user().to_owned());
        if let Some(u) = &apop_user {
            let allowed = ctx
                .apop
                .lock()
                .map(|g| g.allowed(u, Instant::now()))
                .unwrap_or(false);
            if !allowed {
                tracing::warn!(user = %name, "APOP logins for this user are paused after repeated failures");
                if let Err(why) = write_client(client, APOP_PAUSED).await {
                    return End::Closed(why);
                }
                continue;
            }
        }
        let first = machine.authenticate(login);
        let (conn, step) = match drive(ctx, up, &mut machine, first).await {
            Ok(x) => x,
            Err(e) => {
                let _ = write_client(client, TEMP_FAILURE).await;
                return End::Upstream(e);
            }
        };
        up = conn;
        match step {
            Step::LoggedIn => {
                if let (Some(u), Ok(mut g)) = (&apop_user, ctx.apop.lock()) {
                    g.succeeded(u);
                }
                if let Some(id) = account {
                    ctx.credentials.upstream_accepted(id);
                }
                tracing::info!(user = %name, stored = account.is_some(), "logged in upstream");
                *user = Some(name);
                if let Err(why) = write_client(client, b"+OK Logged in\r\n").await {
                    return End::Closed(why);
                }
                break;
            }
            Step::Refused(code) => {
                if let (Some(u), Ok(mut g)) = (&apop_user, ctx.apop.lock()) {
                    g.failed(u, Instant::now());
                }
                tracing::warn!(user = %name, code = ?code, stored = account.is_some(), "the upstream refused the login");
                let answer: &[u8] = match (code, account) {
                    // Stored credentials: a temporary, non-credential error,
                    // so the client does not prompt for a password it does
                    // not own; and back off so the provider does not lock
                    // the account.
                    (_, Some(id)) => {
                        ctx.credentials.upstream_rejected(id);
                        STORED_REFUSED
                    }
                    (code, None) => match code {
                    RespCode::InUse => b"-ERR [IN-USE] The mailbox is in use by another session\r\n",
                    RespCode::LoginDelay => b"-ERR [LOGIN-DELAY] Logged in too recently; try again later\r\n",
                    RespCode::SysTemp => b"-ERR [SYS/TEMP] The mail server has a temporary problem; try again later\r\n",
                    RespCode::SysPerm => b"-ERR [SYS/PERM] The mail server refused the login\r\n",
                    _ => b"-ERR [AUTH] Authentication failed\r\n",
                    },
                };
                if let Err(why) = write_client(client, answer).await {
                    return End::Closed(why);
                }
            }
            other => {
                let _ = write_client(client, TEMP_FAILURE).await;
                return End::Upstream(UpstreamError::Protocol(format!(
                    "internal: unexpected login step {other:?}"
                )));
            }
        }
    }

    transaction(client, &mut up, &ctx.timeouts).await
}

/// Connects, secures and greets the upstream up to the point of login.
async fn connect(ctx: &RouteContext) -> Result<(Conn, UpstreamLogin), UpstreamError> {
    let up = &ctx.upstream;
    let conn = match (&ctx.tls, up.security) {
        (Some(tls), Security::Tls) => {
            upstream::connect_tls(&up.address, tls, &ctx.timeouts).await?
        }
        _ => Conn::new(Stream::Tcp(
            upstream::connect_tcp(&up.address, ctx.timeouts.connect).await?,
        )),
    };
    let mut conn = conn;
    conn.set_write_timeout(ctx.timeouts.write);
    let mut machine = UpstreamLogin::new(up.security, up.auth);
    let first = machine.start();
    let (conn, step) = drive(ctx, conn, &mut machine, first).await?;
    match step {
        Step::Ready => Ok((conn, machine)),
        other => Err(UpstreamError::Protocol(format!(
            "internal: unexpected step before login {other:?}"
        ))),
    }
}

/// Executes upstream steps until the machine needs the client again.
async fn drive(
    ctx: &RouteContext,
    mut up: Conn,
    machine: &mut UpstreamLogin,
    mut step: Step,
) -> Result<(Conn, Step), UpstreamError> {
    loop {
        step = match step {
            Step::Read => {
                let (status, body) = read_reply(
                    &mut up,
                    machine.expects_body(),
                    machine.phase(),
                    &ctx.timeouts,
                )
                .await?;
                machine.on_reply(&status, &body)
            }
            Step::Send(bytes) => {
                // The bytes may hold a password or digest: log the phase only.
                tracing::trace!(phase = machine.phase(), "sending to upstream");
                write_upstream(&mut up, &bytes).await?;
                let (status, body) = read_reply(
                    &mut up,
                    machine.expects_body(),
                    machine.phase(),
                    &ctx.timeouts,
                )
                .await?;
                machine.on_reply(&status, &body)
            }
            Step::StartTls => {
                let Some(tls) = &ctx.tls else {
                    return Err(UpstreamError::Protocol(
                        "internal: STLS without TLS settings".to_owned(),
                    ));
                };
                up = upstream::starttls(up, tls, &ctx.timeouts).await?;
                tracing::debug!(tls = ?up.stream().tls_version(), "upstream STLS done");
                machine.on_tls()
            }
            Step::Fail(why) => return Err(UpstreamError::Protocol(why)),
            done => return Ok((up, done)),
        }
    }
}

/// Reads a status line and, when positive and `body` is wanted, the whole
/// (small, bounded) multi-line body, unstuffed.
async fn read_reply(
    up: &mut Conn,
    body: bool,
    phase: &'static str,
    t: &Timeouts,
) -> Result<(Vec<u8>, Vec<Vec<u8>>), UpstreamError> {
    let status = read_upstream_line(up, phase, t).await?;
    let mut lines = Vec::new();
    if body && matches!(parse_status(&status), Some(Status::Ok(_))) {
        let mut total = 0;
        loop {
            let line = read_upstream_line(up, phase, t).await?;
            if line == b".\r\n" {
                break;
            }
            total += line.len();
            if total > MAX_COLLECTED || !line.ends_with(b"\r\n") {
                return Err(UpstreamError::Protocol(format!(
                    "the server's multi-line reply to {phase} is malformed or too long"
                )));
            }
            lines.push(unstuff(command::strip_eol(&line)).to_vec());
        }
    }
    Ok((status, lines))
}

async fn read_upstream_line(
    up: &mut Conn,
    phase: &'static str,
    t: &Timeouts,
) -> Result<Vec<u8>, UpstreamError> {
    match upstream::deadline(t.upstream_reply, phase, up.read_line(MAX_REPLY_LINE)).await? {
        LineRead::Line(l) => Ok(l),
        LineRead::TooLong => Err(UpstreamError::Protocol(format!(
            "the server sent a line longer than {MAX_REPLY_LINE} bytes during {phase}"
        ))),
        LineRead::Eof => Err(UpstreamError::Closed(phase)),
        _ => Err(UpstreamError::Protocol("unreadable reply".to_owned())),
    }
}

async fn write_upstream(up: &mut Conn, bytes: &[u8]) -> Result<(), UpstreamError> {
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
        up.write_all(bytes),
    )
    .await
}

async fn write_client(client: &mut Conn, bytes: &[u8]) -> Result<(), &'static str> {
    client.write_within(bytes).await
}

async fn reply_step(client: &mut Conn, step: client::Step) -> Result<(), &'static str> {
    match step {
        client::Step::Reply(bytes) => write_client(client, &bytes).await,
        _ => Ok(()),
    }
}

/// The TRANSACTION state: relay, one command at a time, in order.
async fn transaction(client: &mut Conn, up: &mut Conn, t: &Timeouts) -> End {
    let mut cmd = Vec::with_capacity(64);
    loop {
        let line = match client
            .read_line_within(MAX_COMMAND_LINE, t.client_idle)
            .await
        {
            Ok(Some(line)) => line,
            Ok(None) => {
                if let Err(why) = write_client(client, b"-ERR Line too long\r\n").await {
                    return End::Closed(why);
                }
                continue;
            }
            // RFC 1939 §3: an idle or vanished client never commits deletions.
            Err(why) => return End::Closed(why),
        };
        let local: Cow<'static, [u8]> = match command::parse(&line) {
            Command::Transaction(tx) => {
                cmd.clear();
                tx.write_to(&mut cmd);
                if let Err(end) = relay(client, up, &cmd, tx.multiline(), t).await {
                    return end;
                }
                continue;
            }
            Command::Capa => {
                if let Err(end) = relay_capa(client, up, t).await {
                    return end;
                }
                continue;
            }
            Command::Quit => return quit(client, up, t).await,
            Command::User(_) | Command::Pass(_) | Command::Apop(..) | Command::Auth { .. } => {
                Cow::Borrowed(b"-ERR Already logged in\r\n")
            }
            Command::Stls => Cow::Borrowed(b"-ERR STLS is not available after login\r\n"),
            Command::Empty => Cow::Borrowed(b"-ERR Empty command\r\n"),
            // Unknown verbs are answered here, not forwarded: guessing the
            // shape of an unknown reply would desynchronise the framing.
            Command::Invalid(why) => Cow::Owned(format!("-ERR {why}\r\n").into_bytes()),
        };
        if let Err(why) = write_client(client, &local).await {
            return End::Closed(why);
        }
    }
}

/// Sends one command and relays its reply; a multi-line body is streamed.
async fn relay(
    client: &mut Conn,
    up: &mut Conn,
    cmd: &[u8],
    multiline: bool,
    t: &Timeouts,
) -> Result<(), End> {
    let status = match send_and_read_status(up, cmd, t).await {
        Ok(s) => s,
        Err(e) => {
            let _ = write_client(client, TEMP_FAILURE).await;
            return Err(End::Upstream(e));
        }
    };
    write_client(client, &sanitize_status(&status))
        .await
        .map_err(End::Closed)?;
    if multiline && matches!(parse_status(&status), Some(Status::Ok(_))) {
        relay_body(client, up, t).await?;
    }
    Ok(())
}

async fn send_and_read_status(
    up: &mut Conn,
    cmd: &[u8],
    t: &Timeouts,
) -> Result<Vec<u8>, UpstreamError> {
    write_upstream(up, cmd).await?;
    let status = read_upstream_line(up, "a command reply", t).await?;
    match parse_status(&status) {
        Some(Status::Ok(_) | Status::Err(_)) if status.ends_with(b"\r\n") => Ok(status),
        _ => Err(UpstreamError::Protocol(
            "the server's reply is not a POP3 status line".to_owned(),
        )),
    }
}

/// Streams a multi-line body to the client up to and including the
/// server's own terminator. Nothing is collected: each chunk read is
/// written on. If the server stops early the error closes the client.
async fn relay_body(client: &mut Conn, up: &mut Conn, t: &Timeouts) -> Result<(), End> {
    let mut end = BodyEnd::new();
    loop {
        if up.buffered().is_empty() {
            let n = upstream::deadline(t.upstream_reply, "a message transfer", up.fill())
                .await
                .map_err(End::Upstream)?;
            if n == 0 {
                return Err(End::Upstream(UpstreamError::Closed(
                    "in the middle of a multi-line reply",
                )));
            }
        }
        let chunk = up.buffered();
        let (take, done) = match end.feed(chunk) {
            Some(n) => (n, true),
            None => (chunk.len(), false),
        };
        write_client(client, &chunk[..take])
            .await
            .map_err(End::Closed)?;
        up.consume(take);
        if done {
            return Ok(());
        }
    }
}

/// CAPA after login: the server's list, rewritten (see [`capa::after_login`]).
async fn relay_capa(client: &mut Conn, up: &mut Conn, t: &Timeouts) -> Result<(), End> {
    let fetched = async {
        write_upstream(up, b"CAPA\r\n").await?;
        read_reply(up, true, "CAPA", t).await
    }
    .await;
    let (status, body) = match fetched {
        Ok(x) => x,
        Err(e) => {
            let _ = write_client(client, TEMP_FAILURE).await;
            return Err(End::Upstream(e));
        }
    };
    let answer = match parse_status(&status) {
        Some(Status::Ok(_)) => {
            capa::after_login(&Capabilities::parse(body.iter().map(Vec::as_slice)))
        }
        _ => b"-ERR CAPA is not supported by the mail server\r\n".to_vec(),
    };
    write_client(client, &answer).await.map_err(End::Closed)
}

/// QUIT after login: the server commits deletions (UPDATE state) and its
/// answer, good or bad, is the client's answer.
async fn quit(client: &mut Conn, up: &mut Conn, t: &Timeouts) -> End {
    match send_and_read_status(up, b"QUIT\r\n", t).await {
        Ok(status) => {
            let _ = write_client(client, &sanitize_status(&status)).await;
            End::Quit
        }
        Err(e) => {
            let _ = write_client(
                client,
                b"-ERR [SYS/TEMP] The mail server did not confirm QUIT; deletions may not have been made\r\n",
            )
            .await;
            End::Upstream(e)
        }
    }
}
