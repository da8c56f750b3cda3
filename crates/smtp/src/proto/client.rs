//! The client-facing SMTP session (RFC 5321 §4.1, RFC 2920, RFC 4954).
//!
//! ```text
//!  Connected ─ EHLO/HELO ─► Greeted ─ AUTH (passthrough) ─► Authenticated
//!                              │                                │
//!                              └──── (auth not needed) ─────────┤
//!                                                               ▼
//!      ┌──────────── RSET / end of data ◄── DATA ◄── RCPT* ◄── MAIL
//!      ▼
//!  Authenticated ...                 QUIT from anywhere ─► closed
//! ```
//! The machine answers what postern can answer itself (EHLO, NOOP, VRFY,
//! HELP, sequencing errors, AUTH exchanges with the client) and asks the
//! driver to forward MAIL, RCPT, RSET and DATA; the upstream's reply comes
//! back through [`ClientSession::on_upstream`] and is relayed verbatim.
//! Commands are handled one at a time, in order, so pipelined batches get
//! one reply per command in order (RFC 2920 §3.1).

use std::borrow::Cow;

use postern_core::credentials::ClientAuth;
use postern_core::sasl::{self, Mechanism, Mechanisms, Refused, SaslServer, ServerStep};

use super::command::{self, clean_line, Command, MAX_COMMAND_LINE};
use super::ehlo::{self, Extensions, Policy};
use super::reply::Reply;

/// What the driver should do next.
#[derive(Debug)]
pub enum Action {
    /// Send these bytes to the client.
    Reply(Cow<'static, [u8]>),
    /// Send `line` upstream and give its reply to [`ClientSession::on_upstream`].
    Forward(Forward),
    /// Check this authentication (locally or by logging in upstream) and
    /// give the outcome to [`ClientSession::on_login`].
    Login(ClientAuth),
    /// Relay this 354 and stream the message data.
    Data(Vec<u8>),
    /// Say goodbye and close.
    Quit,
    /// Send these bytes and close (an HTTP request on a mail port).
    Close(&'static [u8]),
    /// The client asked for STARTTLS: check nothing is pipelined after it,
    /// send the go-ahead, handshake, then call [`ClientSession::on_tls`].
    StartTls,
}

pub use postern_core::tls::ListenTls;

/// A command to forward.
#[derive(Debug)]
pub struct Forward {
    /// What it is.
    pub kind: Kind,
    /// The canonical command line for the upstream.
    pub line: Vec<u8>,
}

/// The kinds of forwarded commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// MAIL FROM.
    Mail,
    /// RCPT TO.
    Rcpt,
    /// RSET; if `then` is set (an EHLO/HELO mid-transaction), the client
    /// gets that reply once the upstream has reset.
    Rset {
        /// The reply to send instead of the upstream's.
        then: Option<Vec<u8>>,
    },
    /// DATA.
    Data,
}

/// How the upstream login went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginOutcome {
    /// Logged in.
    Accepted,
    /// Refused for now (4xx): the client may retry later.
    TemporaryFailure,
    /// The credentials were refused (5xx).
    Rejected,
}

/// How clients of this session authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalAuth {
    /// AUTH is required before MAIL (the route logs in upstream with the
    /// client's or a stored login).
    pub required: bool,
    /// AUTH PLAIN and LOGIN are accepted (passthrough or local passwords).
    pub passwords: bool,
    /// postern's challenge base (`<...@...>`) when it holds local secrets:
    /// AUTH CRAM-MD5 is then offered.
    pub challenge: Option<Vec<u8>>,
    /// The client is a device already identified by its address and
    /// logged in upstream with stored credentials: no AUTH at all.
    pub device: bool,
}

/// The session's protocol state for one client.
#[derive(Debug)]
pub struct ClientSession {
    extensions: Extensions,
    policy: Policy,
    tls: ListenTls,
    local: LocalAuth,
    challenges: u32,
    hostname: &'static str,
    max_size: u64,
    greeted: bool,
    authenticated: bool,
    in_mail: bool,
    accepted_rcpts: u32,
    /// A SASL exchange in progress.
    sasl: Option<SaslServer>,
}

