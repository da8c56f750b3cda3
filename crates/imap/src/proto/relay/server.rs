//! Server → client: the [`ServerScanner`] (see the module docs of
//! [`super`]).

use super::super::capability::{self, Capabilities};
use super::super::literal::{self, Announced, LineTail};
use super::super::response::strip_eol;
use super::{literal_octets, RelayError, HEAD_LOOKAHEAD, MAX_HELD_LINE};

/// How a pattern matches the start of the input.
#[derive(Debug, PartialEq, Eq)]
enum Match {
    /// Matches, and the next octet is one of the delimiters.
    Yes,
    /// The input is too short to tell.
    Partial,
    No,
}

fn prefix_match(input: &[u8], pattern: &[u8], delimiters: &[u8]) -> Match {
    let n = input.len().min(pattern.len());
    if !input[..n].eq_ignore_ascii_case(&pattern[..n]) {
        return Match::No;
    }
    match input.get(pattern.len()) {
        None => Match::Partial,
        Some(b) if delimiters.contains(b) => Match::Yes,
        Some(_) => Match::No,
    }
}

/// Line starts whose line is rewritten: the pattern, and whether the list
/// is in a response code (`[CAPABILITY ...]`) rather than the line's rest.
const UNTAGGED_CAPABILITY: [(&[u8], bool); 6] = [
    (b"* CAPABILITY", false),
    (b"* OK [CAPABILITY", true),
    (b"* NO [CAPABILITY", true),
    (b"* BAD [CAPABILITY", true),
    (b"* BYE [CAPABILITY", true),
    (b"* PREAUTH [CAPABILITY", true),
];
/// The same after a tag (the tag itself already passed on).
const TAGGED_CAPABILITY: [(&[u8], bool); 3] = [
    (b" OK [CAPABILITY", true),
    (b" NO [CAPABILITY", true),
    (b" BAD [CAPABILITY", true),
];

fn delimiters(code: bool) -> &'static [u8] {
    if code {
        b" ]"
    } else {
        b" \r\n"
    }
}

/// What to do with the start of the server's unconsumed bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Out {
    /// Forward the first n octets unchanged.
    Pass(usize),
    /// A tagged response starts here and its first n octets are the tag:
    /// give them to [`ClientScanner::on_completion`](super::ClientScanner::on_completion), then forward them.
    Completion(usize),
    /// Drop the first `len` octets (a whole line, or the rest of one after
    /// its tag) and forward `with` instead: a rewritten capability list.
    Replace {
        /// Octets of input replaced.
        len: usize,
        /// What the client gets instead.
        with: Vec<u8>,
    },
    /// Nothing can be decided yet: keep the bytes, read more, call again
    /// with them and what arrives after.
    NeedMore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServerState {
    /// At the start of a response line.
    LineStart,
    /// After a tagged response's tag.
    AfterTag,
    /// Inside an untagged line, watching its end for a literal.
    Line(LineTail),
    /// Inside a line that carries no literal (tagged, `+`).
    Text,
    /// Inside a literal: this many octets to go.
    Literal(u64),
}

/// Scans what the upstream sends after login (see the module docs).
#[derive(Debug, Clone)]
pub struct ServerScanner {
    state: ServerState,
}

impl Default for ServerScanner {
    fn default() -> Self {
        Self::new()
    }
}

/// The state after a line that announced `a` (or nothing) ends.
fn after_server_line(a: Option<Announced>) -> ServerState {
    match a {
        None => ServerState::LineStart,
        Some(Announced { len: 0, .. }) => ServerState::Line(LineTail::new(false)),
        Some(a) => ServerState::Literal(a.len),
    }
}

impl ServerScanner {
    /// A scanner at the start of the server's first response after login.
    pub fn new() -> Self {
        Self {
            state: ServerState::LineStart,
        }
    }

    /// Whether the stream is between responses: a locally made reply may
    /// be written to the client now.
    pub fn at_boundary(&self) -> bool {
        self.state == ServerState::LineStart
    }

    /// The server's stream ended with `unconsumed` octets still in the
    /// session's buffer. An error means a response was cut short: write
    /// nothing more to the client (not even `* BYE`, which could complete
    /// a literal with the wrong octets) and close.
    pub fn eof(&self, unconsumed: usize) -> Result<(), RelayError> {
        match self.state {
            ServerState::LineStart if unconsumed == 0 => Ok(()),
            ServerState::Literal(_) => Err(RelayError::ServerTruncated("inside a literal")),
            _ => Err(RelayError::ServerTruncated("inside a response line")),
        }
    }

