//! `FakeSmtp`: a scripted SMTP submission upstream that really checks what
//! it is sent.
//!
//! It listens on `127.0.0.1:0`, spawns one task per connection and speaks
//! RFC 5321 with RFC 3207 (STARTTLS), RFC 4954 (AUTH) with PLAIN (RFC 4616),
//! LOGIN and CRAM-MD5 (RFC 2195), RFC 1870 (SIZE), RFC 3030 (CHUNKING/BDAT)
//! and RFC 2920 (PIPELINING: one reply per command, in order). Every session
//! appends [`SmtpEvent`]s to one shared log; complete messages are kept as
//! [`ReceivedMessage`]s, byte-exact, for [`FakeSmtp::messages`].
//!
//! ```text
//!  connect ─(Tls: handshake)─> 220 greeting ─> NOT GREETED
//!                                                 │ EHLO / HELO
//!       ┌────────── handshake, all state reset ───┤  (STARTTLS 220, EHLO only)
//!       ▼                                         ▼
//!   NOT GREETED                                GREETED ──AUTH 235──> (authenticated)
//!                                                 │ MAIL 250 (after AUTH when require_auth)
//!                                                 ▼
//!                                              MAIL ──RCPT 250──> RCPT ──DATA 354──> reading data
//!                                                 ▲                 │  BDAT n [LAST]        │ CRLF.CRLF
//!                                                 │                 ▼                       ▼
//!                         GREETED <── final reply (DataEnd) ── message complete <───────────┘
//! ```
//!
//! Each session ends with exactly one [`SmtpEvent::Closed`], recorded after
//! the socket is gone; when the client never sent QUIT (EOF, error, TLS
//! failure, scripted death) a [`SmtpEvent::ClosedWithoutQuit`] precedes it.
//! Replies carry RFC 3463 enhanced status codes whether or not
//! ENHANCEDSTATUSCODES is advertised (except to a refused EHLO).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use crate::auth::cram_md5_digest;
use crate::pop3::{dot_unstuff, fresh_challenge, write_flush, Conn, FakeSecurity};

/// The name the fake calls itself in its greeting, EHLO reply and
/// CRAM-MD5 challenges.
pub const FAKE_SMTP_HOST: &str = "fake.test";

/// Longest command line (CRLF excluded) before the fake calls the client
/// broken. RFC 5321 §4.5.3.1.4 allows 512 octets plus extension parameters.
const MAX_COMMAND_LINE: usize = 2048;

/// Longest SASL response line; RFC 4954 §4 asks servers to take 12288.
const MAX_SASL_LINE: usize = 12288;

/// Hard cap on a message held in memory, whatever SIZE says.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// At most this many [`SmtpEvent::BareLineEnding`]s per message; the rest
/// are counted in one [`SmtpEvent::ClientViolation`].
const MAX_BARE_EVENTS: usize = 32;

const GO_AHEAD_TLS: &[u8] = b"220 2.0.0 Ready to start TLS\r\n";
const AUTH_OK: &str = "235 2.7.0 Authentication successful";
const AUTH_INVALID: &str = "535 5.7.8 Authentication credentials invalid";
const AUTH_CANCELLED: &str = "501 5.7.0 Authentication cancelled";
const AUTH_UNDECODABLE: &str = "501 5.5.2 Cannot decode response";
const AUTH_REQUIRED: &str = "530 5.7.0 Authentication required";
const ENCRYPTION_REQUIRED: &str =
    "538 5.7.11 Encryption required for requested authentication mechanism";
const GREET_FIRST: &str = "503 5.5.1 Send EHLO first";
const NEED_MAIL: &str = "503 5.5.1 Need MAIL command";
const NO_RECIPIENTS: &str = "554 5.5.1 No valid recipients";
const TOO_BIG: &str = "552 5.3.4 Message size exceeds fixed maximum message size";
const UNRECOGNIZED: &str = "502 5.5.2 Command not recognized";
/// What a pre-ESMTP server says to EHLO (no enhanced code: it has none).
const EHLO_REFUSED: &str = "502 Command not implemented";
const LINE_TOO_LONG: &[u8] = b"500 5.5.6 Line too long\r\n";
/// LOGIN's prompts, base64 of "Username:" and "Password:".
const LOGIN_USER_PROMPT: &str = "334 VXNlcm5hbWU6";
const LOGIN_PASSWORD_PROMPT: &str = "334 UGFzc3dvcmQ6";

/// How the fake answers STARTTLS (only in [`FakeSecurity::Starttls`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum StarttlsBehaviour {
    /// Advertise it; `220 2.0.0 Ready to start TLS`, then the handshake.
    #[default]
    Accept,
    /// Leave it out of EHLO and answer `502 5.5.1` if tried anyway.
    NotOffered,
    /// Advertise it but answer `454 4.7.0`, staying plain.
    Refuse,
    /// Write `220 2.0.0 Ready to start TLS\r\n` plus these bytes in ONE
    /// write before the handshake: a man-in-the-middle injection the client
    /// must refuse (RFC 3207 §5, CVE-2011-0411).
    AcceptThenInject(Vec<u8>),
}

/// How the fake answers EHLO.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EhloBehaviour {
    /// Multi-line `250` listing the extensions.
    #[default]
    Normal,
    /// `502` as a pre-ESMTP server would; HELO still gets `250`, and with
    /// no EHLO there are no extensions: AUTH, STARTTLS, BDAT and MAIL/RCPT
    /// parameters are then refused.
    Refused,
}

/// What the fake does once a message's data has arrived (or while it does).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum DataEnd {
    /// `250 2.0.0 Ok: queued as FAKEn` (n counts from 1 per server).
    #[default]
    Accept,
    /// Give this reply line instead, e.g. `451 4.3.0 Temporary failure`.
    Reply(String),
    /// After `354` (or during BDAT), drop the connection as soon as this
    /// many data bytes have arrived, or when the whole message has, if
    /// sooner. No reply, no TLS close_notify, no [`ReceivedMessage`].
    DieAfterBytes(usize),
    /// Read the whole message (terminator included), record it, then drop
    /// the connection without replying.
    DieBeforeFinalReply,
    /// Read the whole message, record it, never answer, and keep the
    /// connection open until the client closes it (for timeout tests).
    HangBeforeFinalReply,
}

/// What one fake server does. Fields are public; builder methods are there
/// for one-liners.
#[derive(Clone, Debug)]
pub struct SmtpScript {
    /// Plain, implicit TLS (SMTPS) or STARTTLS.
    pub security: FakeSecurity,
    /// The one account's name.
    pub user: String,
    /// The one account's password (may contain spaces).
    pub password: String,
    /// SASL mechanisms advertised and accepted, in order (case-insensitive;
    /// PLAIN, LOGIN and CRAM-MD5 are implemented). Empty: no AUTH at all.
    pub auth_mechanisms: Vec<String>,
    /// Neither advertise nor accept AUTH before TLS (`538 5.7.11`).
    pub auth_only_after_tls: bool,
    /// MAIL before a successful AUTH gets `530 5.7.0`.
    pub require_auth: bool,
    /// EHLO keywords besides AUTH, STARTTLS and CHUNKING, verbatim. A
    /// `SIZE n` entry (n > 0) is enforced on `MAIL ... SIZE=` and on the
    /// received message.
    pub extensions: Vec<String>,
    /// STARTTLS behaviour.
    pub starttls: StarttlsBehaviour,
    /// EHLO behaviour.
    pub ehlo: EhloBehaviour,
    /// The greeting, sent verbatim followed by CRLF; embed `\r\n` between
    /// `220-` lines for a multi-line one (see
    /// [`SmtpScript::multiline_greeting`]). Not validated.
    pub greeting: String,
    /// Recipient address (no angle brackets, ASCII case-insensitive) → the
    /// whole reply line RCPT gets. Others get `250 2.1.5 Ok`. Only
    /// recipients answered `2xx` join the transaction.
    pub rcpt_replies: Vec<(String, String)>,
    /// Replaces the reply to a well-formed, in-sequence MAIL (checked after
    /// syntax, EHLO/HELO and AUTH; before SIZE and parameters). A `2xx`
    /// override still opens the transaction.
    pub mail_reply: Option<String>,
    /// Replaces the reply to an in-sequence DATA (there are recipients).
    /// Data is read only if the override starts with `354`.
    pub data_command_reply: Option<String>,
    /// What happens at (or during) the end of the data.
    pub data_end: DataEnd,
    /// Advertise CHUNKING and accept `BDAT n [LAST]` (RFC 3030).
    pub bdat: bool,
}

