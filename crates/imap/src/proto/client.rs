//! The not-authenticated state (RFC 9051 §3.1, §6.1, §6.2), spoken by
//! postern itself: the client never reaches the upstream before it has
//! logged in to postern.
//!
//! ```text
//!  greeting()  * OK [CAPABILITY ...] postern IMAP gateway ready
//!
//!          CAPABILITY | NOOP | ID | errors ─► Step::Reply (state unchanged)
//!   Idle ──STARTTLS──► Step::StartTls ─► [driver: go-ahead, TLS] ─► on_tls(): Idle, TLS active
//!    │ ──LOGIN u p──────────────────────────────► Step::Login ─► (driver logs in upstream,
//!    │ ──AUTHENTICATE m ir──────────────────────┘                 answers login_ok/_failed/_unavailable)
//!    │ ──AUTHENTICATE m──► Step::SaslContinue ─► InSasl ─ on_sasl_line ─┬─► Step::Login
//!    │                                                  ▲             ├─► SaslContinue (LOGIN: password)
//!    │                                                  └─────────────┘   "*" ─► BAD, Idle
//!    └──LOGOUT──► Step::Logout ─► [driver: logout(tag), close]
//! ```
//!
//! The driver reads command lines and literals through a
//! [`CommandReader`](super::command::CommandReader) and hands complete
//! commands to [`NotAuthenticated::on_command`]; while
//! [`NotAuthenticated::in_sasl`] is true it reads one line (at most
//! [`MAX_SASL_LINE`]) and hands it to [`NotAuthenticated::on_sasl_line`]
//! instead. Replies carry RFC 5530 codes: `[AUTHENTICATIONFAILED]`,
//! `[AUTHORIZATIONFAILED]`, `[UNAVAILABLE]`, `[PRIVACYREQUIRED]`,
//! `[CLIENTBUG]`, `[CANNOT]`. After [`MAX_BAD_COMMANDS`] `BAD`s the
//! machine answers [`Step::Close`] (a client that speaks another protocol,
//! or garbage).

use postern_core::credentials::{ClientAuth, Login};
use postern_core::sasl::{self, Mechanism, Mechanisms, Refused, SaslServer, ServerStep};
use postern_core::tls::ListenTls;

use super::capability::{self, Capabilities};
use super::command::{Command, CommandKind};
use super::response::strip_eol;

/// The longest SASL response line (PLAIN, LOGIN and CRAM-MD5 responses
/// are short; RFC 4954's 12,288 is for tokens postern never takes here).
pub const MAX_SASL_LINE: usize = 8 * 1024;

/// `BAD` replies before the session is closed.
pub const MAX_BAD_COMMANDS: u32 = 10;

/// What the driver does next.
#[derive(Debug)]
pub enum Step {
    /// Write these bytes (complete response lines), read the next command.
    Reply(Vec<u8>),
    /// Check this authentication (locally, then by logging in upstream),
    /// then answer with [`login_ok`], [`login_failed`] or
    /// [`login_unavailable`] under `tag`.
    Login {
        /// The tag of the LOGIN/AUTHENTICATE command.
        tag: Vec<u8>,
        /// What the client proved.
        auth: ClientAuth,
    },
    /// The client asked for STARTTLS on a listener that offers it: refuse
    /// pipelined bytes, write [`starttls_go_ahead`], handshake, then call
    /// [`NotAuthenticated::on_tls`].
    StartTls {
        /// The tag of the STARTTLS command.
        tag: Vec<u8>,
    },
    /// Write [`logout`] and close (the upstream, if connected, gets its own
    /// LOGOUT).
    Logout {
        /// The tag of the LOGOUT command.
        tag: Vec<u8>,
    },
    /// Write these bytes and close.
    Close(Vec<u8>),
    /// Write this SASL continuation request (`+ base64` CRLF), then read
    /// one line for [`NotAuthenticated::on_sasl_line`].
    SaslContinue(Vec<u8>),
}

/// What postern itself can check (from the route's credential source).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalAuth {
    /// LOGIN and AUTHENTICATE PLAIN/LOGIN are accepted (passthrough or
    /// local passwords).
    pub passwords: bool,
    /// postern's challenge base (`<...@...>`) when it holds local secrets:
    /// AUTHENTICATE CRAM-MD5 is then offered.
    pub challenge: Option<Vec<u8>>,
}

