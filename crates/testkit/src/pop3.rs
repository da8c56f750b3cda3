//! `FakePop3`: a scripted POP3 upstream that really checks what it is sent.
//!
//! It listens on `127.0.0.1:0`, spawns one task per connection and speaks
//! RFC 1939 (base protocol, APOP), RFC 2449 (CAPA, response codes), RFC 2595
//! (STLS), RFC 5034 (AUTH) with PLAIN (RFC 4616) and CRAM-MD5 (RFC 2195).
//! Every session appends [`Pop3Event`]s to one shared log that tests read
//! with [`FakePop3::events`] or wait on with [`FakePop3::wait_for`].
//!
//! ```text
//!   connect ──(Tls: handshake)──> AUTHORIZATION ──login──> TRANSACTION
//!                                  │  ▲                        │
//!                       STLS +OK   │  │ handshake, state reset  │ QUIT: commit
//!                                  ▼  │                        ▼ deletes
//!                                (TLS handshake)             closed
//! ```
//!
//! Each session ends with exactly one [`Pop3Event::Closed`], recorded after
//! the socket is gone; when the client never sent QUIT (EOF, error, TLS
//! failure, `die_mid_retr`) a [`Pop3Event::ClosedWithoutQuit`] precedes it.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::auth::{cram_md5_digest, rfc1939_apop_digest};
use crate::client::find;

/// RFC 1939 §7's example timestamp; the default greeting timestamp.
pub const RFC1939_TIMESTAMP: &str = "<1896.697170952@dbc.mtview.ca.us>";

/// Give [`Pop3Script::greeting_timestamp`] this value for a fresh, unique
/// msg-id per connection, as a real server does (the default).
pub const UNIQUE_TIMESTAMP: &str = "<unique>";

/// Longest line the fake accepts. RFC 2449 §4 caps commands at 255 octets,
/// but SASL responses (RFC 5034 §4) may be longer.
const MAX_LINE: usize = 8 * 1024;

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

/// How the fake answers CAPA.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CapaBehaviour {
    /// List the capabilities, STLS included while an upgrade is possible.
    #[default]
    Normal,
    /// List the capabilities but never STLS (the command still works).
    WithoutStls,
    /// Answer `-ERR` as a pre-RFC 2449 server would.
    Unsupported,
}

/// How the fake answers STLS (only in [`FakeSecurity::Starttls`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum StlsBehaviour {
    /// `+OK Begin TLS`, then the handshake.
    #[default]
    Accept,
    /// `-ERR`, stay plain.
    Refuse,
    /// Write `+OK Begin TLS\r\n` plus these bytes in ONE write before the
    /// handshake: a man-in-the-middle injection the client must refuse.
    AcceptThenInject(Vec<u8>),
}

/// What one fake server does. Fields are public; builder methods are there
/// for one-liners.
#[derive(Clone, Debug)]
pub struct Pop3Script {
    /// Plain, implicit TLS or STLS.
    pub security: FakeSecurity,
    /// The one account's name.
    pub user: String,
    /// The one account's password (may contain spaces).
    pub password: String,
    /// Put verbatim after `+OK fake ready ` in the greeting; `None` for no
    /// timestamp (APOP then fails); [`UNIQUE_TIMESTAMP`] (the default) for
    /// a fresh one per connection. Not validated, so tests can send
    /// malformed ones.
    pub greeting_timestamp: Option<String>,
    /// CAPA behaviour.
    pub capa: CapaBehaviour,
    /// SASL mechanisms listed in CAPA and accepted by AUTH (case-insensitive;
    /// only PLAIN and CRAM-MD5 are implemented). Empty: no SASL line.
    pub sasl: Vec<String>,
    /// STLS behaviour.
    pub stls: StlsBehaviour,
    /// Mailbox contents, unstuffed, CRLF line ends. Shared by all sessions:
    /// deletions committed by QUIT are seen by later logins.
    pub messages: Vec<Vec<u8>>,
    /// On RETR send `+OK`, then this many bytes of the stuffed body, then
    /// drop the connection (no terminator, no TLS close_notify).
    pub die_mid_retr: Option<usize>,
    /// USER/PASS/APOP/AUTH before TLS answered `-ERR [AUTH] TLS required`.
    pub require_tls_for_auth: bool,
}

impl Default for Pop3Script {
    fn default() -> Self {
        Self {
            security: FakeSecurity::Plain,
            user: "alice".to_owned(),
            password: "wonderland".to_owned(),
            greeting_timestamp: Some(UNIQUE_TIMESTAMP.to_owned()),
            capa: CapaBehaviour::Normal,
            sasl: vec!["PLAIN".to_owned(), "CRAM-MD5".to_owned()],
            stls: StlsBehaviour::Accept,
            messages: Vec::new(),
            die_mid_retr: None,
            require_tls_for_auth: false,
        }
    }
}

