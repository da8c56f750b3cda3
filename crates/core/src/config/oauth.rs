//! `oauth:` in a stored account: where the account's upstream bearer token
//! comes from (instead of `upstream_password_*`), and the presets for the
//! providers most users have.

use std::fmt;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::Deserialize;

use super::Protocol;

/// `credentials.accounts[].oauth`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OAuthConfig {
    /// Whose identity platform issues the tokens.
    pub provider: OAuthProvider,
    /// Microsoft: the tenant id or domain (default `organizations`; app-only
    /// `client_credentials` needs the real tenant).
    #[serde(default)]
    pub tenant: Option<String>,
    /// The application (client) id of the app registration.
    pub client_id: String,
    /// Environment variable holding the client secret (confidential clients).
    #[serde(default)]
    pub client_secret_env: Option<String>,
    /// File holding the client secret (confidential clients).
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// How the first token is obtained (default `device_code`).
    #[serde(default)]
    pub grant: OAuthGrant,
    /// Scopes to ask for (default: the provider's scopes for the route's
    /// protocol, plus `offline_access` for Microsoft's device flow).
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// The token endpoint (required for `provider: custom`).
    #[serde(default)]
    pub token_url: Option<String>,
    /// The device authorization endpoint (`provider: custom`, `device_code`).
    #[serde(default)]
    pub device_authorization_url: Option<String>,
    /// A PEM file of CA certificates to trust for the identity provider
    /// (default: the bundled roots plus the system's).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Where the encrypted refresh token is kept (default: a file under the
    /// top-level `state_dir` named after the route and account).
    #[serde(default)]
    pub token_store: Option<PathBuf>,
}

/// Identity platforms with presets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OAuthProvider {
    /// Microsoft identity platform v2 (Microsoft 365, Exchange Online).
    Microsoft,
    /// Google (Gmail, Google Workspace).
    Google,
    /// Any RFC 6749 server: `token_url` (and `device_authorization_url`).
    Custom,
}

impl fmt::Display for OAuthProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Microsoft => "microsoft",
            Self::Google => "google",
            Self::Custom => "custom",
        })
    }
}

/// How the account's tokens are obtained.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OAuthGrant {
    /// RFC 8628: a person approves once (`postern oauth login`), postern
    /// keeps the refresh token.
    #[default]
    DeviceCode,
    /// The app's own identity (Microsoft app-only access): no consent step.
    ClientCredentials,
}

impl fmt::Display for OAuthGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::DeviceCode => "device_code",
            Self::ClientCredentials => "client_credentials",
        })
    }
}

/// The endpoints and scopes an account uses, after presets are applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthEndpoints {
    /// Token endpoint.
    pub token_url: String,
    /// Device authorization endpoint (device_code grant only).
    pub device_authorization_url: Option<String>,
    /// Scopes requested.
    pub scopes: Vec<String>,
}

const MICROSOFT: &str = "https://login.microsoftonline.com";
const GOOGLE_TOKEN: &str = "https://oauth2.googleapis.com/token";
const GOOGLE_DEVICE: &str = "https://oauth2.googleapis.com/device/code";
const GOOGLE_MAIL: &str = "https://mail.google.com/";

impl OAuthConfig {
    /// The endpoints and scopes for a route speaking `protocol`: the
    /// explicit settings, else the provider's preset. `None` for a custom
    /// provider missing what it needs (validation reports that).
    pub fn endpoints(&self, protocol: Protocol) -> Option<OAuthEndpoints> {
        let device = self.grant == OAuthGrant::DeviceCode;
        let (token, device_url, scopes) = match self.provider {
            OAuthProvider::Microsoft => {
                let tenant = self.tenant.as_deref().unwrap_or("organizations");
                let base = format!("{MICROSOFT}/{tenant}/oauth2/v2.0");
                let scopes = if device {
                    let scope = match protocol {
                        Protocol::Pop3 => "https://outlook.office.com/POP.AccessAsUser.All",
                        Protocol::Smtp => "https://outlook.office.com/SMTP.Send",
                        Protocol::Imap => "https://outlook.office.com/IMAP.AccessAsUser.All",
                    };
                    vec![scope.to_owned(), "offline_access".to_owned()]
                } else {
                    vec!["https://outlook.office365.com/.default".to_owned()]
                };
                (
                    format!("{base}/token"),
                    Some(format!("{base}/devicecode")),
                    scopes,
                )
            }
            OAuthProvider::Google => (
                GOOGLE_TOKEN.to_owned(),
                Some(GOOGLE_DEVICE.to_owned()),
                vec![GOOGLE_MAIL.to_owned()],
            ),
            OAuthProvider::Custom => (
                self.token_url.clone()?,
                self.device_authorization_url.clone(),
                Vec::new(),
            ),
        };
        let device_authorization_url = if device {
            Some(self.device_authorization_url.clone().or(device_url)?)
        } else {
            None
        };
        Some(OAuthEndpoints {
            token_url: self.token_url.clone().unwrap_or(token),
            device_authorization_url,
            scopes: self.scopes.clone().unwrap_or(scopes),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> OAuthConfig {
        yaml_serde::from_str(yaml).expect("oauth config")
    }

    #[test]
    fn microsoft_presets_follow_protocol_and_grant() {
        let c = config("{ provider: microsoft, client_id: abc, tenant: contoso.onmicrosoft.com }");
        let e = c.endpoints(Protocol::Smtp).expect("preset");
        assert_eq!(
            e.token_url,
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );
        assert_eq!(
            e.device_authorization_url.as_deref(),
            Some(
                "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/devicecode"
            )
        );
        assert_eq!(
            e.scopes,
            ["https://outlook.office.com/SMTP.Send", "offline_access"]
        );
        let pop = config("{ provider: microsoft, client_id: abc }")
            .endpoints(Protocol::Pop3)
            .expect("preset");
        assert!(pop.token_url.contains("/organizations/"));
        assert_eq!(
            pop.scopes[0],
            "https://outlook.office.com/POP.AccessAsUser.All"
        );
        let app =
            config("{ provider: microsoft, client_id: abc, tenant: t, grant: client_credentials }")
                .endpoints(Protocol::Pop3)
                .expect("preset");
        assert_eq!(app.scopes, ["https://outlook.office365.com/.default"]);
        assert_eq!(app.device_authorization_url, None);
    }

    #[test]
    fn google_and_custom() {
        let g = config("{ provider: google, client_id: x }")
            .endpoints(Protocol::Pop3)
            .expect("preset");
        assert_eq!(g.scopes, ["https://mail.google.com/"]);
        let missing = config("{ provider: custom, client_id: x, token_url: 'https://idp/token' }");
        assert_eq!(
            missing.endpoints(Protocol::Pop3),
            None,
            "device_code needs the device URL"
        );
        let cc = config(
            "{ provider: custom, client_id: x, grant: client_credentials, token_url: 'https://idp/token', scopes: [mail] }",
        )
        .endpoints(Protocol::Smtp)
        .expect("custom");
        assert_eq!(cc.token_url, "https://idp/token");
        assert_eq!(cc.scopes, ["mail"]);
    }
}
