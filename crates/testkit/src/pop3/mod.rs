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

mod events;
mod login;
mod mailbox;
mod script;
mod session;

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

pub use events::{LoggedEvent, Pop3Event};
pub use script::{CapaBehaviour, Pop3Script, StlsBehaviour, RFC1939_TIMESTAMP, UNIQUE_TIMESTAMP};

use crate::fake::{event_log_api, EventLog, Listener};
use mailbox::StoredMessage;
use session::Session;

/// What every session of one fake sees.
struct Shared {
    script: Pop3Script,
    /// Deletions committed by QUIT are seen by later logins.
    mailbox: Mutex<Vec<StoredMessage>>,
}

/// A running fake POP3 server; stops (aborting live sessions) on drop.
pub struct FakePop3 {
    shared: Arc<Shared>,
    log: EventLog<Pop3Event>,
    server: Listener,
}

impl fmt::Debug for FakePop3 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakePop3")
            .field("addr", &self.addr())
            .field("events", &self.log.len())
            .finish_non_exhaustive()
    }
}

impl FakePop3 {
    /// Bind `127.0.0.1:0` and start serving `script`.
    pub async fn start(script: Pop3Script) -> FakePop3 {
        let mailbox = StoredMessage::mailbox(&script.messages);
        let shared = Arc::new(Shared {
            script,
            mailbox: Mutex::new(mailbox),
        });
        let log = EventLog::new();
        let for_sessions = Arc::clone(&shared);
        let server = Listener::start("fake POP3", log.clone(), move |link| {
            Session::new(Arc::clone(&for_sessions), link)
        })
        .await;
        FakePop3 {
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
    pub fn script(&self) -> &Pop3Script {
        &self.shared.script
    }

    event_log_api!(Pop3Event, LoggedEvent);

    /// Number of messages left in the shared mailbox (after committed QUITs).
    pub fn mailbox_len(&self) -> usize {
        self.shared.mailbox.lock().map(|m| m.len()).unwrap_or(0)
    }
}