impl Pop3Script {
    /// Same as `Default::default()`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Set [`Pop3Script::security`].
    pub fn security(mut self, security: FakeSecurity) -> Self {
        self.security = security;
        self
    }

    /// Set user and password.
    pub fn credentials(mut self, user: &str, password: &str) -> Self {
        self.user = user.to_owned();
        self.password = password.to_owned();
        self
    }

    /// Set [`Pop3Script::greeting_timestamp`].
    pub fn greeting_timestamp(mut self, timestamp: Option<&str>) -> Self {
        self.greeting_timestamp = timestamp.map(str::to_owned);
        self
    }

    /// Set [`Pop3Script::capa`].
    pub fn capa(mut self, capa: CapaBehaviour) -> Self {
        self.capa = capa;
        self
    }

    /// Set [`Pop3Script::sasl`].
    pub fn sasl(mut self, mechanisms: &[&str]) -> Self {
        self.sasl = mechanisms.iter().map(|m| (*m).to_owned()).collect();
        self
    }

    /// Set [`Pop3Script::stls`].
    pub fn stls(mut self, stls: StlsBehaviour) -> Self {
        self.stls = stls;
        self
    }

    /// Append one message.
    pub fn message(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.messages.push(body.into());
        self
    }

    /// Replace the mailbox.
    pub fn messages(mut self, bodies: Vec<Vec<u8>>) -> Self {
        self.messages = bodies;
        self
    }

    /// Set [`Pop3Script::die_mid_retr`].
    pub fn die_mid_retr(mut self, bytes: usize) -> Self {
        self.die_mid_retr = Some(bytes);
        self
    }

    /// Set [`Pop3Script::require_tls_for_auth`].
    pub fn require_tls_for_auth(mut self, require: bool) -> Self {
        self.require_tls_for_auth = require;
        self
    }

    fn offers_sasl(&self, mechanism: &str) -> bool {
        self.sasl.iter().any(|m| m.eq_ignore_ascii_case(mechanism))
    }
}

/// Something that happened on the fake's side.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pop3Event {
    /// A TCP connection was accepted.
    Connected,
    /// A TLS handshake (implicit or after STLS) completed.
    TlsEstablished,
    /// A TLS handshake failed; the rustls error text.
    TlsFailed(String),
    /// A command line as received, secrets masked: `PASS ***`,
    /// `APOP alice ***`, `AUTH PLAIN ***` (initial response present).
    /// SASL continuation lines are not recorded.
    Command(String),
    /// Authentication succeeded.
    LoggedIn {
        /// `"USER"`, `"APOP"`, `"PLAIN"` or `"CRAM-MD5"`.
        method: String,
        /// Whether the session was under TLS at the time.
        tls: bool,
    },
    /// Authentication was attempted and failed.
    AuthFailed {
        /// As in [`Pop3Event::LoggedIn`].
        method: String,
    },
    /// The client answered a SASL challenge with `*`.
    AuthCancelled {
        /// `"PLAIN"` or `"CRAM-MD5"`.
        method: String,
    },
    /// QUIT in TRANSACTION state; the 1-based numbers deleted (sorted).
    QuitCommitted {
        /// Message numbers as the session saw them.
        deleted: Vec<usize>,
    },
    /// The client broke the protocol in a way a real server might not
    /// notice: bare LF, overlong line, bytes pipelined after STLS.
    ClientViolation(String),
    /// The session ended without a QUIT command.
    ClosedWithoutQuit,
    /// The session's socket is closed (always the session's last event).
    Closed,
    /// A session task panicked (a testkit bug); logged with session
    /// number `usize::MAX`.
    SessionPanicked(String),
}

/// An event together with the session that produced it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedEvent {
    /// 0-based connection counter.
    pub session: usize,
    /// What happened.
    pub event: Pop3Event,
}

#[derive(Clone, Debug)]
struct StoredMessage {
    uid: String,
    body: Vec<u8>,
}

struct Shared {
    script: Pop3Script,
    mailbox: Mutex<Vec<StoredMessage>>,
    log: watch::Sender<Vec<LoggedEvent>>,
    sessions: AtomicUsize,
}

impl Shared {
    fn record(&self, session: usize, event: Pop3Event) {
        self.log
            .send_modify(|log| log.push(LoggedEvent { session, event }));
    }
}

/// A running fake POP3 server; stops (aborting live sessions) on drop.
pub struct FakePop3 {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl fmt::Debug for FakePop3 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakePop3")
            .field("addr", &self.addr)
            .field("events", &self.shared.log.borrow().len())
            .finish_non_exhaustive()
    }
}

impl Drop for FakePop3 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakePop3 {
    /// Bind `127.0.0.1:0` and start serving `script`.
    pub async fn start(script: Pop3Script) -> FakePop3 {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind fake POP3 on loopback");
        let addr = listener.local_addr().expect("local addr");
        let mailbox = script
            .messages
            .iter()
            .enumerate()
            .map(|(i, body)| StoredMessage {
                uid: format!("fake-uid-{}", i + 1),
                body: body.clone(),
            })
            .collect();
        let (log, _) = watch::channel(Vec::new());
        let shared = Arc::new(Shared {
            script,
            mailbox: Mutex::new(mailbox),
            log,
            sessions: AtomicUsize::new(0),
        });
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        FakePop3 { addr, shared, task }
    }

