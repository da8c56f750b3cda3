//! Server responses (RFC 9051 §7): one response line parsed, response
//! codes, and the [`Framer`] the upstream machines read with.
//!
//! The framer serves the login phase only: it collects untagged lines until
//! the tagged completion of the machine's command (or the greeting, or a
//! `+` continuation) and refuses literals, which no response postern needs
//! before login carries. After login the relay scanners take over
//! ([`super::relay`]) and literals of any size stream through.

use postern_core::upstream::{printable, Framer};

use super::capability::Capabilities;
use super::literal;

/// The longest response line read during login (RFC 7162 §4 asks servers
/// to take 8192-octet lines; a capability list is far shorter).
pub const MAX_RESPONSE_LINE: usize = 16 * 1024;
/// The most bytes of untagged lines collected for one command.
pub const MAX_COLLECTED: usize = 64 * 1024;

/// The status of a status response (RFC 9051 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// `OK`
    Ok,
    /// `NO`
    No,
    /// `BAD`
    Bad,
    /// `BYE` (untagged only)
    Bye,
    /// `PREAUTH` (untagged greeting only)
    Preauth,
}

impl Status {
    fn parse(word: &[u8]) -> Option<Self> {
        [
            (&b"OK"[..], Status::Ok),
            (b"NO", Status::No),
            (b"BAD", Status::Bad),
            (b"BYE", Status::Bye),
            (b"PREAUTH", Status::Preauth),
        ]
        .into_iter()
        .find(|(w, _)| word.eq_ignore_ascii_case(w))
        .map(|(_, s)| s)
    }

    /// The keyword.
    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::No => "NO",
            Status::Bad => "BAD",
            Status::Bye => "BYE",
            Status::Preauth => "PREAUTH",
        }
    }
}

/// A response code: `[NAME]` or `[NAME args]` (RFC 9051 §7.1, RFC 5530).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code<'a> {
    /// The code's name as sent.
    pub name: &'a [u8],
    /// What follows the name inside the brackets (empty if nothing).
    pub args: &'a [u8],
}

impl Code<'_> {
    /// Whether the code is `name` (case-insensitive).
    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name.as_bytes())
    }

    /// The list of a `[CAPABILITY ...]` code.
    pub fn capabilities(&self) -> Option<Capabilities> {
        self.is("CAPABILITY")
            .then(|| Capabilities::parse(self.args))
    }
}

/// The text of a status response: an optional code, then human text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RespText<'a> {
    /// The response code, if any.
    pub code: Option<Code<'a>>,
    /// The text after the code.
    pub text: &'a [u8],
}

impl<'a> RespText<'a> {
    /// Splits `[code] text`; a `[` without a closing `]` is plain text.
    pub fn parse(text: &'a [u8]) -> Self {
        let plain = Self { code: None, text };
        let Some(inner) = text.strip_prefix(b"[") else {
            return plain;
        };
        let Some(end) = memchr::memchr(b']', inner) else {
            return plain;
        };
        let (name, args) = match memchr::memchr(b' ', &inner[..end]) {
            Some(sp) => (&inner[..sp], &inner[sp + 1..end]),
            None => (&inner[..end], &b""[..]),
        };
        let after = &inner[end + 1..];
        Self {
            code: Some(Code { name, args }),
            text: after.strip_prefix(b" ").unwrap_or(after),
        }
    }

    /// The whole text (code included) safe to log or quote.
    pub fn printable(&self) -> String {
        match self.code {
            Some(c) if c.args.is_empty() => printable(&[b"[", c.name, b"] ", self.text].concat()),
            Some(c) => printable(&[b"[", c.name, b" ", c.args, b"] ", self.text].concat()),
            None => printable(self.text),
        }
    }
}

/// One server response line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Response<'a> {
    /// `+ text`: a continuation request (a SASL challenge, or go ahead).
    Continuation(&'a [u8]),
    /// A status response: tagged (`tag OK|NO|BAD`) or untagged
    /// (`* OK|NO|BAD|BYE|PREAUTH`).
    Status {
        /// The tag; `None` for an untagged response.
        tag: Option<&'a [u8]>,
        /// The status.
        status: Status,
        /// Code and text.
        text: RespText<'a>,
    },
    /// Other untagged data: `* CAPABILITY ...`, `* 3 EXISTS`, …; `name` is
    /// the first word after `*`, `rest` what follows it.
    Data {
        /// The first word after `* `.
        name: &'a [u8],
        /// The rest of the line after that word and one space.
        rest: &'a [u8],
    },
}

/// Why a line is not an IMAP response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// Empty line.
    #[error("an empty line")]
    Empty,
    /// `*` without a response after it.
    #[error("an untagged response without content")]
    EmptyUntagged,
    /// A tagged line whose tag is not valid.
    #[error("not an IMAP response (invalid tag)")]
    BadTag,
    /// A tagged line without `OK`, `NO` or `BAD`.
    #[error("a tagged response without OK, NO or BAD")]
    TaggedStatus,
}

/// The line without its CRLF (or bare LF).
pub fn strip_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn split_word(s: &[u8]) -> (&[u8], &[u8]) {
    match memchr::memchr(b' ', s) {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (s, &b""[..]),
    }
}

