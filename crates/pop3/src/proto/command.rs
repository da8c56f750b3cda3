//! Client command lines (RFC 1939 §3, RFC 2449, RFC 5034).
//!
//! A command is a keyword of 3–4 letters, case-insensitive, then arguments
//! separated by single spaces. `PASS` is special: its argument is the rest of
//! the line, spaces included (RFC 1939 §7).

/// The longest command line a client may send, CRLF included (RFC 2449 §4).
pub const MAX_COMMAND_LINE: usize = 255;
/// The longest SASL continuation line (RFC 5034 §4 lets them exceed 255).
pub const MAX_SASL_LINE: usize = 12_288;

/// A parsed client command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    /// `CAPA`
    Capa,
    /// `USER name`
    User(&'a [u8]),
    /// `PASS password` (everything after the space)
    Pass(&'a [u8]),
    /// `APOP name digest`
    Apop(&'a [u8], &'a [u8]),
    /// `AUTH [mechanism [initial-response]]`
    Auth {
        /// The mechanism, if given.
        mechanism: Option<&'a [u8]>,
        /// The initial response, if given.
        initial: Option<&'a [u8]>,
    },
    /// `STLS`
    Stls,
    /// `QUIT`
    Quit,
    /// A transaction command with its validated arguments.
    Transaction(Transaction<'a>),
    /// An empty line.
    Empty,
    /// A keyword postern does not know, or bad arguments.
    Invalid(&'static str),
}

/// Transaction-state commands postern relays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transaction<'a> {
    /// `STAT`
    Stat,
    /// `LIST [msg]`
    List(Option<&'a [u8]>),
    /// `RETR msg`
    Retr(&'a [u8]),
    /// `DELE msg`
    Dele(&'a [u8]),
    /// `NOOP`
    Noop,
    /// `RSET`
    Rset,
    /// `TOP msg n`
    Top(&'a [u8], &'a [u8]),
    /// `UIDL [msg]`
    Uidl(Option<&'a [u8]>),
}

impl Transaction<'_> {
    /// Whether a positive reply is multi-line (RFC 1939 §5, §7).
    pub fn multiline(&self) -> bool {
        matches!(
            self,
            Transaction::List(None)
                | Transaction::Uidl(None)
                | Transaction::Retr(_)
                | Transaction::Top(..)
        )
    }

    /// The command as sent upstream: canonical keyword, single spaces, CRLF.
    /// Sending a canonical form keeps postern's idea of the reply shape and
    /// the server's in step.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let (verb, a, b): (&[u8], Option<&[u8]>, Option<&[u8]>) = match *self {
            Transaction::Stat => (b"STAT", None, None),
            Transaction::List(m) => (b"LIST", m, None),
            Transaction::Retr(m) => (b"RETR", Some(m), None),
            Transaction::Dele(m) => (b"DELE", Some(m), None),
            Transaction::Noop => (b"NOOP", None, None),
            Transaction::Rset => (b"RSET", None, None),
            Transaction::Top(m, n) => (b"TOP", Some(m), Some(n)),
            Transaction::Uidl(m) => (b"UIDL", m, None),
        };
        out.extend_from_slice(verb);
        for arg in [a, b].into_iter().flatten() {
            out.push(b' ');
            out.extend_from_slice(arg);
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// Strips the line terminator (CRLF, or a lone LF from lenient clients).
pub fn strip_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn is_number(arg: &[u8]) -> bool {
    !arg.is_empty() && arg.len() <= 10 && arg.iter().all(u8::is_ascii_digit)
}

/// Parses one command line (terminator included or not).
pub fn parse(line: &[u8]) -> Command<'_> {
    let line = strip_eol(line);
    if line.is_empty() {
        return Command::Empty;
    }
    if line.iter().any(|b| *b == 0 || *b == b'\r' || *b == b'\n') {
        return Command::Invalid("control characters in command");
    }
    let (verb, rest) = match line.iter().position(|b| *b == b' ') {
        Some(i) => (&line[..i], Some(&line[i + 1..])),
        None => (line, None),
    };
    if verb.len() > 4 || !verb.iter().all(u8::is_ascii_alphabetic) {
        return Command::Invalid("unknown command");
    }
    let mut upper = [0u8; 4];
    upper[..verb.len()].copy_from_slice(verb);
    upper.make_ascii_uppercase();
    let verb = &upper[..verb.len()];
    if verb == b"PASS" {
        return match rest {
            Some(p) if !p.is_empty() => Command::Pass(p),
            _ => Command::Invalid("PASS needs a password"),
        };
    }
    let args: Vec<&[u8]> = rest
        .map(|r| r.split(|b| *b == b' ').filter(|a| !a.is_empty()).collect())
        .unwrap_or_default();
    let numbers = |n: usize| args.len() == n && args.iter().all(|a| is_number(a));
    let optional_number = || args.is_empty() || numbers(1);
    match verb {
        b"CAPA" if args.is_empty() => Command::Capa,
        b"USER" if args.len() == 1 => Command::User(args[0]),
        b"USER" => Command::Invalid("USER needs one user name"),
        b"APOP" if args.len() == 2 => Command::Apop(args[0], args[1]),
        b"APOP" => Command::Invalid("APOP needs a user name and a digest"),
        b"AUTH" if args.len() <= 2 => Command::Auth {
            mechanism: args.first().copied(),
            initial: args.get(1).copied(),
        },
        b"STLS" if args.is_empty() => Command::Stls,
        b"QUIT" if args.is_empty() => Command::Quit,
        b"STAT" if args.is_empty() => Command::Transaction(Transaction::Stat),
        b"NOOP" if args.is_empty() => Command::Transaction(Transaction::Noop),
        b"RSET" if args.is_empty() => Command::Transaction(Transaction::Rset),
        b"LIST" if optional_number() => {
            Command::Transaction(Transaction::List(args.first().copied()))
        }
        b"UIDL" if optional_number() => {
            Command::Transaction(Transaction::Uidl(args.first().copied()))
        }
        b"RETR" if numbers(1) => Command::Transaction(Transaction::Retr(args[0])),
        b"DELE" if numbers(1) => Command::Transaction(Transaction::Dele(args[0])),
        b"TOP" if numbers(2) => Command::Transaction(Transaction::Top(args[0], args[1])),
        b"CAPA" | b"STLS" | b"QUIT" | b"STAT" | b"NOOP" | b"RSET" | b"LIST" | b"UIDL" | b"RETR"
        | b"DELE" | b"TOP" | b"AUTH" => Command::Invalid("invalid arguments"),
        _ => Command::Invalid("unknown command"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        use Command as C;
        use Transaction as T;
        let cases: &[(&[u8], Command<'_>)] = &[
            (b"CAPA\r\n", C::Capa),
            (b"capa\r\n", C::Capa),
            (b"USER tim\r\n", C::User(b"tim")),
            (
                b"PASS pass with  spaces \r\n",
                C::Pass(b"pass with  spaces "),
            ),
            (b"PASS\r\n", C::Invalid("PASS needs a password")),
            (
                b"AUTH\r\n",
                C::Auth {
                    mechanism: None,
                    initial: None,
                },
            ),
            (
                b"AUTH PLAIN\r\n",
                C::Auth {
                    mechanism: Some(b"PLAIN"),
                    initial: None,
                },
            ),
            (
                b"AUTH PLAIN AHRpbQB0\r\n",
                C::Auth {
                    mechanism: Some(b"PLAIN"),
                    initial: Some(b"AHRpbQB0"),
                },
            ),
            (b"STLS\r\n", C::Stls),
            (b"QUIT\n", C::Quit),
            (b"STAT\r\n", C::Transaction(T::Stat)),
            (b"LIST\r\n", C::Transaction(T::List(None))),
            (b"LIST 3\r\n", C::Transaction(T::List(Some(b"3")))),
            (b"LIST x\r\n", C::Invalid("invalid arguments")),
            (b"RETR 1\r\n", C::Transaction(T::Retr(b"1"))),
            (b"RETR\r\n", C::Invalid("invalid arguments")),
            (b"DELE 2\r\n", C::Transaction(T::Dele(b"2"))),
            (b"TOP 1 10\r\n", C::Transaction(T::Top(b"1", b"10"))),
            (b"TOP 1\r\n", C::Invalid("invalid arguments")),
            (b"UIDL\r\n", C::Transaction(T::Uidl(None))),
            (b"UIDL 9\r\n", C::Transaction(T::Uidl(Some(b"9")))),
            (b"NOOP\r\n", C::Transaction(T::Noop)),
            (b"RSET\r\n", C::Transaction(T::Rset)),
            (b"XTND XMIT\r\n", C::Invalid("unknown command")),
            (b"RETRIEVE 1\r\n", C::Invalid("unknown command")),
            (b"\r\n", C::Empty),
            (b"RETR 1\0\r\n", C::Invalid("control characters in command")),
        ];
        for (line, want) in cases {
            assert_eq!(&parse(line), want, "{:?}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn multiline_shape_and_canonical_form() {
        for (line, multi, canon) in [
            (&b"list\r\n"[..], true, &b"LIST\r\n"[..]),
            (b"LIST  3\r\n", false, b"LIST 3\r\n"),
            (b"uidl\r\n", true, b"UIDL\r\n"),
            (b"UIDL 3\r\n", false, b"UIDL 3\r\n"),
            (b"retr 1\r\n", true, b"RETR 1\r\n"),
            (b"top 1  0\r\n", true, b"TOP 1 0\r\n"),
            (b"stat\r\n", false, b"STAT\r\n"),
            (b"dele 4\r\n", false, b"DELE 4\r\n"),
        ] {
            let Command::Transaction(t) = parse(line) else {
                panic!("not a transaction command")
            };
            assert_eq!(t.multiline(), multi);
            let mut out = Vec::new();
            t.write_to(&mut out);
            assert_eq!(out, canon);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut x: u32 = 12345;
        for _ in 0..20_000 {
            let len = (x % 40) as usize;
            let mut line = Vec::with_capacity(len);
            for _ in 0..len {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                line.push((x >> 16) as u8);
            }
            let _ = parse(&line);
        }
    }
}