    /// Looks at the start of `input` (the unconsumed bytes) and says what
    /// to do with a prefix of it.
    pub fn scan(&mut self, input: &[u8]) -> Result<Out, RelayError> {
        loop {
            if input.is_empty() {
                return Ok(Out::NeedMore);
            }
            match self.state {
                ServerState::Literal(n) => {
                    let (k, left) = literal_octets(n, input);
                    self.state = if left == 0 {
                        ServerState::Line(LineTail::new(false))
                    } else {
                        ServerState::Literal(left)
                    };
                    return Ok(Out::Pass(k));
                }
                ServerState::Line(mut tail) => {
                    return Ok(match memchr::memchr(b'\n', input) {
                        Some(i) => {
                            tail.feed(&input[..i]);
                            self.state = after_server_line(tail.end());
                            Out::Pass(i + 1)
                        }
                        None => {
                            tail.feed(input);
                            self.state = ServerState::Line(tail);
                            Out::Pass(input.len())
                        }
                    });
                }
                ServerState::Text => {
                    return Ok(match memchr::memchr(b'\n', input) {
                        Some(i) => {
                            self.state = ServerState::LineStart;
                            Out::Pass(i + 1)
                        }
                        None => Out::Pass(input.len()),
                    });
                }
                ServerState::LineStart => match input[0] {
                    b'*' => match Self::rewritten(input, &UNTAGGED_CAPABILITY) {
                        Some(Match::Partial) => return Ok(Out::NeedMore),
                        Some(_) => return self.hold(input),
                        None => self.state = ServerState::Line(LineTail::new(false)),
                    },
                    b'+' => self.state = ServerState::Text,
                    _ => {
                        let window = &input[..input.len().min(HEAD_LOOKAHEAD)];
                        match memchr::memchr2(b' ', b'\n', window) {
                            Some(i) if i > 0 && window[i] == b' ' => {
                                self.state = ServerState::AfterTag;
                                return Ok(Out::Completion(i));
                            }
                            Some(_) => self.state = ServerState::Text,
                            None if window.len() == HEAD_LOOKAHEAD => {
                                self.state = ServerState::Text
                            }
                            None => return Ok(Out::NeedMore),
                        }
                    }
                },
                ServerState::AfterTag => match Self::rewritten(input, &TAGGED_CAPABILITY) {
                    Some(Match::Partial) => return Ok(Out::NeedMore),
                    Some(_) => return self.hold(input),
                    None => self.state = ServerState::Text,
                },
            }
        }
    }

    /// Whether the line at `input` is one to rewrite (`Some(Yes)`), may
    /// be once more octets arrive (`Some(Partial)`), or is not (`None`).
    fn rewritten(input: &[u8], patterns: &[(&[u8], bool)]) -> Option<Match> {
        let mut partial = false;
        for (pattern, code) in patterns {
            match prefix_match(input, pattern, delimiters(*code)) {
                Match::Yes => return Some(Match::Yes),
                Match::Partial => partial = true,
                Match::No => {}
            }
        }
        partial.then_some(Match::Partial)
    }

    /// Holds a whole capability line (or the rest of one after its tag)
    /// and rewrites it.
    fn hold(&mut self, input: &[u8]) -> Result<Out, RelayError> {
        let too_long = RelayError::ServerLineTooLong { max: MAX_HELD_LINE };
        let Some(i) = memchr::memchr(b'\n', input) else {
            return if input.len() >= MAX_HELD_LINE {
                Err(too_long)
            } else {
                Ok(Out::NeedMore)
            };
        };
        let len = i + 1;
        if len > MAX_HELD_LINE {
            return Err(too_long);
        }
        let line = &input[..len];
        let tagged = self.state == ServerState::AfterTag;
        self.state = ServerState::LineStart;
        if !tagged {
            // An untagged line is read as announcing a literal like any
            // other; one that does is no capability list postern can
            // rewrite (its `{n}` is no atom): it passes as it is.
            if let Some((_, a)) = literal::announced(strip_eol(line), false) {
                self.state = after_server_line(Some(a));
                return Ok(Out::Pass(len));
            }
        }
        let patterns: &[(&[u8], bool)] = if tagged {
            &TAGGED_CAPABILITY
        } else {
            &UNTAGGED_CAPABILITY
        };
        let found = patterns
            .iter()
            .find(|(p, code)| prefix_match(line, p, delimiters(*code)) == Match::Yes);
        Ok(
            match found.and_then(|(p, code)| rewrite_line(line, p.len(), *code)) {
                Some(with) if with != line => Out::Replace { len, with },
                _ => Out::Pass(len),
            },
        )
    }
}

