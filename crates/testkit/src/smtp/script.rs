//! What one fake SMTP server does: [`SmtpScript`] and its behaviours.

use super::session::multiline;
use crate::bearer::{BearerVerifier, DEFAULT_BEARER_ERROR, DEFAULT_OAUTHBEARER_HOST};
use crate::fake::FakeSecurity;

/// The name the fake calls itself in its greeting, EHLO reply and
/// CRAM-MD5 challenges.
pub const FAKE_SMTP_HOST: &str = "fake.test";

/// How the fake answers STARTTLS (only in [`FakeSecurity::Starttls`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum StarttlsBehaviour {
    /// Advertise it; `220 2.0.0 Ready to start TLS`, then the handshake.
    #[default]
    Accept,
    /// Leave it out of EHLO and answer `502 5.5.1` if tried anyway.
    NotOffered,
    /// Advertise it but answer `454 4.7.0`, staying plain.
    Refuse,
    /// Write `220 2.0.0 Ready to start TLS\r\n` plus these bytes in ONE
    /// write before the handshake: a man-in-the-middle injection the client
    /// must refuse (RFC 3207 §5, CVE-2011-0411).
    AcceptThenInject(Vec<u8>),
}

/// How the fake answers EHLO.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EhloBehaviour {
    /// Multi-line `250` listing the extensions.
    #[default]
    Normal,
    /// `502` as a pre-ESMTP server would; HELO still gets `250`, and with
    /// no EHLO there are no extensions: AUTH, STARTTLS, BDAT and MAIL/RCPT
    /// parameters are then refused.
    Refused,
}

/// What the fake does once a message's data has arrived (or while it does).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum DataEnd {
    /// `250 2.0.0 Ok: queued as FAKEn` (n counts from 1 per server).
    #[default]
    Accept,
    /// Give this reply line instead, e.g. `451 4.3.0 Temporary failure`.
    Reply(String),
    /// After `354` (or during BDAT), drop the connection as soon as this
    /// many data bytes have arrived, or when the whole message has, if
    /// sooner. No reply, no TLS close_notify, no
    /// [`ReceivedMessage`](crate::ReceivedMessage).
    DieAfterBytes(usize),
    /// Read the whole message (terminator included), record it, then drop
    /// the connection without replying.
    DieBeforeFinalReply,
    /// Read the whole message, record it, never answer, and keep the
    /// connection open until the client closes it (for timeout tests).
    HangBeforeFinalReply,
}

/// What one fake server does. Fields are public; builder methods are there
/// for one-liners.
#[derive(Clone, Debug)]
pub struct SmtpScript {
    /// Plain, implicit TLS (SMTPS) or STARTTLS.
    pub security: FakeSecurity,
    /// The one account's name.
    pub user: String,
    /// The one account's password (may contain spaces).
    pub password: String,
    /// SASL mechanisms advertised and accepted, in order (case-insensitive;
    /// PLAIN, LOGIN, CRAM-MD5, XOAUTH2 and OAUTHBEARER are implemented).
    /// Empty: no AUTH at all.
    pub auth_mechanisms: Vec<String>,
    /// Who an XOAUTH2/OAUTHBEARER token belongs to. A bearer login succeeds
    /// when the response has the exact wire form, names [`SmtpScript::user`]
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
    /// Neither advertise nor accept AUTH before TLS (`538 5.7.11`).
    pub auth_only_after_tls: bool,
    /// MAIL before a successful AUTH gets `530 5.7.0`.
    pub require_auth: bool,
    /// EHLO keywords besides AUTH, STARTTLS and CHUNKING, verbatim. A
    /// `SIZE n` entry (n > 0) is enforced on `MAIL ... SIZE=` and on the
    /// received message.
    pub extensions: Vec<String>,
    /// STARTTLS behaviour.
    pub starttls: StarttlsBehaviour,
    /// EHLO behaviour.
    pub ehlo: EhloBehaviour,
    /// The greeting, sent verbatim followed by CRLF; embed `\r\n` between
    /// `220-` lines for a multi-line one (see
    /// [`SmtpScript::multiline_greeting`]). Not validated.
    pub greeting: String,
    /// Recipient address (no angle brackets, ASCII case-insensitive) → the
    /// whole reply line RCPT gets. Others get `250 2.1.5 Ok`. Only
    /// recipients answered `2xx` join the transaction.
    pub rcpt_replies: Vec<(String, String)>,
    /// Replaces the reply to a well-formed, in-sequence MAIL (checked after
    /// syntax, EHLO/HELO and AUTH; before SIZE and parameters). A `2xx`
    /// override still opens the transaction.
    pub mail_reply: Option<String>,
    /// Replaces the reply to an in-sequence DATA (there are recipients).
    /// Data is read only if the override starts with `354`.
    pub data_command_reply: Option<String>,
    /// What happens at (or during) the end of the data.
    pub data_end: DataEnd,
    /// Advertise CHUNKING and accept `BDAT n [LAST]` (RFC 3030).
    pub bdat: bool,
}

