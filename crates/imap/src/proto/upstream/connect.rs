//! Connecting: [`Connect`] up to a [`Ready`] connection (see the
//! module docs of [`super`]).

use postern_core::config::{Security, UpstreamAuth};
use postern_core::upstream::{printable, Machine, Seen, Step, UpstreamError};

use super::super::capability::Capabilities;
use super::super::response::{Expect, Reply, Response, ResponseFramer, Status};
use super::{fail, insecure, last, reply_capabilities, Method, Tags};

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
    pub(super) method: Method,
    pub(super) capabilities: Capabilities,
    seen: Seen,
    pub(super) tags: Tags,
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
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::*;
    use postern_core::upstream::Framer;

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
}
