//! Capability lists (RFC 9051 §7.2.2) and their rewriting: pure functions
//! from what the upstream offers and the listener's state to what postern
//! advertises.
//!
//! Before login the client sees postern's own capabilities: postern speaks
//! that state itself, so the upstream's `STARTTLS`, `AUTH=`, `SASL-IR` and
//! `LOGINDISABLED` describe postern's connection to the upstream, not the
//! client's to postern.
//!
//! After login the upstream's list is relayed minus what postern controls:
//!
//! - `STARTTLS`, `LOGINDISABLED`, every `AUTH=`: TLS and login are
//!   postern's business, and both are over once the relay starts;
//! - `SASL-IR`: it only describes AUTHENTICATE, which the authenticated
//!   state does not accept; dropped so the list says nothing about a login
//!   the client can no longer make;
//! - `COMPRESS=*` (RFC 4978): postern refuses COMPRESS. Relaying it
//!   compressed would hide the stream postern must keep reading after
//!   login (the CAPABILITY rewriting here, literal boundaries, the refusal
//!   of STARTTLS); a pass-through of both compressed directions would turn
//!   those checks off for any client that asks;
//! - `UNAUTHENTICATE` (RFC 8437): it would return the upstream session to
//!   the not-authenticated state, where the client could STARTTLS or log
//!   in upstream past postern's login and policy. The relay refuses the
//!   command too.

use postern_core::sasl::{Mechanism, Mechanisms};
use postern_core::tls::ListenTls;

/// A capability list: atoms in the order the server gave them, without
/// duplicates (compared case-insensitively).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    atoms: Vec<Vec<u8>>,
}

/// Whether `b` may appear in a capability atom (RFC 9051 `ATOM-CHAR`).
fn atom_char(b: u8) -> bool {
    (0x21..0x7f).contains(&b)
        && !matches!(b, b'(' | b')' | b'{' | b'%' | b'*' | b'"' | b'\\' | b']')
}

impl Capabilities {
    /// Parses a space-separated list (the rest of `* CAPABILITY`, or the
    /// arguments of a `[CAPABILITY ...]` code). Words that are not atoms
    /// are dropped, so a parsed list can be written on any line safely.
    pub fn parse(list: &[u8]) -> Self {
        let mut caps = Self::default();
        for word in list.split(|b| *b == b' ') {
            if !word.is_empty() && word.iter().all(|b| atom_char(*b)) {
                caps.push(word);
            }
        }
        caps
    }

    /// Adds a capability unless it is listed already.
    fn push(&mut self, atom: &[u8]) {
        if !self.atoms.iter().any(|a| a.eq_ignore_ascii_case(atom)) {
            self.atoms.push(atom.to_vec());
        }
    }

    /// Adds every capability of `other` not listed yet (several untagged
    /// CAPABILITY responses, or one beside a response code).
    pub fn merge(&mut self, other: &Capabilities) {
        for a in &other.atoms {
            self.push(a);
        }
    }

    /// Whether `name` is listed (case-insensitive).
    pub fn has(&self, name: &str) -> bool {
        self.atoms
            .iter()
            .any(|a| a.eq_ignore_ascii_case(name.as_bytes()))
    }

    /// Whether `AUTH=<mechanism>` is listed.
    pub fn has_auth(&self, mechanism: &str) -> bool {
        self.atoms.iter().any(|a| {
            a.len() == 5 + mechanism.len()
                && a[..5].eq_ignore_ascii_case(b"AUTH=")
                && a[5..].eq_ignore_ascii_case(mechanism.as_bytes())
        })
    }

    /// The atoms, in order.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.atoms.iter().map(Vec::as_slice)
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.atoms.is_empty()
    }

    /// The atoms separated by single spaces, as written after
    /// `* CAPABILITY ` or `[CAPABILITY `.
    pub fn to_text(&self) -> Vec<u8> {
        self.atoms.join(&b' ')
    }

    /// The list as an untagged response: `* CAPABILITY ...` CRLF.
    pub fn untagged(&self) -> Vec<u8> {
        let mut out = b"* CAPABILITY ".to_vec();
        out.extend_from_slice(&self.to_text());
        out.extend_from_slice(b"\r\n");
        out
    }

    fn from_names(names: &[&str]) -> Self {
        let mut caps = Self::default();
        for n in names {
            caps.push(n.as_bytes());
        }
        caps
    }
}

