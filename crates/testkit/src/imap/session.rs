//! One IMAP session: its state, reading a whole command (literals
//! included), the dispatch by state, how replies are framed (tags,
//! scripted untagged lines), CAPABILITY, STARTTLS and mailbox sync.
//! Login commands are in `login.rs`, mailbox commands in `commands.rs`.

use std::io;
use std::sync::Arc;

use super::events::ImapEvent;
use super::parse::{split_command, Args, LiteralSpec, Value};
use super::script::{ImapGreeting, ImapMoment, ImapScript, ImapStarttls};
use super::Shared;
use crate::fake::{FakeSecurity, LineRules, Link, Protocol, Step};

/// Command and SASL lines: SASL-IR puts bearer tokens (over 2,500 octets
/// base64) on the AUTHENTICATE line, so well over RFC 7162 §4's 8,192.
pub(super) const LINES: LineRules = LineRules {
    max: 64 * 1024,
    strict: false,
    too_long_reply: Some(b"* BYE Line too long\r\n"),
    bare_lf: "bare LF line ending",
    bare_cr: "bare CR inside a line",
    non_utf8: "non-UTF-8 line",
};

/// Largest literal before login (LOGIN's user name and password).
const MAX_LITERAL_BEFORE_LOGIN: usize = 64 * 1024;
/// Largest literal after login (an APPENDed message).
const MAX_LITERAL: usize = 64 * 1024 * 1024;

const CONTINUE_LITERAL: &[u8] = b"+ Ready for literal data\r\n";

/// What a command handler answers.
pub(super) enum Flow {
    Reply(Reply),
    /// Drop the connection without another byte.
    Die,
}

/// Untagged lines, then the tagged status line, then what happens next.
pub(super) struct Reply {
    /// Complete untagged lines (and their literals), CRLFs included.
    pub(super) untagged: Vec<u8>,
    /// After the tag: `OK ...`, `NO ...` or `BAD ...`.
    pub(super) status: String,
    pub(super) then: Then,
}

pub(super) enum Then {
    Continue,
    /// LOGOUT: close cleanly.
    Logout,
    /// STARTTLS accepted: these bytes go in the same write after the `OK`
    /// ([`ImapStarttls::AcceptThenInject`]); then the handshake.
    StartTls(Vec<u8>),
}

impl Reply {
    fn status(status: String) -> Self {
        Self {
            untagged: Vec::new(),
            status,
            then: Then::Continue,
        }
    }

    pub(super) fn ok(text: &str) -> Self {
        Self::status(format!("OK {text}"))
    }

    pub(super) fn no(text: &str) -> Self {
        Self::status(format!("NO {text}"))
    }

    pub(super) fn bad(text: &str) -> Self {
        Self::status(format!("BAD {text}"))
    }

    /// The same, after these untagged bytes.
    pub(super) fn after(mut self, untagged: Vec<u8>) -> Self {
        self.untagged = untagged;
        self
    }
}

impl From<Reply> for Flow {
    fn from(reply: Reply) -> Self {
        Self::Reply(reply)
    }
}

/// The mailbox a session has open.
pub(super) struct Selected {
    /// As stored.
    pub(super) name: String,
    pub(super) read_only: bool,
    /// The UIDs this session has been told about, in sequence-number
    /// order (index + 1).
    pub(super) uids: Vec<u32>,
}

pub(super) struct Session {
    pub(super) shared: Arc<Shared>,
    pub(super) link: Link<ImapEvent>,
    /// Who is logged in (also after a PREAUTH greeting).
    pub(super) user: Option<String>,
    pub(super) selected: Option<Selected>,
    /// The greeting was `* BYE`: the next read ends the session.
    bye_sent: bool,
}

impl Protocol for Session {
    type Event = ImapEvent;

    const UPGRADE_VERB: &'static str = "STARTTLS";

    fn link(&mut self) -> &mut Link<ImapEvent> {
        &mut self.link
    }

    fn security(&self) -> &FakeSecurity {
        &self.script().security
    }

    fn greeting(&self) -> Vec<u8> {
        let script = self.script();
        let line = match script.greeting {
            ImapGreeting::Normal => format!(
                "* OK [CAPABILITY {}] fake IMAP ready",
                self.capabilities().join(" ")
            ),
            ImapGreeting::Plain => "* OK fake IMAP ready".to_owned(),
            ImapGreeting::Preauth => format!(
                "* PREAUTH [CAPABILITY {}] fake IMAP ready, logged in as {}",
                self.capabilities().join(" "),
                script.user
            ),
            ImapGreeting::Bye => "* BYE fake IMAP server unavailable".to_owned(),
        };
        let mut out = format!("{line}\r\n").into_bytes();
        if script.greeting != ImapGreeting::Bye {
            out.extend(script.untagged_at(&ImapMoment::AfterGreeting));
        }
        out
    }

