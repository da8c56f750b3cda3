//! The upstream side: postern as a POP3 client, in two typed machines.
//!
//! ```text
//!  Connect:  Greeting ──(starttls)──► CapaBeforeTls ─► Stls ─► [driver: TLS] ─┐
//!               │                                                            ▼
//!               └──(none, tls)─────────────────────────────────────────► Capa ─► Done(Ready)
//!  Ready::login(login) ─► Login: USER/PASS | APOP | AUTH PLAIN | AUTH CRAM-MD5
//!                               | AUTH XOAUTH2 | AUTH OAUTHBEARER (token after `+ `)
//!               ─► Done(LoggedIn) | Done(Refused) (the same Ready may try again)
//! ```
//! Fail-closed rules: with `starttls` the server must offer and accept STLS
//! (no CAPA listing STLS, or `-ERR` to STLS, fails the session); after TLS
//! every earlier capability is forgotten and CAPA is asked again (RFC 2595
//! §4); APOP needs a valid msg-id timestamp and never falls back to
//! USER/PASS; a SASL mechanism the server's CAPA does not list is not tried.
//! A [`Ready`] for APOP exists only with the greeting's timestamp.

use postern_core::config::{Security, UpstreamAuth};
use postern_core::credentials::Login;
use postern_core::sasl;
use postern_core::upstream::{printable, Machine, Seen, Step, UpstreamError};

use super::apop;
use super::command::MAX_COMMAND_LINE;
use super::framer::{Reply, StatusFramer};
use super::reply::{parse_status, Capabilities, RespCode, Status};

/// How the route logs in, with what the connection must provide for it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Method {
    User,
    Apop(Vec<u8>),
    Plain,
    CramMd5,
    Bearer(Bearer),
}

/// A bearer-token mechanism, with what OAUTHBEARER names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Bearer {
    Xoauth2,
    OauthBearer { host: String, port: u16 },
}

impl Bearer {
    fn name(&self) -> &'static [u8] {
        match self {
            Self::Xoauth2 => b"XOAUTH2",
            Self::OauthBearer { .. } => b"OAUTHBEARER",
        }
    }

    fn response(&self, login: &Login) -> zeroize::Zeroizing<String> {
        match self {
            Self::Xoauth2 => sasl::xoauth2_response(login),
            Self::OauthBearer { host, port } => sasl::oauthbearer_response(login, host, *port),
        }
    }

    fn error_ack(&self) -> &'static [u8] {
        sasl::bearer_error_ack(matches!(self, Self::OauthBearer { .. }))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnectState {
    Greeting,
    CapaBeforeTls,
    Stls,
    AwaitTls,
    Capa,
    Failed,
}

/// Connects: greeting, STLS when the route wants it, CAPA.
#[derive(Debug)]
pub struct Connect {
    security: Security,
    auth: UpstreamAuth,
    state: ConnectState,
    timestamp: Option<Vec<u8>>,
    target: Option<(String, u16)>,
    seen: Seen,
}

/// Connected, secured and capabilities known: ready for a login.
#[derive(Debug, Clone)]
pub struct Ready {
    method: Method,
    capabilities: Option<Capabilities>,
    seen: Seen,
}

/// How a login ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginDone {
    /// Logged in: start relaying.
    LoggedIn,
    /// The server refused the credentials; the same [`Ready`] may try again.
    Refused(RespCode),
}

#[derive(Debug)]
enum LoginState {
    UserSent(Login),
    PlainAwaitGo(Login),
    CramAwaitChallenge(Login),
    BearerAwaitGo(Login, Bearer),
    BearerSent(Bearer),
    BearerErrorAcked,
    AuthSent,
    Over,
}

/// One login attempt on a [`Ready`] connection.
#[derive(Debug)]
pub struct LoginMachine {
    state: LoginState,
    bearer_error: Option<String>,
}

impl LoginMachine {
    /// The server's bearer error challenge in words (`status=401
    /// scope=...`), when a token was refused.
    pub fn bearer_error(&self) -> Option<&str> {
        self.bearer_error.as_deref()
    }
}

fn fail<T>(why: impl Into<String>) -> Result<T, UpstreamError> {
    Err(UpstreamError::Protocol(why.into()))
}

