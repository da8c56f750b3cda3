//! Where upstream credentials come from, and local authentication.
//!
//! Two sources, chosen per route:
//! - **passthrough**: the login a client gives postern is the login postern
//!   gives the upstream, for this session only; postern stores nothing;
//! - **accounts**: local logins (checked by postern itself with a password,
//!   APOP or CRAM-MD5) mapped to upstream logins whose passwords come from
//!   environment variables or files; SMTP devices may be identified by their
//!   source address alone.
//!
//! Mixing rules, all enforced in [`CredentialSource::resolve`]: a user name
//! that names a local account is only ever checked locally (a wrong password
//! is refused; it is never tried upstream, and a stored secret is never used
//! without local authentication); other names go upstream as passthrough only
//! if the route allows it. Local failures are counted per client address.
//! Front ends only ever talk to this module.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use hmac::{KeyInit, Mac};
use md5::{Digest as _, Md5};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::acl::Acl;
use crate::config::{Account, Credentials};
use crate::limits;
pub use crate::login::{ClientAuth, Login, LoginRefused};
use crate::oauth::{AccountSettings, OAuthError, StateContext, TokenSource};
pub use crate::secret::{load_secret, process_env, EnvLookup, SecretError};

/// What preparing a route's accounts needs besides the account itself.
#[derive(Debug, Clone)]
pub struct AccountContext<'a> {
    /// The route's name (OAuth2 store names, `postern oauth login ROUTE`).
    pub route: &'a str,
    /// The route's protocol (OAuth2 default scopes).
    pub protocol: crate::config::Protocol,
    /// The state key and directory.
    pub state: StateContext,
}
use crate::secret::Secret;
use crate::throttle::{Pause, Rule, Throttle};

/// What postern logs in upstream with: a password, or a bearer token
/// obtained for the account when the login happens.
#[derive(Debug, Clone)]
pub enum UpstreamCredential {
    /// A user name and password (passthrough or stored).
    Password(Login),
    /// An OAuth2 account: the user name, and where its tokens come from.
    Bearer {
        /// The upstream user name.
        user: String,
        /// The account's tokens.
        tokens: Arc<TokenSource>,
    },
}

impl UpstreamCredential {
    /// The upstream user name (safe to log).
    pub fn user(&self) -> &str {
        match self {
            Self::Password(l) => l.user(),
            Self::Bearer { user, .. } => user,
        }
    }
}

/// The upstream login to use, and whether it is a stored one.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// What to log in upstream with.
    pub upstream: UpstreamCredential,
    /// The stored account it came from (None: passthrough).
    pub account: Option<usize>,
    /// Whether a refused token was already replaced once.
    retried: bool,
}

impl Resolved {
    fn new(upstream: UpstreamCredential, account: Option<usize>) -> Self {
        Self {
            upstream,
            account,
            retried: false,
        }
    }

    /// The login to send now: the password, or the user name with a
    /// current access token as its secret (the login machines build the
    /// XOAUTH2 / OAUTHBEARER strings from it).
    pub async fn login(&self) -> Result<Login, OAuthError> {
        match &self.upstream {
            UpstreamCredential::Password(l) => Ok(l.clone()),
            UpstreamCredential::Bearer { user, tokens } => {
                let token = tokens.access_token().await?;
                Login::new(user.as_bytes(), token).map_err(|_| {
                    OAuthError::Unreachable(
                        "the access token contains a line break or NUL".to_owned(),
                    )
                })
            }
        }
    }

    /// The upstream refused `used`. For a bearer token, the first time:
    /// forget that token so the next [`Resolved::login`] gets a fresh one,
    /// and say the login should be tried once more on a new connection.
    pub async fn retry_with_fresh_token(&mut self, used: &Login) -> bool {
        match &self.upstream {
            UpstreamCredential::Bearer { tokens, .. } if !self.retried => {
                self.retried = true;
                tokens.invalidate(used.password()).await;
                true
            }
            _ => false,
        }
    }
}

