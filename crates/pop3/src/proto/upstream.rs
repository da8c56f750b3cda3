//! The upstream-facing login: postern as a POP3 client.
//!
//! ```text
//!  Greeting ──(starttls)──► CapaBeforeTls ─► Stls ─► [driver: TLS] ─┐
//!     │                                                             ▼
//!     └──(none, tls)──────────────────────────────────────────► Capa ─► Ready
//!  Ready ─ authenticate(login) ─► USER/PASS | APOP | AUTH PLAIN | AUTH CRAM-MD5
//!        ─► LoggedIn, or Refused (back to Ready: the client may try again)
//! ```
//! Fail-closed rules: with `starttls` the server must offer and accept STLS
//! (no CAPA listing STLS, or `-ERR` to STLS, fails the session); after TLS
//! every earlier capability is forgotten and CAPA is asked again (RFC 2595
//! §4); APOP needs a valid msg-id timestamp and never falls back to
//! USER/PASS; a SASL mechanism the server's CAPA does not list is not tried.

use postern_core::config::{Security, UpstreamAuth};
use postern_core::credentials::Login;
use postern_core::sasl;
use postern_core::upstream::{Io, Machine, Step as WireStep, UpstreamError};
use zeroize::Zeroizing;

use super::framer::{Reply, StatusFramer};

use super::apop;
use super::command::MAX_COMMAND_LINE;
use super::reply::{parse_status, Capabilities, RespCode, Status};

/// What the driver should do next.
#[derive(Debug)]
pub enum Step {
    /// Read the next reply (status line, plus the body if [`UpstreamLogin::expects_body`]).
    Read,
    /// Send these bytes (they may hold a secret: never log them), then read.
    Send(Zeroizing<Vec<u8>>),
    /// The server said go ahead: check nothing is buffered, handshake, then
    /// call [`UpstreamLogin::on_tls`].
    StartTls,
    /// Connected and ready for a login.
    Ready,
    /// Logged in: start relaying.
    LoggedIn,
    /// The server refused the credentials; a new login may be tried.
    Refused(RespCode),
    /// The session cannot go on; the reason is safe to log.
    Fail(String),
}

#[derive(Debug)]
enum State {
    Greeting,
    CapaBeforeTls,
    Stls,
    AwaitTls,
    Capa,
    Ready,
    UserSent(Login),
    PlainAwaitGo(Login),
    CramAwaitChallenge(Login),
    AuthSent,
    LoggedIn,
    Failed,
}

/// The upstream login machine for one session.
#[derive(Debug)]
pub struct UpstreamLogin {
    security: Security,
    auth: UpstreamAuth,
    state: State,
    timestamp: Option<Vec<u8>>,
    caps: Option<Capabilities>,
}

fn line(parts: &[&[u8]]) -> Zeroizing<Vec<u8>> {
    let mut v = Zeroizing::new(Vec::with_capacity(64));
    for p in parts {
        v.extend_from_slice(p);
    }
    v.extend_from_slice(b"\r\n");
    v
}

fn printable(text: &[u8]) -> String {
    text.iter()
        .take(120)
        .map(|&b| {
            if (0x20..0x7f).contains(&b) {
                b as char
            } else {
                '?'
            }
        })
        .collect()
}

impl UpstreamLogin {
    /// A machine for a route's `security` and `auth`.
    pub fn new(security: Security, auth: UpstreamAuth) -> Self {
        Self {
            security,
            auth,
            state: State::Greeting,
            timestamp: None,
            caps: None,
        }
    }

    /// The first step: read the greeting.
    pub fn start(&self) -> Step {
        Step::Read
    }

    /// Whether the reply being read has a multi-line body when positive.
    pub fn expects_body(&self) -> bool {
        matches!(self.state, State::CapaBeforeTls | State::Capa)
    }

    /// The APOP timestamp of the server's greeting (only kept for `auth: apop`).
    pub fn timestamp(&self) -> Option<&[u8]> {
        self.timestamp.as_deref()
    }

    /// The capabilities learnt on the current (post-TLS) connection.
    pub fn capabilities(&self) -> Option<&Capabilities> {
        self.caps.as_ref()
    }

