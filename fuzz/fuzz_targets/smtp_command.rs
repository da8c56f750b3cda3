//! SMTP client command lines and the client-facing session machine.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_fuzz::{assert_crlf_lines, assert_one_line, assert_safe_auth, lines, selector};
use postern_smtp::proto::client::{
    Action, ClientSession, Kind, ListenTls, LocalAuth, LoginOutcome,
};
use postern_smtp::proto::command::{self, Command, Envelope};
use postern_smtp::proto::ehlo::{Extensions, Policy};
use postern_smtp::proto::reply::Reply;

fuzz_target!(|data: &[u8]| {
    parse_checks(data);
    let (sel, rest) = selector(data);
    for line in lines(rest) {
        parse_checks(line);
    }
    session(sel, rest);
});

fn parse_checks(line: &[u8]) {
    let cmd = command::parse(line);
    assert_eq!(
        matches!(cmd, Command::BareLineEnding),
        command::clean_line(line).is_none(),
        "BareLineEnding and clean_line disagree"
    );
    // The canonical MAIL/RCPT line sent upstream parses back to the same
    // path and the same parameters (minus the client's AUTH=).
    let (env, verb, prefix): (&Envelope<'_>, &[u8], &str) = match &cmd {
        Command::Mail(e) => (e, b"MAIL FROM:", "MAIL"),
        Command::Rcpt(e) => (e, b"RCPT TO:", "RCPT"),
        _ => return,
    };
    let mut out = Vec::new();
    env.write_to(verb, &mut out);
    assert_one_line(prefix, &out);
    let again = command::parse(&out);
    let env2 = match &again {
        Command::Mail(e) | Command::Rcpt(e) => e,
        other => panic!(
            "canonical {prefix} line {:?} parses as {other:?}",
            String::from_utf8_lossy(&out)
        ),
    };
    assert_eq!(env2.path, env.path);
    let kept: Vec<&[u8]> = env
        .params
        .iter()
        .copied()
        .filter(|p| {
            let key = p.split(|b| *b == b'=').next().unwrap_or_default();
            !key.eq_ignore_ascii_case(b"AUTH")
        })
        .collect();
    assert_eq!(env2.params, kept);
}

fn reply(raw: &str) -> Reply {
    match Reply::parse(raw.as_bytes()) {
        Ok(r) => r,
        Err(e) => panic!("fixed reply {raw:?} does not parse: {e}"),
    }
}

fn session(sel: u8, data: &[u8]) {
    let mut s = ClientSession::new(
        Extensions::default(),
        Policy {
            max_size: 1000,
            max_recipients: 3,
            auth: postern_core::sasl::Mechanisms::NONE,
            offer_starttls: false,
        },
        "postern.test",
        ListenTls {
            starttls: sel & 1 != 0,
            active: sel & 2 != 0,
            required_for_auth: sel & 4 != 0,
        },
        LocalAuth {
            required: true,
            passwords: true,
            challenge: Some(b"<1.2@postern>".to_vec()),
            device: false,
        },
    );
    // The upstream's answers: positive unless a selector bit says otherwise.
    let negative = sel & 8 != 0;
    let login = match (sel >> 4) % 3 {
        0 => LoginOutcome::Accepted,
        1 => LoginOutcome::TemporaryFailure,
        _ => LoginOutcome::Rejected,
    };
    for line in lines(data) {
        let action = if line.len() > s.max_line() {
            s.on_too_long()
        } else {
            s.on_line(line)
        };
        check(&mut s, action, negative, login);
    }
    let _ = (s.max_size(), s.accepted_rcpts());
}

fn check(s: &mut ClientSession, action: Action, negative: bool, login: LoginOutcome) {
    match action {
        Action::Reply(bytes) => assert_crlf_lines("reply to the client", &bytes),
        Action::Close(bytes) => assert_crlf_lines("closing reply", bytes),
        Action::Forward(f) => {
            // Exactly one command goes upstream per forward: nothing the
            // client sent may smuggle a second one.
            assert_one_line("forwarded command", &f.line);
            let answer = match (&f.kind, negative) {
                (Kind::Data, false) => reply("354 go ahead\r\n"),
                (_, false) => reply("250 2.0.0 Ok\r\n"),
                (_, true) => reply("550 5.7.1 no\r\n"),
            };
            let data = matches!(f.kind, Kind::Data);
            match s.on_upstream(f.kind, &answer) {
                Action::Reply(bytes) => assert_crlf_lines("relayed reply", &bytes),
                Action::Data(bytes) => {
                    assert!(data, "Data action for a non-DATA command");
                    assert_crlf_lines("relayed 354", &bytes);
                    s.on_message_done();
                }
                other => panic!("unexpected action after an upstream reply: {other:?}"),
            }
        }
        Action::Login(auth) => {
            assert_safe_auth(&auth);
            assert_crlf_lines("login outcome", s.on_login(login));
        }
        Action::StartTls => s.on_tls(),
        Action::Data(_) => panic!("Data action straight from a client line"),
        _ => {}
    }
}
