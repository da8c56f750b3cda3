//! IMAP server responses: the relay's `ServerScanner` (and its
//! `ClientScanner` twin) over arbitrary chunking, checked against a plain
//! whole-input reading of the same stream; response lines parsed; the
//! upstream connect and login machines driven by the input's lines.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_core::config::{Security, UpstreamAuth};
use postern_core::credentials::Login;
use postern_core::Secret;
use postern_fuzz::{assert_crlf_lines, drive_machine, lines, split_point};
use postern_imap::proto::capability::{self, Capabilities};
use postern_imap::proto::relay::{
    ClientOut, ClientScanner, Out, RelayError, ServerScanner, HEAD_LOOKAHEAD,
};
use postern_imap::proto::response::{self, Response};
use postern_imap::proto::upstream::{Connect, LoginDone};

fuzz_target!(|data: &[u8]| {
    let (k, rest) = split_point(data);
    let sel = data.first().copied().unwrap_or_default();
    for line in lines(rest) {
        parse_checks(line);
    }
    server(k, rest);
    client(k, rest);
    upstream(sel, rest);
});

fn parse_checks(line: &[u8]) {
    if let Ok(Response::Status { text, .. }) = response::parse(line) {
        let _ = text.printable();
        if let Some(caps) = text.code.and_then(|c| c.capabilities()) {
            let again = Capabilities::parse(&caps.to_text());
            assert_eq!(again, caps, "a parsed list does not re-parse to itself");
        }
    }
}

/// One scanner output, as the session applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    /// Octets forwarded unchanged.
    Pass(Vec<u8>),
    /// A tag reported, then forwarded.
    Tag(Vec<u8>),
    /// Octets replaced by others.
    Replace(Vec<u8>, Vec<u8>),
}

/// The scanner over `input` delivered in pieces cut at `cuts`: the
/// segments (adjacent passes merged) and how the stream ended.
fn run_server(input: &[u8], cuts: &[usize]) -> (Vec<Seg>, Result<(), RelayError>) {
    let mut s = ServerScanner::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut segs: Vec<Seg> = Vec::new();
    let mut from = 0;
    for to in cuts.iter().copied().chain(std::iter::once(input.len())) {
        let to = to.clamp(from, input.len());
        buf.extend_from_slice(&input[from..to]);
        from = to;
        loop {
            match s.scan(&buf) {
                Ok(Out::Pass(n)) => {
                    assert!(n > 0 && n <= buf.len(), "Pass({n}) of {}", buf.len());
                    let bytes: Vec<u8> = buf.drain(..n).collect();
                    match segs.last_mut() {
                        Some(Seg::Pass(p)) => p.extend_from_slice(&bytes),
                        _ => segs.push(Seg::Pass(bytes)),
                    }
                }
                Ok(Out::Completion(n)) => {
                    assert!(n > 0 && n <= buf.len());
                    segs.push(Seg::Tag(buf.drain(..n).collect()));
                }
                Ok(Out::Replace { len, with }) => {
                    assert!(len > 0 && len <= buf.len());
                    segs.push(Seg::Replace(buf.drain(..len).collect(), with));
                }
                Ok(Out::NeedMore) => break,
                Err(e) => return (segs, Err(e)),
            }
        }
    }
    let end = s.eof(buf.len());
    (segs, end)
}

/// Where responses start and which of them are tagged, read from the
/// whole input the plain way: line by line; an untagged line ending in
/// `{n}` is followed by n octets of literal and the response goes on.
/// Returns (line-start offsets, tag-end offsets of tagged responses).
fn reference(input: &[u8]) -> (Vec<usize>, Vec<usize>) {
    let mut starts = Vec::new();
    let mut tags = Vec::new();
    let mut i = 0;
    let mut untagged = false;
    let mut at_start = true;
    while i < input.len() {
        if at_start {
            starts.push(i);
            untagged = input[i] == b'*';
            if !untagged && input[i] != b'+' {
                let window = &input[i..input.len().min(i + HEAD_LOOKAHEAD)];
                if let Some(j) = window.iter().position(|b| *b == b' ' || *b == b'\n') {
                    if j > 0 && window[j] == b' ' {
                        tags.push(i + j);
                    }
                }
            }
        }
        let Some(j) = input[i..].iter().position(|b| *b == b'\n') else {
            break;
        };
        let line = &input[i..i + j];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        i += j + 1;
        match announced(line).filter(|_| untagged) {
            Some(n) => {
                i = usize::try_from(n).map_or(input.len(), |n| i.saturating_add(n));
                at_start = false;
            }
            None => at_start = true,
        }
    }
    (starts, tags)
}

