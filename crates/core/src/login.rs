//! Logins as values: a user name and password checked to be safe on a
//! command line, and the ways a client proves who it is. Shared by the SASL
//! machines and the credential sources (re-exported from
//! [`crate::credentials`]).

use crate::secret::Secret;

/// A user name and password, checked to be safe to put on a command line.
#[derive(Debug, Clone)]
pub struct Login {
    user: String,
    password: Secret,
}

/// Why a login was refused before anything was sent upstream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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

/// How a client proved who it is.
#[derive(Debug, Clone)]
pub enum ClientAuth {
    /// USER/PASS, AUTH PLAIN or AUTH LOGIN.
    Password(Login),
    /// APOP against postern's own greeting timestamp (RFC 1939 §7).
    Apop {
        /// The user name.
        user: String,
        /// The timestamp postern sent.
        timestamp: Vec<u8>,
        /// The client's hex digest.
        digest: Vec<u8>,
    },
    /// CRAM-MD5 against postern's own challenge (RFC 2195).
    CramMd5 {
        /// The user name.
        user: String,
        /// The challenge postern sent.
        challenge: Vec<u8>,
        /// The client's hex digest.
        digest: Vec<u8>,
    },
}

impl ClientAuth {
    /// The user name the client gave (safe to log).
    pub fn user(&self) -> &str {
        match self {
            ClientAuth::Password(l) => l.user(),
            ClientAuth::Apop { user, .. } | ClientAuth::CramMd5 { user, .. } => user,
        }
    }
}
