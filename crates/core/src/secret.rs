//! Passwords and other secrets.
//!
//! A [`Secret`] never prints its content: `Debug` and `Display` show a mask,
//! so a secret that reaches a log line, an error or a panic message stays
//! hidden. Its bytes are zeroized when it is dropped. [`load_secret`]
//! reads one from an environment variable or a file, the one way stored
//! passwords, client secrets and the state key come in.

use std::fmt;
use std::path::Path;

use zeroize::Zeroizing;

/// Secret bytes (a password, a SASL payload). Redacted `Debug`, zeroized on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    /// Wraps bytes as a secret.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The secret bytes. Callers must not log them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Whether the secret is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Self::new(s.as_bytes().to_vec())
    }
}

impl From<&[u8]> for Secret {
    fn from(s: &[u8]) -> Self {
        Self::new(s.to_vec())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The permission bits of a secret file (`0o644`) if every local user may
/// read it; `None` if not, if it cannot be read (loading reports that) or
/// off Unix. Group access is not flagged: `root:postern` with mode 0640 is
/// a deliberate way to share a secret with the service. Symlinks are
/// followed, as reading does (Kubernetes mounts secrets as symlinks).
pub fn readable_by_everyone(path: &Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        const OTHERS_READ: u32 = 0o004;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o7777;
        (mode & OTHERS_READ != 0).then_some(mode)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// Where secrets named by `*_env` keys are looked up. `run` and `check`
/// use the process environment ([`process_env`]); tests inject a map, so
/// no test has to change the environment of a multi-threaded process.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<std::ffi::OsString>;

/// The process environment, as an [`EnvLookup`].
pub fn process_env(name: &str) -> Option<std::ffi::OsString> {
    std::env::var_os(name)
}

/// Why a secret could not be loaded. Messages name the variable or file,
/// never the value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// Neither `*_env` nor `*_file` was given.
    #[error("no password source given")]
    NoSource,
    /// The environment variable is not set.
    #[error("the environment variable {0} is not set")]
    EnvNotSet(String),
    /// The file could not be read.
    #[error("cannot read the password file {}: {source}", path.display())]
    Unreadable {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The secret is empty (after one trailing line break).
    #[error("{0} is empty")]
    Empty(String),
    /// A line break or NUL inside the secret.
    #[error("{0} contains a line break or NUL inside the password")]
    LineBreak(String),
}

/// Loads a secret from an environment variable (looked up with `env`) or a
/// file; one trailing line break (LF or CRLF) is removed.
pub fn load_secret(
    var: Option<&str>,
    file: Option<&Path>,
    env: EnvLookup<'_>,
) -> Result<Secret, SecretError> {
    let (bytes, name) = match (var, file) {
        (Some(var), _) => match env(var) {
            None => return Err(SecretError::EnvNotSet(var.to_owned())),
            Some(v) => (
                v.into_encoded_bytes(),
                format!("the environment variable {var}"),
            ),
        },
        (None, Some(path)) => match std::fs::read(path) {
            Ok(b) => (b, format!("the password file {}", path.display())),
            Err(source) => {
                return Err(SecretError::Unreadable {
                    path: path.to_owned(),
                    source,
                })
            }
        },
        (None, None) => return Err(SecretError::NoSource),
    };
    let mut secret = bytes;
    if secret.last() == Some(&b'\n') {
        secret.pop();
        if secret.last() == Some(&b'\r') {
            secret.pop();
        }
    }
    let secret = Secret::new(secret);
    if secret.is_empty() {
        return Err(SecretError::Empty(name));
    }
    if secret
        .expose()
        .iter()
        .any(|b| matches!(b, b'\r' | b'\n' | 0))
    {
        return Err(SecretError::LineBreak(name));
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_hide_the_value() {
        let s = Secret::from("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(format!("{s}"), "***");
        assert!(!format!("{s:?}{s}").contains("hunter2"));
        assert_eq!(s.expose(), b"hunter2");
    }

    #[cfg(unix)]
    #[test]
    fn files_every_user_can_read_are_flagged() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = postern_testkit::TempDir::new("postern-secret-mode");
        let file = dir.write("pw", "hunter2\n");
        for (mode, flagged) in [
            (0o644, true),
            (0o604, true),
            (0o444, true),
            (0o600, false),
            (0o640, false),
            (0o400, false),
        ] {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).expect("chmod");
            let want = flagged.then_some(mode);
            assert_eq!(readable_by_everyone(&file), want, "mode {mode:o}");
        }
        assert_eq!(readable_by_everyone(&dir.path().join("missing")), None);
    }
}
