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

mod auth;
mod data;
mod envelope;
mod events;
mod script;
mod session;

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};

pub use events::{BareKind, LoggedSmtpEvent, ReceivedMessage, SmtpEvent};
pub use script::{DataEnd, EhloBehaviour, SmtpScript, StarttlsBehaviour, FAKE_SMTP_HOST};

use crate::fake::{event_log_api, EventLog, Listener};
use session::Session;

/// What every session of one fake sees.
struct Shared {
    script: SmtpScript,
    messages: Mutex<Vec<ReceivedMessage>>,
    /// Messages queued so far, for `queued as FAKEn`.
    queued: AtomicUsize,
}

/// A running fake SMTP server; stops (aborting live sessions) on drop.
pub struct FakeSmtp {
    shared: Arc<Shared>,
    log: EventLog<SmtpEvent>,
    server: Listener,
}

impl fmt::Debug for FakeSmtp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeSmtp")
            .field("addr", &self.addr())
            .field("events", &self.log.len())
            .finish_non_exhaustive()
    }
}

impl FakeSmtp {
    /// Bind `127.0.0.1:0` and start serving `script`.
    pub async fn start(script: SmtpScript) -> FakeSmtp {
        let shared = Arc::new(Shared {
            script,
            messages: Mutex::new(Vec::new()),
            queued: AtomicUsize::new(0),
        });
        let log = EventLog::new();
        let for_sessions = Arc::clone(&shared);
        let server = Listener::start("fake SMTP", log.clone(), move |link| {
            Session::new(Arc::clone(&for_sessions), link)
        })
        .await;
        FakeSmtp {
            shared,
            log,
            server,
        }
    }

    /// Where the fake listens.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// The script it serves.
    pub fn script(&self) -> &SmtpScript {
        &self.shared.script
    }

    event_log_api!(SmtpEvent, LoggedSmtpEvent);

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
}
