//! Server replies: status lines, multi-line bodies, capability lists.

use super::command::strip_eol;

/// The longest server status line postern reads (RFC 2449 §4: 512 octets).
pub const MAX_REPLY_LINE: usize = 512;
/// The most bytes of a multi-line reply postern collects to inspect it
/// (CAPA, the AUTH list). Message bodies are streamed, never collected.
pub const MAX_COLLECTED: usize = 16 * 1024;

/// The first line of a server reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status<'a> {
    /// `+OK [text]`
    Ok(&'a [u8]),
    /// `-ERR [text]`
    Err(&'a [u8]),
    /// `+ [base64]`: a SASL continuation.
    Continue(&'a [u8]),
}

/// Parses a status line; `None` if it is none of the three shapes.
pub fn parse_status(line: &[u8]) -> Option<Status<'_>> {
    let line = strip_eol(line);
    let after = |n: usize| -> &[u8] {
        let rest = &line[n..];
        rest.strip_prefix(b" ").unwrap_or(rest)
    };
    let head = |p: &[u8]| {
        line.len() >= p.len()
            && line[..p.len()].eq_ignore_ascii_case(p)
            && (line.len() == p.len() || line[p.len()] == b' ')
    };
    if head(b"+OK") {
        Some(Status::Ok(after(3)))
    } else if head(b"-ERR") {
        Some(Status::Err(after(4)))
    } else if head(b"+") {
        Some(Status::Continue(after(1)))
    } else {
        None
    }
}

/// The most text postern relays from one server status line.
pub const MAX_RELAYED_TEXT: usize = 510;

/// A server status line made safe to show a client: control characters
/// (terminal escapes included) become `?`, the text is bounded, and the
/// line ends in exactly one CRLF.
pub fn sanitize_status(line: &[u8]) -> Vec<u8> {
    let body = strip_eol(line);
    let mut out = Vec::with_capacity(body.len().min(MAX_RELAYED_TEXT) + 2);
    out.extend(body.iter().take(MAX_RELAYED_TEXT).map(|&b| {
        if b < 0x20 || b == 0x7f {
            b'?'
        } else {
            b
        }
    }));
    out.extend_from_slice(b"\r\n");
    out
}

/// An RFC 2449/3206 response code at the start of `-ERR` text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RespCode {
    /// `[IN-USE]`: the maildrop is locked by another session.
    InUse,
    /// `[LOGIN-DELAY]`: logged in too recently.
    LoginDelay,
    /// `[SYS/TEMP]`: a temporary system problem.
    SysTemp,
    /// `[SYS/PERM]`: a permanent system problem.
    SysPerm,
    /// `[AUTH]` or no code: the credentials were refused.
    Auth,
}

impl RespCode {
    /// Reads the code from `-ERR` text.
    pub fn of(text: &[u8]) -> Self {
        let upper = |p: &[u8]| text.len() >= p.len() && text[..p.len()].eq_ignore_ascii_case(p);
        if upper(b"[IN-USE]") {
            Self::InUse
        } else if upper(b"[LOGIN-DELAY]") {
            Self::LoginDelay
        } else if upper(b"[SYS/TEMP]") {
            Self::SysTemp
        } else if upper(b"[SYS/PERM]") {
            Self::SysPerm
        } else {
            Self::Auth
        }
    }
}

/// Finds the end of a multi-line body: the line `.` CRLF (RFC 1939 §3).
///
/// Fed the bytes after the status line in chunks of any size; remembers
/// where it is across chunks, so a terminator split over reads is found.
/// Only CRLF ends a line: a bare LF followed by `.` is message data.
#[derive(Debug, Clone, Copy)]
pub struct BodyEnd {
    state: EndState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EndState {
    /// At the start of a line.
    LineStart,
    /// Saw `.` at the start of a line.
    Dot,
    /// Saw `.` CR at the start of a line.
    DotCr,
    /// Inside a line; the flag says the last byte was CR.
    InLine { cr: bool },
}

impl Default for BodyEnd {
    fn default() -> Self {
        Self::new()
    }
}

impl BodyEnd {
    /// A scanner positioned just after the status line.
    pub fn new() -> Self {
        Self {
            state: EndState::LineStart,
        }
    }