impl Default for SmtpScript {
    fn default() -> Self {
        Self {
            security: FakeSecurity::Plain,
            user: "alice".to_owned(),
            password: "wonderland".to_owned(),
            auth_mechanisms: strings(&["PLAIN", "LOGIN", "CRAM-MD5"]),
            bearer: None,
            oauthbearer_host: DEFAULT_OAUTHBEARER_HOST.to_owned(),
            oauthbearer_port: None,
            bearer_error: DEFAULT_BEARER_ERROR.to_owned(),
            auth_only_after_tls: false,
            require_auth: true,
            extensions: strings(&[
                "PIPELINING",
                "SIZE 10485760",
                "8BITMIME",
                "ENHANCEDSTATUSCODES",
                "SMTPUTF8",
                "DSN",
            ]),
            starttls: StarttlsBehaviour::Accept,
            ehlo: EhloBehaviour::Normal,
            greeting: format!("220 {FAKE_SMTP_HOST} ESMTP ready"),
            rcpt_replies: Vec::new(),
            mail_reply: None,
            data_command_reply: None,
            data_end: DataEnd::Accept,
            bdat: false,
        }
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

impl SmtpScript {
    /// Same as `Default::default()`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Set [`SmtpScript::security`].
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

    /// Set [`SmtpScript::auth_mechanisms`].
    pub fn auth_mechanisms(mut self, mechanisms: &[&str]) -> Self {
        self.auth_mechanisms = strings(mechanisms);
        self
    }

    /// Set [`SmtpScript::bearer`] (list XOAUTH2 and/or OAUTHBEARER in
    /// [`SmtpScript::auth_mechanisms`] too).
    pub fn bearer(mut self, verifier: BearerVerifier) -> Self {
        self.bearer = Some(verifier);
        self
    }

    /// Set [`SmtpScript::oauthbearer_host`].
    pub fn oauthbearer_host(mut self, host: &str) -> Self {
        self.oauthbearer_host = host.to_owned();
        self
    }

    /// Set [`SmtpScript::oauthbearer_port`].
    pub fn oauthbearer_port(mut self, port: u16) -> Self {
        self.oauthbearer_port = Some(port);
        self
    }

    /// Set [`SmtpScript::bearer_error`].
    pub fn bearer_error(mut self, json: &str) -> Self {
        self.bearer_error = json.to_owned();
        self
    }

    /// Set [`SmtpScript::auth_only_after_tls`].
    pub fn auth_only_after_tls(mut self, only: bool) -> Self {
        self.auth_only_after_tls = only;
        self
    }

    /// Set [`SmtpScript::require_auth`].
    pub fn require_auth(mut self, require: bool) -> Self {
        self.require_auth = require;
        self
    }

    /// Set [`SmtpScript::extensions`].
    pub fn extensions(mut self, extensions: &[&str]) -> Self {
        self.extensions = strings(extensions);
        self
    }

    /// Set [`SmtpScript::starttls`].
    pub fn starttls(mut self, starttls: StarttlsBehaviour) -> Self {
        self.starttls = starttls;
        self
    }

    /// Set [`SmtpScript::ehlo`].
    pub fn ehlo(mut self, ehlo: EhloBehaviour) -> Self {
        self.ehlo = ehlo;
        self
    }

    /// Set [`SmtpScript::greeting`] (one line, without CRLF).
    pub fn greeting(mut self, greeting: &str) -> Self {
        self.greeting = greeting.to_owned();
        self
    }

    /// A multi-line `220` greeting with these texts (RFC 5321 §4.2.1:
    /// `220-` on all lines but the last).
    pub fn multiline_greeting(mut self, texts: &[&str]) -> Self {
        self.greeting = multiline(220, texts);
        self
    }

    /// Add one [`SmtpScript::rcpt_replies`] entry.
    pub fn rcpt_reply(mut self, address: &str, reply: &str) -> Self {
        self.rcpt_replies
            .push((address.to_owned(), reply.to_owned()));
        self
    }

    /// Set [`SmtpScript::mail_reply`].
    pub fn mail_reply(mut self, reply: &str) -> Self {
        self.mail_reply = Some(reply.to_owned());
        self
    }

    /// Set [`SmtpScript::data_command_reply`].
    pub fn data_command_reply(mut self, reply: &str) -> Self {
        self.data_command_reply = Some(reply.to_owned());
        self
    }

    /// Set [`SmtpScript::data_end`].
    pub fn data_end(mut self, data_end: DataEnd) -> Self {
        self.data_end = data_end;
        self
    }

    /// Set [`SmtpScript::bdat`].
    pub fn bdat(mut self, bdat: bool) -> Self {
        self.bdat = bdat;
        self
    }

    pub(super) fn offers_mechanism(&self, mechanism: &str) -> bool {
        self.auth_mechanisms
            .iter()
            .any(|m| m.eq_ignore_ascii_case(mechanism))
    }

    pub(super) fn has_extension(&self, keyword: &str) -> bool {
        self.extensions.iter().any(|e| {
            e.split_whitespace()
                .next()
                .is_some_and(|k| k.eq_ignore_ascii_case(keyword))
        })
    }

    /// The RFC 1870 limit advertised in a `SIZE n` extension, if any.
    pub(super) fn size_limit(&self) -> Option<usize> {
        self.extensions.iter().find_map(|e| {
            let mut words = e.split_whitespace();
            let keyword = words.next()?;
            if !keyword.eq_ignore_ascii_case("SIZE") {
                return None;
            }
            // RFC 1870 §4: no number or zero means "no fixed limit".
            words.next()?.parse::<usize>().ok().filter(|n| *n > 0)
        })
    }

    pub(super) fn rcpt_reply_for(&self, address: &str) -> Option<&str> {
        self.rcpt_replies
            .iter()
            .find(|(a, _)| a.eq_ignore_ascii_case(address))
            .map(|(_, reply)| reply.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_size_limit_and_extensions() {
        let script = SmtpScript::default();
        assert_eq!(script.size_limit(), Some(10_485_760));
        assert!(script.has_extension("dsn"));
        assert!(!script.has_extension("CHUNKING"));
        assert_eq!(script.clone().extensions(&["SIZE"]).size_limit(), None);
        assert_eq!(script.clone().extensions(&["SIZE 0"]).size_limit(), None);
        assert_eq!(script.extensions(&["size 100"]).size_limit(), Some(100));
    }
}