    /// Where the fake listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The script it serves.
    pub fn script(&self) -> &Pop3Script {
        &self.shared.script
    }

    /// Every event so far, all sessions, in order.
    pub fn events(&self) -> Vec<Pop3Event> {
        self.shared
            .log
            .borrow()
            .iter()
            .map(|e| e.event.clone())
            .collect()
    }

    /// Every event so far with its session number.
    pub fn logged_events(&self) -> Vec<LoggedEvent> {
        self.shared.log.borrow().clone()
    }

    /// Only the [`Pop3Event::Command`] lines, in order.
    pub fn commands(&self) -> Vec<String> {
        self.shared
            .log
            .borrow()
            .iter()
            .filter_map(|e| match &e.event {
                Pop3Event::Command(c) => Some(c.clone()),
                _ => None,
            })
            .collect()
    }

    /// Number of connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.sessions.load(Ordering::SeqCst)
    }

    /// Number of messages left in the shared mailbox (after committed QUITs).
    pub fn mailbox_len(&self) -> usize {
        self.shared.mailbox.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Wait until an event matching `pred` has been logged (it may already
    /// have been) and return the first such; `None` on timeout.
    pub async fn wait_for(
        &self,
        pred: impl Fn(&Pop3Event) -> bool,
        timeout: Duration,
    ) -> Option<Pop3Event> {
        let mut found = None;
        let ok = self
            .wait_until(
                |log| {
                    found = log.iter().find(|e| pred(&e.event)).map(|e| e.event.clone());
                    found.is_some()
                },
                timeout,
            )
            .await;
        if ok {
            found
        } else {
            None
        }
    }

    /// Like [`FakePop3::wait_for`] but panics with the whole log on timeout.
    pub async fn expect_event(
        &self,
        what: &str,
        pred: impl Fn(&Pop3Event) -> bool,
        timeout: Duration,
    ) -> Pop3Event {
        match self.wait_for(pred, timeout).await {
            Some(e) => e,
            None => panic!(
                "fake POP3: no {what} within {timeout:?}; log: {:#?}",
                self.logged_events()
            ),
        }
    }

    /// Wait until `pred` holds over the whole log; `false` on timeout.
    /// E.g. "two sessions closed":
    /// `|log| log.iter().filter(|e| e.event == Pop3Event::Closed).count() == 2`.
    pub async fn wait_until(
        &self,
        mut pred: impl FnMut(&[LoggedEvent]) -> bool,
        timeout: Duration,
    ) -> bool {
        let mut rx = self.shared.log.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if pred(&rx.borrow_and_update()) {
                return true;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                // The sender lives in `self`, so it cannot be dropped here;
                // a timeout is the only way out.
                Ok(Err(_)) | Err(_) => return pred(&rx.borrow()),
            }
        }
    }

    /// Wait until at least `n` [`Pop3Event::Closed`] events (i.e. `n`
    /// finished sessions) have been logged in total; `false` on timeout.
    pub async fn wait_closed(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(
            |log| log.iter().filter(|e| e.event == Pop3Event::Closed).count() >= n,
            timeout,
        )
        .await
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _peer)) => {
                    let id = shared.sessions.fetch_add(1, Ordering::SeqCst);
                    sessions.spawn(run_session(Arc::clone(&shared), id, tcp));
                }
                // EMFILE and friends: back off briefly rather than spin.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(joined) = sessions.join_next(), if !sessions.is_empty() => {
                if let Err(e) = joined {
                    if e.is_panic() {
                        shared.record(usize::MAX, Pop3Event::SessionPanicked(e.to_string()));
                    }
                }
            }
        }
    }
}

/// A server connection, plain or TLS (shared with the SMTP fake).
pub(crate) enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// How a session's command loop ended.
enum End {
    /// QUIT answered.
    Quit,
    /// EOF, I/O error, TLS failure, violation or scripted death.
    Dropped,
}

/// What the loop does after a command.
enum Step {
    Continue,
    Quit,
    /// STLS accepted: write these bytes in one go, then handshake.
    StartTls(Vec<u8>),
    /// Drop the connection now (`die_mid_retr`).
    Die,
}

enum State {
    Authorization {
        /// Name given by USER, awaiting PASS.
        user: Option<String>,
    },
    Transaction {
        view: Vec<StoredMessage>,
        deleted: Vec<bool>,
    },
}

struct Session {
    shared: Arc<Shared>,
    id: usize,
    tls: bool,
    state: State,
    timestamp: Option<String>,
}

