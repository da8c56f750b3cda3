//! One POP3 session: its state, the command dispatch, CAPA and STLS.
//! Login commands are in `login.rs`, mailbox commands in `mailbox.rs`.

use std::io;
use std::sync::Arc;

use super::events::Pop3Event;
use super::mailbox::StoredMessage;
use super::script::{CapaBehaviour, Pop3Script, StlsBehaviour, UNIQUE_TIMESTAMP};
use super::Shared;
use crate::fake::{FakeSecurity, LineRules, Link, Protocol, Step};
use crate::sasl::fresh_challenge;

/// Longest line the fake accepts. RFC 2449 §4 caps commands at 255 octets,
/// but SASL responses (RFC 5034 §4) may be longer.
pub(super) const LINES: LineRules = LineRules {
    max: 8 * 1024,
    strict: false,
    too_long_reply: None,
    bare_lf: "bare LF line ending",
    bare_cr: "bare CR inside a line",
    non_utf8: "non-UTF-8 line",
};

const SIGNING_OFF: &[u8] = b"+OK fake POP3 server signing off\r\n";
const BEGIN_TLS: &[u8] = b"+OK Begin TLS\r\n";

pub(super) fn script_error(text: &str) -> Vec<u8> {
    format!("-ERR {text}\r\n").into_bytes()
}

pub(super) enum State {
    Authorization {
        /// Name given by USER, awaiting PASS.
        user: Option<String>,
    },
    Transaction {
        view: Vec<StoredMessage>,
        deleted: Vec<bool>,
    },
}

pub(super) struct Session {
    pub(super) shared: Arc<Shared>,
    pub(super) link: Link<Pop3Event>,
    pub(super) state: State,
    /// The greeting's APOP timestamp, if any.
    pub(super) timestamp: Option<String>,
}

impl Protocol for Session {
    type Event = Pop3Event;

    const UPGRADE_VERB: &'static str = "STLS";

    fn link(&mut self) -> &mut Link<Pop3Event> {
        &mut self.link
    }

    fn security(&self) -> &FakeSecurity {
        &self.script().security
    }

    fn greeting(&self) -> Vec<u8> {
        match &self.timestamp {
            Some(ts) => format!("+OK fake ready {ts}\r\n").into_bytes(),
            None => b"+OK fake ready\r\n".to_vec(),
        }
    }

    async fn read_command(&mut self) -> Option<String> {
        self.read_line().await
    }

    async fn handle(&mut self, line: &str) -> io::Result<Step> {
        self.record(Pop3Event::Command(masked(line)));
        let (verb, args) = match line.split_once(' ') {
            Some((v, a)) => (v.to_ascii_uppercase(), Some(a)),
            None => (line.to_ascii_uppercase(), None),
        };
        let in_auth = matches!(self.state, State::Authorization { .. });
        let reply: Vec<u8> = match (verb.as_str(), in_auth) {
            ("CAPA", _) => self.capa(),
            ("QUIT", true) => {
                self.link.write(SIGNING_OFF).await?;
                return Ok(Step::Quit);
            }
            ("QUIT", false) => {
                let deleted = self.commit();
                self.record(Pop3Event::QuitCommitted { deleted });
                self.link.write(SIGNING_OFF).await?;
                return Ok(Step::Quit);
            }
            ("STLS", true) => match self.stls_step() {
                Ok(step) => return Ok(step),
                Err(reply) => reply,
            },
            ("USER", true) => self.user(args),
            ("PASS", true) => self.pass(args),
            ("APOP", true) => self.apop(args),
            ("AUTH", true) => self.auth(args).await?,
            ("STAT", false) => self.stat(),
            ("LIST", false) => self.list(args),
            ("UIDL", false) => self.uidl(args),
            ("RETR", false) => match self.message_number(args) {
                Ok(n) => return self.retr(n).await,
                Err(reply) => reply,
            },
            ("TOP", false) => self.top(args),
            ("DELE", false) => self.dele(args),
            ("NOOP", false) => b"+OK\r\n".to_vec(),
            ("RSET", false) => self.rset(),
            ("STLS" | "USER" | "PASS" | "APOP" | "AUTH", false)
            | ("STAT" | "LIST" | "UIDL" | "RETR" | "TOP" | "DELE" | "NOOP" | "RSET", true) => {
                script_error("command not valid in this state")
            }
            _ => script_error("unknown command"),
        };
        self.link.write(&reply).await?;
        Ok(Step::Continue)
    }

