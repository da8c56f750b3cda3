//! POP3 login: USER/PASS and APOP (RFC 1939), AUTH PLAIN and CRAM-MD5
//! (RFC 5034), each checked for real against the script's account, and
//! AUTH XOAUTH2 / OAUTHBEARER checked against the script's bearer
//! verifier.

use std::io;

use base64::Engine as _;

use super::events::Pop3Event;
use super::session::{script_error, Session, State, LINES};
use crate::auth::rfc1939_apop_digest;
use crate::bearer::{
    self, BearerAttempt, BearerMechanism, BearerOutcome, SaslForm, BEARER_LINE_MAX,
};
use crate::fake::LineRules;
use crate::sasl::{check_cram, check_plain, fresh_challenge, Verdict};

/// RFC 2449 §4: a command line, CRLF included, is at most 255 octets; RFC
/// 5034 §4: an initial response that would exceed it goes in a
/// continuation instead.
const MAX_COMMAND_LINE: usize = 255;
/// Bearer response lines: tokens make them long.
const BEARER_LINES: LineRules = LineRules {
    max: BEARER_LINE_MAX,
    ..LINES
};

const AUTH_FAILED: &str = "-ERR [AUTH] Authentication failed\r\n";
const TLS_REQUIRED: &str = "-ERR [AUTH] TLS required\r\n";

impl Session {
    fn auth_blocked(&self) -> bool {
        self.script().require_tls_for_auth && !self.link.tls()
    }

    pub(super) fn user(&mut self, args: Option<&str>) -> Vec<u8> {
        if self.auth_blocked() {
            return TLS_REQUIRED.into();
        }
        match args {
            Some(name) if !name.is_empty() => {
                self.state = State::Authorization {
                    user: Some(name.to_owned()),
                };
                // Same answer for every name: no user enumeration.
                b"+OK send PASS\r\n".to_vec()
            }
            _ => script_error("USER needs a name"),
        }
    }

    pub(super) fn pass(&mut self, args: Option<&str>) -> Vec<u8> {
        if self.auth_blocked() {
            return TLS_REQUIRED.into();
        }
        let user = match &mut self.state {
            State::Authorization { user } => user.take(),
            State::Transaction { .. } => None,
        };
        let Some(user) = user else {
            return script_error("USER first");
        };
        // RFC 1939 §7: the password is everything after "PASS ", spaces
        // included.
        let password = args.unwrap_or("");
        let script = self.script();
        if user == script.user && password == script.password {
            self.login("USER")
        } else {
            self.fail("USER")
        }
    }

    pub(super) fn apop(&mut self, args: Option<&str>) -> Vec<u8> {
        if self.auth_blocked() {
            return TLS_REQUIRED.into();
        }
        let Some(timestamp) = self.timestamp.clone() else {
            return script_error("APOP not available: no timestamp in greeting");
        };
        let Some((name, digest)) = args.and_then(|a| a.split_once(' ')) else {
            return script_error("APOP needs a name and a digest");
        };
        let expected = rfc1939_apop_digest(&timestamp, &self.script().password);
        // RFC 1939 §7: the digest is lower-case hex; upper case is a bug.
        if name == self.script().user && digest == expected {
            self.login("APOP")
        } else {
            self.fail("APOP")
        }
    }

    pub(super) async fn auth(&mut self, args: Option<&str>) -> io::Result<Vec<u8>> {
        if self.auth_blocked() {
            return Ok(TLS_REQUIRED.into());
        }
        let Some(args) = args else {
            return Ok(script_error("AUTH needs a mechanism"));
        };
        let (mech, initial) = match args.split_once(' ') {
            Some((m, ir)) => (m.to_ascii_uppercase(), Some(ir.to_owned())),
            None => (args.to_ascii_uppercase(), None),
        };
        if !self.script().offers_sasl(&mech) {
            return Ok(script_error("unsupported SASL mechanism"));
        }
        let line_len = "AUTH ".len() + args.len() + 2;
        if initial.is_some() && line_len > MAX_COMMAND_LINE {
            self.link.violation(format!(
                "AUTH line of {line_len} octets with an initial response \
                 (RFC 2449 §4, RFC 5034 §4: {MAX_COMMAND_LINE} at most)"
            ));
        }
        if let Some(mechanism) = BearerMechanism::from_name(&mech) {
            let (response, form) = match initial {
                Some(ir) => (ir, SaslForm::InitialResponse),
                // RFC 5034 §4: empty challenge is "+ ".
                None => (
                    self.bearer_challenge(b"+ \r\n").await?,
                    SaslForm::Continuation,
                ),
            };
            return self.finish_bearer(mechanism, form, &response).await;
        }
        match mech.as_str() {
            "PLAIN" => {
                let response = match initial {
                    Some(ir) => ir,
                    // RFC 5034 §4: empty challenge is "+ ".
                    None => self.challenge(b"+ \r\n").await?,
                };
                Ok(self.finish_plain(&response))
            }
            "CRAM-MD5" => {
                if initial.is_some() {
                    // RFC 2195: the server speaks first; no initial response.
                    return Ok(script_error("CRAM-MD5 takes no initial response"));
                }
                let challenge = fresh_challenge();
                let encoded = base64::engine::general_purpose::STANDARD.encode(&challenge);
                let response = self
                    .challenge(format!("+ {encoded}\r\n").as_bytes())
                    .await?;
                Ok(self.finish_cram(&challenge, &response))
            }
            _ => Ok(script_error("unsupported SASL mechanism")),
        }
    }

