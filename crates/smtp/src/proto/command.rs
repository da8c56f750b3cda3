//! Client command lines (RFC 5321 §4.1, RFC 4954 AUTH, RFC 3207 STARTTLS).
//!
//! Lines must end in CRLF, with no other CR, LF or NUL: a bare line ending
//! is how SMTP smuggling starts, so it is refused, never guessed at.

/// The longest command line read at all: AUTH lines may be long
/// (RFC 4954 §4: 12,288 octets).
pub const MAX_AUTH_LINE: usize = 12_288;
/// The longest ordinary command line (RFC 5321 §4.5.3.1.4 gives 512; room
/// is left for extension parameters such as DSN's ORCPT/ENVID).
pub const MAX_COMMAND_LINE: usize = 1024;

/// A parsed client command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    /// `EHLO domain`
    Ehlo(&'a [u8]),
    /// `HELO domain`
    Helo(&'a [u8]),
    /// `MAIL FROM:<path> params`
    Mail(Envelope<'a>),
    /// `RCPT TO:<path> params`
    Rcpt(Envelope<'a>),
    /// `DATA`
    Data,
    /// `BDAT size [LAST]`
    Bdat,
    /// `RSET`
    Rset,
    /// `NOOP [text]`
    Noop,
    /// `QUIT`
    Quit,
    /// `VRFY ...`
    Vrfy,
    /// `EXPN ...`
    Expn,
    /// `HELP [topic]`
    Help,
    /// `STARTTLS`
    Starttls,
    /// `AUTH mechanism [initial-response]`
    Auth {
        /// The mechanism name.
        mechanism: &'a [u8],
        /// The initial response, if any.
        initial: Option<&'a [u8]>,
    },
    /// A verb postern does not know.
    Unknown,
    /// A known verb with bad syntax (501), with the reason.
    Syntax(&'static str),
    /// A bare CR or LF, or NUL, in the line.
    BareLineEnding,
}

/// The path and parameters of MAIL or RCPT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// The address between the angle brackets (may be empty for MAIL).
    pub path: &'a [u8],
    /// The ESMTP parameters, as given.
    pub params: Vec<&'a [u8]>,
}

impl Envelope<'_> {
    /// The value of a parameter, e.g. `SIZE`.
    pub fn param(&self, key: &str) -> Option<&[u8]> {
        self.params.iter().find_map(|p| {
            let (k, v) = match p.iter().position(|b| *b == b'=') {
                Some(i) => (&p[..i], &p[i + 1..]),
                None => (&p[..], &b""[..]),
            };
            k.eq_ignore_ascii_case(key.as_bytes()).then_some(v)
        })
    }

    /// The declared SIZE, if any and well-formed.
    pub fn size(&self) -> Option<u64> {
        let v = self.param("SIZE")?;
        std::str::from_utf8(v).ok()?.parse().ok()
    }

    /// The command for the upstream: canonical form, with the client's
    /// `AUTH=` parameter removed (postern's own login is what the upstream
    /// knows; RFC 4954 §5).
    pub fn write_to(&self, verb: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(verb);
        out.push(b'<');
        out.extend_from_slice(self.path);
        out.push(b'>');
        for p in &self.params {
            let key = p.split(|b| *b == b'=').next().unwrap_or_default();
            if key.eq_ignore_ascii_case(b"AUTH") {
                continue;
            }
            out.push(b' ');
            out.extend_from_slice(p);
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// Whether the line is CRLF-terminated with no other CR, LF or NUL.
pub fn clean_line(line: &[u8]) -> Option<&[u8]> {
    let body = line.strip_suffix(b"\r\n")?;
    if body.iter().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
        return None;
    }
    Some(body)
}

fn envelope<'a>(
    rest: &'a [u8],
    prefix: &[u8],
    null_ok: bool,
) -> Result<Envelope<'a>, &'static str> {
    if rest.len() < prefix.len() || !rest[..prefix.len()].eq_ignore_ascii_case(prefix) {
        return Err("Syntax error in parameters");
    }
    // Tolerate "FROM: <a>" as most servers do.
    let rest = rest[prefix.len()..].trim_ascii_start();
    let Some(rest) = rest.strip_prefix(b"<") else {
        return Err("Address must be in angle brackets");
    };
    let close = memchr::memchr(b'>', rest).ok_or("Address must be in angle brackets")?;
    let path = &rest[..close];
    if path.iter().any(|b| *b == b'<' || *b < 0x20 || *b == 0x7f) {
        return Err("Invalid characters in address");
    }
    if path.is_empty() && !null_ok {
        return Err("A recipient address is required");
    }
    let after = &rest[close + 1..];
    if !after.is_empty() && !after.starts_with(b" ") {
        return Err("Syntax error after the address");
    }
    let params: Vec<&[u8]> = after
        .split(|b| *b == b' ')
        .filter(|p| !p.is_empty())
        .collect();
    if params
        .iter()
        .any(|p| p.iter().any(|b| !(0x21..0x7f).contains(b)))
    {
        return Err("Invalid characters in parameters");
    }
    Ok(Envelope { path, params })
}

/// Parses one command line (CRLF included).
pub fn parse(line: &[u8]) -> Command<'_> {
    let Some(body) = clean_line(line) else {
        return Command::BareLineEnding;
    };
    let (verb, rest) = match body.iter().position(|b| *b == b' ') {
        Some(i) => (&body[..i], &body[i + 1..]),
        None => (body, &b""[..]),
    };
    if verb.len() > 8 || !verb.iter().all(u8::is_ascii_alphabetic) {
        return Command::Unknown;
    }
    let mut buf = [0u8; 8];
    buf[..verb.len()].copy_from_slice(verb);
    buf.make_ascii_uppercase();
    let rest_trim = rest.trim_ascii();
    match &buf[..verb.len()] {
        b"EHLO" | b"HELO" if rest_trim.is_empty() => {
            Command::Syntax("A domain name or address literal is required")
        }
        b"EHLO" => Command::Ehlo(rest_trim),
        b"HELO" => Command::Helo(rest_trim),
        b"MAIL" => match envelope(rest, b"FROM:", true) {
            Ok(e) => Command::Mail(e),
            Err(why) => Command::Syntax(why),
        },
        b"RCPT" => match envelope(rest, b"TO:", false) {
            Ok(e) => Command::Rcpt(e),
            Err(why) => Command::Syntax(why),
        },
        b"DATA" if rest_trim.is_empty() => Command::Data,
        b"BDAT" => Command::Bdat,
        b"RSET" if rest_trim.is_empty() => Command::Rset,
        b"NOOP" => Command::Noop,
        b"QUIT" if rest_trim.is_empty() => Command::Quit,
        b"VRFY" => Command::Vrfy,
        b"EXPN" => Command::Expn,
        b"HELP" => Command::Help,
        b"STARTTLS" if rest_trim.is_empty() => Command::Starttls,
        b"AUTH" => {
            let mut parts = rest_trim.split(|b| *b == b' ').filter(|p| !p.is_empty());
            match (parts.next(), parts.next(), parts.next()) {
                (Some(mechanism), initial, None) => Command::Auth { mechanism, initial },
                _ => Command::Syntax("AUTH needs a mechanism and at most one initial response"),
            }
        }
        b"DATA" | b"RSET" | b"QUIT" | b"STARTTLS" => {
            Command::Syntax("This command takes no parameters")
        }
        _ => Command::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(path: &'a [u8], params: &[&'a [u8]]) -> Envelope<'a> {
        Envelope {
            path,
            params: params.to_vec(),
        }
    }

    #[test]
    fn table() {
        use Command as C;
        let cases: &[(&[u8], Command<'_>)] = &[
            (b"EHLO client.example\r\n", C::Ehlo(b"client.example")),
            (b"helo [192.0.2.1]\r\n", C::Helo(b"[192.0.2.1]")),
            (
                b"EHLO\r\n",
                C::Syntax("A domain name or address literal is required"),
            ),
            (
                b"MAIL FROM:<a@b.example>\r\n",
                C::Mail(env(b"a@b.example", &[])),
            ),
            (b"mail from:<>\r\n", C::Mail(env(b"", &[]))),
            (
                b"MAIL FROM: <a@b> SIZE=100 BODY=8BITMIME\r\n",
                C::Mail(env(b"a@b", &[b"SIZE=100", b"BODY=8BITMIME"])),
            ),
            (
                b"MAIL FROM:a@b\r\n",
                C::Syntax("Address must be in angle brackets"),
            ),
            (
                b"MAIL TO:<a@b>\r\n",
                C::Syntax("Syntax error in parameters"),
            ),
            (b"RCPT TO:<x@y>\r\n", C::Rcpt(env(b"x@y", &[]))),
            (
                b"RCPT TO:<x@y> NOTIFY=NEVER\r\n",
                C::Rcpt(env(b"x@y", &[b"NOTIFY=NEVER"])),
            ),
            (
                b"RCPT TO:<>\r\n",
                C::Syntax("A recipient address is required"),
            ),
            (
                b"RCPT TO:<x@y>junk\r\n",
                C::Syntax("Syntax error after the address"),
            ),
            (b"DATA\r\n", C::Data),
            (b"DATA x\r\n", C::Syntax("This command takes no parameters")),
            (b"BDAT 10 LAST\r\n", C::Bdat),
            (b"RSET\r\n", C::Rset),
            (b"NOOP hello\r\n", C::Noop),
            (b"QUIT\r\n", C::Quit),
            (b"VRFY root\r\n", C::Vrfy),
            (b"HELP\r\n", C::Help),
            (b"STARTTLS\r\n", C::Starttls),
            (
                b"AUTH PLAIN AGEAYg==\r\n",
                C::Auth {
                    mechanism: b"PLAIN",
                    initial: Some(b"AGEAYg=="),
                },
            ),
            (
                b"AUTH LOGIN\r\n",
                C::Auth {
                    mechanism: b"LOGIN",
                    initial: None,
                },
            ),
            (
                b"AUTH\r\n",
                C::Syntax("AUTH needs a mechanism and at most one initial response"),
            ),
            (b"XCLIENT ADDR=1.2.3.4\r\n", C::Unknown),
            (b"GET / HTTP/1.1\r\n", C::Unknown),
            (b"MAIL FROM:<a@b>\n", C::BareLineEnding),
            (b"MAIL FROM:<a@b>\r\r\n", C::BareLineEnding),
            (b"RCPT TO:<a\nb@c>\r\n", C::BareLineEnding),
            (b"NOOP \0\r\n", C::BareLineEnding),
        ];
        for (line, want) in cases {
            assert_eq!(&parse(line), want, "{:?}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn auth_parameter_is_not_forwarded() {
        let Command::Mail(e) = parse(b"MAIL FROM:<a@b> AUTH=<> SIZE=42 auth=x@y BODY=8BITMIME\r\n")
        else {
            panic!("not MAIL")
        };
        assert_eq!(e.size(), Some(42));
        let mut out = Vec::new();
        e.write_to(b"MAIL FROM:", &mut out);
        assert_eq!(out, b"MAIL FROM:<a@b> SIZE=42 BODY=8BITMIME\r\n");
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut x: u32 = 99;
        for _ in 0..20_000 {
            let len = (x % 60) as usize;
            let mut line = Vec::with_capacity(len + 2);
            for _ in 0..len {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                let alphabet = b"MAILFROM:<>@ \r\nRCPTO=SIZE0a";
                line.push(alphabet[(x >> 16) as usize % alphabet.len()]);
            }
            line.extend_from_slice(b"\r\n");
            let _ = parse(&line);
        }
    }
}