impl Default for SmtpScript {
    fn default() -> Self {
        Self {
            security: FakeSecurity::Plain,
            user: "alice".to_owned(),
            password: "wonderland".to_owned(),
            auth_mechanisms: strings(&["PLAIN", "LOGIN", "CRAM-MD5"]),
            auth_only_after_tls: false,
            require_auth: true,
            extensions: strings(&[
                "PIPELINING",
                "SIZE 10485760",
                "8BITMIME",
                "ENHANCEDSTATUSCODES",
                "SMTPUTF8",
                "DSN",
            ]),
            starttls: StarttlsBehaviour::Accept,
            ehlo: EhloBehaviour::Normal,
            greeting: format!("220 {FAKE_SMTP_HOST} ESMTP ready"),
            rcpt_replies: Vec::new(),
            mail_reply: None,
            data_command_reply: None,
            data_end: DataEnd::Accept,
            bdat: false,
        }
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

impl SmtpScript {
    /// Same as `Default::default()`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Set [`SmtpScript::security`].
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

    /// Set [`SmtpScript::auth_mechanisms`].
    pub fn auth_mechanisms(mut self, mechanisms: &[&str]) -> Self {
        self.auth_mechanisms = strings(mechanisms);
        self
    }

    /// Set [`SmtpScript::auth_only_after_tls`].
    pub fn auth_only_after_tls(mut self, only: bool) -> Self {
        self.auth_only_after_tls = only;
        self
    }

    /// Set [`SmtpScript::require_auth`].
    pub fn require_auth(mut self, require: bool) -> Self {
        self.require_auth = require;
        self
    }

    /// Set [`SmtpScript::extensions`].
    pub fn extensions(mut self, extensions: &[&str]) -> Self {
        self.extensions = strings(extensions);
        self
    }

    /// Set [`SmtpScript::starttls`].
    pub fn starttls(mut self, starttls: StarttlsBehaviour) -> Self {
        self.starttls = starttls;
        self
    }

    /// Set [`SmtpScript::ehlo`].
    pub fn ehlo(mut self, ehlo: EhloBehaviour) -> Self {
        self.ehlo = ehlo;
        self
    }

    /// Set [`SmtpScript::greeting`] (one line, without CRLF).
    pub fn greeting(mut self, greeting: &str) -> Self {
        self.greeting = greeting.to_owned();
        self
    }

    /// A multi-line `220` greeting with these texts (RFC 5321 §4.2.1:
    /// `220-` on all lines but the last).
    pub fn multiline_greeting(mut self, texts: &[&str]) -> Self {
        self.greeting = multiline(220, texts);
        self
    }

    /// Add one [`SmtpScript::rcpt_replies`] entry.
    pub fn rcpt_reply(mut self, address: &str, reply: &str) -> Self {
        self.rcpt_replies
            .push((address.to_owned(), reply.to_owned()));
        self
    }

    /// Set [`SmtpScript::mail_reply`].
    pub fn mail_reply(mut self, reply: &str) -> Self {
        self.mail_reply = Some(reply.to_owned());
        self
    }

    /// Set [`SmtpScript::data_command_reply`].
    pub fn data_command_reply(mut self, reply: &str) -> Self {
        self.data_command_reply = Some(reply.to_owned());
        self
    }

    /// Set [`SmtpScript::data_end`].
    pub fn data_end(mut self, data_end: DataEnd) -> Self {
        self.data_end = data_end;
        self
    }

    /// Set [`SmtpScript::bdat`].
    pub fn bdat(mut self, bdat: bool) -> Self {
        self.bdat = bdat;
        self
    }

    fn offers_mechanism(&self, mechanism: &str) -> bool {
        self.auth_mechanisms
            .iter()
            .any(|m| m.eq_ignore_ascii_case(mechanism))
    }

    fn has_extension(&self, keyword: &str) -> bool {
        self.extensions.iter().any(|e| {
            e.split_whitespace()
                .next()
                .is_some_and(|k| k.eq_ignore_ascii_case(keyword))
        })
    }

    /// The RFC 1870 limit advertised in a `SIZE n` extension, if any.
    fn size_limit(&self) -> Option<usize> {
        self.extensions.iter().find_map(|e| {
            let mut words = e.split_whitespace();
            let keyword = words.next()?;
            if !keyword.eq_ignore_ascii_case("SIZE") {
                return None;
            }
            // RFC 1870 §4: no number or zero means "no fixed limit".
            words.next()?.parse::<usize>().ok().filter(|n| *n > 0)
        })
    }

    fn rcpt_reply_for(&self, address: &str) -> Option<&str> {
        self.rcpt_replies
            .iter()
            .find(|(a, _)| a.eq_ignore_ascii_case(address))
            .map(|(_, reply)| reply.as_str())
    }
}

/// Which bare line-ending octet was seen in message data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BareKind {
    /// An LF not preceded by CR.
    Lf,
    /// A CR not followed by LF.
    Cr,
}

/// Something that happened on the fake's side.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SmtpEvent {
    /// A TCP connection was accepted.
    Connected,
    /// A TLS handshake (implicit or after STARTTLS) completed.
    TlsEstablished,
    /// A TLS handshake failed; the rustls error text.
    TlsFailed(String),
    /// A command line as received, secrets masked (`AUTH PLAIN ***` when
    /// an initial response is present). SASL continuation lines and message
    /// data are never recorded.
    Command(String),
    /// EHLO accepted; its argument.
    Ehlo(String),
    /// HELO accepted; its argument.
    Helo(String),
    /// Authentication succeeded.
    AuthOk {
        /// `"PLAIN"`, `"LOGIN"` or `"CRAM-MD5"`.
        mechanism: String,
        /// Whether the session was under TLS at the time.
        tls: bool,
    },
    /// Authentication was attempted and failed (wrong credentials or an
    /// undecodable response).
    AuthFailed {
        /// As in [`SmtpEvent::AuthOk`].
        mechanism: String,
    },
    /// The client answered a SASL challenge with `*`.
    AuthCancelled {
        /// As in [`SmtpEvent::AuthOk`].
        mechanism: String,
    },
    /// MAIL accepted (2xx); everything after `FROM:` verbatim, parameters
    /// included: `<a@x.test> SIZE=120 BODY=8BITMIME`.
    MailFrom(String),
    /// RCPT accepted (2xx); everything after `TO:` verbatim.
    RcptTo(String),
    /// `354` sent; message data follows.
    DataStarted,
    /// A BDAT chunk was read in a valid transaction.
    BdatChunk {
        /// Its size in octets.
        size: usize,
        /// Whether it carried LAST.
        last: bool,
    },
    /// A bare CR or LF inside message data (never a terminator); `offset`
    /// is into [`ReceivedMessage::raw`] (or the partial data).
    BareLineEnding {
        /// CR or LF.
        kind: BareKind,
        /// Offset into the message's raw bytes.
        offset: usize,
    },
    /// A complete message was stored at `index` in [`FakeSmtp::messages`].
    MessageReceived {
        /// Index into [`FakeSmtp::messages`].
        index: usize,
        /// `raw.len()`.
        size: usize,
    },
    /// The client went away mid-DATA/BDAT; nothing was stored.
    MessageAborted {
        /// Data bytes received in this transaction before the end.
        partial_bytes: usize,
    },
    /// The script dropped the connection ([`DataEnd::DieAfterBytes`],
    /// [`DataEnd::DieBeforeFinalReply`]); why.
    DroppedByScript(String),
    /// QUIT received (answered `221`).
    Quit,
    /// The client broke the protocol in a way a real server might not
    /// notice: bare LF/CR in a command line, a line over 2048 octets, bytes
    /// pipelined after STARTTLS or before `354`, non-UTF-8 commands.
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
pub struct LoggedSmtpEvent {
    /// 0-based connection counter.
    pub session: usize,
    /// What happened.
    pub event: SmtpEvent,
}

/// One message whose data arrived completely.
#[derive(Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    /// DATA: exactly the bytes between the `354` reply and the terminating
    /// `CRLF.CRLF`, the last line's CRLF included and still dot-stuffed
    /// (empty for an empty message). BDAT: the chunks concatenated.
    pub raw: Vec<u8>,
    /// `raw` with dot-stuffing undone (a line starts after any LF); equal
    /// to `raw` for BDAT.
    pub unstuffed: Vec<u8>,
    /// The reverse path without angle brackets (`""` for `<>`).
    pub mail_from: String,
    /// Accepted recipients without angle brackets, in order.
    pub rcpts: Vec<String>,
    /// Whether the session was under TLS.
    pub tls: bool,
    /// The authenticated user, if any.
    pub auth_user: Option<String>,
    /// Whether it came by BDAT rather than DATA.
    pub chunked: bool,
    /// The final reply line the fake sent (`None` when the script died or
    /// hung instead). A `2xx` means accepted.
    pub final_reply: Option<String>,
}