    /// Scans `chunk`; returns the offset just past the terminator if it ends here.
    pub fn feed(&mut self, chunk: &[u8]) -> Option<usize> {
        // The state carried from the last chunk is resolved byte by byte.
        // Once neutral (inside a line, the last byte not CR), a terminator
        // can only be the whole of CRLF `.` CRLF inside this chunk, found at
        // SIMD speed.
        let mut i = 0;
        while self.state != (EndState::InLine { cr: false }) {
            let &b = chunk.get(i)?;
            self.state = match (self.state, b) {
                (EndState::LineStart, b'.') => EndState::Dot,
                (EndState::Dot, b'\r') => EndState::DotCr,
                (EndState::DotCr, b'\n') => {
                    self.state = EndState::LineStart;
                    return Some(i + 1);
                }
                (EndState::InLine { cr: true }, b'\n') => EndState::LineStart,
                (_, b'\r') => EndState::InLine { cr: true },
                _ => EndState::InLine { cr: false },
            };
            i += 1;
        }
        let rest = &chunk[i..];
        if let Some(t) = terminator().find(rest) {
            self.state = EndState::LineStart;
            return Some(i + t + TERMINATOR.len());
        }
        // No byte before `rest` can start a terminator (the state at `i` was
        // neutral), so its tail alone says what the next chunk continues.
        self.state = if rest.ends_with(b"\r\n.\r") {
            EndState::DotCr
        } else if rest.ends_with(b"\r\n.") {
            EndState::Dot
        } else if rest.ends_with(b"\r\n") {
            EndState::LineStart
        } else {
            EndState::InLine {
                cr: rest.ends_with(b"\r"),
            }
        };
        None
    }
}

/// The end of a multi-line body, with the line ending before it.
const TERMINATOR: &[u8] = b"\r\n.\r\n";

/// A searcher for [`TERMINATOR`], built once.
fn terminator() -> &'static memchr::memmem::Finder<'static> {
    static FINDER: std::sync::OnceLock<memchr::memmem::Finder<'static>> =
        std::sync::OnceLock::new();
    FINDER.get_or_init(|| memchr::memmem::Finder::new(TERMINATOR))
}

/// Removes dot-stuffing from one body line (RFC 1939 §3).
pub fn unstuff(line: &[u8]) -> &[u8] {
    line.strip_prefix(b".").unwrap_or(line)
}

/// A server's capability list (RFC 2449 CAPA).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    lines: Vec<Vec<u8>>,
}

