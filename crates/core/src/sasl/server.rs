//! The SASL server side, shared by every front end (sans-IO): the client
//! picks a mechanism from the set the route offers, postern prompts and
//! collects the responses, and the machine ends in a [`ClientAuth`] to
//! check, a refusal, or a cancel. Each protocol only renders a prompt
//! (`+ …` for POP3, `334 …` for SMTP) and the refusals in its own words.
//!
//! ```text
//! start(mech, initial) ─► Prompt(challenge) ─► on_line(response) ─► … ─► Done(ClientAuth)
//!                      └─► Done | Refused                         └─► Refused | Cancelled ("*")
//! ```

use crate::login::{ClientAuth, Login};
use crate::secret::Secret;

use super::{decode, parse_plain, SaslError};

/// A SASL mechanism postern accepts from clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// RFC 4616.
    Plain,
    /// The de-facto LOGIN mechanism (user and password prompts).
    Login,
    /// RFC 2195, against postern's own challenge (local accounts).
    CramMd5,
}

impl Mechanism {
    /// The mechanism a client named (case-insensitive), if postern knows it.
    pub fn parse(name: &[u8]) -> Option<Self> {
        [Self::Plain, Self::Login, Self::CramMd5]
            .into_iter()
            .find(|m| m.name().as_bytes().eq_ignore_ascii_case(name))
    }

    /// The registered name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::Login => "LOGIN",
            Self::CramMd5 => "CRAM-MD5",
        }
    }
}

/// The set of mechanisms a route offers its clients.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mechanisms {
    plain: bool,
    login: bool,
    cram_md5: bool,
}

impl Mechanisms {
    /// No mechanism.
    pub const NONE: Mechanisms = Mechanisms {
        plain: false,
        login: false,
        cram_md5: false,
    };

    /// This set with `m` added.
    pub fn with(mut self, m: Mechanism) -> Self {
        match m {
            Mechanism::Plain => self.plain = true,
            Mechanism::Login => self.login = true,
            Mechanism::CramMd5 => self.cram_md5 = true,
        }
        self
    }

    /// Whether `m` is offered.
    pub fn has(self, m: Mechanism) -> bool {
        match m {
            Mechanism::Plain => self.plain,
            Mechanism::Login => self.login,
            Mechanism::CramMd5 => self.cram_md5,
        }
    }

    /// The offered mechanisms, in advertising order.
    pub fn iter(self) -> impl Iterator<Item = Mechanism> {
        [Mechanism::Plain, Mechanism::Login, Mechanism::CramMd5]
            .into_iter()
            .filter(move |m| self.has(*m))
    }

    /// Whether nothing is offered.
    pub fn is_empty(self) -> bool {
        self.iter().next().is_none()
    }

