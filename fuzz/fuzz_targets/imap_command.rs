//! IMAP client commands before login: the `CommandReader` over a byte
//! stream cut where it asks (lines, literals), the not-authenticated
//! machine on what it assembles, and postern's own upstream LOGIN read
//! back by the reader as a server would.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_core::config::{Security, UpstreamAuth};
use postern_core::credentials::Login;
use postern_core::tls::ListenTls;
use postern_core::upstream::{Framer, Machine, Step as UpstreamStep};
use postern_core::Secret;
use postern_fuzz::{assert_crlf_lines, assert_safe_auth, selector};
use postern_imap::proto::client::{LocalAuth, NotAuthenticated, Step, MAX_SASL_LINE};
use postern_imap::proto::command::{
    valid_tag, Assembled, CommandKind, CommandReader, Limits, Read,
};
use postern_imap::proto::upstream::Connect;

fuzz_target!(|data: &[u8]| {
    let (sel, rest) = selector(data);
    session(sel, rest);
    login_round_trip(sel, rest);
});

/// The next line of `rest` (LF included), if it has a whole one.
fn take_line<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let i = rest.iter().position(|b| *b == b'\n')?;
    let (line, after) = rest.split_at(i + 1);
    *rest = after;
    Some(line)
}

/// What postern writes to a client: whole CRLF lines of printable ASCII
/// (nothing of the client's input but validated tags is ever echoed).
fn assert_reply(what: &str, bytes: &[u8]) {
    assert_crlf_lines(what, bytes);
    assert!(
        bytes
            .iter()
            .all(|b| (0x20..0x7f).contains(b) || matches!(b, b'\r' | b'\n')),
        "{what} is not printable: {:?}",
        String::from_utf8_lossy(bytes)
    );
}

/// A client session before login, as the driver runs it: command lines
/// and literals through the reader, SASL lines straight to the machine.
fn session(sel: u8, data: &[u8]) {
    let limits = if sel & 0x10 != 0 {
        Limits {
            max_line: 64,
            max_literal: 16,
            max_command: 96,
        }
    } else {
        Limits::BEFORE_LOGIN
    };
    let mut reader = CommandReader::new(limits);
    let mut m = NotAuthenticated::new(
        None,
        ListenTls {
            starttls: sel & 1 != 0,
            active: sel & 2 != 0,
            required_for_auth: sel & 4 != 0,
        },
        LocalAuth {
            passwords: sel & 8 == 0,
            challenge: Some(b"<1.2@postern>".to_vec()),
        },
    );
    assert_reply("greeting", &m.greeting());
    let mut rest = data;
    loop {
        if m.in_sasl() {
            let Some(line) = take_line(&mut rest) else {
                return;
            };
            let step = if line.len() > MAX_SASL_LINE {
                m.on_sasl_too_long()
            } else {
                m.on_sasl_line(line)
            };
            if !check(&mut m, step) {
                return;
            }
            continue;
        }
        let assembled = match reader.expects() {
            Read::Line => {
                let Some(line) = take_line(&mut rest) else {
                    return;
                };
                if line.len() > reader.max_line() {
                    reader.too_long()
                } else {
                    reader.feed_line(line)
                }
            }
            Read::Literal(n) => {
                assert!(n <= limits.max_literal, "asked for a {n}-octet literal");
                if rest.len() < n {
                    return;
                }
                let (literal, after) = rest.split_at(n);
                rest = after;
                reader.feed_literal(literal)
            }
        };
        match assembled {
            Assembled::Need(read) | Assembled::Continue(read) => {
                assert_eq!(read, reader.expects());
                if let Read::Literal(n) = read {
                    assert!(n <= limits.max_literal, "accepted a {n}-octet literal");
                }
            }
            Assembled::Command(c) => {
                assert!(valid_tag(&c.tag), "invalid tag accepted");
                let step = m.on_command(c);
                if !check(&mut m, step) {
                    return;
                }
            }
            Assembled::Bad { tag, reply, fatal } => {
                assert_reply("BAD reply", &reply);
                assert_eq!(reply.iter().filter(|b| **b == b'\n').count(), 1);
                if fatal {
                    assert!(reply.starts_with(b"* BYE "), "fatal without BYE");
                    return;
                }
                match tag {
                    Some(t) => {
                        assert!(valid_tag(&t));
                        assert!(reply.starts_with(&[&t[..], b" BAD "].concat()));
                    }
                    None => assert!(reply.starts_with(b"* BAD ")),
                }
            }
        }
    }
}

