//! Client commands before login (RFC 9051 §2.2, §4, §9; RFC 3501): a
//! sans-IO assembler that turns lines and literals into commands.
//!
//! ```text
//!            feed_line("a LOGIN {3}")          feed_literal("tim")
//!   Line ─────────────────────────► Literal(3) ───────────────────► Line
//!     ▲   (sync: Continue, send `+`;                                   │ feed_line(" {8+}") ...
//!     │    {n+}: Need, no `+`)                                         ▼
//!     └──── Command | Bad ◄──────────────── feed_line (no literal at its end)
//! ```
//!
//! A command is a tag, a name (case-insensitive) and arguments: atoms,
//! quoted strings (`\"` and `\\` the only escapes) and literals. A literal
//! is announced at the end of a line, `{n}` (synchronising: the client
//! waits for postern's `+` before sending the n octets) or `{n+}` (RFC
//! 7888: sent at once); the command goes on after the literal.
//!
//! Limits, all checked before a byte of a literal is read:
//!
//! - a line longer than [`Limits::max_line`]: the session discards it and
//!   calls [`CommandReader::too_long`], which answers `BAD`;
//! - a synchronising literal over [`Limits::max_literal`] (or one that
//!   would take the command over [`Limits::max_command`]) is refused with
//!   a tagged `BAD` instead of `+`: the client does not send it (RFC 9051
//!   §4.3), so a 1 GB literal costs nothing;
//! - a non-synchronising literal over those caps is fatal: its octets are
//!   already on the way and postern will not read them, so it answers
//!   `* BYE` and the session closes. postern advertises `LITERAL-` before
//!   login, which limits clients to 4096-octet non-synchronising literals.
//!
//! Before login postern is the server, so parsing is forgiving where that
//! is harmless (runs of spaces, 8-bit octets in atoms), strict where it
//! matters (tags, escapes, control characters, literal syntax). Error
//! replies never echo the client's arguments: they may hold a password.
//!
//! A line that looks like HTTP (postern_core::sniff) is answered `* BYE`
//! and closes the session, as in the other front ends.

use std::fmt;

use postern_core::Secret;
use zeroize::Zeroizing;

use super::literal;

/// Caps on what a client may send in one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The longest line, line end included.
    pub max_line: usize,
    /// The longest literal.
    pub max_literal: usize,
    /// The most octets of one command: lines and literals together.
    pub max_command: usize,
}

impl Limits {
    /// Before login: room for a LOGIN with long literals or a SASL-IR
    /// line, nothing like an APPEND.
    pub const BEFORE_LOGIN: Limits = Limits {
        max_line: 8 * 1024,
        max_literal: 8 * 1024,
        max_command: 16 * 1024,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::BEFORE_LOGIN
    }
}

/// What the session reads next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// A line (up to [`CommandReader::max_line`] octets, line end included).
    Line,
    /// Exactly this many octets (a literal's content).
    Literal(usize),
}

/// What the reader made of its input.
#[derive(Debug)]
pub enum Assembled {
    /// Read this next, then feed it.
    Need(Read),
    /// Send `+ Ready` ([`CONTINUE`]) to the client, then read this (a
    /// synchronising literal's content).
    Continue(Read),
    /// A complete command.
    Command(Command),
    /// Refused: write `reply` (a whole `BAD` or `* BYE` line); then close
    /// if `fatal`, else read the next command line.
    Bad {
        /// The tag of the refused command, if it had a valid one.
        tag: Option<Vec<u8>>,
        /// The line to write.
        reply: Vec<u8>,
        /// Close the session after writing.
        fatal: bool,
    },
}

/// The continuation request postern sends before a synchronising literal.
pub const CONTINUE: &[u8] = b"+ Ready for literal data\r\n";

/// A complete client command.
#[derive(Debug)]
pub struct Command {
    /// The client's tag (valid: echo it in the tagged reply).
    pub tag: Vec<u8>,
    /// What the command is.
    pub kind: CommandKind,
}