    /// The names separated by spaces (`PLAIN LOGIN CRAM-MD5`).
    pub fn names(self) -> String {
        self.iter()
            .map(Mechanism::name)
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The `n`th CRAM-MD5 challenge of a session built on postern's msg-id
/// `base` (`<...@...>`): `<n.` + the rest, so no two exchanges share one.
pub fn numbered_challenge(base: &[u8], n: u32) -> Vec<u8> {
    let inner = base.strip_prefix(b"<").unwrap_or(base);
    let mut c = format!("<{n}.").into_bytes();
    c.extend_from_slice(inner);
    c
}

/// Why a SASL exchange was refused (each protocol words it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// A response was not valid base64.
    Base64,
    /// PLAIN with an authorization identity other than the login.
    AuthzidDiffers,
    /// The decoded response is unusable (malformed PLAIN, control bytes in
    /// a user name, a CRAM-MD5 response without a digest).
    Invalid,
}

/// What the protocol should do next.
#[derive(Debug)]
pub enum ServerStep {
    /// Send this challenge (raw; the protocol base64-encodes it) and feed
    /// the client's next line to [`SaslServer::on_line`].
    Prompt(SaslServer, Vec<u8>),
    /// Check this authentication.
    Done(ClientAuth),
    /// Refused; the exchange is over.
    Refused(Refused),
    /// The client sent `*`; the exchange is over.
    Cancelled,
}

/// An exchange in progress.
#[derive(Debug)]
pub struct SaslServer(State);

#[derive(Debug)]
enum State {
    Plain,
    LoginUser,
    LoginPass(Vec<u8>),
    Cram(Vec<u8>),
}

impl SaslServer {
    /// Starts `mechanism` (already checked against the route's set) with
    /// the client's initial response, if any. `challenge` is postern's
    /// CRAM-MD5 challenge for this exchange.
    pub fn start(mechanism: Mechanism, initial: Option<&[u8]>, challenge: Vec<u8>) -> ServerStep {
        match (mechanism, initial) {
            (Mechanism::Plain, Some(ir)) => plain(ir),
            (Mechanism::Plain, None) => ServerStep::Prompt(Self(State::Plain), Vec::new()),
            (Mechanism::Login, Some(user)) => login_user(user),
            (Mechanism::Login, None) => {
                ServerStep::Prompt(Self(State::LoginUser), b"Username:".to_vec())
            }
            // CRAM-MD5 has no initial response (RFC 2195): postern speaks first.
            (Mechanism::CramMd5, Some(_)) => ServerStep::Refused(Refused::Invalid),
            (Mechanism::CramMd5, None) => {
                ServerStep::Prompt(Self(State::Cram(challenge.clone())), challenge)
            }
        }
    }

