//! One SMTP session: its state, the command dispatch, EHLO/HELO and
//! STARTTLS. AUTH is in `auth.rs`, MAIL/RCPT in `envelope.rs`, DATA/BDAT
//! in `data.rs`.

use std::io;
use std::sync::Arc;

use super::events::SmtpEvent;
use super::script::{EhloBehaviour, SmtpScript, StarttlsBehaviour, FAKE_SMTP_HOST};
use super::Shared;
use crate::fake::{FakeSecurity, LineRules, Link, Protocol, Step};

/// Command lines: RFC 5321 §4.5.3.1.4 allows 512 octets plus extension
/// parameters; longer is a broken client.
const COMMAND_LINES: LineRules = LineRules {
    max: 2048,
    strict: true,
    too_long_reply: Some(b"500 5.5.6 Line too long\r\n"),
    bare_lf: "bare LF ending a command line",
    bare_cr: "bare CR inside a command line",
    non_utf8: "non-UTF-8 command line",
};

/// SASL response lines; RFC 4954 §4 asks servers to take 12288 octets.
pub(super) const SASL_LINES: LineRules = LineRules {
    max: 12288,
    ..COMMAND_LINES
};

pub(super) const GREET_FIRST: &str = "503 5.5.1 Send EHLO first";
pub(super) const NEED_MAIL: &str = "503 5.5.1 Need MAIL command";
pub(super) const TOO_BIG: &str = "552 5.3.4 Message size exceeds fixed maximum message size";
const UNRECOGNIZED: &str = "502 5.5.2 Command not recognized";
/// What a pre-ESMTP server says to EHLO (no enhanced code: it has none).
const EHLO_REFUSED: &str = "502 Command not implemented";
const GO_AHEAD_TLS: &[u8] = b"220 2.0.0 Ready to start TLS\r\n";
const NO_STARTTLS: &str = "502 5.5.1 STARTTLS not supported";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Greeted {
    No,
    Helo,
    Ehlo,
}

/// An open mail transaction (after a 2xx MAIL).
pub(super) struct Transaction {
    pub(super) mail_from: String,
    pub(super) rcpts: Vec<String>,
    /// BDAT data so far; `Some` once the first chunk arrived.
    pub(super) chunks: Option<Vec<u8>>,
}

pub(super) struct Session {
    pub(super) shared: Arc<Shared>,
    pub(super) link: Link<SmtpEvent>,
    pub(super) greeted: Greeted,
    pub(super) auth_user: Option<String>,
    pub(super) txn: Option<Transaction>,
}

impl Protocol for Session {
    type Event = SmtpEvent;

    const UPGRADE_VERB: &'static str = "STARTTLS";

    fn link(&mut self) -> &mut Link<SmtpEvent> {
        &mut self.link
    }

    fn security(&self) -> &FakeSecurity {
        &self.script().security
    }

    fn greeting(&self) -> Vec<u8> {
        format!("{}\r\n", self.script().greeting).into_bytes()
    }

    async fn read_command(&mut self) -> Option<String> {
        self.link.read_line(&COMMAND_LINES).await
    }

    async fn handle(&mut self, line: &str) -> io::Result<Step> {
        self.record(SmtpEvent::Command(masked(line)));
        let (verb, args) = match line.split_once(' ') {
            Some((v, a)) => (v.to_ascii_uppercase(), Some(a)),
            None => (line.to_ascii_uppercase(), None),
        };
        let answer: String = match verb.as_str() {
            "EHLO" => self.ehlo(args),
            "HELO" => self.helo(args),
            "STARTTLS" => match self.starttls(args) {
                Ok(step) => return Ok(step),
                Err(answer) => answer,
            },
            "AUTH" => self.auth(args).await?,
            "MAIL" => self.mail(args),
            "RCPT" => self.rcpt(args),
            "DATA" => return self.data(args).await,
            "BDAT" if self.script().bdat => return self.bdat(args).await,
            "RSET" => {
                self.txn = None;
                "250 2.0.0 Ok".to_owned()
            }
            "NOOP" => "250 2.0.0 Ok".to_owned(),
            "QUIT" => {
                self.record(SmtpEvent::Quit);
                self.link.write_line("221 2.0.0 Bye").await?;
                return Ok(Step::Quit);
            }
            "VRFY" => "252 2.5.2 Cannot VRFY user, but will accept message".to_owned(),
            "HELP" => format!("214 2.0.0 {FAKE_SMTP_HOST} speaks RFC 5321"),
            _ => UNRECOGNIZED.to_owned(),
        };
        self.link.write_line(&answer).await?;
        Ok(Step::Continue)
    }

    fn reset_after_tls(&mut self) {
        // RFC 3207 §4.2: forget everything from before TLS; the client must
        // EHLO again.
        self.greeted = Greeted::No;
        self.auth_user = None;
        self.txn = None;
    }
}

impl Session {
    pub(super) fn new(shared: Arc<Shared>, link: Link<SmtpEvent>) -> Self {
        Self {
            shared,
            link,
            greeted: Greeted::No,
            auth_user: None,
            txn: None,
        }
    }

    pub(super) fn record(&self, event: SmtpEvent) {
        self.link.record(event);
    }

