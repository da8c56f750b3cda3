//! Client command syntax as the fake reads it (RFC 3501 §9), with no I/O:
//! the tag and command name ([`split_command`]), the arguments line by
//! line with literals in between ([`Args`]), sequence sets and LIST
//! patterns. Strict on purpose: a client that gets spacing, quoting or
//! literal framing wrong is told so (`BAD` plus a client violation).

/// One argument: an atom (NIL, flags, sequence sets and `BODY[...]` items
/// included), a quoted string, a literal, or a parenthesised list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Value {
    Atom(String),
    Quoted(Vec<u8>),
    Literal {
        bytes: Vec<u8>,
        /// `{n}` rather than `{n+}`.
        synchronizing: bool,
    },
    List(Vec<Value>),
}

impl Value {
    /// An astring's octets (atom, quoted string or literal).
    pub(super) fn astring(&self) -> Option<&[u8]> {
        match self {
            Self::Atom(a) => Some(a.as_bytes()),
            Self::Quoted(b) | Self::Literal { bytes: b, .. } => Some(b),
            Self::List(_) => None,
        }
    }

    /// An astring as text (lossy).
    pub(super) fn text(&self) -> Option<String> {
        self.astring()
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }

    /// An atom's text.
    pub(super) fn atom(&self) -> Option<&str> {
        match self {
            Self::Atom(a) => Some(a),
            _ => None,
        }
    }
}

/// A literal announced at the end of a line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct LiteralSpec {
    pub(super) len: usize,
    /// `{n}`: the client waits for `+` before sending the bytes.
    pub(super) synchronizing: bool,
}

/// A command line the fake cannot even dispatch.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct BadLine {
    /// The tag, if there was a valid one.
    pub(super) tag: Option<String>,
    pub(super) why: &'static str,
}

/// ATOM-CHAR (RFC 3501 §9): printable ASCII except `(){ %*"\` and `]`.
fn atom_char(b: u8) -> bool {
    (0x21..0x7f).contains(&b) && !b"(){ %*\"\\]".contains(&b)
}

/// A tag: 1*ASTRING-CHAR except `+` (ASTRING-CHAR is ATOM-CHAR or `]`).
fn valid_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag
            .bytes()
            .all(|b| (atom_char(b) || b == b']') && b != b'+')
}

/// `tag SP name [SP rest]` → (tag, upper-case name, rest). `UID` takes the
/// next word too: `UID FETCH`.
pub(super) fn split_command(line: &str) -> Result<(String, String, &str), BadLine> {
    if line.is_empty() {
        return Err(BadLine {
            tag: None,
            why: "empty command line",
        });
    }
    let Some((tag, rest)) = line.split_once(' ') else {
        let tag = valid_tag(line).then(|| line.to_owned());
        return Err(BadLine {
            tag,
            why: "missing command",
        });
    };
    if !valid_tag(tag) {
        return Err(BadLine {
            tag: None,
            why: "invalid tag",
        });
    }
    let tag = tag.to_owned();
    let (name, mut rest) = word(rest);
    if name.is_empty() || !name.bytes().all(atom_char) {
        return Err(BadLine {
            tag: Some(tag),
            why: "missing or invalid command name",
        });
    }
    let mut name = name.to_ascii_uppercase();
    if name == "UID" {
        let (sub, after) = word(rest.unwrap_or(""));
        if sub.is_empty() || !sub.bytes().all(atom_char) {
            return Err(BadLine {
                tag: Some(tag),
                why: "UID needs a command",
            });
        }
        name = format!("UID {}", sub.to_ascii_uppercase());
        rest = after;
    }
    match rest {
        Some("") => Err(BadLine {
            tag: Some(tag),
            why: "trailing space",
        }),
        other => Ok((tag, name, other.unwrap_or(""))),
    }
}

