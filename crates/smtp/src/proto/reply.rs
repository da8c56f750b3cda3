//! Server replies (RFC 5321 §4.2): `code SP text` or `code-text` lines.
//!
//! A multi-line reply is only complete at the line whose fourth byte is a
//! space, and every line must carry the same code: a code change inside a
//! reply means the framing is broken and the upstream cannot be trusted.

/// The longest reply line postern reads from a server (RFC 5321 §4.5.3.1.5
/// says 512; real servers send longer texts, so allow some room).
pub const MAX_REPLY_LINE: usize = 2048;
/// The most lines in one reply (an EHLO list is the longest in practice).
pub const MAX_REPLY_LINES: usize = 64;

/// One complete reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    code: u16,
    raw: Vec<u8>,
}

/// A reply line that breaks the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// Not `ddd`, `ddd-` or `ddd SP`, or not ending in CRLF.
    #[error("the server sent a line that is not an SMTP reply")]
    Malformed,
    /// The code changed inside a multi-line reply.
    #[error("the server changed the reply code inside a multi-line reply")]
    CodeChanged,
    /// Too many lines.
    #[error("the server's reply has too many lines")]
    TooLong,
}

/// Assembles a reply from lines.
#[derive(Debug, Default)]
pub struct ReplyBuilder {
    code: Option<u16>,
    raw: Vec<u8>,
    lines: usize,
}

/// Parses the code and the continuation flag of one line.
fn line_code(line: &[u8]) -> Result<(u16, bool), ReplyError> {
    if line.len() < 5 || !line.ends_with(b"\r\n") {
        return Err(ReplyError::Malformed);
    }
    let digits = &line[..3];
    if !(b'2'..=b'5').contains(&digits[0]) || !digits.iter().all(u8::is_ascii_digit) {
        return Err(ReplyError::Malformed);
    }
    let code = digits
        .iter()
        .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    match line[3] {
        b'-' => Ok((code, true)),
        b' ' => Ok((code, false)),
        // A bare code: the line is exactly `ddd` CRLF.
        b'\r' if line.len() == 5 => Ok((code, false)),
        _ => Err(ReplyError::Malformed),
    }
}

impl ReplyBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one line (CRLF included); returns the reply once it is complete.
    pub fn push(&mut self, line: &[u8]) -> Result<Option<Reply>, ReplyError> {
        let (code, more) = line_code(line)?;
        if self.code.is_some_and(|c| c != code) {
            return Err(ReplyError::CodeChanged);
        }
        self.lines += 1;
        if self.lines > MAX_REPLY_LINES {
            return Err(ReplyError::TooLong);
        }
        self.code = Some(code);
        self.raw.extend_from_slice(line);
        if more {
            return Ok(None);
        }
        Ok(Some(Reply {
            code,
            raw: std::mem::take(&mut self.raw),
        }))
    }
}

impl postern_core::upstream::Framer for ReplyBuilder {
    type Reply = Reply;

    fn max_line(&self) -> usize {
        MAX_REPLY_LINE
    }

    fn push(&mut self, line: Vec<u8>) -> Result<Option<Reply>, String> {
        ReplyBuilder::push(self, &line).map_err(|e| e.to_string())
    }
}

impl Reply {
    /// A reply from complete wire bytes (tests and local replies).
    pub fn parse(raw: &[u8]) -> Result<Reply, ReplyError> {
        let mut b = ReplyBuilder::new();
        let mut lines = raw.split_inclusive(|c| *c == b'\n').peekable();
        while let Some(line) = lines.next() {
            if let Some(r) = b.push(line)? {
                return if lines.peek().is_none() {
                    Ok(r)
                } else {
                    Err(ReplyError::Malformed)
                };
            }
        }
        Err(ReplyError::Malformed)
    }

    /// The three-digit code.
    pub fn code(&self) -> u16 {
        self.code
    }

    /// 2xx.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// 3xx (354, 334).
    pub fn is_intermediate(&self) -> bool {
        (300..400).contains(&self.code)
    }

    /// 4xx.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// The reply exactly as the server sent it.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// The text of each line (after `ddd-`/`ddd `), without CRLF.
    pub fn texts(&self) -> impl Iterator<Item = &[u8]> {
        self.raw.split_inclusive(|c| *c == b'\n').map(|l| {
            let l = l.strip_suffix(b"\r\n").unwrap_or(l);
            l.get(4..).unwrap_or_default()
        })
    }