/// Why postern refused a client's login itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Unknown user or wrong secret (the client is told the same either way).
    #[error("authentication failed")]
    BadCredentials,
    /// Too many recent failures from this address.
    #[error("too many failed logins from this address")]
    AddressBlocked,
    /// The upstream recently refused this account's stored credentials;
    /// postern waits before trying again so the provider does not lock it.
    #[error("the account's stored credentials were refused upstream recently")]
    AccountBackoff,
}

/// A fresh msg-id (`<...@postern>`) for postern's own APOP greeting and
/// CRAM-MD5 challenges: unique per process and session, with random bytes
/// so a digest cannot be precomputed.
pub fn fresh_msg_id() -> Vec<u8> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut random = [0u8; 8];
    let _ = rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut random);
    format!(
        "<{}.{n}.{nanos}.{}@postern>",
        std::process::id(),
        crate::sasl::hex(&random)
    )
    .into_bytes()
}

#[derive(Debug)]
struct StoredAccount {
    local_user: Option<String>,
    local_secret: Option<Secret>,
    sources: Option<Acl>,
    upstream: UpstreamCredential,
}

/// Local login failures per client address: 5 within 10 minutes block
/// the address for 15 minutes.
const ADDRESS_RULE: Rule = Rule {
    threshold: limits::AUTH_FAILURES_BEFORE_BLOCK,
    window: Some(limits::AUTH_FAILURE_WINDOW),
    afresh_after_pause: false,
    pause: Pause::Fixed(limits::AUTH_BLOCK_DURATION),
};

/// Upstream refusals of a stored account: a pause from the first one,
/// doubling with each further refusal (1 min … 32 min), so a provider does
/// not lock the account out.
const ACCOUNT_RULE: Rule = Rule {
    threshold: 1,
    window: None,
    afresh_after_pause: false,
    pause: Pause::Doubling {
        first: limits::STORED_LOGIN_BACKOFF,
        max_doublings: 5,
    },
};

/// The key a secret problem is reported under.
fn secret_key(env: bool, which: &str) -> &'static str {
    match (which, env) {
        ("upstream", true) => "upstream_password_env",
        ("upstream", false) => "upstream_password_file",
        (_, true) => "local_password_env",
        (_, false) => "local_password_file",
    }
}

/// A route's stored accounts.
#[derive(Debug)]
pub struct Accounts {
    accounts: Vec<StoredAccount>,
    passthrough: bool,
    /// Local login failures, per client address.
    addresses: Throttle<IpAddr>,
    /// Upstream refusals, per stored account (its index).
    backoff: Throttle<usize>,
}

/// The credential policy of one route.
#[derive(Debug, Clone)]
pub enum CredentialSource {
    /// Carry the client's own login upstream.
    Passthrough,
    /// Stored accounts (and passthrough for other names if allowed).
    Accounts(Arc<Accounts>),
}

fn sha256(b: &[u8]) -> [u8; 32] {
    let d = Sha256::digest(b);
    let mut out = [0u8; 32];
    out.copy_from_slice(&d);
    out
}

/// Constant-time comparison that does not leak the length either.
fn same(a: &[u8], b: &[u8]) -> bool {
    sha256(a).ct_eq(&sha256(b)).into()
}

fn hex_lower(b: &[u8]) -> Vec<u8> {
    crate::sasl::hex(b).into_bytes()
}