fn reply(s: &'static str) -> Action {
    Action::Reply(Cow::Borrowed(s.as_bytes()))
}

impl ClientSession {
    /// A session for a client of a listener in `tls` state. EHLO replies
    /// are computed from the upstream's `extensions` and the route's
    /// `policy` (see [`ehlo::advertise`]; its `auth` is filled in here from
    /// `local`).
    pub fn new(
        extensions: Extensions,
        policy: Policy,
        hostname: &'static str,
        tls: ListenTls,
        local: LocalAuth,
    ) -> Self {
        let max_size = policy.effective_size(&extensions);
        Self {
            extensions,
            policy,
            tls,
            authenticated: local.device,
            local,
            challenges: 0,
            hostname,
            max_size,
            greeted: false,
            in_mail: false,
            accepted_rcpts: 0,
            sasl: None,
        }
    }

    fn login_allowed(&self) -> bool {
        self.tls.active || !self.tls.required_for_auth
    }

    fn offers_auth(&self) -> bool {
        self.local.required && !self.local.device && self.login_allowed()
    }

    /// The SASL mechanisms postern accepts from this client.
    fn mechanisms(&self) -> Mechanisms {
        let mut set = Mechanisms::NONE;
        if self.local.passwords {
            set = set.with(Mechanism::Plain).with(Mechanism::Login);
        }
        if self.local.challenge.is_some() {
            set = set.with(Mechanism::CramMd5);
        }
        set
    }

    fn ehlo_reply(&self) -> Vec<u8> {
        let auth = if self.offers_auth() {
            self.mechanisms()
        } else {
            Mechanisms::NONE
        };
        let policy = Policy {
            auth,
            offer_starttls: self.tls.starttls && !self.tls.active,
            ..self.policy
        };
        ehlo::advertise(&self.extensions, &policy, self.hostname)
    }

    /// A fresh CRAM-MD5 challenge per exchange.
    fn challenge(&mut self) -> Option<Vec<u8>> {
        let base = self.local.challenge.as_ref()?;
        self.challenges += 1;
        Some(sasl::numbered_challenge(base, self.challenges))
    }

    /// The handshake after STARTTLS succeeded: RFC 3207 §4.2, the session
    /// starts over (EHLO, AUTH and any transaction are forgotten).
    pub fn on_tls(&mut self) {
        self.tls.active = true;
        self.greeted = false;
        self.authenticated = self.local.device;
        self.sasl = None;
        self.reset();
    }

    /// The effective SIZE limit for message data.
    pub fn max_size(&self) -> u64 {
        self.max_size
    }

    /// Accepted recipients in the current transaction.
    pub fn accepted_rcpts(&self) -> u32 {
        self.accepted_rcpts
    }

    /// The line-length cap for the next line: AUTH lines may be long.
    pub fn max_line(&self) -> usize {
        command::MAX_AUTH_LINE
    }

    /// A line was too long (already discarded).
    pub fn on_too_long(&mut self) -> Action {
        self.sasl = None;
        reply("500 5.5.6 Line too long\r\n")
    }

    fn reset(&mut self) {
        self.in_mail = false;
        self.accepted_rcpts = 0;
    }

