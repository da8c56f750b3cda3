//! Helpers the fake POP3 and fake SMTP tests share.

use std::fmt::Debug;
use std::time::Duration;

use base64::Engine as _;

/// How long a test waits for an event it expects.
pub const WAIT: Duration = Duration::from_secs(5);

/// The challenge inside a SASL continuation: `line` without `prefix`
/// (`"+ "` in POP3, `"334 "` in SMTP), base64-decoded.
pub fn challenge_after(prefix: &str, line: &str) -> String {
    let encoded = line.strip_prefix(prefix).expect("continuation");
    let raw = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .expect("base64 challenge");
    String::from_utf8(raw).expect("UTF-8 challenge")
}

/// Sessions `0..n` of `log` (session number, event) each begin with
/// `first` and end with `last`.
pub fn assert_sessions_framed<'a, E: PartialEq + Debug + 'a>(
    log: impl IntoIterator<Item = (usize, &'a E)> + Clone,
    n: usize,
    first: &E,
    last: &E,
) {
    for session in 0..n {
        let own: Vec<&E> = log
            .clone()
            .into_iter()
            .filter(|(s, _)| *s == session)
            .map(|(_, e)| e)
            .collect();
        assert_eq!(own.first(), Some(&first), "session {session}");
        assert_eq!(own.last(), Some(&last), "session {session}");
    }
}
