//! What the fake IdP remembers: the live script, device codes, the tokens
//! it issued, counters and one-shot failures. One mutex guards it all; no
//! lock is held across an `.await`.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest as _, Sha256};

use super::script::{GrantType, IdpScript};
use crate::unique::{stamp, Stamp};

/// An access token the fake issued (or a test minted with
/// [`FakeIdp::issue_access_token`](crate::FakeIdp::issue_access_token)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedToken {
    /// The token.
    pub access_token: String,
    /// Whose it is.
    pub user: String,
    /// The client it was issued to (`None`: minted by the test).
    pub client_id: Option<String>,
    /// The grant that issued it (`None`: minted by the test).
    pub grant: Option<GrantType>,
    /// The scope granted.
    pub scope: String,
    /// When it was issued.
    pub issued_at: SystemTime,
    /// When it stops being valid.
    pub expires_at: SystemTime,
    /// Revoked by [`FakeIdp::revoke_access_tokens`](crate::FakeIdp::revoke_access_tokens).
    pub revoked: bool,
}

impl IssuedToken {
    /// Not revoked and not expired.
    pub fn is_valid(&self) -> bool {
        !self.revoked && SystemTime::now() < self.expires_at
    }
}

/// Where a refresh token stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefreshTokenState {
    /// Usable.
    Live,
    /// Replaced by a newer one in a rotating refresh; using it is
    /// `invalid_grant`.
    Rotated,
    /// Revoked by
    /// [`FakeIdp::revoke_refresh_tokens`](crate::FakeIdp::revoke_refresh_tokens);
    /// using it is `invalid_grant`.
    Revoked,
}

/// A refresh token the fake issued (or a test minted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedRefreshToken {
    /// The token.
    pub refresh_token: String,
    /// Whose it is.
    pub user: String,
    /// The client it is bound to.
    pub client_id: String,
    /// The scope it grants.
    pub scope: String,
    /// Live, rotated away or revoked.
    pub state: RefreshTokenState,
    /// Successful refresh grants that used it.
    pub uses: usize,
}

/// One device code (RFC 8628 §3.2).
pub(super) struct DeviceGrant {
    pub(super) client_id: String,
    pub(super) scope: String,
    pub(super) expires_at: Instant,
    /// The interval the client must keep now (grows after `slow_down`).
    pub(super) interval: Duration,
    pub(super) pending_left: u32,
    pub(super) last_poll: Option<Instant>,
    pub(super) redeemed: bool,
}

/// Request counters.
#[derive(Default)]
pub(super) struct Counts {
    pub(super) device_authorizations: usize,
    pub(super) token_requests: usize,
    /// Indexed by [`GrantType::index`].
    pub(super) per_grant: [usize; 3],
    pub(super) introspections: usize,
}

pub(super) struct State {
    /// The live script.
    pub(super) script: IdpScript,
    /// `https://host:port`, set once the fake is bound.
    pub(super) base_url: String,
    pub(super) devices: HashMap<String, DeviceGrant>,
    /// In issue order.
    pub(super) access: Vec<IssuedToken>,
    pub(super) access_index: HashMap<String, usize>,
    /// In issue order.
    pub(super) refresh: Vec<IssuedRefreshToken>,
    pub(super) refresh_index: HashMap<String, usize>,
    pub(super) counts: Counts,
    /// The next poll answers `slow_down`.
    pub(super) slow_down_next: bool,
    /// The next this-many refresh grants answer `invalid_grant`.
    pub(super) failing_refreshes: u32,
    /// The next this-many token requests answer with this status.
    pub(super) failing_token_requests: (u32, u16),
}

impl State {
    pub(super) fn new(script: IdpScript) -> Self {
        Self {
            slow_down_next: script.slow_down,
            script,
            base_url: String::new(),
            devices: HashMap::new(),
            access: Vec::new(),
            access_index: HashMap::new(),
            refresh: Vec::new(),
            refresh_index: HashMap::new(),
            counts: Counts::default(),
            failing_refreshes: 0,
            failing_token_requests: (0, 500),
        }
    }

    /// The user `token` is valid for now, if it is.
    pub(super) fn user_of(&self, token: &str) -> Option<String> {
        self.access_token(token)
            .filter(|t| t.is_valid())
            .map(|t| t.user.clone())
    }

    pub(super) fn access_token(&self, token: &str) -> Option<&IssuedToken> {
        self.access_index.get(token).map(|i| &self.access[*i])
    }