async fn run_session(shared: Arc<Shared>, id: usize, tcp: TcpStream) {
    shared.record(id, Pop3Event::Connected);
    let mut session = Session {
        shared: Arc::clone(&shared),
        id,
        tls: false,
        state: State::Authorization { user: None },
        timestamp: match shared.script.greeting_timestamp.as_deref() {
            Some(UNIQUE_TIMESTAMP) => Some(fresh_challenge()),
            other => other.map(str::to_owned),
        },
    };
    // `run` consumes the socket, so it is closed by the time it returns.
    let end = session.run(tcp).await;
    if matches!(end, End::Dropped) {
        shared.record(id, Pop3Event::ClosedWithoutQuit);
    }
    shared.record(id, Pop3Event::Closed);
}

fn script_error(text: &str) -> Vec<u8> {
    format!("-ERR {text}\r\n").into_bytes()
}

const AUTH_FAILED: &str = "-ERR [AUTH] Authentication failed\r\n";
const TLS_REQUIRED: &str = "-ERR [AUTH] TLS required\r\n";

impl Session {
    fn record(&self, event: Pop3Event) {
        self.shared.record(self.id, event);
    }

    fn script(&self) -> &Pop3Script {
        &self.shared.script
    }

    async fn accept_tls(
        &mut self,
        config: Arc<rustls::ServerConfig>,
        tcp: TcpStream,
    ) -> Option<Conn> {
        match TlsAcceptor::from(config).accept(tcp).await {
            Ok(tls) => {
                self.tls = true;
                self.record(Pop3Event::TlsEstablished);
                Some(Conn::Tls(Box::new(tls)))
            }
            Err(e) => {
                self.record(Pop3Event::TlsFailed(e.to_string()));
                None
            }
        }
    }

    async fn run(&mut self, tcp: TcpStream) -> End {
        let mut conn = match self.script().security.clone() {
            FakeSecurity::Tls(config) => match self.accept_tls(config, tcp).await {
                Some(conn) => conn,
                None => return End::Dropped,
            },
            FakeSecurity::Plain | FakeSecurity::Starttls(_) => Conn::Plain(tcp),
        };
        let greeting = match &self.timestamp {
            Some(ts) => format!("+OK fake ready {ts}\r\n"),
            None => "+OK fake ready\r\n".to_owned(),
        };
        if write_flush(&mut conn, greeting.as_bytes()).await.is_err() {
            return End::Dropped;
        }
        let mut buf = Vec::new();
        loop {
            let line = match self.read_line(&mut conn, &mut buf).await {
                Some(line) => line,
                None => return End::Dropped,
            };
            let step = match self.handle(&line, &mut conn, &mut buf).await {
                Ok(step) => step,
                Err(_) => return End::Dropped,
            };
            match step {
                Step::Continue => {}
                Step::Quit => {
                    // Clean close: TLS close_notify, then FIN.
                    let _ = conn.shutdown().await;
                    return End::Quit;
                }
                Step::Die => return End::Dropped,
                Step::StartTls(go_ahead) => {
                    // RFC 2595 §4 / CVE-2011-0411: nothing may follow the
                    // STLS line in the same plaintext flight.
                    if !buf.is_empty() {
                        self.record(Pop3Event::ClientViolation(format!(
                            "{} bytes pipelined after STLS",
                            buf.len()
                        )));
                        return End::Dropped;
                    }
                    if write_flush(&mut conn, &go_ahead).await.is_err() {
                        return End::Dropped;
                    }
                    let (tcp, config) = match (conn, self.script().security.clone()) {
                        (Conn::Plain(tcp), FakeSecurity::Starttls(config)) => (tcp, config),
                        // `handle` only asks for STLS on a plain Starttls session.
                        _ => return End::Dropped,
                    };
                    conn = match self.accept_tls(config, tcp).await {
                        Some(conn) => conn,
                        None => return End::Dropped,
                    };
                    // RFC 2595 §4: forget everything learned before TLS.
                    self.state = State::Authorization { user: None };
                }
            }
        }
    }

    /// One line without its CRLF; `None` on EOF, error or a fatal violation.
    async fn read_line(&self, conn: &mut Conn, buf: &mut Vec<u8>) -> Option<String> {
        loop {
            if let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let mut line: Vec<u8> = buf.drain(..=pos).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                } else {
                    self.record(Pop3Event::ClientViolation("bare LF line ending".to_owned()));
                }
                if line.contains(&b'\r') {
                    self.record(Pop3Event::ClientViolation(
                        "bare CR inside a line".to_owned(),
                    ));
                }
                return Some(match String::from_utf8(line) {
                    Ok(s) => s,
                    Err(e) => {
                        self.record(Pop3Event::ClientViolation("non-UTF-8 line".to_owned()));
                        String::from_utf8_lossy(e.as_bytes()).into_owned()
                    }
                });
            }
            if buf.len() > MAX_LINE {
                self.record(Pop3Event::ClientViolation(format!(
                    "line longer than {MAX_LINE} octets"
                )));
                return None;
            }
            let mut chunk = [0u8; 4096];
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Read one SASL continuation response; `None` if the connection ended.
    async fn read_sasl_response(&self, conn: &mut Conn, buf: &mut Vec<u8>) -> Option<String> {
        self.read_line(conn, buf).await
    }

