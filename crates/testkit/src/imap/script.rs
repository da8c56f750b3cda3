//! What one fake IMAP server does: [`ImapScript`] and its behaviours.

use crate::bearer::{BearerVerifier, DEFAULT_BEARER_ERROR, DEFAULT_OAUTHBEARER_HOST};
use crate::fake::FakeSecurity;

/// The unsolicited capability line [`ImapScript::unsolicited_capability_after_login`]
/// sends: everything a relay must never pass on to its client after login.
pub const INJECTED_CAPABILITY: &str = "* CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN LOGINDISABLED";

/// The stray untagged line [`ImapScript::stray_ok`] sends.
pub const STRAY_OK: &str = "* OK stray untagged response from the fake";

/// The first line the fake sends (after the handshake, with implicit TLS).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ImapGreeting {
    /// `* OK [CAPABILITY ...] fake IMAP ready`, the capabilities as
    /// CAPABILITY would list them now.
    #[default]
    Normal,
    /// `* OK fake IMAP ready`: no capability code, the client must ask.
    Plain,
    /// `* PREAUTH [CAPABILITY ...] fake IMAP ready, logged in as <user>`:
    /// the session starts authenticated (RFC 3501 §7.1.4). On a STARTTLS
    /// route this is the "PREAUTH downgrade": STARTTLS is no longer
    /// possible, and a client that wanted TLS must refuse to go on.
    Preauth,
    /// `* BYE fake IMAP server unavailable`, then the connection closes.
    Bye,
}

/// How the fake answers STARTTLS (only in [`FakeSecurity::Starttls`], and
/// only before login).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ImapStarttls {
    /// Advertise it; `tag OK Begin TLS negotiation now`, then the handshake.
    #[default]
    Accept,
    /// Advertise it but answer `tag NO`, staying plain.
    Refuse,
    /// Leave it out of the capabilities and answer `tag BAD` if tried.
    NotOffered,
    /// Write `tag OK Begin TLS negotiation now\r\n` plus these bytes in ONE
    /// write before the handshake: the response injection a client must
    /// refuse (RFC 9051 §11.1, CVE-2011-0411 pattern).
    AcceptThenInject(Vec<u8>),
}

/// When a scripted untagged line ([`ImapScript::untagged`]) is sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImapMoment {
    /// Right after the greeting, in the same write.
    AfterGreeting,
    /// Before the tagged response of every command of this name (ASCII
    /// case-insensitive, `UID FETCH` style for UID commands), in the same
    /// write.
    BeforeTagged(String),
    /// Right after the tagged `OK` of a successful LOGIN or AUTHENTICATE,
    /// in the same write.
    AfterLogin,
    /// Right after IDLE's `+ idling` continuation, in the same write.
    Idling,
}

