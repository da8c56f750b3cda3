//! The upstream-facing setup and login: postern as an SMTP client.
//!
//! ```text
//!  Greeting ─► Ehlo ─(starttls)─► Starttls ─► [driver: TLS] ─► Ehlo (again) ─► Ready
//!     │          └─ 5xx ─► Helo ─► Ready (only when neither TLS upgrade nor AUTH is needed)
//!     └─(none, tls)─────────────────────────────────────────────────► Ready
//!  Ready ─ authenticate(login) ─► AUTH PLAIN | LOGIN | CRAM-MD5 ─► Authenticated | Refused
//! ```
//! Fail-closed rules: with `starttls` the server must offer and accept
//! STARTTLS; after TLS the extensions are forgotten and EHLO is sent again
//! (RFC 3207 §4.2); the route's AUTH mechanism must be offered after TLS or
//! the session fails — never a weaker one instead.

use postern_core::config::{Security, UpstreamAuth};
use postern_core::credentials::Login;
use postern_core::sasl;
use zeroize::Zeroizing;

use postern_core::upstream::{Io, Machine, Step as WireStep, UpstreamError};

use super::ehlo::Extensions;
use super::reply::{Reply, ReplyBuilder};

/// What the driver should do next.
#[derive(Debug)]
pub enum Step {
    /// Read the next reply.
    Read,
    /// Send these bytes (they may hold a secret: never log them), then read.
    Send(Zeroizing<Vec<u8>>),
    /// The server said go ahead: check nothing is buffered, handshake, then
    /// call [`UpstreamSetup::on_tls`].
    StartTls,
    /// Connected, secured, extensions known; a login may follow.
    Ready,
    /// The login succeeded.
    Authenticated,
    /// The server refused the login (its reply: 4xx temporary, 5xx not).
    Refused(Reply),
    /// The session cannot go on; the reason is safe to log.
    Fail(String),
}

#[derive(Debug)]
enum State {
    Greeting,
    Ehlo,
    Helo,
    Starttls,
    AwaitTls,
    Ready,
    PlainGo(Login),
    LoginUser(Login),
    LoginPass(Login),
    Cram(Login),
    AuthSent,
    Authenticated,
    Failed,
}

/// The upstream machine for one session.
#[derive(Debug)]
pub struct UpstreamSetup {
    security: Security,
    auth: UpstreamAuth,
    ehlo_name: String,
    state: State,
    tls: bool,
    extensions: Extensions,
    security_failure: bool,
}

fn line(parts: &[&[u8]]) -> Zeroizing<Vec<u8>> {
    let mut v = Zeroizing::new(Vec::with_capacity(64));
    for p in parts {
        v.extend_from_slice(p);
    }
    v.extend_from_slice(b"\r\n");
    v
}

impl UpstreamSetup {
    /// A machine for the route's `security` and `auth`; `ehlo_name` is what
    /// postern calls itself in EHLO (an address literal of its own socket).
    pub fn new(security: Security, auth: UpstreamAuth, ehlo_name: String, tls: bool) -> Self {
        Self {
            security,
            auth,
            ehlo_name,
            state: State::Greeting,
            tls,
            extensions: Extensions::default(),
            security_failure: false,
        }
    }

    /// The first step: read the greeting.
    pub fn start(&self) -> Step {
        Step::Read
    }

    /// The extensions of the current (post-TLS) connection.
    pub fn extensions(&self) -> &Extensions {
        &self.extensions
    }