    fn masked(line: &str) -> String {
        let (verb, rest) = line.split_once(' ').unwrap_or((line, ""));
        match verb.to_ascii_uppercase().as_str() {
            "PASS" => format!("{verb} ***"),
            "APOP" => match rest.split_once(' ') {
                Some((name, _)) => format!("{verb} {name} ***"),
                None => line.to_owned(),
            },
            "AUTH" => match rest.split_once(' ') {
                Some((mech, _)) => format!("{verb} {mech} ***"),
                None => line.to_owned(),
            },
            _ => line.to_owned(),
        }
    }

    async fn handle(&mut self, line: &str, conn: &mut Conn, buf: &mut Vec<u8>) -> io::Result<Step> {
        self.record(Pop3Event::Command(Self::masked(line)));
        let (verb, args) = match line.split_once(' ') {
            Some((v, a)) => (v.to_ascii_uppercase(), Some(a)),
            None => (line.to_ascii_uppercase(), None),
        };
        let in_auth = matches!(self.state, State::Authorization { .. });
        let reply: Vec<u8> = match (verb.as_str(), in_auth) {
            ("CAPA", _) => self.capa(),
            ("QUIT", true) => {
                write_flush(conn, b"+OK fake POP3 server signing off\r\n").await?;
                return Ok(Step::Quit);
            }
            ("QUIT", false) => {
                let deleted = self.commit();
                self.record(Pop3Event::QuitCommitted { deleted });
                write_flush(conn, b"+OK fake POP3 server signing off\r\n").await?;
                return Ok(Step::Quit);
            }
            ("STLS", true) => match self.stls_step() {
                Ok(step) => return Ok(step),
                Err(reply) => reply,
            },
            ("USER", true) => self.user(args),
            ("PASS", true) => self.pass(args),
            ("APOP", true) => self.apop(args),
            ("AUTH", true) => self.auth(args, conn, buf).await?,
            ("STAT", false) => self.stat(),
            ("LIST", false) => self.list(args),
            ("UIDL", false) => self.uidl(args),
            ("RETR", false) => match self.message_number(args) {
                Ok(n) => return self.retr(n, conn).await,
                Err(reply) => reply,
            },
            ("TOP", false) => self.top(args),
            ("DELE", false) => self.dele(args),
            ("NOOP", false) => b"+OK\r\n".to_vec(),
            ("RSET", false) => {
                if let State::Transaction { deleted, .. } = &mut self.state {
                    deleted.iter_mut().for_each(|d| *d = false);
                }
                b"+OK maildrop reset\r\n".to_vec()
            }
            ("STLS" | "USER" | "PASS" | "APOP" | "AUTH", false)
            | ("STAT" | "LIST" | "UIDL" | "RETR" | "TOP" | "DELE" | "NOOP" | "RSET", true) => {
                script_error("command not valid in this state")
            }
            _ => script_error("unknown command"),
        };
        write_flush(conn, &reply).await?;
        Ok(Step::Continue)
    }

    fn capa(&self) -> Vec<u8> {
        let script = self.script();
        if script.capa == CapaBehaviour::Unsupported {
            return script_error("CAPA not supported");
        }
        let mut out = String::from("+OK Capability list follows\r\n");
        for cap in ["TOP", "UIDL", "USER", "RESP-CODES", "PIPELINING"] {
            out.push_str(cap);
            out.push_str("\r\n");
        }
        if !script.sasl.is_empty() {
            out.push_str("SASL ");
            out.push_str(&script.sasl.join(" "));
            out.push_str("\r\n");
        }
        if script.capa == CapaBehaviour::Normal && self.stls_possible() {
            out.push_str("STLS\r\n");
        }
        out.push_str(".\r\n");
        out.into_bytes()
    }

    fn stls_possible(&self) -> bool {
        matches!(self.script().security, FakeSecurity::Starttls(_))
            && !self.tls
            && matches!(self.state, State::Authorization { .. })
    }

    fn stls_step(&self) -> Result<Step, Vec<u8>> {
        if !self.stls_possible() {
            return Err(script_error("STLS not available"));
        }
        match &self.script().stls {
            StlsBehaviour::Accept => Ok(Step::StartTls(b"+OK Begin TLS\r\n".to_vec())),
            StlsBehaviour::Refuse => Err(script_error("STLS refused")),
            StlsBehaviour::AcceptThenInject(extra) => {
                let mut bytes = b"+OK Begin TLS\r\n".to_vec();
                bytes.extend_from_slice(extra);
                Ok(Step::StartTls(bytes))
            }
        }
    }

    fn auth_blocked(&self) -> bool {
        self.script().require_tls_for_auth && !self.tls
    }

