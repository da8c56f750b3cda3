//! The PROXY protocol v1/v2 header parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_core::proxy;
use postern_fuzz::split_point;

fuzz_target!(|data: &[u8]| {
    let (k, buf) = split_point(data);
    let full = proxy::parse(buf);
    let prefix = proxy::parse(&buf[..k]);
    match &full {
        Ok(Some((addr, n))) => {
            let n = *n;
            assert!(n > 0 && n <= buf.len(), "consumed {n} of {}", buf.len());
            // The header alone gives the same answer: parse never looks
            // past the header (read_header relies on it).
            match proxy::parse(&buf[..n]) {
                Ok(Some((a, m))) => assert!(a == *addr && m == n),
                other => panic!("header alone parses as {other:?}"),
            }
            // A strict prefix of the header only ever means "read more".
            if k < n {
                assert!(
                    matches!(prefix, Ok(None)),
                    "prefix of {k} bytes of a valid header gives {prefix:?}"
                );
            } else {
                match &prefix {
                    Ok(Some((a, m))) => assert!(a == addr && *m == n),
                    other => panic!("{k} bytes holding the header parse as {other:?}"),
                }
            }
        }
        Ok(None) => {
            // More bytes never undo an error: a prefix of an incomplete
            // header is incomplete too.
            assert!(
                matches!(prefix, Ok(None)),
                "prefix of {k} bytes gives {prefix:?} but the whole gives Ok(None)"
            );
        }
        Err(_) => {}
    }
});