/// `{digits}` or `{digits+}` at the end of a line, the value saturating.
fn announced(line: &[u8]) -> Option<u64> {
    let inner = line.strip_suffix(b"}")?;
    let inner = inner.strip_suffix(b"+").unwrap_or(inner);
    let open = inner.iter().rposition(|b| *b == b'{')?;
    let digits = &inner[open + 1..];
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0u64, |n, d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    }))
}

fn server(k: usize, input: &[u8]) {
    let whole = run_server(input, &[]);
    assert_eq!(run_server(input, &[k]), whole, "split at {k} differs");
    let every: Vec<usize> = (1..input.len()).collect();
    assert_eq!(run_server(input, &every), whole, "byte by byte differs");

    let (segs, end) = whole;
    let (starts, tag_ends) = reference(input);
    let mut at = 0;
    for seg in &segs {
        match seg {
            Seg::Pass(p) => at += p.len(),
            Seg::Tag(t) => {
                assert!(starts.contains(&at), "a tag reported mid-response at {at}");
                assert!(tag_ends.contains(&(at + t.len())), "a tag the plain reading has not at {at}");
                at += t.len();
            }
            Seg::Replace(old, new) => {
                let untagged = starts.contains(&at) && old.first() == Some(&b'*');
                let tagged = tag_ends.contains(&at) && old.first() == Some(&b' ');
                assert!(untagged || tagged, "a replacement that is not a response line at {at}");
                replacement(old, new);
                at += old.len();
            }
        }
    }
    // Every tagged response the plain reading finds was reported, up to
    // where the scanner got (the stream may end mid-response).
    let reported: Vec<usize> = {
        let mut pos = 0;
        let mut v = Vec::new();
        for seg in &segs {
            match seg {
                Seg::Pass(p) => pos += p.len(),
                Seg::Tag(t) => {
                    pos += t.len();
                    v.push(pos);
                }
                Seg::Replace(old, _) => pos += old.len(),
            }
        }
        v
    };
    let expected: Vec<usize> = tag_ends.iter().copied().filter(|e| *e <= at).collect();
    assert_eq!(reported, expected, "tags reported differ from the plain reading");
    if end.is_ok() {
        assert_eq!(at, input.len(), "a clean end before the input was consumed");
    }
}

/// A replaced line differs from the original only in its capability list,
/// which is the original's minus what postern withholds.
fn replacement(old: &[u8], new: &[u8]) {
    assert!(old.ends_with(b"\n"), "a replacement of a partial line");
    let eol = if old.ends_with(b"\r\n") { 2 } else { 1 };
    assert!(new.ends_with(&old[old.len() - eol..]), "line end changed");
    assert_eq!(new.iter().filter(|b| **b == b'\n').count(), 1, "a replacement with more lines");
    let key = b"CAPABILITY";
    let find = |line: &[u8]| {
        line.windows(key.len())
            .position(|w| w.eq_ignore_ascii_case(key))
            .map(|i| i + key.len())
    };
    let (Some(o), Some(n)) = (find(old), find(new)) else {
        panic!("a replacement without a capability list");
    };
    assert_eq!(old[..o], new[..n], "the line before the list changed");
    // In a response code the list ends at `]`; after `* CAPABILITY`, at
    // the line end.
    let code = o > key.len() && old[o - key.len() - 1] == b'[';
    let list = |line: &[u8], from: usize| -> Capabilities {
        let rest = &line[from..line.len() - eol];
        let end = match code {
            true => rest.iter().position(|b| *b == b']').unwrap_or(rest.len()),
            false => rest.len(),
        };
        Capabilities::parse(&rest[..end])
    };
    let (before, after) = (list(old, o), list(new, n));
    assert_eq!(after, capability::after_login(&before), "not the filtered list");
    for atom in after.iter() {
        let upper = atom.to_ascii_uppercase();
        assert!(
            !(upper.starts_with(b"AUTH=")
                || upper.starts_with(b"COMPRESS=")
                || upper == b"STARTTLS"
                || upper == b"LOGINDISABLED"),
            "withheld capability relayed"
        );
    }
}

