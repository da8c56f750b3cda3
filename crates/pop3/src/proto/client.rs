//! The client-facing AUTHORIZATION state (RFC 1939 §4, RFC 5034).
//!
//! ```text
//!   (starttls listener) STLS ─► Step::StartTls ─► [driver: TLS] ─► on_tls(): Idle, USER forgotten
//!            USER name              PASS pw
//!   Idle ───────────────► HaveUser ─────────► Step::Login ─► (driver logs in upstream)
//!    │  AUTH PLAIN                                 ▲
//!    ├──────────────────► SaslPlain ── base64 ─────┘
//!    │  AUTH PLAIN ir ─────────────────────────────┘
//!    │  CAPA / AUTH / bad input ─► Step::Reply (state unchanged or back to Idle)
//!    └─ QUIT ─► Step::Quit
//! ```
//! The machine never touches a socket: it turns a client line into a step.

use std::borrow::Cow;

use postern_core::credentials::{ClientAuth, Login};
use postern_core::sasl::{self, Mechanism, Mechanisms, Refused, SaslServer, ServerStep};
use postern_core::Secret;

use super::capa::{self, Offer};
use super::command::{self, Command, MAX_COMMAND_LINE, MAX_SASL_LINE};
use super::reply::Capabilities;

/// The longest line accepted before login: a little over 255 because some
/// clients send long `AUTH PLAIN` initial responses on the command line.
pub const MAX_AUTHORIZATION_LINE: usize = 1024;

/// What the driver should do next.
#[derive(Debug)]
pub enum Step {
    /// Send these bytes to the client and read the next line.
    Reply(Cow<'static, [u8]>),
    /// Check this authentication (locally or by logging in upstream), then
    /// answer the client.
    Login(ClientAuth),
    /// Answer `+OK` to QUIT and close.
    Quit,
    /// Send these bytes and close (an HTTP request on a mail port).
    Close(&'static [u8]),
    /// The client asked for STLS: check nothing is pipelined after it,
    /// send the go-ahead, handshake, then call [`Authorization::on_tls`].
    StartTls,
}

pub use postern_core::tls::ListenTls;

#[derive(Debug)]
enum State {
    Idle,
    HaveUser(Vec<u8>),
    Sasl(SaslServer, Mechanism),
}

/// What postern itself can check (the route's credential source).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalAuth {
    /// USER/PASS and AUTH PLAIN are accepted at all.
    pub passwords: bool,
    /// postern's greeting timestamp (`<...@...>`) when it holds local
    /// secrets: APOP and AUTH CRAM-MD5 are then offered.
    pub timestamp: Option<Vec<u8>>,
}

/// The AUTHORIZATION-state machine for one client.
#[derive(Debug)]
pub struct Authorization {
    state: State,
    upstream: Option<Capabilities>,
    tls: ListenTls,
    local: LocalAuth,
    challenges: u32,
}

fn reply(s: &'static str) -> Step {
    Step::Reply(Cow::Borrowed(s.as_bytes()))
}

impl Authorization {
    /// A machine for a client of a listener in `tls` state; CAPA reflects
    /// the upstream's `upstream` capabilities.
    pub fn new(upstream: Option<Capabilities>, tls: ListenTls, local: LocalAuth) -> Self {
        Self {
            state: State::Idle,
            upstream,
            tls,
            local,
            challenges: 0,
        }
    }

    fn offer(&self) -> Offer {
        let login = self.login_allowed();
        let sasl = self.mechanisms();
        Offer {
            stls: self.tls.starttls && !self.tls.active,
            login: login && sasl.has(Mechanism::Plain),
            cram_md5: login && sasl.has(Mechanism::CramMd5),
        }
    }

    /// The SASL mechanisms postern accepts from this client (POP3 does not
    /// offer LOGIN: USER/PASS is its plain-password form).
    fn mechanisms(&self) -> Mechanisms {
        let mut set = Mechanisms::NONE;
        if self.local.passwords {
            set = set.with(Mechanism::Plain);
        }
        if self.local.timestamp.is_some() {
            set = set.with(Mechanism::CramMd5);
        }
        set
    }

    /// A fresh CRAM-MD5 challenge: postern's timestamp with a counter, so
    /// no two AUTH exchanges of a session share one.
    fn challenge(&mut self) -> Option<Vec<u8>> {
        let ts = self.local.timestamp.as_ref()?;
        self.challenges += 1;
        Some(sasl::numbered_challenge(ts, self.challenges))
    }

    fn login_allowed(&self) -> bool {
        self.tls.active || !self.tls.required_for_auth
    }

    /// The handshake after STLS succeeded: RFC 2595 §4, everything said
    /// before TLS is forgotten.
    pub fn on_tls(&mut self) {
        self.tls.active = true;
        self.state = State::Idle;
    }

