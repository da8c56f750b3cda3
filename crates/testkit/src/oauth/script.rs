//! What one fake IdP does: [`IdpScript`], its clients ([`IdpClient`]) and
//! what the user does with a device code ([`DeviceOutcome`]).

use std::time::Duration;

/// The client id of the one public client a default [`IdpScript`] knows.
pub const DEFAULT_CLIENT_ID: &str = "postern-test-client";

/// The `grant_type` of RFC 8628's device authorization grant.
pub const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// A token endpoint grant the fake implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GrantType {
    /// RFC 8628 device authorization grant ([`DEVICE_CODE_GRANT`]).
    DeviceCode,
    /// RFC 6749 §6 `refresh_token`.
    RefreshToken,
    /// RFC 6749 §4.4 `client_credentials`.
    ClientCredentials,
}

impl GrantType {
    /// The `grant_type` value on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DeviceCode => DEVICE_CODE_GRANT,
            Self::RefreshToken => "refresh_token",
            Self::ClientCredentials => "client_credentials",
        }
    }

    /// The grant a `grant_type` value names, if the fake implements it.
    pub fn from_wire(value: &str) -> Option<Self> {
        [
            Self::DeviceCode,
            Self::RefreshToken,
            Self::ClientCredentials,
        ]
        .into_iter()
        .find(|g| g.as_str() == value)
    }

    pub(super) fn index(self) -> usize {
        match self {
            Self::DeviceCode => 0,
            Self::RefreshToken => 1,
            Self::ClientCredentials => 2,
        }
    }
}

/// A client registered with the fake (an "app registration").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdpClient {
    /// Its `client_id`.
    pub client_id: String,
    /// `Some`: a confidential client that must authenticate with this
    /// secret (HTTP Basic or form fields) on every request. `None`: a
    /// public client, which must not send a secret.
    pub client_secret: Option<String>,
    /// The user a `client_credentials` token is for (the mailbox an
    /// app-only token may open). `None`: `client_credentials` is refused
    /// with `unauthorized_client`.
    pub app_user: Option<String>,
}

impl IdpClient {
    /// A public client (device code and refresh grants, no secret).
    pub fn public(client_id: &str) -> Self {
        Self {
            client_id: client_id.to_owned(),
            client_secret: None,
            app_user: None,
        }
    }

    /// A confidential client with `secret`.
    pub fn confidential(client_id: &str, secret: &str) -> Self {
        Self {
            client_secret: Some(secret.to_owned()),
            ..Self::public(client_id)
        }
    }

    /// Set [`IdpClient::app_user`].
    pub fn app_user(mut self, user: &str) -> Self {
        self.app_user = Some(user.to_owned());
        self
    }
}

/// What the user does with a device code once the scripted
/// `authorization_pending` answers are used up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceOutcome {
    /// Signs in as this user and consents: the next poll gets tokens.
    Approve(String),
    /// Declines: polls get `access_denied`.
    Deny,
    /// Never acts until the code expires: polls get `expired_token`.
    Expire,
    /// Has not acted yet: polls keep getting `authorization_pending`
    /// (until the test changes the outcome, or the code's lifetime ends).
    Pending,
}

/// What one fake IdP does. Fields are public; builder methods are there
/// for one-liners. The running fake keeps a live copy that its `set_*`
/// and scripting methods change.
#[derive(Clone, Debug)]
pub struct IdpScript {
    /// Registered clients; default: one public [`DEFAULT_CLIENT_ID`].
    pub clients: Vec<IdpClient>,
    /// Host in the fake's URLs (default `127.0.0.1`; the test leaf is also
    /// valid for `localhost`).
    pub url_host: String,
    /// What the user does with a device code; default: approve as
    /// `alice`.
    pub device_outcome: DeviceOutcome,
    /// `authorization_pending` answers each device code gets before the
    /// outcome (default 0), counted from when the code is issued.
    pub pending_polls: u32,
    /// Answer the first poll after start with `slow_down` (once; the
    /// running fake's [`FakeIdp::slow_down_once`](crate::FakeIdp::slow_down_once)
    /// arms it again).
    pub slow_down: bool,
    /// The `interval` (seconds) of the device authorization response
    /// (default 1; 0 for fast tests, though real clients may clamp it).
    pub interval: u64,
    /// What the fake adds to a device code's interval after `slow_down`
    /// when checking the client's pace; RFC 8628 §3.5 says clients add 5
    /// seconds (the default).
    pub slow_down_increment: Duration,
    /// Record a client violation for a device-code poll that comes sooner
    /// than the interval after the previous one (default true).
    pub enforce_interval: bool,
    /// `expires_in` of a device code (default 900 s); later polls get
    /// `expired_token`.
    pub device_code_lifetime: Duration,
    /// How long an access token is valid (default 3600 s; tests use a few
    /// seconds). `expires_in` is its whole seconds.
    pub access_token_lifetime: Duration,
    /// Leave `expires_in` out of token responses (the client must assume
    /// a lifetime).
    pub omit_expires_in: bool,
    /// Length of an access token in characters (default 2000, so a
    /// XOAUTH2 response is over 2,500 octets, as with Microsoft's tokens;
    /// at least 24).
    pub access_token_len: usize,
    /// A refresh grant issues a new refresh token and invalidates the one
    /// used (later use: `invalid_grant`). Off (the default): the response
    /// carries no refresh token and the old one stays valid (Google's
    /// way).
    pub rotate_refresh_tokens: bool,
    /// Issue a refresh token for a device-code grant only when its scope
    /// includes `offline_access` (Microsoft's rule). Off by default.
    pub require_offline_access: bool,
    /// Wait this long before answering any request.
    pub response_delay: Duration,
}

