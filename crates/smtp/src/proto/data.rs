//! The DATA stream (RFC 5321 §4.1.1.4, §4.5.2): finds the end of data and
//! refuses bare line endings.
//!
//! End of data is exactly CRLF `.` CRLF. Any CR not followed by LF, or LF not
//! preceded by CR, is refused: those are the raw material of SMTP smuggling
//! (`\n.\n`, `\r.\r`, `\r\n.\n`, `\n.\r\n`, ...), where a lenient server sees
//! an end of data that postern did not, and the rest of the "message" becomes
//! a second, forged one. With only CRLF allowed there is one reading.
//!
//! The scanner also says which trailing bytes must be *held back* because
//! their meaning depends on the next byte (a CR, a `.` at line start): they
//! are sent only once resolved, so an aborted message never ends in a
//! fragment a lenient server could take for a terminator.

/// What the bytes fed so far amount to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// No end yet; keep going.
    More,
    /// The terminator ends at this offset of the chunk (exclusive).
    End(usize),
    /// A bare CR or LF at this offset of the chunk.
    BareLineEnding(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    LineStart,
    Dot,
    DotCr,
    InLine,
    Cr,
}

/// Scans one message's data in chunks of any size.
#[derive(Debug, Clone)]
pub struct DataScanner {
    state: State,
    bytes: u64,
}

impl Default for DataScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl DataScanner {
    /// A scanner at the start of the data (just after the 354).
    pub fn new() -> Self {
        Self {
            state: State::LineStart,
            bytes: 0,
        }
    }

    /// Message bytes seen so far (terminator excluded once found).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The trailing bytes whose meaning is still open; not to be sent yet.
    pub fn held(&self) -> &'static [u8] {
        match self.state {
            State::Cr => b"\r",
            State::Dot => b".",
            State::DotCr => b".\r",
            State::LineStart | State::InLine => b"",
        }
    }

    /// Feeds the next chunk.
    pub fn feed(&mut self, chunk: &[u8]) -> Scan {
        let mut i = 0;
        while i < chunk.len() {
            let b = chunk[i];
            self.state = match (self.state, b) {
                (State::LineStart, b'.') => State::Dot,
                (State::Dot, b'\r') => State::DotCr,
                (State::DotCr, b'\n') => {
                    // The terminator is not message data.
                    self.bytes = self.bytes.saturating_sub(2);
                    self.state = State::LineStart;
                    return Scan::End(i + 1);
                }
                (State::Cr, b'\n') => State::LineStart,
                (State::DotCr | State::Cr, _) => return Scan::BareLineEnding(i),
                (_, b'\n') => return Scan::BareLineEnding(i),
                (_, b'\r') => State::Cr,
                (State::InLine, _) => {
                    // Fast path: skip to the next CR or LF.
                    let rest = &chunk[i..];
                    match memchr::memchr2(b'\r', b'\n', rest) {
                        Some(j) => {
                            self.bytes += j as u64;
                            i += j;
                            continue;
                        }
                        None => {
                            self.bytes += rest.len() as u64;
                            return Scan::More;
                        }
                    }
                }
                (State::LineStart | State::Dot, _) => State::InLine,
            };
            self.bytes += 1;
            i += 1;
        }
        Scan::More
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `data` in chunks of `size`; returns the outcome with offsets
    /// relative to the whole input.
    fn scan(data: &[u8], size: usize) -> Scan {
        let mut s = DataScanner::new();
        let mut base = 0;
        for chunk in data.chunks(size.max(1)) {
            match s.feed(chunk) {
                Scan::More => base += chunk.len(),
                Scan::End(n) => return Scan::End(base + n),
                Scan::BareLineEnding(n) => return Scan::BareLineEnding(base + n),
            }
        }
        Scan::More
    }

    #[test]
    fn ends_and_bodies_in_every_chunk_size() {
        let cases: &[(&[u8], Scan)] = &[
            (b".\r\n", Scan::End(3)),
            (b"Subject: x\r\n\r\nbody\r\n.\r\n", Scan::End(23)),
            (b"..stuffed\r\n.\r\n", Scan::End(14)),
            (b".x\r\n.\r\nMAIL FROM:<a>\r\n", Scan::End(7)),
            (b"line\r\n", Scan::More),
            (b"line\r\n.", Scan::More),
            (b"line\r\n.\r", Scan::More),
            (b"\xff\xfe 8-bit\r\n.\r\n", Scan::End(13)),
        ];
        for (data, want) in cases {
            for size in 1..=data.len() {
                assert_eq!(
                    scan(data, size),
                    *want,
                    "{:?} in chunks of {size}",
                    String::from_utf8_lossy(data)
                );
            }
        }
    }

    /// The smtpsmug family: none of these may end a message, and each is
    /// refused at the offending byte.
    #[test]
    fn smuggling_vectors_are_refused() {
        let vectors: &[&[u8]] = &[
            b"a\n.\nMAIL FROM:<x>\r\n",
            b"a\r.\rMAIL FROM:<x>\r\n",
            b"a\r\n.\nMAIL FROM:<x>\r\n",
            b"a\n.\r\nMAIL FROM:<x>\r\n",
            b"a\r.\r\nMAIL FROM:<x>\r\n",
            b"a\r\n.\r\r\nMAIL FROM:<x>\r\n",
            b"a\r\r\n.\r\n",
            b"a\n\r\n.\r\n",
            b"bare lf\nmore\r\n.\r\n",
        ];
        for v in vectors {
            for size in 1..=v.len() {
                let got = scan(v, size);
                assert!(
                    matches!(got, Scan::BareLineEnding(_)),
                    "{:?} in chunks of {size}: {got:?}",
                    String::from_utf8_lossy(v)
                );
            }
        }
    }

    #[test]
    fn held_bytes_are_the_unresolved_tail() {
        let mut s = DataScanner::new();
        assert_eq!(s.feed(b"abc\r"), Scan::More);
        assert_eq!(s.held(), b"\r");
        assert_eq!(s.feed(b"\n."), Scan::More);
        assert_eq!(s.held(), b".");
        assert_eq!(s.feed(b"\r"), Scan::More);
        assert_eq!(s.held(), b".\r");
        assert_eq!(s.feed(b"\n"), Scan::End(1));
        assert_eq!(s.bytes(), 5, "abc CRLF counted, the terminator not");
    }

    #[test]
    fn long_lines_and_counts() {
        let mut data = vec![b'x'; 998];
        data.extend_from_slice(b"\r\n.\r\n");
        assert_eq!(scan(&data, 7), Scan::End(1003));
        let mut s = DataScanner::new();
        assert_eq!(s.feed(&data), Scan::End(1003));
        assert_eq!(s.bytes(), 1000);
    }
}
