//! SMTP AUTH (RFC 4954) with PLAIN, LOGIN and CRAM-MD5, each checked for
//! real against the script's account, and XOAUTH2 / OAUTHBEARER checked
//! against the script's bearer verifier.

use std::io;

use base64::Engine as _;

use super::events::SmtpEvent;
use super::session::{Greeted, Session, GREET_FIRST, SASL_LINES};
use crate::bearer::{
    self, BearerAttempt, BearerMechanism, BearerOutcome, SaslForm, BEARER_LINE_MAX,
};
use crate::fake::LineRules;
use crate::sasl::{check_cram, check_plain, decode, fresh_challenge, Verdict};

const AUTH_OK: &str = "235 2.7.0 Authentication successful";
const AUTH_INVALID: &str = "535 5.7.8 Authentication credentials invalid";
const AUTH_CANCELLED: &str = "501 5.7.0 Authentication cancelled";
const AUTH_UNDECODABLE: &str = "501 5.5.2 Cannot decode response";
const ENCRYPTION_REQUIRED: &str =
    "538 5.7.11 Encryption required for requested authentication mechanism";
const UNRECOGNIZED_MECHANISM: &str = "504 5.5.4 Unrecognized authentication type";
/// What Microsoft 365 answers a refused bearer token with.
const BEARER_FAILED: &str = "535 5.7.8 Authentication unsuccessful";
/// RFC 5321 §4.5.3.1.4: a command line, CRLF included, is at most 512
/// octets; RFC 4954 §4: an initial response that would exceed it goes in a
/// continuation instead.
const MAX_COMMAND_LINE: usize = 512;
/// Bearer response lines: tokens make them long.
const BEARER_LINES: LineRules = LineRules {
    max: BEARER_LINE_MAX,
    ..SASL_LINES
};
/// LOGIN's prompts, base64 of "Username:" and "Password:".
const LOGIN_USER_PROMPT: &str = "334 VXNlcm5hbWU6";
const LOGIN_PASSWORD_PROMPT: &str = "334 UGFzc3dvcmQ6";

/// Outcome of a SASL exchange step that needs the client.
enum Sasl {
    Response(String),
    Cancelled,
}

impl Session {
    pub(super) async fn auth(&mut self, args: Option<&str>) -> io::Result<String> {
        if let Some(refusal) = self.auth_refusal() {
            return Ok(refusal.to_owned());
        }
        let Some(args) = args.filter(|a| !a.is_empty()) else {
            return Ok("501 5.5.4 Syntax: AUTH mechanism [initial-response]".to_owned());
        };
        let (mechanism, initial) = match args.split_once(' ') {
            Some((m, ir)) => (m.to_ascii_uppercase(), Some(ir.to_owned())),
            None => (args.to_ascii_uppercase(), None),
        };
        if !self.script().offers_mechanism(&mechanism) {
            return Ok(UNRECOGNIZED_MECHANISM.to_owned());
        }
        let line_len = "AUTH ".len() + args.len() + 2;
        if initial.is_some() && line_len > MAX_COMMAND_LINE {
            self.violation(format!(
                "AUTH line of {line_len} octets with an initial response \
                 (RFC 4954 §4, RFC 5321 §4.5.3.1.4: {MAX_COMMAND_LINE} at most)"
            ));
        }
        if let Some(bearer) = BearerMechanism::from_name(&mechanism) {
            let response = match initial {
                Some(ir) => Some((ir, SaslForm::InitialResponse)),
                None => match self.challenge_with("334 ", &BEARER_LINES).await? {
                    Sasl::Response(r) => Some((r, SaslForm::Continuation)),
                    Sasl::Cancelled => None,
                },
            };
            return match response {
                Some((r, form)) => self.finish_bearer(bearer, form, &r).await,
                None => Ok(self.cancelled(bearer.as_str())),
            };
        }
        match mechanism.as_str() {
            "PLAIN" => {
                let response = match initial {
                    Some(ir) => Sasl::Response(ir),
                    None => self.challenge("334 ").await?,
                };
                Ok(match response {
                    Sasl::Response(r) => self.finish_plain(&r),
                    Sasl::Cancelled => self.cancelled("PLAIN"),
                })
            }
            "LOGIN" => {
                let user = match initial {
                    Some(ir) => Sasl::Response(ir),
                    None => self.challenge(LOGIN_USER_PROMPT).await?,
                };
                let Sasl::Response(user) = user else {
                    return Ok(self.cancelled("LOGIN"));
                };
                let Sasl::Response(password) = self.challenge(LOGIN_PASSWORD_PROMPT).await? else {
                    return Ok(self.cancelled("LOGIN"));
                };
                Ok(self.finish_login(&user, &password))
            }
            "CRAM-MD5" => {
                if initial.is_some() {
                    // RFC 2195: the server speaks first.
                    return Ok("501 5.5.4 CRAM-MD5 takes no initial response".to_owned());
                }
                let challenge = fresh_challenge();
                let encoded = base64::engine::general_purpose::STANDARD.encode(&challenge);
                let prompt = format!("334 {encoded}");
                Ok(match self.challenge(&prompt).await? {
                    Sasl::Response(r) => self.finish_cram(&challenge, &r),
                    Sasl::Cancelled => self.cancelled("CRAM-MD5"),
                })
            }
            _ => Ok(UNRECOGNIZED_MECHANISM.to_owned()),
        }
    }

