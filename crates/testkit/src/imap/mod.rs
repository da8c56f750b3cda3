//! `FakeImap`: a scripted IMAP upstream that really checks what it is sent.
//!
//! It listens on `127.0.0.1:0`, spawns one task per connection and speaks
//! enough IMAP4rev1 (RFC 3501) for real clients: STARTTLS, LOGIN (atoms,
//! quoted strings, literals), AUTHENTICATE (RFC 4959 SASL-IR) with PLAIN
//! (RFC 4616), LOGIN and CRAM-MD5 (RFC 2195) checked for real and
//! XOAUTH2 / OAUTHBEARER (RFC 7628) checked against a bearer verifier;
//! LITERAL+ (RFC 7888), IDLE (RFC 2177), ID (RFC 2971); and after login
//! LIST/LSUB, SELECT/EXAMINE, STATUS, CREATE, APPEND, FETCH, STORE,
//! SEARCH, EXPUNGE, CLOSE, UNSELECT, CHECK over a small mailbox model all
//! sessions share. Every session appends [`ImapEvent`]s to one shared
//! log.
//!
//! ```text
//!  connect ─(Tls: handshake)─> greeting ─┬─ * OK ──────> NOT AUTHENTICATED ──LOGIN / AUTHENTICATE OK──┐
//!                                        ├─ * PREAUTH ─────────────────────────────────────────────┐  │
//!                                        └─ * BYE: close        │ ▲ STARTTLS OK:                    ▼  ▼
//!                                                               ▼ │ handshake                 AUTHENTICATED
//!                                                           (TLS handshake)            SELECT ⇄ CLOSE/UNSELECT
//!                                                                                               SELECTED
//!  LOGOUT (any state): * BYE, tagged OK, close.
//! ```
//!
//! Each session ends with exactly one [`ImapEvent::Closed`], recorded after
//! the socket is gone; when the client never sent LOGOUT (EOF, error, TLS
//! failure, scripted death, a `* BYE` greeting) an
//! [`ImapEvent::ClosedWithoutQuit`] precedes it.

mod commands;
mod events;
mod fetch;
mod login;
mod parse;
mod script;
mod session;
mod store;

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

pub use events::{ImapEvent, LoggedImapEvent};
pub use script::{
    ImapGreeting, ImapMoment, ImapScript, ImapStarttls, INJECTED_CAPABILITY, STRAY_OK,
};
pub use store::ImapMessage;

use crate::fake::{event_log_api, EventLog, Listener};
use session::Session;
use store::Store;

/// What every session of one fake sees.
struct Shared {
    script: ImapScript,
    store: Mutex<Store>,
    /// Bumped on every change to the store, so IDLE can wake up.
    changed: watch::Sender<u64>,
}

impl Shared {
    fn store(&self) -> MutexGuard<'_, Store> {
        // A session that panicked mid-update leaves a usable store.
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tell idling sessions the store changed.
    fn notify(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// A running fake IMAP server; stops (aborting live sessions) on drop.
pub struct FakeImap {
    shared: Arc<Shared>,
    log: EventLog<ImapEvent>,
    server: Listener,
}

impl fmt::Debug for FakeImap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeImap")
            .field("addr", &self.addr())
            .field("events", &self.log.len())
            .finish_non_exhaustive()
    }
}

impl FakeImap {
    /// Bind `127.0.0.1:0` and start serving `script`.
    pub async fn start(script: ImapScript) -> FakeImap {
        let store = Store::new(&script);
        let (changed, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            script,
            store: Mutex::new(store),
            changed,
        });
        let log = EventLog::new();
        let for_sessions = Arc::clone(&shared);
        let server = Listener::start("fake IMAP", log.clone(), move |link| {
            Session::new(Arc::clone(&for_sessions), link)
        })
        .await;
        FakeImap {
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
    pub fn script(&self) -> &ImapScript {
        &self.shared.script
    }

    event_log_api!(ImapEvent, LoggedImapEvent);

    /// The mailbox names, in creation order (INBOX first unless the script
    /// listed it later).
    pub fn mailboxes(&self) -> Vec<String> {
        self.shared
            .store()
            .mailboxes
            .iter()
            .map(|m| m.name.clone())
            .collect()
    }

    /// The messages in mailbox `name` now (INBOX case-insensitively),
    /// ascending UID; empty if there is no such mailbox.
    pub fn messages(&self, name: &str) -> Vec<ImapMessage> {
        self.shared
            .store()
            .find(name)
            .map(|m| m.messages.clone())
            .unwrap_or_default()
    }

    /// Deliver a message into mailbox `name` as a mail server would (no
    /// flags): sessions that have it selected see `* n EXISTS` on their
    /// next NOOP, or at once while idling. Its UID, or `None` if there is
    /// no such mailbox.
    pub fn deliver(&self, name: &str, body: impl Into<Vec<u8>>) -> Option<u32> {
        let uid = self
            .shared
            .store()
            .append(name, Vec::new(), None, body.into());
        if uid.is_some() {
            self.shared.notify();
        }
        uid
    }
}
