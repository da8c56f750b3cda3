//! What the fake IMAP server logs: [`ImapEvent`] and [`LoggedImapEvent`].

use crate::bearer::BearerAttempt;
use crate::fake::fake_event;

/// Something that happened on the fake's side.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImapEvent {
    /// A TCP connection was accepted.
    Connected,
    /// A TLS handshake (implicit or after STARTTLS) completed.
    TlsEstablished,
    /// A TLS handshake failed; the rustls error text.
    TlsFailed(String),
    /// A command's name only, upper case, `UID FETCH` style for UID
    /// commands: never its tag, arguments, literals, or SASL lines, so
    /// never a password or token.
    Command(String),
    /// Authentication succeeded.
    LoggedIn {
        /// The command that did it: `"LOGIN"` or `"AUTHENTICATE <mech>"`
        /// (`"AUTHENTICATE PLAIN"`, `"AUTHENTICATE LOGIN"`,
        /// `"AUTHENTICATE CRAM-MD5"`, `"AUTHENTICATE XOAUTH2"`,
        /// `"AUTHENTICATE OAUTHBEARER"`).
        mechanism: String,
        /// The user now logged in.
        user: String,
        /// Whether AUTHENTICATE carried a SASL-IR initial response.
        initial_response: bool,
        /// Whether the session was under TLS at the time.
        tls: bool,
    },
    /// Authentication was attempted and failed (wrong credentials, an
    /// undecodable or malformed response, a refused token).
    AuthFailed {
        /// As in [`ImapEvent::LoggedIn`].
        mechanism: String,
    },
    /// The client answered a SASL challenge with `*`.
    AuthCancelled {
        /// As in [`ImapEvent::LoggedIn`].
        mechanism: String,
    },
    /// An XOAUTH2 or OAUTHBEARER response was checked: the form, the user
    /// it named and the verdict (never the token). Followed by
    /// [`ImapEvent::LoggedIn`] or [`ImapEvent::AuthFailed`]; a
    /// [`BearerOutcome::Malformed`](crate::BearerOutcome::Malformed) one
    /// also by an [`ImapEvent::ClientViolation`].
    BearerAuth(BearerAttempt),
    /// SELECT or EXAMINE opened a mailbox.
    Selected {
        /// Its name as stored.
        mailbox: String,
        /// EXAMINE (or a read-only mailbox).
        read_only: bool,
    },
    /// APPEND stored a message.
    Appended {
        /// The mailbox, as stored.
        mailbox: String,
        /// The UID it got.
        uid: u32,
        /// The literal's size in octets.
        size: usize,
        /// `{n}` (`true`) or LITERAL+'s `{n+}` (`false`).
        synchronizing: bool,
    },
    /// EXPUNGE or CLOSE removed messages.
    Expunged {
        /// The mailbox, as stored.
        mailbox: String,
        /// The UIDs removed, ascending.
        uids: Vec<u32>,
    },
    /// `+ idling` sent.
    IdleStarted,
    /// `DONE` received, IDLE answered `OK`.
    IdleDone,
    /// The script dropped the connection
    /// ([`ImapScript::die_mid_fetch`](crate::ImapScript::die_mid_fetch));
    /// why.
    DroppedByScript(String),
    /// LOGOUT answered (`* BYE`, tagged `OK`).
    Logout,
    /// The client broke the protocol in a way a real server might not
    /// notice or might forgive: bad syntax (bad tag, quoting, spacing,
    /// parentheses), literal protocol errors (bytes before the `+`
    /// continuation, `{n+}` without LITERAL+, oversized literals), an
    /// initial response without SASL-IR, LOGIN despite LOGINDISABLED,
    /// bytes pipelined after STARTTLS or plaintext after its `OK` before
    /// the handshake, a line other than `DONE` in IDLE, bare LF, an
    /// overlong line, a malformed bearer response, a wrong answer to the
    /// bearer error challenge. Never quotes the client's bytes.
    ClientViolation(String),
    /// The session ended without LOGOUT.
    ClosedWithoutQuit,
    /// The session's socket is closed (always the session's last event).
    Closed,
    /// A session task panicked (a testkit bug); logged with session
    /// number `usize::MAX`.
    SessionPanicked(String),
}

/// An event together with the session that produced it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedImapEvent {
    /// 0-based connection counter.
    pub session: usize,
    /// What happened.
    pub event: ImapEvent,
}

fake_event!(ImapEvent, LoggedImapEvent, "fake IMAP");
