//! What a route is: its protocol, listen side, upstream and credentials,
//! as typed serde structs.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use ipnet::IpNet;
use schemars::JsonSchema;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::values::{HostPort, LimitsConfig, TimeoutsConfig};

/// One route.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// A unique name used in logs and `postern check`.
    pub name: String,
    /// Which protocol the route speaks on both sides.
    pub protocol: Protocol,
    /// Where postern listens for clients.
    pub listen: Listen,
    /// Which client addresses may connect. Absent: loopback only.
    #[serde(default)]
    #[schemars(with = "Option<Vec<super::schema::IpNetSchema>>")]
    pub allow: Option<Vec<IpNet>>,
    /// The real server and how to reach it.
    pub upstream: Upstream,
    /// Where the upstream credentials come from.
    #[serde(default)]
    pub credentials: Credentials,
    /// Deadlines overriding the top-level ones.
    #[serde(default)]
    pub timeouts: TimeoutsConfig,
    /// Limits overriding the top-level ones.
    #[serde(default)]
    pub limits: LimitsConfig,
}

impl Route {
    /// The effective allow-list: the configured one, or loopback only.
    pub fn allow_list(&self) -> Vec<IpNet> {
        match &self.allow {
            Some(list) => list.clone(),
            None => loopback_nets(),
        }
    }
}

/// Loopback only: the default allow-list. Constants checked at compile
/// time, so it can never fall back to something wider.
const LOOPBACK: [IpNet; 2] = [
    IpNet::new_assert(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8),
    IpNet::new_assert(IpAddr::V6(Ipv6Addr::LOCALHOST), 128),
];

pub(super) fn loopback_nets() -> Vec<IpNet> {
    LOOPBACK.to_vec()
}

/// The mail protocol of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// POP3 (RFC 1939).
    Pop3,
    /// SMTP submission (RFC 5321, RFC 6409).
    Smtp,
    /// IMAP (RFC 9051, RFC 3501).
    Imap,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Pop3 => "pop3",
            Protocol::Smtp => "smtp",
            Protocol::Imap => "imap",
        })
    }
}

/// Transport security of one side of a route.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Security {
    /// Plain TCP.
    None,
    /// Implicit TLS from the first byte (POP3S 995, SMTPS 465).
    #[default]
    Tls,
    /// Plain TCP upgraded with POP3 `STLS` or SMTP `STARTTLS`.
    Starttls,
}

impl fmt::Display for Security {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Security::None => "none",
            Security::Tls => "tls",
            Security::Starttls => "starttls",
        })
    }
}

/// How postern logs in to the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamAuth {
    /// POP3 USER/PASS (RFC 1939).
    User,
    /// POP3 APOP (RFC 1939 §7).
    Apop,
    /// SASL PLAIN (RFC 4616; POP3 RFC 5034, SMTP RFC 4954).
    Plain,
    /// SASL LOGIN (SMTP); the LOGIN command (IMAP).
    Login,
    /// SASL CRAM-MD5 (RFC 2195).
    CramMd5,
    /// SASL XOAUTH2 with an OAuth2 bearer token (Google, Microsoft).
    Xoauth2,
    /// SASL OAUTHBEARER with an OAuth2 bearer token (RFC 7628).
    Oauthbearer,
    /// No authentication (SMTP only).
    None,
}

impl UpstreamAuth {
    /// Whether this mechanism sends the password itself over the wire.
    pub fn sends_password_in_clear(self) -> bool {
        matches!(self, Self::User | Self::Plain | Self::Login)
    }

    /// Whether this mechanism logs in with an OAuth2 bearer token (from an
    /// account's `oauth:`), not a password.
    pub fn uses_bearer_token(self) -> bool {
        matches!(self, Self::Xoauth2 | Self::Oauthbearer)
    }
}

impl fmt::Display for UpstreamAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::User => "user",
            Self::Apop => "apop",
            Self::Plain => "plain",
            Self::Login => "login",
            Self::CramMd5 => "cram-md5",
            Self::Xoauth2 => "xoauth2",
            Self::Oauthbearer => "oauthbearer",
            Self::None => "none",
        })
    }
}

/// The listen side of a route: `127.0.0.1:3999` or a map.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenMap {
    /// The socket address to bind.
    #[schemars(with = "super::schema::SocketAddrSchema")]
    pub address: SocketAddr,
    /// Listen-side security (`none` until listen-side TLS lands).
    #[serde(default = "security_none")]
    pub security: Security,
    /// PEM certificate chain for a TLS listener.
    #[serde(default)]
    pub certificate: Option<PathBuf>,
    /// PEM private key for a TLS listener.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Refuse logins before TLS (default: true with `security: starttls`).
    #[serde(default)]
    pub require_tls_for_auth: Option<bool>,
    /// Expect a PROXY protocol v1/v2 header from a load balancer on every
    /// connection; the allow-list and logs then use the client it names.
    #[serde(default)]
    pub proxy_protocol: bool,
}

