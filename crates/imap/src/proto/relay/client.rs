//! Client → server: the [`ClientScanner`] (see the module docs of
//! [`super`]).

use super::super::command::valid_tag;
use super::super::literal::{self, LineTail};
use super::super::response::strip_eol;
use super::{literal_octets, RelayError, HEAD_LOOKAHEAD, MAX_REFUSED_LINE};

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
    /// `COMPRESS` (RFC 4978): refused, see [`super::capability`](super::super::capability).
    Compress,
    /// `UNAUTHENTICATE` (RFC 8437): refused, see [`super::capability`](super::super::capability).
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
    /// [`ServerScanner::at_boundary`](super::ServerScanner::at_boundary) for when).
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
    /// [`Out::Completion`](super::Out::Completion)): if the command with that tag was waiting for
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
}
