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
        // The state carried from the last chunk is resolved byte by byte;
        // from the first byte inside a line on, one vectorised pass checks
        // that every CR and LF pair up and whether any line starts with a
        // dot; only then is the terminator searched for (at SIMD speed).
        // Only a refused chunk is walked byte by byte again.
        let mut i = 0;
        while self.state != State::InLine {
            let Some(&b) = chunk.get(i) else {
                return Scan::More;
            };
            match self.step(i, b) {
                Scan::More => i += 1,
                done => return done,
            }
        }
        let rest = &chunk[i..];
        let (paired, dot_after_lf) = line_flags(rest);
        if paired && !dot_after_lf {
            // The common chunk: every line ending is CRLF and no line
            // starts with a dot, so no terminator either — one pass.
            self.bytes += rest.len() as u64;
            self.state = tail_state(rest);
            return Scan::More;
        }
        let end = terminator().find(rest);
        // Through the CRLF before the `.`: the last line of the message.
        let body = end.map_or(rest, |t| &rest[..t + 2]);
        if !line_endings_paired(body) {
            return self.feed_slow(chunk, i);
        }
        self.bytes += body.len() as u64;
        if let Some(t) = end {
            self.state = State::LineStart;
            return Scan::End(i + t + TERMINATOR.len());
        }
        self.state = tail_state(rest);
        Scan::More
    }

    /// Feeds `chunk[i..]` one byte at a time, the state being the one at `i`:
    /// finds the exact offset of a bare line ending.
    fn feed_slow(&mut self, chunk: &[u8], mut i: usize) -> Scan {
        while i < chunk.len() {
            if self.state == State::InLine {
                // Skip to the next CR or LF.
                let rest = &chunk[i..];
                let Some(j) = memchr::memchr2(b'\r', b'\n', rest) else {
                    self.bytes += rest.len() as u64;
                    return Scan::More;
                };
                self.bytes += j as u64;
                i += j;
            }
            match self.step(i, chunk[i]) {
                Scan::More => i += 1,
                done => return done,
            }
        }
        Scan::More
    }

    /// Moves past byte `b` at offset `i` of the chunk, unless it ends the
    /// data or is refused.
    fn step(&mut self, i: usize, b: u8) -> Scan {
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
            (State::LineStart | State::Dot | State::InLine, _) => State::InLine,
        };
        self.bytes += 1;
        Scan::More
    }
}

/// End of data, with the line ending before it.
const TERMINATOR: &[u8] = b"\r\n.\r\n";

/// A searcher for [`TERMINATOR`], built once.
fn terminator() -> &'static memchr::memmem::Finder<'static> {
    static FINDER: std::sync::OnceLock<memchr::memmem::Finder<'static>> =
        std::sync::OnceLock::new();
    FINDER.get_or_init(|| memchr::memmem::Finder::new(TERMINATOR))
}

/// The scanner's state after `rest`, which began mid-line and holds no
/// terminator: a pending line ending or terminator can only have started
/// inside it.
fn tail_state(rest: &[u8]) -> State {
    if rest.ends_with(b"\r\n.\r") {
        State::DotCr
    } else if rest.ends_with(b"\r\n.") {
        State::Dot
    } else if rest.ends_with(b"\r\n") {
        State::LineStart
    } else if rest.ends_with(b"\r") {
        State::Cr
    } else {
        State::InLine
    }
}

/// Whether every CR in `bytes` is followed by LF and every LF preceded by
/// CR, `bytes` starting mid-line; a CR as the last byte is left pending.
fn line_endings_paired(bytes: &[u8]) -> bool {
    line_flags(bytes).0
}

