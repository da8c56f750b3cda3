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
//! are rewritten with [`capability::after_login`]. Only the lines postern
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

use super::capability::{self, Capabilities};
use super::command::valid_tag;
use super::literal::{self, Announced, LineTail};
use super::response::strip_eol;

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
    /// give them to [`ClientScanner::on_completion`], then forward them.
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

/// Passes a literal's octets: up to `n` of `input`.
fn literal_octets(n: u64, input: &[u8]) -> (usize, u64) {
    let k = usize::try_from(n).map_or(input.len(), |n| n.min(input.len()));
    (k, n - k as u64)
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

/// A client command's verb, as far as the relay cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// `AUTHENTICATE` (the server refuses it after login).
    Authenticate,
    /// `LOGIN` (the server refuses it after login).
    Login,
    /// `IDLE` (RFC 2177): the client may stay quiet for up to 29 minutes.
    Idle,
    /// `LOGOUT`: the server will say BYE and close.
    Logout,
    /// `STARTTLS`: refused (only valid before login; postern did TLS).
    StartTls,
    /// `COMPRESS` (RFC 4978): refused, see [`super::capability`].
    Compress,
    /// `UNAUTHENTICATE` (RFC 8437): refused, see [`super::capability`].
    Unauthenticate,
    /// Anything else.
    Other,
}

impl Verb {
    fn of(name: &[u8]) -> Self {
        [
            (&b"AUTHENTICATE"[..], Verb::Authenticate),
            (b"LOGIN", Verb::Login),
            (b"IDLE", Verb::Idle),
            (b"LOGOUT", Verb::Logout),
            (b"STARTTLS", Verb::StartTls),
            (b"COMPRESS", Verb::Compress),
            (b"UNAUTHENTICATE", Verb::Unauthenticate),
        ]
        .into_iter()
        .find(|(n, _)| name.eq_ignore_ascii_case(n))
        .map_or(Verb::Other, |(_, v)| v)
    }

    /// The command name (`OTHER` for the rest), for logs.
    pub fn name(self) -> &'static str {
        match self {
            Verb::Authenticate => "AUTHENTICATE",
            Verb::Login => "LOGIN",
            Verb::Idle => "IDLE",
            Verb::Logout => "LOGOUT",
            Verb::StartTls => "STARTTLS",
            Verb::Compress => "COMPRESS",
            Verb::Unauthenticate => "UNAUTHENTICATE",
            Verb::Other => "OTHER",
        }
    }

    /// postern's answer to a command it does not forward, under `tag`.
    fn refusal(self, tag: &[u8]) -> Option<Vec<u8>> {
        let text: &[u8] = match self {
            Verb::StartTls => b" BAD [CLIENTBUG] STARTTLS is only valid before login\r\n",
            Verb::Compress => {
                b" NO [CANNOT] postern does not relay COMPRESS: it must read the session\r\n"
            }
            Verb::Unauthenticate => {
                b" NO [CANNOT] UNAUTHENTICATE is not available through postern\r\n"
            }
            _ => return None,
        };
        let tag = if valid_tag(tag) { tag } else { b"*" };
        Some([tag, text].concat())
    }
}

/// What to do with the start of the client's unconsumed bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOut {
    /// Forward the first n octets unchanged.
    Pass(usize),
    /// A command starts here: forward its first `len` octets (tag and
    /// name) unchanged; `verb` says what it is.
    Command {
        /// Octets to forward.
        len: usize,
        /// The command.
        verb: Verb,
    },
    /// Do not forward the first `len` octets (a whole command line);
    /// write `reply` to the client instead (see
    /// [`ServerScanner::at_boundary`] for when).
    Refuse {
        /// Octets dropped.
        len: usize,
        /// postern's tagged answer.
        reply: Vec<u8>,
        /// The refused command.
        verb: Verb,
    },
    /// Nothing can be decided yet: keep the bytes, read more, call again.
    NeedMore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientState {
    /// At the start of a line.
    LineStart,
    /// Inside a line, watching its end for a literal.
    Line(LineTail),
    /// A synchronising literal was announced: its octets come after the
    /// server's `+`, unless the server completes the command instead.
    AwaitGoAhead(u64),
    /// Inside a literal: this many octets to go.
    Literal(u64),
}

/// Scans what the client sends after login (see the module docs).
#[derive(Debug, Clone)]
pub struct ClientScanner {
    state: ClientState,
    /// The tag of the last command started (reused buffer).
    tag: Vec<u8>,
}

impl Default for ClientScanner {
    fn default() -> Self {
        Self::new()
    }
}

