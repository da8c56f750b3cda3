//! The upstream side: postern as an IMAP client, in two typed machines.
//!
//! ```text
//!  Connect: Greeting ─(* OK)─┬─(starttls)─► [CAPABILITY] ─► STARTTLS ─► [driver: TLS] ─► CAPABILITY ─► Done(Ready)
//!     │ * PREAUTH: refused    └─(none, tls)──────────────────────────────► [CAPABILITY] ─► Done(Ready)
//!     │ * BYE: failed            ([CAPABILITY] skipped when the greeting carries the list)
//!  Ready::login(login) ─► LoginMachine: LOGIN (quoted strings or literals)
//!                         | AUTHENTICATE PLAIN | CRAM-MD5 | XOAUTH2 | OAUTHBEARER (SASL-IR when offered)
//!                         ─► Done(LoggedIn { capabilities }) | Done(Refused) (the same Ready may try again)
//! ```
//!
//! Fail-closed rules:
//!
//! - a `* PREAUTH` greeting is refused on every route: the connection is
//!   already logged in as someone, before TLS on a STARTTLS route (the
//!   "PREAUTH downgrade" of the 2021 STARTTLS study), and in any case not
//!   as the user postern was asked to log in;
//! - `starttls` needs `STARTTLS` in the capabilities and a tagged OK to it
//!   ([`UpstreamError::Insecure`] otherwise); after TLS every capability
//!   is forgotten and asked again (RFC 9051 §6.2.1); the core refuses
//!   bytes sent after the go-ahead;
//! - `auth: login` fails if the server says `LOGINDISABLED`; a SASL
//!   mechanism must be listed as `AUTH=`; never another method instead.
//!
//! postern tags its own commands `P1`, `P2`, … on each connection.
//! Untagged responses during login are collected (CAPABILITY) or ignored;
//! `* BYE` fails the session. A tagged `BAD` is postern's or the server's
//! bug, not a refusal of the credentials: it fails the session too.

use std::sync::atomic::{AtomicU32, Ordering};

use postern_core::config::UpstreamAuth;
use postern_core::credentials::Login;
use postern_core::sasl;
use postern_core::upstream::{printable, UpstreamError};
use zeroize::Zeroizing;

use super::capability::Capabilities;
use super::response::{self, Reply, Response, Status};

mod connect;
mod login;

pub use connect::{Connect, Ready};
pub use login::{LoginDone, LoginMachine};

/// An initial response goes on the AUTHENTICATE line only if the whole
/// line stays within this (RFC 7162 §4: servers take 8192-octet lines);
/// longer ones follow the `+` go-ahead.
pub const MAX_INITIAL_RESPONSE_LINE: usize = 8192;

/// A bearer-token mechanism, with what OAUTHBEARER names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Bearer {
    Xoauth2,
    OauthBearer { host: String, port: u16 },
}

impl Bearer {
    fn name(&self) -> &'static str {
        match self {
            Self::Xoauth2 => "XOAUTH2",
            Self::OauthBearer { .. } => "OAUTHBEARER",
        }
    }

    fn response(&self, login: &Login) -> Zeroizing<String> {
        match self {
            Self::Xoauth2 => sasl::xoauth2_response(login),
            Self::OauthBearer { host, port } => sasl::oauthbearer_response(login, host, *port),
        }
    }

    fn error_ack(&self) -> &'static [u8] {
        sasl::bearer_error_ack(matches!(self, Self::OauthBearer { .. }))
    }
}

/// How the route logs in.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Method {
    Login,
    Plain,
    CramMd5,
    Bearer(Bearer),
}

impl Method {
    fn of(auth: UpstreamAuth, target: Option<&(String, u16)>) -> Result<Self, UpstreamError> {
        match auth {
            UpstreamAuth::Login => Ok(Self::Login),
            UpstreamAuth::Plain => Ok(Self::Plain),
            UpstreamAuth::CramMd5 => Ok(Self::CramMd5),
            UpstreamAuth::Xoauth2 => Ok(Self::Bearer(Bearer::Xoauth2)),
            UpstreamAuth::Oauthbearer => match target {
                Some((host, port)) => Ok(Self::Bearer(Bearer::OauthBearer {
                    host: host.clone(),
                    port: *port,
                })),
                None => fail("OAUTHBEARER needs the upstream's host and port"),
            },
            other => fail(format!("`auth: {other}` is not an IMAP login method")),
        }
    }