    /// What the machine waits for, for logs and timeouts.
    pub fn phase(&self) -> &'static str {
        match self.state {
            State::Greeting => "greeting",
            State::CapaBeforeTls | State::Capa => "CAPA",
            State::Stls | State::AwaitTls => "STLS",
            State::Ready => "ready",
            State::UserSent(_)
            | State::PlainAwaitGo(_)
            | State::CramAwaitChallenge(_)
            | State::AuthSent => "login",
            State::LoggedIn => "logged in",
            State::Failed => "failed",
        }
    }

    fn fail(&mut self, why: impl Into<String>) -> Step {
        self.state = State::Failed;
        Step::Fail(why.into())
    }

    fn capa(&mut self, before_tls: bool) -> Step {
        self.state = if before_tls {
            State::CapaBeforeTls
        } else {
            State::Capa
        };
        Step::Send(line(&[b"CAPA"]))
    }

    /// The TLS upgrade after STLS succeeded.
    pub fn on_tls(&mut self) -> Step {
        if !matches!(self.state, State::AwaitTls) {
            return self.fail("internal: TLS upgrade out of order");
        }
        // RFC 2595 §4: forget everything learnt before TLS.
        self.caps = None;
        self.capa(false)
    }

    /// Handles one reply: its status line and, for CAPA, its body lines
    /// (terminator and dot-stuffing removed).
    pub fn on_reply(&mut self, status_line: &[u8], body: &[Vec<u8>]) -> Step {
        let Some(status) = parse_status(status_line) else {
            return self.fail(format!(
                "the server's reply is not POP3 ({}) during {}",
                printable(status_line),
                self.phase()
            ));
        };
        match std::mem::replace(&mut self.state, State::Failed) {
            State::Greeting => match status {
                Status::Ok(text) => {
                    if self.auth == UpstreamAuth::Apop {
                        match apop::timestamp(text) {
                            Ok(ts) => self.timestamp = Some(ts.to_vec()),
                            Err(e) => return self.fail(e.to_string()),
                        }
                    }
                    self.capa(self.security == Security::Starttls)
                }
                Status::Err(text) => self.fail(format!(
                    "the server refused the connection: {}",
                    printable(text)
                )),
                Status::Continue(_) => self.fail("the server's greeting is not POP3"),
            },
            State::CapaBeforeTls => match status {
                Status::Ok(_) => {
                    let caps = Capabilities::parse(body.iter().map(Vec::as_slice));
                    if !caps.has("STLS") {
                        return self.fail(
                            "the server does not offer STLS (its CAPA has no STLS); refusing to continue without TLS",
                        );
                    }
                    self.state = State::Stls;
                    Step::Send(line(&[b"STLS"]))
                }
                // No CAPA: STLS may still work; a refusal fails below.
                Status::Err(_) => {
                    self.state = State::Stls;
                    Step::Send(line(&[b"STLS"]))
                }
                Status::Continue(_) => self.fail("unexpected continuation to CAPA"),
            },
            State::Stls => match status {
                Status::Ok(_) => {
                    self.state = State::AwaitTls;
                    Step::StartTls
                }
                _ => self.fail("the server refused STLS; refusing to continue without TLS"),
            },
            State::Capa => {
                self.caps = match status {
                    Status::Ok(_) => Some(Capabilities::parse(body.iter().map(Vec::as_slice))),
                    _ => None,
                };
                let needed = match self.auth {
                    UpstreamAuth::Plain => Some("PLAIN"),
                    UpstreamAuth::CramMd5 => Some("CRAM-MD5"),
                    _ => None,
                };
                if let (Some(mech), Some(caps)) = (needed, &self.caps) {
                    if !caps.has_sasl(mech) {
                        return self.fail(format!(
                            "the server does not offer SASL {mech} (not in its CAPA); not trying another method"
                        ));
                    }
                }
                self.state = State::Ready;
                Step::Ready
            }
            State::UserSent(login) => match status {
                Status::Ok(_) => {
                    self.state = State::AuthSent;
                    Step::Send(line(&[b"PASS ", login.password().expose()]))
                }
                Status::Err(text) => self.refused(text),
                Status::Continue(_) => self.fail("unexpected continuation to USER"),
            },
            State::PlainAwaitGo(login) => match status {
                Status::Continue(_) => {
                    self.state = State::AuthSent;
                    Step::Send(line(&[sasl::plain_response(&login).as_bytes()]))
                }
                Status::Err(text) => self.refused(text),
                Status::Ok(_) => self.fail("unexpected +OK to AUTH PLAIN"),
            },
            State::CramAwaitChallenge(login) => match status {
                Status::Continue(challenge) => match sasl::cram_md5_challenge(challenge) {
                    Ok(c) => {
                        self.state = State::AuthSent;
                        Step::Send(line(&[sasl::cram_md5_response(&login, &c).as_bytes()]))
                    }
                    Err(e) => self.fail(e.to_string()),
                },
                Status::Err(text) => self.refused(text),
                Status::Ok(_) => self.fail("unexpected +OK to AUTH CRAM-MD5"),
            },
            State::AuthSent => match status {
                Status::Ok(_) => {
                    self.state = State::LoggedIn;
                    Step::LoggedIn
                }
                Status::Err(text) => self.refused(text),
                Status::Continue(_) => {
                    self.fail("the server asked for more SASL data than the mechanism has")
                }
            },
            state @ (State::AwaitTls | State::Ready | State::LoggedIn | State::Failed) => {
                self.state = state;
                self.fail(format!("unexpected reply while {}", self.phase()))
            }
        }
    }

    fn refused(&mut self, text: &[u8]) -> Step {
        self.state = State::Ready;
        Step::Refused(RespCode::of(text))
    }

    /// Starts logging in with `login`. Only valid when [`Step::Ready`] was
    /// returned (or after [`Step::Refused`]).
    pub fn authenticate(&mut self, login: Login) -> Step {
        if !matches!(self.state, State::Ready) {
            return self.fail(format!("internal: login attempted while {}", self.phase()));
        }
        match self.auth {
            UpstreamAuth::User => {
                let cmd = line(&[b"USER ", login.user().as_bytes()]);
                self.state = State::UserSent(login);
                Step::Send(cmd)
            }
            UpstreamAuth::Apop => {
                let Some(ts) = &self.timestamp else {
                    return self.fail("internal: APOP without a timestamp");
                };
                let digest = apop::digest(ts, login.password());
                self.state = State::AuthSent;
                Step::Send(line(&[
                    b"APOP ",
                    login.user().as_bytes(),
                    b" ",
                    digest.as_bytes(),
                ]))
            }
            UpstreamAuth::Plain => {
                let ir = sasl::plain_response(&login);
                let cmd = line(&[b"AUTH PLAIN ", ir.as_bytes()]);
                if cmd.len() <= MAX_COMMAND_LINE {
                    self.state = State::AuthSent;
                    Step::Send(cmd)
                } else {
                    // RFC 5034 §4: too long for an initial response.
                    self.state = State::PlainAwaitGo(login);
                    Step::Send(line(&[b"AUTH PLAIN"]))
                }
            }
            UpstreamAuth::CramMd5 => {
                self.state = State::CramAwaitChallenge(login);
                Step::Send(line(&[b"AUTH CRAM-MD5"]))
            }
            _ => self.fail(format!("`auth: {}` is not a POP3 login method", self.auth)),
        }
    }
}