/// What a line start holds.
enum Head {
    NeedMore,
    /// Not `tag SP name`: a continuation line (`DONE`, SASL) or garbage.
    NotCommand,
    Command {
        tag: usize,
        name_end: usize,
        verb: Verb,
    },
}

fn head(input: &[u8]) -> Head {
    let window = &input[..input.len().min(HEAD_LOOKAHEAD)];
    let full = window.len() == HEAD_LOOKAHEAD;
    match memchr::memchr2(b' ', b'\n', window) {
        Some(i) if i > 0 && window[i] == b' ' => {
            let rest = &window[i + 1..];
            match rest.iter().position(|b| matches!(b, b' ' | b'\r' | b'\n')) {
                Some(j) => Head::Command {
                    tag: i,
                    name_end: i + 1 + j,
                    verb: Verb::of(&rest[..j]),
                },
                None if full => Head::Command {
                    tag: i,
                    name_end: window.len(),
                    verb: Verb::Other,
                },
                None => Head::NeedMore,
            }
        }
        Some(_) => Head::NotCommand,
        None if full => Head::NotCommand,
        None => Head::NeedMore,
    }
}

impl ClientScanner {
    /// A scanner at the start of the client's first command after login.
    pub fn new() -> Self {
        Self {
            state: ClientState::LineStart,
            tag: Vec::new(),
        }
    }

    /// The server sent a tagged completion with `tag` (from
    /// [`Out::Completion`]): if the command with that tag was waiting for
    /// a `+` to send a synchronising literal, the literal is not coming.
    pub fn on_completion(&mut self, tag: &[u8]) {
        if matches!(self.state, ClientState::AwaitGoAhead(_)) && tag == self.tag.as_slice() {
            self.state = ClientState::LineStart;
        }
    }

    /// The server sent a `+` continuation request: a synchronising literal
    /// waiting for it is now on its way. (Optional: octets arriving while
    /// waiting are taken as the literal anyway.)
    pub fn on_continuation(&mut self) {
        if let ClientState::AwaitGoAhead(n) = self.state {
            self.state = ClientState::Literal(n);
        }
    }

    /// The client's stream ended with `unconsumed` octets in the buffer:
    /// an error if that was in the middle of a command.
    pub fn eof(&self, unconsumed: usize) -> Result<(), RelayError> {
        match self.state {
            ClientState::LineStart if unconsumed == 0 => Ok(()),
            ClientState::LineStart | ClientState::Line(_) => {
                Err(RelayError::ClientTruncated("inside a command line"))
            }
            ClientState::AwaitGoAhead(_) | ClientState::Literal(_) => {
                Err(RelayError::ClientTruncated("inside a literal"))
            }
        }
    }

    /// Looks at the start of `input` (the unconsumed bytes) and says what
    /// to do with a prefix of it.
    pub fn scan(&mut self, input: &[u8]) -> Result<ClientOut, RelayError> {
        loop {
            if input.is_empty() {
                return Ok(ClientOut::NeedMore);
            }
            match self.state {
                // Octets after `{n}`: the go-ahead came (or the session
                // does not report completions).
                ClientState::AwaitGoAhead(n) => self.state = ClientState::Literal(n),
                ClientState::Literal(0) => self.state = ClientState::Line(LineTail::new(true)),
                ClientState::Literal(n) => {
                    let (k, left) = literal_octets(n, input);
                    self.state = if left == 0 {
                        ClientState::Line(LineTail::new(true))
                    } else {
                        ClientState::Literal(left)
                    };
                    return Ok(ClientOut::Pass(k));
                }
                ClientState::Line(mut tail) => {
                    return Ok(match memchr::memchr(b'\n', input) {
                        Some(i) => {
                            tail.feed(&input[..i]);
                            self.state = match tail.end() {
                                None => ClientState::LineStart,
                                Some(a) if a.sync => ClientState::AwaitGoAhead(a.len),
                                Some(a) => ClientState::Literal(a.len),
                            };
                            ClientOut::Pass(i + 1)
                        }
                        None => {
                            tail.feed(input);
                            self.state = ClientState::Line(tail);
                            ClientOut::Pass(input.len())
                        }
                    });
                }
                ClientState::LineStart => match head(input) {
                    Head::NeedMore => return Ok(ClientOut::NeedMore),
                    Head::NotCommand => self.state = ClientState::Line(LineTail::new(true)),
                    Head::Command {
                        tag,
                        name_end,
                        verb,
                    } => {
                        if let Some(reply) = verb.refusal(&input[..tag]) {
                            return self.refuse(input, reply, verb);
                        }
                        self.tag.clear();
                        self.tag.extend_from_slice(&input[..tag]);
                        let mut tail = LineTail::new(true);
                        tail.feed(&input[..name_end]);
                        self.state = ClientState::Line(tail);
                        return Ok(ClientOut::Command {
                            len: name_end,
                            verb,
                        });
                    }
                },
            }
        }
    }