    /// The SASL mechanism the server must list as `AUTH=`.
    fn sasl_name(&self) -> Option<&'static str> {
        match self {
            Self::Login => None,
            Self::Plain => Some("PLAIN"),
            Self::CramMd5 => Some("CRAM-MD5"),
            Self::Bearer(b) => Some(b.name()),
        }
    }
}

fn fail<T>(why: impl Into<String>) -> Result<T, UpstreamError> {
    Err(UpstreamError::Protocol(why.into()))
}

fn insecure<T>(why: impl Into<String>) -> Result<T, UpstreamError> {
    Err(UpstreamError::Insecure(why.into()))
}

/// postern's tags on one connection: `P1`, `P2`, …
#[derive(Debug)]
struct Tags(AtomicU32);

impl Tags {
    fn next(&self) -> Vec<u8> {
        let n = self.0.fetch_add(1, Ordering::Relaxed);
        format!("P{n}").into_bytes()
    }
}

impl Clone for Tags {
    fn clone(&self) -> Self {
        Self(AtomicU32::new(self.0.load(Ordering::Relaxed)))
    }
}

impl Default for Tags {
    fn default() -> Self {
        Self(AtomicU32::new(1))
    }
}

/// The capabilities a reply carries: untagged CAPABILITY lines and a
/// `[CAPABILITY]` code on its last line; `None` if it has neither.
fn reply_capabilities(reply: &Reply) -> Option<Capabilities> {
    let mut found: Option<Capabilities> = None;
    let lines = reply.untagged.iter().chain(std::iter::once(&reply.last));
    for line in lines {
        let caps = match response::parse(line) {
            Ok(Response::Data { name, rest }) if name.eq_ignore_ascii_case(b"CAPABILITY") => {
                Capabilities::parse(rest)
            }
            Ok(Response::Status { text, .. }) => match text.code.and_then(|c| c.capabilities()) {
                Some(c) => c,
                None => continue,
            },
            _ => continue,
        };
        found.get_or_insert_with(Capabilities::default).merge(&caps);
    }
    found
}