impl ReceivedMessage {
    /// Whether the fake accepted it (a `2xx` final reply).
    pub fn accepted(&self) -> bool {
        self.final_reply
            .as_deref()
            .is_some_and(|r| r.starts_with('2'))
    }
}

impl fmt::Debug for ReceivedMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Text, not byte arrays, so a failing assertion is readable.
        f.debug_struct("ReceivedMessage")
            .field("raw", &String::from_utf8_lossy(&self.raw))
            .field("unstuffed", &String::from_utf8_lossy(&self.unstuffed))
            .field("mail_from", &self.mail_from)
            .field("rcpts", &self.rcpts)
            .field("tls", &self.tls)
            .field("auth_user", &self.auth_user)
            .field("chunked", &self.chunked)
            .field("final_reply", &self.final_reply)
            .finish()
    }
}

struct Shared {
    script: SmtpScript,
    messages: Mutex<Vec<ReceivedMessage>>,
    log: watch::Sender<Vec<LoggedSmtpEvent>>,
    sessions: AtomicUsize,
    queued: AtomicUsize,
}

impl Shared {
    fn record(&self, session: usize, event: SmtpEvent) {
        self.log
            .send_modify(|log| log.push(LoggedSmtpEvent { session, event }));
    }
}

/// A running fake SMTP server; stops (aborting live sessions) on drop.
pub struct FakeSmtp {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl fmt::Debug for FakeSmtp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeSmtp")
            .field("addr", &self.addr)
            .field("events", &self.shared.log.borrow().len())
            .finish_non_exhaustive()
    }
}

impl Drop for FakeSmtp {
    fn drop(&mut self) {
        // Dropping the accept loop drops its JoinSet, aborting every session.
        self.task.abort();
    }
}

impl FakeSmtp {
    /// Bind `127.0.0.1:0` and start serving `script`.
    pub async fn start(script: SmtpScript) -> FakeSmtp {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind fake SMTP on loopback");
        let addr = listener.local_addr().expect("local addr");
        let (log, _) = watch::channel(Vec::new());
        let shared = Arc::new(Shared {
            script,
            messages: Mutex::new(Vec::new()),
            log,
            sessions: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
        });
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        FakeSmtp { addr, shared, task }
    }

    /// Where the fake listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The script it serves.
    pub fn script(&self) -> &SmtpScript {
        &self.shared.script
    }

    /// Every event so far, all sessions, in order.
    pub fn events(&self) -> Vec<SmtpEvent> {
        self.shared
            .log
            .borrow()
            .iter()
            .map(|e| e.event.clone())
            .collect()
    }

    /// Every event so far with its session number.
    pub fn logged_events(&self) -> Vec<LoggedSmtpEvent> {
        self.shared.log.borrow().clone()
    }

    /// Only the [`SmtpEvent::Command`] lines, in order.
    pub fn commands(&self) -> Vec<String> {
        self.shared
            .log
            .borrow()
            .iter()
            .filter_map(|e| match &e.event {
                SmtpEvent::Command(c) => Some(c.clone()),
                _ => None,
            })
            .collect()
    }