/// `line` with the capability list after `prefix` octets filtered; for a
/// code, the list ends at `]` (`None` if there is none).
fn rewrite_line(line: &[u8], prefix: usize, code: bool) -> Option<Vec<u8>> {
    let body = strip_eol(line).len();
    let end = if code {
        prefix + memchr::memchr(b']', &line[prefix..body])?
    } else {
        body
    };
    let caps = capability::after_login(&Capabilities::parse(&line[prefix..end]));
    let mut out = Vec::with_capacity(line.len());
    out.extend_from_slice(&line[..prefix]);
    if !caps.is_empty() {
        out.push(b' ');
        out.extend_from_slice(&caps.to_text());
    }
    out.extend_from_slice(&line[end..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the client receives, the tags reported, and how the stream
    /// ended, for `input` delivered in the given chunks.
    fn server(input: &[u8], cuts: &[usize]) -> (Vec<u8>, Vec<Vec<u8>>, Result<(), RelayError>) {
        let mut s = ServerScanner::new();
        let mut buf = Vec::new();
        let mut out = Vec::new();
        let mut tags = Vec::new();
        let mut from = 0;
        for to in cuts.iter().copied().chain(std::iter::once(input.len())) {
            buf.extend_from_slice(&input[from..to]);
            from = to;
            loop {
                match s.scan(&buf) {
                    Ok(Out::Pass(n)) => {
                        assert!(n > 0 && n <= buf.len());
                        out.extend(buf.drain(..n));
                    }
                    Ok(Out::Completion(n)) => {
                        tags.push(buf[..n].to_vec());
                        out.extend(buf.drain(..n));
                    }
                    Ok(Out::Replace { len, with }) => {
                        buf.drain(..len);
                        out.extend_from_slice(&with);
                    }
                    Ok(Out::NeedMore) => break,
                    Err(e) => return (out, tags, Err(e)),
                }
            }
        }
        let end = s.eof(buf.len());
        (out, tags, end)
    }

    /// Every chunking gives the same result: each split point (two
    /// chunks), every chunk size, and byte by byte.
    fn server_all_ways(input: &[u8]) -> (Vec<u8>, Vec<Vec<u8>>, Result<(), RelayError>) {
        let whole = server(input, &[]);
        for k in 0..=input.len() {
            assert_eq!(
                server(input, &[k]),
                whole,
                "split at {k}: {:?}",
                String::from_utf8_lossy(input)
            );
        }
        for size in 1..=input.len().min(64) {
            let cuts: Vec<usize> = (size..input.len()).step_by(size).collect();
            assert_eq!(server(input, &cuts), whole, "{size}-octet chunks");
        }
        whole
    }

    #[test]
    fn server_table() {
        let fetch = b"* 1 FETCH (BODY[] {46}\r\n* CAPABILITY STARTTLS\r\na1 OK [CAPABILITY {5}\r\n FLAGS (\\Seen))\r\n";
        // (what the server sends, what the client gets, tags reported)
        type Case<'a> = (&'a [u8], &'a [u8], Vec<&'a [u8]>);
        let cases: Vec<Case<'_>> = vec![
            (
                b"* CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN IDLE\r\n",
                b"* CAPABILITY IMAP4rev1 IDLE\r\n",
                vec![],
            ),
            (
                b"* capability imap4rev1 compress=deflate\n",
                b"* capability imap4rev1\n",
                vec![],
            ),
            (
                b"a1 OK [CAPABILITY IMAP4rev1 COMPRESS=DEFLATE IDLE] Logged in\r\n",
                b"a1 OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n",
                vec![b"a1"],
            ),
            (
                b"* OK [CAPABILITY IMAP4rev1 STARTTLS] still here\r\n",
                b"* OK [CAPABILITY IMAP4rev1] still here\r\n",
                vec![],
            ),
            (
                b"a2 NO [CAPABILITY STARTTLS]\r\n",
                b"a2 NO [CAPABILITY]\r\n",
                vec![b"a2"],
            ),
            // Unchanged lists pass as they are.
            (
                b"* CAPABILITY IMAP4rev1 IDLE\r\n",
                b"* CAPABILITY IMAP4rev1 IDLE\r\n",
                vec![],
            ),
            // Only whole words match.
            (
                b"* CAPABILITYX STARTTLS\r\n",
                b"* CAPABILITYX STARTTLS\r\n",
                vec![],
            ),
            (
                b"* OK [CAPABILITYX STARTTLS]\r\n",
                b"* OK [CAPABILITYX STARTTLS]\r\n",
                vec![],
            ),
            (
                b"* OK [CAPABILITY STARTTLS no end\r\n",
                b"* OK [CAPABILITY STARTTLS no end\r\n",
                vec![],
            ),
            // A literal holding a capability line, a tagged line and `{5}`
            // is opaque; the response goes on after it.
            (fetch, fetch, vec![]),
            (
                b"* 2 FETCH (BODY[] {0}\r\n)\r\n* CAPABILITY A STARTTLS\r\n",
                b"* 2 FETCH (BODY[] {0}\r\n)\r\n* CAPABILITY A\r\n",
                vec![],
            ),
            // Literal8 (RFC 3516).
            (
                b"* 3 FETCH (BINARY[] ~{3}\r\n\x00\x01\n)\r\na3 OK\r\n",
                b"* 3 FETCH (BINARY[] ~{3}\r\n\x00\x01\n)\r\na3 OK\r\n",
                vec![b"a3"],
            ),
            // Continuations and tagged lines carry no literal.
            (
                b"+ idling {5}\r\n* CAPABILITY STARTTLS\r\n",
                b"+ idling {5}\r\n* CAPABILITY\r\n",
                vec![],
            ),
            (
                b"a4 OK done {5}\r\n* CAPABILITY STARTTLS\r\n",
                b"a4 OK done {5}\r\n* CAPABILITY\r\n",
                vec![b"a4"],
            ),
            // A capability line that announces a literal passes unchanged.
            (
                b"* CAPABILITY IMAP4rev1 STARTTLS {3}\r\nxyz\r\n",
                b"* CAPABILITY IMAP4rev1 STARTTLS {3}\r\nxyz\r\n",
                vec![],
            ),
            (
                b"* 4 EXISTS\r\n* BYE bye\r\na5 OK LOGOUT\r\n",
                b"* 4 EXISTS\r\n* BYE bye\r\na5 OK LOGOUT\r\n",
                vec![b"a5"],
            ),
        ];
        assert!(!cases.is_empty());
        let mut all = Vec::new();
        let mut all_out = Vec::new();
        let mut all_tags = Vec::new();
        for (input, want, tags) in &cases {
            let (out, got_tags, end) = server_all_ways(input);
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(want),
                "{:?}",
                String::from_utf8_lossy(input)
            );
            assert_eq!(&got_tags, tags);
            assert_eq!(end, Ok(()));
            all.extend_from_slice(input);
            all_out.extend_from_slice(want);
            all_tags.extend(tags.iter().map(|t| t.to_vec()));
        }
        let (out, tags, end) = server_all_ways(&all);
        assert_eq!(out, all_out, "pipelined");
        assert_eq!(tags, all_tags);
        assert_eq!(end, Ok(()));
    }

    #[test]
    fn server_stream_cut_short() {
        for (input, end) in [
            (&b"* 1 FETCH (BODY[] {10}\r\nhello"[..], "inside a literal"),
            (
                b"* 1 FETCH (BODY[] {10}\r\n0123456789",
                "inside a response line",
            ),
            (b"* 1 FETCH (FLAGS", "inside a response line"),
            (b"a1 OK", "inside a response line"),
            (b"* CAPAB", "inside a response line"),
            (b"* CAPABILITY IMAP4rev1", "inside a response line"),
        ] {
            let (_, _, got) = server_all_ways(input);
            assert_eq!(got, Err(RelayError::ServerTruncated(end)), "{input:?}");
        }
        let mut s = ServerScanner::new();
        assert!(s.at_boundary());
        assert_eq!(s.scan(b"* 1 FETCH (BODY[] {10}\r\n"), Ok(Out::Pass(24)));
        assert!(!s.at_boundary());
        assert_eq!(s.scan(b"0123456789)\r\n"), Ok(Out::Pass(10)));
        assert_eq!(s.scan(b")\r\n"), Ok(Out::Pass(3)));
        assert!(s.at_boundary());
    }

    #[test]
    fn server_bounds_held_lines_not_passed_ones() {
        let long = format!("* CAPABILITY {}\r\n", "X".repeat(MAX_HELD_LINE));
        let (_, _, end) = server(long.as_bytes(), &[100, 60_000]);
        assert_eq!(
            end,
            Err(RelayError::ServerLineTooLong { max: MAX_HELD_LINE })
        );
        assert!(RelayError::ServerLineTooLong { max: 1 }.is_server());
        // A long SEARCH answer streams through.
        let search = format!("* SEARCH {}\r\na1 OK\r\n", "12345 ".repeat(100_000));
        let (out, tags, end) = server(search.as_bytes(), &[10, 200_000, 400_000]);
        assert_eq!(out, search.as_bytes());
        assert_eq!(tags, vec![b"a1".to_vec()]);
        assert_eq!(end, Ok(()));
        // A huge literal streams in pieces the size of what arrives.
        let mut s = ServerScanner::new();
        assert_eq!(
            s.scan(b"* 1 FETCH (BODY[] {1000000000}\r\n"),
            Ok(Out::Pass(32))
        );
        assert_eq!(s.scan(&[b'x'; 4096]), Ok(Out::Pass(4096)));
        // A tag longer than the lookahead passes unexamined.
        let long_tag = format!(
            "{} OK [CAPABILITY STARTTLS]\r\n",
            "t".repeat(HEAD_LOOKAHEAD)
        );
        let (out, tags, _) = server_all_ways(long_tag.as_bytes());
        assert_eq!(out, long_tag.as_bytes());
        assert!(tags.is_empty());
    }
}