impl ListenMap {
    /// Whether logins are refused (and not advertised) before TLS.
    pub fn requires_tls_for_auth(&self) -> bool {
        self.require_tls_for_auth
            .unwrap_or(self.security == Security::Starttls)
    }
}

fn security_none() -> Security {
    Security::None
}

/// The listen side of a route.
#[derive(Debug, Clone)]
pub struct Listen(pub ListenMap);

impl Listen {
    /// The socket address to bind.
    pub fn address(&self) -> SocketAddr {
        self.0.address
    }
}

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Listen;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an address like 127.0.0.1:3999, or a map with address, security, certificate and key")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Listen, E> {
                let address = s.parse().map_err(|_| {
                    E::custom(format!(
                        "`{s}` is not a listen address; write an IP address and a port, like 127.0.0.1:3999 or [::1]:3999"
                    ))
                })?;
                Ok(Listen(ListenMap {
                    address,
                    security: Security::None,
                    certificate: None,
                    key: None,
                    require_tls_for_auth: None,
                    proxy_protocol: false,
                }))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Listen, A::Error> {
                ListenMap::deserialize(de::value::MapAccessDeserializer::new(map)).map(Listen)
            }
        }
        d.deserialize_any(V)
    }
}

/// The upstream side of a route.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// `host:port` of the real server; resolved afresh for every session.
    pub address: HostPort,
    /// How the connection is secured (default `tls`).
    #[serde(default)]
    pub security: Security,
    /// How postern logs in.
    pub auth: UpstreamAuth,
    /// A PEM file of CA certificates to trust instead of the system roots.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// The name expected in the server certificate and sent as SNI
    /// (default: the host part of `address`).
    #[serde(default)]
    pub server_name: Option<String>,
    /// SPKI pins: base64 SHA-256 of the server key, checked in addition.
    #[serde(default)]
    pub pin_sha256: Vec<String>,
    /// Allow USER/PASS, PLAIN or LOGIN over `security: none`.
    #[serde(default)]
    pub allow_plaintext_password: bool,
}

impl Upstream {
    /// The name checked against the certificate and sent as SNI.
    pub fn tls_name(&self) -> &str {
        self.server_name.as_deref().unwrap_or(&self.address.host)
    }
}

/// Where upstream credentials come from: `passthrough` or `{accounts: [...]}`.
#[derive(Debug, Clone, Default)]
pub enum Credentials {
    /// The client's own login is carried to the upstream; nothing is stored.
    #[default]
    Passthrough,
    /// Local logins mapped to stored upstream credentials.
    Accounts(AccountsConfig),
}

/// `credentials: {accounts: [...], passthrough: false}`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccountsConfig {
    /// The stored accounts.
    pub accounts: Vec<Account>,
    /// Also carry the login of a client whose user name is not a local
    /// account to the upstream (default: no, such logins are refused).
    #[serde(default)]
    pub passthrough: bool,
}

/// One stored account (`credentials.accounts[]`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Account {
    /// The login the client sends.
    #[serde(default)]
    pub local_user: Option<String>,
    /// Environment variable holding the local password.
    #[serde(default)]
    pub local_password_env: Option<String>,
    /// File holding the local password.
    #[serde(default)]
    pub local_password_file: Option<PathBuf>,
    /// Source addresses of a device that cannot log in (SMTP).
    #[serde(default)]
    #[schemars(with = "Option<Vec<super::schema::IpNetSchema>>")]
    pub sources: Option<Vec<IpNet>>,
    /// The login used upstream.
    pub upstream_user: String,
    /// Environment variable holding the upstream password.
    #[serde(default)]
    pub upstream_password_env: Option<String>,
    /// File holding the upstream password.
    #[serde(default)]
    pub upstream_password_file: Option<PathBuf>,
    /// An OAuth2 token instead of an upstream password (routes with
    /// `upstream.auth: xoauth2` or `oauthbearer`).
    #[serde(default)]
    pub oauth: Option<super::OAuthConfig>,
}

impl<'de> Deserialize<'de> for Credentials {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Credentials;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`passthrough` or a map with `accounts:`")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Credentials, E> {
                match s {
                    "passthrough" => Ok(Credentials::Passthrough),
                    other => Err(E::custom(format!(
                        "`{other}` is not a credentials mode; write `passthrough` or a map with `accounts:`"
                    ))),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Credentials, A::Error> {
                AccountsConfig::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(Credentials::Accounts)
            }
        }
        d.deserialize_any(V)
    }
}