/// What postern advertises before login.
///
/// - `IMAP4rev1` always; `IMAP4rev2` only when the upstream (as last seen,
///   after TLS) offers it, so a client that picks rev2 finds it after login;
/// - `STARTTLS` when the listener offers it and TLS is not up yet;
/// - `LOGINDISABLED` and no `AUTH=` while the listener requires TLS for
///   logins and TLS is not up (RFC 9051 §6.2.3, RFC 3501 §7.2.1);
///   otherwise `AUTH=` for each of postern's `local` mechanisms, and
///   `LOGINDISABLED` if passwords are not accepted at all (the LOGIN
///   command is a password login: it is offered with `PLAIN`);
/// - `SASL-IR` (RFC 4959) when any mechanism is offered: postern's SASL
///   server takes initial responses;
/// - `LITERAL-` (RFC 7888), not `LITERAL+`: before login postern caps
///   literals (see [`super::command::Limits`]), so it promises
///   non-synchronising literals up to 4096 octets only;
/// - `ID` (RFC 2971), answered by postern itself.
///
/// Never the upstream's `STARTTLS`, `AUTH=` or `LOGINDISABLED`: they
/// describe postern's own connection to the upstream.
pub fn for_client_before_login(
    upstream: Option<&Capabilities>,
    tls: ListenTls,
    local: Mechanisms,
) -> Capabilities {
    let mut caps = Capabilities::from_names(&["IMAP4rev1"]);
    if upstream.is_some_and(|u| u.has("IMAP4rev2")) {
        caps.push(b"IMAP4rev2");
    }
    if tls.starttls && !tls.active {
        caps.push(b"STARTTLS");
    }
    let login_now = tls.active || !tls.required_for_auth;
    let mechanisms = if login_now { local } else { Mechanisms::NONE };
    if !mechanisms.has(Mechanism::Plain) {
        caps.push(b"LOGINDISABLED");
    }
    for m in mechanisms.iter() {
        caps.push(format!("AUTH={}", m.name()).as_bytes());
    }
    if !mechanisms.is_empty() {
        caps.push(b"SASL-IR");
    }
    caps.push(b"LITERAL-");
    caps.push(b"ID");
    caps
}

/// Whether a capability of the upstream's post-login list is withheld
/// from the client (see the module documentation for why).
fn withheld(atom: &[u8]) -> bool {
    const NAMES: [&[u8]; 4] = [b"STARTTLS", b"LOGINDISABLED", b"SASL-IR", b"UNAUTHENTICATE"];
    const PREFIXES: [&[u8]; 2] = [b"AUTH=", b"COMPRESS="];
    NAMES.iter().any(|n| atom.eq_ignore_ascii_case(n))
        || PREFIXES
            .iter()
            .any(|p| atom.len() >= p.len() && atom[..p.len()].eq_ignore_ascii_case(p))
}

