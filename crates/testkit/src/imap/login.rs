//! IMAP login: the LOGIN command (RFC 3501 §6.2.3) and AUTHENTICATE
//! (§6.2.2, RFC 4959 SASL-IR) with PLAIN, LOGIN and CRAM-MD5 checked for
//! real against the script's account, and XOAUTH2 / OAUTHBEARER checked
//! against the script's bearer verifier.

use std::io;

use base64::Engine as _;

use super::events::ImapEvent;
use super::parse::Value;
use super::session::{Flow, Reply, Session, LINES};
use crate::bearer::{self, BearerAttempt, BearerMechanism, BearerOutcome, SaslForm};
use crate::sasl::{check_cram, check_plain, decode, fresh_challenge, Verdict};

const AUTH_FAILED: &str = "[AUTHENTICATIONFAILED] Authentication failed";
/// LOGIN's prompts, base64 of "Username:" and "Password:".
const LOGIN_USER_PROMPT: &str = "VXNlcm5hbWU6";
const LOGIN_PASSWORD_PROMPT: &str = "UGFzc3dvcmQ6";

/// Outcome of a SASL exchange step that needs the client.
enum Sasl {
    Response(String),
    Cancelled,
}

impl Session {
    pub(super) fn login(&mut self, args: &[Value]) -> Reply {
        let [user, password] = args else {
            return Reply::bad("LOGIN needs a user name and a password");
        };
        let (Some(user), Some(password)) = (user.astring(), password.astring()) else {
            return Reply::bad("LOGIN takes two strings");
        };
        if self.login_disabled() {
            self.violation("LOGIN sent although LOGINDISABLED was advertised");
            return Reply::no("[PRIVACYREQUIRED] LOGIN is disabled before TLS");
        }
        let script = self.script();
        if user == script.user.as_bytes() && password == script.password.as_bytes() {
            self.logged_in("LOGIN", false)
        } else {
            self.failed("LOGIN")
        }
    }

    pub(super) async fn authenticate(&mut self, args: &[Value]) -> io::Result<Flow> {
        let (mechanism, initial) = match args {
            [Value::Atom(m)] => (m.to_ascii_uppercase(), None),
            [Value::Atom(m), Value::Atom(ir)] => (m.to_ascii_uppercase(), Some(ir.clone())),
            _ => return Ok(Reply::bad("AUTHENTICATE needs a mechanism").into()),
        };
        if !self.script().offers_mechanism(&mechanism) {
            return Ok(Reply::no("Unsupported authentication mechanism").into());
        }
        if initial.is_some() && !self.script().sasl_ir {
            self.violation("AUTHENTICATE with an initial response, but SASL-IR not advertised");
            return Ok(Reply::bad("SASL-IR not supported").into());
        }
        let ir_sent = initial.is_some();
        let name = format!("AUTHENTICATE {mechanism}");
        if let Some(bearer) = BearerMechanism::from_name(&mechanism) {
            let response = match initial {
                Some(ir) => Sasl::Response(ir),
                None => self.challenge("").await?,
            };
            let form = if ir_sent {
                SaslForm::InitialResponse
            } else {
                SaslForm::Continuation
            };
            return Ok(match response {
                Sasl::Response(r) => self.finish_bearer(bearer, form, &r).await?,
                Sasl::Cancelled => self.cancelled(&name),
            }
            .into());
        }
        let reply = match mechanism.as_str() {
            "PLAIN" => {
                let response = match initial {
                    Some(ir) => Sasl::Response(ir),
                    None => self.challenge("").await?,
                };
                match response {
                    Sasl::Response(r) => {
                        let script = self.script();
                        let verdict = check_plain(&r, &script.user, &script.password);
                        self.conclude(&name, verdict, ir_sent)
                    }
                    Sasl::Cancelled => self.cancelled(&name),
                }
            }
            "LOGIN" => {
                let user = match initial {
                    Some(ir) => Sasl::Response(ir),
                    None => self.challenge(LOGIN_USER_PROMPT).await?,
                };
                let Sasl::Response(user) = user else {
                    return Ok(self.cancelled(&name).into());
                };
                let Sasl::Response(password) = self.challenge(LOGIN_PASSWORD_PROMPT).await? else {
                    return Ok(self.cancelled(&name).into());
                };
                let verdict = match (decode(&user), decode(&password)) {
                    (Some(user), Some(password)) => {
                        let script = self.script();
                        if user == script.user.as_bytes() && password == script.password.as_bytes()
                        {
                            Verdict::Accepted
                        } else {
                            Verdict::Rejected
                        }
                    }
                    _ => Verdict::Undecodable,
                };
                self.conclude(&name, verdict, ir_sent)
            }
            "CRAM-MD5" => {
                if ir_sent {
                    // RFC 2195: the server speaks first.
                    self.violation("CRAM-MD5 with an initial response");
                    return Ok(Reply::bad("CRAM-MD5 takes no initial response").into());
                }
                let challenge = fresh_challenge();
                let encoded = base64::engine::general_purpose::STANDARD.encode(&challenge);
                match self.challenge(&encoded).await? {
                    Sasl::Response(r) => {
                        let script = self.script();
                        let verdict = check_cram(&r, &challenge, &script.user, &script.password);
                        self.conclude(&name, verdict, false)
                    }
                    Sasl::Cancelled => self.cancelled(&name),
                }
            }
            _ => Reply::no("Unsupported authentication mechanism"),
        };
        Ok(reply.into())
    }