impl Default for IdpScript {
    fn default() -> Self {
        Self {
            clients: vec![IdpClient::public(DEFAULT_CLIENT_ID)],
            url_host: "127.0.0.1".to_owned(),
            device_outcome: DeviceOutcome::Approve("alice".to_owned()),
            pending_polls: 0,
            slow_down: false,
            interval: 1,
            slow_down_increment: Duration::from_secs(5),
            enforce_interval: true,
            device_code_lifetime: Duration::from_secs(900),
            access_token_lifetime: Duration::from_secs(3600),
            omit_expires_in: false,
            access_token_len: 2000,
            rotate_refresh_tokens: false,
            require_offline_access: false,
            response_delay: Duration::ZERO,
        }
    }
}

impl IdpScript {
    /// Same as `Default::default()`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a client to [`IdpScript::clients`].
    pub fn client(mut self, client: IdpClient) -> Self {
        self.clients.push(client);
        self
    }

    /// Replace [`IdpScript::clients`].
    pub fn clients(mut self, clients: Vec<IdpClient>) -> Self {
        self.clients = clients;
        self
    }

    /// Set [`IdpScript::url_host`].
    pub fn url_host(mut self, host: &str) -> Self {
        self.url_host = host.to_owned();
        self
    }

    /// Device codes are approved, as `user`.
    pub fn approve_device_as(mut self, user: &str) -> Self {
        self.device_outcome = DeviceOutcome::Approve(user.to_owned());
        self
    }

    /// Device codes are declined (`access_denied`).
    pub fn deny_device(mut self) -> Self {
        self.device_outcome = DeviceOutcome::Deny;
        self
    }

    /// Device codes expire unused (`expired_token`).
    pub fn expire_device(mut self) -> Self {
        self.device_outcome = DeviceOutcome::Expire;
        self
    }

    /// Device codes stay pending until the test decides.
    pub fn hold_device(mut self) -> Self {
        self.device_outcome = DeviceOutcome::Pending;
        self
    }

    /// Set [`IdpScript::pending_polls`].
    pub fn pending_polls(mut self, n: u32) -> Self {
        self.pending_polls = n;
        self
    }

    /// Set [`IdpScript::slow_down`].
    pub fn slow_down(mut self, once: bool) -> Self {
        self.slow_down = once;
        self
    }

    /// Set [`IdpScript::interval`] (seconds).
    pub fn interval(mut self, seconds: u64) -> Self {
        self.interval = seconds;
        self
    }

    /// Set [`IdpScript::slow_down_increment`].
    pub fn slow_down_increment(mut self, increment: Duration) -> Self {
        self.slow_down_increment = increment;
        self
    }

    /// Set [`IdpScript::enforce_interval`].
    pub fn enforce_interval(mut self, enforce: bool) -> Self {
        self.enforce_interval = enforce;
        self
    }

    /// Set [`IdpScript::device_code_lifetime`].
    pub fn device_code_lifetime(mut self, lifetime: Duration) -> Self {
        self.device_code_lifetime = lifetime;
        self
    }

    /// Set [`IdpScript::access_token_lifetime`].
    pub fn access_token_lifetime(mut self, lifetime: Duration) -> Self {
        self.access_token_lifetime = lifetime;
        self
    }

    /// Set [`IdpScript::omit_expires_in`].
    pub fn omit_expires_in(mut self, omit: bool) -> Self {
        self.omit_expires_in = omit;
        self
    }

    /// Set [`IdpScript::access_token_len`].
    pub fn access_token_len(mut self, len: usize) -> Self {
        self.access_token_len = len;
        self
    }

    /// Set [`IdpScript::rotate_refresh_tokens`].
    pub fn rotate_refresh_tokens(mut self, rotate: bool) -> Self {
        self.rotate_refresh_tokens = rotate;
        self
    }

    /// Set [`IdpScript::require_offline_access`].
    pub fn require_offline_access(mut self, require: bool) -> Self {
        self.require_offline_access = require;
        self
    }

    /// Set [`IdpScript::response_delay`].
    pub fn response_delay(mut self, delay: Duration) -> Self {
        self.response_delay = delay;
        self
    }

    pub(super) fn find_client(&self, client_id: &str) -> Option<&IdpClient> {
        self.clients.iter().find(|c| c.client_id == client_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_types_round_trip() {
        for g in [
            GrantType::DeviceCode,
            GrantType::RefreshToken,
            GrantType::ClientCredentials,
        ] {
            assert_eq!(GrantType::from_wire(g.as_str()), Some(g));
        }
        assert_eq!(GrantType::from_wire("password"), None);
        assert_eq!(
            GrantType::DeviceCode.as_str(),
            "urn:ietf:params:oauth:grant-type:device_code"
        );
    }

    #[test]
    fn builders() {
        let s = IdpScript::new()
            .client(IdpClient::confidential("app", "s3cret").app_user("svc@x.test"))
            .deny_device()
            .pending_polls(3);
        assert_eq!(s.clients.len(), 2);
        assert_eq!(s.device_outcome, DeviceOutcome::Deny);
        let app = s.find_client("app").expect("registered");
        assert_eq!(app.client_secret.as_deref(), Some("s3cret"));
        assert_eq!(app.app_user.as_deref(), Some("svc@x.test"));
        assert!(s.find_client("nobody").is_none());
    }
}