fn insecure<T>(why: &str) -> Result<T, UpstreamError> {
    Err(UpstreamError::Insecure(why.to_owned()))
}

fn status<'a>(reply: &'a Reply, phase: &str) -> Result<Status<'a>, UpstreamError> {
    match parse_status(&reply.status) {
        Some(s) => Ok(s),
        None => fail(format!(
            "the server's reply is not POP3 ({}) during {phase}",
            printable(&reply.status)
        )),
    }
}

impl Connect {
    /// A machine for the route's `security` and `auth` (a POP3 method).
    pub fn new(security: Security, auth: UpstreamAuth) -> Self {
        Self {
            security,
            auth,
            state: ConnectState::Greeting,
            timestamp: None,
            target: None,
            seen: Seen::default(),
        }
    }

    /// The host name and port the route connects to, which OAUTHBEARER
    /// names to the server (RFC 7628 §3.1).
    pub fn target(mut self, host: &str, port: u16) -> Self {
        self.target = Some((host.to_owned(), port));
        self
    }

    /// The first step: read the greeting.
    pub fn begin(&self) -> Step<Ready> {
        Step::read()
    }

    fn capa(&mut self, before_tls: bool) -> Step<Ready> {
        self.state = if before_tls {
            ConnectState::CapaBeforeTls
        } else {
            ConnectState::Capa
        };
        Step::send(&[b"CAPA"])
    }

    fn greeting(&mut self, status: Status<'_>) -> Result<Step<Ready>, UpstreamError> {
        match status {
            Status::Ok(text) => {
                self.seen.greeting = printable(text);
                if self.auth == UpstreamAuth::Apop {
                    match apop::timestamp(text) {
                        Ok(ts) => self.timestamp = Some(ts.to_vec()),
                        Err(e) => return fail(e.to_string()),
                    }
                }
                Ok(self.capa(self.security == Security::Starttls))
            }
            Status::Err(text) => fail(format!(
                "the server refused the connection: {}",
                printable(text)
            )),
            Status::Continue(_) => fail("the server's greeting is not POP3"),
        }
    }

    fn ready(&mut self, caps: Option<Capabilities>) -> Result<Step<Ready>, UpstreamError> {
        let (method, needed) = match self.auth {
            UpstreamAuth::User => (Method::User, None),
            UpstreamAuth::Apop => match self.timestamp.take() {
                Some(ts) => (Method::Apop(ts), None),
                None => return fail("APOP needs the greeting's timestamp"),
            },
            UpstreamAuth::Plain => (Method::Plain, Some("PLAIN")),
            UpstreamAuth::CramMd5 => (Method::CramMd5, Some("CRAM-MD5")),
            UpstreamAuth::Xoauth2 => (Method::Bearer(Bearer::Xoauth2), Some("XOAUTH2")),
            UpstreamAuth::Oauthbearer => match self.target.clone() {
                Some((host, port)) => (
                    Method::Bearer(Bearer::OauthBearer { host, port }),
                    Some("OAUTHBEARER"),
                ),
                None => return fail("OAUTHBEARER needs the upstream's host and port"),
            },
            other => return fail(format!("`auth: {other}` is not a POP3 login method")),
        };
        if let (Some(mech), Some(caps)) = (needed, &caps) {
            if !caps.has_sasl(mech) {
                return fail(format!(
                    "the server does not offer SASL {mech} (not in its CAPA); not trying another method"
                ));
            }
        }
        Ok(Step::Done(Ready {
            method,
            capabilities: caps,
            seen: std::mem::take(&mut self.seen),
        }))
    }
}

impl Machine for Connect {
    type Reply = Reply;
    type Framer = StatusFramer;
    type Done = Ready;