    pub(super) fn violation(&self, what: impl Into<String>) {
        self.link.violation(what);
    }

    pub(super) fn script(&self) -> &SmtpScript {
        &self.shared.script
    }

    pub(super) fn auth_advertised(&self) -> bool {
        let script = self.script();
        !script.auth_mechanisms.is_empty() && (self.link.tls() || !script.auth_only_after_tls)
    }

    fn starttls_offered(&self) -> bool {
        matches!(self.script().security, FakeSecurity::Starttls(_))
            && !self.link.tls()
            && self.script().starttls != StarttlsBehaviour::NotOffered
    }

    fn ehlo(&mut self, args: Option<&str>) -> String {
        if self.script().ehlo == EhloBehaviour::Refused {
            return EHLO_REFUSED.to_owned();
        }
        let Some(domain) = args.map(str::trim).filter(|d| !d.is_empty()) else {
            return "501 5.5.4 Syntax: EHLO hostname".to_owned();
        };
        // RFC 5321 §4.1.4: EHLO also resets any transaction.
        self.greeted = Greeted::Ehlo;
        self.txn = None;
        self.record(SmtpEvent::Ehlo(domain.to_owned()));
        let script = self.script();
        let mut lines = vec![format!("{FAKE_SMTP_HOST} greets {domain}")];
        lines.extend(script.extensions.iter().cloned());
        if script.bdat {
            lines.push("CHUNKING".to_owned());
        }
        if self.auth_advertised() {
            lines.push(format!("AUTH {}", script.auth_mechanisms.join(" ")));
        }
        if self.starttls_offered() {
            lines.push("STARTTLS".to_owned());
        }
        multiline(250, &lines)
    }

    fn helo(&mut self, args: Option<&str>) -> String {
        let Some(domain) = args.map(str::trim).filter(|d| !d.is_empty()) else {
            return "501 5.5.4 Syntax: HELO hostname".to_owned();
        };
        self.greeted = Greeted::Helo;
        self.txn = None;
        self.record(SmtpEvent::Helo(domain.to_owned()));
        format!("250 {FAKE_SMTP_HOST}")
    }

    fn starttls(&self, args: Option<&str>) -> Result<Step, String> {
        if args.is_some() {
            // RFC 3207 §4: STARTTLS takes no parameters.
            return Err("501 5.5.4 Syntax: STARTTLS".to_owned());
        }
        let script = self.script();
        if !matches!(script.security, FakeSecurity::Starttls(_))
            || script.starttls == StarttlsBehaviour::NotOffered
        {
            return Err(NO_STARTTLS.to_owned());
        }
        if self.link.tls() {
            return Err("503 5.5.1 TLS already active".to_owned());
        }
        if self.greeted != Greeted::Ehlo {
            return Err(GREET_FIRST.to_owned());
        }
        match &script.starttls {
            StarttlsBehaviour::Accept => Ok(Step::StartTls(GO_AHEAD_TLS.to_vec())),
            StarttlsBehaviour::Refuse => {
                Err("454 4.7.0 TLS not available due to temporary reason".to_owned())
            }
            StarttlsBehaviour::AcceptThenInject(extra) => {
                Ok(Step::StartTls([GO_AHEAD_TLS, extra.as_slice()].concat()))
            }
            StarttlsBehaviour::NotOffered => Err(NO_STARTTLS.to_owned()),
        }
    }
}

/// The command line as logged: an AUTH initial response is a secret.
fn masked(line: &str) -> String {
    let (verb, rest) = line.split_once(' ').unwrap_or((line, ""));
    if verb.eq_ignore_ascii_case("AUTH") {
        if let Some((mechanism, _)) = rest.split_once(' ') {
            return format!("{verb} {mechanism} ***");
        }
    }
    line.to_owned()
}

/// An RFC 5321 §4.2.1 multi-line reply, without the final CRLF:
/// `ddd-` on every line but the last, `ddd ` on the last.
pub(super) fn multiline<S: AsRef<str>>(code: u16, texts: &[S]) -> String {
    let mut out = String::new();
    let n = texts.len();
    for (i, text) in texts.iter().enumerate() {
        if i > 0 {
            out.push_str("\r\n");
        }
        let sep = if i + 1 == n { ' ' } else { '-' };
        out.push_str(&format!("{code}{sep}{}", text.as_ref()));
    }
    if n == 0 {
        out = code.to_string();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masking_hides_auth_responses_only() {
        assert_eq!(masked("AUTH PLAIN AGEAYg=="), "AUTH PLAIN ***");
        assert_eq!(masked("auth login YWxpY2U="), "auth login ***");
        assert_eq!(masked("AUTH CRAM-MD5"), "AUTH CRAM-MD5");
        assert_eq!(masked("MAIL FROM:<a@b> AUTH=<>"), "MAIL FROM:<a@b> AUTH=<>");
        assert_eq!(masked("NOOP"), "NOOP");
    }

    #[test]
    fn multiline_framing() {
        assert_eq!(multiline(250, &["only"]), "250 only");
        assert_eq!(multiline(250, &["a", "b", "c"]), "250-a\r\n250-b\r\n250 c");
        assert_eq!(multiline::<&str>(220, &[]), "220");
    }
}