impl StoredAccount {
    /// Loads one account's secrets; every problem is returned with the key
    /// (inside the account) it is about.
    fn from_config(
        a: &Account,
        env: EnvLookup<'_>,
        ctx: &AccountContext<'_>,
    ) -> Result<Self, Vec<(&'static str, String)>> {
        let mut problems = Vec::new();
        let upstream = match &a.oauth {
            Some(o) => {
                let secret = match (&o.client_secret_env, &o.client_secret_file) {
                    (None, None) => Ok(None),
                    (var, file) => load_secret(var.as_deref(), file.as_deref(), env)
                        .map(Some)
                        .map_err(|e| {
                            let key = if var.is_some() {
                                "oauth.client_secret_env"
                            } else {
                                "oauth.client_secret_file"
                            };
                            problems.push((key, e.to_string()));
                        }),
                };
                let account = a.local_user.as_deref().unwrap_or(&a.upstream_user);
                match secret {
                    Ok(secret) => match AccountSettings::prepare(
                        ctx.route,
                        ctx.protocol,
                        account,
                        &a.upstream_user,
                        o,
                        secret,
                        &ctx.state,
                    ) {
                        Ok(settings) => Some(UpstreamCredential::Bearer {
                            user: a.upstream_user.clone(),
                            tokens: TokenSource::shared(settings),
                        }),
                        Err(p) => {
                            problems.push((p.key, p.message));
                            None
                        }
                    },
                    Err(()) => None,
                }
            }
            None => match load_secret(
                a.upstream_password_env.as_deref(),
                a.upstream_password_file.as_deref(),
                env,
            ) {
                Ok(secret) => match Login::new(a.upstream_user.as_bytes(), secret) {
                    Ok(login) => Some(UpstreamCredential::Password(login)),
                    Err(e) => {
                        problems.push(("upstream_user", e.to_string()));
                        None
                    }
                },
                Err(e) => {
                    problems.push((
                        secret_key(a.upstream_password_env.is_some(), "upstream"),
                        e.to_string(),
                    ));
                    None
                }
            },
        };
        let local_secret = match &a.local_user {
            Some(_) => match load_secret(
                a.local_password_env.as_deref(),
                a.local_password_file.as_deref(),
                env,
            ) {
                Ok(secret) => Some(secret),
                Err(e) => {
                    problems.push((
                        secret_key(a.local_password_env.is_some(), "local"),
                        e.to_string(),
                    ));
                    None
                }
            },
            None => None,
        };
        match upstream {
            Some(upstream) if problems.is_empty() => Ok(Self {
                local_user: a.local_user.clone(),
                local_secret,
                sources: a.sources.clone().map(Acl::new),
                upstream,
            }),
            _ => Err(problems),
        }
    }

    fn allowed_from(&self, ip: IpAddr) -> bool {
        self.sources.as_ref().is_none_or(|acl| acl.allows(ip))
    }

    fn check(&self, auth: &ClientAuth) -> bool {
        let Some(secret) = &self.local_secret else {
            return false;
        };
        match auth {
            ClientAuth::Password(login) => same(login.password().expose(), secret.expose()),
            ClientAuth::Apop {
                timestamp, digest, ..
            } => {
                let mut h = Md5::new();
                h.update(timestamp);
                h.update(secret.expose());
                same(&hex_lower(&h.finalize()), &digest.to_ascii_lowercase())
            }
            ClientAuth::CramMd5 {
                challenge, digest, ..
            } => {
                let Ok(mut mac) = hmac::Hmac::<Md5>::new_from_slice(secret.expose()) else {
                    return false;
                };
                mac.update(challenge);
                same(
                    &hex_lower(&mac.finalize().into_bytes()),
                    &digest.to_ascii_lowercase(),
                )
            }
        }
    }
}

