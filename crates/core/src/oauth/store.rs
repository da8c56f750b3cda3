//! The token store: one file per OAuth2 account holding its refresh token
//! and what `postern oauth status` shows, encrypted with ChaCha20-Poly1305
//! under the state key, bound to its account (the account's identity is
//! the associated data, so a store copied to another account does not
//! open), written atomically (temporary file, fsync, rename, fsync of the
//! directory) with mode 0600.
//!
//! File layout: `POSTERN-TOKENS-1\n` ‖ 12-byte nonce ‖ ciphertext+tag of
//! the JSON [`StoredState`].

use std::io::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::secret::Secret;

const MAGIC: &[u8] = b"POSTERN-TOKENS-1\n";
const NONCE_LEN: usize = 12;

/// The key every token store is encrypted with (32 bytes).
#[derive(Clone)]
pub struct StateKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for StateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateKey(***)")
    }
}

/// Why a state key could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not base64 of exactly 32 bytes.
    #[error(
        "the state key must be the base64 of 32 random bytes (`postern oauth keygen` prints one)"
    )]
    Malformed,
}

impl StateKey {
    /// Parses the base64 text of a key (surrounding whitespace ignored).
    pub fn from_base64(text: &[u8]) -> Result<Self, KeyError> {
        let text = text.trim_ascii();
        let bytes = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|_| KeyError::Malformed)?,
        );
        let key: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| KeyError::Malformed)?;
        Ok(Self(Zeroizing::new(key)))
    }

    /// A fresh random key.
    pub fn generate() -> Self {
        let mut key = [0u8; 32];
        random(&mut key);
        Self(Zeroizing::new(key))
    }

    /// The key as base64 text (for `postern oauth keygen` only).
    pub fn to_base64(&self) -> Secret {
        Secret::new(
            base64::engine::general_purpose::STANDARD
                .encode(*self.0)
                .into_bytes(),
        )
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(Key::from_slice(&*self.0))
    }
}

fn random(out: &mut [u8]) {
    // The ring provider's system RNG (getrandom); it does not fail on the
    // platforms postern supports.
    let _ = rustls::crypto::ring::default_provider()
        .secure_random
        .fill(out);
}

/// What a store holds. Times are seconds since the Unix epoch.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredState {
    /// The refresh token (device_code grant), if consent was given.
    #[serde(default)]
    pub refresh_token: Option<String>,
    /// When the last access token was obtained.
    #[serde(default)]
    pub last_refresh: Option<u64>,
    /// When that access token expires.
    #[serde(default)]
    pub access_expires: Option<u64>,
    /// The last token-endpoint failure, in words (never a token).
    #[serde(default)]
    pub last_error: Option<String>,
    /// The provider refused the refresh token (`invalid_grant`): a person
    /// must run `postern oauth login` again.
    #[serde(default)]
    pub needs_consent: bool,
}

impl std::fmt::Debug for StoredState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredState")
            .field("refresh_token", &self.refresh_token.as_ref().map(|_| "***"))
            .field("last_refresh", &self.last_refresh)
            .field("access_expires", &self.access_expires)
            .field("last_error", &self.last_error)
            .field("needs_consent", &self.needs_consent)
            .finish()
    }
}

/// Why a store could not be read or written. Never contains its content.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing the file failed.
    #[error("token store {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a token store, was changed, belongs to another
    /// account, or the state key is not the one it was written with.
    #[error("token store {}: cannot be decrypted (a different state key, another account's store, or a damaged file); run `postern oauth login` again to replace it", path.display())]
    Undecryptable {
        /// The file.
        path: PathBuf,
    },
}

/// One account's store file.
#[derive(Debug, Clone)]
pub struct TokenStore {
    path: PathBuf,
    key: StateKey,
    binding: String,
}