/// The last line of a reply, parsed; an untagged `BYE` fails.
fn last<'a>(reply: &'a Reply, phase: &str) -> Result<Response<'a>, UpstreamError> {
    match response::parse(&reply.last) {
        Ok(Response::Status {
            tag: None,
            status: Status::Bye,
            text,
        }) => fail(format!(
            "the server closed the session during {phase}: {}",
            text.printable()
        )),
        Ok(r) => Ok(r),
        Err(e) => fail(format!(
            "the server's reply is not IMAP ({e}: {}) during {phase}",
            printable(&reply.last)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_core::config::Security;
    use postern_core::upstream::{Framer, Io, Machine, Step};
    use postern_core::Secret;

    pub(super) fn login() -> Login {
        Login::new(b"tim", Secret::from("tanstaaftanstaaf")).expect("login")
    }

    /// Frames `lines` with the machine's framer, as the driver would.
    pub(super) fn reply<M: Machine<Reply = Reply>>(m: &M, lines: &[&str]) -> Reply {
        let mut f = m.framer();
        for (i, l) in lines.iter().enumerate() {
            match f.push(l.as_bytes().to_vec()) {
                Ok(Some(r)) => {
                    assert_eq!(
                        i + 1,
                        lines.len(),
                        "reply complete before {:?}",
                        &lines[i + 1..]
                    );
                    return r;
                }
                Ok(None) => {}
                Err(e) => panic!("framing {l:?}: {e}"),
            }
        }
        panic!("reply incomplete: {lines:?}");
    }

    pub(super) fn on<M: Machine<Reply = Reply>>(
        m: &mut M,
        lines: &[&str],
    ) -> Result<Step<M::Done>, UpstreamError> {
        let r = reply(m, lines);
        m.on_reply(r)
    }

    pub(super) fn sent<D: std::fmt::Debug>(step: Result<Step<D>, UpstreamError>) -> String {
        let step = step.expect("a step, not a failure");
        String::from_utf8(step.sent().expect("a command").to_vec()).expect("ascii")
    }

    pub(super) fn ready(step: Result<Step<Ready>, UpstreamError>) -> Ready {
        step.expect("a step").into_done().expect("Ready")
    }

    pub(super) fn done(step: Result<Step<LoginDone>, UpstreamError>) -> LoginDone {
        step.expect("a step")
            .into_done()
            .expect("the end of the login")
    }

    pub(super) fn failure<D: std::fmt::Debug>(
        step: Result<Step<D>, UpstreamError>,
    ) -> UpstreamError {
        step.expect_err("a failure")
    }

    pub(super) fn connect(
        security: Security,
        auth: UpstreamAuth,
        greeting: &str,
        caps: &str,
    ) -> Ready {
        let mut m = Connect::new(security, auth).target("imap.example.net", 993);
        assert!(matches!(m.begin(), Step::Io(Io::Read)));
        assert_eq!(sent(on(&mut m, &[greeting])), "P1 CAPABILITY\r\n");
        ready(on(
            &mut m,
            &[&format!("* CAPABILITY {caps}\r\n"), "P1 OK done\r\n"],
        ))
    }

    #[test]
    fn starttls_then_cram_md5_with_the_rfc_vector() {
        let mut m = Connect::new(Security::Starttls, UpstreamAuth::CramMd5);
        // The greeting lists capabilities: no CAPABILITY command needed;
        // before TLS there is no CRAM-MD5, which must not matter.
        assert_eq!(
            sent(on(
                &mut m,
                &["* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] Dovecot ready.\r\n"]
            )),
            "P1 STARTTLS\r\n"
        );
        assert!(matches!(
            on(&mut m, &["P1 OK Begin TLS negotiation now.\r\n"]),
            Ok(Step::Io(Io::StartTls))
        ));
        assert_eq!(sent(m.on_tls()), "P2 CAPABILITY\r\n");
        let r = ready(on(
            &mut m,
            &[
                "* CAPABILITY IMAP4rev1 AUTH=PLAIN AUTH=CRAM-MD5\r\n",
                "P2 OK Pre-login capabilities listed, post-login capabilities have more.\r\n",
            ],
        ));
        assert!(
            !r.capabilities().has("STARTTLS"),
            "pre-TLS capabilities forgotten"
        );
        assert_eq!(r.seen().greeting, "Dovecot ready.");
        assert_eq!(
            r.seen().before_tls.as_deref(),
            Some(
                &[
                    "IMAP4rev1".to_owned(),
                    "STARTTLS".to_owned(),
                    "LOGINDISABLED".to_owned()
                ][..]
            )
        );
        let (mut l, first) = r.login(login());
        assert_eq!(sent(Ok(first)), "P3 AUTHENTICATE CRAM-MD5\r\n");
        let challenge = sasl::encode(b"<1896.697170952@postoffice.reston.mci.net>");
        assert_eq!(
            sent(on(&mut l, &[&format!("+ {challenge}\r\n")])),
            "dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw\r\n"
        );
        assert_eq!(
            done(on(
                &mut l,
                &["P3 OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n"]
            )),
            LoginDone::LoggedIn {
                capabilities: Some(Capabilities::parse(b"IMAP4rev1 IDLE"))
            }
        );
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let r = connect(
            Security::Tls,
            UpstreamAuth::Login,
            "* OK hi\r\n",
            "IMAP4rev1",
        );
        let (m, first) = r.login(Login::new(b"tim", Secret::from("p\u{e4}ssw0rd")).expect("login"));
        let debug = format!("{m:?} {r:?}");
        // Neither as text nor as the bytes of a Vec<u8>'s Debug.
        assert!(
            !debug.contains("ssw0rd") && !debug.contains("115, 119, 48"),
            "{debug}"
        );
        // The first part of a literal LOGIN holds no password; the rest is
        // in zeroizing memory and never printed.
        assert_eq!(sent(Ok(first)), "P2 LOGIN \"tim\" {9}\r\n");
    }
}