/// The first word and what follows its space (`None`: no space).
fn word(s: &str) -> (&str, Option<&str>) {
    match s.split_once(' ') {
        Some((w, rest)) => (w, Some(rest)),
        None => (s, None),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sep {
    /// At the start of the arguments or right after `(`.
    Start,
    /// After a value: a space, `)` or the end may follow.
    AfterValue,
    /// After a space: a value must follow.
    AfterSpace,
}

/// The arguments of one command, fed line by line; a line that ends in
/// `{n}` / `{n+}` is followed by [`Args::literal`] and the next line.
#[derive(Debug)]
pub(super) struct Args {
    /// Open lists; `stack[0]` is the top level.
    stack: Vec<Vec<Value>>,
    sep: Sep,
    /// A literal was announced and its bytes are due.
    pending: Option<LiteralSpec>,
}

impl Args {
    pub(super) fn new() -> Self {
        Self {
            stack: vec![Vec::new()],
            sep: Sep::Start,
            pending: None,
        }
    }

    fn push(&mut self, value: Value) {
        if let Some(top) = self.stack.last_mut() {
            top.push(value);
        }
        self.sep = Sep::AfterValue;
    }

    /// Tokenise one line (CRLF removed). `Ok(Some(spec))`: the line ended
    /// in a literal announcement; its bytes go to [`Args::literal`], then
    /// the next line comes here. `Ok(None)`: the line ended.
    pub(super) fn feed(&mut self, line: &[u8]) -> Result<Option<LiteralSpec>, &'static str> {
        if self.pending.is_some() {
            return Err("line fed where literal bytes were due");
        }
        let mut i = 0;
        while i < line.len() {
            let b = line[i];
            match b {
                b' ' => {
                    if self.sep != Sep::AfterValue {
                        return Err("unexpected space");
                    }
                    self.sep = Sep::AfterSpace;
                    i += 1;
                    continue;
                }
                b')' => {
                    if self.sep == Sep::AfterSpace {
                        return Err("space before ')'");
                    }
                    if self.stack.len() < 2 {
                        return Err("unbalanced ')'");
                    }
                    let list = self.stack.pop().unwrap_or_default();
                    self.push(Value::List(list));
                    i += 1;
                    continue;
                }
                _ => {}
            }
            if self.sep == Sep::AfterValue {
                return Err("missing space between arguments");
            }
            match b {
                b'(' => {
                    self.stack.push(Vec::new());
                    self.sep = Sep::Start;
                    i += 1;
                }
                b'"' => {
                    let (text, used) = quoted(&line[i..])?;
                    self.push(Value::Quoted(text));
                    i += used;
                }
                b'{' => {
                    let spec = literal_spec(&line[i..])?;
                    self.pending = Some(spec);
                    return Ok(Some(spec));
                }
                _ => {
                    let used = atom(&line[i..])?;
                    let text = String::from_utf8_lossy(&line[i..i + used]).into_owned();
                    self.push(Value::Atom(text));
                    i += used;
                }
            }
        }
        if self.sep == Sep::AfterSpace {
            return Err("trailing space");
        }
        Ok(None)
    }

    /// The bytes of the literal the last line announced.
    pub(super) fn literal(&mut self, bytes: Vec<u8>) {
        let synchronizing = self.pending.take().is_none_or(|s| s.synchronizing);
        self.push(Value::Literal {
            bytes,
            synchronizing,
        });
    }

    /// All arguments, once the last line has been fed.
    pub(super) fn finish(mut self) -> Result<Vec<Value>, &'static str> {
        if self.pending.is_some() {
            return Err("literal announced but not read");
        }
        if self.stack.len() != 1 {
            return Err("unclosed '('");
        }
        Ok(self.stack.pop().unwrap_or_default())
    }
}

/// A quoted string at the start of `s`: its content and the octets used.
fn quoted(s: &[u8]) -> Result<(Vec<u8>, usize), &'static str> {
    let mut out = Vec::new();
    let mut i = 1;
    while i < s.len() {
        match s[i] {
            b'"' => return Ok((out, i + 1)),
            b'\\' => match s.get(i + 1) {
                Some(&c @ (b'"' | b'\\')) => {
                    out.push(c);
                    i += 2;
                }
                _ => return Err("bad escape in quoted string"),
            },
            b'\r' | b'\n' | 0 => return Err("CR, LF or NUL in quoted string"),
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Err("unterminated quoted string")
}

/// `{n}` or `{n+}` that must end the line.
fn literal_spec(s: &[u8]) -> Result<LiteralSpec, &'static str> {
    const BAD: &str = "malformed literal announcement";
    let inner = s
        .strip_prefix(b"{")
        .and_then(|r| r.strip_suffix(b"}"))
        .ok_or("literal announcement not at the end of the line")?;
    let (digits, synchronizing) = match inner.strip_suffix(b"+") {
        Some(d) => (d, false),
        None => (inner, true),
    };
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(BAD);
    }
    let len = std::str::from_utf8(digits)
        .ok()
        .and_then(|d| d.parse().ok())
        .ok_or(BAD)?;
    Ok(LiteralSpec { len, synchronizing })
}

/// Octets of the atom at the start of `s`. Besides ATOM-CHARs it takes
/// `]`, the list wildcards `%` and `*`, a leading `\` (flags), and a
/// `[...]` section with anything but CR/LF inside (`BODY[HEADER.FIELDS
/// (FROM)]`).
fn atom(s: &[u8]) -> Result<usize, &'static str> {
    let mut i = 0;
    while i < s.len() {
        let b = s[i];
        if b == b'[' {
            let close = s[i..]
                .iter()
                .position(|c| *c == b']')
                .ok_or("unclosed '[' in atom")?;
            i += close + 1;
        } else if atom_char(b) || b"]%*".contains(&b) || (b == b'\\' && i == 0) {
            i += 1;
        } else {
            break;
        }
    }
    if i == 0 {
        return Err("unexpected character");
    }
    Ok(i)
}

