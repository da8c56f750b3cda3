//! SMTP server replies assembled line by line, and the upstream setup and
//! login machine driven by whatever replies come out.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_core::config::{Security, UpstreamAuth};
use postern_core::credentials::Login;
use postern_core::Secret;
use postern_fuzz::{assert_crlf_lines, drive_machine, lines, selector};
use postern_smtp::proto::ehlo::Extensions;
use postern_smtp::proto::reply::{Reply, ReplyBuilder};
use postern_smtp::proto::upstream::{Connect, LoginDone};

fn security(n: u8) -> Security {
    match n % 3 {
        0 => Security::None,
        1 => Security::Tls,
        _ => Security::Starttls,
    }
}

fn auth(n: u8) -> UpstreamAuth {
    match n % 6 {
        0 => UpstreamAuth::Plain,
        1 => UpstreamAuth::Login,
        2 => UpstreamAuth::CramMd5,
        3 => UpstreamAuth::None,
        4 => UpstreamAuth::User,
        _ => UpstreamAuth::Apop,
    }
}

fn login() -> Login {
    match Login::new(b"tim", Secret::from("tanstaaftanstaaf")) {
        Ok(l) => l,
        Err(e) => panic!("fixed login refused: {e}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let (sel, rest) = selector(data);
    // Every complete reply in the input is checked on its own.
    let mut builder = ReplyBuilder::new();
    for line in lines(rest) {
        // One builder per reply, as the session driver does; after a
        // broken reply (the driver would close) start afresh so the rest
        // of the input is still used.
        match builder.push(line) {
            Ok(Some(r)) => {
                builder = ReplyBuilder::new();
                check_reply(&r);
            }
            Ok(None) => {}
            Err(_) => builder = ReplyBuilder::new(),
        }
    }
    // The machines, driven through their own framers as the driver does;
    // a refused login is retried on the same connection.
    let mut m = Connect::new(security(sel), auth(sel / 3), "[127.0.0.1]".to_owned());
    let mut input = lines(rest);
    let first = m.begin();
    let Some(ready) = drive_machine(&mut m, first, &mut input) else {
        return;
    };
    let _ = (ready.extensions().size(), ready.extensions().has("STARTTLS"));
    for _ in 0..100 {
        let Some((mut l, first)) = ready.login(login()) else {
            return;
        };
        match drive_machine(&mut l, first, &mut input) {
            Some(LoginDone::Refused(r)) => check_reply(&r),
            Some(LoginDone::Authenticated) | None => return,
        }
    }
});

fn check_reply(r: &Reply) {
    assert!(
        (200..600).contains(&r.code()),
        "code {} out of range",
        r.code()
    );
    assert!(r.raw().ends_with(b"\r\n"));
    // A complete reply's wire bytes parse back to the same reply.
    assert_eq!(Reply::parse(r.raw()).as_ref(), Ok(r));
    let _ = (
        r.is_positive(),
        r.is_intermediate(),
        r.is_transient(),
        r.last_text(),
        r.summary(),
    );
    // What is relayed to clients: CRLF lines, no control characters, at
    // most 512 octets a line, and still the same reply.
    let clean = r.sanitized();
    assert_crlf_lines("sanitized reply", &clean);
    for line in clean.split_inclusive(|b| *b == b'\n') {
        assert!(line.len() <= 512, "sanitized line of {} octets", line.len());
        let text = &line[..line.len() - 2];
        assert!(
            !text.iter().any(|b| *b < 0x20 || *b == 0x7f),
            "control character in sanitized line {:?}",
            String::from_utf8_lossy(line)
        );
    }
    match Reply::parse(&clean) {
        Ok(again) => {
            assert_eq!(again.code(), r.code());
            assert_eq!(again.texts().count(), r.texts().count());
        }
        Err(e) => panic!(
            "sanitized reply {:?} does not parse: {e}",
            String::from_utf8_lossy(&clean)
        ),
    }
    let ext = Extensions::from_ehlo(r);
    let _ = (ext.has("STARTTLS"), ext.size(), ext.has_auth("PLAIN"));
}