/// Where the upstream machine stops for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    /// Connected, secured, capabilities known: a login may be tried.
    Ready,
    /// Logged in: start relaying.
    LoggedIn,
    /// The server refused the credentials; a new login may be tried.
    Refused(RespCode),
}

fn lift(step: Step) -> Result<WireStep<Done>, UpstreamError> {
    Ok(match step {
        Step::Read => WireStep::Io(Io::Read),
        Step::Send(bytes) => WireStep::Io(Io::Send(bytes)),
        Step::StartTls => WireStep::Io(Io::StartTls),
        Step::Ready => WireStep::Done(Done::Ready),
        Step::LoggedIn => WireStep::Done(Done::LoggedIn),
        Step::Refused(code) => WireStep::Done(Done::Refused(code)),
        Step::Fail(why) => return Err(UpstreamError::Protocol(why)),
    })
}

impl UpstreamLogin {
    /// The first wire step of a fresh connection.
    pub fn begin(&self) -> Result<WireStep<Done>, UpstreamError> {
        lift(self.start())
    }

    /// The wire steps of a login (after [`Done::Ready`] or [`Done::Refused`]).
    pub fn login(&mut self, login: Login) -> Result<WireStep<Done>, UpstreamError> {
        lift(self.authenticate(login))
    }
}