#[derive(Debug)]
struct Sasl {
    tag: Vec<u8>,
    server: SaslServer,
    mechanism: Mechanism,
}

/// The not-authenticated state of one client.
#[derive(Debug)]
pub struct NotAuthenticated {
    upstream: Option<Capabilities>,
    tls: ListenTls,
    local: LocalAuth,
    sasl: Option<Sasl>,
    challenges: u32,
    bad: u32,
}

/// Commands of the authenticated and selected states (RFC 9051 §6.3,
/// §6.4 and common extensions): before login they get "log in first"
/// rather than "unknown command".
const AFTER_LOGIN: [&[u8]; 37] = [
    b"SELECT",
    b"EXAMINE",
    b"CREATE",
    b"DELETE",
    b"RENAME",
    b"SUBSCRIBE",
    b"UNSUBSCRIBE",
    b"LIST",
    b"LSUB",
    b"NAMESPACE",
    b"STATUS",
    b"APPEND",
    b"IDLE",
    b"ENABLE",
    b"CHECK",
    b"CLOSE",
    b"UNSELECT",
    b"EXPUNGE",
    b"SEARCH",
    b"FETCH",
    b"STORE",
    b"COPY",
    b"MOVE",
    b"UID",
    b"SORT",
    b"THREAD",
    b"GETQUOTA",
    b"GETQUOTAROOT",
    b"SETQUOTA",
    b"GETACL",
    b"SETACL",
    b"MYRIGHTS",
    b"GETMETADATA",
    b"SETMETADATA",
    b"NOTIFY",
    b"COMPRESS",
    b"UNAUTHENTICATE",
];

fn tagged(tag: &[u8], rest: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(tag.len() + rest.len() + 3);
    out.extend_from_slice(tag);
    out.push(b' ');
    out.extend_from_slice(rest.as_bytes());
    out.extend_from_slice(b"\r\n");
    out
}

/// The tagged OK after a successful upstream login. With the upstream's
/// post-login capabilities (the `[CAPABILITY]` code of its OK, or its
/// untagged CAPABILITY) they go in a `[CAPABILITY]` code, filtered with
/// [`capability::after_login`] (RFC 9051 §6.2.3: clients then need not
/// ask).
pub fn login_ok(tag: &[u8], upstream: Option<&Capabilities>) -> Vec<u8> {
    match upstream.map(capability::after_login) {
        Some(caps) if !caps.is_empty() => {
            let mut out = tag.to_vec();
            out.extend_from_slice(b" OK [CAPABILITY ");
            out.extend_from_slice(&caps.to_text());
            out.extend_from_slice(b"] Logged in\r\n");
            out
        }
        _ => tagged(tag, "OK Logged in"),
    }
}

/// The tagged NO for refused credentials (postern's check or the
/// upstream's).
pub fn login_failed(tag: &[u8]) -> Vec<u8> {
    tagged(tag, "NO [AUTHENTICATIONFAILED] Authentication failed")
}

/// The tagged NO for a login that failed for a reason other than the
/// credentials: the upstream is unreachable, insecure, or said
/// `[UNAVAILABLE]`; an account backing off. The client may retry later.
pub fn login_unavailable(tag: &[u8]) -> Vec<u8> {
    tagged(
        tag,
        "NO [UNAVAILABLE] The mail server is not available now; try again later",
    )
}

/// The tagged OK that starts the TLS handshake (RFC 9051 §6.2.1).
pub fn starttls_go_ahead(tag: &[u8]) -> Vec<u8> {
    tagged(tag, "OK Begin TLS negotiation now")
}

/// The answer to LOGOUT: `* BYE`, then the tagged OK (RFC 9051 §6.1.3).
pub fn logout(tag: &[u8]) -> Vec<u8> {
    let mut out = b"* BYE postern IMAP gateway logging out\r\n".to_vec();
    out.extend_from_slice(&tagged(tag, "OK LOGOUT completed"));
    out
}

impl NotAuthenticated {
    /// A machine for a client of a listener in `tls` state; `upstream` is
    /// the upstream's last known capability list (it decides whether
    /// `IMAP4rev2` is advertised).
    pub fn new(upstream: Option<Capabilities>, tls: ListenTls, local: LocalAuth) -> Self {
        Self {
            upstream,
            tls,
            local,
            sasl: None,
            challenges: 0,
            bad: 0,
        }
    }

