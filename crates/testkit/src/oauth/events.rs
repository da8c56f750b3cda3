//! What the fake IdP logs: [`IdpEvent`] and [`LoggedIdpEvent`].

use std::time::Duration;

use super::script::GrantType;
use crate::fake::Event;

/// How a client identified itself on a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// `Authorization: Basic` (RFC 6749 §2.3.1), perhaps with a matching
    /// `client_id` in the body too.
    BasicHeader,
    /// `client_id` (and `client_secret`, for a confidential client) in the
    /// form body.
    FormBody,
    /// No client credentials (allowed on the introspection endpoint only).
    Anonymous,
}

/// Something that happened on the fake's side. Secrets (tokens, device
/// codes, client secrets) are never recorded; read them from
/// [`FakeIdp::issued_access_tokens`](crate::FakeIdp::issued_access_tokens)
/// and [`FakeIdp::refresh_tokens`](crate::FakeIdp::refresh_tokens).
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdpEvent {
    /// A TCP connection was accepted.
    Connected,
    /// The TLS handshake completed.
    TlsEstablished,
    /// The TLS handshake failed; the rustls error text (e.g. the client's
    /// `UnknownCA` alert).
    TlsFailed(String),
    /// An HTTP request: method and path, never the query (it may carry a
    /// token), e.g. `POST /token`.
    Command(String),
    /// A device code was issued (RFC 8628 §3.2).
    DeviceAuthorized {
        /// The client it was issued to.
        client_id: String,
        /// The scope asked for (`""` if none).
        scope: String,
        /// The code the user would type.
        user_code: String,
    },
    /// A device-code token request for a known code of the right client.
    DevicePoll {
        /// The polling client.
        client_id: String,
        /// `"authorization_pending"`, `"slow_down"`, `"access_denied"`,
        /// `"expired_token"`, `"invalid_grant"` (already redeemed) or
        /// `"tokens"`.
        answer: String,
        /// Time since this code's previous poll (`None` on the first).
        since_previous: Option<Duration>,
    },
    /// A token response with an access token.
    TokensIssued {
        /// The grant.
        grant: GrantType,
        /// The client.
        client_id: String,
        /// Whose token it is.
        user: String,
        /// How the client authenticated.
        client_auth: ClientAuth,
        /// Whether the response carried a refresh token.
        refresh_token: bool,
        /// Whether a refresh token was rotated away (refresh grant only).
        rotated: bool,
    },
    /// An RFC 6749 §5.2 error response other than a device poll's answer.
    Refused {
        /// The path, e.g. `/token`.
        endpoint: String,
        /// The grant, if the request named one the fake implements.
        grant: Option<GrantType>,
        /// 400 or 401.
        status: u16,
        /// The `error` code, e.g. `invalid_grant`.
        error: String,
        /// The `error_description`.
        description: String,
    },
    /// A token request answered with a scripted server error
    /// ([`FakeIdp::fail_token_requests`](crate::FakeIdp::fail_token_requests)).
    ScriptedFailure {
        /// The status sent, e.g. 503.
        status: u16,
        /// The grant asked for, if the fake implements it.
        grant: Option<GrantType>,
    },
    /// An RFC 7662 introspection was answered.
    Introspection {
        /// The `active` answered.
        active: bool,
        /// The token's user, when active.
        user: Option<String>,
        /// How the caller authenticated.
        client_auth: ClientAuth,
    },
    /// The client broke the protocol in a way a lenient server might not
    /// notice: wrong content type, a repeated parameter, two client
    /// authentication methods, polling faster than the interval, a body
    /// that is not form-encoded, malformed HTTP.
    ClientViolation(String),
    /// The connection's socket is closed.
    Closed,
    /// A connection task panicked (a testkit bug); logged with session
    /// number `usize::MAX`.
    SessionPanicked(String),
}

/// An event together with the connection that produced it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedIdpEvent {
    /// 0-based connection counter.
    pub session: usize,
    /// What happened.
    pub event: IdpEvent,
}

impl Event for IdpEvent {
    type Logged = LoggedIdpEvent;

    const FAKE: &'static str = "fake IdP";

    fn logged(session: usize, event: Self) -> LoggedIdpEvent {
        LoggedIdpEvent { session, event }
    }

    fn of(logged: &LoggedIdpEvent) -> &Self {
        &logged.event
    }

    fn closed() -> Self {
        Self::Closed
    }

    fn command(&self) -> Option<&str> {
        match self {
            Self::Command(line) => Some(line),
            _ => None,
        }
    }
}