    async fn read_command(&mut self) -> Option<String> {
        if self.bye_sent {
            self.link.shutdown().await;
            return None;
        }
        self.link.read_line(&LINES).await
    }

    async fn handle(&mut self, line: &str) -> io::Result<Step> {
        let (tag, name, rest) = match split_command(line) {
            Ok(parts) => parts,
            Err(bad) => {
                self.violation(format!("syntax: {}", bad.why));
                let tag = bad.tag.as_deref().unwrap_or("*");
                self.link
                    .write_line(&format!("{tag} BAD {}", bad.why))
                    .await?;
                return Ok(Step::Continue);
            }
        };
        self.record(ImapEvent::Command(name.clone()));
        let was_logged_in = self.user.is_some();
        let flow = match self.read_args(rest).await? {
            Ok(args) => self.dispatch(&name, args).await?,
            Err(flow) => flow,
        };
        let Flow::Reply(reply) = flow else {
            return Ok(Step::Die);
        };
        let script = self.script();
        let mut out = reply.untagged;
        out.extend(script.untagged_at(&ImapMoment::BeforeTagged(name)));
        out.extend_from_slice(format!("{tag} {}\r\n", reply.status).as_bytes());
        if !was_logged_in && self.user.is_some() {
            out.extend(script.untagged_at(&ImapMoment::AfterLogin));
        }
        match reply.then {
            Then::Continue => {
                self.link.write(&out).await?;
                Ok(Step::Continue)
            }
            Then::Logout => {
                self.link.write(&out).await?;
                Ok(Step::Quit)
            }
            Then::StartTls(extra) => {
                out.extend(extra);
                Ok(Step::StartTls(out))
            }
        }
    }

    fn reset_after_tls(&mut self) {
        // RFC 9051 §11.1: forget what was learned before TLS. Only the
        // not-authenticated state has STARTTLS, so there is nothing else.
        self.user = None;
        self.selected = None;
    }
}

impl Session {
    pub(super) fn new(shared: Arc<Shared>, link: Link<ImapEvent>) -> Self {
        let greeting = shared.script.greeting;
        let user = (greeting == ImapGreeting::Preauth).then(|| shared.script.user.clone());
        Self {
            shared,
            link,
            user,
            selected: None,
            bye_sent: greeting == ImapGreeting::Bye,
        }
    }

    pub(super) fn record(&self, event: ImapEvent) {
        self.link.record(event);
    }

    pub(super) fn violation(&self, what: impl Into<String>) {
        self.link.violation(what);
    }

    pub(super) fn script(&self) -> &ImapScript {
        &self.shared.script
    }

    /// The rest of the command after its name: tokenised, with every
    /// literal read. `Err` carries the answer when the command cannot run
    /// (syntax, literal protocol errors, an oversized literal).
    async fn read_args(&mut self, first: &str) -> io::Result<Result<Vec<Value>, Flow>> {
        let mut args = Args::new();
        let mut line = first.to_owned();
        // A literal protocol error seen on the way; the command is then
        // answered BAD once all of it has been read.
        let mut spoiled: Option<&'static str> = None;
        loop {
            let spec = match args.feed(line.as_bytes()) {
                Ok(None) => break,
                Ok(Some(spec)) => spec,
                Err(why) => {
                    self.violation(format!("syntax: {why}"));
                    return Ok(Err(Reply::bad(why).into()));
                }
            };
            match self.read_literal(spec).await? {
                Ok(bytes) => args.literal(bytes),
                Err(Some(why)) => {
                    spoiled.get_or_insert(why);
                    args.literal(Vec::new());
                }
                Err(None) => {
                    return Ok(Err(Reply::no("[TOOBIG] Literal too large").into()));
                }
            }
            let Some(next) = self.link.read_line(&LINES).await else {
                return Err(io::ErrorKind::UnexpectedEof.into());
            };
            line = next;
        }
        if let Some(why) = spoiled {
            return Ok(Err(Reply::bad(why).into()));
        }
        Ok(args.finish().map_err(|why| {
            self.violation(format!("syntax: {why}"));
            Reply::bad(why).into()
        }))
    }