/// The commands postern answers before login.
#[derive(Debug)]
pub enum CommandKind {
    /// `CAPABILITY`
    Capability,
    /// `NOOP`
    Noop,
    /// `LOGOUT`
    Logout,
    /// `STARTTLS`
    StartTls,
    /// `ID (...)` or `ID NIL` (RFC 2971); the client's parameters are not
    /// kept.
    Id,
    /// `LOGIN user password` (each an atom, quoted string or literal).
    Login {
        /// The user name as sent.
        user: Vec<u8>,
        /// The password.
        password: Secret,
    },
    /// `AUTHENTICATE mechanism [initial-response]` (RFC 4959 SASL-IR).
    Authenticate {
        /// The mechanism name as sent.
        mechanism: Vec<u8>,
        /// The base64 initial response (`=` for an empty one); it holds
        /// credentials, hence a [`Secret`].
        initial: Option<Secret>,
    },
    /// Any other command; the name upper-cased.
    Other(Vec<u8>),
}

/// Whether `tag` is a valid tag (RFC 9051 `tag`: ASTRING-CHARs except
/// `+`): no space, control, 8-bit octet, `(`, `)`, `{`, `%`, `*`, `"` or `\`.
pub fn valid_tag(tag: &[u8]) -> bool {
    !tag.is_empty()
        && tag.iter().all(|&b| {
            (0x21..0x7f).contains(&b)
                && !matches!(b, b'(' | b')' | b'{' | b'%' | b'*' | b'"' | b'\\' | b'+')
        })
}

/// One lexical item of a command.
enum Token {
    Atom(Zeroizing<Vec<u8>>),
    Quoted(Zeroizing<Vec<u8>>),
    Literal(Zeroizing<Vec<u8>>),
    Open,
    Close,
}

/// Why a command is malformed (never quoting the input).
type SyntaxError = &'static str;

/// Splits one line fragment (no line end, no trailing literal
/// announcement) into tokens; the first error stops it.
fn lex(s: &[u8], out: &mut Vec<Token>) -> Result<(), SyntaxError> {
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b' ' => i += 1,
            b'(' => {
                out.push(Token::Open);
                i += 1;
            }
            b')' => {
                out.push(Token::Close);
                i += 1;
            }
            b'"' => {
                let mut q = Zeroizing::new(Vec::new());
                i += 1;
                loop {
                    match s.get(i) {
                        None => return Err("Unterminated quoted string"),
                        Some(b'"') => break,
                        Some(b'\\') => match s.get(i + 1) {
                            Some(&c @ (b'"' | b'\\')) => {
                                q.push(c);
                                i += 1;
                            }
                            _ => return Err("Invalid escape in a quoted string"),
                        },
                        Some(&c) if c < 0x20 || c == 0x7f => {
                            return Err("Control character in a quoted string")
                        }
                        Some(&c) => q.push(c),
                    }
                    i += 1;
                }
                out.push(Token::Quoted(q));
                i += 1;
            }
            b'{' => return Err("A literal may only be announced at the end of a line"),
            c if c < 0x20 || c == 0x7f => return Err("Control character in a command"),
            _ => {
                let start = i;
                while i < s.len()
                    && !matches!(s[i], b' ' | b'(' | b')' | b'"' | b'{')
                    && s[i] >= 0x20
                    && s[i] != 0x7f
                {
                    i += 1;
                }
                out.push(Token::Atom(Zeroizing::new(s[start..i].to_vec())));
            }
        }
    }
    Ok(())
}

/// Assembles client commands from lines and literals.
pub struct CommandReader {
    limits: Limits,
    /// Tokens of the command in progress (may hold a password).
    tokens: Vec<Token>,
    /// Octets of the command so far, lines and literals.
    total: usize,
    /// Lines of the command so far (0: at a command start).
    lines: usize,
    /// The tag of the command in progress, once known to be valid.
    tag: Option<Vec<u8>>,
    /// The first syntax error of the command in progress.
    error: Option<SyntaxError>,
    /// A literal of this size is expected next.
    literal: Option<usize>,
}

impl fmt::Debug for CommandReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the tokens: they may hold a password.
        f.debug_struct("CommandReader")
            .field("limits", &self.limits)
            .field("lines", &self.lines)
            .field("total", &self.total)
            .field("literal", &self.literal)
            .finish_non_exhaustive()
    }
}

impl Default for CommandReader {
    fn default() -> Self {
        Self::new(Limits::BEFORE_LOGIN)
    }
}

