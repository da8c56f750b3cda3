//! Logging in: [`Ready::login`] and the [`LoginMachine`] (see the
//! module docs of [`super`]).

use std::collections::VecDeque;

use postern_core::credentials::Login;
use postern_core::sasl;
use postern_core::upstream::{printable, Machine, Step, UpstreamError};
use postern_core::Secret;
use zeroize::Zeroizing;

use super::super::capability::Capabilities;
use super::super::response::{Expect, Reply, RespText, Response, ResponseFramer, Status};
use super::{fail, last, reply_capabilities, Bearer, Method, Ready, MAX_INITIAL_RESPONSE_LINE};

/// RFC 7888 §4: the largest non-synchronising literal `LITERAL-` allows.
const LITERAL_MINUS_MAX: usize = 4096;

/// How a login ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginDone {
    /// Logged in: start relaying.
    LoggedIn {
        /// The post-login capabilities, if the server sent them (a
        /// `[CAPABILITY]` code on its OK, or an untagged CAPABILITY);
        /// unfiltered: see [`super::capability::after_login`](super::super::capability::after_login).
        capabilities: Option<Capabilities>,
    },
    /// The server refused (tagged `NO`); the same [`Ready`] may try again.
    Refused {
        /// `[UNAVAILABLE]` or `[INUSE]` (RFC 5530): a temporary failure,
        /// not a verdict on the credentials.
        temporary: bool,
        /// The server's text with its code, printable.
        text: String,
    },
}

#[derive(Debug)]
enum LoginState {
    /// LOGIN with synchronising literals: the parts still to send, one per
    /// `+` go-ahead.
    LoginParts(VecDeque<Secret>),
    /// AUTHENTICATE without an initial response: waiting for `+`.
    PlainAwaitGo(Login),
    CramAwaitChallenge(Login),
    BearerAwaitGo(Login, Bearer),
    BearerSent(Bearer),
    BearerErrorAcked,
    /// Everything sent: waiting for the tagged completion.
    Sent,
    Over,
}

/// One login attempt on a [`Ready`] connection.
#[derive(Debug)]
pub struct LoginMachine {
    state: LoginState,
    tag: Vec<u8>,
    bearer_error: Option<String>,
    capabilities: Option<Capabilities>,
}

impl LoginMachine {
    /// The server's bearer error challenge in words (`status=401
    /// scope=...`), when a token was refused.
    pub fn bearer_error(&self) -> Option<&str> {
        self.bearer_error.as_deref()
    }
}

/// A user name or password as an IMAP string: quoted if every octet is
/// printable ASCII (RFC 3501 quoted strings are 7-bit), else a literal.
enum Astring {
    Quoted(Zeroizing<Vec<u8>>),
    Literal,
}

fn astring(value: &[u8]) -> Astring {
    if !value.iter().all(|b| (0x20..0x7f).contains(b)) {
        return Astring::Literal;
    }
    let mut q = Zeroizing::new(Vec::with_capacity(value.len() + 2));
    q.push(b'"');
    for &b in value {
        if b == b'"' || b == b'\\' {
            q.push(b'\\');
        }
        q.push(b);
    }
    q.push(b'"');
    Astring::Quoted(q)
}

