//! SASL decoding (PLAIN, CRAM-MD5 challenges) and APOP timestamp checks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_core::sasl;
use postern_fuzz::assert_safe_user;
use postern_pop3::proto::apop;

fuzz_target!(|data: &[u8]| {
    if let Ok(decoded) = sasl::decode(data) {
        // What decodes re-encodes to something that decodes the same.
        let again = sasl::encode(&decoded);
        assert_eq!(
            sasl::decode(again.as_bytes())
                .as_deref()
                .map(|v| v.as_slice()),
            Ok(decoded.as_slice())
        );
        plain(&decoded);
    }
    plain(data);

    if let Ok(challenge) = sasl::cram_md5_challenge(data) {
        assert!(!challenge.is_empty() && challenge.len() <= sasl::MAX_CHALLENGE);
        assert!(
            challenge.iter().all(|b| (0x20..0x7f).contains(b)),
            "unprintable CRAM-MD5 challenge accepted"
        );
    }

    if let Ok(ts) = apop::timestamp(data) {
        assert!(
            apop::valid_msg_id(ts),
            "timestamp() returned an invalid msg-id"
        );
        assert!(
            data.windows(ts.len()).any(|w| w == ts),
            "timestamp() returned bytes not in the greeting"
        );
    }
    if apop::valid_msg_id(data) {
        assert!(
            data.iter().all(|b| (0x21..=0x7e).contains(b)),
            "valid_msg_id accepted a byte outside 0x21..0x7e"
        );
        assert_eq!(
            data.iter().filter(|b| **b == b'@').count(),
            1,
            "valid_msg_id accepted a msg-id without exactly one '@'"
        );
        assert!(data.starts_with(b"<") && data.ends_with(b">"));
        assert!(data.len() <= apop::MAX_TIMESTAMP);
    }
});

fn plain(decoded: &[u8]) {
    if let Ok(login) = sasl::parse_plain(decoded) {
        assert_safe_user(login.user());
        assert!(
            !login
                .password()
                .expose()
                .iter()
                .any(|b| matches!(b, b'\r' | b'\n' | 0)),
            "PLAIN password with CR/LF/NUL accepted"
        );
        // postern's own PLAIN response for the login decodes back to it.
        let ir = sasl::plain_response(&login);
        let raw = match sasl::decode(ir.as_bytes()) {
            Ok(r) => r,
            Err(e) => panic!("plain_response is not base64: {e}"),
        };
        let back = match sasl::parse_plain(&raw) {
            Ok(l) => l,
            Err(e) => panic!("plain_response does not parse back: {e}"),
        };
        assert_eq!(back.user(), login.user());
        assert_eq!(back.password().expose(), login.password().expose());
    }
}
