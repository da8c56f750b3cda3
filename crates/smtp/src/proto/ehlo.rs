//! EHLO capability rewriting (RFC 5321 §4.1.1.1): a pure function from the
//! upstream's extensions and the route's policy to what postern advertises.
//!
//! postern advertises only what it can honour end to end. It never passes
//! on the upstream's STARTTLS (that belongs to postern's own connection)
//! or its AUTH list (the client authenticates to postern, which converts).
//! CHUNKING is not offered: BDAT is not relayed.

#[cfg(test)]
use postern_core::sasl::Mechanism;
use postern_core::sasl::Mechanisms;

use super::reply::Reply;

/// The upstream's EHLO keywords (the lines after the first).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extensions {
    lines: Vec<Vec<u8>>,
}

impl Extensions {
    /// Reads the extension lines of an EHLO reply.
    pub fn from_ehlo(reply: &Reply) -> Self {
        Self {
            lines: reply.texts().skip(1).map(<[u8]>::to_vec).collect(),
        }
    }

    /// From keyword lines (tests).
    pub fn from_lines<'a>(lines: impl IntoIterator<Item = &'a str>) -> Self {
        Self {
            lines: lines.into_iter().map(|l| l.as_bytes().to_vec()).collect(),
        }
    }

    fn find(&self, keyword: &str) -> Option<&[u8]> {
        self.lines.iter().map(Vec::as_slice).find(|l| {
            let k = l
                .split(|b| *b == b' ' || *b == b'=')
                .next()
                .unwrap_or_default();
            k.eq_ignore_ascii_case(keyword.as_bytes())
        })
    }

    /// The keyword lines as sent (`SIZE 1000`, `AUTH PLAIN LOGIN`).
    pub fn lines(&self) -> impl Iterator<Item = &[u8]> {
        self.lines.iter().map(Vec::as_slice)
    }

    /// Whether a keyword is listed.
    pub fn has(&self, keyword: &str) -> bool {
        self.find(keyword).is_some()
    }

    /// The SIZE limit; `None` if absent or 0 (no fixed limit).
    pub fn size(&self) -> Option<u64> {
        let line = self.find("SIZE")?;
        let n: u64 = std::str::from_utf8(line.get(5..)?)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        (n > 0).then_some(n)
    }

    /// Whether AUTH lists a mechanism (also the old `AUTH=` form).
    pub fn has_auth(&self, mechanism: &str) -> bool {
        self.lines.iter().any(|l| {
            let mut words = l.split(|b| *b == b' ' || *b == b'=');
            words
                .next()
                .is_some_and(|k| k.eq_ignore_ascii_case(b"AUTH"))
                && words.any(|m| m.eq_ignore_ascii_case(mechanism.as_bytes()))
        })
    }
}

/// What the route lets postern offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// The route's own message size limit.
    pub max_size: u64,
    /// Recipients per message (`452 4.5.3` beyond it).
    pub max_recipients: u32,
    /// The AUTH mechanisms to offer (none: no AUTH line).
    pub auth: Mechanisms,
    /// Offer `STARTTLS` (a `starttls` listener not yet upgraded).
    pub offer_starttls: bool,
}

impl Policy {
    /// The size limit clients are held to: the smaller of route and upstream.
    pub fn effective_size(&self, upstream: &Extensions) -> u64 {
        upstream
            .size()
            .map_or(self.max_size, |u| u.min(self.max_size))
    }
}

