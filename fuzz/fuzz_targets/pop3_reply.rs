//! POP3 server replies: status lines, the end of multi-line bodies, CAPA,
//! and the upstream login machine driven by arbitrary replies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_core::config::{Security, UpstreamAuth};
use postern_core::credentials::Login;
use postern_core::Secret;
use postern_fuzz::{assert_crlf_lines, drive_machine, lines, split_point};
use postern_pop3::proto::capa::{self, Offer};
use postern_pop3::proto::command::strip_eol;
use postern_pop3::proto::reply::{parse_status, BodyEnd, Capabilities, Status};
use postern_pop3::proto::upstream::{Connect, LoginDone};

fuzz_target!(|data: &[u8]| {
    if let Some(Status::Ok(t) | Status::Err(t) | Status::Continue(t)) = parse_status(data) {
        // The text is a piece of the line, never made up.
        let line = strip_eol(data);
        assert!(line.ends_with(t), "status text is not the end of the line");
    }

    // Two header bytes: the split point for BodyEnd; the first also picks
    // security and auth for the upstream machine. The rest is the stream.
    let (k, rest) = split_point(data);
    body_end(k, rest);

    let caps = Capabilities::parse(lines(rest));
    let _ = (
        caps.has("STLS"),
        caps.has_sasl("PLAIN"),
        caps.lines().count(),
    );
    capa_rewrite(data.first().copied().unwrap_or_default(), &caps);

    upstream(data.first().copied().unwrap_or_default(), rest);
});

/// The terminator found on the whole body, across a split and byte by byte
/// must be the same, and must really be `.` CRLF at the start of a line.
fn body_end(k: usize, body: &[u8]) {
    let whole = BodyEnd::new().feed(body);

    let mut s = BodyEnd::new();
    let split = s
        .feed(&body[..k])
        .or_else(|| s.feed(&body[k..]).map(|n| k + n));
    assert_eq!(whole, split, "body end differs when split at {k}");

    let mut s = BodyEnd::new();
    let bytewise = body
        .iter()
        .enumerate()
        .find_map(|(i, b)| s.feed(std::slice::from_ref(b)).map(|n| i + n));
    assert_eq!(whole, bytewise, "body end differs when fed byte by byte");

    if let Some(end) = whole {
        assert!(end <= body.len());
        let before = &body[..end];
        assert!(before.ends_with(b".\r\n"), "end not after .CRLF");
        let start = &before[..end - 3];
        assert!(
            start.is_empty() || start.ends_with(b"\r\n"),
            "terminator not at the start of a line"
        );
    }
}

/// The CAPA replies postern builds from the upstream's list must be one
/// well-formed multi-line reply: the client finds its end exactly at the end.
fn capa_rewrite(sel: u8, caps: &Capabilities) {
    let offer = Offer {
        stls: sel & 1 != 0,
        login: sel & 2 != 0,
        cram_md5: sel & 4 != 0,
    };
    for (what, reply) in [
        ("CAPA before login", capa::before_login(Some(caps), offer)),
        ("CAPA after login", capa::after_login(caps)),
    ] {
        assert_crlf_lines(what, &reply);
        assert!(reply.starts_with(b"+OK"), "{what} is not +OK");
        let status = reply
            .iter()
            .position(|b| *b == b'\n')
            .map_or(reply.len(), |i| i + 1);
        let body = &reply[status..];
        assert_eq!(
            BodyEnd::new().feed(body),
            Some(body.len()),
            "{what} does not end exactly at its terminator: {:?}",
            String::from_utf8_lossy(&reply)
        );
        if what == "CAPA after login" {
            // The upstream's login-related entries are never passed on.
            for line in body.split(|b| *b == b'\n') {
                let name = strip_eol(line)
                    .split(|b| *b == b' ')
                    .next()
                    .unwrap_or_default();
                for dropped in [&b"STLS"[..], b"SASL", b"USER"] {
                    assert!(
                        !name.eq_ignore_ascii_case(dropped),
                        "{what} passes on the upstream's {}",
                        String::from_utf8_lossy(dropped)
                    );
                }
            }
        }
    }
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
        0 => UpstreamAuth::User,
        1 => UpstreamAuth::Apop,
        2 => UpstreamAuth::Plain,
        3 => UpstreamAuth::CramMd5,
        4 => UpstreamAuth::Login,
        _ => UpstreamAuth::None,
    }
}

fn login() -> Login {
    match Login::new(b"tim", Secret::from("tanstaaftanstaaf")) {
        Ok(l) => l,
        Err(e) => panic!("fixed login refused: {e}"),
    }
}

/// Drives the connect machine and then logins with the input's lines as
/// server replies, each framed as the driver frames them; a refused login
/// is retried on the same connection, as a client may.
fn upstream(sel: u8, rest: &[u8]) {
    let mut m = Connect::new(security(sel), auth(sel / 3));
    let mut lines = lines(rest);
    let first = m.begin();
    let Some(ready) = drive_machine(&mut m, first, &mut lines) else {
        return;
    };
    let _ = (ready.capabilities(), ready.timestamp());
    for _ in 0..100 {
        let (mut l, first) = ready.login(login());
        match drive_machine(&mut l, first, &mut lines) {
            Some(LoginDone::Refused(_)) => continue,
            Some(LoginDone::LoggedIn) | None => return,
        }
    }
}