    /// Drops a whole refused command line.
    fn refuse(
        &mut self,
        input: &[u8],
        reply: Vec<u8>,
        verb: Verb,
    ) -> Result<ClientOut, RelayError> {
        let too_long = RelayError::ClientLineTooLong {
            verb: verb.name(),
            max: MAX_REFUSED_LINE,
        };
        let Some(i) = memchr::memchr(b'\n', input) else {
            return if input.len() >= MAX_REFUSED_LINE {
                Err(too_long)
            } else {
                Ok(ClientOut::NeedMore)
            };
        };
        let len = i + 1;
        if len > MAX_REFUSED_LINE {
            return Err(too_long);
        }
        // A synchronising literal is simply not granted: the refusal
        // answers the command. A non-synchronising one is already coming.
        if let Some((_, a)) = literal::announced(strip_eol(&input[..len]), true) {
            if !a.sync {
                return Err(RelayError::ClientLiteralAfterRefused(verb.name()));
            }
        }
        self.state = ClientState::LineStart;
        Ok(ClientOut::Refuse { len, reply, verb })
    }
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

    /// What the client's stream turns into: octets forwarded, commands
    /// seen and refusals, and how it ended.
    #[derive(Debug, PartialEq, Eq)]
    struct Seen {
        forwarded: Vec<u8>,
        events: Vec<String>,
        end: Result<(), RelayError>,
    }

    fn client(input: &[u8], cuts: &[usize]) -> Seen {
        let mut c = ClientScanner::new();
        let mut buf = Vec::new();
        let mut seen = Seen {
            forwarded: Vec::new(),
            events: Vec::new(),
            end: Ok(()),
        };
        let mut from = 0;
        for to in cuts.iter().copied().chain(std::iter::once(input.len())) {
            buf.extend_from_slice(&input[from..to]);
            from = to;
            loop {
                match c.scan(&buf) {
                    Ok(ClientOut::Pass(n)) => {
                        assert!(n > 0 && n <= buf.len());
                        seen.forwarded.extend(buf.drain(..n));
                    }
                    Ok(ClientOut::Command { len, verb }) => {
                        seen.events.push(verb.name().to_owned());
                        seen.forwarded.extend(buf.drain(..len));
                    }
                    Ok(ClientOut::Refuse { len, reply, verb }) => {
                        let dropped: Vec<u8> = buf.drain(..len).collect();
                        seen.events.push(format!(
                            "refused {} {:?} -> {}",
                            verb.name(),
                            String::from_utf8_lossy(&dropped),
                            String::from_utf8_lossy(&reply).trim_end()
                        ));
                    }
                    Ok(ClientOut::NeedMore) => break,
                    Err(e) => {
                        seen.end = Err(e);
                        return seen;
                    }
                }
            }
        }
        seen.end = c.eof(buf.len());
        seen
    }

    fn client_all_ways(input: &[u8]) -> Seen {
        let whole = client(input, &[]);
        for k in 0..=input.len() {
            assert_eq!(
                client(input, &[k]),
                whole,
                "split at {k}: {:?}",
                String::from_utf8_lossy(input)
            );
        }
        for size in 1..=input.len().min(64) {
            let cuts: Vec<usize> = (size..input.len()).step_by(size).collect();
            assert_eq!(client(input, &cuts), whole, "{size}-octet chunks");
        }
        whole
    }