impl TokenStore {
    /// The store at `path`, for the account named by `binding` (e.g.
    /// `route/user`), sealed with `key`.
    pub fn new(path: PathBuf, key: StateKey, binding: String) -> Self {
        Self { path, key, binding }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the store; `Ok(None)` when the file does not exist yet.
    pub fn load(&self) -> Result<Option<StoredState>, StoreError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StoreError::Io {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let bad = || StoreError::Undecryptable {
            path: self.path.clone(),
        };
        let rest = bytes.strip_prefix(MAGIC).ok_or_else(bad)?;
        if rest.len() < NONCE_LEN {
            return Err(bad());
        }
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let plain = Zeroizing::new(
            self.key
                .cipher()
                .decrypt(
                    Nonce::from_slice(nonce),
                    Payload {
                        msg: sealed,
                        aad: self.aad().as_slice(),
                    },
                )
                .map_err(|_| bad())?,
        );
        serde_json::from_slice(&plain).map(Some).map_err(|_| bad())
    }

    /// Writes the store atomically: a temporary file in the same directory
    /// (mode 0600), fsync, rename over the old one, fsync of the directory.
    /// When this returns Ok, a crash cannot lose the new content.
    pub fn save(&self, state: &StoredState) -> Result<(), StoreError> {
        let io = |source| StoreError::Io {
            path: self.path.clone(),
            source,
        };
        let plain = Zeroizing::new(serde_json::to_vec(state).map_err(|e| io(e.into()))?);
        let mut nonce = [0u8; NONCE_LEN];
        random(&mut nonce);
        let sealed = self
            .key
            .cipher()
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: self.aad().as_slice(),
                },
            )
            .map_err(|_| io(std::io::Error::other("encryption failed")))?;
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        create_private_dir(&dir).map_err(io)?;
        let file_name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "tokens".to_owned());
        let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
        let result = (|| {
            let mut f = open_private(&tmp)?;
            f.write_all(MAGIC)?;
            f.write_all(&nonce)?;
            f.write_all(&sealed)?;
            f.sync_all()?;
            drop(f);
            std::fs::rename(&tmp, &self.path)?;
            sync_dir(&dir)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(io)
    }

    fn aad(&self) -> Vec<u8> {
        let mut aad = MAGIC.to_vec();
        aad.extend_from_slice(self.binding.as_bytes());
        aad
    }
}

#[cfg(unix)]
fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_: &Path) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> StoredState {
        StoredState {
            refresh_token: Some("1//refresh-token-SECRET".to_owned()),
            last_refresh: Some(1_700_000_000),
            access_expires: Some(1_700_003_600),
            last_error: None,
            needs_consent: false,
        }
    }

    #[test]
    fn round_trip_is_sealed_and_private() {
        let dir = postern_testkit::TempDir::new("postern-store");
        let key = StateKey::generate();
        let store = TokenStore::new(dir.path().join("sub/a.token"), key.clone(), "r/a".into());
        assert!(store.load().expect("absent is fine").is_none());
        store.save(&state()).expect("save");
        let raw = std::fs::read(store.path()).expect("file");
        assert!(raw.starts_with(MAGIC));
        assert!(
            !raw.windows(6).any(|w| w == b"SECRET"),
            "the refresh token is in the file in clear"
        );
        assert_eq!(store.load().expect("load"), Some(state()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(store.path())
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("sub"))
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["a.token"]);
    }

    #[test]
    fn another_key_account_or_a_flipped_bit_does_not_open() {
        let dir = postern_testkit::TempDir::new("postern-store");
        let key = StateKey::generate();
        let path = dir.path().join("a.token");
        TokenStore::new(path.clone(), key.clone(), "r/a".into())
            .save(&state())
            .expect("save");
        let other_key = TokenStore::new(path.clone(), StateKey::generate(), "r/a".into());
        assert!(matches!(
            other_key.load(),
            Err(StoreError::Undecryptable { .. })
        ));
        let other_account = TokenStore::new(path.clone(), key.clone(), "r/b".into());
        assert!(matches!(
            other_account.load(),
            Err(StoreError::Undecryptable { .. })
        ));
        let mut raw = std::fs::read(&path).expect("file");
        let last = raw.len() - 1;
        raw[last] ^= 1;
        std::fs::write(&path, raw).expect("write");
        let err = TokenStore::new(path, key, "r/a".into())
            .load()
            .expect_err("tampered");
        assert!(err.to_string().contains("cannot be decrypted"), "{err}");
    }

    #[test]
    fn keys_parse_only_as_32_bytes_and_never_print() {
        let key = StateKey::generate();
        let text = key.to_base64();
        let again = StateKey::from_base64(text.expose()).expect("round trip");
        assert_eq!(*again.0, *key.0);
        assert_eq!(format!("{again:?}"), "StateKey(***)");
        assert_eq!(
            StateKey::from_base64(b"c2hvcnQ=").err(),
            Some(KeyError::Malformed)
        );
        assert_eq!(
            StateKey::from_base64(b"not base64!").err(),
            Some(KeyError::Malformed)
        );
        let mut with_newline = text.expose().to_vec();
        with_newline.push(b'\n');
        assert!(StateKey::from_base64(&with_newline).is_ok());
        assert!(!format!("{:?}", state()).contains("SECRET"));
    }
}
