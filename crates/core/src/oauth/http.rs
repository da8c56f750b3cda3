//! The token endpoint and the device authorization endpoint, through the
//! `oauth2` crate over `reqwest` with postern's rustls configuration.
//! Nothing here logs; errors carry the provider's error code and
//! description, never a token or secret.

use std::time::Duration;

use oauth2::basic::{BasicClient, BasicTokenResponse};
use oauth2::{
    AuthType, ClientId, ClientSecret, DeviceAuthorizationUrl, RefreshToken, RequestTokenError,
    Scope, StandardDeviceAuthorizationResponse, TokenResponse as _, TokenUrl,
};

use super::OAuthError;
use crate::secret::Secret;

/// Tokens as obtained from the token endpoint.
#[derive(Debug)]
pub(super) struct Tokens {
    pub access: Secret,
    pub expires_in: Option<Duration>,
    pub refresh: Option<Secret>,
}

/// What a person needs to approve a device login.
#[derive(Debug, Clone)]
pub struct DeviceCode {
    /// Where to go.
    pub verification_uri: String,
    /// The URI with the code filled in, when the provider gives one.
    pub verification_uri_complete: Option<String>,
    /// The code to type.
    pub user_code: String,
    /// How long the code is valid.
    pub expires_in: Duration,
}

/// One account's client: id, optional secret, endpoints, scopes.
#[derive(Debug, Clone)]
pub(super) struct Endpoint {
    pub client_id: String,
    pub client_secret: Option<Secret>,
    pub token_url: String,
    pub device_url: Option<String>,
    pub scopes: Vec<String>,
    pub http: reqwest::Client,
}

/// The HTTP client every identity-provider request uses: postern's TLS
/// roots (or the account's `ca:`), no redirects (RFC 6749 §3.2 endpoints
/// do not redirect, and following one could leak a secret), bounded time.
pub(super) fn http_client(tls: rustls::ClientConfig) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .user_agent(concat!("postern/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot build the HTTPS client: {e}"))
}

fn error<RE, T>(e: RequestTokenError<RE, oauth2::StandardErrorResponse<T>>) -> OAuthError
where
    RE: std::error::Error + 'static,
    T: oauth2::ErrorResponseType + AsRef<str> + std::fmt::Display + Send + Sync + 'static,
{
    match e {
        RequestTokenError::ServerResponse(r) => OAuthError::Provider {
            code: r.error().as_ref().to_owned(),
            description: r.error_description().cloned(),
        },
        RequestTokenError::Request(e) => OAuthError::Unreachable(chain(&e)),
        RequestTokenError::Parse(e, _) => OAuthError::Unreachable(format!(
            "the identity provider's answer is not an OAuth2 token response ({e})"
        )),
        RequestTokenError::Other(m) => OAuthError::Unreachable(m),
    }
}

/// An error and its sources in one line (reqwest hides the cause otherwise).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn tokens(r: &BasicTokenResponse) -> Tokens {
    Tokens {
        access: Secret::from(r.access_token().secret().as_str()),
        expires_in: r.expires_in(),
        refresh: r.refresh_token().map(|t| Secret::from(t.secret().as_str())),
    }
}

impl Endpoint {
    fn token_url(&self) -> Result<TokenUrl, OAuthError> {
        TokenUrl::new(self.token_url.clone())
            .map_err(|e| OAuthError::Unreachable(format!("the token URL is not a URL ({e})")))
    }

    fn secret(&self) -> Option<ClientSecret> {
        self.client_secret
            .as_ref()
            .map(|s| ClientSecret::new(String::from_utf8_lossy(s.expose()).into_owned()))
    }

    fn scopes(&self) -> impl Iterator<Item = Scope> + '_ {
        self.scopes.iter().map(|s| Scope::new(s.clone()))
    }

    /// `grant_type=refresh_token`.
    pub async fn refresh(&self, refresh: &Secret) -> Result<Tokens, OAuthError> {
        let mut client = BasicClient::new(ClientId::new(self.client_id.clone()))
            .set_auth_type(AuthType::RequestBody)
            .set_token_uri(self.token_url()?);
        if let Some(s) = self.secret() {
            client = client.set_client_secret(s);
        }
        let token = RefreshToken::new(String::from_utf8_lossy(refresh.expose()).into_owned());
        let r = client
            .exchange_refresh_token(&token)
            .add_scopes(self.scopes())
            .request_async(&self.http)
            .await
            .map_err(error)?;
        Ok(tokens(&r))
    }

    /// `grant_type=client_credentials`.
    pub async fn client_credentials(&self) -> Result<Tokens, OAuthError> {
        let mut client = BasicClient::new(ClientId::new(self.client_id.clone()))
            .set_auth_type(AuthType::RequestBody)
            .set_token_uri(self.token_url()?);
        if let Some(s) = self.secret() {
            client = client.set_client_secret(s);
        }
        let r = client
            .exchange_client_credentials()
            .add_scopes(self.scopes())
            .request_async(&self.http)
            .await
            .map_err(error)?;
        Ok(tokens(&r))
    }

    /// RFC 8628: asks for a device code, hands it to `show`, then polls the
    /// token endpoint at the server's interval (honouring `slow_down` and
    /// `authorization_pending`) until a person approved, denied or the
    /// code expired.
    pub async fn device_login(
        &self,
        show: &mut (dyn FnMut(&DeviceCode) + Send),
    ) -> Result<Tokens, OAuthError> {
        let Some(device_url) = &self.device_url else {
            return Err(OAuthError::Unreachable(
                "no device authorization endpoint is configured".to_owned(),
            ));
        };
        let device_url = DeviceAuthorizationUrl::new(device_url.clone()).map_err(|e| {
            OAuthError::Unreachable(format!("the device authorization URL is not a URL ({e})"))
        })?;
        let mut client = BasicClient::new(ClientId::new(self.client_id.clone()))
            .set_auth_type(AuthType::RequestBody)
            .set_token_uri(self.token_url()?)
            .set_device_authorization_url(device_url);
        if let Some(s) = self.secret() {
            client = client.set_client_secret(s);
        }
        let details: StandardDeviceAuthorizationResponse = client
            .exchange_device_code()
            .add_scopes(self.scopes())
            .request_async(&self.http)
            .await
            .map_err(error)?;
        show(&DeviceCode {
            verification_uri: details.verification_uri().to_string(),
            verification_uri_complete: details
                .verification_uri_complete()
                .map(|u| u.secret().clone()),
            user_code: details.user_code().secret().clone(),
            expires_in: details.expires_in(),
        });
        let r = client
            .exchange_device_access_token(&details)
            .request_async(&self.http, tokio::time::sleep, None)
            .await
            .map_err(error)?;
        Ok(tokens(&r))
    }
}
