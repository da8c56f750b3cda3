//! The upstream side: postern as an SMTP client, in two typed machines.
//!
//! ```text
//!  Connect: Greeting ─► Ehlo ─(starttls)─► Starttls ─► [driver: TLS] ─► Ehlo (again) ─► Done(Ready)
//!              │          └─ 5xx ─► Helo ─► Done(Ready) (only when neither TLS upgrade nor AUTH is needed)
//!              └─(none, tls)────────────────────────────────────────────────────► Done(Ready)
//!  Ready::login(login) ─► Login: AUTH PLAIN | LOGIN | CRAM-MD5 | XOAUTH2 | OAUTHBEARER
//!                         ─► Done(Authenticated) | Done(Refused)
//! ```
//! Fail-closed rules: with `starttls` the server must offer and accept
//! STARTTLS; after TLS the extensions are forgotten and EHLO is sent again
//! (RFC 3207 §4.2); the route's AUTH mechanism must be offered after TLS or
//! the session fails — never a weaker one instead. Security failures are
//! [`UpstreamError::Insecure`], so clients hear `421 4.7.0`.

use postern_core::config::{Security, UpstreamAuth};
use postern_core::credentials::Login;
use postern_core::sasl;
use postern_core::upstream::{Machine, Seen, Step, UpstreamError};
use zeroize::Zeroizing;

use super::ehlo::Extensions;
use super::reply::{Reply, ReplyBuilder};

/// The route's login mechanism.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Mechanism {
    Plain,
    Login,
    CramMd5,
    Xoauth2,
    OauthBearer { host: String, port: u16 },
}

impl Mechanism {
    fn of(
        auth: UpstreamAuth,
        target: Option<&(String, u16)>,
    ) -> Result<Option<Self>, UpstreamError> {
        match auth {
            UpstreamAuth::None => Ok(None),
            UpstreamAuth::Plain => Ok(Some(Self::Plain)),
            UpstreamAuth::Login => Ok(Some(Self::Login)),
            UpstreamAuth::CramMd5 => Ok(Some(Self::CramMd5)),
            UpstreamAuth::Xoauth2 => Ok(Some(Self::Xoauth2)),
            UpstreamAuth::Oauthbearer => match target {
                Some((host, port)) => Ok(Some(Self::OauthBearer {
                    host: host.clone(),
                    port: *port,
                })),
                None => fail("OAUTHBEARER needs the upstream's host and port"),
            },
            other => fail(format!("`auth: {other}` is not an SMTP login method")),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::Login => "LOGIN",
            Self::CramMd5 => "CRAM-MD5",
            Self::Xoauth2 => "XOAUTH2",
            Self::OauthBearer { .. } => "OAUTHBEARER",
        }
    }
}

/// RFC 4954 §4: the AUTH command is still subject to SMTP's line length
/// (RFC 5321 §4.5.3.1.4: 512 octets, CRLF included), and a client must not
/// use an initial response that would make it longer; such a response goes
/// on its own line after the server's `334` go-ahead (where RFC 4954 has
/// servers take 12,288 octets).
const MAX_COMMAND_LINE: usize = 512;

