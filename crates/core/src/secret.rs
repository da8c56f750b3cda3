//! Passwords and other secrets.
//!
//! A [`Secret`] never prints its content: `Debug` and `Display` show a mask,
//! so a secret that reaches a log line, an error or a panic message stays
//! hidden. Its bytes are zeroized when it is dropped.

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
