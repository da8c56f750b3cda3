//! Helpers shared by the fuzz targets: how a target carves its input and
//! the wire-format invariants several targets check.

/// Takes a little-endian `u16` from the front of `data` and turns it into a
/// split point inside the rest: `(k, rest)` with `k <= rest.len()`.
/// Inputs shorter than two bytes split the empty rest at 0.
pub fn split_point(data: &[u8]) -> (usize, &[u8]) {
    match data {
        [lo, hi, rest @ ..] => {
            let k = usize::from(u16::from_le_bytes([*lo, *hi])) % (rest.len() + 1);
            (k, rest)
        }
        _ => (0, &[]),
    }
}

/// The first byte as a selector, and the rest.
pub fn selector(data: &[u8]) -> (u8, &[u8]) {
    match data {
        [first, rest @ ..] => (*first, rest),
        [] => (0, &[]),
    }
}

/// Lines as a network peer sends them: each ends with LF (the last may be
/// unterminated), so CR handling is left to the code under test.
pub fn lines(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    data.split_inclusive(|b| *b == b'\n')
}

/// Bytes that postern writes to a peer must be whole CRLF lines: ending in
/// CRLF, every LF preceded by CR and every CR followed by LF. Anything else
/// lets a peer's bytes (or postern's) be read as a second command/reply.
pub fn assert_crlf_lines(what: &str, bytes: &[u8]) {
    assert!(
        bytes.ends_with(b"\r\n"),
        "{what} does not end in CRLF: {:?}",
        String::from_utf8_lossy(bytes)
    );
    for (i, b) in bytes.iter().enumerate() {
        match b {
            b'\n' => assert!(
                i > 0 && bytes[i - 1] == b'\r',
                "{what} has a bare LF at {i}: {:?}",
                String::from_utf8_lossy(bytes)
            ),
            b'\r' => assert!(
                bytes.get(i + 1) == Some(&b'\n'),
                "{what} has a bare CR at {i}: {:?}",
                String::from_utf8_lossy(bytes)
            ),
            0 => panic!(
                "{what} has a NUL at {i}: {:?}",
                String::from_utf8_lossy(bytes)
            ),
            _ => {}
        }
    }
}

/// One CRLF line exactly: a single command, nothing smuggled after it.
pub fn assert_one_line(what: &str, bytes: &[u8]) {
    assert_crlf_lines(what, bytes);
    let lfs = bytes.iter().filter(|b| **b == b'\n').count();
    assert_eq!(
        lfs,
        1,
        "{what} is more than one line: {:?}",
        String::from_utf8_lossy(bytes)
    );
}

/// A user name that reaches a login must be non-empty and free of the
/// bytes that end or split a protocol line.
pub fn assert_safe_user(user: &str) {
    assert!(!user.is_empty(), "empty user name reached a login");
    assert!(
        !user.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)),
        "user name with CR/LF/NUL reached a login: {user:?}"
    );
}

/// Checks every client-auth variant with [`assert_safe_user`]; the
/// password variant also has its password checked.
pub fn assert_safe_auth(auth: &postern_core::credentials::ClientAuth) {
    use postern_core::credentials::ClientAuth;
    assert_safe_user(auth.user());
    if let ClientAuth::Password(login) = auth {
        assert!(
            !login
                .password()
                .expose()
                .iter()
                .any(|b| matches!(b, b'\r' | b'\n' | 0)),
            "password with CR/LF/NUL reached a login"
        );
    }
}

/// Runs an upstream machine the way `postern_core::upstream::drive` does,
/// with `lines` as everything the server says: each wire step's reply is
/// framed by the machine's own framer. Commands it sends must be single
/// CRLF lines. `None` when the machine failed or the lines ran out.
pub fn drive_machine<'a, M: postern_core::upstream::Machine>(
    m: &mut M,
    first: postern_core::upstream::Step<M::Done>,
    lines: &mut impl Iterator<Item = &'a [u8]>,
) -> Option<M::Done> {
    use postern_core::upstream::{Framer, Io, Step};
    let mut step = first;
    for _ in 0..10_000 {
        match step {
            Step::Done(done) => return Some(done),
            Step::Io(Io::StartTls) => {
                step = m.on_tls().ok()?;
                continue;
            }
            Step::Io(Io::Send(bytes)) => assert_one_line("command to the server", &bytes),
            Step::Io(Io::Read) => {}
        }
        let mut framer = m.framer();
        let reply = loop {
            let line = lines.next()?;
            if line.len() > framer.max_line() {
                return None;
            }
            match framer.push(line.to_vec()) {
                Ok(Some(r)) => break r,
                Ok(None) => {}
                Err(_) => return None,
            }
        };
        step = m.on_reply(reply).ok()?;
    }
    panic!("upstream machine does not make progress");
}