fn bad_line(tag: Option<&[u8]>, text: &str) -> Vec<u8> {
    let mut out = tag.unwrap_or(b"*").to_vec();
    out.extend_from_slice(b" BAD ");
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(b"\r\n");
    out
}

impl CommandReader {
    /// A reader at the start of a command.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            tokens: Vec::new(),
            total: 0,
            lines: 0,
            tag: None,
            error: None,
            literal: None,
        }
    }

    /// The cap for the next line read.
    pub fn max_line(&self) -> usize {
        self.limits.max_line
    }

    /// What the reader waits for.
    pub fn expects(&self) -> Read {
        match self.literal {
            Some(n) => Read::Literal(n),
            None => Read::Line,
        }
    }

    fn reset(&mut self) {
        self.tokens.clear();
        self.total = 0;
        self.lines = 0;
        self.tag = None;
        self.error = None;
        self.literal = None;
    }

    /// Refuses the command in progress and starts afresh.
    fn bad(&mut self, text: &str, fatal: bool) -> Assembled {
        let tag = self.tag.take();
        let reply = if fatal {
            format!("* BYE {text}\r\n").into_bytes()
        } else {
            bad_line(tag.as_deref(), text)
        };
        self.reset();
        Assembled::Bad { tag, reply, fatal }
    }

    /// The session read a line longer than [`Self::max_line`] and
    /// discarded it: `BAD` (tagged if the line continued a command whose
    /// tag is known), then a fresh command.
    pub fn too_long(&mut self) -> Assembled {
        self.bad("Command line too long", false)
    }

    /// Feeds one line, line end included (CRLF; a bare LF is accepted).
    pub fn feed_line(&mut self, line: &[u8]) -> Assembled {
        if self.literal.is_some() {
            return self.bad("Protocol error: literal data expected", true);
        }
        if line.len() > self.limits.max_line {
            return self.too_long();
        }
        let body = super::response::strip_eol(line);
        let first = self.lines == 0;
        self.lines += 1;
        if first {
            if postern_core::sniff::looks_like_http(line) {
                return self.bad("This is an IMAP service, not a web server", true);
            }
            if body.is_empty() {
                return self.bad("Empty command line", false);
            }
        }
        let (text, announced) = match literal::announced(body, true) {
            Some((start, a)) => (&body[..start], Some(a)),
            None => (body, None),
        };
        let before = self.tokens.len();
        if let Err(e) = lex(text, &mut self.tokens) {
            self.error.get_or_insert(e);
        }
        if first {
            match self.tokens.get(before) {
                Some(Token::Atom(t)) if valid_tag(t) => self.tag = Some(t.to_vec()),
                _ => {
                    // Report the invalid tag, not a later error.
                    self.error = Some("Invalid tag");
                }
            }
        }
        self.total += line.len();
        match announced {
            None if self.total > self.limits.max_command => self.bad("Command too long", false),
            None => self.complete(),
            Some(a) => self.announce(a),
        }
    }

    /// A literal was announced at the end of the line just fed.
    fn announce(&mut self, a: literal::Announced) -> Assembled {
        let room = self.limits.max_command.saturating_sub(self.total);
        let fits = a.len <= self.limits.max_literal as u64 && a.len <= room as u64;
        match (fits, a.sync) {
            (false, true) => {
                self.bad("[LIMIT] Literal too large before login", false)
            }
            (false, false) => self.bad(
                "[LIMIT] Non-synchronising literal too large before login (LITERAL- allows 4096 octets)",
                true,
            ),
            // A command already known to be bad does not get its
            // synchronising literal; a non-synchronising one is on the way
            // and must be read to find the next command.
            (true, true) => match self.error {
                Some(e) => self.bad(e, false),
                None => {
                    let n = a.len as usize;
                    self.literal = Some(n);
                    Assembled::Continue(Read::Literal(n))
                }
            },
            (true, false) => {
                let n = a.len as usize;
                self.literal = Some(n);
                Assembled::Need(Read::Literal(n))
            }
        }
    }

    /// Feeds a literal's content: exactly the octets asked for.
    pub fn feed_literal(&mut self, bytes: &[u8]) -> Assembled {
        if self.literal != Some(bytes.len()) {
            return self.bad("Protocol error: unexpected literal data", true);
        }
        self.literal = None;
        self.total += bytes.len();
        self.tokens
            .push(Token::Literal(Zeroizing::new(bytes.to_vec())));
        Assembled::Need(Read::Line)
    }

    /// The command's last line was fed: parse it.
    fn complete(&mut self) -> Assembled {
        if let Some(e) = self.error {
            return self.bad(e, false);
        }
        let tokens = std::mem::take(&mut self.tokens);
        let Some(tag) = self.tag.clone() else {
            return self.bad("Invalid tag", false);
        };
        let mut args = tokens.into_iter().skip(1);
        let name = match args.next() {
            Some(Token::Atom(n)) => n.to_ascii_uppercase(),
            Some(_) => return self.bad("Invalid command name", false),
            None => return self.bad("Missing command name", false),
        };
        let args: Vec<Token> = args.collect();
        let kind = match parse_kind(&name, args) {
            Ok(kind) => kind,
            Err(e) => return self.bad(e, false),
        };
        self.reset();
        Assembled::Command(Command { tag, kind })
    }
}

