//! What one fake POP3 server does: [`Pop3Script`] and its behaviours.

use crate::bearer::{BearerVerifier, DEFAULT_BEARER_ERROR, DEFAULT_OAUTHBEARER_HOST};
use crate::fake::FakeSecurity;

/// RFC 1939 §7's example timestamp; the default greeting timestamp.
pub const RFC1939_TIMESTAMP: &str = "<1896.697170952@dbc.mtview.ca.us>";

/// Give [`Pop3Script::greeting_timestamp`] this value for a fresh, unique
/// msg-id per connection, as a real server does (the default).
pub const UNIQUE_TIMESTAMP: &str = "<unique>";

/// How the fake answers CAPA.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CapaBehaviour {
    /// List the capabilities, STLS included while an upgrade is possible.
    #[default]
    Normal,
    /// List the capabilities but never STLS (the command still works).
    WithoutStls,
    /// Answer `-ERR` as a pre-RFC 2449 server would.
    Unsupported,
}

/// How the fake answers STLS (only in [`FakeSecurity::Starttls`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum StlsBehaviour {
    /// `+OK Begin TLS`, then the handshake.
    #[default]
    Accept,
    /// `-ERR`, stay plain.
    Refuse,
    /// Write `+OK Begin TLS\r\n` plus these bytes in ONE write before the
    /// handshake: a man-in-the-middle injection the client must refuse.
    AcceptThenInject(Vec<u8>),
}

/// What one fake server does. Fields are public; builder methods are there
/// for one-liners.
#[derive(Clone, Debug)]
pub struct Pop3Script {
    /// Plain, implicit TLS or STLS.
    pub security: FakeSecurity,
    /// The one account's name.
    pub user: String,
    /// The one account's password (may contain spaces).
    pub password: String,
    /// Put verbatim after `+OK fake ready ` in the greeting; `None` for no
    /// timestamp (APOP then fails); [`UNIQUE_TIMESTAMP`] (the default) for
    /// a fresh one per connection. Not validated, so tests can send
    /// malformed ones.
    pub greeting_timestamp: Option<String>,
    /// CAPA behaviour.
    pub capa: CapaBehaviour,
    /// SASL mechanisms listed in CAPA and accepted by AUTH (case-insensitive;
    /// PLAIN, CRAM-MD5, XOAUTH2 and OAUTHBEARER are implemented). Empty: no
    /// SASL line.
    pub sasl: Vec<String>,
    /// Who an XOAUTH2/OAUTHBEARER token belongs to. A bearer login succeeds
    /// when the response has the exact wire form, names [`Pop3Script::user`]
    /// and carries a token this says is that user's. `None`: every bearer
    /// login is refused.
    pub bearer: Option<BearerVerifier>,
    /// The `host=` OAUTHBEARER must carry (default `127.0.0.1`).
    pub oauthbearer_host: String,
    /// The `port=` OAUTHBEARER must carry; `None` (the default): the port
    /// the fake listens on.
    pub oauthbearer_port: Option<u16>,
    /// The JSON sent, base64, in the error challenge after a refused
    /// token; default [`DEFAULT_BEARER_ERROR`].
    pub bearer_error: String,
    /// STLS behaviour.
    pub stls: StlsBehaviour,
    /// Mailbox contents, unstuffed, CRLF line ends. Shared by all sessions:
    /// deletions committed by QUIT are seen by later logins.
    pub messages: Vec<Vec<u8>>,
    /// On RETR send `+OK`, then this many bytes of the stuffed body, then
    /// drop the connection (no terminator, no TLS close_notify).
    pub die_mid_retr: Option<usize>,
    /// USER/PASS/APOP/AUTH before TLS answered `-ERR [AUTH] TLS required`.
    pub require_tls_for_auth: bool,
}

impl Default for Pop3Script {
    fn default() -> Self {
        Self {
            security: FakeSecurity::Plain,
            user: "alice".to_owned(),
            password: "wonderland".to_owned(),
            greeting_timestamp: Some(UNIQUE_TIMESTAMP.to_owned()),
            capa: CapaBehaviour::Normal,
            sasl: vec!["PLAIN".to_owned(), "CRAM-MD5".to_owned()],
            bearer: None,
            oauthbearer_host: DEFAULT_OAUTHBEARER_HOST.to_owned(),
            oauthbearer_port: None,
            bearer_error: DEFAULT_BEARER_ERROR.to_owned(),
            stls: StlsBehaviour::Accept,
            messages: Vec::new(),
            die_mid_retr: None,
            require_tls_for_auth: false,
        }
    }
}

impl Pop3Script {
    /// Same as `Default::default()`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Set [`Pop3Script::security`].
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

    /// Set [`Pop3Script::greeting_timestamp`].
    pub fn greeting_timestamp(mut self, timestamp: Option<&str>) -> Self {
        self.greeting_timestamp = timestamp.map(str::to_owned);
        self
    }

    /// Set [`Pop3Script::capa`].
    pub fn capa(mut self, capa: CapaBehaviour) -> Self {
        self.capa = capa;
        self
    }

    /// Set [`Pop3Script::sasl`].
    pub fn sasl(mut self, mechanisms: &[&str]) -> Self {
        self.sasl = mechanisms.iter().map(|m| (*m).to_owned()).collect();
        self
    }

    /// Set [`Pop3Script::bearer`] (list XOAUTH2 and/or OAUTHBEARER in
    /// [`Pop3Script::sasl`] too).
    pub fn bearer(mut self, verifier: BearerVerifier) -> Self {
        self.bearer = Some(verifier);
        self
    }

    /// Set [`Pop3Script::oauthbearer_host`].
    pub fn oauthbearer_host(mut self, host: &str) -> Self {
        self.oauthbearer_host = host.to_owned();
        self
    }

    /// Set [`Pop3Script::oauthbearer_port`].
    pub fn oauthbearer_port(mut self, port: u16) -> Self {
        self.oauthbearer_port = Some(port);
        self
    }

    /// Set [`Pop3Script::bearer_error`].
    pub fn bearer_error(mut self, json: &str) -> Self {
        self.bearer_error = json.to_owned();
        self
    }

    /// Set [`Pop3Script::stls`].
    pub fn stls(mut self, stls: StlsBehaviour) -> Self {
        self.stls = stls;
        self
    }

    /// Append one message.
    pub fn message(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.messages.push(body.into());
        self
    }

    /// Replace the mailbox.
    pub fn messages(mut self, bodies: Vec<Vec<u8>>) -> Self {
        self.messages = bodies;
        self
    }

    /// Set [`Pop3Script::die_mid_retr`].
    pub fn die_mid_retr(mut self, bytes: usize) -> Self {
        self.die_mid_retr = Some(bytes);
        self
    }

    /// Set [`Pop3Script::require_tls_for_auth`].
    pub fn require_tls_for_auth(mut self, require: bool) -> Self {
        self.require_tls_for_auth = require;
        self
    }

    pub(super) fn offers_sasl(&self, mechanism: &str) -> bool {
        self.sasl.iter().any(|m| m.eq_ignore_ascii_case(mechanism))
    }
}