    /// postern's greeting, with its capabilities (RFC 9051 §7.1.1).
    pub fn greeting(&self) -> Vec<u8> {
        let mut out = b"* OK [CAPABILITY ".to_vec();
        out.extend_from_slice(&self.capabilities().to_text());
        out.extend_from_slice(b"] postern IMAP gateway ready\r\n");
        out
    }

    /// What postern advertises now.
    pub fn capabilities(&self) -> Capabilities {
        capability::for_client_before_login(self.upstream.as_ref(), self.tls, self.mechanisms())
    }

    /// The SASL mechanisms postern checks itself.
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

    fn login_allowed(&self) -> bool {
        self.tls.active || !self.tls.required_for_auth
    }

    /// Whether a SASL exchange waits for the client's next line.
    pub fn in_sasl(&self) -> bool {
        self.sasl.is_some()
    }

    /// STARTTLS succeeded: TLS is active and everything before it is
    /// forgotten (RFC 9051 §6.2.1).
    pub fn on_tls(&mut self) {
        self.tls.active = true;
        self.sasl = None;
    }

    /// A `BAD`, counted: too many close the session.
    fn bad(&mut self, tag: &[u8], text: &str) -> Step {
        self.bad += 1;
        let mut reply = tagged(tag, &format!("BAD {text}"));
        if self.bad >= MAX_BAD_COMMANDS {
            reply.extend_from_slice(b"* BYE Too many invalid commands\r\n");
            return Step::Close(reply);
        }
        Step::Reply(reply)
    }

    /// Handles one complete command. A command arriving while a SASL
    /// exchange is open (a driver that ignored [`Self::in_sasl`]) ends
    /// that exchange first.
    pub fn on_command(&mut self, command: Command) -> Step {
        self.sasl = None;
        let Command { tag, kind } = command;
        let login_command = matches!(
            kind,
            CommandKind::Login { .. } | CommandKind::Authenticate { .. }
        );
        if login_command && !self.login_allowed() {
            return Step::Reply(tagged(
                &tag,
                "NO [PRIVACYREQUIRED] Logins need TLS here: send STARTTLS first",
            ));
        }
        match kind {
            CommandKind::Capability => {
                let mut out = self.capabilities().untagged();
                out.extend_from_slice(&tagged(&tag, "OK CAPABILITY completed"));
                Step::Reply(out)
            }
            CommandKind::Noop => Step::Reply(tagged(&tag, "OK NOOP completed")),
            CommandKind::Logout => Step::Logout { tag },
            CommandKind::Id => {
                let mut out = b"* ID (\"name\" \"postern\")\r\n".to_vec();
                out.extend_from_slice(&tagged(&tag, "OK ID completed"));
                Step::Reply(out)
            }
            CommandKind::StartTls if self.tls.active => {
                self.bad(&tag, "[CLIENTBUG] TLS is already active")
            }
            CommandKind::StartTls if !self.tls.starttls => {
                self.bad(&tag, "STARTTLS is not available on this port")
            }
            CommandKind::StartTls => Step::StartTls { tag },
            CommandKind::Login { .. } if !self.local.passwords => Step::Reply(tagged(
                &tag,
                "NO [CANNOT] Password logins are not available here",
            )),
            CommandKind::Login { user, password } => match Login::new(&user, password) {
                Ok(login) => Step::Login {
                    tag,
                    auth: ClientAuth::Password(login),
                },
                Err(_) => Step::Reply(login_failed(&tag)),
            },
            CommandKind::Authenticate { mechanism, initial } => {
                let Some(m) = Mechanism::parse(&mechanism).filter(|m| self.mechanisms().has(*m))
                else {
                    return Step::Reply(tagged(
                        &tag,
                        "NO [CANNOT] Unsupported authentication mechanism",
                    ));
                };
                if m == Mechanism::CramMd5 && initial.is_some() {
                    return self.bad(&tag, "[CLIENTBUG] CRAM-MD5 takes no initial response");
                }
                let challenge = self.challenge();
                let step = SaslServer::start(m, initial.as_ref().map(|s| s.expose()), challenge);
                self.sasl_step(tag, m, step)
            }
            CommandKind::Other(name) if AFTER_LOGIN.contains(&name.as_slice()) => {
                self.bad(&tag, "[CLIENTBUG] Log in first (LOGIN or AUTHENTICATE)")
            }
            CommandKind::Other(_) => self.bad(&tag, "Unknown command"),
        }
    }