/// What one fake server does. Fields are public; builder methods are there
/// for one-liners.
#[derive(Clone, Debug)]
pub struct ImapScript {
    /// Plain, implicit TLS (IMAPS) or STARTTLS.
    pub security: FakeSecurity,
    /// The one account's name.
    pub user: String,
    /// The one account's password (may contain spaces and quotes).
    pub password: String,
    /// SASL mechanisms listed as `AUTH=` and accepted by AUTHENTICATE, in
    /// order (case-insensitive; PLAIN, LOGIN, CRAM-MD5, XOAUTH2 and
    /// OAUTHBEARER are implemented). The LOGIN command does not depend on
    /// this list.
    pub mechanisms: Vec<String>,
    /// Who an XOAUTH2/OAUTHBEARER token belongs to. A bearer login succeeds
    /// when the response has the exact wire form, names
    /// [`ImapScript::user`] and carries a token this says is that user's.
    /// `None`: every bearer login is refused.
    pub bearer: Option<BearerVerifier>,
    /// The `host=` OAUTHBEARER must carry (default `127.0.0.1`).
    pub oauthbearer_host: String,
    /// The `port=` OAUTHBEARER must carry; `None` (the default): the port
    /// the fake listens on.
    pub oauthbearer_port: Option<u16>,
    /// The JSON sent, base64, in the error challenge after a refused
    /// token; default [`DEFAULT_BEARER_ERROR`].
    pub bearer_error: String,
    /// Advertise SASL-IR (RFC 4959) and accept initial responses on the
    /// AUTHENTICATE line. Without it an initial response is a client
    /// violation answered `BAD`.
    pub sasl_ir: bool,
    /// Advertise LITERAL+ (RFC 7888) and accept `{n+}`. Without it a
    /// non-synchronising literal is a client violation answered `BAD` (its
    /// bytes are read and dropped).
    pub literal_plus: bool,
    /// Before TLS, advertise LOGINDISABLED and answer LOGIN with
    /// `NO [PRIVACYREQUIRED]` (a client violation: RFC 3501 §6.2.3).
    /// AUTHENTICATE is not affected.
    pub login_disabled_before_tls: bool,
    /// The greeting.
    pub greeting: ImapGreeting,
    /// STARTTLS behaviour.
    pub starttls: ImapStarttls,
    /// Capabilities besides IMAP4rev1, SASL-IR, LITERAL+, STARTTLS,
    /// LOGINDISABLED and `AUTH=`, verbatim, before and after login (e.g.
    /// `IDLE`, `ID`, `COMPRESS=DEFLATE`, `IMAP4rev2`). The IDLE and ID
    /// commands work only when listed here; `UIDPLUS` adds `APPENDUID`
    /// to APPEND's `OK`. Default: `ID`, `IDLE`.
    pub capabilities: Vec<String>,
    /// Replaces the whole capability list after login (IMAP4rev1
    /// included), in CAPABILITY, a PREAUTH greeting and the login `OK`'s
    /// code, e.g. to list `STARTTLS` or `AUTH=` there as some servers do.
    /// `None` (the default): IMAP4rev1, SASL-IR and LITERAL+ if on, and
    /// [`ImapScript::capabilities`].
    pub post_login_capabilities: Option<Vec<String>>,
    /// The tagged `OK` to LOGIN and AUTHENTICATE carries `[CAPABILITY ...]`
    /// with the post-login capabilities (default `true`, as Dovecot does).
    pub capability_in_login_ok: bool,
    /// Mailboxes and their messages (CRLF line ends), shared by all
    /// sessions. `INBOX` is always there (first, unless listed).
    pub mailboxes: Vec<(String, Vec<Vec<u8>>)>,
    /// On a FETCH that returns a message body, send the response up to
    /// this many bytes into the first body literal, then drop the
    /// connection (no completion, no TLS close_notify).
    pub die_mid_fetch: Option<usize>,
    /// Extra untagged lines (without CRLF, sent verbatim) and when.
    pub untagged: Vec<(ImapMoment, String)>,
}