    /// Read one announced literal. `Err(None)`: a synchronising literal
    /// refused for its size, nothing read. `Err(Some(why))`: read and
    /// dropped, the command must be refused. An oversized
    /// non-synchronising literal ends the session (`* BYE`).
    async fn read_literal(
        &mut self,
        spec: LiteralSpec,
    ) -> io::Result<Result<Vec<u8>, Option<&'static str>>> {
        let max = if self.user.is_some() {
            MAX_LITERAL
        } else {
            MAX_LITERAL_BEFORE_LOGIN
        };
        let mut spoiled = None;
        if spec.synchronizing {
            if !self.link.buf.is_empty() {
                self.violation(format!(
                    "{} bytes sent after a synchronising literal's announcement \
                     before the + continuation",
                    self.link.buf.len()
                ));
            }
            if spec.len > max {
                self.violation(format!(
                    "literal of {} octets announced ({max} at most)",
                    spec.len
                ));
                return Ok(Err(None));
            }
            self.link.write(CONTINUE_LITERAL).await?;
        } else {
            if !self.script().literal_plus {
                self.violation("non-synchronising literal {n+} without LITERAL+");
                spoiled = Some("LITERAL+ not offered");
            }
            if spec.len > max {
                self.violation(format!(
                    "non-synchronising literal of {} octets ({max} at most)",
                    spec.len
                ));
                let _ = self.link.write(b"* BYE Literal too large\r\n").await;
                return Err(io::ErrorKind::InvalidData.into());
            }
        }
        let bytes = self.read_exact(spec.len).await?;
        Ok(match spoiled {
            Some(why) => Err(Some(why)),
            None => Ok(bytes),
        })
    }

    /// Exactly `n` bytes: what is buffered first, then straight from the
    /// stream, without line scanning.
    async fn read_exact(&mut self, n: usize) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(n);
        loop {
            let take = (n - out.len()).min(self.link.buf.len());
            out.extend(self.link.buf.drain(..take));
            if out.len() == n {
                return Ok(out);
            }
            if self.link.fill().await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    async fn dispatch(&mut self, name: &str, args: Vec<Value>) -> io::Result<Flow> {
        let logged_in = self.user.is_some();
        let reply = match (name, logged_in) {
            ("CAPABILITY", _) => self.capability(&args),
            ("NOOP", _) => self.noop(&args),
            ("LOGOUT", _) => {
                self.record(ImapEvent::Logout);
                let mut reply = Reply::ok("LOGOUT completed")
                    .after(b"* BYE fake IMAP server logging out\r\n".to_vec());
                reply.then = Then::Logout;
                reply
            }
            ("ID", _) if self.script().has_capability("ID") => self.id(&args),
            ("IDLE", true) if self.script().has_capability("IDLE") => {
                return self.idle(&args).await
            }
            ("STARTTLS", false) => self.starttls(&args),
            ("LOGIN", false) => self.login(&args),
            ("AUTHENTICATE", false) => return self.authenticate(&args).await,
            ("STARTTLS" | "LOGIN" | "AUTHENTICATE", true) => {
                Reply::bad("Not allowed in the authenticated state")
            }
            ("COMPRESS", true) => Reply::no("[CANNOT] COMPRESS is not supported by this fake"),
            ("SELECT", true) => self.select(&args, false),
            ("EXAMINE", true) => self.select(&args, true),
            ("LIST" | "LSUB", true) => self.list(name, &args),
            ("STATUS", true) => self.status(&args),
            ("CREATE", true) => self.create(&args),
            ("APPEND", true) => self.append(&args),
            ("CHECK" | "CLOSE" | "UNSELECT" | "EXPUNGE", true) if self.selected.is_none() => {
                Reply::bad("No mailbox selected")
            }
            ("FETCH" | "UID FETCH" | "STORE" | "UID STORE" | "SEARCH" | "UID SEARCH", true)
                if self.selected.is_none() =>
            {
                Reply::bad("No mailbox selected")
            }
            ("CHECK", true) => Reply::ok("CHECK completed"),
            ("CLOSE", true) => self.close(&args, true),
            ("UNSELECT", true) => self.close(&args, false),
            ("EXPUNGE", true) => self.expunge(&args),
            ("FETCH", true) => return self.fetch(&args, false).await,
            ("UID FETCH", true) => return self.fetch(&args, true).await,
            ("STORE", true) => self.store(&args, false),
            ("UID STORE", true) => self.store(&args, true),
            ("SEARCH", true) => self.search(&args, false),
            ("UID SEARCH", true) => self.search(&args, true),
            (
                "IDLE" | "COMPRESS" | "SELECT" | "EXAMINE" | "LIST" | "LSUB" | "STATUS" | "CREATE"
                | "APPEND" | "CHECK" | "CLOSE" | "UNSELECT" | "EXPUNGE" | "FETCH" | "UID FETCH"
                | "STORE" | "UID STORE" | "SEARCH" | "UID SEARCH",
                false,
            ) => Reply::bad("Log in first"),
            _ => Reply::bad("Unknown command"),
        };
        Ok(reply.into())
    }

    /// Whether STARTTLS is advertised (and would be accepted) now.
    fn starttls_offered(&self) -> bool {
        matches!(self.script().security, FakeSecurity::Starttls(_))
            && !self.link.tls()
            && self.user.is_none()
            && self.script().starttls != ImapStarttls::NotOffered
    }

    /// Whether LOGIN is refused now ([`ImapScript::login_disabled_before_tls`]).
    pub(super) fn login_disabled(&self) -> bool {
        self.script().login_disabled_before_tls && !self.link.tls()
    }

    /// The capability list for the current state.
    pub(super) fn capabilities(&self) -> Vec<String> {
        let script = self.script();
        if self.user.is_some() {
            if let Some(list) = &script.post_login_capabilities {
                return list.clone();
            }
        }
        let mut caps = vec!["IMAP4rev1".to_owned()];
        if script.sasl_ir {
            caps.push("SASL-IR".to_owned());
        }
        if script.literal_plus {
            caps.push("LITERAL+".to_owned());
        }
        caps.extend(script.capabilities.iter().cloned());
        if self.user.is_none() {
            if self.starttls_offered() {
                caps.push("STARTTLS".to_owned());
            }
            if self.login_disabled() {
                caps.push("LOGINDISABLED".to_owned());
            }
            caps.extend(script.mechanisms.iter().map(|m| format!("AUTH={m}")));
        }
        caps
    }

    fn capability(&self, args: &[Value]) -> Reply {
        if !args.is_empty() {
            return Reply::bad("CAPABILITY takes no arguments");
        }
        let line = format!("* CAPABILITY {}\r\n", self.capabilities().join(" "));
        Reply::ok("CAPABILITY completed").after(line.into_bytes())
    }

    fn noop(&mut self, args: &[Value]) -> Reply {
        if !args.is_empty() {
            return Reply::bad("NOOP takes no arguments");
        }
        let updates = self.sync();
        Reply::ok("NOOP completed").after(updates)
    }

    fn id(&self, args: &[Value]) -> Reply {
        match args {
            [Value::List(_)] => {}
            [Value::Atom(nil)] if nil.eq_ignore_ascii_case("NIL") => {}
            _ => return Reply::bad("ID takes a parameter list or NIL"),
        }
        Reply::ok("ID completed")
            .after(b"* ID (\"name\" \"postern-testkit fake IMAP\")\r\n".to_vec())
    }

    fn starttls(&self, args: &[Value]) -> Reply {
        if !args.is_empty() {
            return Reply::bad("STARTTLS takes no arguments");
        }
        let script = self.script();
        if !matches!(script.security, FakeSecurity::Starttls(_))
            || script.starttls == ImapStarttls::NotOffered
        {
            return Reply::bad("STARTTLS not supported");
        }
        if self.link.tls() {
            return Reply::bad("TLS is already active");
        }
        let mut reply = Reply::ok("Begin TLS negotiation now");
        match &script.starttls {
            ImapStarttls::Accept => reply.then = Then::StartTls(Vec::new()),
            ImapStarttls::AcceptThenInject(extra) => reply.then = Then::StartTls(extra.clone()),
            ImapStarttls::Refuse => return Reply::no("[UNAVAILABLE] TLS not available now"),
            ImapStarttls::NotOffered => return Reply::bad("STARTTLS not supported"),
        }
        reply
    }

    /// Bring the selected mailbox view up to date with the store: `*
    /// n EXPUNGE` for messages gone, `* n EXISTS` if new ones came.
    pub(super) fn sync(&mut self) -> Vec<u8> {
        let Some(selected) = &mut self.selected else {
            return Vec::new();
        };
        let current = self
            .shared
            .store()
            .find(&selected.name)
            .map(|m| m.uids())
            .unwrap_or_default();
        let mut out = String::new();
        let mut i = 0;
        while i < selected.uids.len() {
            if current.contains(&selected.uids[i]) {
                i += 1;
            } else {
                out.push_str(&format!("* {} EXPUNGE\r\n", i + 1));
                selected.uids.remove(i);
            }
        }
        let known_max = selected.uids.last().copied().unwrap_or(0);
        let fresh: Vec<u32> = current.into_iter().filter(|u| *u > known_max).collect();
        if !fresh.is_empty() {
            selected.uids.extend(fresh);
            out.push_str(&format!("* {} EXISTS\r\n", selected.uids.len()));
        }
        out.into_bytes()
    }
}