impl Machine for UpstreamLogin {
    type Reply = Reply;
    type Framer = StatusFramer;
    type Done = Done;

    fn phase(&self) -> &'static str {
        UpstreamLogin::phase(self)
    }

    fn framer(&self) -> StatusFramer {
        StatusFramer::new(self.expects_body())
    }

    fn on_reply(&mut self, reply: Reply) -> Result<WireStep<Done>, UpstreamError> {
        lift(UpstreamLogin::on_reply(self, &reply.status, &reply.body))
    }

    fn on_tls(&mut self) -> Result<WireStep<Done>, UpstreamError> {
        lift(UpstreamLogin::on_tls(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_core::Secret;

    fn login() -> Login {
        Login::new(b"tim", Secret::from("tanstaaf")).expect("login")
    }

    fn sent(step: Step) -> String {
        match step {
            Step::Send(b) => String::from_utf8(b.to_vec()).expect("ascii"),
            other => panic!("expected Send, got {other:?}"),
        }
    }

    fn body(lines: &[&str]) -> Vec<Vec<u8>> {
        lines.iter().map(|l| l.as_bytes().to_vec()).collect()
    }

    const GREETING: &[u8] = b"+OK POP3 server ready <1896.697170952@dbc.mtview.ca.us>\r\n";

    #[test]
    fn apop_over_plain_uses_the_rfc_digest() {
        let mut m = UpstreamLogin::new(Security::None, UpstreamAuth::Apop);
        assert!(matches!(m.start(), Step::Read));
        assert_eq!(sent(m.on_reply(GREETING, &[])), "CAPA\r\n");
        assert!(m.expects_body());
        assert!(matches!(
            m.on_reply(b"+OK\r\n", &body(&["TOP", "UIDL"])),
            Step::Ready
        ));
        assert_eq!(
            sent(m.authenticate(login())),
            "APOP tim c4c9334bac560ecc979e58001b3e22fb\r\n"
        );
        assert!(matches!(
            m.on_reply(b"+OK maildrop locked\r\n", &[]),
            Step::LoggedIn
        ));
    }

    #[test]
    fn apop_fails_closed_without_a_valid_timestamp() {
        for greeting in [
            &b"+OK ready\r\n"[..],
            b"+OK ready <bad ts@x>\r\n",
            b"+OK <noat>\r\n",
        ] {
            let mut m = UpstreamLogin::new(Security::None, UpstreamAuth::Apop);
            match m.on_reply(greeting, &[]) {
                Step::Fail(why) => assert!(why.contains("timestamp"), "{why}"),
                other => panic!("expected failure, got {other:?}"),
            }
        }
    }

    #[test]
    fn stls_is_required_and_capabilities_are_relearnt() {
        let mut m = UpstreamLogin::new(Security::Starttls, UpstreamAuth::CramMd5);
        assert_eq!(sent(m.on_reply(b"+OK hi\r\n", &[])), "CAPA\r\n");
        // Pre-TLS CAPA says CRAM-MD5 is missing; it must not matter after TLS.
        assert_eq!(
            sent(m.on_reply(b"+OK\r\n", &body(&["STLS", "SASL PLAIN"]))),
            "STLS\r\n"
        );
        assert!(matches!(
            m.on_reply(b"+OK go ahead\r\n", &[]),
            Step::StartTls
        ));
        assert_eq!(sent(m.on_tls()), "CAPA\r\n");
        assert!(m.capabilities().is_none(), "pre-TLS capabilities forgotten");
        assert!(matches!(
            m.on_reply(b"+OK\r\n", &body(&["SASL CRAM-MD5"])),
            Step::Ready
        ));
        assert_eq!(sent(m.authenticate(login())), "AUTH CRAM-MD5\r\n");
        let challenge = sasl::encode(b"<1896.697170952@postoffice.reston.mci.net>");
        let resp = sent(m.on_reply(format!("+ {challenge}\r\n").as_bytes(), &[]));
        let decoded = sasl::decode(resp.trim_end().as_bytes()).expect("b64");
        assert!(decoded.starts_with(b"tim "));
        assert!(matches!(m.on_reply(b"+OK\r\n", &[]), Step::LoggedIn));
    }

    #[test]
    fn stls_stripping_fails_closed() {
        // CAPA without STLS.
        let mut m = UpstreamLogin::new(Security::Starttls, UpstreamAuth::User);
        m.on_reply(b"+OK\r\n", &[]);
        assert!(matches!(
            m.on_reply(b"+OK\r\n", &body(&["USER"])),
            Step::Fail(_)
        ));
        // No CAPA, STLS refused.
        let mut m = UpstreamLogin::new(Security::Starttls, UpstreamAuth::User);
        m.on_reply(b"+OK\r\n", &[]);
        assert_eq!(sent(m.on_reply(b"-ERR no CAPA\r\n", &[])), "STLS\r\n");
        assert!(matches!(m.on_reply(b"-ERR no\r\n", &[]), Step::Fail(_)));
    }

    #[test]
    fn user_pass_and_refusal_then_retry() {
        let mut m = UpstreamLogin::new(Security::Tls, UpstreamAuth::User);
        m.on_reply(b"+OK\r\n", &[]);
        assert!(matches!(m.on_reply(b"-ERR\r\n", &[]), Step::Ready));
        assert_eq!(sent(m.authenticate(login())), "USER tim\r\n");
        assert_eq!(sent(m.on_reply(b"+OK\r\n", &[])), "PASS tanstaaf\r\n");
        assert!(matches!(
            m.on_reply(b"-ERR [IN-USE] locked\r\n", &[]),
            Step::Refused(RespCode::InUse)
        ));
        assert_eq!(sent(m.authenticate(login())), "USER tim\r\n");
        assert_eq!(sent(m.on_reply(b"+OK\r\n", &[])), "PASS tanstaaf\r\n");
        assert!(matches!(m.on_reply(b"+OK\r\n", &[]), Step::LoggedIn));
    }

    #[test]
    fn plain_needs_the_mechanism_and_uses_a_continuation_when_long() {
        let mut m = UpstreamLogin::new(Security::Tls, UpstreamAuth::Plain);
        m.on_reply(b"+OK\r\n", &[]);
        assert!(matches!(
            m.on_reply(b"+OK\r\n", &body(&["SASL CRAM-MD5"])),
            Step::Fail(_)
        ));

        let mut m = UpstreamLogin::new(Security::Tls, UpstreamAuth::Plain);
        m.on_reply(b"+OK\r\n", &[]);
        m.on_reply(b"+OK\r\n", &body(&["SASL PLAIN"]));
        assert_eq!(
            sent(m.authenticate(login())),
            "AUTH PLAIN AHRpbQB0YW5zdGFhZg==\r\n"
        );
        assert!(matches!(m.on_reply(b"+OK\r\n", &[]), Step::LoggedIn));

        let mut m = UpstreamLogin::new(Security::Tls, UpstreamAuth::Plain);
        m.on_reply(b"+OK\r\n", &[]);
        m.on_reply(b"-ERR\r\n", &[]);
        let long = Login::new(b"tim", Secret::from("x".repeat(300).as_str())).expect("login");
        assert_eq!(sent(m.authenticate(long)), "AUTH PLAIN\r\n");
        let resp = sent(m.on_reply(b"+ \r\n", &[]));
        assert!(resp.len() > 255);
        assert!(matches!(m.on_reply(b"+OK\r\n", &[]), Step::LoggedIn));
    }

    #[test]
    fn bad_cram_challenge_and_garbage_fail() {
        let mut m = UpstreamLogin::new(Security::Tls, UpstreamAuth::CramMd5);
        m.on_reply(b"+OK\r\n", &[]);
        m.on_reply(b"-ERR\r\n", &[]);
        sent(m.authenticate(login()));
        assert!(matches!(
            m.on_reply(b"+ !!notbase64\r\n", &[]),
            Step::Fail(_)
        ));

        let mut m = UpstreamLogin::new(Security::Tls, UpstreamAuth::User);
        assert!(matches!(
            m.on_reply(b"220 smtp.example ESMTP\r\n", &[]),
            Step::Fail(_)
        ));
    }
}