impl Default for ImapScript {
    fn default() -> Self {
        Self {
            security: FakeSecurity::Plain,
            user: "alice".to_owned(),
            password: "wonderland".to_owned(),
            mechanisms: strings(&["PLAIN", "LOGIN", "CRAM-MD5"]),
            bearer: None,
            oauthbearer_host: DEFAULT_OAUTHBEARER_HOST.to_owned(),
            oauthbearer_port: None,
            bearer_error: DEFAULT_BEARER_ERROR.to_owned(),
            sasl_ir: true,
            literal_plus: true,
            login_disabled_before_tls: false,
            greeting: ImapGreeting::Normal,
            starttls: ImapStarttls::Accept,
            capabilities: strings(&["ID", "IDLE"]),
            post_login_capabilities: None,
            capability_in_login_ok: true,
            mailboxes: vec![("INBOX".to_owned(), Vec::new())],
            die_mid_fetch: None,
            untagged: Vec::new(),
        }
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

impl ImapScript {
    /// Same as `Default::default()`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Set [`ImapScript::security`].
    pub fn security(mut self, security: FakeSecurity) -> Self {
        self.security = security;
        self
    }

    /// Set user and password.
    pub fn credentials(mut self, user: &str, password: &str) -> Self {
        self.user = user.to_owned();
        self.password = password.to_owned();
        self
    }

    /// Set [`ImapScript::mechanisms`].
    pub fn mechanisms(mut self, mechanisms: &[&str]) -> Self {
        self.mechanisms = strings(mechanisms);
        self
    }

    /// Set [`ImapScript::bearer`] (list XOAUTH2 and/or OAUTHBEARER in
    /// [`ImapScript::mechanisms`] too).
    pub fn bearer(mut self, verifier: BearerVerifier) -> Self {
        self.bearer = Some(verifier);
        self
    }

    /// Set [`ImapScript::oauthbearer_host`].
    pub fn oauthbearer_host(mut self, host: &str) -> Self {
        self.oauthbearer_host = host.to_owned();
        self
    }

    /// Set [`ImapScript::oauthbearer_port`].
    pub fn oauthbearer_port(mut self, port: u16) -> Self {
        self.oauthbearer_port = Some(port);
        self
    }

    /// Set [`ImapScript::bearer_error`].
    pub fn bearer_error(mut self, json: &str) -> Self {
        self.bearer_error = json.to_owned();
        self
    }

    /// Set [`ImapScript::sasl_ir`].
    pub fn sasl_ir(mut self, on: bool) -> Self {
        self.sasl_ir = on;
        self
    }

    /// Set [`ImapScript::literal_plus`].
    pub fn literal_plus(mut self, on: bool) -> Self {
        self.literal_plus = on;
        self
    }

    /// Set [`ImapScript::login_disabled_before_tls`].
    pub fn login_disabled_before_tls(mut self, on: bool) -> Self {
        self.login_disabled_before_tls = on;
        self
    }

    /// Set [`ImapScript::greeting`].
    pub fn greeting(mut self, greeting: ImapGreeting) -> Self {
        self.greeting = greeting;
        self
    }

    /// Set [`ImapScript::starttls`].
    pub fn starttls(mut self, starttls: ImapStarttls) -> Self {
        self.starttls = starttls;
        self
    }

    /// Replace [`ImapScript::capabilities`].
    pub fn capabilities(mut self, capabilities: &[&str]) -> Self {
        self.capabilities = strings(capabilities);
        self
    }

    /// Add one entry to [`ImapScript::capabilities`].
    pub fn capability(mut self, capability: &str) -> Self {
        self.capabilities.push(capability.to_owned());
        self
    }

    /// Set [`ImapScript::post_login_capabilities`].
    pub fn post_login_capabilities(mut self, capabilities: &[&str]) -> Self {
        self.post_login_capabilities = Some(strings(capabilities));
        self
    }

    /// Set [`ImapScript::capability_in_login_ok`].
    pub fn capability_in_login_ok(mut self, on: bool) -> Self {
        self.capability_in_login_ok = on;
        self
    }

    /// Make sure mailbox `name` exists (empty unless it already does).
    pub fn mailbox(mut self, name: &str) -> Self {
        self.mailbox_mut(name);
        self
    }

    /// Append one message to INBOX.
    pub fn message(self, body: impl Into<Vec<u8>>) -> Self {
        self.message_in("INBOX", body)
    }

    /// Append one message to mailbox `name`, creating it if need be.
    pub fn message_in(mut self, name: &str, body: impl Into<Vec<u8>>) -> Self {
        self.mailbox_mut(name).push(body.into());
        self
    }

    /// Set [`ImapScript::die_mid_fetch`].
    pub fn die_mid_fetch(mut self, bytes: usize) -> Self {
        self.die_mid_fetch = Some(bytes);
        self
    }

    /// Add one [`ImapScript::untagged`] line.
    pub fn untagged(mut self, moment: ImapMoment, line: &str) -> Self {
        self.untagged.push((moment, line.to_owned()));
        self
    }

    /// Send [`STRAY_OK`] at `moment`.
    pub fn stray_ok(self, moment: ImapMoment) -> Self {
        self.untagged(moment, STRAY_OK)
    }

    /// Send [`INJECTED_CAPABILITY`] right after the login `OK`.
    pub fn unsolicited_capability_after_login(self) -> Self {
        self.untagged(ImapMoment::AfterLogin, INJECTED_CAPABILITY)
    }

    fn mailbox_mut(&mut self, name: &str) -> &mut Vec<Vec<u8>> {
        let at = match self
            .mailboxes
            .iter()
            .position(|(n, _)| same_mailbox(n, name))
        {
            Some(at) => at,
            None => {
                self.mailboxes.push((name.to_owned(), Vec::new()));
                self.mailboxes.len() - 1
            }
        };
        &mut self.mailboxes[at].1
    }

    pub(super) fn offers_mechanism(&self, mechanism: &str) -> bool {
        self.mechanisms
            .iter()
            .any(|m| m.eq_ignore_ascii_case(mechanism))
    }

    pub(super) fn has_capability(&self, name: &str) -> bool {
        self.capabilities
            .iter()
            .any(|c| c.eq_ignore_ascii_case(name))
    }

    /// The lines scripted for `moment`, each with its CRLF.
    pub(super) fn untagged_at(&self, moment: &ImapMoment) -> Vec<u8> {
        let mut out = Vec::new();
        for (when, line) in &self.untagged {
            let hit = match (when, moment) {
                (ImapMoment::BeforeTagged(a), ImapMoment::BeforeTagged(b)) => {
                    a.eq_ignore_ascii_case(b)
                }
                (a, b) => a == b,
            };
            if hit {
                out.extend_from_slice(line.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
        out
    }
}

/// Mailbox names compare exactly, except INBOX, which is case-insensitive
/// (RFC 3501 §5.1).
pub(super) fn same_mailbox(a: &str, b: &str) -> bool {
    a == b || (a.eq_ignore_ascii_case("INBOX") && b.eq_ignore_ascii_case("INBOX"))
}
