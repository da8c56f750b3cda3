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

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};

use postern_core::config::{Security, UpstreamAuth};
use postern_core::credentials::Login;
use postern_core::sasl;
use postern_core::upstream::{printable, Machine, Seen, Step, UpstreamError};
use postern_core::Secret;
use zeroize::Zeroizing;

use super::capability::Capabilities;
use super::response::{self, Expect, Reply, RespText, Response, ResponseFramer, Status};

/// An initial response goes on the AUTHENTICATE line only if the whole
/// line stays within this (RFC 7162 §4: servers take 8192-octet lines);
/// longer ones follow the `+` go-ahead.
pub const MAX_INITIAL_RESPONSE_LINE: usize = 8192;

/// RFC 7888 §4: the largest non-synchronising literal `LITERAL-` allows.
const LITERAL_MINUS_MAX: usize = 4096;

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnectState {
    Greeting,
    CapabilityBeforeTls,
    StartTls,
    AwaitTls,
    Capability,
    Failed,
}

/// Connects: greeting, STARTTLS when the route wants it, CAPABILITY.
#[derive(Debug)]
pub struct Connect {
    security: Security,
    auth: UpstreamAuth,
    target: Option<(String, u16)>,
    state: ConnectState,
    tags: Tags,
    /// The tag of the command in flight.
    tag: Vec<u8>,
    seen: Seen,
}

/// Connected, secured, capabilities known: ready for a login.
#[derive(Debug, Clone)]
pub struct Ready {
    method: Method,
    capabilities: Capabilities,
    seen: Seen,
    tags: Tags,
}

