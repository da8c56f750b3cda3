//! Finding literal announcements (`{n}`, `{n+}`, RFC 9051 §4.3, RFC 7888)
//! at the end of a line, incrementally: the line may arrive in pieces and
//! be passed on before its end is seen, so the watcher keeps a few bytes of
//! state instead of the line.
//!
//! Client lines are watched with quoted strings tracked (a `{5}` inside an
//! unterminated quoted string is no literal to a tokenising server parser
//! such as Dovecot's). Server lines are watched without (what client
//! libraries do: Python's imaplib matches `{n}$` on every untagged line).

/// A literal announced at the end of a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Announced {
    /// Its length in octets (saturating: a number too large for `u64` is
    /// `u64::MAX`, which every cap refuses).
    pub(crate) len: u64,
    /// `{n}`: the sender waits for a `+` continuation; `{n+}` does not.
    pub(crate) sync: bool,
}

/// Where the end of the line stands in the `{digits[+]}` grammar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spec {
    None,
    Open,
    Digits(u64),
    Plus(u64),
    Close(Announced),
    Cr(Announced),
}

impl Spec {
    fn step(self, b: u8) -> Self {
        match (self, b) {
            (_, b'{') => Spec::Open,
            (Spec::Open, b'0'..=b'9') => Spec::Digits(u64::from(b - b'0')),
            (Spec::Digits(n), b'0'..=b'9') => {
                Spec::Digits(n.saturating_mul(10).saturating_add(u64::from(b - b'0')))
            }
            (Spec::Digits(n), b'+') => Spec::Plus(n),
            (Spec::Digits(len), b'}') => Spec::Close(Announced { len, sync: true }),
            (Spec::Plus(len), b'}') => Spec::Close(Announced { len, sync: false }),
            (Spec::Close(a), b'\r') => Spec::Cr(a),
            _ => Spec::None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quote {
    Off,
    In,
    Escape,
}

/// Watches one line's bytes (never its LF) for a literal announcement
/// right before the line end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LineTail {
    spec: Spec,
    quote: Quote,
    track_quotes: bool,
}

impl LineTail {
    /// A watcher at the start of a line (or just after a literal, which
    /// continues the same line).
    pub(crate) fn new(track_quotes: bool) -> Self {
        Self {
            spec: Spec::None,
            quote: Quote::Off,
            track_quotes,
        }
    }

    /// More bytes of the line; they must not contain the LF that ends it.
    pub(crate) fn feed(&mut self, bytes: &[u8]) {
        if self.track_quotes {
            for &b in bytes {
                self.quote = match self.quote {
                    Quote::Escape => Quote::In,
                    Quote::In if b == b'\\' => Quote::Escape,
                    Quote::In if b == b'"' => Quote::Off,
                    Quote::In => Quote::In,
                    Quote::Off if b == b'"' => Quote::In,
                    Quote::Off => {
                        self.spec = self.spec.step(b);
                        continue;
                    }
                };
                self.spec = Spec::None;
            }
            return;
        }
        // Only the bytes after the last `{` can end in an announcement.
        let rest = match memchr::memrchr(b'{', bytes) {
            Some(i) => {
                self.spec = Spec::Open;
                &bytes[i + 1..]
            }
            None => bytes,
        };
        for &b in rest {
            if self.spec == Spec::None {
                return;
            }
            self.spec = self.spec.step(b);
        }
    }

    /// The line ended (LF): the literal it announces, if any.
    pub(crate) fn end(&self) -> Option<Announced> {
        match (self.quote, self.spec) {
            (Quote::Off, Spec::Close(a) | Spec::Cr(a)) => Some(a),
            _ => None,
        }
    }
}

/// The literal announced at the end of `body` (a line without its line
/// end) and where its `{` starts.
pub(crate) fn announced(body: &[u8], track_quotes: bool) -> Option<(usize, Announced)> {
    if !body.ends_with(b"}") {
        return None;
    }
    let mut tail = LineTail::new(track_quotes);
    tail.feed(body);
    let a = tail.end()?;
    let start = memchr::memrchr(b'{', body)?;
    Some((start, a))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(line: &[u8], quotes: bool) -> Option<Announced> {
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        let mut t = LineTail::new(quotes);
        t.feed(body);
        t.end()
    }

    #[test]
    fn table_whole_and_in_every_split() {
        let sync = |len| Some(Announced { len, sync: true });
        let plus = |len| Some(Announced { len, sync: false });
        for (line, quotes, want) in [
            (&b"a LOGIN {5}\r\n"[..], true, sync(5)),
            (b"a LOGIN {5+}\r\n", true, plus(5)),
            (b"a LOGIN {5}\n", true, sync(5)),
            (b"a APPEND x ~{12}\r\n", true, sync(12)),
            (b"a LOGIN {0}\r\n", true, sync(0)),
            (b"a LOGIN {}\r\n", true, None),
            (b"a LOGIN {+}\r\n", true, None),
            (b"a LOGIN {5} \r\n", true, None),
            (b"a LOGIN {5}x\r\n", true, None),
            (b"a LOGIN {5\r\n", true, None),
            (b"a LOGIN 5}\r\n", true, None),
            (b"a LOGIN {5}\r\r\n", true, None),
            (b"a LOGIN {{5}\r\n", true, sync(5)),
            (b"a LOGIN {1{5}\r\n", true, sync(5)),
            (b"a LOGIN \"x {5}\r\n", true, None),
            (b"a LOGIN \"x {5}\r\n", false, sync(5)),
            (b"a LOGIN \"x\" {5}\r\n", true, sync(5)),
            (b"a LOGIN \"x\\\" {5}\r\n", true, None),
            (b"a LOGIN \"x\\\\\" {5}\r\n", true, sync(5)),
            (b"* 1 FETCH (BODY[] {1000000})\r\n", false, None),
            (b"* 1 FETCH (BODY[] {1000000}\r\n", false, sync(1_000_000)),
            (b"a {99999999999999999999999}\r\n", true, sync(u64::MAX)),
        ] {
            assert_eq!(
                whole(line, quotes),
                want,
                "{:?}",
                String::from_utf8_lossy(line)
            );
            let body = line.strip_suffix(b"\n").unwrap_or(line);
            for k in 0..=body.len() {
                for j in k..=body.len() {
                    let mut t = LineTail::new(quotes);
                    t.feed(&body[..k]);
                    t.feed(&body[k..j]);
                    t.feed(&body[j..]);
                    assert_eq!(t.end(), want, "{line:?} split at {k} and {j}");
                }
            }
        }
    }

    #[test]
    fn announced_gives_the_start() {
        assert_eq!(
            announced(b"a LOGIN {11}", true),
            Some((
                8,
                Announced {
                    len: 11,
                    sync: true
                }
            ))
        );
        assert_eq!(announced(b"a LOGIN {11}\r", true), None);
        assert_eq!(announced(b"a LOGIN \"{11}", true), None);
        assert_eq!(announced(b"a NOOP", true), None);
    }
}