    fn phase(&self) -> &'static str {
        match self.state {
            ConnectState::Greeting => "greeting",
            ConnectState::CapaBeforeTls | ConnectState::Capa => "CAPA",
            ConnectState::Stls | ConnectState::AwaitTls => "STLS",
            ConnectState::Failed => "failed",
        }
    }

    fn framer(&self) -> StatusFramer {
        StatusFramer::new(matches!(
            self.state,
            ConnectState::CapaBeforeTls | ConnectState::Capa
        ))
    }

    fn on_reply(&mut self, reply: Reply) -> Result<Step<Ready>, UpstreamError> {
        let phase = self.phase();
        let state = std::mem::replace(&mut self.state, ConnectState::Failed);
        let status = status(&reply, phase)?;
        match state {
            ConnectState::Greeting => self.greeting(status),
            ConnectState::CapaBeforeTls => match status {
                Status::Ok(_) => {
                    let caps = Capabilities::parse(reply.body.iter().map(Vec::as_slice));
                    self.seen.before_tls = Some(
                        caps.lines()
                            .map(|l| String::from_utf8_lossy(l).into_owned())
                            .collect(),
                    );
                    if !caps.has("STLS") {
                        return insecure(
                            "the server does not offer STLS (its CAPA has no STLS); refusing to continue without TLS",
                        );
                    }
                    self.state = ConnectState::Stls;
                    Ok(Step::send(&[b"STLS"]))
                }
                // No CAPA: STLS may still work; a refusal fails below.
                Status::Err(_) => {
                    self.state = ConnectState::Stls;
                    Ok(Step::send(&[b"STLS"]))
                }
                Status::Continue(_) => fail("unexpected continuation to CAPA"),
            },
            ConnectState::Stls => match status {
                Status::Ok(_) => {
                    self.state = ConnectState::AwaitTls;
                    Ok(Step::start_tls())
                }
                _ => insecure("the server refused STLS; refusing to continue without TLS"),
            },
            ConnectState::Capa => {
                let caps = match status {
                    Status::Ok(_) => {
                        Some(Capabilities::parse(reply.body.iter().map(Vec::as_slice)))
                    }
                    _ => None,
                };
                self.ready(caps)
            }
            ConnectState::AwaitTls | ConnectState::Failed => {
                fail(format!("unexpected reply during {phase}"))
            }
        }
    }

    fn on_tls(&mut self) -> Result<Step<Ready>, UpstreamError> {
        if self.state != ConnectState::AwaitTls {
            return fail("TLS upgrade out of order");
        }
        // RFC 2595 §4: forget everything learnt before TLS (CAPA is asked again).
        Ok(self.capa(false))
    }
}

impl Ready {
    /// The capabilities learnt on the current (post-TLS) connection.
    pub fn capabilities(&self) -> Option<&Capabilities> {
        self.capabilities.as_ref()
    }

    /// What the connection showed on the way (greeting, CAPA before TLS).
    pub fn seen(&self) -> &Seen {
        &self.seen
    }

    /// The APOP timestamp of the server's greeting (`auth: apop` only).
    pub fn timestamp(&self) -> Option<&[u8]> {
        match &self.method {
            Method::Apop(ts) => Some(ts),
            _ => None,
        }
    }

    /// Starts a login with the route's method.
    pub fn login(&self, login: Login) -> (LoginMachine, Step<LoginDone>) {
        let (state, step) = match &self.method {
            Method::User => {
                let step = Step::send(&[b"USER ", login.user().as_bytes()]);
                (LoginState::UserSent(login), step)
            }
            Method::Apop(ts) => {
                let digest = apop::digest(ts, login.password());
                let step =
                    Step::send(&[b"APOP ", login.user().as_bytes(), b" ", digest.as_bytes()]);
                (LoginState::AuthSent, step)
            }
            Method::Plain => {
                let ir = sasl::plain_response(&login);
                let len = b"AUTH PLAIN ".len() + ir.len() + 2;
                if len <= MAX_COMMAND_LINE {
                    (
                        LoginState::AuthSent,
                        Step::send(&[b"AUTH PLAIN ", ir.as_bytes()]),
                    )
                } else {
                    // RFC 5034 §4: too long for an initial response.
                    (
                        LoginState::PlainAwaitGo(login),
                        Step::send(&[b"AUTH PLAIN"]),
                    )
                }
            }
            Method::CramMd5 => (
                LoginState::CramAwaitChallenge(login),
                Step::send(&[b"AUTH CRAM-MD5"]),
            ),
            // Microsoft's documented two-line form: a token is far longer
            // than a POP3 command line may be (RFC 2449: 255 octets).
            Method::Bearer(b) => {
                let step = Step::send(&[b"AUTH ", b.name()]);
                (LoginState::BearerAwaitGo(login, b.clone()), step)
            }
        };
        (
            LoginMachine {
                state,
                bearer_error: None,
            },
            step,
        )
    }
}