impl Capabilities {
    /// Parses CAPA body lines (terminator and stuffing already removed).
    pub fn parse<'a>(lines: impl IntoIterator<Item = &'a [u8]>) -> Self {
        Self {
            lines: lines
                .into_iter()
                .map(|l| strip_eol(l).to_vec())
                .filter(|l| !l.is_empty())
                .collect(),
        }
    }

    fn find(&self, name: &[u8]) -> Option<&[u8]> {
        self.lines.iter().map(Vec::as_slice).find(|l| {
            l.len() >= name.len()
                && l[..name.len()].eq_ignore_ascii_case(name)
                && (l.len() == name.len() || l[name.len()] == b' ')
        })
    }

    /// Whether a capability is listed.
    pub fn has(&self, name: &str) -> bool {
        self.find(name.as_bytes()).is_some()
    }

    /// Whether `SASL` lists a mechanism.
    pub fn has_sasl(&self, mechanism: &str) -> bool {
        self.find(b"SASL").is_some_and(|l| {
            l.split(|b| *b == b' ')
                .skip(1)
                .any(|m| m.eq_ignore_ascii_case(mechanism.as_bytes()))
        })
    }

    /// The raw lines, for rewriting.
    pub fn lines(&self) -> impl Iterator<Item = &[u8]> {
        self.lines.iter().map(Vec::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_testkit::Rng;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status(b"+OK ready\r\n"), Some(Status::Ok(b"ready")));
        assert_eq!(parse_status(b"+OK\r\n"), Some(Status::Ok(b"")));
        assert_eq!(parse_status(b"+ok hi\r\n"), Some(Status::Ok(b"hi")));
        assert_eq!(
            parse_status(b"-ERR [AUTH] no\r\n"),
            Some(Status::Err(b"[AUTH] no"))
        );
        assert_eq!(
            parse_status(b"+ PDEyMz4=\r\n"),
            Some(Status::Continue(b"PDEyMz4="))
        );
        assert_eq!(parse_status(b"+\r\n"), Some(Status::Continue(b"")));
        assert_eq!(parse_status(b"+OKAY\r\n"), None);
        assert_eq!(parse_status(b"* OK imap\r\n"), None);
        assert_eq!(parse_status(b"220 smtp\r\n"), None);
    }

    #[test]
    fn relayed_status_lines_are_sanitized() {
        assert_eq!(sanitize_status(b"+OK 2 320\r\n"), b"+OK 2 320\r\n");
        assert_eq!(
            sanitize_status(b"-ERR \x1b[2Jgone\x07\r\n"),
            b"-ERR ?[2Jgone?\r\n"
        );
        assert_eq!(sanitize_status(b"+OK a\rb\r\n"), b"+OK a?b\r\n");
        let long = [b"+OK ".to_vec(), vec![b'x'; 2000], b"\r\n".to_vec()].concat();
        assert_eq!(sanitize_status(&long).len(), MAX_RELAYED_TEXT + 2);
    }

    #[test]
    fn resp_codes() {
        assert_eq!(RespCode::of(b"[IN-USE] locked"), RespCode::InUse);
        assert_eq!(RespCode::of(b"[sys/temp] later"), RespCode::SysTemp);
        assert_eq!(RespCode::of(b"[AUTH] bad"), RespCode::Auth);
        assert_eq!(RespCode::of(b"bad password"), RespCode::Auth);
    }

    /// Feeds `body` to a scanner in chunks of `size`; returns the end offset.
    fn end_in_chunks(body: &[u8], size: usize) -> Option<usize> {
        let mut s = BodyEnd::new();
        let mut base = 0;
        for chunk in body.chunks(size) {
            if let Some(e) = s.feed(chunk) {
                return Some(base + e);
            }
            base += chunk.len();
        }
        None
    }

    #[test]
    fn body_end_in_every_chunk_size() {
        let cases: &[(&[u8], Option<usize>)] = &[
            (b".\r\n", Some(3)),
            (b"line\r\n.\r\n", Some(9)),
            (b"..stuffed\r\n.\r\nNEXT", Some(14)),
            (b".x\r\n.\r\n", Some(7)),
            (b"a\n.\n", None),
            (b"a\n.\r\n", None),
            (b"a\r\n.\n", None),
            (b"a\r.\r\n", None),
            (b"a\r\n.\r.\r\n", None),
            (b"a\r\n.\r\r\n.\r\n", Some(10)),
            (b"\r\n\r\n.\r\n", Some(7)),
            (b"8bit \xff\xfe\r\n.\r\n", Some(12)),
            (b"no end\r\n", None),
            (b"", None),
        ];
        for (body, want) in cases {
            for size in 1..=body.len().max(1) {
                assert_eq!(
                    end_in_chunks(body, size),
                    *want,
                    "{:?} in chunks of {size}",
                    String::from_utf8_lossy(body)
                );
            }
        }
    }

    #[test]
    fn body_end_after_pipelined_bytes_stops_at_the_first_terminator() {
        let two = b"a\r\n.\r\n+OK next\r\nb\r\n.\r\n";
        assert_eq!(end_in_chunks(two, 1), Some(6));
        assert_eq!(end_in_chunks(two, two.len()), Some(6));
    }

    /// The byte-wise scanner `BodyEnd::feed` replaced, kept as the
    /// reference the fast one must agree with.
    struct Reference {
        state: EndState,
    }

    impl Reference {
        fn feed(&mut self, chunk: &[u8]) -> Option<usize> {
            let mut i = 0;
            while i < chunk.len() {
                match self.state {
                    EndState::LineStart => {
                        if chunk[i] == b'.' {
                            self.state = EndState::Dot;
                            i += 1;
                        } else {
                            self.state = EndState::InLine { cr: false };
                        }
                    }
                    EndState::Dot => {
                        if chunk[i] == b'\r' {
                            self.state = EndState::DotCr;
                            i += 1;
                        } else {
                            self.state = EndState::InLine { cr: false };
                        }
                    }
                    EndState::DotCr => {
                        if chunk[i] == b'\n' {
                            self.state = EndState::LineStart;
                            return Some(i + 1);
                        }
                        self.state = EndState::InLine { cr: true };
                    }
                    EndState::InLine { cr } => match memchr::memchr(b'\n', &chunk[i..]) {
                        Some(j) => {
                            let lf = i + j;
                            let prev_cr = if j == 0 { cr } else { chunk[lf - 1] == b'\r' };
                            self.state = if prev_cr {
                                EndState::LineStart
                            } else {
                                EndState::InLine { cr: false }
                            };
                            i = lf + 1;
                        }
                        None => {
                            self.state = EndState::InLine {
                                cr: chunk.last() == Some(&b'\r'),
                            };
                            return None;
                        }
                    },
                }
            }
            None
        }
    }

    /// A body made of the pieces terminators, bare endings and stuffing are
    /// built from, with lines long enough to cross SIMD blocks.
    fn random_body(rng: &mut Rng, max_pieces: usize) -> Vec<u8> {
        const PIECES: &[&[u8]] = &[
            b"\r",
            b"\n",
            b".",
            b"a",
            b"\r\n",
            b"\r\n.",
            b"\r\n.\r",
            b"\r\n.\r\n",
            b"\n.\n",
            b"\r.\r",
            b"..",
            b"\r\r\n",
            b"abc",
        ];
        let mut body = Vec::new();
        for _ in 0..rng.below(max_pieces + 1) {
            if rng.below(8) == 0 {
                body.resize(body.len() + rng.below(150), b'x');
            } else {
                body.extend_from_slice(PIECES[rng.below(PIECES.len())]);
            }
        }
        body
    }

    /// Feeds `body` cut at `cuts` to both scanners, going on after each end
    /// as a pipelined reply would; every answer and state must agree.
    fn agree(body: &[u8], cuts: impl IntoIterator<Item = usize>) {
        let mut fast = BodyEnd::new();
        let mut slow = Reference {
            state: EndState::LineStart,
        };
        let mut from = 0;
        for to in cuts.into_iter().chain([body.len()]) {
            let mut chunk = &body[from..to.max(from)];
            loop {
                let (got, want) = (fast.feed(chunk), slow.feed(chunk));
                let ctx = || format!("{:?} at {from}..{to}", String::from_utf8_lossy(body));
                assert_eq!(got, want, "{}", ctx());
                assert_eq!(fast.state, slow.state, "{}", ctx());
                match got {
                    Some(e) if e < chunk.len() => chunk = &chunk[e..],
                    _ => break,
                }
            }
            from = to.max(from);
        }
    }

    #[test]
    fn body_end_agrees_with_the_bytewise_scanner() {
        let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15);
        for _ in 0..1500 {
            let body = random_body(&mut rng, 24);
            for size in 1..=body.len().max(1) {
                agree(&body, (size..body.len()).step_by(size));
            }
            for _ in 0..20 {
                let mut cuts: Vec<usize> = (0..rng.below(6))
                    .map(|_| rng.below(body.len() + 1))
                    .collect();
                cuts.sort_unstable();
                agree(&body, cuts);
            }
        }
    }

    #[test]
    fn capabilities() {
        let caps = Capabilities::parse([
            &b"TOP\r\n"[..],
            b"UIDL",
            b"SASL PLAIN CRAM-MD5",
            b"STLS",
            b"RESP-CODES",
        ]);
        assert!(caps.has("top"));
        assert!(caps.has("STLS"));
        assert!(!caps.has("USER"));
        assert!(!caps.has("SAS"));
        assert!(caps.has_sasl("cram-md5"));
        assert!(caps.has_sasl("PLAIN"));
        assert!(!caps.has_sasl("LOGIN"));
    }
}