    /// Number of connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.sessions.load(Ordering::SeqCst)
    }

    /// Every complete message so far, accepted or not (see
    /// [`ReceivedMessage::final_reply`]), all sessions, in order.
    pub fn messages(&self) -> Vec<ReceivedMessage> {
        self.shared
            .messages
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    /// Only the messages the fake answered with `2xx`.
    pub fn accepted_messages(&self) -> Vec<ReceivedMessage> {
        self.messages()
            .into_iter()
            .filter(ReceivedMessage::accepted)
            .collect()
    }

    /// Wait until an event matching `pred` has been logged (it may already
    /// have been) and return the first such; `None` on timeout.
    pub async fn wait_for(
        &self,
        pred: impl Fn(&SmtpEvent) -> bool,
        timeout: Duration,
    ) -> Option<SmtpEvent> {
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

    /// Like [`FakeSmtp::wait_for`] but panics with the whole log on timeout.
    pub async fn expect_event(
        &self,
        what: &str,
        pred: impl Fn(&SmtpEvent) -> bool,
        timeout: Duration,
    ) -> SmtpEvent {
        match self.wait_for(pred, timeout).await {
            Some(e) => e,
            None => panic!(
                "fake SMTP: no {what} within {timeout:?}; log: {:#?}",
                self.logged_events()
            ),
        }
    }

    /// Wait until `pred` holds over the whole log; `false` on timeout.
    pub async fn wait_until(
        &self,
        mut pred: impl FnMut(&[LoggedSmtpEvent]) -> bool,
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

    /// Wait until at least `n` [`SmtpEvent::Closed`] events (i.e. `n`
    /// finished sessions) have been logged in total; `false` on timeout.
    pub async fn wait_closed(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(
            |log| log.iter().filter(|e| e.event == SmtpEvent::Closed).count() >= n,
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
                        shared.record(usize::MAX, SmtpEvent::SessionPanicked(e.to_string()));
                    }
                }
            }
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
    /// STARTTLS accepted: write these bytes in one go, then handshake.
    StartTls(Vec<u8>),
    /// Drop the connection now.
    Die,
    /// Never answer again; wait for the client to leave.
    Hang,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Greeted {
    No,
    Helo,
    Ehlo,
}

/// An open mail transaction (after a 2xx MAIL).
struct Transaction {
    mail_from: String,
    rcpts: Vec<String>,
    /// BDAT data so far; `Some` once the first chunk arrived.
    chunks: Option<Vec<u8>>,
}

struct Session {
    shared: Arc<Shared>,
    id: usize,
    tls: bool,
    greeted: Greeted,
    auth_user: Option<String>,
    txn: Option<Transaction>,
}

async fn run_session(shared: Arc<Shared>, id: usize, tcp: TcpStream) {
    shared.record(id, SmtpEvent::Connected);
    let mut session = Session {
        shared: Arc::clone(&shared),
        id,
        tls: false,
        greeted: Greeted::No,
        auth_user: None,
        txn: None,
    };
    // `run` consumes the socket, so it is closed by the time it returns.
    let end = session.run(tcp).await;
    if matches!(end, End::Dropped) {
        shared.record(id, SmtpEvent::ClosedWithoutQuit);
    }
    shared.record(id, SmtpEvent::Closed);
}

/// Read more bytes into `buf`; `Ok(0)` on EOF.
async fn fill(conn: &mut Conn, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut chunk = [0u8; 16 * 1024];
    let n = conn.read(&mut chunk).await?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

async fn reply(conn: &mut Conn, line: &str) -> io::Result<()> {
    let mut bytes = Vec::with_capacity(line.len() + 2);
    bytes.extend_from_slice(line.as_bytes());
    bytes.extend_from_slice(b"\r\n");
    write_flush(conn, &bytes).await
}

/// Outcome of a SASL exchange step that needs the client.
enum Sasl {
    Response(String),
    Cancelled,
}

impl Session {
    fn record(&self, event: SmtpEvent) {
        self.shared.record(self.id, event);
    }

    fn violation(&self, what: impl Into<String>) {
        self.record(SmtpEvent::ClientViolation(what.into()));
    }

    fn script(&self) -> &SmtpScript {
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
                self.record(SmtpEvent::TlsEstablished);
                Some(Conn::Tls(Box::new(tls)))
            }
            Err(e) => {
                self.record(SmtpEvent::TlsFailed(e.to_string()));
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
        let greeting = self.script().greeting.clone();
        if reply(&mut conn, &greeting).await.is_err() {
            return End::Dropped;
        }
        let mut buf = Vec::new();
        loop {
            let Some(line) = self.read_line(&mut conn, &mut buf, MAX_COMMAND_LINE).await else {
                return End::Dropped;
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
                Step::Hang => {
                    let mut sink = Vec::new();
                    while let Ok(n) = fill(&mut conn, &mut sink).await {
                        if n == 0 {
                            break;
                        }
                        sink.clear();
                    }
                    return End::Dropped;
                }
                Step::StartTls(go_ahead) => {
                    // RFC 3207 §4.2 / CVE-2011-0411: nothing may follow the
                    // STARTTLS line in the same plaintext flight.
                    if !buf.is_empty() {
                        self.violation(format!("{} bytes pipelined after STARTTLS", buf.len()));
                        return End::Dropped;
                    }
                    if write_flush(&mut conn, &go_ahead).await.is_err() {
                        return End::Dropped;
                    }
                    let (tcp, config) = match (conn, self.script().security.clone()) {
                        (Conn::Plain(tcp), FakeSecurity::Starttls(config)) => (tcp, config),
                        // `starttls` only says yes on a plain Starttls session.
                        _ => return End::Dropped,
                    };
                    conn = match self.accept_tls(config, tcp).await {
                        Some(conn) => conn,
                        None => return End::Dropped,
                    };
                    // RFC 3207 §4.2: forget everything from before TLS; the
                    // client must EHLO again.
                    self.greeted = Greeted::No;
                    self.auth_user = None;
                    self.txn = None;
                }
            }
        }
    }

    /// One line without its CRLF; `None` on EOF, error or an overlong line
    /// (answered `500 5.5.6`, then the session ends).
    async fn read_line(&self, conn: &mut Conn, buf: &mut Vec<u8>, max: usize) -> Option<String> {
        loop {
            if let Some(pos) = memchr::memchr(b'\n', buf) {
                let mut line: Vec<u8> = buf.drain(..=pos).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                } else {
                    self.violation("bare LF ending a command line");
                }
                if line.contains(&b'\r') {
                    self.violation("bare CR inside a command line");
                }
                if line.len() > max {
                    return self.line_too_long(conn, max).await;
                }
                return Some(match String::from_utf8(line) {
                    Ok(s) => s,
                    Err(e) => {
                        self.violation("non-UTF-8 command line");
                        String::from_utf8_lossy(e.as_bytes()).into_owned()
                    }
                });
            }
            // `max` octets plus a CR still waiting for its LF is the most a
            // legal line can leave buffered.
            if buf.len() > max + 1 {
                return self.line_too_long(conn, max).await;
            }
            match fill(conn, buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    async fn line_too_long(&self, conn: &mut Conn, max: usize) -> Option<String> {
        self.violation(format!("line longer than {max} octets"));
        let _ = write_flush(conn, LINE_TOO_LONG).await;
        None
    }

    async fn handle(&mut self, line: &str, conn: &mut Conn, buf: &mut Vec<u8>) -> io::Result<Step> {
        self.record(SmtpEvent::Command(masked(line)));
        let (verb, args) = match line.split_once(' ') {
            Some((v, a)) => (v.to_ascii_uppercase(), Some(a)),
            None => (line.to_ascii_uppercase(), None),
        };
        let answer: String = match verb.as_str() {
            "EHLO" => self.ehlo(args),
            "HELO" => self.helo(args),
            "STARTTLS" => match self.starttls(args) {
                Ok(step) => return Ok(step),
                Err(answer) => answer,
            },
            "AUTH" => self.auth(args, conn, buf).await?,
            "MAIL" => self.mail(args),
            "RCPT" => self.rcpt(args),
            "DATA" => return self.data(args, conn, buf).await,
            "BDAT" if self.script().bdat => return self.bdat(args, conn, buf).await,
            "RSET" => {
                self.txn = None;
                "250 2.0.0 Ok".to_owned()
            }
            "NOOP" => "250 2.0.0 Ok".to_owned(),
            "QUIT" => {
                self.record(SmtpEvent::Quit);
                reply(conn, "221 2.0.0 Bye").await?;
                return Ok(Step::Quit);
            }
            "VRFY" => "252 2.5.2 Cannot VRFY user, but will accept message".to_owned(),
            "HELP" => format!("214 2.0.0 {FAKE_SMTP_HOST} speaks RFC 5321"),
            _ => UNRECOGNIZED.to_owned(),
        };
        reply(conn, &answer).await?;
        Ok(Step::Continue)
    }

    fn auth_advertised(&self) -> bool {
        let script = self.script();
        !script.auth_mechanisms.is_empty() && (self.tls || !script.auth_only_after_tls)
    }

    fn starttls_offered(&self) -> bool {
        matches!(self.script().security, FakeSecurity::Starttls(_))
            && !self.tls
            && self.script().starttls != StarttlsBehaviour::NotOffered
    }

    fn ehlo(&mut self, args: Option<&str>) -> String {
        if self.script().ehlo == EhloBehaviour::Refused {
            return EHLO_REFUSED.to_owned();
        }
        let Some(domain) = args.map(str::trim).filter(|d| !d.is_empty()) else {
            return "501 5.5.4 Syntax: EHLO hostname".to_owned();
        };
        // RFC 5321 §4.1.4: EHLO also resets any transaction.
        self.greeted = Greeted::Ehlo;
        self.txn = None;
        self.record(SmtpEvent::Ehlo(domain.to_owned()));
        let script = self.script();
        let mut lines = vec![format!("{FAKE_SMTP_HOST} greets {domain}")];
        lines.extend(script.extensions.iter().cloned());
        if script.bdat {
            lines.push("CHUNKING".to_owned());
        }
        if self.auth_advertised() {
            lines.push(format!("AUTH {}", script.auth_mechanisms.join(" ")));
        }
        if self.starttls_offered() {
            lines.push("STARTTLS".to_owned());
        }
        multiline(250, &lines)
    }

    fn helo(&mut self, args: Option<&str>) -> String {
        let Some(domain) = args.map(str::trim).filter(|d| !d.is_empty()) else {
            return "501 5.5.4 Syntax: HELO hostname".to_owned();
        };
        self.greeted = Greeted::Helo;
        self.txn = None;
        self.record(SmtpEvent::Helo(domain.to_owned()));
        format!("250 {FAKE_SMTP_HOST}")
    }

    fn starttls(&self, args: Option<&str>) -> Result<Step, String> {
        if args.is_some() {
            // RFC 3207 §4: STARTTLS takes no parameters.
            return Err("501 5.5.4 Syntax: STARTTLS".to_owned());
        }
        let script = self.script();
        if !matches!(script.security, FakeSecurity::Starttls(_))
            || script.starttls == StarttlsBehaviour::NotOffered
        {
            return Err("502 5.5.1 STARTTLS not supported".to_owned());
        }
        if self.tls {
            return Err("503 5.5.1 TLS already active".to_owned());
        }
        if self.greeted != Greeted::Ehlo {
            return Err(GREET_FIRST.to_owned());
        }
        match &script.starttls {
            StarttlsBehaviour::Accept => Ok(Step::StartTls(GO_AHEAD_TLS.to_vec())),
            StarttlsBehaviour::Refuse => {
                Err("454 4.7.0 TLS not available due to temporary reason".to_owned())
            }
            StarttlsBehaviour::AcceptThenInject(extra) => {
                let mut bytes = GO_AHEAD_TLS.to_vec();
                bytes.extend_from_slice(extra);
                Ok(Step::StartTls(bytes))
            }
            StarttlsBehaviour::NotOffered => Err("502 5.5.1 STARTTLS not supported".to_owned()),
        }
    }

    async fn auth(
        &mut self,
        args: Option<&str>,
        conn: &mut Conn,
        buf: &mut Vec<u8>,
    ) -> io::Result<String> {
        if self.script().auth_mechanisms.is_empty() {
            return Ok("502 5.5.1 AUTH not supported".to_owned());
        }
        if self.greeted != Greeted::Ehlo {
            return Ok(GREET_FIRST.to_owned());
        }
        if !self.auth_advertised() {
            return Ok(ENCRYPTION_REQUIRED.to_owned());
        }
        // RFC 4954 §4: one successful AUTH per session, none mid-transaction.
        if self.auth_user.is_some() {
            return Ok("503 5.5.1 Already authenticated".to_owned());
        }
        if self.txn.is_some() {
            return Ok("503 5.5.1 AUTH not permitted during a mail transaction".to_owned());
        }
        let Some(args) = args.filter(|a| !a.is_empty()) else {
            return Ok("501 5.5.4 Syntax: AUTH mechanism [initial-response]".to_owned());
        };
        let (mechanism, initial) = match args.split_once(' ') {
            Some((m, ir)) => (m.to_ascii_uppercase(), Some(ir.to_owned())),
            None => (args.to_ascii_uppercase(), None),
        };
        if !self.script().offers_mechanism(&mechanism) {
            return Ok("504 5.5.4 Unrecognized authentication type".to_owned());
        }
        match mechanism.as_str() {
            "PLAIN" => {
                let response = match initial {
                    Some(ir) => Sasl::Response(ir),
                    None => self.challenge(conn, buf, "334 ").await?,
                };
                Ok(match response {
                    Sasl::Response(r) => self.finish_plain(&r),
                    Sasl::Cancelled => self.cancelled("PLAIN"),
                })
            }
            "LOGIN" => {
                let user = match initial {
                    Some(ir) => Sasl::Response(ir),
                    None => self.challenge(conn, buf, LOGIN_USER_PROMPT).await?,
                };
                let Sasl::Response(user) = user else {
                    return Ok(self.cancelled("LOGIN"));
                };
                let Sasl::Response(password) =
                    self.challenge(conn, buf, LOGIN_PASSWORD_PROMPT).await?
                else {
                    return Ok(self.cancelled("LOGIN"));
                };
                Ok(self.finish_login(&user, &password))
            }
            "CRAM-MD5" => {
                if initial.is_some() {
                    // RFC 2195: the server speaks first.
                    return Ok("501 5.5.4 CRAM-MD5 takes no initial response".to_owned());
                }
                let challenge = fresh_challenge();
                let encoded = base64::engine::general_purpose::STANDARD.encode(&challenge);
                let prompt = format!("334 {encoded}");
                Ok(match self.challenge(conn, buf, &prompt).await? {
                    Sasl::Response(r) => self.finish_cram(&challenge, &r),
                    Sasl::Cancelled => self.cancelled("CRAM-MD5"),
                })
            }
            _ => Ok("504 5.5.4 Unrecognized authentication type".to_owned()),
        }
    }

    /// Send a `334` prompt and read the client's line (never logged).
    async fn challenge(
        &self,
        conn: &mut Conn,
        buf: &mut Vec<u8>,
        prompt: &str,
    ) -> io::Result<Sasl> {
        reply(conn, prompt).await?;
        match self.read_line(conn, buf, MAX_SASL_LINE).await {
            // RFC 4954 §4: "*" cancels the exchange.
            Some(line) if line == "*" => Ok(Sasl::Cancelled),
            Some(line) => Ok(Sasl::Response(line)),
            None => Err(io::ErrorKind::UnexpectedEof.into()),
        }
    }

    fn cancelled(&self, mechanism: &str) -> String {
        self.record(SmtpEvent::AuthCancelled {
            mechanism: mechanism.to_owned(),
        });
        AUTH_CANCELLED.to_owned()
    }

    fn finish_plain(&mut self, response: &str) -> String {
        let Some(decoded) = decode_sasl(response) else {
            return self.undecodable("PLAIN");
        };
        let parts: Vec<&[u8]> = decoded.split(|b| *b == 0).collect();
        let [authzid, authcid, password] = parts.as_slice() else {
            return self.failed("PLAIN");
        };
        let script = self.script();
        let ok = *authcid == script.user.as_bytes()
            && *password == script.password.as_bytes()
            && (authzid.is_empty() || authzid == authcid);
        if ok {
            self.succeeded("PLAIN")
        } else {
            self.failed("PLAIN")
        }
    }

    fn finish_login(&mut self, user: &str, password: &str) -> String {
        let (Some(user), Some(password)) = (decode_sasl(user), decode_sasl(password)) else {
            return self.undecodable("LOGIN");
        };
        let script = self.script();
        if user == script.user.as_bytes() && password == script.password.as_bytes() {
            self.succeeded("LOGIN")
        } else {
            self.failed("LOGIN")
        }
    }

    fn finish_cram(&mut self, challenge: &str, response: &str) -> String {
        let Some(decoded) = decode_sasl(response).and_then(|d| String::from_utf8(d).ok()) else {
            return self.undecodable("CRAM-MD5");
        };
        // RFC 2195 §2: the user name may contain spaces; the digest is the
        // last word, lower-case hex.
        let Some((user, digest)) = decoded.rsplit_once(' ') else {
            return self.failed("CRAM-MD5");
        };
        let script = self.script();
        if user == script.user && digest == cram_md5_digest(&script.password, challenge) {
            self.succeeded("CRAM-MD5")
        } else {
            self.failed("CRAM-MD5")
        }
    }

    fn succeeded(&mut self, mechanism: &str) -> String {
        self.auth_user = Some(self.script().user.clone());
        self.record(SmtpEvent::AuthOk {
            mechanism: mechanism.to_owned(),
            tls: self.tls,
        });
        AUTH_OK.to_owned()
    }

    fn failed(&self, mechanism: &str) -> String {
        self.record(SmtpEvent::AuthFailed {
            mechanism: mechanism.to_owned(),
        });
        AUTH_INVALID.to_owned()
    }

    /// RFC 4954 §4: a response that is not base64 gets 501.
    fn undecodable(&self, mechanism: &str) -> String {
        self.record(SmtpEvent::AuthFailed {
            mechanism: mechanism.to_owned(),
        });
        AUTH_UNDECODABLE.to_owned()
    }

    fn mail(&mut self, args: Option<&str>) -> String {
        if self.greeted == Greeted::No {
            return GREET_FIRST.to_owned();
        }
        if self.script().require_auth && self.auth_user.is_none() {
            return AUTH_REQUIRED.to_owned();
        }
        if self.txn.is_some() {
            return "503 5.5.1 Nested MAIL command".to_owned();
        }
        let Some(verbatim) = args.and_then(|a| strip_prefix_ci(a, "FROM:")) else {
            return "501 5.5.4 Syntax: MAIL FROM:<address>".to_owned();
        };
        let Some((address, params)) = parse_path(verbatim) else {
            return "501 5.5.4 Syntax: MAIL FROM:<address>".to_owned();
        };
        let answer = match self.script().mail_reply.clone() {
            Some(answer) => answer,
            None => match self.check_mail_params(&params) {
                Ok(()) => "250 2.1.0 Ok".to_owned(),
                Err(answer) => return answer,
            },
        };
        if answer.starts_with('2') {
            self.txn = Some(Transaction {
                mail_from: address.to_owned(),
                rcpts: Vec::new(),
                chunks: None,
            });
            self.record(SmtpEvent::MailFrom(verbatim.to_owned()));
        }
        answer
    }

    /// A parameter is only valid if EHLO advertised its extension
    /// (RFC 5321 §4.1.1.11; unknown ones get 555).
    fn check_mail_params(&self, params: &[&str]) -> Result<(), String> {
        for param in params {
            let (keyword, value) = match param.split_once('=') {
                Some((k, v)) => (k.to_ascii_uppercase(), Some(v)),
                None => (param.to_ascii_uppercase(), None),
            };
            let extension = match keyword.as_str() {
                "SIZE" => "SIZE",
                "BODY" => "8BITMIME",
                "SMTPUTF8" => "SMTPUTF8",
                "RET" | "ENVID" => "DSN",
                "AUTH" => "AUTH",
                _ => return Err(unsupported_param(&keyword)),
            };
            let advertised = self.greeted == Greeted::Ehlo
                && match extension {
                    "AUTH" => self.auth_advertised(),
                    other => self.script().has_extension(other),
                };
            if !advertised {
                return Err(unsupported_param(&keyword));
            }
            match keyword.as_str() {
                "SIZE" => {
                    let Some(size) = value.and_then(|v| v.parse::<usize>().ok()) else {
                        return Err("501 5.5.4 Bad SIZE parameter".to_owned());
                    };
                    // RFC 1870 §6.1: refuse up front what will not fit.
                    if self.script().size_limit().is_some_and(|limit| size > limit) {
                        return Err(TOO_BIG.to_owned());
                    }
                }
                "BODY" => {
                    let ok = value.is_some_and(|v| {
                        v.eq_ignore_ascii_case("7BIT") || v.eq_ignore_ascii_case("8BITMIME")
                    });
                    if !ok {
                        return Err("501 5.5.4 Bad BODY parameter".to_owned());
                    }
                }
                "SMTPUTF8" if value.is_some() => {
                    return Err("501 5.5.4 SMTPUTF8 takes no value".to_owned());
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn rcpt(&mut self, args: Option<&str>) -> String {
        if self.txn.as_ref().is_none_or(|t| t.chunks.is_some()) {
            return NEED_MAIL.to_owned();
        }
        let Some(verbatim) = args.and_then(|a| strip_prefix_ci(a, "TO:")) else {
            return "501 5.5.4 Syntax: RCPT TO:<address>".to_owned();
        };
        let Some((address, params)) = parse_path(verbatim) else {
            return "501 5.5.4 Syntax: RCPT TO:<address>".to_owned();
        };
        if address.is_empty() {
            return "501 5.1.3 Bad recipient address syntax".to_owned();
        }
        for param in &params {
            let keyword = param.split('=').next().unwrap_or("").to_ascii_uppercase();
            let known = matches!(keyword.as_str(), "NOTIFY" | "ORCPT");
            if !known || self.greeted != Greeted::Ehlo || !self.script().has_extension("DSN") {
                return unsupported_param(&keyword);
            }
        }
        let answer = self
            .script()
            .rcpt_reply_for(address)
            .unwrap_or("250 2.1.5 Ok")
            .to_owned();
        if answer.starts_with('2') {
            if let Some(txn) = &mut self.txn {
                txn.rcpts.push(address.to_owned());
            }
            self.record(SmtpEvent::RcptTo(verbatim.to_owned()));
        }
        answer
    }

    /// The error DATA/BDAT gets when the transaction cannot take data yet.
    fn data_sequence_error(&self) -> Option<&'static str> {
        if self.greeted == Greeted::No {
            return Some(GREET_FIRST);
        }
        match &self.txn {
            None => Some(NEED_MAIL),
            Some(t) if t.rcpts.is_empty() => Some(NO_RECIPIENTS),
            Some(_) => None,
        }
    }

    async fn data(
        &mut self,
        args: Option<&str>,
        conn: &mut Conn,
        buf: &mut Vec<u8>,
    ) -> io::Result<Step> {
        if args.is_some() {
            reply(conn, "501 5.5.4 Syntax: DATA").await?;
            return Ok(Step::Continue);
        }
        if let Some(error) = self.data_sequence_error() {
            reply(conn, error).await?;
            return Ok(Step::Continue);
        }
        if self.txn.as_ref().is_some_and(|t| t.chunks.is_some()) {
            reply(conn, "503 5.5.1 DATA not allowed after BDAT").await?;
            return Ok(Step::Continue);
        }
        let go_ahead = self
            .script()
            .data_command_reply
            .clone()
            .unwrap_or_else(|| "354 End data with <CR><LF>.<CR><LF>".to_owned());
        if !go_ahead.starts_with("354") {
            reply(conn, &go_ahead).await?;
            return Ok(Step::Continue);
        }
        // RFC 2920 §3.1: DATA ends a pipelined group; content waits for 354.
        if !buf.is_empty() {
            self.violation(format!("{} bytes sent before the 354 reply", buf.len()));
        }
        reply(conn, &go_ahead).await?;
        self.record(SmtpEvent::DataStarted);

        let cut = match self.script().data_end {
            DataEnd::DieAfterBytes(n) => Some(n),
            _ => None,
        };
        let mut scanned = 0;
        let (body_len, consumed) = loop {
            if let Some(cut) = cut {
                if buf.len() >= cut {
                    self.record(SmtpEvent::DroppedByScript(format!(
                        "{} DATA bytes received, cut at {cut}",
                        buf.len()
                    )));
                    return Ok(Step::Die);
                }
            }
            if let Some(end) = find_data_end(buf, scanned) {
                break end;
            }
            scanned = buf.len();
            if buf.len() > MAX_MESSAGE {
                self.violation(format!("message over {MAX_MESSAGE} octets"));
                return Ok(Step::Die);
            }
            match fill(conn, buf).await {
                Ok(n) if n > 0 => {}
                Ok(_) | Err(_) => {
                    self.report_bare_line_endings(buf);
                    self.record(SmtpEvent::MessageAborted {
                        partial_bytes: buf.len(),
                    });
                    return Ok(Step::Die);
                }
            }
        };
        if cut.is_some() {
            self.record(SmtpEvent::DroppedByScript(format!(
                "whole message ({body_len} bytes) arrived before the cut"
            )));
            return Ok(Step::Die);
        }
        let raw = buf[..body_len].to_vec();
        buf.drain(..consumed);
        // `raw` is empty or ends in CRLF, so this always has its terminator.
        let unstuffed = dot_unstuff(&[&raw[..], b".\r\n"].concat()).unwrap_or_default();
        self.finish_message(raw, unstuffed, false, conn).await
    }

    async fn bdat(
        &mut self,
        args: Option<&str>,
        conn: &mut Conn,
        buf: &mut Vec<u8>,
    ) -> io::Result<Step> {
        let Some((size, last)) = args.and_then(parse_bdat) else {
            // The chunk length is unknown, so its bytes will be read as
            // commands; a real server is no better off (RFC 3030 §4).
            reply(conn, "501 5.5.4 Syntax: BDAT size [LAST]").await?;
            return Ok(Step::Continue);
        };
        let error = if self.greeted != Greeted::Ehlo {
            Some(GREET_FIRST)
        } else {
            self.data_sequence_error()
        };
        let prior = self
            .txn
            .as_ref()
            .and_then(|t| t.chunks.as_ref())
            .map_or(0, Vec::len);
        if prior.saturating_add(size) > MAX_MESSAGE {
            self.violation(format!("message over {MAX_MESSAGE} octets"));
            return Ok(Step::Die);
        }
        let cut = match (&self.script().data_end, error) {
            (DataEnd::DieAfterBytes(n), None) => Some(*n),
            _ => None,
        };
        // RFC 3030 §2: the chunk is read even when the command is refused.
        loop {
            let have = buf.len().min(size);
            if let Some(cut) = cut {
                if prior + have >= cut {
                    self.record(SmtpEvent::DroppedByScript(format!(
                        "{} BDAT bytes received, cut at {cut}",
                        prior + have
                    )));
                    return Ok(Step::Die);
                }
            }
            if buf.len() >= size {
                break;
            }
            match fill(conn, buf).await {
                Ok(n) if n > 0 => {}
                Ok(_) | Err(_) => {
                    if error.is_none() {
                        self.record(SmtpEvent::MessageAborted {
                            partial_bytes: prior + buf.len(),
                        });
                    }
                    return Ok(Step::Die);
                }
            }
        }
        let chunk: Vec<u8> = buf.drain(..size).collect();
        if let Some(error) = error {
            reply(conn, error).await?;
            return Ok(Step::Continue);
        }
        self.record(SmtpEvent::BdatChunk { size, last });
        let Some(txn) = &mut self.txn else {
            return Ok(Step::Die);
        };
        let data = txn.chunks.get_or_insert_with(Vec::new);
        data.extend_from_slice(&chunk);
        if !last {
            reply(conn, &format!("250 2.0.0 {size} octets received")).await?;
            return Ok(Step::Continue);
        }
        let raw = std::mem::take(data);
        if cut.is_some() {
            self.record(SmtpEvent::DroppedByScript(format!(
                "whole message ({} bytes) arrived before the cut",
                raw.len()
            )));
            return Ok(Step::Die);
        }
        self.finish_message(raw.clone(), raw, true, conn).await
    }

    /// Store a complete message and give (or withhold) the final reply.
    async fn finish_message(
        &mut self,
        raw: Vec<u8>,
        unstuffed: Vec<u8>,
        chunked: bool,
        conn: &mut Conn,
    ) -> io::Result<Step> {
        self.report_bare_line_endings(&raw);
        let Some(txn) = self.txn.take() else {
            return Ok(Step::Die);
        };
        let too_big = self
            .script()
            .size_limit()
            .is_some_and(|limit| unstuffed.len() > limit);
        let final_reply = match &self.script().data_end {
            _ if too_big => Some(TOO_BIG.to_owned()),
            DataEnd::Accept => {
                let n = self.shared.queued.fetch_add(1, Ordering::SeqCst) + 1;
                Some(format!("250 2.0.0 Ok: queued as FAKE{n}"))
            }
            DataEnd::Reply(answer) => Some(answer.clone()),
            DataEnd::DieAfterBytes(_)
            | DataEnd::DieBeforeFinalReply
            | DataEnd::HangBeforeFinalReply => None,
        };
        let size = raw.len();
        let message = ReceivedMessage {
            raw,
            unstuffed,
            mail_from: txn.mail_from,
            rcpts: txn.rcpts,
            tls: self.tls,
            auth_user: self.auth_user.clone(),
            chunked,
            final_reply: final_reply.clone(),
        };
        let index = match self.shared.messages.lock() {
            Ok(mut messages) => {
                messages.push(message);
                messages.len() - 1
            }
            Err(_) => usize::MAX,
        };
        self.record(SmtpEvent::MessageReceived { index, size });
        match final_reply {
            Some(answer) => {
                reply(conn, &answer).await?;
                Ok(Step::Continue)
            }
            None if self.script().data_end == DataEnd::HangBeforeFinalReply => Ok(Step::Hang),
            None => {
                self.record(SmtpEvent::DroppedByScript(
                    "whole message received, no final reply".to_owned(),
                ));
                Ok(Step::Die)
            }
        }
    }

    fn report_bare_line_endings(&self, data: &[u8]) {
        let found = bare_line_endings(data);
        for (kind, offset) in found.iter().take(MAX_BARE_EVENTS) {
            self.record(SmtpEvent::BareLineEnding {
                kind: *kind,
                offset: *offset,
            });
        }
        if found.len() > MAX_BARE_EVENTS {
            self.violation(format!(
                "{} more bare line endings in one message",
                found.len() - MAX_BARE_EVENTS
            ));
        }
    }
}

fn unsupported_param(keyword: &str) -> String {
    format!("555 5.5.4 Unsupported parameter {keyword}")
}

/// Decode a SASL response; RFC 4954 §4: `=` is an empty response.
fn decode_sasl(response: &str) -> Option<Vec<u8>> {
    if response == "=" {
        return Some(Vec::new());
    }
    base64::engine::general_purpose::STANDARD
        .decode(response)
        .ok()
}

/// The command line as logged: an AUTH initial response is a secret.
fn masked(line: &str) -> String {
    let (verb, rest) = line.split_once(' ').unwrap_or((line, ""));
    if verb.eq_ignore_ascii_case("AUTH") {
        if let Some((mechanism, _)) = rest.split_once(' ') {
            return format!("{verb} {mechanism} ***");
        }
    }
    line.to_owned()
}

/// `s` without a leading `prefix`, compared ASCII case-insensitively.
fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// `<address> [param ...]` right after `FROM:`/`TO:`, strictly: no space
/// before `<` (RFC 5321 §4.1.1.2), one or more spaces before parameters.
fn parse_path(arg: &str) -> Option<(&str, Vec<&str>)> {
    let inner = arg.strip_prefix('<')?;
    let close = inner.find('>')?;
    let address = &inner[..close];
    let rest = &inner[close + 1..];
    if !rest.is_empty() && !rest.starts_with(' ') {
        return None;
    }
    Some((address, rest.split(' ').filter(|p| !p.is_empty()).collect()))
}

/// `n` or `n LAST` (RFC 3030 §2).
fn parse_bdat(args: &str) -> Option<(usize, bool)> {
    let mut words = args.split(' ');
    let size = words.next()?;
    if size.is_empty() || !size.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let size = size.parse().ok()?;
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return None,
    };
    words.next().is_none().then_some((size, last))
}

/// Where DATA content ends, searching from `from` (a previous search's
/// `data.len()`, to scan a large message once). Returns `(body_len,
/// consumed)`: the body is `data[..body_len]` (last CRLF included) and the
/// terminator ends at `consumed`. The DATA command's own CRLF counts as the
/// CRLF before the terminator, so `.\r\n` first is an empty message. Only
/// `CRLF.CRLF` ends the data; `LF.LF`, `CRLF.LF`, `LF.CRLF` and `CR.CR` are
/// content (SMTP smuggling).
fn find_data_end(data: &[u8], from: usize) -> Option<(usize, usize)> {
    if data.starts_with(b".\r\n") {
        return Some((0, 3));
    }
    let start = from.saturating_sub(4).min(data.len());
    memchr::memmem::find(&data[start..], b"\r\n.\r\n").map(|p| (start + p + 2, start + p + 5))
}

/// Every bare LF (no CR before; the very first octet follows the DATA
/// line's LF, so an LF there is bare) and bare CR (no LF after).
fn bare_line_endings(data: &[u8]) -> Vec<(BareKind, usize)> {
    let mut found = Vec::new();
    for (i, &b) in data.iter().enumerate() {
        match b {
            b'\n' if i == 0 || data[i - 1] != b'\r' => found.push((BareKind::Lf, i)),
            b'\r' if data.get(i + 1) != Some(&b'\n') => found.push((BareKind::Cr, i)),
            _ => {}
        }
    }
    found
}

/// An RFC 5321 §4.2.1 multi-line reply, without the final CRLF:
/// `ddd-` on every line but the last, `ddd ` on the last.
fn multiline<S: AsRef<str>>(code: u16, texts: &[S]) -> String {
    let mut out = String::new();
    let n = texts.len();
    for (i, text) in texts.iter().enumerate() {
        if i > 0 {
            out.push_str("\r\n");
        }
        let sep = if i + 1 == n { ' ' } else { '-' };
        out.push_str(&format!("{code}{sep}{}", text.as_ref()));
    }
    if n == 0 {
        out = code.to_string();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `input` in chunks of `size` and search like the session does.
    fn scan_in_chunks(input: &[u8], size: usize) -> Option<(Vec<u8>, Vec<u8>)> {
        let mut buf = Vec::new();
        let mut scanned = 0;
        for chunk in input.chunks(size) {
            buf.extend_from_slice(chunk);
            if let Some((body_len, consumed)) = find_data_end(&buf, scanned) {
                let body = buf[..body_len].to_vec();
                let rest = [&buf[consumed..], &input[buf.len()..]].concat();
                return Some((body, rest));
            }
            scanned = buf.len();
        }
        None
    }

    #[test]
    fn data_terminator_table_in_every_chunk_size() {
        type Case = (&'static [u8], Option<(&'static [u8], &'static [u8])>);
        let cases: &[Case] = &[
            (b".\r\n", Some((b"", b""))),
            (b".\r\nQUIT\r\n", Some((b"", b"QUIT\r\n"))),
            (b"a\r\n.\r\n", Some((b"a\r\n", b""))),
            (b"\r\n.\r\n", Some((b"\r\n", b""))),
            (b"..\r\n.\r\n", Some((b"..\r\n", b""))),
            (b".x\r\n.\r\nRSET\r\n", Some((b".x\r\n", b"RSET\r\n"))),
            (b"a\r\n..\r\nb\r\n.\r\n", Some((b"a\r\n..\r\nb\r\n", b""))),
            // SMTP smuggling vectors: none of these end the data.
            (b"a\n.\nb\r\n.\r\n", Some((b"a\n.\nb\r\n", b""))),
            (b"a\r\n.\nb\r\n.\r\n", Some((b"a\r\n.\nb\r\n", b""))),
            (b"a\n.\r\nb\r\n.\r\n", Some((b"a\n.\r\nb\r\n", b""))),
            (b"a\r.\r\nb\r\n.\r\n", Some((b"a\r.\r\nb\r\n", b""))),
            (b"a\r\n.\rb\r\n.\r\n", Some((b"a\r\n.\rb\r\n", b""))),
            (b"a\r\r\n.\r\n", Some((b"a\r\r\n", b""))),
            (b".\n", None),
            (b".\r", None),
            (b"a\r\n.\r", None),
            (b"a\r\n.\n", None),
            (b"", None),
        ];
        for (input, expected) in cases {
            for size in 1..=input.len().max(1) {
                let got = scan_in_chunks(input, size);
                let expected = expected.map(|(b, r)| (b.to_vec(), r.to_vec()));
                assert_eq!(
                    got,
                    expected,
                    "input {:?} in chunks of {size}",
                    String::from_utf8_lossy(input)
                );
            }
        }
    }

    #[test]
    fn data_terminator_is_found_once_across_pipelined_messages() {
        let input = b"one\r\n.\r\nMAIL FROM:<a@b>\r\n";
        assert_eq!(find_data_end(input, 0), Some((5, 8)));
        // A resumed search must not miss a terminator split across reads.
        let partial = b"x\r\n.";
        assert_eq!(find_data_end(partial, 0), None);
        let whole = b"x\r\n.\r\n";
        assert_eq!(find_data_end(whole, partial.len()), Some((3, 6)));
    }

    #[test]
    fn bare_line_ending_table() {
        assert!(bare_line_endings(b"a\r\nb\r\n").is_empty());
        assert!(bare_line_endings(b"").is_empty());
        assert_eq!(bare_line_endings(b"\nx\r\n"), [(BareKind::Lf, 0)]);
        assert_eq!(
            bare_line_endings(b"a\nb\rc\r\r\n"),
            [(BareKind::Lf, 1), (BareKind::Cr, 3), (BareKind::Cr, 5)]
        );
        assert_eq!(bare_line_endings(b"a\r"), [(BareKind::Cr, 1)]);
    }

    #[test]
    fn masking_hides_auth_responses_only() {
        assert_eq!(masked("AUTH PLAIN AGEAYg=="), "AUTH PLAIN ***");
        assert_eq!(masked("auth login YWxpY2U="), "auth login ***");
        assert_eq!(masked("AUTH CRAM-MD5"), "AUTH CRAM-MD5");
        assert_eq!(masked("MAIL FROM:<a@b> AUTH=<>"), "MAIL FROM:<a@b> AUTH=<>");
        assert_eq!(masked("NOOP"), "NOOP");
    }

    #[test]
    fn path_parsing() {
        assert_eq!(parse_path("<a@b>"), Some(("a@b", vec![])));
        assert_eq!(parse_path("<>"), Some(("", vec![])));
        assert_eq!(
            parse_path("<a@b> SIZE=10  BODY=8BITMIME"),
            Some(("a@b", vec!["SIZE=10", "BODY=8BITMIME"]))
        );
        assert_eq!(parse_path(" <a@b>"), None);
        assert_eq!(parse_path("a@b"), None);
        assert_eq!(parse_path("<a@b"), None);
        assert_eq!(parse_path("<a@b>SIZE=1"), None);
        assert_eq!(strip_prefix_ci("from:<x>", "FROM:"), Some("<x>"));
        assert_eq!(strip_prefix_ci("FROM <x>", "FROM:"), None);
        assert_eq!(strip_prefix_ci("F", "FROM:"), None);
        assert_eq!(strip_prefix_ci("FRé:", "FROM:"), None);
    }

    #[test]
    fn bdat_argument_parsing() {
        assert_eq!(parse_bdat("10"), Some((10, false)));
        assert_eq!(parse_bdat("0 LAST"), Some((0, true)));
        assert_eq!(parse_bdat("7 last"), Some((7, true)));
        assert_eq!(parse_bdat(""), None);
        assert_eq!(parse_bdat("-1"), None);
        assert_eq!(parse_bdat("+1"), None);
        assert_eq!(parse_bdat("1 FIRST"), None);
        assert_eq!(parse_bdat("1 LAST x"), None);
        assert_eq!(parse_bdat("99999999999999999999999"), None);
    }

    #[test]
    fn multiline_framing() {
        assert_eq!(multiline(250, &["only"]), "250 only");
        assert_eq!(multiline(250, &["a", "b", "c"]), "250-a\r\n250-b\r\n250 c");
        assert_eq!(multiline::<&str>(220, &[]), "220");
    }

    #[test]
    fn script_size_limit_and_extensions() {
        let script = SmtpScript::default();
        assert_eq!(script.size_limit(), Some(10_485_760));
        assert!(script.has_extension("dsn"));
        assert!(!script.has_extension("CHUNKING"));
        assert_eq!(script.clone().extensions(&["SIZE"]).size_limit(), None);
        assert_eq!(script.clone().extensions(&["SIZE 0"]).size_limit(), None);
        assert_eq!(script.extensions(&["size 100"]).size_limit(), Some(100));
    }

    #[test]
    fn sasl_decoding() {
        assert_eq!(decode_sasl("="), Some(Vec::new()));
        assert_eq!(decode_sasl("YQ=="), Some(b"a".to_vec()));
        assert_eq!(decode_sasl("not base64!"), None);
    }
}
