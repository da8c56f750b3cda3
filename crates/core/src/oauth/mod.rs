//! OAuth2 bearer tokens for stored accounts (`credentials.accounts[].oauth`).
//!
//! One [`TokenSource`] per account and configuration generation, shared by
//! every session of that account; all generations of an account share its
//! cached token and its single refresh in flight (so a reload keeps the
//! token, and two generations never race to rotate the same refresh
//! token), while each uses its own settings (so a reload applies a rotated
//! client secret, another CA or a new state key):
//!
//! ```text
//! session ─ access_token() ─► cached, fresh? ──yes──► token
//!                                   │ no (one refresh in flight; others wait)
//!                                   ▼
//!              store (refresh token) ─► token endpoint ─► persist rotation ─► token
//! upstream refused the token ─ invalidate(token) ─► next access_token() refreshes
//! ```
//!
//! The refresh token lives only in the encrypted [`store`]; it is read from
//! the file before every refresh, so a `postern oauth login` run while the
//! gateway is up takes effect without a restart. A rotated refresh token is
//! persisted before the new access token is used. `invalid_grant` marks
//! the account as needing consent and deletes nothing. No token, secret or
//! key ever reaches a log line: they are [`Secret`]s, and errors carry only
//! the provider's error code and description.

mod http;
pub mod store;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

pub use http::DeviceCode;
pub use store::{KeyError, StateKey, StoreError, StoredState, TokenStore};

use crate::config::{OAuthConfig, OAuthGrant, OAuthProvider, Protocol};
use crate::secret::Secret;

/// Lifetime assumed when the token response has no `expires_in`.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);
/// Tokens are refreshed this long before they expire (at most a fifth of
/// their lifetime, so short-lived tokens are still reused).
pub const REFRESH_AHEAD: Duration = Duration::from_secs(120);

/// Why no access token could be had. Never contains a token or secret.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OAuthError {
    /// No refresh token yet, or the provider revoked it: a person must run
    /// `postern oauth login`.
    #[error("the account needs consent: run `postern oauth login -c FILE {0}`")]
    NeedsConsent(String),
    /// The provider answered with an OAuth2 error (`invalid_client`, ...).
    #[error("the identity provider refused: {code}{}", description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Provider {
        /// RFC 6749 §5.2 error code.
        code: String,
        /// Its description, if any.
        description: Option<String>,
    },
    /// The identity provider could not be reached or answered nonsense.
    #[error("the identity provider could not be used: {0}")]
    Unreachable(String),
    /// The token store could not be read or written.
    #[error("{0}")]
    Store(String),
}

/// An account's settings, as prepared from the configuration.
#[derive(Debug, Clone)]
pub struct AccountSettings {
    /// `ROUTE ACCOUNT`, as `postern oauth login` takes it.
    pub name: String,
    /// The upstream user name the token is for.
    pub user: String,
    /// The provider (for status).
    pub provider: OAuthProvider,
    /// The grant.
    pub grant: OAuthGrant,
    /// The client id, endpoints, scopes.
    endpoint: http::Endpoint,
    /// Where the refresh token is kept.
    pub store: TokenStore,
}

/// What can go wrong preparing an account (reported by `check`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrepareProblem {
    /// The key inside the account (`oauth.ca`).
    pub key: &'static str,
    /// In words.
    pub message: String,
}

/// What the top level provides every OAuth2 account.
#[derive(Debug, Clone)]
pub struct StateContext {
    /// The key the stores are sealed with (None: not configured, which
    /// validation already reported).
    pub key: Option<StateKey>,
    /// The default directory for stores.
    pub dir: Option<PathBuf>,
}

impl AccountSettings {
    /// Prepares one account of `route`: endpoints, HTTPS client (reading
    /// `ca:`), the store path.
    pub fn prepare(
        route: &str,
        protocol: Protocol,
        account: &str,
        user: &str,
        config: &OAuthConfig,
        client_secret: Option<Secret>,
        state: &StateContext,
    ) -> Result<Self, PrepareProblem> {
        let endpoints = config.endpoints(protocol).ok_or_else(|| PrepareProblem {
            key: "oauth.token_url",
            message: "the provider's endpoints are incomplete".to_owned(),
        })?;
        let tls =
            crate::tls::https_client_config(config.ca.as_deref()).map_err(|e| PrepareProblem {
                key: "oauth.ca",
                message: e.to_string(),
            })?;
        let http = http::http_client(tls).map_err(|message| PrepareProblem {
            key: "oauth.ca",
            message,
        })?;
        let key = state.key.clone().ok_or_else(|| PrepareProblem {
            key: "oauth",
            message: "needs the state key, which is missing or unusable (see the `state_key_file` or `state_key_env` problem)".to_owned(),
        })?;
        let path = match (&config.token_store, &state.dir) {
            (Some(p), _) => p.clone(),
            (None, Some(dir)) => dir.join(default_store_name(route, account)),
            (None, None) => {
                return Err(PrepareProblem {
                    key: "oauth.token_store",
                    message: "no `token_store:` and no top-level `state_dir:`".to_owned(),
                })
            }
        };
        let name = format!("{route} {account}");
        Ok(Self {
            store: TokenStore::new(
                path,
                key,
                format!("{route}/{account}/{user}/{}", config.client_id),
            ),
            name,
            user: user.to_owned(),
            provider: config.provider,
            grant: config.grant,
            endpoint: http::Endpoint {
                client_id: config.client_id.clone(),
                client_secret,
                token_url: endpoints.token_url,
                device_url: endpoints.device_authorization_url,
                scopes: endpoints.scopes,
                http,
            },
        })
    }