/// The upstream's capabilities as relayed to the client after login:
/// everything except `STARTTLS`, `LOGINDISABLED`, `AUTH=*`, `SASL-IR`,
/// `COMPRESS=*` and `UNAUTHENTICATE`. Idempotent.
pub fn after_login(upstream: &Capabilities) -> Capabilities {
    Capabilities {
        atoms: upstream
            .atoms
            .iter()
            .filter(|a| !withheld(a))
            .cloned()
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(c: &Capabilities) -> String {
        String::from_utf8(c.to_text()).expect("atoms are ASCII")
    }

    #[test]
    fn parse_table() {
        for (input, want) in [
            (
                &b"IMAP4rev1 STARTTLS AUTH=PLAIN"[..],
                "IMAP4rev1 STARTTLS AUTH=PLAIN",
            ),
            (b"  IMAP4rev1   LITERAL+ ", "IMAP4rev1 LITERAL+"),
            (b"IMAP4rev1 imap4REV1 IMAP4rev1", "IMAP4rev1"),
            (
                b"IMAP4rev1 \x01bad (x) a]b \"q\" \xc3\xa9 ok",
                "IMAP4rev1 ok",
            ),
            (b"", ""),
            (
                b"APPENDLIMIT=35651584 X-GM-EXT-1 QUOTA=RES-STORAGE",
                "APPENDLIMIT=35651584 X-GM-EXT-1 QUOTA=RES-STORAGE",
            ),
        ] {
            assert_eq!(text(&Capabilities::parse(input)), want, "{input:?}");
        }
        let c = Capabilities::parse(b"IMAP4rev1 auth=plain AUTH=XOAUTH2 LITERAL+");
        assert!(c.has("literal+") && c.has("IMAP4REV1") && !c.has("LITERAL"));
        assert!(c.has_auth("PLAIN") && c.has_auth("xoauth2") && !c.has_auth("LOGIN"));
        assert!(!c.has_auth("PLAI"));
        assert_eq!(
            c.untagged(),
            b"* CAPABILITY IMAP4rev1 auth=plain AUTH=XOAUTH2 LITERAL+\r\n"
        );
        let mut m = Capabilities::parse(b"A B");
        m.merge(&Capabilities::parse(b"b C"));
        assert_eq!(text(&m), "A B C");
    }

    const ALL: Mechanisms = Mechanisms::NONE;

    fn local(plain: bool, cram: bool) -> Mechanisms {
        let mut m = ALL;
        if plain {
            m = m.with(Mechanism::Plain).with(Mechanism::Login);
        }
        if cram {
            m = m.with(Mechanism::CramMd5);
        }
        m
    }

    fn tls(starttls: bool, active: bool, required: bool) -> ListenTls {
        ListenTls {
            starttls,
            active,
            required_for_auth: required,
        }
    }

    #[test]
    fn before_login_table() {
        let rev2 = Capabilities::parse(
            b"IMAP4rev1 IMAP4rev2 STARTTLS AUTH=XOAUTH2 LOGINDISABLED SASL-IR IDLE LITERAL+",
        );
        let rev1 = Capabilities::parse(b"IMAP4rev1 STARTTLS AUTH=PLAIN");
        for (upstream, listen, mechanisms, want) in [
            // Plain listener, passwords only.
            (
                None,
                tls(false, false, false),
                local(true, false),
                "IMAP4rev1 AUTH=PLAIN AUTH=LOGIN SASL-IR LITERAL- ID",
            ),
            // Local secrets add CRAM-MD5; the upstream's rev2 is passed on,
            // nothing else of its list.
            (
                Some(&rev2),
                tls(false, true, false),
                local(true, true),
                "IMAP4rev1 IMAP4rev2 AUTH=PLAIN AUTH=LOGIN AUTH=CRAM-MD5 SASL-IR LITERAL- ID",
            ),
            (
                Some(&rev1),
                tls(false, true, false),
                local(true, false),
                "IMAP4rev1 AUTH=PLAIN AUTH=LOGIN SASL-IR LITERAL- ID",
            ),
            // STARTTLS listener that requires TLS for logins, before TLS.
            (
                Some(&rev2),
                tls(true, false, true),
                local(true, true),
                "IMAP4rev1 IMAP4rev2 STARTTLS LOGINDISABLED LITERAL- ID",
            ),
            // The same after TLS.
            (
                Some(&rev2),
                tls(true, true, true),
                local(true, true),
                "IMAP4rev1 IMAP4rev2 AUTH=PLAIN AUTH=LOGIN AUTH=CRAM-MD5 SASL-IR LITERAL- ID",
            ),
            // STARTTLS optional: offered, and logins allowed before it.
            (
                None,
                tls(true, false, false),
                local(true, false),
                "IMAP4rev1 STARTTLS AUTH=PLAIN AUTH=LOGIN SASL-IR LITERAL- ID",
            ),
            // Only CRAM-MD5 (no passwords): LOGIN is disabled.
            (
                None,
                tls(false, false, false),
                local(false, true),
                "IMAP4rev1 LOGINDISABLED AUTH=CRAM-MD5 SASL-IR LITERAL- ID",
            ),
            // Nothing to log in with at all.
            (
                None,
                tls(false, false, false),
                local(false, false),
                "IMAP4rev1 LOGINDISABLED LITERAL- ID",
            ),
        ] {
            assert_eq!(
                text(&for_client_before_login(upstream, listen, mechanisms)),
                want,
                "{listen:?} {mechanisms:?}"
            );
        }
    }

    #[test]
    fn after_login_table() {
        for (upstream, want) in [
            (
                "IMAP4rev1 STARTTLS AUTH=PLAIN AUTH=XOAUTH2 LOGINDISABLED SASL-IR IDLE",
                "IMAP4rev1 IDLE",
            ),
            (
                "IMAP4rev1 IMAP4rev2 LITERAL+ COMPRESS=DEFLATE compress=other ENABLE UTF8=ACCEPT",
                "IMAP4rev1 IMAP4rev2 LITERAL+ ENABLE UTF8=ACCEPT",
            ),
            (
                "IMAP4rev1 UNAUTHENTICATE starttls auth=plain sasl-ir ID NAMESPACE",
                "IMAP4rev1 ID NAMESPACE",
            ),
            // Names that only start like a withheld one stay.
            (
                "IMAP4rev1 AUTHX STARTTLSX COMPRESS LITERAL-",
                "IMAP4rev1 AUTHX STARTTLSX COMPRESS LITERAL-",
            ),
            ("", ""),
        ] {
            let got = after_login(&Capabilities::parse(upstream.as_bytes()));
            assert_eq!(text(&got), want, "{upstream}");
            assert_eq!(after_login(&got), got, "idempotent for {upstream}");
        }
    }
}