    /// The text of the last line, for a 334 challenge.
    pub fn last_text(&self) -> &[u8] {
        self.texts().last().unwrap_or_default()
    }

    /// The reply made safe to relay to a client: in each line's text,
    /// control characters (terminal escapes included) become `?` and the
    /// text is bounded to 510 octets (RFC 5321 §4.5.3.1.5).
    pub fn sanitized(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.raw.len());
        for line in self.raw.split_inclusive(|c| *c == b'\n') {
            let line = line.strip_suffix(b"\r\n").unwrap_or(line);
            // The whole line, code included, goes through the filter: only
            // the CRLF postern adds ends a line on the client side.
            out.extend(
                line.iter()
                    .take(510)
                    .map(|&b| if b < 0x20 || b == 0x7f { b'?' } else { b }),
            );
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    /// The text made printable and bounded, for logs and client messages.
    pub fn summary(&self) -> String {
        let text: String = self
            .texts()
            .flat_map(|t| t.iter().chain(b" "))
            .take(200)
            .map(|&b| {
                if (0x20..0x7f).contains(&b) {
                    b as char
                } else {
                    '?'
                }
            })
            .collect();
        format!("{} {}", self.code, text.trim_end())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_and_multi_line() {
        let r = Reply::parse(b"250 2.0.0 Ok\r\n").expect("reply");
        assert_eq!(r.code(), 250);
        assert!(r.is_positive());
        assert_eq!(r.texts().collect::<Vec<_>>(), vec![&b"2.0.0 Ok"[..]]);
        let r =
            Reply::parse(b"250-mail.example\r\n250-SIZE 100\r\n250 AUTH PLAIN\r\n").expect("reply");
        assert_eq!(r.texts().count(), 3);
        assert_eq!(r.last_text(), b"AUTH PLAIN");
        let r = Reply::parse(b"334 \r\n").expect("reply");
        assert!(r.is_intermediate());
        assert_eq!(r.last_text(), b"");
        let r = Reply::parse(b"220\r\n").expect("a bare code is a valid reply");
        assert_eq!(r.code(), 220);
    }

    #[test]
    fn relayed_replies_are_sanitized() {
        let r = Reply::parse(b"550-5.1.1 \x1b[31mred\r\n550 5.1.1 bell\x07\r\n").expect("reply");
        assert_eq!(r.sanitized(), b"550-5.1.1 ?[31mred\r\n550 5.1.1 bell?\r\n");
        let long = [b"250 ".to_vec(), vec![b'x'; 3000], b"\r\n".to_vec()].concat();
        let r = Reply::parse(&long).expect("reply");
        assert_eq!(r.sanitized().len(), 512);
        let ok = Reply::parse(b"250 2.0.0 Ok: queued as 1A2B\r\n").expect("reply");
        assert_eq!(ok.sanitized(), ok.raw());
    }

    #[test]
    fn framing_errors() {
        for (raw, err) in [
            (&b"250-a\r\n251 b\r\n"[..], ReplyError::CodeChanged),
            (b"25O ok\r\n", ReplyError::Malformed),
            (b"250 ok\n", ReplyError::Malformed),
            (b"250xok\r\n", ReplyError::Malformed),
            (b"250\rX\r\n", ReplyError::Malformed),
            (b"250\r\r\n", ReplyError::Malformed),
            (b"650 ok\r\n", ReplyError::Malformed),
            (b"250 ok\r\n250 extra\r\n", ReplyError::Malformed),
            (b"+OK pop3\r\n", ReplyError::Malformed),
        ] {
            assert_eq!(
                Reply::parse(raw),
                Err(err),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
        let mut b = ReplyBuilder::new();
        for _ in 0..MAX_REPLY_LINES {
            assert_eq!(b.push(b"250-x\r\n"), Ok(None));
        }
        assert_eq!(b.push(b"250-x\r\n"), Err(ReplyError::TooLong));
    }

    #[test]
    fn lines_in_every_chunking_build_the_same_reply() {
        let raw = b"250-first\r\n250-second\r\n250 last\r\n";
        let mut b = ReplyBuilder::new();
        let mut got = None;
        for line in raw.split_inclusive(|c| *c == b'\n') {
            got = b.push(line).expect("ok");
        }
        assert_eq!(got.expect("complete").raw(), raw);
    }
}