    /// The line-length cap for the next client line.
    pub fn max_line(&self) -> usize {
        match self.state {
            State::Sasl(..) => MAX_SASL_LINE,
            _ => MAX_AUTHORIZATION_LINE.max(MAX_COMMAND_LINE),
        }
    }

    /// A line was too long: answer and reset.
    pub fn on_too_long(&mut self) -> Step {
        self.state = State::Idle;
        reply("-ERR Line too long\r\n")
    }

    /// Handles one complete line from the client.
    pub fn on_line(&mut self, line: &[u8]) -> Step {
        if postern_core::sniff::looks_like_http(line) {
            return Step::Close(b"-ERR This is a POP3 service, not a web server\r\n");
        }
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Sasl(server, mechanism) => {
                return self.sasl(server.on_line(command::strip_eol(line)), mechanism)
            }
            state => self.state = state,
        }
        let have_user = match std::mem::replace(&mut self.state, State::Idle) {
            State::HaveUser(u) => Some(u),
            _ => None,
        };
        let cmd = command::parse(line);
        if matches!(
            cmd,
            Command::User(_) | Command::Pass(_) | Command::Auth { .. } | Command::Apop(..)
        ) && !self.login_allowed()
        {
            return reply("-ERR [AUTH] This server requires TLS for logins: send STLS first\r\n");
        }
        match cmd {
            Command::Capa => Step::Reply(Cow::Owned(capa::before_login(
                self.upstream.as_ref(),
                self.offer(),
            ))),
            Command::User(_) | Command::Pass(_) if !self.local.passwords => {
                reply("-ERR USER/PASS is not available here\r\n")
            }
            Command::User(name) => {
                self.state = State::HaveUser(name.to_vec());
                reply("+OK Send the password\r\n")
            }
            Command::Pass(password) => match have_user {
                Some(user) => match Login::new(&user, Secret::from(password)) {
                    Ok(login) => Step::Login(ClientAuth::Password(login)),
                    Err(_) => reply("-ERR [AUTH] Invalid user name or password\r\n"),
                },
                None => reply("-ERR Send USER first\r\n"),
            },
            Command::Auth {
                mechanism: None, ..
            } => {
                let mut list = b"+OK Mechanisms follow\r\n".to_vec();
                for m in self.mechanisms().iter() {
                    list.extend_from_slice(m.name().as_bytes());
                    list.extend_from_slice(b"\r\n");
                }
                list.extend_from_slice(b".\r\n");
                Step::Reply(Cow::Owned(list))
            }
            Command::Auth {
                mechanism: Some(m),
                initial,
            } => match Mechanism::parse(m).filter(|m| self.mechanisms().has(*m)) {
                Some(mechanism) => {
                    let challenge = self.challenge().unwrap_or_default();
                    self.sasl(SaslServer::start(mechanism, initial, challenge), mechanism)
                }
                None => reply("-ERR Unsupported authentication mechanism\r\n"),
            },
            Command::Apop(user, digest) => match (&self.local.timestamp, std::str::from_utf8(user)) {
                (Some(ts), Ok(user)) if !user.is_empty() => Step::Login(ClientAuth::Apop {
                    user: user.to_owned(),
                    timestamp: ts.clone(),
                    digest: digest.to_vec(),
                }),
                (Some(_), _) => reply("-ERR [AUTH] Authentication failed\r\n"),
                (None, _) => reply(
                    "-ERR APOP is not available here; log in with USER/PASS or AUTH PLAIN (postern protects the password upstream)\r\n",
                ),
            },
            Command::Stls if self.tls.active => reply("-ERR Already using TLS\r\n"),
            Command::Stls if !self.tls.starttls => reply("-ERR STLS is not available on this port\r\n"),
            Command::Stls => Step::StartTls,
            Command::Quit => Step::Quit,
            Command::Transaction(_) => reply("-ERR Log in first\r\n"),
            Command::Empty => reply("-ERR Empty command\r\n"),
            Command::Invalid(why) => Step::Reply(Cow::Owned(format!("-ERR {why}\r\n").into_bytes())),
        }
    }