    /// What the machine waits for, for logs and timeouts.
    pub fn phase(&self) -> &'static str {
        match self.state {
            State::Greeting => "greeting",
            State::Ehlo | State::Helo => "EHLO",
            State::Starttls | State::AwaitTls => "STARTTLS",
            State::Ready => "ready",
            State::PlainGo(_)
            | State::LoginUser(_)
            | State::LoginPass(_)
            | State::Cram(_)
            | State::AuthSent => "AUTH",
            State::Authenticated => "authenticated",
            State::Failed => "failed",
        }
    }

    /// Whether the session failed because TLS could not be had (the client
    /// is told so with enhanced status 4.7.0).
    pub fn failed_on_tls(&self) -> bool {
        self.security_failure
    }

    fn fail_tls(&mut self, why: impl Into<String>) -> Step {
        self.security_failure = true;
        self.fail(why)
    }

    fn fail(&mut self, why: impl Into<String>) -> Step {
        self.state = State::Failed;
        Step::Fail(why.into())
    }

    fn ehlo(&mut self) -> Step {
        self.state = State::Ehlo;
        Step::Send(line(&[b"EHLO ", self.ehlo_name.as_bytes()]))
    }

    fn mechanism(&self) -> Option<&'static str> {
        match self.auth {
            UpstreamAuth::Plain => Some("PLAIN"),
            UpstreamAuth::Login => Some("LOGIN"),
            UpstreamAuth::CramMd5 => Some("CRAM-MD5"),
            _ => None,
        }
    }

    /// After EHLO/HELO on the final connection: check what the route needs.
    fn ready(&mut self) -> Step {
        if let Some(mech) = self.mechanism() {
            if !self.extensions.has_auth(mech) {
                return self.fail(format!(
                    "the server does not offer AUTH {mech}{}; not trying another mechanism",
                    if self.tls { " (after TLS)" } else { "" }
                ));
            }
        }
        self.state = State::Ready;
        Step::Ready
    }

    /// The TLS upgrade after STARTTLS succeeded.
    pub fn on_tls(&mut self) -> Step {
        if !matches!(self.state, State::AwaitTls) {
            return self.fail("internal: TLS upgrade out of order");
        }
        self.tls = true;
        // RFC 3207 §4.2: forget everything learnt before TLS.
        self.extensions = Extensions::default();
        self.ehlo()
    }

    /// Handles one complete reply.
    pub fn on_reply(&mut self, reply: &Reply) -> Step {
        let code = reply.code();
        match std::mem::replace(&mut self.state, State::Failed) {
            State::Greeting if code == 220 => self.ehlo(),
            State::Greeting => self.fail(format!(
                "the server refused the connection: {}",
                reply.summary()
            )),
            State::Ehlo if code == 250 => {
                self.extensions = Extensions::from_ehlo(reply);
                if self.security == Security::Starttls && !self.tls {
                    if !self.extensions.has("STARTTLS") {
                        return self.fail_tls(
                            "the server does not offer STARTTLS (not in its EHLO reply); refusing to continue without TLS",
                        );
                    }
                    self.state = State::Starttls;
                    return Step::Send(line(&[b"STARTTLS"]));
                }
                self.ready()
            }
            State::Ehlo if (500..600).contains(&code) => {
                self.state = State::Helo;
                Step::Send(line(&[b"HELO ", self.ehlo_name.as_bytes()]))
            }
            State::Ehlo => self.fail(format!("EHLO failed: {}", reply.summary())),
            State::Helo if code == 250 => {
                self.extensions = Extensions::default();
                if self.security == Security::Starttls && !self.tls {
                    return self.fail_tls("the server refused EHLO, so it cannot offer STARTTLS; refusing to continue without TLS");
                }
                self.ready()
            }
            State::Helo => self.fail(format!("HELO failed: {}", reply.summary())),
            State::Starttls if code == 220 => {
                self.state = State::AwaitTls;
                Step::StartTls
            }
            State::Starttls => self.fail_tls(format!(
                "the server refused STARTTLS ({}); refusing to continue without TLS",
                reply.summary()
            )),
            State::PlainGo(login) if code == 334 => {
                self.state = State::AuthSent;
                Step::Send(line(&[sasl::plain_response(&login).as_bytes()]))
            }
            State::LoginUser(login) if code == 334 => {
                let user = sasl::encode(login.user().as_bytes());
                self.state = State::LoginPass(login);
                Step::Send(line(&[user.as_bytes()]))
            }
            State::LoginPass(login) if code == 334 => {
                let pass = Zeroizing::new(sasl::encode(login.password().expose()));
                self.state = State::AuthSent;
                Step::Send(line(&[pass.as_bytes()]))
            }
            State::Cram(login) if code == 334 => {
                match sasl::cram_md5_challenge(reply.last_text()) {
                    Ok(challenge) => {
                        self.state = State::AuthSent;
                        Step::Send(line(&[
                            sasl::cram_md5_response(&login, &challenge).as_bytes()
                        ]))
                    }
                    Err(e) => self.fail(e.to_string()),
                }
            }
            State::AuthSent if code == 235 => {
                self.state = State::Authenticated;
                Step::Authenticated
            }
            State::AuthSent if code == 334 => {
                self.fail("the server asked for more SASL data than the mechanism has")
            }
            State::PlainGo(_)
            | State::LoginUser(_)
            | State::LoginPass(_)
            | State::Cram(_)
            | State::AuthSent
                if code >= 400 =>
            {
                self.state = State::Ready;
                Step::Refused(reply.clone())
            }
            state => {
                let phase = {
                    self.state = state;
                    self.phase()
                };
                self.fail(format!(
                    "unexpected reply during {phase}: {}",
                    reply.summary()
                ))
            }
        }
    }

    /// Starts the route's login. Only valid after [`Step::Ready`] (or a
    /// [`Step::Refused`]).
    pub fn authenticate(&mut self, login: Login) -> Step {
        if !matches!(self.state, State::Ready) {
            return self.fail(format!("internal: login attempted during {}", self.phase()));
        }
        match self.auth {
            UpstreamAuth::Plain => {
                let ir = sasl::plain_response(&login);
                // RFC 4954 §4: an initial response may make the line long;
                // servers accept 12,288 octets, so only very long ones wait.
                if ir.len() < 900 {
                    self.state = State::AuthSent;
                    Step::Send(line(&[b"AUTH PLAIN ", ir.as_bytes()]))
                } else {
                    self.state = State::PlainGo(login);
                    Step::Send(line(&[b"AUTH PLAIN"]))
                }
            }
            UpstreamAuth::Login => {
                self.state = State::LoginUser(login);
                Step::Send(line(&[b"AUTH LOGIN"]))
            }
            UpstreamAuth::CramMd5 => {
                self.state = State::Cram(login);
                Step::Send(line(&[b"AUTH CRAM-MD5"]))
            }
            _ => self.fail(format!("`auth: {}` is not an SMTP login method", self.auth)),
        }
    }
}