/// One end of a sequence-set range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Bound {
    Num(u32),
    /// `*`: the largest number in use.
    Star,
}

/// RFC 3501 sequence-set: `1`, `2:4`, `*`, `5:*`, comma-separated.
pub(super) fn sequence_set(s: &str) -> Option<Vec<(Bound, Bound)>> {
    fn bound(s: &str) -> Option<Bound> {
        if s == "*" {
            return Some(Bound::Star);
        }
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        match s.parse() {
            Ok(0) | Err(_) => None,
            Ok(n) => Some(Bound::Num(n)),
        }
    }
    s.split(',')
        .map(|part| match part.split_once(':') {
            Some((a, b)) => Some((bound(a)?, bound(b)?)),
            None => {
                let one = bound(part)?;
                Some((one, one))
            }
        })
        .collect()
}

/// Whether `n` is in `set`, `*` being `max`.
pub(super) fn in_set(set: &[(Bound, Bound)], n: u32, max: u32) -> bool {
    let value = |b: Bound| match b {
        Bound::Num(n) => n,
        Bound::Star => max,
    };
    set.iter().any(|&(a, b)| {
        let (a, b) = (value(a), value(b));
        (a.min(b)..=a.max(b)).contains(&n)
    })
}

/// Whether every number in `set` is in `1..=max` (message sequence
/// numbers must exist, RFC 3501 §9 seq-number).
pub(super) fn set_within(set: &[(Bound, Bound)], max: u32) -> bool {
    set.iter().all(|&(a, b)| {
        [a, b].iter().all(|b| match b {
            Bound::Num(n) => *n <= max,
            Bound::Star => max > 0,
        })
    })
}

/// LIST pattern match (RFC 3501 §6.3.8): `*` matches anything, `%`
/// anything but the `/` delimiter. INBOX matches case-insensitively.
pub(super) fn list_match(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some(b'*') => (0..=n.len()).any(|k| go(&p[1..], &n[k..])),
            Some(b'%') => (0..=n.len())
                .take_while(|k| *k == 0 || n[k - 1] != b'/')
                .any(|k| go(&p[1..], &n[k..])),
            Some(c) => n.first() == Some(c) && go(&p[1..], &n[1..]),
        }
    }
    if name.eq_ignore_ascii_case("INBOX") {
        return go(pattern.to_ascii_uppercase().as_bytes(), b"INBOX");
    }
    go(pattern.as_bytes(), name.as_bytes())
}