    #[test]
    fn client_table() {
        let cases: Vec<(&[u8], &[u8], Vec<&str>)> = vec![
            (b"a1 NOOP\r\n", b"a1 NOOP\r\n", vec!["OTHER"]),
            (
                b"a2 APPEND INBOX {32}\r\nb COMPRESS DEFLATE\r\nc STARTTLS\r\n\r\n",
                b"a2 APPEND INBOX {32}\r\nb COMPRESS DEFLATE\r\nc STARTTLS\r\n\r\n",
                vec!["OTHER"],
            ),
            (
                b"a3 APPEND INBOX {12+}\r\nx STARTTLS\r\n FLAGS\r\n",
                b"a3 APPEND INBOX {12+}\r\nx STARTTLS\r\n FLAGS\r\n",
                vec!["OTHER"],
            ),
            (
                b"a4 compress DEFLATE\r\n",
                b"",
                vec!["refused COMPRESS \"a4 compress DEFLATE\\r\\n\" -> a4 NO [CANNOT] postern does not relay COMPRESS: it must read the session"],
            ),
            (
                b"a5 STARTTLS\n",
                b"",
                vec!["refused STARTTLS \"a5 STARTTLS\\n\" -> a5 BAD [CLIENTBUG] STARTTLS is only valid before login"],
            ),
            (
                b"a6 UNAUTHENTICATE\r\n",
                b"",
                vec!["refused UNAUTHENTICATE \"a6 UNAUTHENTICATE\\r\\n\" -> a6 NO [CANNOT] UNAUTHENTICATE is not available through postern"],
            ),
            (
                b"a7 COMPRESS {7}\r\n",
                b"",
                vec!["refused COMPRESS \"a7 COMPRESS {7}\\r\\n\" -> a7 NO [CANNOT] postern does not relay COMPRESS: it must read the session"],
            ),
            (
                b"* COMPRESS DEFLATE\r\n",
                b"",
                vec!["refused COMPRESS \"* COMPRESS DEFLATE\\r\\n\" -> * NO [CANNOT] postern does not relay COMPRESS: it must read the session"],
            ),
            // IDLE's DONE and AUTHENTICATE's lines are not commands.
            (
                b"a8 IDLE\r\nDONE\r\na9 AUTHENTICATE PLAIN\r\nAHRpbQB4\r\n*\r\n",
                b"a8 IDLE\r\nDONE\r\na9 AUTHENTICATE PLAIN\r\nAHRpbQB4\r\n*\r\n",
                vec!["IDLE", "AUTHENTICATE"],
            ),
            // `{5}` inside an unterminated quoted string is no literal.
            (
                b"b1 NOOP \"x {5}\r\nb2 COMPRESS DEFLATE\r\n",
                b"b1 NOOP \"x {5}\r\n",
                vec!["OTHER", "refused COMPRESS \"b2 COMPRESS DEFLATE\\r\\n\" -> b2 NO [CANNOT] postern does not relay COMPRESS: it must read the session"],
            ),
            // ...but after a closed one it is.
            (
                b"b3 LOGIN \"x\" {5}\r\nb4 CO\r\nb5 LOGOUT\r\n",
                b"b3 LOGIN \"x\" {5}\r\nb4 CO\r\nb5 LOGOUT\r\n",
                vec!["LOGIN", "LOGOUT"],
            ),
            (
                b"b6 uid fetch 1:* (FLAGS)\r\n",
                b"b6 uid fetch 1:* (FLAGS)\r\n",
                vec!["OTHER"],
            ),
        ];
        assert!(!cases.is_empty());
        let mut all = Vec::new();
        let mut all_forwarded = Vec::new();
        let mut all_events = Vec::new();
        for (input, forwarded, events) in &cases {
            let seen = client_all_ways(input);
            assert_eq!(
                String::from_utf8_lossy(&seen.forwarded),
                String::from_utf8_lossy(forwarded),
                "{:?}",
                String::from_utf8_lossy(input)
            );
            assert_eq!(&seen.events, events, "{:?}", String::from_utf8_lossy(input));
            assert_eq!(seen.end, Ok(()));
            all.extend_from_slice(input);
            all_forwarded.extend_from_slice(forwarded);
            all_events.extend(events.iter().map(|e| e.to_string()));
        }
        let seen = client_all_ways(&all);
        assert_eq!(seen.forwarded, all_forwarded, "pipelined");
        assert_eq!(seen.events, all_events);
    }

    #[test]
    fn client_errors_and_truncation() {
        let seen = client_all_ways(b"a COMPRESS {5+}\r\nhello\r\n");
        assert_eq!(
            seen.end,
            Err(RelayError::ClientLiteralAfterRefused("COMPRESS"))
        );
        assert!(!RelayError::ClientLiteralAfterRefused("COMPRESS").is_server());
        let long = format!("a STARTTLS {}\r\n", "x".repeat(MAX_REFUSED_LINE));
        let seen = client(long.as_bytes(), &[]);
        assert_eq!(
            seen.end,
            Err(RelayError::ClientLineTooLong {
                verb: "STARTTLS",
                max: MAX_REFUSED_LINE
            })
        );
        for (input, end) in [
            (&b"a APPEND x {10}\r\nhello"[..], "inside a literal"),
            (b"a APPEND x {10}\r\n", "inside a literal"),
            (b"a APPEND x {10}\r\n0123456789", "inside a command line"),
            (b"a NOO", "inside a command line"),
            (b"a NOOP", "inside a command line"),
        ] {
            assert_eq!(
                client_all_ways(input).end,
                Err(RelayError::ClientTruncated(end)),
                "{input:?}"
            );
        }
    }

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