    fn reset_after_tls(&mut self) {
        // RFC 2595 §4: forget everything learned before TLS.
        self.state = State::Authorization { user: None };
    }
}

impl Session {
    pub(super) fn new(shared: Arc<Shared>, link: Link<Pop3Event>) -> Self {
        let timestamp = match shared.script.greeting_timestamp.as_deref() {
            Some(UNIQUE_TIMESTAMP) => Some(fresh_challenge()),
            other => other.map(str::to_owned),
        };
        Self {
            shared,
            link,
            state: State::Authorization { user: None },
            timestamp,
        }
    }

    pub(super) fn record(&self, event: Pop3Event) {
        self.link.record(event);
    }

    pub(super) fn script(&self) -> &Pop3Script {
        &self.shared.script
    }

    /// One command or SASL line without its CRLF; `None` on EOF, error or
    /// a fatal violation.
    pub(super) async fn read_line(&mut self) -> Option<String> {
        self.link.read_line(&LINES).await
    }

    fn capa(&self) -> Vec<u8> {
        let script = self.script();
        if script.capa == CapaBehaviour::Unsupported {
            return script_error("CAPA not supported");
        }
        let mut out = String::from("+OK Capability list follows\r\n");
        for cap in ["TOP", "UIDL", "USER", "RESP-CODES", "PIPELINING"] {
            out.push_str(cap);
            out.push_str("\r\n");
        }
        if !script.sasl.is_empty() {
            out.push_str("SASL ");
            out.push_str(&script.sasl.join(" "));
            out.push_str("\r\n");
        }
        if script.capa == CapaBehaviour::Normal && self.stls_possible() {
            out.push_str("STLS\r\n");
        }
        out.push_str(".\r\n");
        out.into_bytes()
    }

    fn stls_possible(&self) -> bool {
        matches!(self.script().security, FakeSecurity::Starttls(_))
            && !self.link.tls()
            && matches!(self.state, State::Authorization { .. })
    }

    fn stls_step(&self) -> Result<Step, Vec<u8>> {
        if !self.stls_possible() {
            return Err(script_error("STLS not available"));
        }
        match &self.script().stls {
            StlsBehaviour::Accept => Ok(Step::StartTls(BEGIN_TLS.to_vec())),
            StlsBehaviour::Refuse => Err(script_error("STLS refused")),
            StlsBehaviour::AcceptThenInject(extra) => {
                Ok(Step::StartTls([BEGIN_TLS, extra.as_slice()].concat()))
            }
        }
    }
}

/// The command line as logged, secrets masked.
fn masked(line: &str) -> String {
    let (verb, rest) = line.split_once(' ').unwrap_or((line, ""));
    match verb.to_ascii_uppercase().as_str() {
        "PASS" => format!("{verb} ***"),
        "APOP" => match rest.split_once(' ') {
            Some((name, _)) => format!("{verb} {name} ***"),
            None => line.to_owned(),
        },
        "AUTH" => match rest.split_once(' ') {
            Some((mech, _)) => format!("{verb} {mech} ***"),
            None => line.to_owned(),
        },
        _ => line.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masking_hides_secrets() {
        assert_eq!(masked("PASS a b c"), "PASS ***");
        assert_eq!(masked("pass x"), "pass ***");
        assert_eq!(masked("APOP alice 0123"), "APOP alice ***");
        assert_eq!(masked("AUTH PLAIN AGEAYg=="), "AUTH PLAIN ***");
        assert_eq!(masked("AUTH CRAM-MD5"), "AUTH CRAM-MD5");
        assert_eq!(masked("RETR 1"), "RETR 1");
    }
}
