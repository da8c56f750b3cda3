//! Where upstream credentials come from.
//!
//! Today the only source is passthrough: the login a client gives postern
//! is the login postern gives the upstream, for this session only. Stored
//! accounts plug in here later; front ends only ever ask
//! [`CredentialSource::resolve`].

use crate::config::Credentials;
use crate::secret::Secret;

/// A user name and password, checked to be safe to put on a command line.
#[derive(Debug, Clone)]
pub struct Login {
    user: String,
    password: Secret,
}

/// Why a login was refused before anything was sent upstream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LoginRefused {
    /// Empty user name.
    #[error("the user name is empty")]
    EmptyUser,
    /// CR, LF or NUL (command injection through a decoded credential).
    #[error("the user name or password contains a line break or NUL")]
    ControlCharacter,
    /// Not UTF-8 in the user name.
    #[error("the user name is not valid UTF-8")]
    NotUtf8,
}

impl Login {
    /// Validates a user name and password received from a client.
    pub fn new(user: &[u8], password: Secret) -> Result<Self, LoginRefused> {
        let bad = |b: &u8| matches!(b, b'\r' | b'\n' | 0);
        if user.is_empty() {
            return Err(LoginRefused::EmptyUser);
        }
        if user.iter().any(bad) || password.expose().iter().any(bad) {
            return Err(LoginRefused::ControlCharacter);
        }
        let user = std::str::from_utf8(user)
            .map_err(|_| LoginRefused::NotUtf8)?
            .to_owned();
        Ok(Self { user, password })
    }

    /// The user name (safe to log).
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The password.
    pub fn password(&self) -> &Secret {
        &self.password
    }
}

/// The credential policy of one route.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum CredentialSource {
    /// Carry the client's own login upstream.
    Passthrough,
}

impl CredentialSource {
    /// The source a route's configuration describes.
    pub fn from_config(c: &Credentials) -> Self {
        match c {
            Credentials::Passthrough | Credentials::Accounts(_) => Self::Passthrough,
        }
    }

    /// The upstream login to use for a client's login.
    pub fn resolve(&self, client: Login) -> Result<Login, LoginRefused> {
        match self {
            Self::Passthrough => Ok(client),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_injection_characters() {
        for (user, pass) in [
            (&b"a\r\nDELE 1"[..], "p"),
            (b"a", "p\r\nDELE 1"),
            (b"a\0b", "p"),
            (b"a", "p\nq"),
        ] {
            assert_eq!(
                Login::new(user, Secret::from(pass)).err(),
                Some(LoginRefused::ControlCharacter)
            );
        }
        assert_eq!(
            Login::new(b"", Secret::from("p")).err(),
            Some(LoginRefused::EmptyUser)
        );
        let ok = Login::new(b"user@example.net", Secret::from("pass with spaces")).expect("ok");
        assert_eq!(ok.user(), "user@example.net");
    }

    #[test]
    fn passthrough_keeps_the_login() {
        let l = Login::new(b"u", Secret::from("p")).expect("ok");
        let out = CredentialSource::Passthrough.resolve(l).expect("ok");
        assert_eq!(out.user(), "u");
        assert_eq!(out.password().expose(), b"p");
    }
}