/// How a login ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginDone {
    /// Logged in: start relaying.
    LoggedIn {
        /// The post-login capabilities, if the server sent them (a
        /// `[CAPABILITY]` code on its OK, or an untagged CAPABILITY);
        /// unfiltered: see [`super::capability::after_login`].
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

impl Connect {
    /// A machine for the route's `security` and `auth` (an IMAP method:
    /// `login`, `plain`, `cram-md5`, `xoauth2`, `oauthbearer`).
    pub fn new(security: Security, auth: UpstreamAuth) -> Self {
        Self {
            security,
            auth,
            target: None,
            state: ConnectState::Greeting,
            tags: Tags::default(),
            tag: Vec::new(),
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

    fn send(&mut self, state: ConnectState, command: &str) -> Step<Ready> {
        self.state = state;
        self.tag = self.tags.next();
        Step::send(&[&self.tag, b" ", command.as_bytes()])
    }

    fn greeting(&mut self, reply: &Reply) -> Result<Step<Ready>, UpstreamError> {
        let (status, text) = match last(reply, "the greeting")? {
            Response::Status {
                tag: None,
                status,
                text,
            } => (status, text),
            _ => {
                return fail(format!(
                    "the server's greeting is not IMAP: {}",
                    printable(&reply.last)
                ))
            }
        };
        match status {
            Status::Ok => {}
            Status::Preauth => {
                return insecure(
                    "the server greeted with PREAUTH (a session already logged in, before postern authenticated): refusing it (the \"PREAUTH downgrade\")",
                )
            }
            _ => {
                return fail(format!(
                    "the server refused the connection: {}",
                    text.printable()
                ))
            }
        }
        self.seen.greeting = printable(text.text);
        let caps = text.code.and_then(|c| c.capabilities());
        match (self.security, caps) {
            (Security::Starttls, Some(caps)) => self.before_tls(caps),
            (Security::Starttls, None) => {
                Ok(self.send(ConnectState::CapabilityBeforeTls, "CAPABILITY"))
            }
            (_, Some(caps)) => self.ready(caps),
            (_, None) => Ok(self.send(ConnectState::Capability, "CAPABILITY")),
        }
    }

    fn before_tls(&mut self, caps: Capabilities) -> Result<Step<Ready>, UpstreamError> {
        self.seen.before_tls = Some(
            caps.iter()
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect(),
        );
        if !caps.has("STARTTLS") {
            return insecure(
                "the server does not offer STARTTLS (not in its CAPABILITY); refusing to continue without TLS",
            );
        }
        Ok(self.send(ConnectState::StartTls, "STARTTLS"))
    }

    /// The capabilities of the final connection: check what the route needs.
    fn ready(&mut self, caps: Capabilities) -> Result<Step<Ready>, UpstreamError> {
        let method = Method::of(self.auth, self.target.as_ref())?;
        let after_tls = if self.security == Security::Starttls {
            " after TLS"
        } else {
            ""
        };
        match method.sasl_name() {
            None if caps.has("LOGINDISABLED") => {
                return fail(format!(
                    "the server says LOGINDISABLED{after_tls}: it refuses the LOGIN command on this connection (use `security: tls` or `starttls`, or a SASL `auth:`)"
                ))
            }
            Some(mech) if !caps.has_auth(mech) => {
                return fail(format!(
                    "the server does not offer AUTH={mech}{after_tls} (not in its CAPABILITY); not trying another method"
                ))
            }
            _ => {}
        }
        Ok(Step::Done(Ready {
            method,
            capabilities: caps,
            seen: std::mem::take(&mut self.seen),
            tags: self.tags.clone(),
        }))
    }
}

impl Machine for Connect {
    type Reply = Reply;
    type Framer = ResponseFramer;
    type Done = Ready;
    // Untagged data may come at any time; the framer collects it up to the
    // tagged completion, so it can never be taken for the answer.
    const UNSOLICITED_ALLOWED: bool = true;

    fn phase(&self) -> &'static str {
        match self.state {
            ConnectState::Greeting => "greeting",
            ConnectState::CapabilityBeforeTls | ConnectState::Capability => "CAPABILITY",
            ConnectState::StartTls | ConnectState::AwaitTls => "STARTTLS",
            ConnectState::Failed => "failed",
        }
    }

    fn framer(&self) -> ResponseFramer {
        ResponseFramer::new(match self.state {
            ConnectState::Greeting => Expect::Greeting,
            _ => Expect::Completion(self.tag.clone()),
        })
    }

    fn on_reply(&mut self, reply: Reply) -> Result<Step<Ready>, UpstreamError> {
        let phase = self.phase();
        let state = std::mem::replace(&mut self.state, ConnectState::Failed);
        if state == ConnectState::Greeting {
            return self.greeting(&reply);
        }
        let status = match last(&reply, phase)? {
            Response::Status {
                tag: Some(_),
                status,
                text,
            } => (status, text.printable()),
            Response::Continuation(_) => {
                return fail(format!("unexpected continuation during {phase}"))
            }
            _ => {
                return fail(format!(
                    "unexpected reply during {phase}: {}",
                    printable(&reply.last)
                ))
            }
        };
        match (state, status) {
            (ConnectState::CapabilityBeforeTls, (Status::Ok, _)) => {
                self.before_tls(reply_capabilities(&reply).unwrap_or_default())
            }
            // A server that will not list its capabilities may still
            // take STARTTLS; a refusal fails below.
            (ConnectState::CapabilityBeforeTls, _) => {
                Ok(self.send(ConnectState::StartTls, "STARTTLS"))
            }
            (ConnectState::StartTls, (Status::Ok, _)) => {
                self.state = ConnectState::AwaitTls;
                Ok(Step::start_tls())
            }
            (ConnectState::StartTls, (_, text)) => insecure(format!(
                "the server refused STARTTLS ({text}); refusing to continue without TLS"
            )),
            (ConnectState::Capability, (Status::Ok, _)) => {
                self.ready(reply_capabilities(&reply).unwrap_or_default())
            }
            (ConnectState::Capability, (_, text)) => {
                fail(format!("the server refused CAPABILITY: {text}"))
            }
            _ => fail(format!("unexpected reply during {phase}")),
        }
    }

    fn on_tls(&mut self) -> Result<Step<Ready>, UpstreamError> {
        if self.state != ConnectState::AwaitTls {
            return fail("TLS upgrade out of order");
        }
        // RFC 9051 §6.2.1: forget what was learnt before TLS, ask again.
        Ok(self.send(ConnectState::Capability, "CAPABILITY"))
    }
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
    /// The capabilities of the final (post-TLS) connection.
    pub fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    /// What the connection showed on the way (greeting, capabilities
    /// before TLS).
    pub fn seen(&self) -> &Seen {
        &self.seen
    }

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
    use super::*;
    use postern_core::upstream::{Framer, Io};

    fn login() -> Login {
        Login::new(b"tim", Secret::from("tanstaaftanstaaf")).expect("login")
    }

    /// Frames `lines` with the machine's framer, as the driver would.
    fn reply<M: Machine<Reply = Reply>>(m: &M, lines: &[&str]) -> Reply {
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

    fn on<M: Machine<Reply = Reply>>(
        m: &mut M,
        lines: &[&str],
    ) -> Result<Step<M::Done>, UpstreamError> {
        let r = reply(m, lines);
        m.on_reply(r)
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

    fn connect(security: Security, auth: UpstreamAuth, greeting: &str, caps: &str) -> Ready {
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
    fn greetings_table() {
        for (security, greeting, outcome) in [
            (
                Security::Starttls,
                "* PREAUTH IMAP4rev1 server logged in as Smith\r\n",
                "PREAUTH",
            ),
            (
                Security::Tls,
                "* PREAUTH [CAPABILITY IMAP4rev1] hi\r\n",
                "PREAUTH",
            ),
            (Security::None, "* PREAUTH hi\r\n", "PREAUTH"),
            (
                Security::Tls,
                "* BYE too busy\r\n",
                "closed the session during the greeting: too busy",
            ),
            (
                Security::Tls,
                "* NO go away\r\n",
                "refused the connection: go away",
            ),
            (Security::Tls, "+OK POP3 ready\r\n", "not IMAP"),
            (Security::Tls, "220 smtp ESMTP\r\n", "not IMAP"),
            (
                Security::Tls,
                "* CAPABILITY IMAP4rev1\r\n",
                "greeting is not IMAP",
            ),
        ] {
            let mut m = Connect::new(security, UpstreamAuth::Login);
            let e = failure(on(&mut m, &[greeting]));
            assert!(e.to_string().contains(outcome), "{greeting:?}: {e}");
            assert_eq!(e.is_tls(), outcome == "PREAUTH", "{greeting:?}");
        }
    }

    #[test]
    fn starttls_stripping_fails_closed() {
        // Greeting lists no STARTTLS.
        let mut m = Connect::new(Security::Starttls, UpstreamAuth::Login);
        assert!(failure(on(
            &mut m,
            &["* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] hi\r\n"]
        ))
        .is_tls());
        // CAPABILITY lists no STARTTLS.
        let mut m = Connect::new(Security::Starttls, UpstreamAuth::Login);
        assert_eq!(sent(on(&mut m, &["* OK hi\r\n"])), "P1 CAPABILITY\r\n");
        assert!(failure(on(&mut m, &["* CAPABILITY IMAP4rev1\r\n", "P1 OK\r\n"])).is_tls());
        // CAPABILITY refused, STARTTLS refused.
        let mut m = Connect::new(Security::Starttls, UpstreamAuth::Login);
        sent(on(&mut m, &["* OK hi\r\n"]));
        assert_eq!(sent(on(&mut m, &["P1 BAD no\r\n"])), "P2 STARTTLS\r\n");
        assert!(failure(on(&mut m, &["P2 NO not today\r\n"])).is_tls());
        let mut m = Connect::new(Security::Starttls, UpstreamAuth::Login);
        sent(on(&mut m, &["* OK [CAPABILITY IMAP4rev1 STARTTLS] hi\r\n"]));
        assert!(failure(on(&mut m, &["P1 BAD what\r\n"])).is_tls());
        // TLS out of order.
        let mut m = Connect::new(Security::Starttls, UpstreamAuth::Login);
        failure(m.on_tls());
        // A reply with another tag is a framing error.
        let mut m = Connect::new(Security::Starttls, UpstreamAuth::Login);
        sent(on(&mut m, &["* OK hi\r\n"]));
        assert!(m.framer().push(b"P9 OK\r\n".to_vec()).is_err());
    }

    #[test]
    fn mechanisms_must_be_offered() {
        for (auth, caps, ok) in [
            (UpstreamAuth::Login, "IMAP4rev1", true),
            (
                UpstreamAuth::Login,
                "IMAP4rev1 LOGINDISABLED AUTH=PLAIN",
                false,
            ),
            (UpstreamAuth::Plain, "IMAP4rev1 AUTH=PLAIN", true),
            (UpstreamAuth::Plain, "IMAP4rev1 AUTH=LOGIN", false),
            (
                UpstreamAuth::CramMd5,
                "IMAP4rev1 LOGINDISABLED AUTH=CRAM-MD5",
                true,
            ),
            (UpstreamAuth::Xoauth2, "IMAP4rev1 AUTH=XOAUTH2", true),
            (UpstreamAuth::Xoauth2, "IMAP4rev1 AUTH=OAUTHBEARER", false),
            (
                UpstreamAuth::Oauthbearer,
                "IMAP4rev1 AUTH=OAUTHBEARER",
                true,
            ),
            (UpstreamAuth::User, "IMAP4rev1", false),
            (UpstreamAuth::Apop, "IMAP4rev1", false),
            (UpstreamAuth::None, "IMAP4rev1", false),
        ] {
            let mut m = Connect::new(Security::Tls, auth).target("h", 993);
            let greeting = format!("* OK [CAPABILITY {caps}] hi\r\n");
            let r = on(&mut m, &[&greeting]);
            assert_eq!(r.is_ok(), ok, "{auth} with {caps}: {r:?}");
        }
        let mut m = Connect::new(Security::Tls, UpstreamAuth::Oauthbearer);
        let e = failure(on(
            &mut m,
            &["* OK [CAPABILITY IMAP4rev1 AUTH=OAUTHBEARER] hi\r\n"],
        ));
        assert!(e.to_string().contains("host and port"), "{e}");
        let mut m = Connect::new(Security::Tls, UpstreamAuth::Login);
        sent(on(&mut m, &["* OK hi\r\n"]));
        failure(on(&mut m, &["P1 NO no capabilities for you\r\n"]));
    }

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