    /// Why AUTH cannot start now, if it cannot.
    fn auth_refusal(&self) -> Option<&'static str> {
        if self.script().auth_mechanisms.is_empty() {
            return Some("502 5.5.1 AUTH not supported");
        }
        if self.greeted != Greeted::Ehlo {
            return Some(GREET_FIRST);
        }
        if !self.auth_advertised() {
            return Some(ENCRYPTION_REQUIRED);
        }
        // RFC 4954 §4: one successful AUTH per session, none mid-transaction.
        if self.auth_user.is_some() {
            return Some("503 5.5.1 Already authenticated");
        }
        if self.txn.is_some() {
            return Some("503 5.5.1 AUTH not permitted during a mail transaction");
        }
        None
    }

    /// Send a `334` prompt and read the client's line (never logged).
    async fn challenge(&mut self, prompt: &str) -> io::Result<Sasl> {
        self.challenge_with(prompt, &SASL_LINES).await
    }

    /// [`Session::challenge`] reading the answer with `rules`.
    async fn challenge_with(&mut self, prompt: &str, rules: &LineRules) -> io::Result<Sasl> {
        self.link.write_line(prompt).await?;
        match self.link.read_line(rules).await {
            // RFC 4954 §4: "*" cancels the exchange.
            Some(line) if line == "*" => Ok(Sasl::Cancelled),
            Some(line) => Ok(Sasl::Response(line)),
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
    ) -> io::Result<String> {
        let name = mechanism.as_str();
        let script = self.script();
        let expected = bearer::Expected {
            user: &script.user,
            host: &script.oauthbearer_host,
            port: script.oauthbearer_port.unwrap_or(self.link.local_port()),
            verifier: script.bearer.as_ref(),
        };
        let (user, outcome) = bearer::check(mechanism, response, &expected);
        let error_json = script.bearer_error.clone();
        self.record(SmtpEvent::BearerAuth(BearerAttempt {
            mechanism,
            form,
            user,
            outcome: outcome.clone(),
        }));
        match outcome {
            BearerOutcome::Accepted => Ok(self.conclude(name, Verdict::Accepted)),
            BearerOutcome::Malformed(why) => {
                self.violation(format!("{name} response: {why}"));
                self.bearer_failed(name);
                let undecodable = base64::engine::general_purpose::STANDARD
                    .decode(response)
                    .is_err();
                Ok(if undecodable {
                    AUTH_UNDECODABLE
                } else {
                    BEARER_FAILED
                }
                .to_owned())
            }
            BearerOutcome::Refused(_) => {
                let prompt = format!("334 {}", bearer::error_challenge(&error_json));
                self.link.write_line(&prompt).await?;
                let Some(answer) = self.link.read_line(&BEARER_LINES).await else {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                };
                let dummy = mechanism.dummy_response();
                if answer != dummy {
                    self.violation(format!(
                        "{name} error challenge answered with {} octets, not {dummy:?}",
                        answer.len()
                    ));
                }
                self.bearer_failed(name);
                Ok(BEARER_FAILED.to_owned())
            }
        }
    }

    fn bearer_failed(&self, mechanism: &str) {
        self.record(SmtpEvent::AuthFailed {
            mechanism: mechanism.to_owned(),
        });
    }

    fn cancelled(&self, mechanism: &str) -> String {
        self.record(SmtpEvent::AuthCancelled {
            mechanism: mechanism.to_owned(),
        });
        AUTH_CANCELLED.to_owned()
    }

    fn finish_plain(&mut self, response: &str) -> String {
        let script = self.script();
        let verdict = check_plain(response, &script.user, &script.password);
        self.conclude("PLAIN", verdict)
    }

    fn finish_login(&mut self, user: &str, password: &str) -> String {
        let verdict = match (decode(user), decode(password)) {
            (Some(user), Some(password)) => {
                let script = self.script();
                if user == script.user.as_bytes() && password == script.password.as_bytes() {
                    Verdict::Accepted
                } else {
                    Verdict::Rejected
                }
            }
            _ => Verdict::Undecodable,
        };
        self.conclude("LOGIN", verdict)
    }

    fn finish_cram(&mut self, challenge: &str, response: &str) -> String {
        let script = self.script();
        let verdict = check_cram(response, challenge, &script.user, &script.password);
        self.conclude("CRAM-MD5", verdict)
    }

    /// A SASL verdict as SMTP answers it: `235`, `535`, or RFC 4954 §4's
    /// `501` for a response that is not base64.
    fn conclude(&mut self, mechanism: &str, verdict: Verdict) -> String {
        if verdict == Verdict::Accepted {
            self.auth_user = Some(self.script().user.clone());
            self.record(SmtpEvent::AuthOk {
                mechanism: mechanism.to_owned(),
                tls: self.link.tls(),
            });
            return AUTH_OK.to_owned();
        }
        self.record(SmtpEvent::AuthFailed {
            mechanism: mechanism.to_owned(),
        });
        match verdict {
            Verdict::Undecodable => AUTH_UNDECODABLE,
            Verdict::Accepted | Verdict::Rejected => AUTH_INVALID,
        }
        .to_owned()
    }
}