/// The LOGIN command as the parts sent one after another: the first
/// part, then one more after each `+` go-ahead (only with synchronising
/// literals: each part but the last ends in the `{n}` that asks for a
/// `+`). Non-synchronising literals (`LITERAL+`, or `LITERAL-` up to 4096
/// octets) stay in one part. Parts are [`Secret`]s: all but the first may
/// hold the password.
fn login_parts(tag: &[u8], login: &Login, caps: &Capabilities) -> (Secret, VecDeque<Secret>) {
    let mut first = None;
    let mut rest = VecDeque::new();
    let mut current = Zeroizing::new(tag.to_vec());
    current.extend_from_slice(b" LOGIN");
    for value in [login.user().as_bytes(), login.password().expose()] {
        current.push(b' ');
        match astring(value) {
            Astring::Quoted(q) => current.extend_from_slice(&q),
            Astring::Literal => {
                let n = value.len();
                let plus = caps.has("LITERAL+") || (caps.has("LITERAL-") && n <= LITERAL_MINUS_MAX);
                if plus {
                    current.extend_from_slice(format!("{{{n}+}}\r\n").as_bytes());
                    current.extend_from_slice(value);
                } else {
                    current.extend_from_slice(format!("{{{n}}}").as_bytes());
                    let done = Secret::new(std::mem::take(&mut *current));
                    current.extend_from_slice(value);
                    match first {
                        None => first = Some(done),
                        Some(_) => rest.push_back(done),
                    }
                }
            }
        }
    }
    let last = Secret::new(std::mem::take(&mut *current));
    match first {
        None => (last, rest),
        Some(first) => {
            rest.push_back(last);
            (first, rest)
        }
    }
}

impl Ready {
    /// A LOGOUT command line with a fresh tag (for a polite goodbye).
    pub fn logout(&self) -> Vec<u8> {
        let mut line = self.tags.next();
        line.extend_from_slice(b" LOGOUT\r\n");
        line
    }

    /// `AUTHENTICATE mechanism initial-response` when the server takes
    /// SASL-IR and the line stays within [`MAX_INITIAL_RESPONSE_LINE`];
    /// `None`: send the bare command, the response after the `+`.
    fn with_initial_response(
        &self,
        tag: &[u8],
        mechanism: &str,
        ir: &[u8],
    ) -> Option<Step<LoginDone>> {
        let len = tag.len() + b" AUTHENTICATE ".len() + mechanism.len() + 1 + ir.len() + 2;
        (self.capabilities.has("SASL-IR") && len <= MAX_INITIAL_RESPONSE_LINE).then(|| {
            // RFC 4959 §3: an empty initial response is sent as `=`.
            let ir: &[u8] = if ir.is_empty() { b"=" } else { ir };
            Step::send(&[tag, b" AUTHENTICATE ", mechanism.as_bytes(), b" ", ir])
        })
    }

    /// Starts a login with the route's method (`login`'s secret is the
    /// password, or the access token for XOAUTH2/OAUTHBEARER).
    pub fn login(&self, login: Login) -> (LoginMachine, Step<LoginDone>) {
        let tag = self.tags.next();
        let bare = |m: &str| Step::send(&[&tag, b" AUTHENTICATE ", m.as_bytes()]);
        let (state, step) = match &self.method {
            Method::Login => {
                let (first, rest) = login_parts(&tag, &login, &self.capabilities);
                let state = if rest.is_empty() {
                    LoginState::Sent
                } else {
                    LoginState::LoginParts(rest)
                };
                (state, Step::send(&[first.expose()]))
            }
            Method::Plain => {
                let ir = sasl::plain_response(&login);
                match self.with_initial_response(&tag, "PLAIN", ir.as_bytes()) {
                    Some(step) => (LoginState::Sent, step),
                    None => (LoginState::PlainAwaitGo(login), bare("PLAIN")),
                }
            }
            Method::CramMd5 => (LoginState::CramAwaitChallenge(login), bare("CRAM-MD5")),
            Method::Bearer(b) => {
                let ir = b.response(&login);
                match self.with_initial_response(&tag, b.name(), ir.as_bytes()) {
                    Some(step) => (LoginState::BearerSent(b.clone()), step),
                    None => (LoginState::BearerAwaitGo(login, b.clone()), bare(b.name())),
                }
            }
        };
        (
            LoginMachine {
                state,
                tag,
                bearer_error: None,
                capabilities: None,
            },
            step,
        )
    }
}

impl Machine for LoginMachine {
    type Reply = Reply;
    type Framer = ResponseFramer;
    type Done = LoginDone;
    const UNSOLICITED_ALLOWED: bool = true;