    /// Handles one complete line from the client.
    pub fn on_line(&mut self, line: &[u8]) -> Action {
        if postern_core::sniff::looks_like_http(line) {
            return Action::Close(
                b"500 5.5.1 This is an SMTP service, not a web server; closing\r\n",
            );
        }
        if let Some(server) = self.sasl.take() {
            let Some(data) = clean_line(line) else {
                return reply("500 5.5.2 Syntax error: bare CR or LF in the command line\r\n");
            };
            return self.sasl(server.on_line(data));
        }
        let cmd = command::parse(line);
        if line.len() > MAX_COMMAND_LINE && !matches!(cmd, Command::Auth { .. }) {
            return reply("500 5.5.6 Line too long\r\n");
        }
        match cmd {
            Command::Ehlo(_) | Command::Helo(_) => {
                self.greeted = true;
                let answer = if matches!(cmd, Command::Ehlo(_)) {
                    self.ehlo_reply()
                } else {
                    format!("250 {}\r\n", self.hostname).into_bytes()
                };
                // RFC 5321 §4.1.4: EHLO mid-transaction acts as RSET.
                if self.in_mail {
                    self.reset();
                    return Action::Forward(Forward {
                        kind: Kind::Rset { then: Some(answer) },
                        line: b"RSET\r\n".to_vec(),
                    });
                }
                Action::Reply(Cow::Owned(answer))
            }
            Command::Mail(env) => {
                if !self.greeted {
                    return reply("503 5.5.1 Send EHLO or HELO first\r\n");
                }
                if self.local.required && !self.authenticated {
                    return reply("530 5.7.0 Authentication required\r\n");
                }
                if self.in_mail {
                    return reply("503 5.5.1 Nested MAIL command\r\n");
                }
                if env.size().is_some_and(|s| s > self.max_size) {
                    return reply("552 5.3.4 Message size exceeds fixed maximum message size\r\n");
                }
                let mut line = Vec::with_capacity(64);
                env.write_to(b"MAIL FROM:", &mut line);
                Action::Forward(Forward {
                    kind: Kind::Mail,
                    line,
                })
            }
            Command::Rcpt(env) => {
                if !self.in_mail {
                    return reply("503 5.5.1 Need MAIL command first\r\n");
                }
                if self.accepted_rcpts >= self.policy.max_recipients {
                    // RFC 5321 §4.5.3.1.10: the client sends the rest later.
                    return reply("452 4.5.3 Too many recipients\r\n");
                }
                let mut line = Vec::with_capacity(64);
                env.write_to(b"RCPT TO:", &mut line);
                Action::Forward(Forward {
                    kind: Kind::Rcpt,
                    line,
                })
            }
            Command::Data => {
                if !self.in_mail {
                    return reply("503 5.5.1 Need MAIL command first\r\n");
                }
                if self.accepted_rcpts == 0 {
                    // Never open DATA upstream without a recipient.
                    return reply("554 5.5.1 No valid recipients\r\n");
                }
                Action::Forward(Forward {
                    kind: Kind::Data,
                    line: b"DATA\r\n".to_vec(),
                })
            }
            Command::Rset => {
                if self.in_mail {
                    self.reset();
                    return Action::Forward(Forward {
                        kind: Kind::Rset { then: None },
                        line: b"RSET\r\n".to_vec(),
                    });
                }
                reply("250 2.0.0 Ok\r\n")
            }
            Command::Noop => reply("250 2.0.0 Ok\r\n"),
            Command::Quit => Action::Quit,
            Command::Vrfy => reply(
                "252 2.5.0 Cannot VRFY user, but will accept the message and attempt delivery\r\n",
            ),
            Command::Expn => reply("502 5.5.1 EXPN is not available\r\n"),
            Command::Help => reply(
                "214 2.0.0 postern SMTP gateway: EHLO AUTH MAIL RCPT DATA RSET NOOP VRFY QUIT\r\n",
            ),
            Command::Bdat => reply("502 5.5.1 BDAT is not available (CHUNKING is not offered)\r\n"),
            Command::Starttls if self.tls.active => reply("503 5.5.1 TLS is already active\r\n"),
            Command::Starttls if !self.tls.starttls => {
                reply("502 5.5.1 STARTTLS is not available on this port\r\n")
            }
            Command::Starttls if self.authenticated || self.in_mail => {
                reply("503 5.5.1 STARTTLS is not permitted after AUTH or MAIL\r\n")
            }
            Command::Starttls => Action::StartTls,
            Command::Auth { mechanism, initial } => self.auth(mechanism, initial),
            Command::BareLineEnding => {
                reply("500 5.5.2 Syntax error: bare CR or LF in the command line\r\n")
            }
            Command::Syntax(why) => {
                Action::Reply(Cow::Owned(format!("501 5.5.4 {why}\r\n").into_bytes()))
            }
            Command::Unknown => reply("500 5.5.2 Command not recognized\r\n"),
        }
    }

