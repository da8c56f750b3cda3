//! `FakeIdp`: a scripted OAuth2 authorization server over HTTPS, for the
//! OAuth2 upstream tests.
//!
//! It listens on `127.0.0.1:0` with a certificate from a [`crate::TestPki`]
//! (clients trust it through the test CA), speaks HTTP/1.1 (hyper) over
//! rustls and serves:
//!
//! - `POST /devicecode`: RFC 8628 device authorization (`client_id`,
//!   `scope` → `device_code`, `user_code`, `verification_uri`,
//!   `expires_in`, `interval`);
//! - `POST /token`: the `urn:ietf:params:oauth:grant-type:device_code`,
//!   `refresh_token` and `client_credentials` grants, client checked on
//!   every one (HTTP Basic or form fields);
//! - `POST /introspect` (and `GET`): RFC 7662, with or without client
//!   authentication, as Dovecot's `passdb oauth2` asks;
//! - `GET /device`: a placeholder verification page.
//!
//! Bodies are form-encoded, answers JSON; errors have RFC 6749 §5.2's
//! form (`{"error", "error_description"}`, status 400, or 401 for
//! `invalid_client`). The [`IdpScript`] says how it behaves; the running
//! fake can be re-scripted at any time (pending polls, `slow_down`,
//! approval, denial, expiry, failing refreshes, 5xx answers, delays,
//! token lifetime, rotation, revocation). It logs [`IdpEvent`]s, counts
//! token requests per grant, keeps every token it issued, and hands out a
//! [`BearerVerifier`] the fake POP3/SMTP upstreams use to check tokens.
//!
//! ```text
//!   POST /devicecode ──> device_code ──POST /token (device_code)──> [slow_down once]
//!        ──> authorization_pending × pending_polls ──> outcome: tokens | access_denied |
//!            expired_token | authorization_pending (held)
//!   POST /token (refresh_token) ──> [invalid_grant × N] ──> tokens (+ rotation)
//!   POST /token (client_credentials) ──> access token for the client's app user
//! ```

mod endpoints;
mod events;
mod http;
mod script;
mod state;

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

pub use events::{ClientAuth, IdpEvent, LoggedIdpEvent};
pub use script::{
    DeviceOutcome, GrantType, IdpClient, IdpScript, DEFAULT_CLIENT_ID, DEVICE_CODE_GRANT,
};
pub use state::{IssuedRefreshToken, IssuedToken, RefreshTokenState};

use crate::bearer::BearerVerifier;
use crate::fake::{event_log_api, EventLog, Listener};
use endpoints::{DEVICE_AUTHORIZATION_PATH, INTROSPECTION_PATH, TOKEN_PATH};
use state::State;

/// What every connection of one fake sees.
struct Shared {
    state: Mutex<State>,
    log: EventLog<IdpEvent>,
}

impl Shared {
    /// The state, even if a panicking task poisoned the lock (it holds
    /// plain data; the panic is in the log).
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running fake OAuth2 authorization server; stops (aborting live
/// connections) on drop. Tokens and the [`BearerVerifier`] outlive it.
pub struct FakeIdp {
    shared: Arc<Shared>,
    log: EventLog<IdpEvent>,
    server: Listener,
}

impl fmt::Debug for FakeIdp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeIdp")
            .field("addr", &self.addr())
            .field("events", &self.log.len())
            .finish_non_exhaustive()
    }
}