    /// Renders a SASL step in POP3's words (RFC 5034).
    fn sasl(&mut self, step: ServerStep, mechanism: Mechanism) -> Step {
        match step {
            ServerStep::Prompt(server, challenge) => {
                self.state = State::Sasl(server, mechanism);
                Step::Reply(Cow::Owned(
                    format!("+ {}\r\n", sasl::encode(&challenge)).into_bytes(),
                ))
            }
            ServerStep::Done(auth) => Step::Login(auth),
            ServerStep::Cancelled => reply("-ERR Authentication cancelled\r\n"),
            ServerStep::Refused(Refused::Base64) => Step::Reply(Cow::Owned(
                format!("-ERR Invalid base64 in AUTH {}\r\n", mechanism.name()).into_bytes(),
            )),
            ServerStep::Refused(Refused::AuthzidDiffers) => reply(
                "-ERR [AUTH] Logging in as another user (authorization identity) is not supported\r\n",
            ),
            ServerStep::Refused(Refused::Invalid) => match mechanism {
                Mechanism::Plain => reply("-ERR [AUTH] Invalid AUTH PLAIN message\r\n"),
                _ => reply("-ERR [AUTH] Authentication failed\r\n"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    const PASSWORDS: LocalAuth = LocalAuth {
        passwords: true,
        timestamp: None,
    };

    const PLAIN: ListenTls = ListenTls {
        starttls: false,
        active: false,
        required_for_auth: false,
    };

    fn machine() -> Authorization {
        Authorization::new(None, PLAIN, PASSWORDS)
    }

    fn text(step: Step) -> String {
        match step {
            Step::Reply(r) => String::from_utf8_lossy(&r).into_owned(),
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    fn login(step: Step) -> (String, Vec<u8>) {
        match step {
            Step::Login(ClientAuth::Password(l)) => {
                (l.user().to_owned(), l.password().expose().to_vec())
            }
            other => panic!("expected a login, got {other:?}"),
        }
    }

    fn b64(s: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn user_pass_with_spaces_in_the_password() {
        let mut m = machine();
        assert!(text(m.on_line(b"USER tim\r\n")).starts_with("+OK"));
        let (u, p) = login(m.on_line(b"PASS tan staaf \r\n"));
        assert_eq!((u.as_str(), p.as_slice()), ("tim", &b"tan staaf "[..]));
        // Back to idle: PASS alone now needs USER again.
        assert!(text(m.on_line(b"PASS x\r\n")).starts_with("-ERR"));
    }

    #[test]
    fn auth_plain_initial_response_and_continuation() {
        let mut m = machine();
        let ir = b64(b"\0tim\0secret");
        let (u, p) = login(m.on_line(format!("AUTH PLAIN {ir}\r\n").as_bytes()));
        assert_eq!((u.as_str(), p.as_slice()), ("tim", &b"secret"[..]));

        assert_eq!(text(m.on_line(b"auth plain\r\n")), "+ \r\n");
        assert_eq!(m.max_line(), MAX_SASL_LINE);
        let (u, _) = login(m.on_line(format!("{}\r\n", b64(b"tim\0tim\0pw")).as_bytes()));
        assert_eq!(u, "tim");

        assert_eq!(text(m.on_line(b"AUTH PLAIN\r\n")), "+ \r\n");
        assert!(text(m.on_line(b"*\r\n")).starts_with("-ERR"));
        assert!(text(m.on_line(b"CAPA\r\n")).contains("\r\nSASL PLAIN\r\n"));
    }

    #[test]
    fn refusals() {
        let mut m = machine();
        let other = b64(b"admin\0tim\0pw");
        assert!(text(m.on_line(format!("AUTH PLAIN {other}\r\n").as_bytes())).contains("[AUTH]"));
        let injected = b64(b"\0tim\0pw\r\nDELE 1");
        assert!(
            text(m.on_line(format!("AUTH PLAIN {injected}\r\n").as_bytes())).contains("[AUTH]")
        );
        assert!(text(m.on_line(b"AUTH PLAIN !!!\r\n")).starts_with("-ERR"));
        assert!(text(m.on_line(b"AUTH CRAM-MD5\r\n")).starts_with("-ERR"));
        assert!(text(m.on_line(b"AUTH\r\n")).contains("PLAIN"));
        assert!(text(m.on_line(b"RETR 1\r\n")).starts_with("-ERR"));
        assert!(
            text(m.on_line(b"APOP tim c4c9334bac560ecc979e58001b3e22fb\r\n")).starts_with("-ERR")
        );
        assert!(text(m.on_line(b"STLS\r\n")).starts_with("-ERR"));
        assert!(text(m.on_line(b"\r\n")).starts_with("-ERR"));
        assert!(text(m.on_line(b"HELO x\r\n")).starts_with("-ERR"));
        assert!(matches!(m.on_line(b"QUIT\r\n"), Step::Quit));
    }

    #[test]
    fn pipelined_lines_in_one_buffer() {
        // The driver splits lines; the machine must handle them back to back.
        let mut m = machine();
        let mut steps = Vec::new();
        for line in b"CAPA\r\nUSER a\r\nPASS b\r\n".split_inclusive(|b| *b == b'\n') {
            steps.push(m.on_line(line));
        }
        assert!(matches!(steps[0], Step::Reply(_)));
        assert!(matches!(steps[1], Step::Reply(_)));
        assert!(matches!(steps[2], Step::Login(_)));
    }

    #[test]
    fn starttls_listener_requires_tls_before_login_and_forgets_user() {
        let mut m = Authorization::new(
            None,
            ListenTls {
                starttls: true,
                active: false,
                required_for_auth: true,
            },
            PASSWORDS,
        );
        let capa = text(m.on_line(b"CAPA\r\n"));
        assert!(capa.contains("\r\nSTLS\r\n"), "{capa}");
        assert!(!capa.contains("USER") && !capa.contains("SASL"), "{capa}");
        assert!(text(m.on_line(b"USER tim\r\n")).contains("STLS first"));
        assert!(text(m.on_line(b"AUTH PLAIN AHRpbQB4\r\n")).contains("STLS first"));
        assert!(matches!(m.on_line(b"STLS\r\n"), Step::StartTls));
        m.on_tls();
        let capa = text(m.on_line(b"CAPA\r\n"));
        assert!(!capa.contains("STLS") && capa.contains("USER"), "{capa}");
        assert!(text(m.on_line(b"STLS\r\n")).contains("Already"));
        assert!(text(m.on_line(b"USER tim\r\n")).starts_with("+OK"));
        let (u, _) = login(m.on_line(b"PASS x\r\n"));
        assert_eq!(u, "tim");
    }

    #[test]
    fn user_given_before_stls_is_forgotten() {
        let mut m = Authorization::new(
            None,
            ListenTls {
                starttls: true,
                active: false,
                required_for_auth: false,
            },
            PASSWORDS,
        );
        assert!(text(m.on_line(b"USER early\r\n")).starts_with("+OK"));
        assert!(matches!(m.on_line(b"STLS\r\n"), Step::StartTls));
        m.on_tls();
        assert!(text(m.on_line(b"PASS x\r\n")).contains("USER first"));
    }

    #[test]
    fn local_apop_and_cram_md5_when_postern_holds_secrets() {
        let ts = b"<1896.697170952@dbc.mtview.ca.us>".to_vec();
        let local = LocalAuth {
            passwords: true,
            timestamp: Some(ts.clone()),
        };
        let mut m = Authorization::new(None, PLAIN, local);
        assert!(text(m.on_line(b"CAPA\r\n")).contains("SASL PLAIN CRAM-MD5"));
        match m.on_line(b"APOP scanner c4c9334bac560ecc979e58001b3e22fb\r\n") {
            Step::Login(ClientAuth::Apop {
                user,
                timestamp,
                digest,
            }) => {
                assert_eq!(user, "scanner");
                assert_eq!(timestamp, ts);
                assert_eq!(digest, b"c4c9334bac560ecc979e58001b3e22fb");
            }
            other => panic!("{other:?}"),
        }
        let prompt = text(m.on_line(b"AUTH CRAM-MD5\r\n"));
        let b64 = prompt.trim_start_matches("+ ").trim_end();
        let c1 = sasl::decode(b64.as_bytes()).expect("challenge").to_vec();
        assert!(
            c1.starts_with(b"<1.1896.") && c1.ends_with(b"@dbc.mtview.ca.us>"),
            "{c1:?}"
        );
        let resp = b64_of(b"scanner 0123abcd");
        match m.on_line(format!("{resp}\r\n").as_bytes()) {
            Step::Login(ClientAuth::CramMd5 {
                user,
                challenge,
                digest,
            }) => {
                assert_eq!(user, "scanner");
                assert_eq!(challenge, c1);
                assert_eq!(digest, b"0123abcd");
            }
            other => panic!("{other:?}"),
        }
        let prompt = text(m.on_line(b"AUTH CRAM-MD5\r\n"));
        let c2 = sasl::decode(prompt.trim_start_matches("+ ").trim_end().as_bytes())
            .expect("b64")
            .to_vec();
        assert_ne!(c1, c2, "every exchange gets a fresh challenge");
        assert!(text(m.on_line(b"*\r\n")).starts_with("-ERR"));
    }

    #[test]
    fn without_local_secrets_there_is_no_apop_or_cram() {
        let mut m = machine();
        assert!(text(m.on_line(b"APOP a b\r\n")).contains("not available"));
        assert!(text(m.on_line(b"AUTH CRAM-MD5\r\n")).starts_with("-ERR"));
        assert!(!text(m.on_line(b"CAPA\r\n")).contains("CRAM-MD5"));
    }

    #[test]
    fn http_requests_close_the_session() {
        let mut m = machine();
        assert!(matches!(m.on_line(b"POST / HTTP/1.1\r\n"), Step::Close(_)));
        assert!(matches!(
            m.on_line(b"Host: 127.0.0.1:3999\r\n"),
            Step::Close(_)
        ));
    }

    fn b64_of(s: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }
}