    /// `postern oauth login`: the device authorization grant, then the
    /// refresh token written to the store (replacing what was there).
    pub async fn device_login(
        &self,
        show: &mut (dyn FnMut(&DeviceCode) + Send),
    ) -> Result<(), OAuthError> {
        if self.grant != OAuthGrant::DeviceCode {
            return Err(OAuthError::Unreachable(
                "this account uses `grant: client_credentials`, which needs no login step"
                    .to_owned(),
            ));
        }
        let tokens = self.endpoint.device_login(show).await?;
        let Some(refresh) = tokens.refresh else {
            return Err(OAuthError::Unreachable(
                "the identity provider returned no refresh token; add `offline_access` to `scopes:`"
                    .to_owned(),
            ));
        };
        let now = unix_now();
        let state = StoredState {
            refresh_token: Some(String::from_utf8_lossy(refresh.expose()).into_owned()),
            last_refresh: Some(now),
            access_expires: Some(now + tokens.expires_in.unwrap_or(DEFAULT_LIFETIME).as_secs()),
            last_error: None,
            needs_consent: false,
        };
        self.store
            .save(&state)
            .map_err(|e| OAuthError::Store(e.to_string()))
    }
}

/// The file name of an account's store under `state_dir` when it has no
/// `token_store:`: `ROUTE.ACCOUNT.token`, other characters than letters,
/// digits, `-_.@` replaced by `_`.
pub fn default_store_name(route: &str, account: &str) -> String {
    format!("{}.{}.token", file_safe(route), file_safe(account))
}

fn file_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[derive(Debug, Default)]
struct Cached {
    access: Option<Secret>,
    refresh_at: Option<Instant>,
}

/// What every generation of an account's [`TokenSource`] shares: the
/// cached token, the lock that lets one refresh run at a time, and the
/// count of token requests.
#[derive(Debug, Default)]
struct AccountState {
    cached: tokio::sync::Mutex<Cached>,
    requests: std::sync::atomic::AtomicU64,
}

/// One account's tokens, shared by all its sessions.
#[derive(Debug)]
pub struct TokenSource {
    settings: AccountSettings,
    account: Arc<AccountState>,
}

type Registry = Mutex<HashMap<String, Weak<AccountState>>>;

fn registry() -> &'static Registry {
    static REGISTRY: std::sync::OnceLock<Registry> = std::sync::OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

impl TokenSource {
    /// A source for these settings, sharing its cached token, its single
    /// refresh in flight and its request count with every live source of
    /// the same account (same store, client, token endpoint, scopes and
    /// user): a reload keeps the token, and the new settings (client
    /// secret, CA, state key, grant) are what its sessions use.
    pub fn shared(settings: AccountSettings) -> Arc<Self> {
        let e = &settings.endpoint;
        let key = format!(
            "{}\n{}\n{}\n{}\n{}",
            settings.store.path().display(),
            e.client_id,
            e.token_url,
            e.scopes.join(" "),
            settings.user
        );
        let account = match registry().lock() {
            Ok(mut map) => {
                map.retain(|_, w| w.strong_count() > 0);
                match map.get(&key).and_then(Weak::upgrade) {
                    Some(existing) => existing,
                    None => {
                        let fresh = Arc::new(AccountState::default());
                        map.insert(key, Arc::downgrade(&fresh));
                        fresh
                    }
                }
            }
            Err(_) => Arc::new(AccountState::default()),
        };
        Arc::new(Self { settings, account })
    }

    /// The account's settings.
    pub fn settings(&self) -> &AccountSettings {
        &self.settings
    }