    fn auth(&mut self, mechanism: &[u8], initial: Option<&[u8]>) -> Action {
        if !self.local.required || self.local.device {
            return reply("502 5.5.1 AUTH is not offered here\r\n");
        }
        if !self.greeted {
            return reply("503 5.5.1 Send EHLO first\r\n");
        }
        if !self.login_allowed() {
            return reply(
                "538 5.7.11 Encryption required for requested authentication mechanism\r\n",
            );
        }
        if self.authenticated {
            return reply("503 5.5.1 Already authenticated\r\n");
        }
        if self.in_mail {
            return reply("503 5.5.1 AUTH is not permitted during a mail transaction\r\n");
        }
        match Mechanism::parse(mechanism).filter(|m| self.mechanisms().has(*m)) {
            Some(m) => {
                let challenge = self.challenge().unwrap_or_default();
                self.sasl(SaslServer::start(m, initial, challenge))
            }
            None => reply("504 5.5.4 Unrecognized authentication type\r\n"),
        }
    }

    /// Renders a SASL step in SMTP's words (RFC 4954).
    fn sasl(&mut self, step: ServerStep) -> Action {
        match step {
            ServerStep::Prompt(server, challenge) => {
                self.sasl = Some(server);
                Action::Reply(Cow::Owned(
                    format!("334 {}\r\n", sasl::encode(&challenge)).into_bytes(),
                ))
            }
            ServerStep::Done(auth) => Action::Login(auth),
            ServerStep::Cancelled => reply("501 5.0.0 Authentication cancelled\r\n"),
            ServerStep::Refused(Refused::Base64) => {
                reply("501 5.5.2 Cannot decode the base64 response\r\n")
            }
            ServerStep::Refused(Refused::AuthzidDiffers) => reply(
                "535 5.7.8 Authentication credentials invalid: acting as another user is not supported\r\n",
            ),
            ServerStep::Refused(Refused::Invalid) => {
                reply("535 5.7.8 Authentication credentials invalid\r\n")
            }
        }
    }