    fn phase(&self) -> &'static str {
        "login"
    }

    fn framer(&self) -> ResponseFramer {
        ResponseFramer::new(Expect::Completion(self.tag.clone()))
    }

    fn on_reply(&mut self, reply: Reply) -> Result<Step<LoginDone>, UpstreamError> {
        if let Some(caps) = reply_capabilities(&reply) {
            self.capabilities
                .get_or_insert_with(Capabilities::default)
                .merge(&caps);
        }
        let state = std::mem::replace(&mut self.state, LoginState::Over);
        match last(&reply, "login")? {
            Response::Continuation(text) => self.on_continuation(state, text),
            Response::Status {
                tag: Some(_),
                status,
                text,
            } => self.on_completion(state, status, text),
            _ => fail(format!(
                "unexpected reply during login: {}",
                printable(&reply.last)
            )),
        }
    }
}

impl LoginMachine {
    fn on_continuation(
        &mut self,
        state: LoginState,
        text: &[u8],
    ) -> Result<Step<LoginDone>, UpstreamError> {
        match state {
            LoginState::LoginParts(mut parts) => match parts.pop_front() {
                Some(next) => {
                    let step = Step::send(&[next.expose()]);
                    self.state = if parts.is_empty() {
                        LoginState::Sent
                    } else {
                        LoginState::LoginParts(parts)
                    };
                    Ok(step)
                }
                None => fail("the server asked for more of LOGIN than there is"),
            },
            LoginState::PlainAwaitGo(login) => {
                self.state = LoginState::Sent;
                Ok(Step::send(&[sasl::plain_response(&login).as_bytes()]))
            }
            LoginState::CramAwaitChallenge(login) => match sasl::cram_md5_challenge(text) {
                Ok(challenge) => {
                    self.state = LoginState::Sent;
                    Ok(Step::send(&[
                        sasl::cram_md5_response(&login, &challenge).as_bytes()
                    ]))
                }
                Err(e) => fail(e.to_string()),
            },
            LoginState::BearerAwaitGo(login, b) => {
                let response = b.response(&login);
                self.state = LoginState::BearerSent(b);
                Ok(Step::send(&[response.as_bytes()]))
            }
            // The token was refused: the server explains in a JSON
            // challenge and waits for a dummy response before its NO.
            LoginState::BearerSent(b) => {
                self.bearer_error = Some(sasl::bearer_error_summary(text));
                self.state = LoginState::BearerErrorAcked;
                Ok(Step::send(&[b.error_ack()]))
            }
            LoginState::BearerErrorAcked => fail("the server sent a second error challenge"),
            LoginState::Sent => fail("the server asked for more SASL data than the mechanism has"),
            LoginState::Over => fail("unexpected continuation after the login ended"),
        }
    }