/// Whether `AUTH {mechanism} {initial_response}` and its CRLF fit in an
/// SMTP command line.
fn fits_auth_line(mechanism: &str, initial_response: &str) -> bool {
    "AUTH ".len() + mechanism.len() + " ".len() + initial_response.len() + "\r\n".len()
        <= MAX_COMMAND_LINE
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnectState {
    Greeting,
    Ehlo,
    Helo,
    Starttls,
    AwaitTls,
    Failed,
}

/// Connects: greeting, EHLO (HELO fallback), STARTTLS when the route wants it.
#[derive(Debug)]
pub struct Connect {
    security: Security,
    auth: UpstreamAuth,
    ehlo_name: String,
    target: Option<(String, u16)>,
    state: ConnectState,
    tls: bool,
    extensions: Extensions,
    seen: Seen,
}

/// Connected, secured, extensions known; a login may follow.
#[derive(Debug, Clone)]
pub struct Ready {
    mechanism: Option<Mechanism>,
    extensions: Extensions,
    seen: Seen,
}

/// How a login ended.
#[derive(Debug)]
pub enum LoginDone {
    /// The login succeeded.
    Authenticated,
    /// The server refused the login (its reply: 4xx temporary, 5xx not);
    /// the same [`Ready`] may try again.
    Refused(Reply),
}

#[derive(Debug)]
enum LoginState {
    PlainGo(Login),
    LoginUser(Login),
    LoginPass(Login),
    Cram(Login),
    BearerGo(Login, Mechanism),
    BearerSent(Mechanism),
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

fn bearer_response(m: &Mechanism, login: &Login) -> Zeroizing<String> {
    match m {
        Mechanism::OauthBearer { host, port } => sasl::oauthbearer_response(login, host, *port),
        _ => sasl::xoauth2_response(login),
    }
}

fn fail<T>(why: impl Into<String>) -> Result<T, UpstreamError> {
    Err(UpstreamError::Protocol(why.into()))
}

fn insecure<T>(why: impl Into<String>) -> Result<T, UpstreamError> {
    Err(UpstreamError::Insecure(why.into()))
}

impl Connect {
    /// A machine for the route's `security` and `auth`; `ehlo_name` is what
    /// postern calls itself in EHLO (an address literal of its own socket).
    pub fn new(security: Security, auth: UpstreamAuth, ehlo_name: String) -> Self {
        Self {
            security,
            auth,
            ehlo_name,
            target: None,
            state: ConnectState::Greeting,
            tls: security == Security::Tls,
            extensions: Extensions::default(),
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

    fn ehlo(&mut self) -> Step<Ready> {
        self.state = ConnectState::Ehlo;
        Step::send(&[b"EHLO ", self.ehlo_name.as_bytes()])
    }

    /// After EHLO/HELO on the final connection: check what the route needs.
    fn ready(&mut self) -> Result<Step<Ready>, UpstreamError> {
        let mechanism = Mechanism::of(self.auth, self.target.as_ref())?;
        if let Some(m) = &mechanism {
            if !self.extensions.has_auth(m.name()) {
                let why = format!(
                    "the server does not offer AUTH {}{}; not trying another mechanism",
                    m.name(),
                    if self.tls { " (after TLS)" } else { "" }
                );
                return fail(why);
            }
        }
        Ok(Step::Done(Ready {
            mechanism,
            extensions: std::mem::take(&mut self.extensions),
            seen: std::mem::take(&mut self.seen),
        }))
    }
}

impl Machine for Connect {
    type Reply = Reply;
    type Framer = ReplyBuilder;
    type Done = Ready;

    fn phase(&self) -> &'static str {
        match self.state {
            ConnectState::Greeting => "greeting",
            ConnectState::Ehlo | ConnectState::Helo => "EHLO",
            ConnectState::Starttls | ConnectState::AwaitTls => "STARTTLS",
            ConnectState::Failed => "failed",
        }
    }

    fn framer(&self) -> ReplyBuilder {
        ReplyBuilder::new()
    }

    fn on_reply(&mut self, reply: Reply) -> Result<Step<Ready>, UpstreamError> {
        let code = reply.code();
        let needs_tls = self.security == Security::Starttls && !self.tls;
        match std::mem::replace(&mut self.state, ConnectState::Failed) {
            ConnectState::Greeting if code == 220 => {
                self.seen.greeting = reply.summary();
                Ok(self.ehlo())
            }
            ConnectState::Greeting => fail(format!(
                "the server refused the connection: {}",
                reply.summary()
            )),
            ConnectState::Ehlo if code == 250 => {
                self.extensions = Extensions::from_ehlo(&reply);
                if needs_tls {
                    self.seen.before_tls = Some(
                        self.extensions
                            .lines()
                            .map(|l| String::from_utf8_lossy(l).into_owned())
                            .collect(),
                    );
                    if !self.extensions.has("STARTTLS") {
                        return insecure(
                            "the server does not offer STARTTLS (not in its EHLO reply); refusing to continue without TLS",
                        );
                    }
                    self.state = ConnectState::Starttls;
                    return Ok(Step::send(&[b"STARTTLS"]));
                }
                self.ready()
            }
            ConnectState::Ehlo if (500..600).contains(&code) => {
                self.state = ConnectState::Helo;
                Ok(Step::send(&[b"HELO ", self.ehlo_name.as_bytes()]))
            }
            ConnectState::Ehlo => fail(format!("EHLO failed: {}", reply.summary())),
            ConnectState::Helo if code == 250 => {
                self.extensions = Extensions::default();
                if needs_tls {
                    return insecure("the server refused EHLO, so it cannot offer STARTTLS; refusing to continue without TLS");
                }
                self.ready()
            }
            ConnectState::Helo => fail(format!("HELO failed: {}", reply.summary())),
            ConnectState::Starttls if code == 220 => {
                self.state = ConnectState::AwaitTls;
                Ok(Step::start_tls())
            }
            ConnectState::Starttls => insecure(format!(
                "the server refused STARTTLS ({}); refusing to continue without TLS",
                reply.summary()
            )),
            ConnectState::AwaitTls | ConnectState::Failed => fail(format!(
                "unexpected reply during {}: {}",
                "STARTTLS",
                reply.summary()
            )),
        }
    }

    fn on_tls(&mut self) -> Result<Step<Ready>, UpstreamError> {
        if self.state != ConnectState::AwaitTls {
            return fail("TLS upgrade out of order");
        }
        self.tls = true;
        // RFC 3207 §4.2: forget everything learnt before TLS.
        self.extensions = Extensions::default();
        Ok(self.ehlo())
    }
}

impl Ready {
    /// The extensions of the final (post-TLS) connection.
    pub fn extensions(&self) -> &Extensions {
        &self.extensions
    }

    /// What the connection showed on the way (greeting, EHLO before TLS).
    pub fn seen(&self) -> &Seen {
        &self.seen
    }

    /// Starts a login with the route's mechanism; `None` on an `auth: none`
    /// route, which does not log in.
    pub fn login(&self, login: Login) -> Option<(LoginMachine, Step<LoginDone>)> {
        let (state, step) = match self.mechanism.clone()? {
            Mechanism::Plain => {
                let ir = sasl::plain_response(&login);
                if fits_auth_line("PLAIN", &ir) {
                    (
                        LoginState::AuthSent,
                        Step::send(&[b"AUTH PLAIN ", ir.as_bytes()]),
                    )
                } else {
                    (LoginState::PlainGo(login), Step::send(&[b"AUTH PLAIN"]))
                }
            }
            Mechanism::Login => (LoginState::LoginUser(login), Step::send(&[b"AUTH LOGIN"])),
            Mechanism::CramMd5 => (LoginState::Cram(login), Step::send(&[b"AUTH CRAM-MD5"])),
            m @ (Mechanism::Xoauth2 | Mechanism::OauthBearer { .. }) => {
                let ir = bearer_response(&m, &login);
                if fits_auth_line(m.name(), &ir) {
                    let name = m.name().as_bytes();
                    let step = Step::send(&[b"AUTH ", name, b" ", ir.as_bytes()]);
                    (LoginState::BearerSent(m), step)
                } else {
                    // A token is usually longer: it follows the 334 go-ahead.
                    let step = Step::send(&[b"AUTH ", m.name().as_bytes()]);
                    (LoginState::BearerGo(login, m), step)
                }
            }
        };
        Some((
            LoginMachine {
                state,
                bearer_error: None,
            },
            step,
        ))
    }
}

impl Machine for LoginMachine {
    type Reply = Reply;
    type Framer = ReplyBuilder;
    type Done = LoginDone;

    fn phase(&self) -> &'static str {
        "AUTH"
    }

    fn framer(&self) -> ReplyBuilder {
        ReplyBuilder::new()
    }

    fn on_reply(&mut self, reply: Reply) -> Result<Step<LoginDone>, UpstreamError> {
        let code = reply.code();
        let state = std::mem::replace(&mut self.state, LoginState::Over);
        if code >= 400 && !matches!(state, LoginState::Over) {
            return Ok(Step::Done(LoginDone::Refused(reply)));
        }
        match state {
            LoginState::PlainGo(login) if code == 334 => {
                self.state = LoginState::AuthSent;
                Ok(Step::send(&[sasl::plain_response(&login).as_bytes()]))
            }
            LoginState::LoginUser(login) if code == 334 => {
                let user = sasl::encode(login.user().as_bytes());
                self.state = LoginState::LoginPass(login);
                Ok(Step::send(&[user.as_bytes()]))
            }
            LoginState::LoginPass(login) if code == 334 => {
                let pass = Zeroizing::new(sasl::encode(login.password().expose()));
                self.state = LoginState::AuthSent;
                Ok(Step::send(&[pass.as_bytes()]))
            }
            LoginState::Cram(login) if code == 334 => {
                match sasl::cram_md5_challenge(reply.last_text()) {
                    Ok(challenge) => {
                        self.state = LoginState::AuthSent;
                        Ok(Step::send(&[
                            sasl::cram_md5_response(&login, &challenge).as_bytes()
                        ]))
                    }
                    Err(e) => fail(e.to_string()),
                }
            }
            LoginState::BearerGo(login, m) if code == 334 => {
                let response = bearer_response(&m, &login);
                self.state = LoginState::BearerSent(m);
                Ok(Step::send(&[response.as_bytes()]))
            }
            // The token was refused: the server explains in a JSON
            // challenge and waits for a dummy response before its 5xx.
            LoginState::BearerSent(m) if code == 334 => {
                self.bearer_error = Some(sasl::bearer_error_summary(reply.last_text()));
                self.state = LoginState::BearerErrorAcked;
                Ok(Step::send(&[sasl::bearer_error_ack(matches!(
                    m,
                    Mechanism::OauthBearer { .. }
                ))]))
            }
            LoginState::BearerSent(_) | LoginState::AuthSent if code == 235 => {
                Ok(Step::Done(LoginDone::Authenticated))
            }
            LoginState::BearerErrorAcked if code == 235 => {
                fail("the server accepted a token it had just refused")
            }
            LoginState::AuthSent if code == 334 => {
                fail("the server asked for more SASL data than the mechanism has")
            }
            _ => fail(format!("unexpected reply during AUTH: {}", reply.summary())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_core::upstream::Io;
    use postern_core::Secret;

    fn r(raw: &str) -> Reply {
        Reply::parse(raw.as_bytes()).expect("reply")
    }

    fn sent<D: std::fmt::Debug>(step: Result<Step<D>, UpstreamError>) -> String {
        let step = step.expect("a step, not a failure");
        String::from_utf8(step.sent().expect("a command").to_vec()).expect("ascii")
    }

    fn ready(step: Result<Step<Ready>, UpstreamError>) -> Ready {
        step.expect("a step").into_done().expect("Ready")
    }

    fn failure<D: std::fmt::Debug>(step: Result<Step<D>, UpstreamError>) -> UpstreamError {
        step.expect_err("a failure")
    }

    fn login() -> Login {
        Login::new(b"tim", Secret::from("tanstaaftanstaaf")).expect("login")
    }

    fn start(r: &Ready) -> (LoginMachine, String) {
        let (m, first) = r.login(login()).expect("a login route");
        (m, sent(Ok(first)))
    }

    fn setup(security: Security, auth: UpstreamAuth) -> Connect {
        Connect::new(security, auth, "[127.0.0.1]".to_owned())
    }

    #[test]
    fn starttls_then_cram_md5_with_the_rfc_vector() {
        let mut m = setup(Security::Starttls, UpstreamAuth::CramMd5);
        assert_eq!(
            sent(m.on_reply(r("220 smtp.example ESMTP\r\n"))),
            "EHLO [127.0.0.1]\r\n"
        );
        // Before TLS the server lists no CRAM-MD5; that must not matter.
        assert_eq!(
            sent(m.on_reply(r("250-smtp.example\r\n250 STARTTLS\r\n"))),
            "STARTTLS\r\n"
        );
        assert!(matches!(
            m.on_reply(r("220 2.0.0 go ahead\r\n")),
            Ok(Step::Io(Io::StartTls))
        ));
        assert_eq!(sent(m.on_tls()), "EHLO [127.0.0.1]\r\n");
        let rd = ready(m.on_reply(r("250-smtp.example\r\n250 AUTH CRAM-MD5 PLAIN\r\n")));
        assert!(
            !rd.extensions().has("STARTTLS"),
            "pre-TLS extensions forgotten"
        );
        let (mut l, first) = start(&rd);
        assert_eq!(first, "AUTH CRAM-MD5\r\n");
        let challenge = sasl::encode(b"<1896.697170952@postoffice.reston.mci.net>");
        let resp = sent(l.on_reply(r(&format!("334 {challenge}\r\n"))));
        assert_eq!(resp, "dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw\r\n");
        assert!(matches!(
            l.on_reply(r("235 2.7.0 ok\r\n")),
            Ok(Step::Done(LoginDone::Authenticated))
        ));
    }

    #[test]
    fn starttls_stripping_fails_closed() {
        // Not offered.
        let mut m = setup(Security::Starttls, UpstreamAuth::Plain);
        sent(m.on_reply(r("220 x\r\n")));
        assert!(failure(m.on_reply(r("250-x\r\n250 AUTH PLAIN\r\n"))).is_tls());
        // Refused.
        let mut m = setup(Security::Starttls, UpstreamAuth::Plain);
        sent(m.on_reply(r("220 x\r\n")));
        sent(m.on_reply(r("250-x\r\n250 STARTTLS\r\n")));
        assert!(failure(m.on_reply(r("454 4.7.0 TLS not available\r\n"))).is_tls());
        // EHLO refused, only HELO works.
        let mut m = setup(Security::Starttls, UpstreamAuth::None);
        sent(m.on_reply(r("220 x\r\n")));
        assert_eq!(
            sent(m.on_reply(r("502 5.5.2 no EHLO\r\n"))),
            "HELO [127.0.0.1]\r\n"
        );
        assert!(failure(m.on_reply(r("250 x\r\n"))).is_tls());
        // TLS out of order.
        let mut m = setup(Security::Starttls, UpstreamAuth::None);
        failure(m.on_tls());
    }

    #[test]
    fn helo_fallback_only_without_tls_upgrade_or_auth() {
        let mut m = setup(Security::Tls, UpstreamAuth::None);
        sent(m.on_reply(r("220 x\r\n")));
        sent(m.on_reply(r("500 what\r\n")));
        let rd = ready(m.on_reply(r("250 x\r\n")));
        assert!(rd.login(login()).is_none(), "auth: none does not log in");

        let mut m = setup(Security::Tls, UpstreamAuth::Login);
        sent(m.on_reply(r("220 x\r\n")));
        sent(m.on_reply(r("500 what\r\n")));
        failure(m.on_reply(r("250 x\r\n")));
    }

    #[test]
    fn mechanism_must_be_offered() {
        let mut m = setup(Security::Tls, UpstreamAuth::CramMd5);
        sent(m.on_reply(r("220 x\r\n")));
        let e = failure(m.on_reply(r("250-x\r\n250 AUTH PLAIN LOGIN\r\n")));
        assert!(e.to_string().contains("CRAM-MD5"), "{e}");
    }

    #[test]
    fn login_and_plain_exchanges_and_refusals() {
        let mut m = setup(Security::Tls, UpstreamAuth::Login);
        sent(m.on_reply(r("220 x\r\n")));
        let rd = ready(m.on_reply(r("250-x\r\n250 AUTH LOGIN\r\n")));
        let (mut l, first) = start(&rd);
        assert_eq!(first, "AUTH LOGIN\r\n");
        assert_eq!(sent(l.on_reply(r("334 VXNlcm5hbWU6\r\n"))), "dGlt\r\n");
        assert_eq!(
            sent(l.on_reply(r("334 UGFzc3dvcmQ6\r\n"))),
            format!("{}\r\n", sasl::encode(b"tanstaaftanstaaf"))
        );
        match l.on_reply(r("535 5.7.8 bad\r\n")) {
            Ok(Step::Done(LoginDone::Refused(reply))) => assert_eq!(reply.code(), 535),
            other => panic!("{other:?}"),
        }
        // The same Ready may try again.
        assert_eq!(start(&rd).1, "AUTH LOGIN\r\n");

        let mut m = setup(Security::Tls, UpstreamAuth::Plain);
        sent(m.on_reply(r("220 x\r\n")));
        let rd = ready(m.on_reply(r("250-x\r\n250 AUTH=PLAIN\r\n")));
        let (mut l, first) = start(&rd);
        assert_eq!(first, "AUTH PLAIN AHRpbQB0YW5zdGFhZnRhbnN0YWFm\r\n");
        match l.on_reply(r("454 4.7.0 try later\r\n")) {
            Ok(Step::Done(LoginDone::Refused(reply))) => assert!(reply.is_transient()),
            other => panic!("{other:?}"),
        }
    }

    /// RFC 4954 §4: an initial response only while the AUTH line, CRLF
    /// included, fits RFC 5321's 512 octets. XOAUTH2 for `alice` is 25
    /// octets plus the token before base64: a 347-octet token makes a
    /// 511-octet line, 350 a 515-octet one; PLAIN alike.
    #[test]
    fn initial_responses_only_within_the_command_line() {
        let mut m = setup(Security::Tls, UpstreamAuth::Xoauth2);
        sent(m.on_reply(r("220 x\r\n")));
        let rd = ready(m.on_reply(r("250-x\r\n250 AUTH XOAUTH2\r\n")));
        for (len, inline) in [(347, true), (350, false), (420, false)] {
            let login =
                Login::new(b"alice", Secret::new("t".repeat(len).into_bytes())).expect("login");
            let (_, first) = rd.login(login).expect("a login route");
            let first = sent(Ok(first));
            if inline {
                assert_eq!(first.len(), 511, "{len}");
                assert!(first.starts_with("AUTH XOAUTH2 "), "{len}");
            } else {
                assert_eq!(first, "AUTH XOAUTH2\r\n", "{len}");
            }
        }
        let mut m = setup(Security::Tls, UpstreamAuth::Plain);
        sent(m.on_reply(r("220 x\r\n")));
        let rd = ready(m.on_reply(r("250-x\r\n250 AUTH PLAIN\r\n")));
        // "\0tim\0" and the password: with 367 octets of password that is
        // 496 in base64, a 509-octet line; with 368 it is 500, 513.
        for (len, inline) in [(367, true), (368, false)] {
            let login =
                Login::new(b"tim", Secret::new("p".repeat(len).into_bytes())).expect("login");
            let (_, first) = rd.login(login).expect("a login route");
            let first = sent(Ok(first));
            if inline {
                assert_eq!(first.len(), 509, "{len}");
            } else {
                assert_eq!(first, "AUTH PLAIN\r\n", "{len}");
            }
        }
    }

    #[test]
    fn bad_greeting_and_bad_challenge_fail() {
        let mut m = setup(Security::None, UpstreamAuth::CramMd5);
        failure(m.on_reply(r("554 go away\r\n")));
        let mut m = setup(Security::None, UpstreamAuth::CramMd5);
        sent(m.on_reply(r("220 x\r\n")));
        let rd = ready(m.on_reply(r("250-x\r\n250 AUTH CRAM-MD5\r\n")));
        let (mut l, _) = start(&rd);
        failure(l.on_reply(r("334 ***\r\n")));
    }
}