    /// How many token requests the account made, in all generations (for
    /// tests and metrics).
    pub fn token_requests(&self) -> u64 {
        self.account
            .requests
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A valid access token: the cached one while it is fresh, else one
    /// refresh (concurrent callers wait for it and share its result).
    pub async fn access_token(&self) -> Result<Secret, OAuthError> {
        let mut cached = self.account.cached.lock().await;
        if let (Some(token), Some(at)) = (&cached.access, cached.refresh_at) {
            if Instant::now() < at {
                return Ok(token.clone());
            }
        }
        let tokens = self.fetch().await?;
        let lifetime = tokens.expires_in.unwrap_or(DEFAULT_LIFETIME);
        let ahead = REFRESH_AHEAD.min(lifetime / 5);
        cached.access = Some(tokens.access.clone());
        cached.refresh_at = Some(Instant::now() + lifetime.saturating_sub(ahead));
        Ok(tokens.access)
    }

    /// The upstream refused `token`: forget it, so the next
    /// [`TokenSource::access_token`] asks the provider. A token that was
    /// already replaced is ignored (one refresh per refusal wave).
    pub async fn invalidate(&self, token: &Secret) {
        let mut cached = self.account.cached.lock().await;
        if cached.access.as_ref() == Some(token) {
            cached.access = None;
            cached.refresh_at = None;
        }
    }

    async fn fetch(&self) -> Result<http::Tokens, OAuthError> {
        let s = &self.settings;
        let store_err = |e: StoreError| OAuthError::Store(e.to_string());
        let mut state = s.store.load().map_err(store_err)?.unwrap_or_default();
        // A second try only when another process (`postern oauth login`, a
        // probe, another gateway on the same store) replaced the refresh
        // token while this request was in flight.
        for attempt in 0..2 {
            let used = state.refresh_token.clone();
            let result = match s.grant {
                OAuthGrant::ClientCredentials => s.endpoint.client_credentials().await,
                OAuthGrant::DeviceCode => match (&used, state.needs_consent) {
                    (Some(refresh), false) => {
                        s.endpoint.refresh(&Secret::from(refresh.as_str())).await
                    }
                    _ => return Err(OAuthError::NeedsConsent(s.name.clone())),
                },
            };
            self.account
                .requests
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let now = unix_now();
            let e = match result {
                Ok(tokens) => {
                    if let Some(rotated) = &tokens.refresh {
                        state.refresh_token =
                            Some(String::from_utf8_lossy(rotated.expose()).into_owned());
                    }
                    state.last_refresh = Some(now);
                    state.access_expires =
                        Some(now + tokens.expires_in.unwrap_or(DEFAULT_LIFETIME).as_secs());
                    state.last_error = None;
                    // Persisted before the new token is used: a rotated
                    // refresh token must never exist only in memory.
                    s.store.save(&state).map_err(store_err)?;
                    tracing::info!(account = %s.name, "OAuth2 access token obtained");
                    return Ok(tokens);
                }
                Err(e) => e,
            };
            // Record the failure on the store as it is now, never on the
            // copy read before the request: that could put back a refresh
            // token another process has just replaced.
            let mut latest = match s.store.load() {
                Ok(l) => l.unwrap_or_default(),
                Err(se) => {
                    tracing::warn!(account = %s.name, error = %se, "cannot reread the token store");
                    state.clone()
                }
            };
            let invalid_grant =
                matches!(&e, OAuthError::Provider { code, .. } if code == "invalid_grant");
            let replaced = latest.refresh_token.is_some() && latest.refresh_token != used;
            if invalid_grant && replaced && !latest.needs_consent && attempt == 0 {
                tracing::info!(account = %s.name,
                    "the refresh token was replaced by another process meanwhile; using the new one");
                state = latest;
                continue;
            }
            let consent = invalid_grant && s.grant == OAuthGrant::DeviceCode && !replaced;
            if consent {
                latest.needs_consent = true;
                tracing::error!(account = %s.name, error = %e,
                    "the identity provider no longer accepts this account's refresh token; run `postern oauth login` for it");
            } else {
                tracing::warn!(account = %s.name, error = %e, "OAuth2 token request failed");
            }
            latest.last_error = Some(format!("{e} at {now}"));
            if let Err(se) = s.store.save(&latest) {
                tracing::warn!(account = %s.name, error = %se, "cannot record the failure in the token store");
            }
            return Err(if consent {
                OAuthError::NeedsConsent(s.name.clone())
            } else {
                e
            });
        }
        Err(OAuthError::NeedsConsent(s.name.clone()))
    }
}

/// What `postern oauth status` shows for one account (no secret).
#[derive(Debug, Clone)]
pub struct Status {
    /// `ROUTE ACCOUNT`.
    pub name: String,
    /// The upstream user.
    pub user: String,
    /// Provider.
    pub provider: OAuthProvider,
    /// Grant.
    pub grant: OAuthGrant,
    /// The store file.
    pub store: PathBuf,
    /// The store's content, or why it could not be read.
    pub state: Result<Option<StoredState>, String>,
}

impl AccountSettings {
    /// Reads the store for `postern oauth status`.
    pub fn status(&self) -> Status {
        Status {
            name: self.name.clone(),
            user: self.user.clone(),
            provider: self.provider,
            grant: self.grant,
            store: self.store.path().to_owned(),
            state: self.store.load().map_err(|e| e.to_string()),
        }
    }
}