    fn on_completion(
        &mut self,
        state: LoginState,
        status: Status,
        text: RespText<'_>,
    ) -> Result<Step<LoginDone>, UpstreamError> {
        match (status, state) {
            (Status::Ok, LoginState::Sent | LoginState::BearerSent(_)) => {
                Ok(Step::Done(LoginDone::LoggedIn {
                    capabilities: self.capabilities.take(),
                }))
            }
            (Status::Ok, LoginState::BearerErrorAcked) => {
                fail("the server accepted a token it had just refused")
            }
            (Status::Ok, LoginState::Over) => fail("unexpected reply after the login ended"),
            (Status::Ok, _) => fail("the server said OK before postern sent the credentials"),
            (Status::No, LoginState::Over) => fail("unexpected reply after the login ended"),
            (Status::No, _) => {
                let temporary = text
                    .code
                    .is_some_and(|c| c.is("UNAVAILABLE") || c.is("INUSE"));
                Ok(Step::Done(LoginDone::Refused {
                    temporary,
                    text: text.printable(),
                }))
            }
            (_, _) => fail(format!(
                "the server answered the login with {}: {}",
                status.name(),
                text.printable()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::*;
    use postern_core::config::{Security, UpstreamAuth};

    /// LOGIN argument forms: (user, password, capabilities) → the parts
    /// sent, each after the server's `+` for the previous one.
    #[test]
    fn login_strings_and_literals() {
        for (user, password, caps, parts) in [
            (
                "tim",
                "tanstaaf",
                "IMAP4rev1",
                vec!["P2 LOGIN \"tim\" \"tanstaaf\"\r\n"],
            ),
            (
                "t\"im",
                "a\\b c",
                "IMAP4rev1",
                vec!["P2 LOGIN \"t\\\"im\" \"a\\\\b c\"\r\n"],
            ),
            (
                "tim",
                "p\u{e4}ss",
                "IMAP4rev1",
                vec!["P2 LOGIN \"tim\" {5}\r\n", "p\u{e4}ss\r\n"],
            ),
            (
                "j\u{f6}rg",
                "p\u{e4}ss",
                "IMAP4rev1",
                vec!["P2 LOGIN {5}\r\n", "j\u{f6}rg {5}\r\n", "p\u{e4}ss\r\n"],
            ),
            (
                "j\u{f6}rg",
                "p\u{e4}ss",
                "IMAP4rev1 LITERAL+",
                vec!["P2 LOGIN {5+}\r\nj\u{f6}rg {5+}\r\np\u{e4}ss\r\n"],
            ),
            (
                "tim",
                "tab\there",
                "IMAP4rev1 LITERAL-",
                vec!["P2 LOGIN \"tim\" {8+}\r\ntab\there\r\n"],
            ),
        ] {
            let r = connect(Security::Tls, UpstreamAuth::Login, "* OK hi\r\n", caps);
            let l = Login::new(user.as_bytes(), Secret::from(password)).expect("login");
            let (mut m, first) = r.login(l);
            assert_eq!(sent(Ok(first)), parts[0], "{user:?} {password:?}");
            for part in &parts[1..] {
                assert_eq!(&sent(on(&mut m, &["+ Ready\r\n"])), part);
            }
            assert_eq!(
                done(on(
                    &mut m,
                    &["* CAPABILITY IMAP4rev1 IDLE\r\n", "P2 OK Logged in\r\n"]
                )),
                LoginDone::LoggedIn {
                    capabilities: Some(Capabilities::parse(b"IMAP4rev1 IDLE"))
                }
            );
        }
        // LITERAL- does not cover a long password.
        let r = connect(
            Security::Tls,
            UpstreamAuth::Login,
            "* OK hi\r\n",
            "IMAP4rev1 LITERAL-",
        );
        let long = format!("\u{e4}{}", "x".repeat(5000));
        let (mut m, first) =
            r.login(Login::new(b"tim", Secret::from(long.as_str())).expect("login"));
        assert_eq!(sent(Ok(first)), "P2 LOGIN \"tim\" {5002}\r\n");
        // The server may refuse the literal instead of `+`.
        assert_eq!(
            done(on(&mut m, &["P2 NO [LIMIT] too long\r\n"])),
            LoginDone::Refused {
                temporary: false,
                text: "[LIMIT] too long".to_owned()
            }
        );
    }

    /// postern's LOGIN, read by an IMAP server's parser (postern's own
    /// CommandReader), gives back the same user and password, part by
    /// part as the server grants them.
    #[test]
    fn login_round_trips_through_a_server_parser() {
        use crate::proto::command::{Assembled, CommandKind, CommandReader, Limits, Read};
        let limits = Limits {
            max_line: 1 << 16,
            max_literal: 1 << 16,
            max_command: 1 << 17,
        };
        let long = "\u{e4}".repeat(3000);
        let credentials = [
            ("tim", "tanstaaf"),
            ("t\"i\\m", "\"\\"),
            ("{5}", "x {5}"),
            ("j\u{f6}rg", "p\u{e4}ss\tword"),
            ("a b", ""),
            ("\x01", "\x7f"),
            ("NIL", "{0+}"),
            ("u", long.as_str()),
        ];
        for caps in ["IMAP4rev1", "IMAP4rev1 LITERAL+", "IMAP4rev1 LITERAL-"] {
            for (user, password) in credentials {
                let r = connect(Security::Tls, UpstreamAuth::Login, "* OK hi\r\n", caps);
                let l = Login::new(user.as_bytes(), Secret::from(password)).expect("login");
                let (mut m, first) = r.login(l);
                let mut reader = CommandReader::new(limits);
                let mut step = first;
                let command = loop {
                    let bytes = step.sent().expect("a command").to_vec();
                    let mut rest = &bytes[..];
                    let outcome = loop {
                        let a = match reader.expects() {
                            Read::Line => {
                                let i = rest.iter().position(|b| *b == b'\n').expect("a line");
                                let (line, r) = rest.split_at(i + 1);
                                rest = r;
                                reader.feed_line(line)
                            }
                            Read::Literal(n) => {
                                let (literal, r) = rest.split_at(n);
                                rest = r;
                                reader.feed_literal(literal)
                            }
                        };
                        match a {
                            Assembled::Need(_) => {
                                assert!(!rest.is_empty(), "stops where a server waits")
                            }
                            other => {
                                assert!(rest.is_empty(), "octets before the server's answer");
                                break other;
                            }
                        }
                    };
                    match outcome {
                        Assembled::Continue(_) => {
                            step = on(&mut m, &["+ Ready\r\n"]).expect("the next part")
                        }
                        Assembled::Command(c) => break c,
                        other => panic!("{caps} {user:?}: {other:?}"),
                    }
                };
                match command.kind {
                    CommandKind::Login {
                        user: u,
                        password: p,
                    } => {
                        assert_eq!(u, user.as_bytes(), "{caps}");
                        assert_eq!(p.expose(), password.as_bytes(), "{caps} {user:?}");
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
    }

    #[test]
    fn refusals_retries_and_fresh_tags() {
        let r = connect(
            Security::Tls,
            UpstreamAuth::Login,
            "* OK hi\r\n",
            "IMAP4rev1",
        );
        let (mut m, first) = r.login(login());
        assert!(sent(Ok(first)).starts_with("P2 LOGIN"));
        assert_eq!(
            done(on(
                &mut m,
                &["P2 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"]
            )),
            LoginDone::Refused {
                temporary: false,
                text: "[AUTHENTICATIONFAILED] Authentication failed.".to_owned()
            }
        );
        failure(on(&mut m, &["P2 OK\r\n"]));
        let (mut m, first) = r.login(login());
        assert!(sent(Ok(first)).starts_with("P3 LOGIN"));
        assert_eq!(
            done(on(&mut m, &["P3 NO [UNAVAILABLE] backend down\r\n"])),
            LoginDone::Refused {
                temporary: true,
                text: "[UNAVAILABLE] backend down".to_owned()
            }
        );
        let (mut m, _) = r.login(login());
        failure(on(&mut m, &["P4 BAD parse error\r\n"]));
        let (mut m, _) = r.login(login());
        let e = failure(on(&mut m, &["* BYE too many failures\r\n"]));
        assert!(e.to_string().contains("too many failures"), "{e}");
        let (mut m, _) = r.login(login());
        failure(on(&mut m, &["+ more?\r\n"]));
        assert_eq!(r.logout(), b"P7 LOGOUT\r\n");
    }

    #[test]
    fn plain_with_and_without_sasl_ir() {
        let r = connect(
            Security::Tls,
            UpstreamAuth::Plain,
            "* OK hi\r\n",
            "IMAP4rev1 SASL-IR AUTH=PLAIN",
        );
        let (mut m, first) = r.login(login());
        assert_eq!(
            sent(Ok(first)),
            "P2 AUTHENTICATE PLAIN AHRpbQB0YW5zdGFhZnRhbnN0YWFm\r\n"
        );
        failure(on(&mut m, &["+ \r\n"]));

        let r = connect(
            Security::Tls,
            UpstreamAuth::Plain,
            "* OK hi\r\n",
            "IMAP4rev1 AUTH=PLAIN",
        );
        let (mut m, first) = r.login(login());
        assert_eq!(sent(Ok(first)), "P2 AUTHENTICATE PLAIN\r\n");
        assert_eq!(
            sent(on(&mut m, &["+ \r\n"])),
            "AHRpbQB0YW5zdGFhZnRhbnN0YWFm\r\n"
        );
        assert_eq!(
            done(on(&mut m, &["P2 OK done\r\n"])),
            LoginDone::LoggedIn { capabilities: None }
        );
        // OK before the credentials were sent.
        let (mut m, _) = r.login(login());
        failure(on(&mut m, &["P3 OK sure\r\n"]));
    }

    #[test]
    fn bearer_tokens_and_error_challenges() {
        let token = Login::new(b"user@example.net", Secret::from("ya29.token")).expect("login");
        let xoauth2 = sasl::xoauth2_response(&token).to_string();
        let r = connect(
            Security::Tls,
            UpstreamAuth::Xoauth2,
            "* OK hi\r\n",
            "IMAP4rev1 SASL-IR AUTH=XOAUTH2",
        );
        let (mut m, first) = r.login(token.clone());
        assert_eq!(
            sent(Ok(first)),
            format!("P2 AUTHENTICATE XOAUTH2 {xoauth2}\r\n")
        );
        let challenge = sasl::encode(
            br#"{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}"#,
        );
        assert_eq!(sent(on(&mut m, &[&format!("+ {challenge}\r\n")])), "\r\n");
        assert_eq!(
            m.bearer_error(),
            Some("status=401 scope=https://mail.google.com/")
        );
        assert!(matches!(
            done(on(
                &mut m,
                &["P2 NO [AUTHENTICATIONFAILED] Invalid credentials (Failure)\r\n"]
            )),
            LoginDone::Refused {
                temporary: false,
                ..
            }
        ));

        // No SASL-IR: the token follows the go-ahead; OAUTHBEARER acks with ^A.
        let r = connect(
            Security::Tls,
            UpstreamAuth::Oauthbearer,
            "* OK hi\r\n",
            "IMAP4rev1 AUTH=OAUTHBEARER",
        );
        let (mut m, first) = r.login(token.clone());
        assert_eq!(sent(Ok(first)), "P2 AUTHENTICATE OAUTHBEARER\r\n");
        let resp = sent(on(&mut m, &["+ \r\n"]));
        assert_eq!(
            resp.trim_end(),
            &*sasl::oauthbearer_response(&token, "imap.example.net", 993)
        );
        assert_eq!(
            sent(on(&mut m, &[&format!("+ {challenge}\r\n")])),
            "AQ==\r\n"
        );
        failure(on(&mut m, &["+ again\r\n"]));

        // A token too long for the AUTHENTICATE line follows the go-ahead.
        let r = connect(
            Security::Tls,
            UpstreamAuth::Xoauth2,
            "* OK hi\r\n",
            "IMAP4rev1 SASL-IR AUTH=XOAUTH2",
        );
        let long = Login::new(b"u", Secret::from("t".repeat(9000).as_str())).expect("login");
        let (mut m, first) = r.login(long);
        assert_eq!(sent(Ok(first)), "P2 AUTHENTICATE XOAUTH2\r\n");
        assert!(sent(on(&mut m, &["+\r\n"])).len() > MAX_INITIAL_RESPONSE_LINE);
        assert_eq!(
            done(on(
                &mut m,
                &["P2 OK [CAPABILITY IMAP4rev1 X-GM-EXT-1] ok\r\n"]
            )),
            LoginDone::LoggedIn {
                capabilities: Some(Capabilities::parse(b"IMAP4rev1 X-GM-EXT-1"))
            }
        );
    }
}