    fn user(&mut self, args: Option<&str>) -> Vec<u8> {
        if self.auth_blocked() {
            return TLS_REQUIRED.into();
        }
        match args {
            Some(name) if !name.is_empty() => {
                self.state = State::Authorization {
                    user: Some(name.to_owned()),
                };
                // Same answer for every name: no user enumeration.
                b"+OK send PASS\r\n".to_vec()
            }
            _ => script_error("USER needs a name"),
        }
    }

    fn pass(&mut self, args: Option<&str>) -> Vec<u8> {
        if self.auth_blocked() {
            return TLS_REQUIRED.into();
        }
        let user = match &mut self.state {
            State::Authorization { user } => user.take(),
            State::Transaction { .. } => None,
        };
        let Some(user) = user else {
            return script_error("USER first");
        };
        // RFC 1939 §7: the password is everything after "PASS ", spaces
        // included.
        let password = args.unwrap_or("");
        let script = self.script();
        if user == script.user && password == script.password {
            self.login("USER")
        } else {
            self.fail("USER")
        }
    }

    fn apop(&mut self, args: Option<&str>) -> Vec<u8> {
        if self.auth_blocked() {
            return TLS_REQUIRED.into();
        }
        let Some(timestamp) = self.timestamp.clone() else {
            return script_error("APOP not available: no timestamp in greeting");
        };
        let Some((name, digest)) = args.and_then(|a| a.split_once(' ')) else {
            return script_error("APOP needs a name and a digest");
        };
        let expected = rfc1939_apop_digest(&timestamp, &self.script().password);
        // RFC 1939 §7: the digest is lower-case hex; upper case is a bug.
        if name == self.script().user && digest == expected {
            self.login("APOP")
        } else {
            self.fail("APOP")
        }
    }

    async fn auth(
        &mut self,
        args: Option<&str>,
        conn: &mut Conn,
        buf: &mut Vec<u8>,
    ) -> io::Result<Vec<u8>> {
        if self.auth_blocked() {
            return Ok(TLS_REQUIRED.into());
        }
        let Some(args) = args else {
            return Ok(script_error("AUTH needs a mechanism"));
        };
        let (mech, initial) = match args.split_once(' ') {
            Some((m, ir)) => (m.to_ascii_uppercase(), Some(ir.to_owned())),
            None => (args.to_ascii_uppercase(), None),
        };
        if !self.script().offers_sasl(&mech) {
            return Ok(script_error("unsupported SASL mechanism"));
        }
        match mech.as_str() {
            "PLAIN" => {
                let response = match initial {
                    Some(ir) => ir,
                    None => {
                        // RFC 5034 §4: empty challenge is "+ ".
                        write_flush(conn, b"+ \r\n").await?;
                        match self.read_sasl_response(conn, buf).await {
                            Some(line) => line,
                            None => return Err(io::ErrorKind::UnexpectedEof.into()),
                        }
                    }
                };
                Ok(self.finish_plain(&response))
            }
            "CRAM-MD5" => {
                if initial.is_some() {
                    // RFC 2195: the server speaks first; no initial response.
                    return Ok(script_error("CRAM-MD5 takes no initial response"));
                }
                let challenge = fresh_challenge();
                let encoded = base64::engine::general_purpose::STANDARD.encode(&challenge);
                write_flush(conn, format!("+ {encoded}\r\n").as_bytes()).await?;
                let Some(response) = self.read_sasl_response(conn, buf).await else {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                };
                Ok(self.finish_cram(&challenge, &response))
            }
            _ => Ok(script_error("unsupported SASL mechanism")),
        }
    }

    fn finish_plain(&mut self, response: &str) -> Vec<u8> {
        if response == "*" {
            self.record(Pop3Event::AuthCancelled {
                method: "PLAIN".to_owned(),
            });
            return script_error("authentication cancelled");
        }
        // RFC 5034 §4: "=" is an empty initial response.
        let decoded = if response == "=" {
            Ok(Vec::new())
        } else {
            base64::engine::general_purpose::STANDARD.decode(response)
        };
        let Ok(decoded) = decoded else {
            return self.fail("PLAIN");
        };
        let parts: Vec<&[u8]> = decoded.split(|b| *b == 0).collect();
        let [authzid, authcid, password] = parts.as_slice() else {
            return self.fail("PLAIN");
        };
        let script = self.script();
        let ok = authcid == &script.user.as_bytes()
            && password == &script.password.as_bytes()
            && (authzid.is_empty() || authzid == authcid);
        if ok {
            self.login("PLAIN")
        } else {
            self.fail("PLAIN")
        }
    }