    /// Mint and remember an access token.
    pub(super) fn mint_access(
        &mut self,
        user: &str,
        client_id: Option<&str>,
        grant: Option<GrantType>,
        scope: &str,
        lifetime: Duration,
    ) -> IssuedToken {
        let len = self.script.access_token_len.max(24);
        let token = random_token("fake-at.", len);
        let issued_at = SystemTime::now();
        let issued = IssuedToken {
            access_token: token.clone(),
            user: user.to_owned(),
            client_id: client_id.map(str::to_owned),
            grant,
            scope: scope.to_owned(),
            issued_at,
            expires_at: issued_at + lifetime,
            revoked: false,
        };
        self.access_index.insert(token, self.access.len());
        self.access.push(issued.clone());
        issued
    }

    /// Mint and remember a live refresh token.
    pub(super) fn mint_refresh(&mut self, user: &str, client_id: &str, scope: &str) -> String {
        let token = random_token("fake-rt.", 56);
        self.refresh_index.insert(token.clone(), self.refresh.len());
        self.refresh.push(IssuedRefreshToken {
            refresh_token: token.clone(),
            user: user.to_owned(),
            client_id: client_id.to_owned(),
            scope: scope.to_owned(),
            state: RefreshTokenState::Live,
            uses: 0,
        });
        token
    }

    pub(super) fn refresh_token_mut(&mut self, token: &str) -> Option<&mut IssuedRefreshToken> {
        let i = *self.refresh_index.get(token)?;
        self.refresh.get_mut(i)
    }
}

/// Characters of tokens and codes: base64url, all RFC 6750 b64token-safe.
const TOKEN_ALPHABET: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// RFC 8628 §6.1's suggestion for user codes: consonants only, no
/// look-alikes.
const USER_CODE_ALPHABET: &[u8; 20] = b"BCDFGHJKLMNPQRSTVWXZ";

/// `len` random bytes from the system RNG (through rustls's ring
/// provider), or, should that ever fail, bytes hashed from a unique stamp.
fn random_bytes(len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    let provider = rustls::crypto::ring::default_provider();
    if provider.secure_random.fill(&mut bytes).is_err() {
        let mut block = Vec::new();
        while block.len() < len {
            let Stamp { pid, n, nanos } = stamp();
            block.extend_from_slice(&Sha256::digest(format!("{pid}-{n}-{nanos}")));
        }
        bytes.copy_from_slice(&block[..len]);
    }
    bytes
}

/// `prefix` followed by random token characters, `len` characters in all
/// (or the prefix and 16 random ones, if `len` is shorter).
pub(super) fn random_token(prefix: &str, len: usize) -> String {
    let n = len.saturating_sub(prefix.len()).max(16);
    let mut out = String::with_capacity(prefix.len() + n);
    out.push_str(prefix);
    out.extend(
        random_bytes(n)
            .into_iter()
            .map(|b| char::from(TOKEN_ALPHABET[usize::from(b & 63)])),
    );
    out
}

/// A user code like `BCDF-GHJK`.
pub(super) fn random_user_code() -> String {
    let letters: Vec<char> = random_bytes(8)
        .into_iter()
        .map(|b| char::from(USER_CODE_ALPHABET[usize::from(b) % USER_CODE_ALPHABET.len()]))
        .collect();
    let (a, b) = letters.split_at(4);
    format!(
        "{}-{}",
        a.iter().collect::<String>(),
        b.iter().collect::<String>()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_random_and_b64token_safe() {
        let a = random_token("fake-at.", 2000);
        let b = random_token("fake-at.", 2000);
        assert_eq!(a.len(), 2000);
        assert_ne!(a, b);
        assert!(a.starts_with("fake-at."));
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-._".contains(&c)));
        assert_eq!(random_token("fake-at.", 3).len(), 8 + 16);
    }

    #[test]
    fn user_codes() {
        let code = random_user_code();
        assert_eq!(code.len(), 9);
        assert_eq!(code.as_bytes()[4], b'-');
        assert!(code
            .bytes()
            .filter(|c| *c != b'-')
            .all(|c| USER_CODE_ALPHABET.contains(&c)));
    }

    #[test]
    fn validity_and_lookup() {
        let mut state = State::new(IdpScript::new().access_token_len(100));
        let live = state.mint_access("alice", None, None, "", Duration::from_secs(60));
        let dead = state.mint_access("bob", None, None, "", Duration::ZERO);
        assert_eq!(live.access_token.len(), 100);
        assert_eq!(state.user_of(&live.access_token).as_deref(), Some("alice"));
        assert_eq!(state.user_of(&dead.access_token), None);
        assert_eq!(state.user_of("unknown"), None);
        let rt = state.mint_refresh("alice", "c", "s");
        assert_eq!(
            state.refresh_token_mut(&rt).map(|r| r.state),
            Some(RefreshTokenState::Live)
        );
    }
}