/// In one pass over `bytes` (starting mid-line; a CR as the last byte is
/// left pending): whether every CR is followed by LF and every LF preceded
/// by CR, and whether any LF is followed by a `.` (a line starting with a
/// dot: stuffing, or the terminator).
///
/// Branch-free within 64-byte blocks, so the compiler vectorizes it (SSE2
/// on the baseline target): on mail the answer is (yes, no), and the
/// terminator search and the byte-wise walk are left to the chunks where
/// it is not.
fn line_flags(bytes: &[u8]) -> (bool, bool) {
    const BLOCK: usize = 64;
    /// (a lone CR or LF, an LF before a dot) among the pairs of the views.
    fn flags(now: &[u8], next: &[u8]) -> (bool, bool) {
        now.iter()
            .zip(next)
            .fold((false, false), |(bad, dot), (&a, &b)| {
                (
                    bad | ((a == b'\r') != (b == b'\n')),
                    dot | ((a == b'\n') & (b == b'.')),
                )
            })
    }
    let Some((&first, next)) = bytes.split_first() else {
        return (true, false);
    };
    if first == b'\n' {
        return (false, false);
    }
    let now = &bytes[..next.len()];
    let mut now_blocks = now.chunks_exact(BLOCK);
    let mut next_blocks = next.chunks_exact(BLOCK);
    let mut dot = false;
    for (a, b) in now_blocks.by_ref().zip(next_blocks.by_ref()) {
        let (bad, d) = flags(a, b);
        if bad {
            return (false, dot | d);
        }
        dot |= d;
    }
    let (bad, d) = flags(now_blocks.remainder(), next_blocks.remainder());
    (!bad, dot | d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_testkit::Rng;

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

    /// The byte-wise scanner `DataScanner::feed` replaced, kept as the
    /// reference the fast one must agree with.
    struct Reference {
        state: State,
        bytes: u64,
    }

    impl Reference {
        fn feed(&mut self, chunk: &[u8]) -> Scan {
            let mut i = 0;
            while i < chunk.len() {
                let b = chunk[i];
                self.state = match (self.state, b) {
                    (State::LineStart, b'.') => State::Dot,
                    (State::Dot, b'\r') => State::DotCr,
                    (State::DotCr, b'\n') => {
                        self.bytes = self.bytes.saturating_sub(2);
                        self.state = State::LineStart;
                        return Scan::End(i + 1);
                    }
                    (State::Cr, b'\n') => State::LineStart,
                    (State::DotCr | State::Cr, _) => return Scan::BareLineEnding(i),
                    (_, b'\n') => return Scan::BareLineEnding(i),
                    (_, b'\r') => State::Cr,
                    (State::InLine, _) => {
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

    /// Data made of the pieces terminators, smuggling vectors and stuffing
    /// are built from, mostly well-formed so the fast path runs, with lines
    /// long enough to cross SIMD blocks.
    fn random_data(rng: &mut Rng, max_pieces: usize) -> Vec<u8> {
        const GOOD: &[&[u8]] = &[
            b"a",
            b".",
            b"..",
            b"abc",
            b"\r\n",
            b"\r\n.",
            b"\r\n.\r\n",
            b"\r\n..\r\n",
            b"\r\n\r\n",
        ];
        const BAD: &[&[u8]] = &[
            b"\r", b"\n", b"\n.\n", b"\r.\r", b"\r\n.\n", b"\r\r\n", b"\n\r",
        ];
        let mut data = Vec::new();
        for _ in 0..rng.below(max_pieces + 1) {
            match rng.below(16) {
                0..=1 => data.resize(data.len() + rng.below(150), b'x'),
                2 => data.extend_from_slice(BAD[rng.below(BAD.len())]),
                _ => data.extend_from_slice(GOOD[rng.below(GOOD.len())]),
            }
        }
        data
    }

    /// Feeds `data` cut at `cuts` to both scanners, going on after an end as
    /// a pipelined command would, up to a refusal; every answer, count and
    /// state must agree.
    fn agree(data: &[u8], cuts: impl IntoIterator<Item = usize>) {
        let mut fast = DataScanner::new();
        let mut slow = Reference {
            state: State::LineStart,
            bytes: 0,
        };
        let mut from = 0;
        for to in cuts.into_iter().chain([data.len()]) {
            let mut chunk = &data[from..to.max(from)];
            loop {
                let (got, want) = (fast.feed(chunk), slow.feed(chunk));
                let ctx = || format!("{:?} at {from}..{to}", String::from_utf8_lossy(data));
                assert_eq!(got, want, "{}", ctx());
                assert_eq!(fast.state, slow.state, "{}", ctx());
                assert_eq!(fast.bytes(), slow.bytes, "{}", ctx());
                match got {
                    Scan::More => break,
                    Scan::End(e) if e < chunk.len() => {
                        chunk = &chunk[e..];
                        fast.bytes = 0;
                        slow.bytes = 0;
                    }
                    Scan::End(_) => {
                        fast.bytes = 0;
                        slow.bytes = 0;
                        break;
                    }
                    Scan::BareLineEnding(_) => return,
                }
            }
            from = to.max(from);
        }
    }

    #[test]
    fn scanner_agrees_with_the_bytewise_one() {
        let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15);
        let mut outcomes = [0; 3];
        for _ in 0..1500 {
            let data = random_data(&mut rng, 24);
            let mut whole = Reference {
                state: State::LineStart,
                bytes: 0,
            };
            outcomes[match whole.feed(&data) {
                Scan::More => 0,
                Scan::End(_) => 1,
                Scan::BareLineEnding(_) => 2,
            }] += 1;
            for size in 1..=data.len().max(1) {
                agree(&data, (size..data.len()).step_by(size));
            }
            for _ in 0..20 {
                let mut cuts: Vec<usize> = (0..rng.below(6))
                    .map(|_| rng.below(data.len() + 1))
                    .collect();
                cuts.sort_unstable();
                agree(&data, cuts);
            }
        }
        // Each outcome is exercised, not just refusals.
        assert!(outcomes.iter().all(|&n| n > 100), "{outcomes:?}");
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