    /// Send a `+ ` continuation with this base64 payload and read the
    /// client's line (never logged). RFC 3501 §6.2.2: `*` cancels.
    async fn challenge(&mut self, payload: &str) -> io::Result<Sasl> {
        self.link.write_line(&format!("+ {payload}")).await?;
        match self.link.read_line(&LINES).await {
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
    ) -> io::Result<Reply> {
        let name = format!("AUTHENTICATE {}", mechanism.as_str());
        let initial = form == SaslForm::InitialResponse;
        let script = self.script();
        let expected = bearer::Expected {
            user: &script.user,
            host: &script.oauthbearer_host,
            port: script.oauthbearer_port.unwrap_or(self.link.local_port()),
            verifier: script.bearer.as_ref(),
        };
        let (user, outcome) = bearer::check(mechanism, response, &expected);
        let error_json = script.bearer_error.clone();
        self.record(ImapEvent::BearerAuth(BearerAttempt {
            mechanism,
            form,
            user,
            outcome: outcome.clone(),
        }));
        match outcome {
            BearerOutcome::Accepted => Ok(self.logged_in(&name, initial)),
            BearerOutcome::Malformed(why) => {
                self.violation(format!("{} response: {why}", mechanism.as_str()));
                let undecodable = base64::engine::general_purpose::STANDARD
                    .decode(response)
                    .is_err();
                let reply = self.failed(&name);
                Ok(if undecodable {
                    Reply::bad("Invalid base64 in SASL response")
                } else {
                    reply
                })
            }
            BearerOutcome::Refused(_) => {
                let prompt = bearer::error_challenge(&error_json);
                self.link.write_line(&format!("+ {prompt}")).await?;
                let Some(answer) = self.link.read_line(&LINES).await else {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                };
                let dummy = mechanism.dummy_response();
                if answer != dummy {
                    self.violation(format!(
                        "{} error challenge answered with {} octets, not {dummy:?}",
                        mechanism.as_str(),
                        answer.len()
                    ));
                }
                Ok(self.failed(&name))
            }
        }
    }

    fn cancelled(&self, name: &str) -> Reply {
        self.record(ImapEvent::AuthCancelled {
            mechanism: name.to_owned(),
        });
        Reply::bad("Authentication cancelled")
    }

    /// A SASL verdict as IMAP answers it: `OK`, `NO [AUTHENTICATIONFAILED]`,
    /// or `BAD` for a response that is not base64.
    fn conclude(&mut self, name: &str, verdict: Verdict, initial: bool) -> Reply {
        match verdict {
            Verdict::Accepted => self.logged_in(name, initial),
            Verdict::Rejected => self.failed(name),
            Verdict::Undecodable => {
                self.failed(name);
                Reply::bad("Invalid base64 in SASL response")
            }
        }
    }

    fn logged_in(&mut self, name: &str, initial_response: bool) -> Reply {
        let user = self.script().user.clone();
        self.user = Some(user.clone());
        self.record(ImapEvent::LoggedIn {
            mechanism: name.to_owned(),
            user,
            initial_response,
            tls: self.link.tls(),
        });
        if self.script().capability_in_login_ok {
            let caps = self.capabilities().join(" ");
            Reply::ok(&format!("[CAPABILITY {caps}] Logged in"))
        } else {
            Reply::ok("Logged in")
        }
    }

    fn failed(&self, name: &str) -> Reply {
        self.record(ImapEvent::AuthFailed {
            mechanism: name.to_owned(),
        });
        Reply::no(AUTH_FAILED)
    }
}
