//! What the fake SMTP server logs and keeps: [`SmtpEvent`],
//! [`LoggedSmtpEvent`] and [`ReceivedMessage`].

use std::fmt;

use crate::bearer::BearerAttempt;
use crate::fake::fake_event;

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
        /// `"PLAIN"`, `"LOGIN"`, `"CRAM-MD5"`, `"XOAUTH2"` or
        /// `"OAUTHBEARER"`.
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
    /// An XOAUTH2 or OAUTHBEARER response was checked: the form, the user
    /// it named and the verdict (never the token). Followed by
    /// [`SmtpEvent::AuthOk`] or [`SmtpEvent::AuthFailed`]; a
    /// [`BearerOutcome::Malformed`](crate::BearerOutcome::Malformed) one
    /// also by a [`SmtpEvent::ClientViolation`].
    BearerAuth(BearerAttempt),
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
    /// A complete message was stored at `index` in
    /// [`FakeSmtp::messages`](crate::FakeSmtp::messages).
    MessageReceived {
        /// Index into [`FakeSmtp::messages`](crate::FakeSmtp::messages).
        index: usize,
        /// `raw.len()`.
        size: usize,
    },
    /// The client went away mid-DATA/BDAT; nothing was stored.
    MessageAborted {
        /// Data bytes received in this transaction before the end.
        partial_bytes: usize,
    },
    /// The script dropped the connection
    /// ([`DataEnd::DieAfterBytes`](crate::DataEnd::DieAfterBytes),
    /// [`DataEnd::DieBeforeFinalReply`](crate::DataEnd::DieBeforeFinalReply));
    /// why.
    DroppedByScript(String),
    /// QUIT received (answered `221`).
    Quit,
    /// The client broke the protocol in a way a real server might not
    /// notice: bare LF/CR in a command line, a line over 2048 octets, bytes
    /// pipelined after STARTTLS or before `354`, non-UTF-8 commands, an
    /// AUTH line with an initial response over 512 octets, a malformed
    /// bearer response, a wrong answer to the bearer error challenge.
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

fake_event!(SmtpEvent, LoggedSmtpEvent, "fake SMTP");