    /// The client's response line (terminator removed).
    pub fn on_line(self, data: &[u8]) -> ServerStep {
        if data == b"*" {
            return ServerStep::Cancelled;
        }
        match self.0 {
            State::Plain => plain(data),
            State::LoginUser => login_user(data),
            State::LoginPass(user) => match decode(data) {
                Ok(pw) => match Login::new(&user, Secret::new(pw.to_vec())) {
                    Ok(l) => ServerStep::Done(ClientAuth::Password(l)),
                    Err(_) => ServerStep::Refused(Refused::Invalid),
                },
                Err(_) => ServerStep::Refused(Refused::Base64),
            },
            State::Cram(challenge) => cram(data, challenge),
        }
    }
}

fn plain(b64: &[u8]) -> ServerStep {
    let Ok(decoded) = decode(b64) else {
        return ServerStep::Refused(Refused::Base64);
    };
    match parse_plain(&decoded) {
        Ok(login) => ServerStep::Done(ClientAuth::Password(login)),
        Err(SaslError::AuthzidDiffers) => ServerStep::Refused(Refused::AuthzidDiffers),
        Err(_) => ServerStep::Refused(Refused::Invalid),
    }
}

fn login_user(b64: &[u8]) -> ServerStep {
    match decode(b64) {
        Ok(user) => ServerStep::Prompt(
            SaslServer(State::LoginPass(user.to_vec())),
            b"Password:".to_vec(),
        ),
        Err(_) => ServerStep::Refused(Refused::Base64),
    }
}

/// A client's CRAM-MD5 response: base64 of `user SP hex-digest`.
fn cram(b64: &[u8], challenge: Vec<u8>) -> ServerStep {
    let Ok(decoded) = decode(b64) else {
        return ServerStep::Refused(Refused::Base64);
    };
    let Some(space) = decoded.iter().rposition(|b| *b == b' ') else {
        return ServerStep::Refused(Refused::Invalid);
    };
    match std::str::from_utf8(&decoded[..space]) {
        Ok(user) if !user.is_empty() && !user.bytes().any(|b| b.is_ascii_control()) => {
            ServerStep::Done(ClientAuth::CramMd5 {
                user: user.to_owned(),
                challenge,
                digest: decoded[space + 1..].to_vec(),
            })
        }
        _ => ServerStep::Refused(Refused::Invalid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sasl::encode;

    fn password(step: ServerStep) -> (String, Vec<u8>) {
        match step {
            ServerStep::Done(ClientAuth::Password(l)) => {
                (l.user().to_owned(), l.password().expose().to_vec())
            }
            other => panic!("expected a login, got {other:?}"),
        }
    }

    fn prompt(step: ServerStep) -> (SaslServer, Vec<u8>) {
        match step {
            ServerStep::Prompt(s, p) => (s, p),
            other => panic!("expected a prompt, got {other:?}"),
        }
    }

    #[test]
    fn mechanism_sets_and_names() {
        let set = Mechanisms::NONE
            .with(Mechanism::CramMd5)
            .with(Mechanism::Plain);
        assert_eq!(set.names(), "PLAIN CRAM-MD5");
        assert!(!set.has(Mechanism::Login));
        assert!(Mechanisms::NONE.is_empty());
        assert_eq!(Mechanism::parse(b"cram-md5"), Some(Mechanism::CramMd5));
        assert_eq!(Mechanism::parse(b"XOAUTH2"), None);
    }

    #[test]
    fn plain_with_and_without_initial_response() {
        let ir = encode(b"\0tim\0pass word");
        let (u, p) = password(SaslServer::start(
            Mechanism::Plain,
            Some(ir.as_bytes()),
            vec![],
        ));
        assert_eq!((u.as_str(), p.as_slice()), ("tim", &b"pass word"[..]));
        let (s, challenge) = prompt(SaslServer::start(Mechanism::Plain, None, vec![]));
        assert!(challenge.is_empty());
        password(s.on_line(ir.as_bytes()));
        let root = encode(b"root\0tim\0p");
        assert!(matches!(
            SaslServer::start(Mechanism::Plain, Some(root.as_bytes()), vec![]),
            ServerStep::Refused(Refused::AuthzidDiffers)
        ));
        assert!(matches!(
            SaslServer::start(Mechanism::Plain, Some(b"!!"), vec![]),
            ServerStep::Refused(Refused::Base64)
        ));
    }

    #[test]
    fn login_prompts_for_user_then_password() {
        let (s, p) = prompt(SaslServer::start(Mechanism::Login, None, vec![]));
        assert_eq!(p, b"Username:");
        let (s, p) = prompt(s.on_line(encode(b"tim").as_bytes()));
        assert_eq!(p, b"Password:");
        let (u, pw) = password(s.on_line(encode(b"secret").as_bytes()));
        assert_eq!((u.as_str(), pw.as_slice()), ("tim", &b"secret"[..]));
        // A user name with a line break cannot become a login.
        let (s, _) = prompt(SaslServer::start(
            Mechanism::Login,
            Some(encode(b"a\r\nb").as_bytes()),
            vec![],
        ));
        assert!(matches!(
            s.on_line(encode(b"pw").as_bytes()),
            ServerStep::Refused(Refused::Invalid)
        ));
    }

    #[test]
    fn cram_md5_carries_postern_s_challenge_and_star_cancels() {
        let challenge = b"<1.2@postern>".to_vec();
        let (s, p) = prompt(SaslServer::start(
            Mechanism::CramMd5,
            None,
            challenge.clone(),
        ));
        assert_eq!(p, challenge);
        match s.on_line(encode(b"tim b913a602c7eda7a495b4e6e7334d3890").as_bytes()) {
            ServerStep::Done(ClientAuth::CramMd5 {
                user,
                challenge: c,
                digest,
            }) => {
                assert_eq!(user, "tim");
                assert_eq!(c, challenge);
                assert_eq!(digest, b"b913a602c7eda7a495b4e6e7334d3890");
            }
            other => panic!("expected a CRAM-MD5 login, got {other:?}"),
        }
        let (s, _) = prompt(SaslServer::start(
            Mechanism::CramMd5,
            None,
            challenge.clone(),
        ));
        assert!(matches!(s.on_line(b"*"), ServerStep::Cancelled));
        let (s, _) = prompt(SaslServer::start(Mechanism::CramMd5, None, challenge));
        assert!(matches!(
            s.on_line(encode(b"nodigest").as_bytes()),
            ServerStep::Refused(Refused::Invalid)
        ));
    }
}