fn astring(t: Token) -> Option<Zeroizing<Vec<u8>>> {
    match t {
        Token::Atom(v) | Token::Quoted(v) | Token::Literal(v) => Some(v),
        Token::Open | Token::Close => None,
    }
}

fn parse_kind(name: &[u8], args: Vec<Token>) -> Result<CommandKind, SyntaxError> {
    let none = |kind: CommandKind| {
        if args.is_empty() {
            Ok(kind)
        } else {
            Err("Unexpected arguments")
        }
    };
    match name {
        b"CAPABILITY" => none(CommandKind::Capability),
        b"NOOP" => none(CommandKind::Noop),
        b"LOGOUT" => none(CommandKind::Logout),
        b"STARTTLS" => none(CommandKind::StartTls),
        b"ID" if args.is_empty() => Err("ID needs parameters or NIL"),
        b"ID" => Ok(CommandKind::Id),
        b"LOGIN" => {
            let mut it = args.into_iter();
            match (
                it.next().and_then(astring),
                it.next().and_then(astring),
                it.next(),
            ) {
                (Some(user), Some(password), None) => Ok(CommandKind::Login {
                    user: user.to_vec(),
                    password: Secret::new(password.to_vec()),
                }),
                _ => Err("LOGIN takes a user name and a password"),
            }
        }
        b"AUTHENTICATE" => {
            let mut it = args.into_iter();
            match (it.next(), it.next(), it.next()) {
                (Some(Token::Atom(mechanism)), initial, None) => {
                    let initial = match initial {
                        None => None,
                        Some(Token::Atom(ir)) => Some(Secret::new(ir.to_vec())),
                        Some(_) => return Err("Invalid initial response"),
                    };
                    Ok(CommandKind::Authenticate {
                        mechanism: mechanism.to_vec(),
                        initial,
                    })
                }
                _ => Err("AUTHENTICATE takes a mechanism and an optional initial response"),
            }
        }
        _ => Ok(CommandKind::Other(name.to_vec())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a session would see and do, in test form.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Event {
        /// `+` sent before a literal.
        Plus,
        Cmd(String),
        Bad(String, bool),
    }

    fn show(c: &Command) -> String {
        let tag = String::from_utf8_lossy(&c.tag);
        match &c.kind {
            CommandKind::Login { user, password } => format!(
                "{tag} LOGIN {:?} {:?}",
                String::from_utf8_lossy(user),
                String::from_utf8_lossy(password.expose())
            ),
            CommandKind::Authenticate { mechanism, initial } => format!(
                "{tag} AUTHENTICATE {} {:?}",
                String::from_utf8_lossy(mechanism),
                initial
                    .as_ref()
                    .map(|s| String::from_utf8_lossy(s.expose()).into_owned())
            ),
            CommandKind::Other(n) => format!("{tag} Other({})", String::from_utf8_lossy(n)),
            k => format!("{tag} {k:?}"),
        }
    }

    /// A session driver over a byte stream delivered in `chunk`-sized
    /// reads: lines and literals are cut where the reader says, whatever
    /// the chunking. Literal octets are never asked for unless announced
    /// and accepted.
    fn drive(input: &[u8], chunk: usize, limits: Limits) -> Vec<Event> {
        let mut r = CommandReader::new(limits);
        let mut events = Vec::new();
        let mut buf: Vec<u8> = Vec::new();
        let mut chunks = input.chunks(chunk.max(1));
        let mut want = Read::Line;
        loop {
            // Take what `want` asks for from the buffer, reading more.
            let item = loop {
                match want {
                    Read::Line => {
                        if let Some(i) = buf.iter().position(|b| *b == b'\n') {
                            break buf.drain(..=i).collect::<Vec<u8>>();
                        }
                    }
                    Read::Literal(n) if buf.len() >= n => break buf.drain(..n).collect(),
                    Read::Literal(_) => {}
                }
                match chunks.next() {
                    Some(c) => buf.extend_from_slice(c),
                    None => return events,
                }
            };
            let a = match want {
                Read::Line if item.len() > r.max_line() => r.too_long(),
                Read::Line => r.feed_line(&item),
                Read::Literal(_) => r.feed_literal(&item),
            };
            want = match a {
                Assembled::Need(next) => next,
                Assembled::Continue(next) => {
                    events.push(Event::Plus);
                    next
                }
                Assembled::Command(c) => {
                    events.push(Event::Cmd(show(&c)));
                    Read::Line
                }
                Assembled::Bad { reply, fatal, .. } => {
                    events.push(Event::Bad(
                        String::from_utf8_lossy(&reply).into_owned(),
                        fatal,
                    ));
                    if fatal {
                        return events;
                    }
                    Read::Line
                }
            };
            assert_eq!(want, r.expects());
        }
    }

    fn cmd(s: &str) -> Event {
        Event::Cmd(s.to_owned())
    }

    fn bad(s: &str) -> Event {
        Event::Bad(format!("{s}\r\n"), false)
    }

    fn bye(s: &str) -> Event {
        Event::Bad(format!("{s}\r\n"), true)
    }

    /// Each case whole, in every chunk size, and all pipelined together.
    #[test]
    fn command_table() {
        let cases: Vec<(&[u8], Vec<Event>)> = vec![
            // RFC 9051 §6.2.3 and RFC 3501 §6.2.3.
            (b"a001 LOGIN SMITH SESAME\r\n", vec![cmd("a001 LOGIN \"SMITH\" \"SESAME\"")]),
            // RFC 9051 §4.3 / RFC 3501 §7.5: synchronising literals.
            (
                b"A001 LOGIN {11}\r\nFRED FOOBAR {7}\r\nfat man\r\n",
                vec![Event::Plus, Event::Plus, cmd("A001 LOGIN \"FRED FOOBAR\" \"fat man\"")],
            ),
            // RFC 7888 non-synchronising literals: no `+`.
            (
                b"a LOGIN {3+}\r\ntim {7+}\r\ntan\"sta\r\n",
                vec![cmd("a LOGIN \"tim\" \"tan\\\"sta\"")],
            ),
            // Mixed, and a literal holding CRLF and `{5}`.
            (
                b"b login \"tim\" {7}\r\na\r\n{5}b\r\n",
                vec![Event::Plus, cmd("b LOGIN \"tim\" \"a\\r\\n{5}b\"")],
            ),
            // Quoted escapes.
            (
                b"c LOGIN \"t i m\" \"p\\\\a\\\"ss\"\r\n",
                vec![cmd("c LOGIN \"t i m\" \"p\\\\a\\\"ss\"")],
            ),
            (b"d LOGIN \"tim\" \"a\\b\"\r\n", vec![bad("d BAD Invalid escape in a quoted string")]),
            (b"d LOGIN \"tim\" \"ab\r\n", vec![bad("d BAD Unterminated quoted string")]),
            (b"d LOGIN tim\r\n", vec![bad("d BAD LOGIN takes a user name and a password")]),
            (b"d LOGIN a b c\r\n", vec![bad("d BAD LOGIN takes a user name and a password")]),
            (b"d LOGIN a (b)\r\n", vec![bad("d BAD LOGIN takes a user name and a password")]),
            (b"d LOGIN a\x01 b\r\n", vec![bad("d BAD Control character in a command")]),
            (b"d LOGIN a{5} b\r\n", vec![bad("d BAD A literal may only be announced at the end of a line")]),
            // RFC 4959 §3 (SASL-IR) and RFC 9051 §6.2.2.
            (
                b"A01 AUTHENTICATE PLAIN dGVzdAB0ZXN0AHRlc3Q=\r\n",
                vec![cmd("A01 AUTHENTICATE PLAIN Some(\"dGVzdAB0ZXN0AHRlc3Q=\")")],
            ),
            (b"A02 authenticate plain =\r\n", vec![cmd("A02 AUTHENTICATE plain Some(\"=\")")]),
            (b"A03 AUTHENTICATE CRAM-MD5\r\n", vec![cmd("A03 AUTHENTICATE CRAM-MD5 None")]),
            (b"A04 AUTHENTICATE\r\n", vec![bad("A04 BAD AUTHENTICATE takes a mechanism and an optional initial response")]),
            (b"A05 AUTHENTICATE PLAIN \"x\"\r\n", vec![bad("A05 BAD Invalid initial response")]),
            // Simple commands, case-insensitive.
            (b"x capability\r\n", vec![cmd("x Capability")]),
            (b"x NoOp\n", vec![cmd("x Noop")]),
            (b"x LOGOUT\r\n", vec![cmd("x Logout")]),
            (b"x STARTTLS\r\n", vec![cmd("x StartTls")]),
            (b"x STARTTLS now\r\n", vec![bad("x BAD Unexpected arguments")]),
            (b"x ID (\"name\" \"mutt\")\r\n", vec![cmd("x Id")]),
            (b"x ID NIL\r\n", vec![cmd("x Id")]),
            (b"x ID\r\n", vec![bad("x BAD ID needs parameters or NIL")]),
            (b"x select INBOX\r\n", vec![cmd("x Other(SELECT)")]),
            (b"x] select INBOX\r\n", vec![cmd("x] Other(SELECT)")]),
            // Tags.
            (b"* LOGIN a b\r\n", vec![bad("* BAD Invalid tag")]),
            (b"+ LOGIN a b\r\n", vec![bad("* BAD Invalid tag")]),
            (b"a+b NOOP\r\n", vec![bad("* BAD Invalid tag")]),
            (b"a%b NOOP\r\n", vec![bad("* BAD Invalid tag")]),
            (b"(a NOOP\r\n", vec![bad("* BAD Invalid tag")]),
            (b"\"a\" NOOP\r\n", vec![bad("* BAD Invalid tag")]),
            (b" a NOOP\r\n", vec![cmd("a Noop")]),
            (b"a\r\n", vec![bad("a BAD Missing command name")]),
            (b"a \"NOOP\"\r\n", vec![bad("a BAD Invalid command name")]),
            (b"\r\n", vec![bad("* BAD Empty command line")]),
            // A bad command's synchronising literal is not asked for...
            (b"a LOGIN \"x\\q\" {5}\r\n", vec![bad("a BAD Invalid escape in a quoted string")]),
            // ...a non-synchronising one is read, then refused.
            (
                b"a LOGIN \"x\\q\" {5+}\r\nhello\r\n",
                vec![bad("a BAD Invalid escape in a quoted string")],
            ),
            (b"* LOGIN {5+}\r\nhello\r\n", vec![bad("* BAD Invalid tag")]),
            // Literals too large: never read.
            (
                b"a LOGIN {1073741824}\r\n",
                vec![bad("a BAD [LIMIT] Literal too large before login")],
            ),
            (
                b"a LOGIN {99999999999999999999999999}\r\n",
                vec![bad("a BAD [LIMIT] Literal too large before login")],
            ),
            (
                b"a LOGIN {1073741824+}\r\n",
                vec![bye("* BYE [LIMIT] Non-synchronising literal too large before login (LITERAL- allows 4096 octets)")],
            ),
            // HTTP on the wrong port.
            (
                b"GET / HTTP/1.1\r\n",
                vec![bye("* BYE This is an IMAP service, not a web server")],
            ),
        ];
        assert!(!cases.is_empty());
        let limits = Limits::BEFORE_LOGIN;
        let mut all = Vec::new();
        let mut all_events = Vec::new();
        for (input, want) in &cases {
            assert_eq!(
                &drive(input, input.len(), limits),
                want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
            for chunk in 1..=input.len() {
                assert_eq!(
                    &drive(input, chunk, limits),
                    want,
                    "{input:?} in {chunk}-byte chunks"
                );
            }
            // Fatal cases end a session: not pipelined.
            if !want.iter().any(|e| matches!(e, Event::Bad(_, true))) {
                all.extend_from_slice(input);
                all_events.extend(want.iter().cloned());
            }
        }
        for chunk in [1, 2, 3, 7, 64, all.len()] {
            assert_eq!(
                drive(&all, chunk, limits),
                all_events,
                "pipelined, {chunk}-byte chunks"
            );
        }
    }

    #[test]
    fn limits_on_lines_literals_and_commands() {
        let small = Limits {
            max_line: 32,
            max_literal: 10,
            max_command: 40,
        };
        let long = format!("a LOGIN {} b\r\n", "x".repeat(40));
        assert_eq!(
            drive(long.as_bytes(), 5, small),
            vec![bad("* BAD Command line too long")]
        );
        // A too-long line in the middle of a command is answered with its tag.
        let mid = format!("a LOGIN {{3}}\r\ntim {}\r\n", "y".repeat(40));
        assert_eq!(
            drive(mid.as_bytes(), 5, small),
            vec![Event::Plus, bad("a BAD Command line too long")]
        );
        assert_eq!(
            drive(b"a LOGIN {11}\r\n", 5, small),
            vec![bad("a BAD [LIMIT] Literal too large before login")]
        );
        assert_eq!(
            drive(b"a LOGIN {10}\r\n0123456789 {10}\r\n", 5, small),
            vec![
                Event::Plus,
                bad("a BAD [LIMIT] Literal too large before login")
            ],
            "the second literal takes the command over 40 octets"
        );
        assert_eq!(
            drive(b"a LOGIN {10+}\r\n0123456789 {10+}\r\n", 5, small),
            vec![bye("* BYE [LIMIT] Non-synchronising literal too large before login (LITERAL- allows 4096 octets)")],
        );
        // Many short lines of one command add up.
        let many = b"a LOGIN {5}\r\n12345 {5}\r\n12345 {5}\r\n12345 {5}\r\n";
        assert_eq!(
            drive(many, 3, small),
            vec![
                Event::Plus,
                Event::Plus,
                Event::Plus,
                bad("a BAD [LIMIT] Literal too large before login")
            ]
        );
    }

    #[test]
    fn misuse_by_the_session_is_fatal_not_a_panic() {
        let mut r = CommandReader::default();
        assert!(matches!(
            r.feed_literal(b"x"),
            Assembled::Bad { fatal: true, .. }
        ));
        assert!(matches!(
            r.feed_line(b"a LOGIN {3}\r\n"),
            Assembled::Continue(Read::Literal(3))
        ));
        assert!(matches!(
            r.feed_line(b"tim\r\n"),
            Assembled::Bad { fatal: true, .. }
        ));
        assert!(matches!(
            r.feed_line(b"a LOGIN {3}\r\n"),
            Assembled::Continue(Read::Literal(3))
        ));
        assert!(matches!(
            r.feed_literal(b"four"),
            Assembled::Bad { fatal: true, .. }
        ));
        assert!(matches!(r.feed_line(b"a NOOP\r\n"), Assembled::Command(_)));
    }

    #[test]
    fn passwords_stay_out_of_debug_output() {
        let mut r = CommandReader::default();
        assert!(matches!(
            r.feed_line(b"a LOGIN tim {9}\r\n"),
            Assembled::Continue(_)
        ));
        assert!(matches!(
            r.feed_literal(b"hunter2xy"),
            Assembled::Need(Read::Line)
        ));
        assert!(!format!("{r:?}").contains("hunter2"));
        let Assembled::Command(c) = r.feed_line(b"\r\n") else {
            panic!("a command");
        };
        assert!(!format!("{c:?}").contains("hunter2"), "{c:?}");
        let Assembled::Command(c) = r.feed_line(b"b AUTHENTICATE PLAIN AHRpbQBodW50ZXIy\r\n")
        else {
            panic!("a command");
        };
        assert!(!format!("{c:?}").contains("AHRpbQBodW50ZXIy"), "{c:?}");
        // Errors never echo arguments.
        let Assembled::Bad { reply, .. } = r.feed_line(b"c LOGIN \"hunter2\\x\" y\r\n") else {
            panic!("bad");
        };
        assert!(!String::from_utf8_lossy(&reply).contains("hunter2"));
    }
}