/// Parses one response line (line end optional).
pub fn parse(line: &[u8]) -> Result<Response<'_>, Malformed> {
    let line = strip_eol(line);
    if line.is_empty() {
        return Err(Malformed::Empty);
    }
    if line == b"+" {
        return Ok(Response::Continuation(b""));
    }
    if let Some(text) = line.strip_prefix(b"+ ") {
        return Ok(Response::Continuation(text));
    }
    if let Some(rest) = line.strip_prefix(b"* ") {
        let (word, after) = split_word(rest);
        if word.is_empty() {
            return Err(Malformed::EmptyUntagged);
        }
        return Ok(match Status::parse(word) {
            Some(status) => Response::Status {
                tag: None,
                status,
                text: RespText::parse(after),
            },
            None => Response::Data {
                name: word,
                rest: after,
            },
        });
    }
    let (tag, rest) = split_word(line);
    if !super::command::valid_tag(tag) {
        return Err(Malformed::BadTag);
    }
    let (word, after) = split_word(rest);
    match Status::parse(word) {
        Some(status @ (Status::Ok | Status::No | Status::Bad)) => Ok(Response::Status {
            tag: Some(tag),
            status,
            text: RespText::parse(after),
        }),
        _ => Err(Malformed::TaggedStatus),
    }
}

/// What ends the reply a [`ResponseFramer`] collects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// The server's first line.
    Greeting,
    /// The tagged completion of the command with this tag; a `+`
    /// continuation or an untagged `BYE` also end the reply.
    Completion(Vec<u8>),
}

/// One reply as the login machines see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Untagged lines before the end, line ends removed.
    pub untagged: Vec<Vec<u8>>,
    /// The line that ended the reply (greeting, completion, continuation
    /// or `* BYE`), line end removed.
    pub last: Vec<u8>,
}

/// Frames one reply during the upstream login.
#[derive(Debug)]
pub struct ResponseFramer {
    expect: Expect,
    untagged: Vec<Vec<u8>>,
    collected: usize,
}

impl ResponseFramer {
    /// A framer waiting for `expect`.
    pub fn new(expect: Expect) -> Self {
        Self {
            expect,
            untagged: Vec::new(),
            collected: 0,
        }
    }
}

impl Framer for ResponseFramer {
    type Reply = Reply;

    fn max_line(&self) -> usize {
        MAX_RESPONSE_LINE
    }