    fn finish_cram(&mut self, challenge: &str, response: &str) -> Vec<u8> {
        if response == "*" {
            self.record(Pop3Event::AuthCancelled {
                method: "CRAM-MD5".to_owned(),
            });
            return script_error("authentication cancelled");
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(response)
            .ok()
            .and_then(|d| String::from_utf8(d).ok());
        let Some(decoded) = decoded else {
            return self.fail("CRAM-MD5");
        };
        // RFC 2195 §2: the user name may contain spaces; the digest is the
        // last word, lower-case hex.
        let Some((user, digest)) = decoded.rsplit_once(' ') else {
            return self.fail("CRAM-MD5");
        };
        let script = self.script();
        if user == script.user && digest == cram_md5_digest(&script.password, challenge) {
            self.login("CRAM-MD5")
        } else {
            self.fail("CRAM-MD5")
        }
    }

    fn login(&mut self, method: &str) -> Vec<u8> {
        let view = self
            .shared
            .mailbox
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default();
        let count = view.len();
        self.state = State::Transaction {
            deleted: vec![false; count],
            view,
        };
        self.record(Pop3Event::LoggedIn {
            method: method.to_owned(),
            tls: self.tls,
        });
        format!("+OK logged in, {count} messages\r\n").into_bytes()
    }

    fn fail(&mut self, method: &str) -> Vec<u8> {
        self.state = State::Authorization { user: None };
        self.record(Pop3Event::AuthFailed {
            method: method.to_owned(),
        });
        AUTH_FAILED.into()
    }

    /// Apply deletions to the shared mailbox; return the deleted numbers.
    fn commit(&mut self) -> Vec<usize> {
        let State::Transaction { view, deleted } = &self.state else {
            return Vec::new();
        };
        let numbers: Vec<usize> = deleted
            .iter()
            .enumerate()
            .filter(|(_, d)| **d)
            .map(|(i, _)| i + 1)
            .collect();
        let gone: Vec<&str> = numbers.iter().map(|n| view[n - 1].uid.as_str()).collect();
        if let Ok(mut mailbox) = self.shared.mailbox.lock() {
            mailbox.retain(|m| !gone.contains(&m.uid.as_str()));
        }
        numbers
    }

    /// Live (number, message) pairs of this session.
    fn live(&self) -> Vec<(usize, &StoredMessage)> {
        match &self.state {
            State::Transaction { view, deleted } => view
                .iter()
                .zip(deleted)
                .enumerate()
                .filter(|(_, (_, d))| !**d)
                .map(|(i, (m, _))| (i + 1, m))
                .collect(),
            State::Authorization { .. } => Vec::new(),
        }
    }

    /// Parse and check a message number argument (RFC 1939 §5).
    fn message_number(&self, arg: Option<&str>) -> Result<usize, Vec<u8>> {
        let State::Transaction { view, deleted } = &self.state else {
            return Err(script_error("command not valid in this state"));
        };
        let Some(arg) = arg else {
            return Err(script_error("message number required"));
        };
        let n: usize = match arg.parse() {
            Ok(n) if arg.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err(script_error("invalid message number")),
        };
        if n == 0 || n > view.len() {
            return Err(script_error("no such message"));
        }
        if deleted[n - 1] {
            return Err(script_error(&format!("message {n} already deleted")));
        }
        Ok(n)
    }

    fn body(&self, n: usize) -> &[u8] {
        match &self.state {
            State::Transaction { view, .. } => &view[n - 1].body,
            State::Authorization { .. } => &[],
        }
    }

    fn stat(&self) -> Vec<u8> {
        let live = self.live();
        let size: usize = live.iter().map(|(_, m)| m.body.len()).sum();
        format!("+OK {} {size}\r\n", live.len()).into_bytes()
    }

    fn list(&self, args: Option<&str>) -> Vec<u8> {
        if args.is_some() {
            return match self.message_number(args) {
                Ok(n) => format!("+OK {n} {}\r\n", self.body(n).len()).into_bytes(),
                Err(reply) => reply,
            };
        }
        let live = self.live();
        let mut out = format!("+OK {} messages\r\n", live.len());
        for (n, m) in live {
            out.push_str(&format!("{n} {}\r\n", m.body.len()));
        }
        out.push_str(".\r\n");
        out.into_bytes()
    }

    fn uidl(&self, args: Option<&str>) -> Vec<u8> {
        let State::Transaction { view, .. } = &self.state else {
            return script_error("command not valid in this state");
        };
        if args.is_some() {
            return match self.message_number(args) {
                Ok(n) => format!("+OK {n} {}\r\n", view[n - 1].uid).into_bytes(),
                Err(reply) => reply,
            };
        }
        let mut out = String::from("+OK unique-id listing follows\r\n");
        for (n, m) in self.live() {
            out.push_str(&format!("{n} {}\r\n", m.uid));
        }
        out.push_str(".\r\n");
        out.into_bytes()
    }

    fn dele(&mut self, args: Option<&str>) -> Vec<u8> {
        let n = match self.message_number(args) {
            Ok(n) => n,
            Err(reply) => return reply,
        };
        if let State::Transaction { deleted, .. } = &mut self.state {
            deleted[n - 1] = true;
        }
        format!("+OK message {n} deleted\r\n").into_bytes()
    }

    async fn retr(&self, n: usize, conn: &mut Conn) -> io::Result<Step> {
        let body = self.body(n);
        let stuffed = dot_stuff(body);
        let status = format!("+OK {} octets\r\n", body.len());
        if let Some(cut) = self.script().die_mid_retr {
            let mut bytes = status.into_bytes();
            bytes.extend_from_slice(&stuffed[..cut.min(stuffed.len())]);
            write_flush(conn, &bytes).await?;
            return Ok(Step::Die);
        }
        let mut bytes = status.into_bytes();
        bytes.extend_from_slice(&stuffed);
        bytes.extend_from_slice(b".\r\n");
        write_flush(conn, &bytes).await?;
        Ok(Step::Continue)
    }

    fn top(&self, args: Option<&str>) -> Vec<u8> {
        let Some((num, lines)) = args.and_then(|a| a.split_once(' ')) else {
            return script_error("TOP needs a message number and a line count");
        };
        let n = match self.message_number(Some(num)) {
            Ok(n) => n,
            Err(reply) => return reply,
        };
        let Ok(k) = lines.parse::<usize>() else {
            return script_error("invalid line count");
        };
        let body = self.body(n);
        // Headers end at the first empty line (RFC 1939 §7 TOP).
        let (head, rest) = match find(body, b"\r\n\r\n") {
            Some(p) => (&body[..p + 4], &body[p + 4..]),
            None => (body, &b""[..]),
        };
        let mut selected = head.to_vec();
        let mut taken = 0;
        let mut start = 0;
        while taken < k && start < rest.len() {
            let end = rest[start..]
                .iter()
                .position(|b| *b == b'\n')
                .map_or(rest.len(), |p| start + p + 1);
            selected.extend_from_slice(&rest[start..end]);
            start = end;
            taken += 1;
        }
        let mut out = b"+OK top of message follows\r\n".to_vec();
        out.extend_from_slice(&dot_stuff(&selected));
        out.extend_from_slice(b".\r\n");
        out
    }
}

pub(crate) async fn write_flush(conn: &mut Conn, bytes: &[u8]) -> io::Result<()> {
    conn.write_all(bytes).await?;
    conn.flush().await
}

/// A fresh RFC 2195-style challenge, `<digits.digits@fake.test>`.
pub(crate) fn fresh_challenge() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("<{}{n}.{nanos}@fake.test>", std::process::id())
}

