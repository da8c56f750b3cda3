//! Capability rewriting (RFC 2449): a pure function from what the upstream
//! offers and the route's policy to what postern advertises.
//!
//! postern never advertises what it cannot honour: the upstream's STLS and
//! SASL list belong to postern's own login with the upstream, not to the
//! client's; before login the client sees postern's login methods.

use super::reply::Capabilities;

/// What the listen side offers before login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offer {
    /// STLS is available (a `starttls` listener not yet upgraded).
    pub stls: bool,
    /// Password logins (USER, SASL PLAIN) are accepted now.
    pub login: bool,
    /// postern checks CRAM-MD5 itself (local accounts) and accepts it now.
    pub cram_md5: bool,
}

/// The CAPA reply before login.
///
/// USER and SASL PLAIN are postern's own (it converts them to the route's
/// upstream method), listed only when a login is accepted now (RFC 2595 §4:
/// a server requiring TLS does not advertise them before STLS).
/// RESP-CODES and AUTH-RESP-CODE: postern's errors carry RFC 2449/3206
/// codes. PIPELINING: postern reads pipelined commands and answers them in
/// order whatever the upstream does. TOP and UIDL are relayed, so they are
/// offered only when the upstream lists them.
pub fn before_login(upstream: Option<&Capabilities>, offer: Offer) -> Vec<u8> {
    let mut out = b"+OK Capability list follows\r\n".to_vec();
    if offer.stls {
        push_line(&mut out, b"STLS");
    }
    if offer.login {
        push_line(&mut out, b"USER");
    }
    match (offer.login, offer.cram_md5) {
        (true, true) => push_line(&mut out, b"SASL PLAIN CRAM-MD5"),
        (true, false) => push_line(&mut out, b"SASL PLAIN"),
        (false, true) => push_line(&mut out, b"SASL CRAM-MD5"),
        (false, false) => {}
    }
    for cap in ["RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"] {
        push_line(&mut out, cap.as_bytes());
    }
    for relayed in ["TOP", "UIDL"] {
        if upstream.is_some_and(|c| c.has(relayed)) {
            push_line(&mut out, relayed.as_bytes());
        }
    }
    push_line(&mut out, b"IMPLEMENTATION postern");
    out.extend_from_slice(b".\r\n");
    out
}

/// The CAPA reply after login: the upstream's transaction-state list
/// without the login-related entries, plus PIPELINING (postern's own).
pub fn after_login(upstream: &Capabilities) -> Vec<u8> {
    const DROP: [&[u8]; 5] = [b"STLS", b"SASL", b"USER", b"IMPLEMENTATION", b"PIPELINING"];
    let mut out = b"+OK Capability list follows\r\n".to_vec();
    for line in upstream.lines() {
        let name = line.split(|b| *b == b' ').next().unwrap_or_default();
        let printable = line.iter().all(|b| (0x20..0x7f).contains(b));
        if !printable || DROP.iter().any(|d| name.eq_ignore_ascii_case(d)) {
            continue;
        }
        push_line(&mut out, line);
    }
    push_line(&mut out, b"PIPELINING");
    push_line(&mut out, b"IMPLEMENTATION postern");
    out.extend_from_slice(b".\r\n");
    out
}

fn push_line(out: &mut Vec<u8>, line: &[u8]) {
    if line.first() == Some(&b'.') {
        out.push(b'.');
    }
    out.extend_from_slice(line);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(lines: &[&str]) -> Capabilities {
        Capabilities::parse(lines.iter().map(|l| l.as_bytes()))
    }

    fn lines(reply: &[u8]) -> Vec<String> {
        let text = String::from_utf8(reply.to_vec()).expect("ascii");
        assert!(text.starts_with("+OK"));
        assert!(text.ends_with("\r\n.\r\n"));
        text.lines()
            .skip(1)
            .filter(|l| *l != ".")
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn before_login_table() {
        let full = caps(&[
            "TOP",
            "UIDL",
            "STLS",
            "SASL CRAM-MD5",
            "USER",
            "EXPIRE NEVER",
        ]);
        let bare = caps(&["USER"]);
        let plain = Offer {
            stls: false,
            login: true,
            cram_md5: false,
        };
        let before_tls = Offer {
            stls: true,
            login: false,
            cram_md5: false,
        };
        let before_tls_optional = Offer {
            stls: true,
            login: true,
            cram_md5: false,
        };
        let accounts = Offer {
            stls: false,
            login: true,
            cram_md5: true,
        };
        let common = ["RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"];
        let with = |head: &[&'static str], tail: &[&'static str]| -> Vec<&'static str> {
            head.iter()
                .chain(common.iter())
                .chain(tail.iter())
                .copied()
                .collect()
        };
        for (upstream, offer, want) in [
            (
                Some(&full),
                plain,
                with(
                    &["USER", "SASL PLAIN"],
                    &["TOP", "UIDL", "IMPLEMENTATION postern"],
                ),
            ),
            (
                Some(&bare),
                plain,
                with(&["USER", "SASL PLAIN"], &["IMPLEMENTATION postern"]),
            ),
            (
                None,
                plain,
                with(&["USER", "SASL PLAIN"], &["IMPLEMENTATION postern"]),
            ),
            (
                Some(&full),
                before_tls,
                with(&["STLS"], &["TOP", "UIDL", "IMPLEMENTATION postern"]),
            ),
            (
                None,
                before_tls_optional,
                with(&["STLS", "USER", "SASL PLAIN"], &["IMPLEMENTATION postern"]),
            ),
            (
                None,
                accounts,
                with(
                    &["USER", "SASL PLAIN CRAM-MD5"],
                    &["IMPLEMENTATION postern"],
                ),
            ),
        ] {
            assert_eq!(lines(&before_login(upstream, offer)), want);
        }
    }

    #[test]
    fn after_login_drops_login_entries_and_control_bytes() {
        let upstream = caps(&[
            "TOP",
            "UIDL",
            "STLS",
            "SASL PLAIN CRAM-MD5",
            "USER",
            "RESP-CODES",
            "IMPLEMENTATION Dovecot",
            "EXPIRE NEVER",
            "X-EVIL \x1b[31m",
        ]);
        assert_eq!(
            lines(&after_login(&upstream)),
            vec![
                "TOP",
                "UIDL",
                "RESP-CODES",
                "EXPIRE NEVER",
                "PIPELINING",
                "IMPLEMENTATION postern"
            ]
        );
    }
}