/// Checks a machine step; `false` when the session ends.
fn check(m: &mut NotAuthenticated, step: Step) -> bool {
    match step {
        Step::Reply(r) => assert_reply("reply", &r),
        Step::SaslContinue(r) => {
            assert_reply("continuation", &r);
            assert!(r.starts_with(b"+ "), "continuation without +");
        }
        Step::Login { tag, auth } => {
            assert!(valid_tag(&tag));
            assert_safe_auth(&auth);
        }
        Step::StartTls { tag } => {
            assert!(valid_tag(&tag));
            m.on_tls();
        }
        Step::Logout { tag } => {
            assert!(valid_tag(&tag));
            return false;
        }
        Step::Close(r) => {
            assert_reply("closing reply", &r);
            return false;
        }
    }
    true
}

fn framed<M: Machine>(m: &M, line: &[u8]) -> M::Reply {
    match m.framer().push(line.to_vec()) {
        Ok(Some(r)) => r,
        other => panic!("{:?} does not frame: {:?}", String::from_utf8_lossy(line), other.err()),
    }
}

/// postern's LOGIN for credentials from the input (user NUL password),
/// parsed by the reader as an IMAP server would, gives them back: quoted
/// strings escaped right, literals announced and sized right, sent only
/// after the server's `+` when synchronising.
fn login_round_trip(sel: u8, data: &[u8]) {
    let mut parts = data.splitn(2, |b| *b == 0);
    let (Some(user), Some(password)) = (parts.next(), parts.next()) else {
        return;
    };
    let Ok(login) = Login::new(user, Secret::from(password)) else {
        return;
    };
    let caps = ["IMAP4rev1", "IMAP4rev1 LITERAL+", "IMAP4rev1 LITERAL-"][usize::from(sel % 3)];
    let mut c = Connect::new(Security::Tls, UpstreamAuth::Login);
    let greeting = format!("* OK [CAPABILITY {caps}] hi\r\n");
    let reply = framed(&c, greeting.as_bytes());
    let ready = match c.on_reply(reply) {
        Ok(UpstreamStep::Done(r)) => r,
        other => panic!("no Ready from a plain greeting: {other:?}"),
    };
    let (mut lm, mut step) = ready.login(login.clone());
    let mut reader = CommandReader::new(Limits {
        max_line: 1 << 20,
        max_literal: 1 << 20,
        max_command: 1 << 21,
    });
    let command = loop {
        let Some(bytes) = step.sent().map(<[u8]>::to_vec) else {
            panic!("LOGIN step without a command: {step:?}");
        };
        let mut rest = &bytes[..];
        let outcome = loop {
            let a = match reader.expects() {
                Read::Line => match take_line(&mut rest) {
                    Some(line) => reader.feed_line(line),
                    None => panic!("a part of LOGIN does not end its line"),
                },
                Read::Literal(n) => {
                    assert!(rest.len() >= n, "a literal shorter than announced");
                    let (literal, after) = rest.split_at(n);
                    rest = after;
                    reader.feed_literal(literal)
                }
            };
            match a {
                Assembled::Need(_) => assert!(!rest.is_empty(), "LOGIN stops where a server waits"),
                other => {
                    assert!(rest.is_empty(), "octets sent before the server's go-ahead");
                    break other;
                }
            }
        };
        match outcome {
            Assembled::Continue(_) => {
                let reply = framed(&lm, b"+ Ready\r\n");
                step = match lm.on_reply(reply) {
                    Ok(s) => s,
                    Err(e) => panic!("the go-ahead was refused: {e}"),
                };
            }
            Assembled::Command(c) => break c,
            other => panic!("postern's LOGIN is not valid IMAP: {other:?}"),
        }
    };
    match command.kind {
        CommandKind::Login { user: u, password: p } => {
            assert_eq!(u, login.user().as_bytes(), "user changed on the way");
            assert!(p.expose() == login.password().expose(), "password changed on the way");
        }
        other => panic!("postern's LOGIN parsed as {other:?}"),
    }
}