/// The client scanner: same outcome however the stream is cut; what is
/// forwarded and what is dropped add up to the input; refusals are
/// single CRLF lines.
fn run_client(input: &[u8], cuts: &[usize]) -> (Vec<u8>, Vec<String>, Result<(), RelayError>) {
    let mut c = ClientScanner::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut forwarded = Vec::new();
    let mut events = Vec::new();
    let mut consumed = 0;
    let mut from = 0;
    for to in cuts.iter().copied().chain(std::iter::once(input.len())) {
        let to = to.clamp(from, input.len());
        buf.extend_from_slice(&input[from..to]);
        from = to;
        loop {
            match c.scan(&buf) {
                Ok(ClientOut::Pass(n)) => {
                    assert!(n > 0 && n <= buf.len());
                    forwarded.extend(buf.drain(..n));
                    consumed += n;
                }
                Ok(ClientOut::Command { len, verb }) => {
                    assert!(len > 0 && len <= buf.len());
                    events.push(format!("{consumed} {}", verb.name()));
                    forwarded.extend(buf.drain(..len));
                    consumed += len;
                }
                Ok(ClientOut::Refuse { len, reply, verb }) => {
                    assert!(len > 0 && len <= buf.len());
                    assert_crlf_lines("refusal", &reply);
                    assert_eq!(reply.iter().filter(|b| **b == b'\n').count(), 1);
                    let dropped: Vec<u8> = buf.drain(..len).collect();
                    assert!(dropped.ends_with(b"\n"), "a refusal of a partial line");
                    events.push(format!("{consumed} refused {}", verb.name()));
                    consumed += len;
                }
                Ok(ClientOut::NeedMore) => break,
                Err(e) => return (forwarded, events, Err(e)),
            }
        }
    }
    let end = c.eof(buf.len());
    (forwarded, events, end)
}

fn client(k: usize, input: &[u8]) {
    let whole = run_client(input, &[]);
    assert_eq!(run_client(input, &[k]), whole, "split at {k} differs");
    let every: Vec<usize> = (1..input.len()).collect();
    assert_eq!(run_client(input, &every), whole, "byte by byte differs");
}

fn security(n: u8) -> Security {
    match n % 3 {
        0 => Security::None,
        1 => Security::Tls,
        _ => Security::Starttls,
    }
}

fn auth(n: u8) -> UpstreamAuth {
    match n % 6 {
        0 => UpstreamAuth::Login,
        1 => UpstreamAuth::Plain,
        2 => UpstreamAuth::CramMd5,
        3 => UpstreamAuth::Xoauth2,
        4 => UpstreamAuth::Oauthbearer,
        _ => UpstreamAuth::User,
    }
}

/// The connect machine, then logins, with the input's lines as the
/// server's; a refused login is retried on the same connection.
fn upstream(sel: u8, rest: &[u8]) {
    let mut m = Connect::new(security(sel), auth(sel / 3)).target("imap.example.net", 993);
    let mut lines = lines(rest);
    let first = m.begin();
    let Some(ready) = drive_machine(&mut m, first, &mut lines) else {
        return;
    };
    let _ = (ready.capabilities(), ready.seen());
    assert_crlf_lines("LOGOUT", &ready.logout());
    let login = match Login::new(b"tim", Secret::from("tanstaaftanstaaf")) {
        Ok(l) => l,
        Err(e) => panic!("fixed login refused: {e}"),
    };
    for _ in 0..100 {
        let (mut l, first) = ready.login(login.clone());
        match drive_machine(&mut l, first, &mut lines) {
            Some(LoginDone::Refused { text, .. }) => {
                assert!(text.bytes().all(|b| (0x20..0x7f).contains(&b)));
            }
            Some(LoginDone::LoggedIn { .. }) | None => return,
        }
    }
}