/// Where the upstream machine stops for the client.
#[derive(Debug)]
pub enum Done {
    /// Connected, secured, extensions known; a login may follow.
    Ready,
    /// The login succeeded.
    Authenticated,
    /// The server refused the login (its reply: 4xx temporary, 5xx not).
    Refused(Reply),
}

impl UpstreamSetup {
    fn lift(&self, step: Step) -> Result<WireStep<Done>, UpstreamError> {
        Ok(match step {
            Step::Read => WireStep::Io(Io::Read),
            Step::Send(bytes) => WireStep::Io(Io::Send(bytes)),
            Step::StartTls => WireStep::Io(Io::StartTls),
            Step::Ready => WireStep::Done(Done::Ready),
            Step::Authenticated => WireStep::Done(Done::Authenticated),
            Step::Refused(reply) => WireStep::Done(Done::Refused(reply)),
            Step::Fail(why) if self.security_failure => return Err(UpstreamError::Insecure(why)),
            Step::Fail(why) => return Err(UpstreamError::Protocol(why)),
        })
    }

    /// The first wire step of a fresh connection.
    pub fn begin(&self) -> Result<WireStep<Done>, UpstreamError> {
        self.lift(self.start())
    }

    /// The wire steps of a login (after [`Done::Ready`] or [`Done::Refused`]).
    pub fn login(&mut self, login: Login) -> Result<WireStep<Done>, UpstreamError> {
        let step = self.authenticate(login);
        self.lift(step)
    }
}

