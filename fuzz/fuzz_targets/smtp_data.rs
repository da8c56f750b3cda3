//! The DATA scanner: the same bytes must give the same answer however they
//! are chunked, and what it holds back must be what was just fed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_fuzz::split_point;
use postern_smtp::proto::data::{DataScanner, Scan};

/// An outcome with offsets relative to the whole input, and the scanner's
/// byte count when it was reached.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    scan: Scan,
    bytes: u64,
}

fn whole(data: &[u8]) -> Outcome {
    let mut s = DataScanner::new();
    let scan = s.feed(data);
    if scan == Scan::More {
        assert_held(&s, data);
    }
    Outcome {
        scan,
        bytes: s.bytes(),
    }
}

/// Feeds `chunks` in order; offsets are made absolute.
fn chunked<'a>(chunks: impl IntoIterator<Item = &'a [u8]>, data: &[u8]) -> Outcome {
    let mut s = DataScanner::new();
    let mut base = 0;
    for chunk in chunks {
        match s.feed(chunk) {
            Scan::More => {
                base += chunk.len();
                assert_held(&s, &data[..base]);
            }
            Scan::End(n) => {
                return Outcome {
                    scan: Scan::End(base + n),
                    bytes: s.bytes(),
                }
            }
            Scan::BareLineEnding(n) => {
                return Outcome {
                    scan: Scan::BareLineEnding(base + n),
                    bytes: s.bytes(),
                }
            }
        }
    }
    Outcome {
        scan: Scan::More,
        bytes: s.bytes(),
    }
}

fn assert_held(s: &DataScanner, fed: &[u8]) {
    assert!(
        fed.ends_with(s.held()),
        "held {:?} is not a suffix of what was fed",
        String::from_utf8_lossy(s.held())
    );
}

fuzz_target!(|data: &[u8]| {
    let (k, body) = split_point(data);
    let one = whole(body);
    let two = chunked([&body[..k], &body[k..]], body);
    assert_eq!(one, two, "outcome differs when split at {k}");
    let bytewise = chunked(body.chunks(1), body);
    assert_eq!(one, bytewise, "outcome differs when fed byte by byte");

    match one.scan {
        Scan::More => {
            assert_eq!(one.bytes, body.len() as u64, "not every byte counted");
        }
        Scan::End(n) => {
            assert!(n <= body.len());
            let before = &body[..n];
            assert!(
                before == b".\r\n" || before.ends_with(b"\r\n.\r\n"),
                "end of data not at CRLF . CRLF"
            );
            // Message bytes exclude the `.` CRLF terminator.
            assert_eq!(one.bytes, n as u64 - 3, "byte count at end of data");
            // Nothing before the terminator is a bare CR or LF.
            let msg = &before[..n - 3];
            for (i, b) in msg.iter().enumerate() {
                match b {
                    b'\n' => assert!(i > 0 && msg[i - 1] == b'\r', "bare LF at {i} accepted"),
                    b'\r' => assert!(msg.get(i + 1) == Some(&b'\n'), "bare CR at {i} accepted"),
                    _ => {}
                }
            }
        }
        Scan::BareLineEnding(i) => {
            assert!(i < body.len());
            assert!(
                body[i] == b'\n' || (i > 0 && body[i - 1] == b'\r'),
                "BareLineEnding at {i} is neither a LF nor the byte after a CR"
            );
        }
    }
});
