//! POP3 client command lines and the AUTHORIZATION-state machine.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_fuzz::{assert_crlf_lines, assert_safe_auth, lines};
use postern_pop3::proto::client::{Authorization, ListenTls, LocalAuth, Step};
use postern_pop3::proto::command::{self, Command};

fuzz_target!(|data: &[u8]| {
    // The parser on the whole input as one "line", then line by line.
    roundtrip(data);
    for line in lines(data) {
        roundtrip(line);
    }

    // The machine, line by line, as the session driver would feed it.
    let mut m = Authorization::new(
        None,
        ListenTls {
            starttls: true,
            active: false,
            required_for_auth: false,
        },
        LocalAuth {
            passwords: true,
            timestamp: Some(b"<1.2@postern>".to_vec()),
        },
    );
    for line in lines(data) {
        let step = if line.len() > m.max_line() {
            m.on_too_long()
        } else {
            m.on_line(line)
        };
        match step {
            Step::Reply(bytes) => {
                assert_crlf_lines("reply to the client", &bytes);
                assert!(
                    bytes.starts_with(b"+") || bytes.starts_with(b"-ERR"),
                    "reply is not +OK/-ERR/+ : {:?}",
                    String::from_utf8_lossy(&bytes)
                );
            }
            Step::Close(bytes) => assert_crlf_lines("closing reply", bytes),
            Step::Login(auth) => assert_safe_auth(&auth),
            Step::StartTls => m.on_tls(),
            Step::Quit => {}
        }
    }
});

fn roundtrip(line: &[u8]) {
    if let Command::Transaction(t) = command::parse(line) {
        // The canonical form postern sends upstream must parse back to the
        // same command: postern and the server agree on the reply shape.
        let mut out = Vec::new();
        t.write_to(&mut out);
        assert_eq!(command::parse(&out), Command::Transaction(t));
    }
}