impl Machine for UpstreamSetup {
    type Reply = Reply;
    type Framer = ReplyBuilder;
    type Done = Done;

    fn phase(&self) -> &'static str {
        UpstreamSetup::phase(self)
    }

    fn framer(&self) -> ReplyBuilder {
        ReplyBuilder::new()
    }

    fn on_reply(&mut self, reply: Reply) -> Result<WireStep<Done>, UpstreamError> {
        let step = UpstreamSetup::on_reply(self, &reply);
        self.lift(step)
    }

    fn on_tls(&mut self) -> Result<WireStep<Done>, UpstreamError> {
        let step = UpstreamSetup::on_tls(self);
        self.lift(step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_core::Secret;

    fn r(raw: &str) -> Reply {
        Reply::parse(raw.as_bytes()).expect("reply")
    }

    fn sent(step: Step) -> String {
        match step {
            Step::Send(b) => String::from_utf8(b.to_vec()).expect("ascii"),
            other => panic!("expected Send, got {other:?}"),
        }
    }

    fn login() -> Login {
        Login::new(b"tim", Secret::from("tanstaaftanstaaf")).expect("login")
    }

    fn setup(security: Security, auth: UpstreamAuth) -> UpstreamSetup {
        UpstreamSetup::new(
            security,
            auth,
            "[127.0.0.1]".to_owned(),
            security == Security::Tls,
        )
    }

    #[test]
    fn starttls_then_cram_md5_with_the_rfc_vector() {
        let mut m = setup(Security::Starttls, UpstreamAuth::CramMd5);
        assert_eq!(
            sent(m.on_reply(&r("220 smtp.example ESMTP\r\n"))),
            "EHLO [127.0.0.1]\r\n"
        );
        // Before TLS the server lists no CRAM-MD5; that must not matter.
        assert_eq!(
            sent(m.on_reply(&r("250-smtp.example\r\n250 STARTTLS\r\n"))),
            "STARTTLS\r\n"
        );
        assert!(matches!(
            m.on_reply(&r("220 2.0.0 go ahead\r\n")),
            Step::StartTls
        ));
        assert_eq!(sent(m.on_tls()), "EHLO [127.0.0.1]\r\n");
        assert!(
            !m.extensions().has("STARTTLS"),
            "pre-TLS extensions forgotten"
        );
        assert!(matches!(
            m.on_reply(&r("250-smtp.example\r\n250 AUTH CRAM-MD5 PLAIN\r\n")),
            Step::Ready
        ));
        assert_eq!(sent(m.authenticate(login())), "AUTH CRAM-MD5\r\n");
        let challenge = sasl::encode(b"<1896.697170952@postoffice.reston.mci.net>");
        let resp = sent(m.on_reply(&r(&format!("334 {challenge}\r\n"))));
        assert_eq!(resp, "dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw\r\n");
        assert!(matches!(
            m.on_reply(&r("235 2.7.0 ok\r\n")),
            Step::Authenticated
        ));
    }

    #[test]
    fn starttls_stripping_fails_closed() {
        // Not offered.
        let mut m = setup(Security::Starttls, UpstreamAuth::Plain);
        m.on_reply(&r("220 x\r\n"));
        assert!(matches!(
            m.on_reply(&r("250-x\r\n250 AUTH PLAIN\r\n")),
            Step::Fail(_)
        ));
        // Refused.
        let mut m = setup(Security::Starttls, UpstreamAuth::Plain);
        m.on_reply(&r("220 x\r\n"));
        m.on_reply(&r("250-x\r\n250 STARTTLS\r\n"));
        assert!(matches!(
            m.on_reply(&r("454 4.7.0 TLS not available\r\n")),
            Step::Fail(_)
        ));
        // EHLO refused, only HELO works.
        let mut m = setup(Security::Starttls, UpstreamAuth::None);
        m.on_reply(&r("220 x\r\n"));
        assert_eq!(
            sent(m.on_reply(&r("502 5.5.2 no EHLO\r\n"))),
            "HELO [127.0.0.1]\r\n"
        );
        assert!(matches!(m.on_reply(&r("250 x\r\n")), Step::Fail(_)));
    }

    #[test]
    fn helo_fallback_only_without_tls_upgrade_or_auth() {
        let mut m = setup(Security::Tls, UpstreamAuth::None);
        m.on_reply(&r("220 x\r\n"));
        sent(m.on_reply(&r("500 what\r\n")));
        assert!(matches!(m.on_reply(&r("250 x\r\n")), Step::Ready));

        let mut m = setup(Security::Tls, UpstreamAuth::Login);
        m.on_reply(&r("220 x\r\n"));
        sent(m.on_reply(&r("500 what\r\n")));
        assert!(matches!(m.on_reply(&r("250 x\r\n")), Step::Fail(_)));
    }

    #[test]
    fn mechanism_must_be_offered() {
        let mut m = setup(Security::Tls, UpstreamAuth::CramMd5);
        m.on_reply(&r("220 x\r\n"));
        match m.on_reply(&r("250-x\r\n250 AUTH PLAIN LOGIN\r\n")) {
            Step::Fail(why) => assert!(why.contains("CRAM-MD5"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn login_and_plain_exchanges_and_refusals() {
        let mut m = setup(Security::Tls, UpstreamAuth::Login);
        m.on_reply(&r("220 x\r\n"));
        assert!(matches!(
            m.on_reply(&r("250-x\r\n250 AUTH LOGIN\r\n")),
            Step::Ready
        ));
        assert_eq!(sent(m.authenticate(login())), "AUTH LOGIN\r\n");
        assert_eq!(sent(m.on_reply(&r("334 VXNlcm5hbWU6\r\n"))), "dGlt\r\n");
        assert_eq!(
            sent(m.on_reply(&r("334 UGFzc3dvcmQ6\r\n"))),
            format!("{}\r\n", sasl::encode(b"tanstaaftanstaaf"))
        );
        match m.on_reply(&r("535 5.7.8 bad\r\n")) {
            Step::Refused(reply) => assert_eq!(reply.code(), 535),
            other => panic!("{other:?}"),
        }
        // Ready again: another attempt is possible.
        assert_eq!(sent(m.authenticate(login())), "AUTH LOGIN\r\n");

        let mut m = setup(Security::Tls, UpstreamAuth::Plain);
        m.on_reply(&r("220 x\r\n"));
        m.on_reply(&r("250-x\r\n250 AUTH=PLAIN\r\n"));
        assert_eq!(
            sent(m.authenticate(login())),
            "AUTH PLAIN AHRpbQB0YW5zdGFhZnRhbnN0YWFm\r\n"
        );
        match m.on_reply(&r("454 4.7.0 try later\r\n")) {
            Step::Refused(reply) => assert!(reply.is_transient()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_greeting_and_bad_challenge_fail() {
        let mut m = setup(Security::None, UpstreamAuth::CramMd5);
        assert!(matches!(m.on_reply(&r("554 go away\r\n")), Step::Fail(_)));
        let mut m = setup(Security::None, UpstreamAuth::CramMd5);
        m.on_reply(&r("220 x\r\n"));
        m.on_reply(&r("250-x\r\n250 AUTH CRAM-MD5\r\n"));
        sent(m.authenticate(login()));
        assert!(matches!(m.on_reply(&r("334 ***\r\n")), Step::Fail(_)));
    }
}