    fn push(&mut self, line: Vec<u8>) -> Result<Option<Reply>, String> {
        let body = strip_eol(&line);
        if let Some((_, a)) = literal::announced(body, false) {
            return Err(format!(
                "the server announced a literal ({} octets) before login, where postern accepts none",
                a.len
            ));
        }
        let done = |last: &[u8], untagged: &mut Vec<Vec<u8>>| {
            Ok(Some(Reply {
                untagged: std::mem::take(untagged),
                last: last.to_vec(),
            }))
        };
        let tag = match &self.expect {
            Expect::Greeting => return done(body, &mut self.untagged),
            Expect::Completion(tag) => tag,
        };
        match parse(body) {
            Ok(Response::Continuation(_))
            | Ok(Response::Status {
                tag: None,
                status: Status::Bye,
                ..
            }) => done(body, &mut self.untagged),
            Ok(Response::Status { tag: Some(t), .. }) if t == tag.as_slice() => {
                done(body, &mut self.untagged)
            }
            Ok(Response::Status { tag: Some(t), .. }) => Err(format!(
                "the server answered a command postern did not send (tag {})",
                printable(t)
            )),
            Ok(Response::Status { tag: None, .. } | Response::Data { .. }) => {
                self.collected += line.len();
                if self.collected > MAX_COLLECTED {
                    return Err(format!(
                        "the server sent more than {MAX_COLLECTED} bytes of untagged responses to one command"
                    ));
                }
                self.untagged.push(body.to_vec());
                Ok(None)
            }
            Err(e) => Err(format!("{e}: {}", printable(body))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status<'a>(
        tag: Option<&'a [u8]>,
        status: Status,
        code: Option<(&'a [u8], &'a [u8])>,
        text: &'a [u8],
    ) -> Response<'a> {
        Response::Status {
            tag,
            status,
            text: RespText {
                code: code.map(|(name, args)| Code { name, args }),
                text,
            },
        }
    }

    #[test]
    fn parse_table() {
        for (line, want) in [
            (
                &b"* OK [CAPABILITY IMAP4rev1 STARTTLS] Dovecot ready.\r\n"[..],
                Ok(status(
                    None,
                    Status::Ok,
                    Some((b"CAPABILITY", b"IMAP4rev1 STARTTLS")),
                    b"Dovecot ready.",
                )),
            ),
            (
                b"* PREAUTH IMAP4rev1 server logged in as Smith\r\n",
                Ok(status(
                    None,
                    Status::Preauth,
                    None,
                    b"IMAP4rev1 server logged in as Smith",
                )),
            ),
            (
                b"* BYE Autologout; idle for too long\r\n",
                Ok(status(
                    None,
                    Status::Bye,
                    None,
                    b"Autologout; idle for too long",
                )),
            ),
            (
                b"a001 OK LOGIN completed\r\n",
                Ok(status(Some(b"a001"), Status::Ok, None, b"LOGIN completed")),
            ),
            (
                b"P2 no [AUTHENTICATIONFAILED] Authentication failed.\r\n",
                Ok(status(
                    Some(b"P2"),
                    Status::No,
                    Some((b"AUTHENTICATIONFAILED", b"")),
                    b"Authentication failed.",
                )),
            ),
            (
                b"P3 BAD [CLIENTBUG]\r\n",
                Ok(status(
                    Some(b"P3"),
                    Status::Bad,
                    Some((b"CLIENTBUG", b"")),
                    b"",
                )),
            ),
            (
                b"* OK [ALERT unclosed text\r\n",
                Ok(status(None, Status::Ok, None, b"[ALERT unclosed text")),
            ),
            (b"+ Ready\r\n", Ok(Response::Continuation(b"Ready"))),
            (b"+\r\n", Ok(Response::Continuation(b""))),
            (b"+ \r\n", Ok(Response::Continuation(b""))),
            (
                b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n",
                Ok(Response::Data {
                    name: b"CAPABILITY",
                    rest: b"IMAP4rev1 AUTH=PLAIN",
                }),
            ),
            (
                b"* 3 EXISTS\n",
                Ok(Response::Data {
                    name: b"3",
                    rest: b"EXISTS",
                }),
            ),
            (b"\r\n", Err(Malformed::Empty)),
            (b"* \r\n", Err(Malformed::EmptyUntagged)),
            (b"+OK POP3 ready\r\n", Err(Malformed::BadTag)),
            (b"220 smtp ESMTP\r\n", Err(Malformed::TaggedStatus)),
            (b"a1 BYE x\r\n", Err(Malformed::TaggedStatus)),
            (b"a1\r\n", Err(Malformed::TaggedStatus)),
        ] {
            assert_eq!(parse(line), want, "{:?}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn codes_and_printable_text() {
        let Ok(Response::Status { text, .. }) =
            parse(b"* OK [CAPABILITY IMAP4rev1 SASL-IR] hi\x1b[2J\r\n")
        else {
            panic!("a status");
        };
        let code = text.code.expect("a code");
        assert!(code.is("capability"));
        assert!(code
            .capabilities()
            .is_some_and(|c| c.has("SASL-IR") && c.has("IMAP4rev1")));
        assert_eq!(text.printable(), "[CAPABILITY IMAP4rev1 SASL-IR] hi?[2J");
        assert_eq!(
            RespText::parse(b"[UNAVAILABLE] later").printable(),
            "[UNAVAILABLE] later"
        );
        assert_eq!(
            RespText::parse(b"[ALERT]").code.map(|c| c.args),
            Some(&b""[..])
        );
    }

    fn feed(f: &mut ResponseFramer, lines: &[&str]) -> Result<Option<Reply>, String> {
        let mut last = Ok(None);
        for l in lines {
            assert!(matches!(last, Ok(None)), "reply complete before {l:?}");
            last = f.push(l.as_bytes().to_vec());
        }
        last
    }

    #[test]
    fn framer_collects_until_the_completion() {
        let mut f = ResponseFramer::new(Expect::Greeting);
        let r = feed(&mut f, &["* OK ready\r\n"])
            .expect("ok")
            .expect("done");
        assert_eq!(r.last, b"* OK ready");

        let mut f = ResponseFramer::new(Expect::Completion(b"P1".to_vec()));
        let r = feed(
            &mut f,
            &[
                "* CAPABILITY IMAP4rev1\r\n",
                "* OK [ALERT] hello\r\n",
                "P1 OK done\r\n",
            ],
        )
        .expect("ok")
        .expect("done");
        assert_eq!(r.untagged.len(), 2);
        assert_eq!(r.last, b"P1 OK done");

        for (lines, ends) in [
            (&["+ go\r\n"][..], true),
            (&["* BYE going\r\n"], true),
            (&["P10 OK not ours\r\n"], false),
            (&["* 1 FETCH (BODY[] {5}\r\n"], false),
            (&["* OK {5}\r\n"], false),
            (&["garbage\r\n"], false),
        ] {
            let mut f = ResponseFramer::new(Expect::Completion(b"P1".to_vec()));
            let r = feed(&mut f, lines);
            assert_eq!(r.is_ok(), ends, "{lines:?}: {r:?}");
        }
        let e = ResponseFramer::new(Expect::Completion(b"P1".to_vec()))
            .push(b"* 1 FETCH (BODY[] {5}\r\n".to_vec())
            .expect_err("literal");
        assert!(e.contains("literal"), "{e}");
    }

    #[test]
    fn framer_bounds_untagged_lines() {
        let mut f = ResponseFramer::new(Expect::Completion(b"P1".to_vec()));
        let line = format!("* OK {}\r\n", "x".repeat(1000));
        let mut failed = false;
        for _ in 0..100 {
            if f.push(line.as_bytes().to_vec()).is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed);
    }
}