/// The full EHLO reply postern sends a client.
pub fn advertise(upstream: &Extensions, policy: &Policy, hostname: &str) -> Vec<u8> {
    let mut lines: Vec<String> = vec![format!("{hostname} at your service")];
    // postern reads pipelined commands and answers them in order itself.
    lines.push("PIPELINING".to_owned());
    lines.push(format!("SIZE {}", policy.effective_size(upstream)));
    for relayed in ["8BITMIME", "SMTPUTF8", "DSN"] {
        if upstream.has(relayed) {
            lines.push(relayed.to_owned());
        }
    }
    // postern's own replies always carry enhanced codes.
    lines.push("ENHANCEDSTATUSCODES".to_owned());
    if policy.offer_starttls {
        lines.push("STARTTLS".to_owned());
    }
    if !policy.auth.is_empty() {
        lines.push(format!("AUTH {}", policy.auth.names()));
    }
    let mut out = Vec::with_capacity(lines.len() * 16);
    let last = lines.len() - 1;
    for (i, l) in lines.iter().enumerate() {
        out.extend_from_slice(if i == last { b"250 " } else { b"250-" });
        out.extend_from_slice(l.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keywords(reply: &[u8]) -> Vec<String> {
        let r = Reply::parse(reply).expect("valid reply framing");
        assert_eq!(r.code(), 250);
        r.texts()
            .skip(1)
            .map(|t| String::from_utf8_lossy(t).into_owned())
            .collect()
    }

    #[test]
    fn parses_upstream_extensions() {
        let r = Reply::parse(
            b"250-smtp.example\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-STARTTLS\r\n250-AUTH PLAIN LOGIN CRAM-MD5\r\n250-AUTH=LOGIN\r\n250 8BITMIME\r\n",
        )
        .expect("reply");
        let e = Extensions::from_ehlo(&r);
        assert!(e.has("starttls"));
        assert!(!e.has("smtp.example"), "the greeting line is not a keyword");
        assert_eq!(e.size(), Some(10_240_000));
        assert!(e.has_auth("cram-md5"));
        assert!(e.has_auth("LOGIN"));
        assert!(!e.has_auth("XOAUTH2"));
        assert_eq!(Extensions::from_lines(["SIZE 0"]).size(), None);
        assert_eq!(Extensions::from_lines(["SIZE"]).size(), None);
    }

    #[test]
    fn advertise_table() {
        let full = Extensions::from_lines([
            "PIPELINING",
            "SIZE 10000",
            "STARTTLS",
            "AUTH CRAM-MD5",
            "8BITMIME",
            "SMTPUTF8",
            "DSN",
            "ENHANCEDSTATUSCODES",
            "CHUNKING",
            "ETRN",
            "VRFY",
        ]);
        let bare = Extensions::default();
        let pass = Policy {
            max_size: 50_000,
            max_recipients: 100,
            auth: Mechanisms::NONE
                .with(Mechanism::Plain)
                .with(Mechanism::Login),
            offer_starttls: false,
        };
        let device = Policy {
            max_size: 5_000,
            max_recipients: 100,
            auth: Mechanisms::NONE,
            offer_starttls: false,
        };
        let before_tls = Policy {
            max_size: 50_000,
            max_recipients: 100,
            auth: Mechanisms::NONE,
            offer_starttls: true,
        };
        for (up, policy, want) in [
            (
                &full,
                pass,
                vec![
                    "PIPELINING",
                    "SIZE 10000",
                    "8BITMIME",
                    "SMTPUTF8",
                    "DSN",
                    "ENHANCEDSTATUSCODES",
                    "AUTH PLAIN LOGIN",
                ],
            ),
            (
                &full,
                device,
                vec![
                    "PIPELINING",
                    "SIZE 5000",
                    "8BITMIME",
                    "SMTPUTF8",
                    "DSN",
                    "ENHANCEDSTATUSCODES",
                ],
            ),
            (
                &bare,
                pass,
                vec![
                    "PIPELINING",
                    "SIZE 50000",
                    "ENHANCEDSTATUSCODES",
                    "AUTH PLAIN LOGIN",
                ],
            ),
            (
                &bare,
                before_tls,
                vec![
                    "PIPELINING",
                    "SIZE 50000",
                    "ENHANCEDSTATUSCODES",
                    "STARTTLS",
                ],
            ),
        ] {
            assert_eq!(keywords(&advertise(up, &policy, "postern")), want);
        }
    }
}
