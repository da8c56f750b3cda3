//! The authenticated state: postern relays both directions unchanged,
//! with two small scanners that know just enough IMAP to find where
//! responses and commands start, so that literals of any size stream
//! through and are never mistaken for protocol lines.
//!
//! Both scanners are pure state machines over the bytes the session has
//! read and not yet consumed (its buffer). Each call looks at the start of
//! that buffer and says what to do with a prefix of it:
//!
//! ```text
//!  session buffer: [ unconsumed ............ ]      scan(&buf) ─► Pass(n)      forward buf[..n]
//!                                                                ─► NeedMore    keep buf, read more, scan again
//!                                                                ─► …           (see Out / ClientOut)
//! ```
//!
//! `NeedMore` consumes nothing: it comes only at the start of a line whose
//! first words decide what happens to it, and only while fewer than a
//! bounded number of octets are buffered ([`HEAD_LOOKAHEAD`],
//! [`MAX_HELD_LINE`], [`MAX_REFUSED_LINE`]). Everything else (the rest of
//! a line, literal octets) is passed on as it arrives: nothing is
//! buffered but a line's first words, or a whole line being rewritten.
//!
//! **Server → client** ([`ServerScanner`]): untagged lines are watched for
//! a literal announcement `{n}` at their end (as client libraries read
//! them); the next n octets are passed as opaque data and the response
//! goes on after them. Tagged and `+` lines carry no literals. An untagged
//! `* CAPABILITY` line and a `[CAPABILITY ...]` code in any status line
//! are rewritten with [`capability::after_login`](super::capability::after_login). Only the lines postern
//! holds are bounded ([`MAX_HELD_LINE`]); lines passed through are not,
//! since nothing of them is kept (a `UID SEARCH` of a large mailbox
//! answers with one line of megabytes).
//!
//! **Client → server** ([`ClientScanner`]): every line that starts a
//! command is reported with its verb ([`Verb`]); `STARTTLS`, `COMPRESS`
//! and `UNAUTHENTICATE` are refused locally (not forwarded). Literals
//! (`{n}`, `{n+}`, `~{n}`) are found with quoted strings tracked, as the
//! server's parser does. A line that does not start `tag SP name` is not a
//! command: IDLE's `DONE` and AUTHENTICATE's base64 lines (no space in
//! either) pass as they are, so the scanner needs no state of the
//! server's to tell them apart.
//!
//! One thing the client scanner cannot see is whether the server granted
//! a synchronising literal: a server may answer `a APPEND x {n}` with a
//! tagged `NO [TRYCREATE]` instead of `+`, and the client then sends its
//! next command rather than the n octets. The session reports tagged
//! completions from [`Out::Completion`] to
//! [`ClientScanner::on_completion`]; without that, the next n octets the
//! client sends are taken as the literal whatever they are.
//!
//! Writing order: a refusal's reply goes to the client only while the
//! server direction is between responses ([`ServerScanner::at_boundary`]),
//! never into the middle of a relayed response.

mod client;
mod server;

pub use client::{ClientOut, ClientScanner, Verb};
pub use server::{Out, ServerScanner};

/// The most octets read at a line start to decide what the line is (a tag
/// longer than this is passed on unexamined).
pub const HEAD_LOOKAHEAD: usize = 1024;
/// The longest server line postern holds to rewrite (a capability line).
pub const MAX_HELD_LINE: usize = 64 * 1024;
/// The longest client command line postern holds to refuse.
pub const MAX_REFUSED_LINE: usize = 8 * 1024;

/// A scanner gave up on the stream; the session ends. The variant names
/// the side at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    /// A capability line too long to hold.
    #[error("the server sent a capability line longer than {max} octets")]
    ServerLineTooLong {
        /// The cap.
        max: usize,
    },
    /// The server's stream ended where a response cannot end.
    #[error("the server's stream ended {0}")]
    ServerTruncated(&'static str),
    /// A refused command line too long to hold.
    #[error("the client sent a {verb} line longer than {max} octets")]
    ClientLineTooLong {
        /// The refused command.
        verb: &'static str,
        /// The cap.
        max: usize,
    },
    /// A refused command announced a non-synchronising literal: its
    /// octets are on the way to a command that will not exist.
    #[error("the client sent a non-synchronising literal with {0}, which postern refuses")]
    ClientLiteralAfterRefused(&'static str),
    /// The client's stream ended in the middle of a command.
    #[error("the client's stream ended {0}")]
    ClientTruncated(&'static str),
}

impl RelayError {
    /// Whether the upstream is at fault (else the client).
    pub fn is_server(&self) -> bool {
        matches!(
            self,
            RelayError::ServerLineTooLong { .. } | RelayError::ServerTruncated(_)
        )
    }
}

/// Passes a literal's octets: up to `n` of `input`.
fn literal_octets(n: u64, input: &[u8]) -> (usize, u64) {
    let k = usize::try_from(n).map_or(input.len(), |n| n.min(input.len()));
    (k, n - k as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_synchronising_literal_does_not_swallow_the_next_command() {
        // The server answers APPEND with NO [TRYCREATE] instead of `+`:
        // the client's next octets are a command, not the literal.
        let mut c = ClientScanner::new();
        let mut s = ServerScanner::new();
        assert_eq!(
            c.scan(b"a1 APPEND Foo {5}\r\n"),
            Ok(ClientOut::Command {
                len: 9,
                verb: Verb::Other
            })
        );
        assert_eq!(c.scan(b" Foo {5}\r\n"), Ok(ClientOut::Pass(10)));
        let reply = b"a1 NO [TRYCREATE] no such mailbox\r\n";
        let Ok(Out::Completion(n)) = s.scan(reply) else {
            panic!("a completion");
        };
        c.on_completion(&reply[..n]);
        assert!(matches!(
            c.scan(b"a2 COMPRESS DEFLATE\r\n"),
            Ok(ClientOut::Refuse { len: 21, .. })
        ));
        // A completion for another tag, or a `+`, leaves the literal due.
        assert_eq!(
            c.scan(b"a3 APPEND Foo {5}\r\n"),
            Ok(ClientOut::Command {
                len: 9,
                verb: Verb::Other
            })
        );
        assert_eq!(c.scan(b" Foo {5}\r\n"), Ok(ClientOut::Pass(10)));
        c.on_completion(b"a1");
        c.on_continuation();
        c.on_completion(b"a3");
        assert_eq!(c.scan(b"x COMPRESS\r\n"), Ok(ClientOut::Pass(5)));
        assert_eq!(c.scan(b"MPRESS\r\n"), Ok(ClientOut::Pass(8)));
        assert_eq!(c.eof(0), Ok(()));
    }
}