    /// Send a continuation and read the client's answer (never logged).
    async fn challenge(&mut self, prompt: &[u8]) -> io::Result<String> {
        self.link.write(prompt).await?;
        match self.read_line().await {
            Some(line) => Ok(line),
            None => Err(io::ErrorKind::UnexpectedEof.into()),
        }
    }

    /// Send a continuation and read the client's answer, up to
    /// [`BEARER_LINES`] long (never logged).
    async fn bearer_challenge(&mut self, prompt: &[u8]) -> io::Result<String> {
        self.link.write(prompt).await?;
        match self.link.read_line(&BEARER_LINES).await {
            Some(line) => Ok(line),
            None => Err(io::ErrorKind::UnexpectedEof.into()),
        }
    }

    /// Judge a bearer response; on a refused token play the error
    /// challenge and read the client's dummy response before failing.
    async fn finish_bearer(
        &mut self,
        mechanism: BearerMechanism,
        form: SaslForm,
        response: &str,
    ) -> io::Result<Vec<u8>> {
        let method = mechanism.as_str();
        if response == "*" {
            return Ok(self.cancelled(method));
        }
        let script = self.script();
        let expected = bearer::Expected {
            user: &script.user,
            host: &script.oauthbearer_host,
            port: script.oauthbearer_port.unwrap_or(self.link.local_port()),
            verifier: script.bearer.as_ref(),
        };
        let (user, outcome) = bearer::check(mechanism, response, &expected);
        let error_json = script.bearer_error.clone();
        self.record(Pop3Event::BearerAuth(BearerAttempt {
            mechanism,
            form,
            user,
            outcome: outcome.clone(),
        }));
        match outcome {
            BearerOutcome::Accepted => Ok(self.login(method)),
            BearerOutcome::Malformed(why) => {
                self.link.violation(format!("{method} response: {why}"));
                Ok(self.fail(method))
            }
            BearerOutcome::Refused(_) => {
                let prompt = format!("+ {}\r\n", bearer::error_challenge(&error_json));
                let answer = self.bearer_challenge(prompt.as_bytes()).await?;
                let dummy = mechanism.dummy_response();
                if answer != dummy {
                    self.link.violation(format!(
                        "{method} error challenge answered with {} octets, not {dummy:?}",
                        answer.len()
                    ));
                }
                Ok(self.fail(method))
            }
        }
    }

    fn cancelled(&self, method: &str) -> Vec<u8> {
        self.record(Pop3Event::AuthCancelled {
            method: method.to_owned(),
        });
        script_error("authentication cancelled")
    }

    fn finish_plain(&mut self, response: &str) -> Vec<u8> {
        if response == "*" {
            return self.cancelled("PLAIN");
        }
        let script = self.script();
        let verdict = check_plain(response, &script.user, &script.password);
        self.conclude("PLAIN", verdict)
    }

    fn finish_cram(&mut self, challenge: &str, response: &str) -> Vec<u8> {
        if response == "*" {
            return self.cancelled("CRAM-MD5");
        }
        let script = self.script();
        let verdict = check_cram(response, challenge, &script.user, &script.password);
        self.conclude("CRAM-MD5", verdict)
    }

    /// A SASL verdict as POP3 answers it: anything but success is a plain
    /// authentication failure.
    fn conclude(&mut self, method: &str, verdict: Verdict) -> Vec<u8> {
        match verdict {
            Verdict::Accepted => self.login(method),
            Verdict::Rejected | Verdict::Undecodable => self.fail(method),
        }
    }

    fn login(&mut self, method: &str) -> Vec<u8> {
        let view = self
            .shared
            .mailbox
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default();
        let count = view.len();
        self.state = State::Transaction {
            deleted: vec![false; count],
            view,
        };
        self.record(Pop3Event::LoggedIn {
            method: method.to_owned(),
            tls: self.link.tls(),
        });
        format!("+OK logged in, {count} messages\r\n").into_bytes()
    }

    fn fail(&mut self, method: &str) -> Vec<u8> {
        self.state = State::Authorization { user: None };
        self.record(Pop3Event::AuthFailed {
            method: method.to_owned(),
        });
        AUTH_FAILED.into()
    }
}