/// RFC 1939 §3 byte-stuffing: double a leading "." on every line, and make
/// sure the result ends with CRLF. The ".\r\n" terminator is NOT added.
pub fn dot_stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 8);
    let mut at_line_start = true;
    for &b in body {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Undo [`dot_stuff`] on a raw multi-line body as read by
/// [`crate::LineClient::read_multiline`]; the ".\r\n" terminator is
/// required and removed. `None` if it is missing.
pub fn dot_unstuff(raw: &[u8]) -> Option<Vec<u8>> {
    let body = if raw == b".\r\n" {
        &raw[..0]
    } else {
        raw.strip_suffix(b"\r\n.\r\n")
            .map(|b| &raw[..b.len() + 2])?
    };
    let mut out = Vec::with_capacity(body.len());
    let mut at_line_start = true;
    let mut i = 0;
    while i < body.len() {
        let b = body[i];
        if at_line_start && b == b'.' {
            i += 1;
            at_line_start = false;
            continue;
        }
        out.push(b);
        at_line_start = b == b'\n';
        i += 1;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stuffing_round_trips() {
        let body = b"From: a\r\n\r\n.hidden\r\n..two\r\nplain\r\n.\r\n";
        let stuffed = dot_stuff(body);
        assert_eq!(
            stuffed,
            b"From: a\r\n\r\n..hidden\r\n...two\r\nplain\r\n..\r\n".to_vec()
        );
        let mut framed = stuffed.clone();
        framed.extend_from_slice(b".\r\n");
        assert_eq!(dot_unstuff(&framed).as_deref(), Some(&body[..]));
        assert_eq!(dot_unstuff(b".\r\n").as_deref(), Some(&b""[..]));
        assert_eq!(dot_unstuff(b"abc\r\n"), None);
    }

    #[test]
    fn stuffing_adds_final_crlf() {
        assert_eq!(dot_stuff(b"no newline"), b"no newline\r\n".to_vec());
        assert_eq!(dot_stuff(b""), Vec::<u8>::new());
    }

    #[test]
    fn masking_hides_secrets() {
        assert_eq!(Session::masked("PASS a b c"), "PASS ***");
        assert_eq!(Session::masked("pass x"), "pass ***");
        assert_eq!(Session::masked("APOP alice 0123"), "APOP alice ***");
        assert_eq!(Session::masked("AUTH PLAIN AGEAYg=="), "AUTH PLAIN ***");
        assert_eq!(Session::masked("AUTH CRAM-MD5"), "AUTH CRAM-MD5");
        assert_eq!(Session::masked("RETR 1"), "RETR 1");
    }
}