impl Machine for LoginMachine {
    type Reply = Reply;
    type Framer = StatusFramer;
    type Done = LoginDone;

    fn phase(&self) -> &'static str {
        "login"
    }

    fn framer(&self) -> StatusFramer {
        StatusFramer::new(false)
    }

    fn on_reply(&mut self, reply: Reply) -> Result<Step<LoginDone>, UpstreamError> {
        let status = status(&reply, "login")?;
        let refused = |text: &[u8]| Ok(Step::Done(LoginDone::Refused(RespCode::of(text))));
        match std::mem::replace(&mut self.state, LoginState::Over) {
            LoginState::UserSent(login) => match status {
                Status::Ok(_) => {
                    self.state = LoginState::AuthSent;
                    Ok(Step::send(&[b"PASS ", login.password().expose()]))
                }
                Status::Err(text) => refused(text),
                Status::Continue(_) => fail("unexpected continuation to USER"),
            },
            LoginState::PlainAwaitGo(login) => match status {
                Status::Continue(_) => {
                    self.state = LoginState::AuthSent;
                    Ok(Step::send(&[sasl::plain_response(&login).as_bytes()]))
                }
                Status::Err(text) => refused(text),
                Status::Ok(_) => fail("unexpected +OK to AUTH PLAIN"),
            },
            LoginState::CramAwaitChallenge(login) => match status {
                Status::Continue(challenge) => match sasl::cram_md5_challenge(challenge) {
                    Ok(c) => {
                        self.state = LoginState::AuthSent;
                        Ok(Step::send(
                            &[sasl::cram_md5_response(&login, &c).as_bytes()],
                        ))
                    }
                    Err(e) => fail(e.to_string()),
                },
                Status::Err(text) => refused(text),
                Status::Ok(_) => fail("unexpected +OK to AUTH CRAM-MD5"),
            },
            LoginState::BearerAwaitGo(login, b) => match status {
                Status::Continue(_) => {
                    let response = b.response(&login);
                    self.state = LoginState::BearerSent(b);
                    Ok(Step::send(&[response.as_bytes()]))
                }
                Status::Err(text) => refused(text),
                Status::Ok(_) => fail("unexpected +OK to AUTH before the token was sent"),
            },
            LoginState::BearerSent(b) => match status {
                Status::Ok(_) => Ok(Step::Done(LoginDone::LoggedIn)),
                Status::Err(text) => refused(text),
                // The token was refused: the server explains in a JSON
                // challenge and waits for a dummy response before its -ERR.
                Status::Continue(challenge) => {
                    self.bearer_error = Some(sasl::bearer_error_summary(challenge));
                    self.state = LoginState::BearerErrorAcked;
                    Ok(Step::send(&[b.error_ack()]))
                }
            },
            LoginState::BearerErrorAcked => match status {
                Status::Err(text) => refused(text),
                Status::Ok(_) => fail("the server accepted a token it had just refused"),
                Status::Continue(_) => fail("the server sent a second error challenge"),
            },
            LoginState::AuthSent => match status {
                Status::Ok(_) => Ok(Step::Done(LoginDone::LoggedIn)),
                Status::Err(text) => refused(text),
                Status::Continue(_) => {
                    fail("the server asked for more SASL data than the mechanism has")
                }
            },
            LoginState::Over => fail("unexpected reply after the login ended"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_core::upstream::Io;
    use postern_core::Secret;

    fn login() -> Login {
        Login::new(b"tim", Secret::from("tanstaaf")).expect("login")
    }

    fn reply(status: &[u8], body: &[&str]) -> Reply {
        Reply {
            status: status.to_vec(),
            body: body.iter().map(|l| l.as_bytes().to_vec()).collect(),
        }
    }

    fn sent<D: std::fmt::Debug>(step: Result<Step<D>, UpstreamError>) -> String {
        let step = step.expect("a step, not a failure");
        String::from_utf8(step.sent().expect("a command").to_vec()).expect("ascii")
    }

    fn ready(step: Result<Step<Ready>, UpstreamError>) -> Ready {
        step.expect("a step").into_done().expect("Ready")
    }

    fn done(step: Result<Step<LoginDone>, UpstreamError>) -> LoginDone {
        step.expect("a step")
            .into_done()
            .expect("the end of the login")
    }

    fn failure<D: std::fmt::Debug>(step: Result<Step<D>, UpstreamError>) -> UpstreamError {
        step.expect_err("a failure")
    }

    const GREETING: &[u8] = b"+OK POP3 server ready <1896.697170952@dbc.mtview.ca.us>\r\n";

    #[test]
    fn apop_over_plain_uses_the_rfc_digest() {
        let mut m = Connect::new(Security::None, UpstreamAuth::Apop);
        assert!(matches!(m.begin(), Step::Io(Io::Read)));
        assert_eq!(sent(m.on_reply(reply(GREETING, &[]))), "CAPA\r\n");
        assert!(m.framer().expects_body());
        let r = ready(m.on_reply(reply(b"+OK\r\n", &["TOP", "UIDL"])));
        assert_eq!(
            r.timestamp(),
            Some(&b"<1896.697170952@dbc.mtview.ca.us>"[..])
        );
        let (mut l, first) = r.login(login());
        assert_eq!(
            sent(Ok(first)),
            "APOP tim c4c9334bac560ecc979e58001b3e22fb\r\n"
        );
        assert_eq!(
            done(l.on_reply(reply(b"+OK maildrop locked\r\n", &[]))),
            LoginDone::LoggedIn
        );
    }

    #[test]
    fn apop_fails_closed_without_a_valid_timestamp() {
        for greeting in [
            &b"+OK ready\r\n"[..],
            b"+OK ready <bad ts@x>\r\n",
            b"+OK <noat>\r\n",
        ] {
            let mut m = Connect::new(Security::None, UpstreamAuth::Apop);
            let e = failure(m.on_reply(reply(greeting, &[])));
            assert!(e.to_string().contains("timestamp"), "{e}");
        }
    }

    #[test]
    fn stls_is_required_and_capabilities_are_relearnt() {
        let mut m = Connect::new(Security::Starttls, UpstreamAuth::CramMd5);
        assert_eq!(sent(m.on_reply(reply(b"+OK hi\r\n", &[]))), "CAPA\r\n");
        // Pre-TLS CAPA says CRAM-MD5 is missing; it must not matter after TLS.
        assert_eq!(
            sent(m.on_reply(reply(b"+OK\r\n", &["STLS", "SASL PLAIN"]))),
            "STLS\r\n"
        );
        assert!(matches!(
            m.on_reply(reply(b"+OK go ahead\r\n", &[])),
            Ok(Step::Io(Io::StartTls))
        ));
        assert_eq!(sent(m.on_tls()), "CAPA\r\n");
        let r = ready(m.on_reply(reply(b"+OK\r\n", &["SASL CRAM-MD5"])));
        assert!(
            r.capabilities().is_some_and(|c| !c.has("STLS")),
            "pre-TLS capabilities forgotten"
        );
        let (mut l, first) = r.login(login());
        assert_eq!(sent(Ok(first)), "AUTH CRAM-MD5\r\n");
        let challenge = sasl::encode(b"<1896.697170952@postoffice.reston.mci.net>");
        let resp = sent(l.on_reply(reply(format!("+ {challenge}\r\n").as_bytes(), &[])));
        let decoded = sasl::decode(resp.trim_end().as_bytes()).expect("b64");
        assert!(decoded.starts_with(b"tim "));
        assert_eq!(
            done(l.on_reply(reply(b"+OK\r\n", &[]))),
            LoginDone::LoggedIn
        );
    }

    #[test]
    fn stls_stripping_fails_closed() {
        // CAPA without STLS.
        let mut m = Connect::new(Security::Starttls, UpstreamAuth::User);
        sent(m.on_reply(reply(b"+OK\r\n", &[])));
        assert!(failure(m.on_reply(reply(b"+OK\r\n", &["USER"]))).is_tls());
        // No CAPA, STLS refused.
        let mut m = Connect::new(Security::Starttls, UpstreamAuth::User);
        sent(m.on_reply(reply(b"+OK\r\n", &[])));
        assert_eq!(
            sent(m.on_reply(reply(b"-ERR no CAPA\r\n", &[]))),
            "STLS\r\n"
        );
        assert!(failure(m.on_reply(reply(b"-ERR no\r\n", &[]))).is_tls());
        // TLS out of order is refused.
        let mut m = Connect::new(Security::Starttls, UpstreamAuth::User);
        failure(m.on_tls());
    }

    #[test]
    fn user_pass_and_refusal_then_retry() {
        let mut m = Connect::new(Security::Tls, UpstreamAuth::User);
        sent(m.on_reply(reply(b"+OK\r\n", &[])));
        let r = ready(m.on_reply(reply(b"-ERR\r\n", &[])));
        let (mut l, first) = r.login(login());
        assert_eq!(sent(Ok(first)), "USER tim\r\n");
        assert_eq!(
            sent(l.on_reply(reply(b"+OK\r\n", &[]))),
            "PASS tanstaaf\r\n"
        );
        assert_eq!(
            done(l.on_reply(reply(b"-ERR [IN-USE] locked\r\n", &[]))),
            LoginDone::Refused(RespCode::InUse)
        );
        failure(l.on_reply(reply(b"+OK\r\n", &[])));
        let (mut l, first) = r.login(login());
        assert_eq!(sent(Ok(first)), "USER tim\r\n");
        assert_eq!(
            sent(l.on_reply(reply(b"+OK\r\n", &[]))),
            "PASS tanstaaf\r\n"
        );
        assert_eq!(
            done(l.on_reply(reply(b"+OK\r\n", &[]))),
            LoginDone::LoggedIn
        );
    }

    #[test]
    fn plain_needs_the_mechanism_and_uses_a_continuation_when_long() {
        let mut m = Connect::new(Security::Tls, UpstreamAuth::Plain);
        sent(m.on_reply(reply(b"+OK\r\n", &[])));
        failure(m.on_reply(reply(b"+OK\r\n", &["SASL CRAM-MD5"])));

        let mut m = Connect::new(Security::Tls, UpstreamAuth::Plain);
        sent(m.on_reply(reply(b"+OK\r\n", &[])));
        let r = ready(m.on_reply(reply(b"+OK\r\n", &["SASL PLAIN"])));
        let (mut l, first) = r.login(login());
        assert_eq!(sent(Ok(first)), "AUTH PLAIN AHRpbQB0YW5zdGFhZg==\r\n");
        assert_eq!(
            done(l.on_reply(reply(b"+OK\r\n", &[]))),
            LoginDone::LoggedIn
        );

        let mut m = Connect::new(Security::Tls, UpstreamAuth::Plain);
        sent(m.on_reply(reply(b"+OK\r\n", &[])));
        let r = ready(m.on_reply(reply(b"-ERR\r\n", &[])));
        let long = Login::new(b"tim", Secret::from("x".repeat(300).as_str())).expect("login");
        let (mut l, first) = r.login(long);
        assert_eq!(sent(Ok(first)), "AUTH PLAIN\r\n");
        let resp = sent(l.on_reply(reply(b"+ \r\n", &[])));
        assert!(resp.len() > 255);
        assert_eq!(
            done(l.on_reply(reply(b"+OK\r\n", &[]))),
            LoginDone::LoggedIn
        );
    }

    #[test]
    fn bad_cram_challenge_and_garbage_fail() {
        let mut m = Connect::new(Security::Tls, UpstreamAuth::CramMd5);
        sent(m.on_reply(reply(b"+OK\r\n", &[])));
        let r = ready(m.on_reply(reply(b"-ERR\r\n", &[])));
        let (mut l, first) = r.login(login());
        sent(Ok(first));
        failure(l.on_reply(reply(b"+ !!notbase64\r\n", &[])));

        let mut m = Connect::new(Security::Tls, UpstreamAuth::User);
        failure(m.on_reply(reply(b"220 smtp.example ESMTP\r\n", &[])));
        // Not a POP3 method at all.
        let mut m = Connect::new(Security::Tls, UpstreamAuth::Login);
        sent(m.on_reply(reply(b"+OK\r\n", &[])));
        failure(m.on_reply(reply(b"-ERR\r\n", &[])));
    }
}