/// A mailbox name or other string as the fake writes it: an atom when it
/// can be one, else a quoted string.
pub(super) fn astring_out(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| atom_char(b) || b == b']') {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn atom(s: &str) -> Value {
        Value::Atom(s.to_owned())
    }

    fn one_line(line: &str) -> Result<Vec<Value>, &'static str> {
        let mut args = Args::new();
        assert_eq!(args.feed(line.as_bytes())?, None);
        args.finish()
    }

    #[test]
    fn command_lines() {
        assert_eq!(
            split_command("a1 LOGIN alice pw"),
            Ok(("a1".into(), "LOGIN".into(), "alice pw"))
        );
        assert_eq!(split_command("x noop"), Ok(("x".into(), "NOOP".into(), "")));
        assert_eq!(
            split_command("x uid fetch 1:* (FLAGS)"),
            Ok(("x".into(), "UID FETCH".into(), "1:* (FLAGS)"))
        );
        let bad = |line: &str| split_command(line).expect_err("bad line");
        assert_eq!(bad("").why, "empty command line");
        assert_eq!(bad("NOOP").tag.as_deref(), Some("NOOP"));
        assert_eq!(bad("a+b NOOP").tag, None);
        assert_eq!(bad("a* NOOP").tag, None);
        assert_eq!(bad("a NOOP ").why, "trailing space");
        assert_eq!(bad("a  NOOP").why, "missing or invalid command name");
        assert_eq!(bad("a UID").why, "UID needs a command");
        assert_eq!(bad("* OK").tag, None);
    }

    #[test]
    fn atoms_strings_and_lists() {
        assert_eq!(
            one_line(r#"alice "pass \"with\" \\ spaces""#),
            Ok(vec![
                atom("alice"),
                Value::Quoted(br#"pass "with" \ spaces"#.to_vec())
            ])
        );
        assert_eq!(
            one_line(r"1:* (FLAGS BODY.PEEK[HEADER.FIELDS (FROM TO)]<0.10> UID)"),
            Ok(vec![
                atom("1:*"),
                Value::List(vec![
                    atom("FLAGS"),
                    atom("BODY.PEEK[HEADER.FIELDS (FROM TO)]<0.10>"),
                    atom("UID")
                ])
            ])
        );
        assert_eq!(
            one_line(r#""" *"#),
            Ok(vec![Value::Quoted(Vec::new()), atom("*")])
        );
        assert_eq!(
            one_line(r"1 +FLAGS.SILENT (\Seen \Deleted)"),
            Ok(vec![
                atom("1"),
                atom("+FLAGS.SILENT"),
                Value::List(vec![atom(r"\Seen"), atom(r"\Deleted")])
            ])
        );
        assert_eq!(one_line("()"), Ok(vec![Value::List(vec![])]));
        assert_eq!(one_line(""), Ok(vec![]));
    }

    #[test]
    fn syntax_errors() {
        for (line, why) in [
            ("a  b", "unexpected space"),
            ("a ", "trailing space"),
            ("( a)", "unexpected space"),
            ("(a )", "space before ')'"),
            ("a)", "unbalanced ')'"),
            ("(a", "unclosed '('"),
            ("a(b)", "missing space between arguments"),
            (r#""abc"#, "unterminated quoted string"),
            (r#""a\b""#, "bad escape in quoted string"),
            (r#""a""b""#, "missing space between arguments"),
            ("{3} a", "literal announcement not at the end of the line"),
            ("{x}", "malformed literal announcement"),
            ("{}", "malformed literal announcement"),
            ("{+}", "malformed literal announcement"),
            ("BODY[TEXT", "unclosed '[' in atom"),
            ("\x01", "unexpected character"),
        ] {
            let mut args = Args::new();
            let got = args.feed(line.as_bytes()).and_then(|_| args.finish());
            assert_eq!(got, Err(why), "{line:?}");
        }
    }

    #[test]
    fn literals_between_lines() {
        let mut args = Args::new();
        assert_eq!(
            args.feed(b"{5}"),
            Ok(Some(LiteralSpec {
                len: 5,
                synchronizing: true
            }))
        );
        assert_eq!(
            args.feed(b"x"),
            Err("line fed where literal bytes were due")
        );
        args.literal(b"alice".to_vec());
        assert_eq!(
            args.feed(b" (a {3+}"),
            Ok(Some(LiteralSpec {
                len: 3,
                synchronizing: false
            }))
        );
        args.literal(b"a b".to_vec());
        assert_eq!(args.feed(b")"), Ok(None));
        assert_eq!(
            args.finish(),
            Ok(vec![
                Value::Literal {
                    bytes: b"alice".to_vec(),
                    synchronizing: true
                },
                Value::List(vec![
                    atom("a"),
                    Value::Literal {
                        bytes: b"a b".to_vec(),
                        synchronizing: false
                    }
                ])
            ])
        );
        // After a literal, the line must go on with a space, ')' or end.
        let mut args = Args::new();
        args.feed(b"{1}").expect("literal");
        args.literal(b"x".to_vec());
        assert_eq!(args.feed(b"y"), Err("missing space between arguments"));
        let mut args = Args::new();
        args.feed(b"{1}").expect("literal");
        assert_eq!(args.finish(), Err("literal announced but not read"));
    }

    #[test]
    fn sequence_sets() {
        use Bound::{Num, Star};
        assert_eq!(
            sequence_set("1,3:5,7:*"),
            Some(vec![(Num(1), Num(1)), (Num(3), Num(5)), (Num(7), Star)])
        );
        for bad in ["", "0", "1,", "a", "1:", ":2", "1::2", "-1"] {
            assert_eq!(sequence_set(bad), None, "{bad:?}");
        }
        let set = sequence_set("2,5:3,9:*").expect("set");
        let hits: Vec<u32> = (1..=12).filter(|n| in_set(&set, *n, 10)).collect();
        assert_eq!(hits, [2, 3, 4, 5, 9, 10]);
        // RFC 3501: "n:*" with n above the maximum still takes the maximum.
        assert!(in_set(&sequence_set("20:*").expect("set"), 10, 10));
        assert!(set_within(&set, 10));
        assert!(!set_within(&set, 4));
        assert!(!set_within(&sequence_set("*").expect("set"), 0));
    }

    #[test]
    fn list_patterns() {
        assert!(list_match("*", "INBOX"));
        assert!(list_match("inbox", "INBOX"));
        assert!(list_match("*", "Archive/2024"));
        assert!(!list_match("%", "Archive/2024"));
        assert!(list_match("%", "Archive"));
        assert!(list_match("Archive/%", "Archive/2024"));
        assert!(list_match("Sent", "Sent"));
        assert!(!list_match("sent", "Sent"));
        assert!(!list_match("", "INBOX"));
    }

    #[test]
    fn astrings_out() {
        assert_eq!(astring_out("INBOX"), "INBOX");
        assert_eq!(astring_out("Sent Items"), r#""Sent Items""#);
        assert_eq!(astring_out(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(astring_out(""), r#""""#);
    }
}
