//! APOP (RFC 1939 §7): the digest and the checks on the server's timestamp.
//!
//! The timestamp comes from the server's greeting and goes into an MD5
//! digest with the password. A server (or a man in the middle) that chooses
//! crafted timestamps can recover password characters from the digests
//! (Leurent 2007; fetchmail CVE-2007-1558), so only a well-formed RFC 822
//! msg-id is accepted: 7-bit, `<local@domain>`, no spaces or controls,
//! bounded length.

use md5::{Digest, Md5};
use postern_core::throttle::{Pause, Rule, Throttle};
use zeroize::Zeroizing;

use postern_core::Secret;

/// The longest timestamp postern accepts, brackets included.
pub const MAX_TIMESTAMP: usize = 256;

/// Why a greeting's timestamp cannot be used for APOP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TimestampError {
    /// The greeting has no `<...>`.
    #[error("the server's greeting carries no APOP timestamp, so it does not offer APOP")]
    Missing,
    /// The `<...>` is not a valid msg-id.
    #[error("the server's APOP timestamp is not a valid msg-id (refused: a crafted timestamp can leak the password)")]
    Invalid,
}

/// Finds and checks the timestamp in a greeting's text.
pub fn timestamp(greeting: &[u8]) -> Result<&[u8], TimestampError> {
    let start = memchr::memchr(b'<', greeting).ok_or(TimestampError::Missing)?;
    let len = memchr::memchr(b'>', &greeting[start..]).ok_or(TimestampError::Invalid)?;
    let ts = &greeting[start..start + len + 1];
    if valid_msg_id(ts) {
        Ok(ts)
    } else {
        Err(TimestampError::Invalid)
    }
}

/// Whether `ts` is `<local@domain>` with 7-bit printable characters only.
pub fn valid_msg_id(ts: &[u8]) -> bool {
    let Some(inner) = ts.strip_prefix(b"<").and_then(|t| t.strip_suffix(b">")) else {
        return false;
    };
    if ts.len() > MAX_TIMESTAMP {
        return false;
    }
    let printable = inner
        .iter()
        .all(|b| (0x21..0x7f).contains(b) && *b != b'<' && *b != b'>');
    let mut parts = inner.split(|b| *b == b'@');
    let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    printable && !local.is_empty() && !domain.is_empty()
}

/// Lowercase hex MD5 of timestamp + password.
pub fn digest(timestamp: &[u8], password: &Secret) -> Zeroizing<String> {
    let mut h = Md5::new();
    h.update(timestamp);
    h.update(password.expose());
    Zeroizing::new(postern_core::sasl::hex(&h.finalize()))
}

/// Defences against the APOP MD5 attack (Leurent 2007), where a hostile
/// server (or a man in the middle) feeds chosen timestamps and collects
/// digests over hundreds of logins:
/// - a timestamp seen before on this route is refused (a real server never
///   repeats one);
/// - after [`ApopGuard::MAX_FAILURES`] consecutive failures for a user,
///   postern stops sending that user's digests for [`ApopGuard::PAUSE`], so
///   an auto-polling client cannot supply the attack's logins.
#[derive(Debug)]
pub struct ApopGuard {
    seen: std::collections::VecDeque<Vec<u8>>,
    failures: Throttle<String>,
}

impl Default for ApopGuard {
    fn default() -> Self {
        Self {
            seen: std::collections::VecDeque::new(),
            failures: Throttle::new(Rule {
                threshold: Self::MAX_FAILURES,
                window: None,
                afresh_after_pause: true,
                pause: Pause::Fixed(Self::PAUSE),
            }),
        }
    }
}

impl ApopGuard {
    /// Timestamps remembered per route.
    pub const REMEMBERED: usize = 4096;
    /// Consecutive failures that pause a user's APOP logins.
    pub const MAX_FAILURES: u32 = 3;
    /// How long they pause.
    pub const PAUSE: std::time::Duration = std::time::Duration::from_secs(10 * 60);

    /// Records a greeting's timestamp; false if it was seen before.
    pub fn fresh(&mut self, timestamp: &[u8]) -> bool {
        if self.seen.iter().any(|t| t == timestamp) {
            return false;
        }
        if self.seen.len() == Self::REMEMBERED {
            self.seen.pop_front();
        }
        self.seen.push_back(timestamp.to_vec());
        true
    }

    /// Whether postern may send a digest for `user` now.
    pub fn allowed(&self, user: &str, now: std::time::Instant) -> bool {
        !self.failures.paused(&user.to_owned(), now)
    }

    /// The upstream refused `user`'s digest.
    pub fn failed(&self, user: &str, now: std::time::Instant) {
        self.failures.strike(user.to_owned(), now);
    }

    /// The upstream accepted `user`'s digest.
    pub fn succeeded(&self, user: &str) {
        self.failures.clear(&user.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1939_vector() {
        let greeting = b"POP3 server ready <1896.697170952@dbc.mtview.ca.us>";
        let ts = timestamp(greeting).expect("timestamp");
        assert_eq!(ts, b"<1896.697170952@dbc.mtview.ca.us>");
        assert_eq!(
            &*digest(ts, &Secret::from("tanstaaf")),
            "c4c9334bac560ecc979e58001b3e22fb"
        );
    }

    #[test]
    fn timestamps_are_checked() {
        for (greeting, want) in [
            (&b"ready"[..], Err(TimestampError::Missing)),
            (b"ready <1.2@host>", Ok(&b"<1.2@host>"[..])),
            (b"ready <1.2@host", Err(TimestampError::Invalid)),
            (b"ready <no-at-sign>", Err(TimestampError::Invalid)),
            (b"ready <a@b@c>", Err(TimestampError::Invalid)),
            (b"ready <@host>", Err(TimestampError::Invalid)),
            (b"ready <local@>", Err(TimestampError::Invalid)),
            (b"ready <with space@host>", Err(TimestampError::Invalid)),
            (b"ready <ctl\x01@host>", Err(TimestampError::Invalid)),
            (b"ready <8bit\xc3\xa9@host>", Err(TimestampError::Invalid)),
            (b"ready <>", Err(TimestampError::Invalid)),
        ] {
            assert_eq!(
                timestamp(greeting),
                want,
                "{:?}",
                String::from_utf8_lossy(greeting)
            );
        }
        let long = format!("<{}@h>", "x".repeat(300));
        assert_eq!(timestamp(long.as_bytes()), Err(TimestampError::Invalid));
    }

    #[test]
    fn guard_refuses_repeated_timestamps_and_pauses_after_failures() {
        let mut g = ApopGuard::default();
        assert!(g.fresh(b"<1@a>"));
        assert!(g.fresh(b"<2@a>"));
        assert!(!g.fresh(b"<1@a>"), "a repeated timestamp");
        let now = std::time::Instant::now();
        for _ in 0..ApopGuard::MAX_FAILURES - 1 {
            g.failed("tim", now);
            assert!(g.allowed("tim", now));
        }
        g.failed("tim", now);
        assert!(!g.allowed("tim", now));
        assert!(g.allowed("other", now));
        assert!(g.allowed("tim", now + ApopGuard::PAUSE));
        g.succeeded("tim");
        assert!(g.allowed("tim", now));
    }
}