    /// A fresh CRAM-MD5 challenge: postern's base with a counter, so no
    /// two exchanges of a session share one.
    fn challenge(&mut self) -> Vec<u8> {
        match &self.local.challenge {
            Some(base) => {
                self.challenges += 1;
                sasl::numbered_challenge(base, self.challenges)
            }
            None => Vec::new(),
        }
    }

    /// One SASL response line from the client (line end included or not).
    pub fn on_sasl_line(&mut self, line: &[u8]) -> Step {
        match self.sasl.take() {
            Some(s) => {
                let step = s.server.on_line(strip_eol(line));
                self.sasl_step(s.tag, s.mechanism, step)
            }
            None => self.bad(b"*", "No authentication in progress"),
        }
    }

    /// The client's SASL response line was longer than [`MAX_SASL_LINE`]
    /// (and discarded): the exchange fails.
    pub fn on_sasl_too_long(&mut self) -> Step {
        match self.sasl.take() {
            Some(s) => self.bad(&s.tag, "Authentication response too long"),
            None => self.bad(b"*", "Line too long"),
        }
    }

    /// Renders a SASL step in IMAP's words (RFC 9051 §6.2.2).
    fn sasl_step(&mut self, tag: Vec<u8>, mechanism: Mechanism, step: ServerStep) -> Step {
        match step {
            ServerStep::Prompt(server, challenge) => {
                self.sasl = Some(Sasl {
                    tag,
                    server,
                    mechanism,
                });
                Step::SaslContinue(format!("+ {}\r\n", sasl::encode(&challenge)).into_bytes())
            }
            ServerStep::Done(auth) => Step::Login { tag, auth },
            // RFC 9051 §6.2.2: a cancelled exchange gets a tagged BAD.
            ServerStep::Cancelled => Step::Reply(tagged(&tag, "BAD Authentication cancelled")),
            ServerStep::Refused(Refused::Base64) => self.bad(&tag, "Invalid base64 data"),
            ServerStep::Refused(Refused::AuthzidDiffers) => Step::Reply(tagged(
                &tag,
                "NO [AUTHORIZATIONFAILED] Logging in as another user (authorization identity) is not supported",
            )),
            ServerStep::Refused(Refused::Invalid) => Step::Reply(login_failed(&tag)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::command::{Assembled, CommandReader};

    fn b64(s: &[u8]) -> String {
        sasl::encode(s)
    }

    fn command(line: &str) -> Command {
        match CommandReader::default().feed_line(line.as_bytes()) {
            Assembled::Command(c) => c,
            other => panic!("{line:?} is not a complete command: {other:?}"),
        }
    }

    /// What a step shows the client (or does), as text.
    fn show(step: Step) -> String {
        match step {
            Step::Reply(r) => String::from_utf8_lossy(&r).into_owned(),
            Step::SaslContinue(r) => format!("SASL {}", String::from_utf8_lossy(&r)),
            Step::Close(r) => format!("CLOSE {}", String::from_utf8_lossy(&r)),
            Step::StartTls { tag } => format!("STARTTLS {}", String::from_utf8_lossy(&tag)),
            Step::Logout { tag } => format!("LOGOUT {}", String::from_utf8_lossy(&tag)),
            Step::Login { tag, auth } => {
                let tag = String::from_utf8_lossy(&tag);
                match auth {
                    ClientAuth::Password(l) => format!(
                        "LOGIN {tag} {} {}",
                        l.user(),
                        String::from_utf8_lossy(l.password().expose())
                    ),
                    ClientAuth::CramMd5 { user, digest, .. } => {
                        format!("CRAM {tag} {user} {}", String::from_utf8_lossy(&digest))
                    }
                    ClientAuth::Apop { .. } => "APOP?".to_owned(),
                }
            }
        }
    }

    const PLAIN: ListenTls = ListenTls {
        starttls: false,
        active: false,
        required_for_auth: false,
    };

    const STARTTLS_REQUIRED: ListenTls = ListenTls {
        starttls: true,
        active: false,
        required_for_auth: true,
    };

    fn passwords() -> LocalAuth {
        LocalAuth {
            passwords: true,
            challenge: None,
        }
    }

    fn secrets() -> LocalAuth {
        LocalAuth {
            passwords: true,
            challenge: Some(b"<1896.697170952@postern>".to_vec()),
        }
    }

    /// Feeds lines: command lines through the reader, SASL lines while
    /// an exchange is open; returns what each produced.
    fn run(m: &mut NotAuthenticated, lines: &[&str]) -> Vec<String> {
        lines
            .iter()
            .map(|l| {
                if m.in_sasl() {
                    show(m.on_sasl_line(l.as_bytes()))
                } else {
                    show(m.on_command(command(l)))
                }
            })
            .collect()
    }

    #[test]
    fn session_table() {
        let upstream = Capabilities::parse(b"IMAP4rev1 IMAP4rev2 STARTTLS AUTH=XOAUTH2");
        let plain_ir = format!("a AUTHENTICATE PLAIN {}\r\n", b64(b"\0tim\0tanstaaf"));
        let plain_line = format!("{}\r\n", b64(b"tim\0tim\0pw"));
        let other_user = format!("a AUTHENTICATE PLAIN {}\r\n", b64(b"root\0tim\0pw"));
        let injected = format!(
            "a AUTHENTICATE PLAIN {}\r\n",
            b64(b"\0tim\0pw\r\nx DELETE INBOX")
        );
        let user = format!("{}\r\n", b64(b"tim"));
        let pass = format!("{}\r\n", b64(b"pass word"));
        let cases: Vec<(ListenTls, LocalAuth, Vec<&str>, Vec<&str>)> = vec![
            (
                PLAIN,
                passwords(),
                vec!["a1 CAPABILITY\r\n", "a2 NOOP\r\n", "a3 ID NIL\r\n", "a4 LOGOUT\r\n"],
                vec![
                    "* CAPABILITY IMAP4rev1 IMAP4rev2 AUTH=PLAIN AUTH=LOGIN SASL-IR LITERAL- ID\r\na1 OK CAPABILITY completed\r\n",
                    "a2 OK NOOP completed\r\n",
                    "* ID (\"name\" \"postern\")\r\na3 OK ID completed\r\n",
                    "LOGOUT a4",
                ],
            ),
            (
                PLAIN,
                passwords(),
                vec![
                    "a001 LOGIN SMITH SESAME\r\n",
                    "a LOGIN \"\" x\r\n",
                    "a LOGIN \"t\\\"im\" \"\"\r\n",
                ],
                vec![
                    "LOGIN a001 SMITH SESAME",
                    "a NO [AUTHENTICATIONFAILED] Authentication failed\r\n",
                    "LOGIN a t\"im ",
                ],
            ),
            (
                PLAIN,
                passwords(),
                vec![
                    &plain_ir,
                    "b AUTHENTICATE PLAIN\r\n",
                    &plain_line,
                    "c AUTHENTICATE LOGIN\r\n",
                    &user,
                    &pass,
                    "d AUTHENTICATE LOGIN\r\n",
                    "*\r\n",
                    &other_user,
                    &injected,
                    "e AUTHENTICATE PLAIN !!\r\n",
                    "f AUTHENTICATE CRAM-MD5\r\n",
                    "g AUTHENTICATE XOAUTH2 dXNlcj0=\r\n",
                ],
                vec![
                    "LOGIN a tim tanstaaf",
                    "SASL + \r\n",
                    "LOGIN b tim pw",
                    "SASL + VXNlcm5hbWU6\r\n",
                    "SASL + UGFzc3dvcmQ6\r\n",
                    "LOGIN c tim pass word",
                    "SASL + VXNlcm5hbWU6\r\n",
                    "d BAD Authentication cancelled\r\n",
                    "a NO [AUTHORIZATIONFAILED] Logging in as another user (authorization identity) is not supported\r\n",
                    "a NO [AUTHENTICATIONFAILED] Authentication failed\r\n",
                    "e BAD Invalid base64 data\r\n",
                    "f NO [CANNOT] Unsupported authentication mechanism\r\n",
                    "g NO [CANNOT] Unsupported authentication mechanism\r\n",
                ],
            ),
            (
                PLAIN,
                passwords(),
                vec![
                    "x SELECT INBOX\r\n",
                    "x uid fetch 1 BODY[]\r\n",
                    "x XYZZY\r\n",
                    "x STARTTLS\r\n",
                    "x COMPRESS DEFLATE\r\n",
                ],
                vec![
                    "x BAD [CLIENTBUG] Log in first (LOGIN or AUTHENTICATE)\r\n",
                    "x BAD [CLIENTBUG] Log in first (LOGIN or AUTHENTICATE)\r\n",
                    "x BAD Unknown command\r\n",
                    "x BAD STARTTLS is not available on this port\r\n",
                    "x BAD [CLIENTBUG] Log in first (LOGIN or AUTHENTICATE)\r\n",
                ],
            ),
            (
                STARTTLS_REQUIRED,
                passwords(),
                vec![
                    "a CAPABILITY\r\n",
                    "b LOGIN tim pw\r\n",
                    &plain_ir,
                    "c STARTTLS\r\n",
                ],
                vec![
                    "* CAPABILITY IMAP4rev1 IMAP4rev2 STARTTLS LOGINDISABLED LITERAL- ID\r\na OK CAPABILITY completed\r\n",
                    "b NO [PRIVACYREQUIRED] Logins need TLS here: send STARTTLS first\r\n",
                    "a NO [PRIVACYREQUIRED] Logins need TLS here: send STARTTLS first\r\n",
                    "STARTTLS c",
                ],
            ),
            (
                PLAIN,
                LocalAuth {
                    passwords: false,
                    challenge: None,
                },
                vec!["a LOGIN tim pw\r\n", &plain_ir, "b CAPABILITY\r\n"],
                vec![
                    "a NO [CANNOT] Password logins are not available here\r\n",
                    "a NO [CANNOT] Unsupported authentication mechanism\r\n",
                    "* CAPABILITY IMAP4rev1 IMAP4rev2 LOGINDISABLED LITERAL- ID\r\nb OK CAPABILITY completed\r\n",
                ],
            ),
            (
                PLAIN,
                secrets(),
                vec![
                    "a CAPABILITY\r\n",
                    "b AUTHENTICATE CRAM-MD5 dGlt\r\n",
                ],
                vec![
                    "* CAPABILITY IMAP4rev1 IMAP4rev2 AUTH=PLAIN AUTH=LOGIN AUTH=CRAM-MD5 SASL-IR LITERAL- ID\r\na OK CAPABILITY completed\r\n",
                    "b BAD [CLIENTBUG] CRAM-MD5 takes no initial response\r\n",
                ],
            ),
        ];
        assert!(!cases.is_empty());
        for (tls, local, lines, want) in cases {
            let mut m = NotAuthenticated::new(Some(upstream.clone()), tls, local);
            assert_eq!(run(&mut m, &lines), want, "{lines:?}");
        }
    }

    #[test]
    fn greeting_and_starttls_upgrade() {
        let mut m = NotAuthenticated::new(None, STARTTLS_REQUIRED, passwords());
        assert_eq!(
            m.greeting(),
            b"* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED LITERAL- ID] postern IMAP gateway ready\r\n"
        );
        assert!(matches!(
            m.on_command(command("a STARTTLS\r\n")),
            Step::StartTls { .. }
        ));
        m.on_tls();
        assert_eq!(
            run(&mut m, &["b CAPABILITY\r\n", "c STARTTLS\r\n", "d LOGIN tim pw\r\n"]),
            [
                "* CAPABILITY IMAP4rev1 AUTH=PLAIN AUTH=LOGIN SASL-IR LITERAL- ID\r\nb OK CAPABILITY completed\r\n",
                "c BAD [CLIENTBUG] TLS is already active\r\n",
                "LOGIN d tim pw",
            ]
        );
    }

    #[test]
    fn sasl_exchange_is_forgotten_after_tls() {
        let mut m = NotAuthenticated::new(
            None,
            ListenTls {
                starttls: true,
                active: false,
                required_for_auth: false,
            },
            passwords(),
        );
        assert!(matches!(
            m.on_command(command("a AUTHENTICATE PLAIN\r\n")),
            Step::SaslContinue(_)
        ));
        assert!(m.in_sasl());
        m.on_tls();
        assert!(!m.in_sasl());
        assert!(matches!(m.on_sasl_line(b"x\r\n"), Step::Reply(_)));
        // A command while an exchange is open ends the exchange.
        assert!(matches!(
            m.on_command(command("a AUTHENTICATE PLAIN\r\n")),
            Step::SaslContinue(_)
        ));
        assert!(matches!(
            m.on_command(command("b NOOP\r\n")),
            Step::Reply(_)
        ));
        assert!(!m.in_sasl());
        assert!(matches!(
            m.on_command(command("c AUTHENTICATE PLAIN\r\n")),
            Step::SaslContinue(_)
        ));
        assert_eq!(
            show(m.on_sasl_too_long()),
            "c BAD Authentication response too long\r\n"
        );
    }

    #[test]
    fn cram_md5_against_postern_s_fresh_challenges() {
        let mut m = NotAuthenticated::new(None, PLAIN, secrets());
        let Step::SaslContinue(prompt) = m.on_command(command("a AUTHENTICATE CRAM-MD5\r\n"))
        else {
            panic!("a challenge");
        };
        let b64 = String::from_utf8_lossy(&prompt);
        let c1 = sasl::decode(b64.trim_start_matches("+ ").trim_end().as_bytes())
            .expect("base64")
            .to_vec();
        assert_eq!(c1, b"<1.1896.697170952@postern>");
        let digest = sasl::cram_md5_digest(&postern_core::Secret::from("tanstaaftanstaaf"), &c1);
        let resp = format!(
            "{}\r\n",
            sasl::encode(format!("tim {}", &*digest).as_bytes())
        );
        match m.on_sasl_line(resp.as_bytes()) {
            Step::Login {
                tag,
                auth:
                    ClientAuth::CramMd5 {
                        user,
                        challenge,
                        digest: d,
                    },
            } => {
                assert_eq!(tag, b"a");
                assert_eq!(user, "tim");
                assert_eq!(challenge, c1);
                assert_eq!(d, digest.as_bytes());
            }
            other => panic!("{other:?}"),
        }
        let Step::SaslContinue(prompt) = m.on_command(command("b AUTHENTICATE CRAM-MD5\r\n"))
        else {
            panic!("a challenge");
        };
        assert_ne!(
            String::from_utf8_lossy(&prompt),
            String::from_utf8_lossy(&format!("+ {}\r\n", sasl::encode(&c1)).into_bytes())
        );
        assert_eq!(
            show(m.on_sasl_line(b"*\r\n")),
            "b BAD Authentication cancelled\r\n"
        );
    }

    #[test]
    fn too_many_bad_commands_close() {
        let mut m = NotAuthenticated::new(None, PLAIN, passwords());
        for i in 1..MAX_BAD_COMMANDS {
            assert!(
                matches!(m.on_command(command("x EHLO there\r\n")), Step::Reply(_)),
                "{i}"
            );
        }
        assert_eq!(
            show(m.on_command(command("x EHLO there\r\n"))),
            "CLOSE x BAD Unknown command\r\n* BYE Too many invalid commands\r\n"
        );
    }

    #[test]
    fn replies_after_login() {
        let caps = Capabilities::parse(b"IMAP4rev1 IDLE STARTTLS AUTH=PLAIN COMPRESS=DEFLATE");
        for (upstream, want) in [
            (
                Some(&caps),
                "a OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n",
            ),
            (None, "a OK Logged in\r\n"),
            (
                Some(&Capabilities::parse(b"STARTTLS")),
                "a OK Logged in\r\n",
            ),
        ] {
            assert_eq!(String::from_utf8_lossy(&login_ok(b"a", upstream)), want);
        }
        assert_eq!(
            login_failed(b"a"),
            b"a NO [AUTHENTICATIONFAILED] Authentication failed\r\n"
        );
        assert!(login_unavailable(b"a").starts_with(b"a NO [UNAVAILABLE] "));
        assert_eq!(
            starttls_go_ahead(b"t"),
            b"t OK Begin TLS negotiation now\r\n"
        );
        assert_eq!(
            logout(b"z"),
            b"* BYE postern IMAP gateway logging out\r\nz OK LOGOUT completed\r\n"
        );
    }
}