impl CredentialSource {
    /// Builds the runtime source, loading every stored secret now.
    pub fn from_config(
        c: &Credentials,
        env: EnvLookup<'_>,
        ctx: &AccountContext<'_>,
    ) -> Result<Self, Vec<(String, String)>> {
        let Credentials::Accounts(cfg) = c else {
            return Ok(Self::Passthrough);
        };
        let mut accounts = Vec::with_capacity(cfg.accounts.len());
        let mut problems = Vec::new();
        for (i, a) in cfg.accounts.iter().enumerate() {
            match StoredAccount::from_config(a, env, ctx) {
                Ok(x) => accounts.push(x),
                Err(p) => problems.extend(
                    p.into_iter()
                        .map(|(key, m)| (format!("credentials.accounts[{i}].{key}"), m)),
                ),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Self::Accounts(Arc::new(Accounts {
            accounts,
            passthrough: cfg.passthrough,
            addresses: Throttle::new(ADDRESS_RULE),
            backoff: Throttle::new(ACCOUNT_RULE),
        })))
    }

    /// The first stored account's upstream login (`postern probe --login`);
    /// `None` on a passthrough route, which stores no credentials.
    pub fn token_sources(&self) -> Vec<Arc<TokenSource>> {
        match self {
            Self::Passthrough => Vec::new(),
            Self::Accounts(a) => a
                .accounts
                .iter()
                .filter_map(|x| match &x.upstream {
                    UpstreamCredential::Bearer { tokens, .. } => Some(tokens.clone()),
                    UpstreamCredential::Password(_) => None,
                })
                .collect(),
        }
    }

    pub fn probe_login(&self) -> Option<Resolved> {
        match self {
            Self::Passthrough => None,
            Self::Accounts(a) => a
                .accounts
                .first()
                .map(|x| Resolved::new(x.upstream.clone(), Some(0))),
        }
    }

    /// Whether clients may log in at all (passthrough, or a local account).
    pub fn offers_login(&self) -> bool {
        match self {
            Self::Passthrough => true,
            Self::Accounts(a) => {
                a.passthrough || a.accounts.iter().any(|x| x.local_secret.is_some())
            }
        }
    }

    /// Whether postern offers challenge logins itself (APOP timestamp in the
    /// POP3 greeting, AUTH CRAM-MD5): only when it holds local secrets.
    pub fn offers_challenges(&self) -> bool {
        match self {
            Self::Passthrough => false,
            Self::Accounts(a) => a.accounts.iter().any(|x| x.local_secret.is_some()),
        }
    }

    /// A device account bound to this source address (SMTP), if any; an
    /// account in backoff after an upstream refusal gives the refusal.
    pub fn device(&self, peer: IpAddr) -> Option<Result<Resolved, Refusal>> {
        let Self::Accounts(a) = self else { return None };
        let now = Instant::now();
        a.accounts.iter().enumerate().find_map(|(i, x)| {
            let bound =
                x.local_user.is_none() && x.sources.as_ref().is_some_and(|acl| acl.allows(peer));
            bound.then(|| {
                if a.backoff.paused(&i, now) {
                    Err(Refusal::AccountBackoff)
                } else {
                    Ok(Resolved::new(x.upstream.clone(), Some(i)))
                }
            })
        })
    }

    /// Whether an address is refused after too many failures.
    pub fn address_blocked(&self, peer: IpAddr) -> bool {
        match self {
            Self::Passthrough => false,
            Self::Accounts(a) => a.addresses.paused(&peer.to_canonical(), Instant::now()),
        }
    }

    /// Decides which upstream login a client's authentication maps to.
    pub fn resolve(&self, auth: ClientAuth, peer: IpAddr) -> Result<Resolved, Refusal> {
        let a = match self {
            Self::Passthrough => {
                return match auth {
                    ClientAuth::Password(login) => {
                        Ok(Resolved::new(UpstreamCredential::Password(login), None))
                    }
                    // Without a local secret postern cannot check a digest.
                    _ => Err(Refusal::BadCredentials),
                };
            }
            Self::Accounts(a) => a,
        };
        let now = Instant::now();
        let peer = peer.to_canonical();
        if a.addresses.paused(&peer, now) {
            return Err(Refusal::AddressBlocked);
        }
        let found = a
            .accounts
            .iter()
            .enumerate()
            .find(|(_, x)| x.local_user.as_deref() == Some(auth.user()));
        match found {
            Some((i, account)) => {
                if account.check(&auth) && account.allowed_from(peer) {
                    a.addresses.clear(&peer);
                    if a.backoff.paused(&i, now) {
                        return Err(Refusal::AccountBackoff);
                    }
                    Ok(Resolved::new(account.upstream.clone(), Some(i)))
                } else {
                    a.addresses.strike(peer, now);
                    Err(Refusal::BadCredentials)
                }
            }
            None => match auth {
                ClientAuth::Password(login) if a.passthrough => {
                    Ok(Resolved::new(UpstreamCredential::Password(login), None))
                }
                _ => {
                    // Same cost as a real check, so timing does not tell
                    // whether the user exists.
                    let _ = same(b"postern", auth.user().as_bytes());
                    a.addresses.strike(peer, now);
                    Err(Refusal::BadCredentials)
                }
            },
        }
    }

    /// The upstream refused a stored account's credentials: back off,
    /// doubling, so the provider does not lock the account.
    pub fn upstream_rejected(&self, account: usize) {
        if let Self::Accounts(a) = self {
            a.backoff.strike(account, Instant::now());
        }
    }

    /// The upstream accepted a stored account's credentials.
    pub fn upstream_accepted(&self, account: usize) {
        if let Self::Accounts(a) = self {
            a.backoff.clear(&account);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AccountsConfig, Credentials};

    fn test_context() -> AccountContext<'static> {
        AccountContext {
            route: "r",
            protocol: crate::config::Protocol::Smtp,
            state: StateContext {
                key: None,
                dir: None,
            },
        }
    }

    fn password_of(r: &Resolved) -> &Secret {
        match &r.upstream {
            UpstreamCredential::Password(l) => l.password(),
            UpstreamCredential::Bearer { .. } => panic!("a password account"),
        }
    }

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

    fn pw(user: &str, pass: &str) -> ClientAuth {
        ClientAuth::Password(Login::new(user.as_bytes(), Secret::from(pass)).expect("login"))
    }

    const HOME: &str = "127.0.0.1";

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn passthrough_keeps_the_login_and_refuses_digests() {
        let out = CredentialSource::Passthrough
            .resolve(pw("u", "p"), ip(HOME))
            .expect("ok");
        assert_eq!(out.upstream.user(), "u");
        assert_eq!(password_of(&out).expose(), b"p");
        assert!(out.account.is_none());
        let apop = ClientAuth::Apop {
            user: "u".into(),
            timestamp: b"<1@x>".to_vec(),
            digest: b"00".to_vec(),
        };
        assert_eq!(
            CredentialSource::Passthrough.resolve(apop, ip(HOME)).err(),
            Some(Refusal::BadCredentials)
        );
    }

    /// An injected environment: tests never change the process's own.
    fn env(name: &str) -> Option<std::ffi::OsString> {
        match name {
            "POSTERN_T_SCANNER_LOCAL" => Some("tanstaaf".into()),
            "POSTERN_T_SCANNER_UP" => Some("upstream-secret\n".into()),
            "POSTERN_T_PRINTER_UP" => Some("printer-secret".into()),
            "POSTERN_T_EMPTY" => Some("".into()),
            _ => None,
        }
    }

    fn source(passthrough: bool) -> CredentialSource {
        let yaml = r#"
accounts:
  - local_user: scanner
    local_password_env: POSTERN_T_SCANNER_LOCAL
    upstream_user: office@example.net
    upstream_password_env: POSTERN_T_SCANNER_UP
  - sources: [192.168.1.50/32]
    upstream_user: printer@example.net
    upstream_password_env: POSTERN_T_PRINTER_UP
"#;
        let mut cfg: AccountsConfig = yaml_serde::from_str(yaml).expect("yaml");
        cfg.passthrough = passthrough;
        CredentialSource::from_config(&Credentials::Accounts(cfg), &env, &test_context())
            .expect("source")
    }

    #[test]
    fn local_password_apop_and_cram_md5_map_to_the_stored_login() {
        let s = source(false);
        let out = s
            .resolve(pw("scanner", "tanstaaf"), ip(HOME))
            .expect("password");
        assert_eq!(out.upstream.user(), "office@example.net");
        assert_eq!(
            password_of(&out).expose(),
            b"upstream-secret",
            "one trailing newline stripped"
        );
        // RFC 1939 vector against postern's own timestamp.
        let apop = ClientAuth::Apop {
            user: "scanner".into(),
            timestamp: b"<1896.697170952@dbc.mtview.ca.us>".to_vec(),
            digest: b"C4C9334BAC560ECC979E58001B3E22FB".to_vec(),
        };
        assert!(s.resolve(apop, ip(HOME)).is_ok());
        let challenge = b"<1896.697170952@postoffice.reston.mci.net>".to_vec();
        let digest = crate::sasl::cram_md5_digest(&Secret::from("tanstaaf"), &challenge);
        let cram = ClientAuth::CramMd5 {
            user: "scanner".into(),
            challenge,
            digest: digest.as_bytes().to_vec(),
        };
        assert!(s.resolve(cram, ip(HOME)).is_ok());
    }

    #[test]
    fn mixing_rules() {
        let s = source(true);
        // A configured account with a wrong password: refused, never passed through.
        assert_eq!(
            s.resolve(pw("scanner", "wrong"), ip("10.0.0.1")).err(),
            Some(Refusal::BadCredentials)
        );
        // Another name goes upstream as passthrough only if allowed.
        let out = s
            .resolve(pw("someone@isp", "theirs"), ip("10.0.0.2"))
            .expect("passthrough");
        assert!(out.account.is_none());
        assert_eq!(out.upstream.user(), "someone@isp");
        let strict = source(false);
        assert_eq!(
            strict
                .resolve(pw("someone@isp", "theirs"), ip("10.0.0.3"))
                .err(),
            Some(Refusal::BadCredentials)
        );
        // Devices by address only.
        let dev = s
            .device(ip("192.168.1.50"))
            .expect("device")
            .expect("not in backoff");
        assert_eq!(dev.upstream.user(), "printer@example.net");
        let mapped = s
            .device(ip("::ffff:192.168.1.50"))
            .expect("device")
            .expect("ok");
        assert_eq!(mapped.account, Some(1));
        assert!(s.device(ip("192.168.1.51")).is_none());
        assert!(CredentialSource::Passthrough
            .device(ip("192.168.1.50"))
            .is_none());
    }

    #[test]
    fn failures_block_the_address_and_success_clears() {
        let s = source(false);
        let peer = ip("10.9.9.9");
        for _ in 0..limits::AUTH_FAILURES_BEFORE_BLOCK {
            assert_eq!(
                s.resolve(pw("scanner", "bad"), peer).err(),
                Some(Refusal::BadCredentials)
            );
        }
        assert!(s.address_blocked(peer));
        // Even the right password is refused while blocked.
        assert_eq!(
            s.resolve(pw("scanner", "tanstaaf"), peer).err(),
            Some(Refusal::AddressBlocked)
        );
        assert!(
            !s.address_blocked(ip("10.9.9.8")),
            "other addresses are not affected"
        );
        let other = ip("10.9.9.7");
        s.resolve(pw("scanner", "bad"), other).err();
        s.resolve(pw("scanner", "tanstaaf"), other).expect("ok");
    }

    #[test]
    fn upstream_rejection_backs_off_the_account() {
        let s = source(false);
        let out = s.resolve(pw("scanner", "tanstaaf"), ip(HOME)).expect("ok");
        let id = out.account.expect("stored");
        s.upstream_rejected(id);
        assert_eq!(
            s.resolve(pw("scanner", "tanstaaf"), ip(HOME)).err(),
            Some(Refusal::AccountBackoff)
        );
        s.upstream_accepted(id);
        assert!(s.resolve(pw("scanner", "tanstaaf"), ip(HOME)).is_ok());
    }

    #[test]
    fn secrets_load_with_names_not_values() {
        let e = load_secret(Some("POSTERN_T_EMPTY"), None, &env)
            .expect_err("empty")
            .to_string();
        assert!(e.contains("POSTERN_T_EMPTY") && e.contains("empty"), "{e}");
        let e = load_secret(Some("POSTERN_T_NOT_SET_ANYWHERE"), None, &env).expect_err("unset");
        assert!(matches!(e, SecretError::EnvNotSet(_)), "{e}");
        let dir = std::env::temp_dir().join(format!("postern-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let f = dir.join("pw");
        std::fs::write(&f, "s3cret value\r\n").expect("write");
        assert_eq!(
            load_secret(None, Some(&f), &env).expect("file").expose(),
            b"s3cret value"
        );
        std::fs::write(&f, "two\nlines\n").expect("write");
        let e = load_secret(None, Some(&f), &env)
            .expect_err("inner newline")
            .to_string();
        assert!(
            !e.contains("two") && !e.contains("lines"),
            "the value leaked: {e}"
        );
        let e = load_secret(None, Some(&dir.join("missing")), &env)
            .expect_err("missing")
            .to_string();
        assert!(e.contains("missing"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
