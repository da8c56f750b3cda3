//! Recognising clients that speak the wrong protocol on a mail port.
//!
//! A web page can make a browser send a POST to any host and port; with a
//! body of mail commands that would drive postern from a malicious site
//! (cross-protocol scripting). A line that looks like an HTTP request line
//! or header ends the session instead. A TLS ClientHello on a plain port
//! (a client configured for SSL against a plain listener) is closed quietly
//! rather than answered line by line.

/// Whether a client line looks like HTTP rather than POP3/SMTP.
pub fn looks_like_http(line: &[u8]) -> bool {
    const STARTS: [&[u8]; 8] = [
        b"GET ",
        b"POST ",
        b"PUT ",
        b"HEAD ",
        b"CONNECT ",
        b"OPTIONS ",
        b"DELETE ",
        b"PATCH ",
    ];
    const HEADERS: [&[u8]; 4] = [
        b"host:",
        b"user-agent:",
        b"content-type:",
        b"content-length:",
    ];
    let upper_start = |p: &[u8]| line.len() >= p.len() && line[..p.len()].eq_ignore_ascii_case(p);
    STARTS.iter().any(|p| line.starts_with(p)) || HEADERS.iter().any(|p| upper_start(p))
}

/// Whether bytes start like a TLS handshake record (a ClientHello).
pub fn looks_like_tls(data: &[u8]) -> bool {
    matches!(data, [0x16, 0x03, 0x00..=0x04, ..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_records() {
        assert!(looks_like_tls(&[0x16, 0x03, 0x01, 0x02, 0x00]));
        assert!(!looks_like_tls(b"USER a\r\n"));
        assert!(!looks_like_tls(&[0x16]));
    }

    #[test]
    fn table() {
        for (line, http) in [
            (&b"GET / HTTP/1.1\r\n"[..], true),
            (b"POST /x HTTP/1.1\r\n", true),
            (b"CONNECT mail:25 HTTP/1.1\r\n", true),
            (b"Host: 127.0.0.1:2525\r\n", true),
            (b"host:x\r\n", true),
            (b"USER get\r\n", false),
            (b"HELO posted\r\n", false),
            (b"MAIL FROM:<host:@x>\r\n", false),
            (b"get / HTTP/1.1\r\n", false),
        ] {
            assert_eq!(
                looks_like_http(line),
                http,
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }
}
