//! What the fake POP3 server logs: [`Pop3Event`] and [`LoggedEvent`].

use crate::bearer::BearerAttempt;
use crate::fake::fake_event;

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
        /// `"USER"`, `"APOP"`, `"PLAIN"`, `"CRAM-MD5"`, `"XOAUTH2"` or
        /// `"OAUTHBEARER"`.
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
        /// As in [`Pop3Event::LoggedIn`].
        method: String,
    },
    /// An XOAUTH2 or OAUTHBEARER response was checked: the form, the user
    /// it named and the verdict (never the token). Followed by
    /// [`Pop3Event::LoggedIn`] or [`Pop3Event::AuthFailed`]; a
    /// [`BearerOutcome::Malformed`](crate::BearerOutcome::Malformed) one
    /// also by a [`Pop3Event::ClientViolation`].
    BearerAuth(BearerAttempt),
    /// QUIT in TRANSACTION state; the 1-based numbers deleted (sorted).
    QuitCommitted {
        /// Message numbers as the session saw them.
        deleted: Vec<usize>,
    },
    /// The client broke the protocol in a way a real server might not
    /// notice: bare LF, overlong line, bytes pipelined after STLS, an AUTH
    /// line with an initial response over 255 octets, a malformed bearer
    /// response, a wrong answer to the bearer error challenge.
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

fake_event!(Pop3Event, LoggedEvent, "fake POP3");