    /// The upstream login's outcome; returns the reply for the client.
    pub fn on_login(&mut self, outcome: LoginOutcome) -> &'static [u8] {
        match outcome {
            LoginOutcome::Accepted => {
                self.authenticated = true;
                b"235 2.7.0 Authentication successful\r\n"
            }
            LoginOutcome::TemporaryFailure => {
                b"454 4.7.0 Temporary authentication failure; try again later\r\n"
            }
            LoginOutcome::Rejected => b"535 5.7.8 Authentication credentials invalid\r\n",
        }
    }

    /// The upstream's reply to a forwarded command.
    pub fn on_upstream(&mut self, kind: Kind, reply: &Reply) -> Action {
        match kind {
            Kind::Mail if reply.is_positive() => {
                self.in_mail = true;
                self.accepted_rcpts = 0;
            }
            Kind::Rcpt if reply.is_positive() => self.accepted_rcpts += 1,
            Kind::Rset { then: Some(answer) } if reply.is_positive() => {
                return Action::Reply(Cow::Owned(answer));
            }
            Kind::Data if reply.code() == 354 => return Action::Data(reply.sanitized()),
            _ => {}
        }
        Action::Reply(Cow::Owned(reply.sanitized()))
    }

    /// The message transaction is over (whatever the final reply said).
    pub fn on_message_done(&mut self) {
        self.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    const PLAIN: ListenTls = ListenTls {
        starttls: false,
        active: false,
        required_for_auth: false,
    };

    fn policy() -> Policy {
        Policy {
            max_size: 1000,
            max_recipients: 2,
            auth: Mechanisms::NONE,
            offer_starttls: false,
        }
    }

    fn local(required: bool) -> LocalAuth {
        LocalAuth {
            required,
            passwords: true,
            challenge: None,
            device: false,
        }
    }

    fn session(auth_required: bool) -> ClientSession {
        ClientSession::new(
            Extensions::default(),
            policy(),
            "postern",
            PLAIN,
            local(auth_required),
        )
    }

    fn text(a: Action) -> String {
        match a {
            Action::Reply(r) => String::from_utf8_lossy(&r).into_owned(),
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    fn fwd(a: Action) -> (Kind, String) {
        match a {
            Action::Forward(f) => (f.kind, String::from_utf8_lossy(&f.line).into_owned()),
            other => panic!("expected a forward, got {other:?}"),
        }
    }

    fn b64(s: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn r(raw: &str) -> Reply {
        Reply::parse(raw.as_bytes()).expect("reply")
    }

    fn login(s: &mut ClientSession) {
        s.on_line(b"EHLO c\r\n");
        let a = s.on_line(format!("AUTH PLAIN {}\r\n", b64(b"\0u\0p")).as_bytes());
        assert!(matches!(a, Action::Login(_)));
        assert!(s.on_login(LoginOutcome::Accepted).starts_with(b"235"));
    }

    #[test]
    fn passthrough_requires_auth_before_mail() {
        let mut s = session(true);
        assert!(text(s.on_line(b"MAIL FROM:<a@b>\r\n")).starts_with("503"));
        assert!(text(s.on_line(b"EHLO c\r\n")).contains("AUTH PLAIN LOGIN"));
        assert!(text(s.on_line(b"MAIL FROM:<a@b>\r\n")).starts_with("530 5.7.0"));
        let a = s.on_line(format!("AUTH PLAIN {}\r\n", b64(b"\0u\0p")).as_bytes());
        assert!(matches!(a, Action::Login(ref l) if l.user() == "u"));
        assert!(s.on_login(LoginOutcome::Rejected).starts_with(b"535"));
        assert!(text(s.on_line(b"MAIL FROM:<a@b>\r\n")).starts_with("530"));
        let a = s.on_line(format!("AUTH PLAIN {}\r\n", b64(b"\0u\0p")).as_bytes());
        assert!(matches!(a, Action::Login(_)));
        assert!(s.on_login(LoginOutcome::Accepted).starts_with(b"235"));
        assert_eq!(
            fwd(s.on_line(b"MAIL FROM:<a@b> AUTH=<>\r\n")),
            (Kind::Mail, "MAIL FROM:<a@b>\r\n".to_owned())
        );
        assert!(text(s.on_line(b"AUTH PLAIN x\r\n")).starts_with("503"));
    }

    #[test]
    fn auth_login_and_plain_continuations_and_cancel() {
        let mut s = session(true);
        s.on_line(b"EHLO c\r\n");
        assert_eq!(text(s.on_line(b"AUTH LOGIN\r\n")), "334 VXNlcm5hbWU6\r\n");
        assert_eq!(
            text(s.on_line(format!("{}\r\n", b64(b"tim")).as_bytes())),
            "334 UGFzc3dvcmQ6\r\n"
        );
        match s.on_line(format!("{}\r\n", b64(b"pass word")).as_bytes()) {
            Action::Login(ClientAuth::Password(l)) => {
                assert_eq!(l.user(), "tim");
                assert_eq!(l.password().expose(), b"pass word");
            }
            other => panic!("{other:?}"),
        }
        s.on_login(LoginOutcome::TemporaryFailure);
        assert_eq!(text(s.on_line(b"AUTH PLAIN\r\n")), "334 \r\n");
        assert!(text(s.on_line(b"*\r\n")).starts_with("501"));
        assert_eq!(
            text(s.on_line(format!("AUTH LOGIN {}\r\n", b64(b"tim")).as_bytes())),
            "334 UGFzc3dvcmQ6\r\n"
        );
        assert!(text(s.on_line(b"!!\r\n")).starts_with("501"));
        assert!(
            text(s.on_line(format!("AUTH PLAIN {}\r\n", b64(b"admin\0tim\0p")).as_bytes()))
                .starts_with("535")
        );
        assert!(
            text(s.on_line(format!("AUTH PLAIN {}\r\n", b64(b"\0tim\0p\r\nRSET")).as_bytes()))
                .starts_with("535")
        );
        assert!(text(s.on_line(b"AUTH CRAM-MD5\r\n")).starts_with("504"));
    }

    #[test]
    fn transaction_sequencing_and_recipient_counting() {
        let mut s = session(true);
        login(&mut s);
        assert!(text(s.on_line(b"RCPT TO:<x@y>\r\n")).starts_with("503"));
        assert!(text(s.on_line(b"DATA\r\n")).starts_with("503"));
        assert!(text(s.on_line(b"MAIL FROM:<a@b> SIZE=5000\r\n")).starts_with("552 5.3.4"));
        let (k, _) = fwd(s.on_line(b"MAIL FROM:<a@b> SIZE=500\r\n"));
        assert!(text(s.on_upstream(k, &r("250 2.1.0 Ok\r\n"))).starts_with("250"));
        let (k, _) = fwd(s.on_line(b"RCPT TO:<bad@y>\r\n"));
        assert!(text(s.on_upstream(k, &r("550 5.1.1 no\r\n"))).starts_with("550 5.1.1"));
        // No accepted recipient: DATA is refused here, not sent upstream.
        assert!(text(s.on_line(b"DATA\r\n")).starts_with("554 5.5.1"));
        let (k, _) = fwd(s.on_line(b"RCPT TO:<ok@y>\r\n"));
        s.on_upstream(k, &r("250 2.1.5 Ok\r\n"));
        assert_eq!(s.accepted_rcpts(), 1);
        let (k, _) = fwd(s.on_line(b"RCPT TO:<ok2@y>\r\n"));
        s.on_upstream(k, &r("250 2.1.5 Ok\r\n"));
        assert!(
            text(s.on_line(b"RCPT TO:<three@y>\r\n")).starts_with("452 4.5.3"),
            "the cap is 2 here"
        );
        let (k, line) = fwd(s.on_line(b"DATA\r\n"));
        assert_eq!(line, "DATA\r\n");
        assert!(
            matches!(s.on_upstream(k, &r("354 go\r\n")), Action::Data(ref b) if b == b"354 go\r\n")
        );
        s.on_message_done();
        assert!(
            text(s.on_line(b"RCPT TO:<x@y>\r\n")).starts_with("503"),
            "transaction over"
        );
    }

    #[test]
    fn ehlo_mid_transaction_resets_upstream_first() {
        let mut s = session(false);
        s.on_line(b"HELO c\r\n");
        let (k, _) = fwd(s.on_line(b"MAIL FROM:<a@b>\r\n"));
        s.on_upstream(k, &r("250 ok\r\n"));
        let (k, line) = fwd(s.on_line(b"EHLO again\r\n"));
        assert_eq!(line, "RSET\r\n");
        assert!(
            text(s.on_upstream(k, &r("250 reset\r\n"))).starts_with("250-postern at your service")
        );
        assert!(
            text(s.on_line(b"RSET\r\n")).starts_with("250"),
            "nothing to reset upstream"
        );
    }

    #[test]
    fn local_answers() {
        let mut s = session(false);
        assert!(text(s.on_line(b"NOOP\r\n")).starts_with("250"));
        assert!(text(s.on_line(b"VRFY root\r\n")).starts_with("252"));
        assert!(text(s.on_line(b"HELP\r\n")).starts_with("214"));
        assert!(text(s.on_line(b"EXPN list\r\n")).starts_with("502"));
        assert!(text(s.on_line(b"BDAT 10 LAST\r\n")).starts_with("502"));
        assert!(text(s.on_line(b"STARTTLS\r\n")).starts_with("502"));
        assert!(
            text(s.on_line(b"AUTH PLAIN x\r\n")).starts_with("502"),
            "no AUTH on a route without login"
        );
        assert!(text(s.on_line(b"FOO\r\n")).starts_with("500"));
        assert!(text(s.on_line(b"MAIL FROM:<a@b>\n")).starts_with("500 5.5.2"));
        assert!(text(s.on_line(b"MAIL FROM:x\r\n")).starts_with("501"));
        let long = format!("NOOP {}\r\n", "x".repeat(2000));
        assert!(text(s.on_line(long.as_bytes())).starts_with("500 5.5.6"));
        assert!(matches!(s.on_line(b"QUIT\r\n"), Action::Quit));
        // A route without login lets MAIL through once greeted.
        s.on_line(b"EHLO c\r\n");
        assert!(matches!(s.on_line(b"MAIL FROM:<>\r\n"), Action::Forward(_)));
    }

    #[test]
    fn starttls_listener_requires_tls_for_auth_and_starts_over() {
        let tls = ListenTls {
            starttls: true,
            active: false,
            required_for_auth: true,
        };
        let mut s =
            ClientSession::new(Extensions::default(), policy(), "postern", tls, local(true));
        let ehlo = text(s.on_line(b"EHLO c\r\n"));
        assert!(
            ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"),
            "{ehlo}"
        );
        assert!(text(s.on_line(b"AUTH PLAIN AHUAcA==\r\n")).starts_with("538 5.7.11"));
        assert!(matches!(s.on_line(b"STARTTLS\r\n"), Action::StartTls));
        s.on_tls();
        assert!(
            text(s.on_line(b"MAIL FROM:<a@b>\r\n")).starts_with("503"),
            "EHLO again after TLS"
        );
        let ehlo = text(s.on_line(b"EHLO c\r\n"));
        assert!(
            !ehlo.contains("STARTTLS") && ehlo.contains("AUTH PLAIN LOGIN"),
            "{ehlo}"
        );
        assert!(
            text(s.on_line(b"STARTTLS\r\n")).starts_with("503"),
            "no second STARTTLS"
        );
        assert!(matches!(
            s.on_line(b"AUTH PLAIN AHUAcA==\r\n"),
            Action::Login(_)
        ));
    }

    #[test]
    fn local_cram_md5_devices_and_http() {
        let mut s = ClientSession::new(
            Extensions::default(),
            policy(),
            "postern",
            PLAIN,
            LocalAuth {
                required: true,
                passwords: false,
                challenge: Some(b"<42.1@postern>".to_vec()),
                device: false,
            },
        );
        let ehlo = text(s.on_line(b"EHLO c\r\n"));
        assert!(
            ehlo.contains("AUTH CRAM-MD5") && !ehlo.contains("PLAIN"),
            "{ehlo}"
        );
        assert!(text(s.on_line(b"AUTH PLAIN AHUAcA==\r\n")).starts_with("504"));
        let prompt = text(s.on_line(b"AUTH CRAM-MD5\r\n"));
        let c = sasl::decode(prompt[4..].trim_end().as_bytes())
            .expect("b64")
            .to_vec();
        assert_eq!(c, b"<1.42.1@postern>");
        match s.on_line(format!("{}\r\n", b64(b"scanner 00ff")).as_bytes()) {
            Action::Login(ClientAuth::CramMd5 {
                user,
                challenge,
                digest,
            }) => {
                assert_eq!(
                    (user.as_str(), challenge, digest),
                    ("scanner", c, b"00ff".to_vec())
                );
            }
            other => panic!("{other:?}"),
        }

        let mut dev = ClientSession::new(
            Extensions::default(),
            policy(),
            "postern",
            PLAIN,
            LocalAuth {
                required: true,
                passwords: true,
                challenge: None,
                device: true,
            },
        );
        let ehlo = text(dev.on_line(b"EHLO printer\r\n"));
        assert!(!ehlo.contains("AUTH"), "{ehlo}");
        assert!(matches!(
            dev.on_line(b"MAIL FROM:<p@x>\r\n"),
            Action::Forward(_)
        ));
        assert!(text(dev.on_line(b"AUTH PLAIN AHUAcA==\r\n")).starts_with("502"));
        assert!(matches!(
            dev.on_line(b"POST / HTTP/1.1\r\n"),
            Action::Close(_)
        ));
    }
}