impl FakeIdp {
    /// Bind `127.0.0.1:0` and serve `script` over HTTPS with `tls`
    /// (usually [`crate::TestPki::server_config`]; ALPN is set to
    /// `http/1.1`).
    pub async fn start(tls: Arc<rustls::ServerConfig>, script: IdpScript) -> FakeIdp {
        let mut config = (*tls).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let log = EventLog::new();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(script)),
            log: log.clone(),
        });
        let for_connections = Arc::clone(&shared);
        let panics = log.clone();
        let server = Listener::bind(
            "fake IdP",
            move |id, tcp| {
                http::connection(Arc::clone(&for_connections), acceptor.clone(), id, tcp)
            },
            move |what| panics.push(usize::MAX, IdpEvent::SessionPanicked(what)),
        )
        .await;
        {
            // Nobody knows the port yet, so no request can have come in.
            let mut state = shared.lock();
            state.base_url = format!("https://{}:{}", state.script.url_host, server.addr().port());
        }
        FakeIdp {
            shared,
            log,
            server,
        }
    }

    /// Where the fake listens.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// `https://{url_host}:{port}`.
    pub fn base_url(&self) -> String {
        self.shared.lock().base_url.clone()
    }

    /// The token endpoint, `{base_url}/token`.
    pub fn token_url(&self) -> String {
        format!("{}{TOKEN_PATH}", self.base_url())
    }

    /// The device authorization endpoint, `{base_url}/devicecode`.
    pub fn device_authorization_url(&self) -> String {
        format!("{}{DEVICE_AUTHORIZATION_PATH}", self.base_url())
    }

    /// The introspection endpoint, `{base_url}/introspect`.
    pub fn introspection_url(&self) -> String {
        format!("{}{INTROSPECTION_PATH}", self.base_url())
    }

    /// The live script (a copy), as changed so far.
    pub fn script(&self) -> IdpScript {
        self.shared.lock().script.clone()
    }

    event_log_api!(IdpEvent, LoggedIdpEvent);

    // ----- re-scripting the running fake -----

    /// Change the live script in one go (any field; counters and one-shot
    /// failures are separate).
    pub fn update_script(&self, change: impl FnOnce(&mut IdpScript)) {
        change(&mut self.shared.lock().script);
    }

    /// From now on, `n` `authorization_pending` answers before the outcome,
    /// for device codes issued later and for every outstanding one.
    pub fn set_pending_polls(&self, n: u32) {
        let mut state = self.shared.lock();
        state.script.pending_polls = n;
        for grant in state.devices.values_mut() {
            grant.pending_left = n;
        }
    }

    /// Answer the next device-code poll with `slow_down`.
    pub fn slow_down_once(&self) {
        self.shared.lock().slow_down_next = true;
    }

    /// The user approves device codes, as `user` (outstanding ones too,
    /// once their pending answers are used up).
    pub fn approve_device_as(&self, user: &str) {
        self.shared.lock().script.device_outcome = DeviceOutcome::Approve(user.to_owned());
    }

    /// The user declines device codes (`access_denied`).
    pub fn deny_device(&self) {
        self.shared.lock().script.device_outcome = DeviceOutcome::Deny;
    }

    /// Device codes expire (`expired_token`).
    pub fn expire_device(&self) {
        self.shared.lock().script.device_outcome = DeviceOutcome::Expire;
    }

    /// Device codes stay pending until the outcome changes again.
    pub fn hold_device(&self) {
        self.shared.lock().script.device_outcome = DeviceOutcome::Pending;
    }

    /// Answer the next `n` refresh grants `invalid_grant` (whatever the
    /// token; the tokens themselves stay as they are).
    pub fn fail_refreshes(&self, n: u32) {
        self.shared.lock().failing_refreshes = n;
    }

    /// Answer the next `n` token requests (any grant, counted as usual)
    /// with HTTP `status` (e.g. 500 or 503) and a plain-text body.
    pub fn fail_token_requests(&self, n: u32, status: u16) {
        self.shared.lock().failing_token_requests = (n, status);
    }

    /// Wait `delay` before answering any request.
    pub fn set_response_delay(&self, delay: Duration) {
        self.shared.lock().script.response_delay = delay;
    }

    /// Lifetime of access tokens issued from now on.
    pub fn set_access_token_lifetime(&self, lifetime: Duration) {
        self.shared.lock().script.access_token_lifetime = lifetime;
    }

    /// Leave `expires_in` out of token responses, or put it back.
    pub fn set_omit_expires_in(&self, omit: bool) {
        self.shared.lock().script.omit_expires_in = omit;
    }

    /// Rotate refresh tokens on refresh grants, or stop.
    pub fn set_rotation(&self, rotate: bool) {
        self.shared.lock().script.rotate_refresh_tokens = rotate;
    }

    /// Revoke every live refresh token of `user`; returns how many.
    pub fn revoke_refresh_tokens(&self, user: &str) -> usize {
        let mut state = self.shared.lock();
        let mut n = 0;
        for token in state.refresh.iter_mut() {
            if token.user == user && token.state == RefreshTokenState::Live {
                token.state = RefreshTokenState::Revoked;
                n += 1;
            }
        }
        n
    }

    /// Revoke every unrevoked access token of `user` (the verifier and
    /// introspection stop accepting them); returns how many.
    pub fn revoke_access_tokens(&self, user: &str) -> usize {
        let mut state = self.shared.lock();
        let mut n = 0;
        for token in state.access.iter_mut() {
            if token.user == user && !token.revoked {
                token.revoked = true;
                n += 1;
            }
        }
        n
    }

    // ----- observing -----

    /// Every `POST /token` so far, whatever its grant or answer.
    pub fn token_requests(&self) -> usize {
        self.shared.lock().counts.token_requests
    }

    /// `POST /token` requests naming `grant`, whatever their answer
    /// (scripted failures included).
    pub fn token_requests_for(&self, grant: GrantType) -> usize {
        self.shared.lock().counts.per_grant[grant.index()]
    }

    /// Device codes issued.
    pub fn device_authorizations(&self) -> usize {
        self.shared.lock().counts.device_authorizations
    }

    /// Introspection requests answered (active or not).
    pub fn introspections(&self) -> usize {
        self.shared.lock().counts.introspections
    }

    /// Every access token issued or minted so far, in order.
    pub fn issued_access_tokens(&self) -> Vec<IssuedToken> {
        self.shared.lock().access.clone()
    }

    /// Every refresh token issued or minted so far, in order, with its
    /// state.
    pub fn refresh_tokens(&self) -> Vec<IssuedRefreshToken> {
        self.shared.lock().refresh.clone()
    }

    /// A cheap, clonable check of access tokens against the live list:
    /// `Some(user)` for a token issued here, not expired and not revoked.
    /// Give it to [`crate::Pop3Script::bearer`] / [`crate::SmtpScript::bearer`].
    pub fn verifier(&self) -> BearerVerifier {
        let shared = Arc::clone(&self.shared);
        BearerVerifier::new(move |token| shared.lock().user_of(token))
    }

    /// Mint a live refresh token for `user`, bound to the script's first
    /// client, with an empty scope (to preseed a token store).
    ///
    /// # Panics
    /// If the script has no client.
    pub fn issue_refresh_token(&self, user: &str) -> String {
        let client_id = {
            let state = self.shared.lock();
            let first = state.script.clients.first();
            first
                .expect("fake IdP script has no client to bind a refresh token to")
                .client_id
                .clone()
        };
        self.issue_refresh_token_for(&client_id, user, "")
    }

    /// Mint a live refresh token for `user`, bound to `client_id`, with
    /// `scope`.
    pub fn issue_refresh_token_for(&self, client_id: &str, user: &str, scope: &str) -> String {
        self.shared.lock().mint_refresh(user, client_id, scope)
    }

    /// Mint an access token for `user`, valid for `lifetime`, of the
    /// scripted length (to talk to a fake upstream directly).
    pub fn issue_access_token(&self, user: &str, lifetime: Duration) -> String {
        self.shared
            .lock()
            .mint_access(user, None, None, "", lifetime)
            .access_token
    }
}
