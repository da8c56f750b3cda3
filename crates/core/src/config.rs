//! The configuration file: typed serde structs and their validation.
//!
//! Loading is two steps. `yaml_serde` turns the text into the typed structs
//! below (`deny_unknown_fields` everywhere, addresses and CIDRs parsed into
//! real types); a syntax or type error stops there and carries the line the
//! parser saw. Then [`Config::validate`] checks what types cannot express
//! (impossible combinations, unsafe settings) and collects every problem, so
//! a user fixes the whole file in one pass. This module is pure data: it
//! never touches the filesystem (beyond reading the file itself in
//! [`Config::load`]) or the environment; certificates, CA files and secrets
//! are read once, by [`crate::prepare`]. No message ever echoes a secret or
//! the configuration text.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::Engine as _;
use ipnet::IpNet;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Logging settings.
    #[serde(default)]
    pub log: LogConfig,
    /// The admin endpoint (`/healthz`, `/metrics`). Parsed, not yet served.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// Deadlines for every route (each route may override).
    #[serde(default)]
    pub timeouts: TimeoutsConfig,
    /// Limits for every route (each route may override).
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Every route: one listener, one protocol, one upstream.
    pub routes: Vec<Route>,
    /// The file this came from (for messages; relative paths in it are
    /// already resolved against its directory).
    #[serde(skip)]
    pub file: PathBuf,
}

/// `timeouts:` (top level or per route); durations like `30s`, `5m`, `500ms`.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsConfig {
    /// Resolving and connecting to the upstream.
    pub connect: Option<Dur>,
    /// TLS handshakes, both sides.
    pub tls_handshake: Option<Dur>,
    /// Each upstream reply.
    pub upstream_reply: Option<Dur>,
    /// A client command before login.
    pub client_login: Option<Dur>,
    /// A client command after login (POP3: RFC 1939 asks for at least 10 minutes).
    pub client_idle: Option<Dur>,
    /// SMTP: the next block of message data.
    pub data_block: Option<Dur>,
    /// SMTP: the upstream's reply to the end of data (keep it under the client's 10 minutes).
    pub final_reply: Option<Dur>,
    /// Writing to a peer that does not read (a slow reader is dropped, not buffered for).
    pub write: Option<Dur>,
    /// Everything before login in total; commands do not extend it.
    pub login_total: Option<Dur>,
    /// SMTP: one message's data in total.
    pub data_total: Option<Dur>,
}

impl TimeoutsConfig {
    /// Applies these settings (then `route`'s) over protocol defaults.
    pub fn resolve(
        &self,
        route: &TimeoutsConfig,
        mut base: crate::limits::Timeouts,
    ) -> crate::limits::Timeouts {
        for c in [self, route] {
            let set = |slot: &mut std::time::Duration, v: Option<Dur>| {
                if let Some(d) = v {
                    *slot = d.0;
                }
            };
            set(&mut base.connect, c.connect);
            set(&mut base.tls_handshake, c.tls_handshake);
            set(&mut base.upstream_reply, c.upstream_reply);
            set(&mut base.client_login, c.client_login);
            set(&mut base.client_idle, c.client_idle);
            set(&mut base.data_block, c.data_block);
            set(&mut base.final_reply, c.final_reply);
            set(&mut base.write, c.write);
            set(&mut base.login_total, c.login_total);
            set(&mut base.data_total, c.data_total);
        }
        base
    }
}

/// `limits:` (top level or per route).
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// SMTP: the largest message in bytes.
    pub message_size: Option<u64>,
    /// SMTP: recipients per message.
    pub max_recipients: Option<u32>,
    /// Sessions at once on a route.
    pub sessions: Option<usize>,
    /// Sessions at once from one client address on a route.
    pub sessions_per_client: Option<usize>,
    /// Sessions at once across all routes (top level only).
    pub total_sessions: Option<usize>,
    /// SMTP: the slowest average rate of message data, bytes per second (0: no minimum).
    pub data_min_rate: Option<u64>,
}

impl LimitsConfig {
    /// Applies these settings (then `route`'s) over the defaults.
    pub fn resolve(&self, route: &LimitsConfig) -> crate::limits::Limits {
        let mut l = crate::limits::Limits::DEFAULT;
        for c in [self, route] {
            if let Some(v) = c.message_size {
                l.message_size = v;
            }
            if let Some(v) = c.max_recipients {
                l.max_recipients = v;
            }
            if let Some(v) = c.sessions {
                l.sessions = v;
            }
            if let Some(v) = c.sessions_per_client {
                l.sessions_per_client = v;
            }
            if let Some(v) = c.total_sessions {
                l.total_sessions = v;
            }
            if let Some(v) = c.data_min_rate {
                l.data_min_rate = v;
            }
        }
        l
    }
}

/// A duration written as `<number><unit>` with unit `ms`, `s`, `m` or `h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub std::time::Duration);

impl FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("`{s}` is not a duration; write a number and a unit, like 500ms, 30s, 5m or 1h")
        };
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (n, unit) = t.split_at(split);
        let n: u64 = n.parse().map_err(|_| bad())?;
        let d = match unit {
            "ms" => std::time::Duration::from_millis(n),
            "s" => std::time::Duration::from_secs(n),
            "m" => std::time::Duration::from_secs(n.saturating_mul(60)),
            "h" => std::time::Duration::from_secs(n.saturating_mul(3600)),
            _ => return Err(bad()),
        };
        if d.is_zero() {
            return Err(format!(
                "`{s}`: a timeout of zero would end every session at once"
            ));
        }
        Ok(Dur(d))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

/// `log:` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter such as `info` or `postern=debug`; `RUST_LOG` wins.
    #[serde(default = "default_log_level")]
    pub level: String,
    /// `text` or `json`.
    #[serde(default)]
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: default_log_level(),
            format: LogFormat::default(),
        }
    }
}

fn default_log_level() -> String {
    "info".to_owned()
}

/// The log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `admin:` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Where the admin HTTP endpoint listens.
    pub listen: SocketAddr,
}

/// One route.
#[derive(Debug, Clone, Deserialize)]
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

fn loopback_nets() -> Vec<IpNet> {
    vec![
        IpNet::from_str("127.0.0.0/8").unwrap_or_default(),
        IpNet::from_str("::1/128").unwrap_or_default(),
    ]
}

/// The mail protocol of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// POP3 (RFC 1939).
    Pop3,
    /// SMTP submission (RFC 5321, RFC 6409).
    Smtp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Pop3 => "pop3",
            Protocol::Smtp => "smtp",
        })
    }
}

/// Transport security of one side of a route.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamAuth {
    /// POP3 USER/PASS (RFC 1939).
    User,
    /// POP3 APOP (RFC 1939 §7).
    Apop,
    /// SASL PLAIN (RFC 4616; POP3 RFC 5034, SMTP RFC 4954).
    Plain,
    /// SASL LOGIN (SMTP only).
    Login,
    /// SASL CRAM-MD5 (RFC 2195).
    CramMd5,
    /// No authentication (SMTP only).
    None,
}

impl UpstreamAuth {
    /// Whether this mechanism sends the password itself over the wire.
    pub fn sends_password_in_clear(self) -> bool {
        matches!(self, Self::User | Self::Plain | Self::Login)
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
            Self::None => "none",
        })
    }
}

/// The listen side of a route: `127.0.0.1:3999` or a map.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenMap {
    /// The socket address to bind.
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
#[derive(Debug, Clone, Deserialize)]
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

/// A host name or IP address with a port, resolved at connect time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// Host name or IP literal (without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for HostPort {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("`{s}` is not a server address; write a host name or IP address and a port, like pop.example.net:995 or [2001:db8::1]:995")
        };
        if let Ok(sa) = s.parse::<SocketAddr>() {
            return Ok(Self {
                host: sa.ip().to_string(),
                port: sa.port(),
            });
        }
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let valid_host = !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_');
        if !valid_host || port == 0 {
            return Err(bad());
        }
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }
}

impl<'de> Deserialize<'de> for HostPort {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
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
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
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
    pub sources: Option<Vec<IpNet>>,
    /// The login used upstream.
    pub upstream_user: String,
    /// Environment variable holding the upstream password.
    #[serde(default)]
    pub upstream_password_env: Option<String>,
    /// File holding the upstream password.
    #[serde(default)]
    pub upstream_password_file: Option<PathBuf>,
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

/// One problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The line, where the parser gives it.
    pub line: Option<usize>,
    /// The route the problem is in.
    pub route: Option<String>,
    /// The key, as a dotted path inside the route (`upstream.auth`).
    pub key: Option<String>,
    /// What is wrong, in a sentence.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if let Some(route) = &self.route {
            write!(f, "route \"{route}\": ")?;
        }
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Why a configuration file was refused: every problem found in it.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    /// The file that was read.
    pub file: PathBuf,
    /// Everything wrong with it (never empty).
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "{}: {} problem{} found",
            self.file.display(),
            n,
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  {}: {p}", self.file.display())?;
        }
        Ok(())
    }
}

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            problems: vec![Problem {
                line: None,
                route: None,
                key: None,
                message: format!("cannot read the configuration file: {e}"),
            }],
        })?;
        Self::from_yaml(&text, path)
    }

    /// Parses and validates configuration text; `file` is used in messages,
    /// and relative paths inside it (certificates, keys, CA and password
    /// files) are taken relative to the file's directory.
    pub fn from_yaml(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = yaml_serde::from_str(text).map_err(|e| ConfigError {
            file: file.to_owned(),
            problems: vec![Problem {
                line: e.location().map(|l| l.line()),
                route: None,
                key: None,
                message: parse_message(&e),
            }],
        })?;
        config.file = file.to_owned();
        if let Some(base) = file.parent().filter(|b| !b.as_os_str().is_empty()) {
            config.resolve_paths(base);
        }
        let problems = config.validate();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError {
                file: file.to_owned(),
                problems,
            })
        }
    }

    /// Makes every relative file path relative to `base`.
    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        for route in &mut self.routes {
            let listen = &mut route.listen.0;
            listen.certificate.iter_mut().for_each(fix);
            listen.key.iter_mut().for_each(fix);
            route.upstream.ca.iter_mut().for_each(fix);
            if let Credentials::Accounts(cfg) = &mut route.credentials {
                for a in &mut cfg.accounts {
                    a.local_password_file.iter_mut().for_each(fix);
                    a.upstream_password_file.iter_mut().for_each(fix);
                }
            }
        }
    }

    /// Every problem that typed parsing could not catch.
    pub fn validate(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut top = |key: &str, message: String| {
            out.push(Problem {
                line: None,
                route: None,
                key: Some(key.to_owned()),
                message,
            })
        };
        if tracing_level_invalid(&self.log.level) {
            top(
                "log.level",
                format!(
                    "`{}` is not a log level; use error, warn, info, debug or trace (or a filter like postern=debug)",
                    self.log.level
                ),
            );
        }
        if self.admin.is_some() {
            top(
                "admin",
                "the admin endpoint (/healthz, /metrics) is not available in this version; remove the `admin:` section".to_owned(),
            );
        }
        if self.routes.is_empty() {
            top(
                "routes",
                "no routes are configured; add at least one route".to_owned(),
            );
        }
        let mut names = HashSet::new();
        for (i, route) in self.routes.iter().enumerate() {
            let mut p = |key: &str, message: String| {
                out.push(Problem {
                    line: None,
                    route: Some(route.name.clone()),
                    key: Some(key.to_owned()),
                    message,
                })
            };
            validate_route(route, &mut p);
            if !names.insert(route.name.as_str()) {
                p(
                    "name",
                    "another route has the same name; route names must be unique".to_owned(),
                );
            }
            let here = route.listen.address();
            for other in &self.routes[..i] {
                let there = other.listen.address();
                if !listens_overlap(here, there) {
                    continue;
                }
                let how = if here == there {
                    format!("route \"{}\" already listens on {here}", other.name)
                } else {
                    format!(
                        "{here} overlaps {there} of route \"{}\" (an unspecified address such as 0.0.0.0 or [::] takes the port on every address of its family, and [::] may take IPv4 too)",
                        other.name
                    )
                };
                p(
                    "listen",
                    format!("{how}; `run` could not bind both, so give each route its own port or addresses that do not overlap"),
                );
            }
        }
        out
    }
}

/// Whether two listeners could not both be bound: same port, and the same
/// address, or one of them unspecified in a family that covers the other.
/// `[::]` counts as covering IPv4 too: on Linux it does unless the socket
/// is v6-only (`net.ipv6.bindv6only`), which postern does not set. Port 0
/// asks the OS for a fresh port each time (tests), so it never overlaps.
fn listens_overlap(a: SocketAddr, b: SocketAddr) -> bool {
    use std::net::IpAddr;
    if a.port() != b.port() || a.port() == 0 {
        return false;
    }
    // An IPv4-mapped IPv6 address ([::ffff:127.0.0.1]) binds the IPv4 one.
    let (x, y) = (a.ip().to_canonical(), b.ip().to_canonical());
    let v6_any = |ip: IpAddr| matches!(ip, IpAddr::V6(v6) if v6.is_unspecified());
    let v4_any = |ip: IpAddr| matches!(ip, IpAddr::V4(v4) if v4.is_unspecified());
    x == y || v6_any(x) || v6_any(y) || (v4_any(x) && y.is_ipv4()) || (v4_any(y) && x.is_ipv4())
}

fn parse_message(e: &yaml_serde::Error) -> String {
    // The parser's own text ends with " at line L column C"; the line is
    // reported separately, so keep only the message.
    let text = e.to_string();
    match text.find(" at line ") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

fn tracing_level_invalid(level: &str) -> bool {
    tracing_subscriber_filter_ok(level).is_err()
}

// Kept local so the core does not depend on tracing-subscriber: a filter is
// a comma-separated list of `level` or `target=level` directives.
fn tracing_subscriber_filter_ok(filter: &str) -> Result<(), ()> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    if filter.trim().is_empty() {
        return Err(());
    }
    for directive in filter.split(',') {
        let level = directive.rsplit('=').next().unwrap_or("").trim();
        let target_ok = directive
            .split_once('=')
            .map(|(t, _)| {
                !t.is_empty()
                    && t.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
            })
            .unwrap_or(true);
        if !target_ok || !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(());
        }
    }
    Ok(())
}

fn validate_route(route: &Route, p: &mut dyn FnMut(&str, String)) {
    let name_ok = !route.name.is_empty()
        && route.name.len() <= 64
        && route
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if !name_ok {
        p(
            "name",
            "a route name must be 1 to 64 letters, digits, '-', '_' or '.'".to_owned(),
        );
    }

    // Listen side.
    let listen = &route.listen.0;
    match listen.security {
        Security::None => {
            if listen.certificate.is_some() || listen.key.is_some() {
                p(
                    "listen.certificate",
                    "a certificate and key only make sense with `security: tls` or `starttls` on the listen side".to_owned(),
                );
            }
            if listen.require_tls_for_auth == Some(true) {
                p(
                    "listen.require_tls_for_auth",
                    "clients could never log in: this listener has `security: none`, so TLS is never available".to_owned(),
                );
            }
        }
        Security::Tls | Security::Starttls => match (&listen.certificate, &listen.key) {
            (Some(_), Some(_)) => {}
            _ => p(
                "listen.certificate",
                format!(
                    "`security: {}` on the listen side needs both `certificate:` and `key:` (PEM files; see certs-example/)",
                    listen.security
                ),
            ),
        },
    }
    let ip = listen.address.ip();
    if route.allow.is_none() && !ip.is_loopback() {
        p(
            "allow",
            format!(
                "the route listens on {ip}, which other machines can reach, but has no `allow:` list; \
                 add the networks that may use it (for example `allow: [192.168.1.0/24]`) so it is not open to everyone"
            ),
        );
    }
    if let Some(allow) = &route.allow {
        if allow.is_empty() {
            p(
                "allow",
                "the `allow:` list is empty, so no client could ever connect; list at least one network".to_owned(),
            );
        }
    }

    // Upstream side.
    let up = &route.upstream;
    let auth_ok = match route.protocol {
        Protocol::Pop3 => matches!(
            up.auth,
            UpstreamAuth::User | UpstreamAuth::Apop | UpstreamAuth::Plain | UpstreamAuth::CramMd5
        ),
        Protocol::Smtp => matches!(
            up.auth,
            UpstreamAuth::Plain | UpstreamAuth::Login | UpstreamAuth::CramMd5 | UpstreamAuth::None
        ),
    };
    if !auth_ok {
        let allowed = match route.protocol {
            Protocol::Pop3 => "user, apop, plain or cram-md5",
            Protocol::Smtp => "plain, login, cram-md5 or none",
        };
        p(
            "upstream.auth",
            format!(
                "`{}` is not a {} login method; use {allowed}",
                up.auth, route.protocol
            ),
        );
    }
    if up.security == Security::None
        && up.auth.sends_password_in_clear()
        && !up.allow_plaintext_password
    {
        p(
            "upstream.auth",
            format!(
                "`auth: {}` over `security: none` would send the password across the network in clear; \
                 use `security: tls` or `starttls`, a challenge method (apop, cram-md5), \
                 or set `allow_plaintext_password: true` if the network to the server is trusted",
                up.auth
            ),
        );
    }
    if up.security == Security::None {
        for (key, set) in [
            ("upstream.ca", up.ca.is_some()),
            ("upstream.server_name", up.server_name.is_some()),
            ("upstream.pin_sha256", !up.pin_sha256.is_empty()),
        ] {
            if set {
                p(
                    key,
                    "this TLS setting has no effect with `security: none`; remove it or use `security: tls` or `starttls`".to_owned(),
                );
            }
        }
    } else {
        if rustls_pki_types::ServerName::try_from(up.tls_name()).is_err() {
            p(
                "upstream.server_name",
                format!("`{}` is not a valid server name for TLS", up.tls_name()),
            );
        }
        for (i, pin) in up.pin_sha256.iter().enumerate() {
            let ok = base64::engine::general_purpose::STANDARD
                .decode(pin.trim())
                .map(|v| v.len() == 32)
                .unwrap_or(false);
            if !ok {
                p(
                    &format!("upstream.pin_sha256[{i}]"),
                    "a pin must be the base64 SHA-256 of the server's public key (44 characters, as printed by `openssl x509 -pubkey | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64`)".to_owned(),
                );
            }
        }
    }
    if route.limits.total_sessions.is_some() {
        p(
            "limits.total_sessions",
            "the total across all routes can only be set in the top-level `limits:`".to_owned(),
        );
    }
    if let Credentials::Accounts(cfg) = &route.credentials {
        validate_accounts(route, cfg, p);
    }
}

fn validate_accounts(route: &Route, cfg: &AccountsConfig, p: &mut dyn FnMut(&str, String)) {
    if route.upstream.auth == UpstreamAuth::None {
        p(
            "credentials.accounts",
            "stored accounts need an upstream login method; `auth: none` logs in with nothing"
                .to_owned(),
        );
    }
    if cfg.accounts.is_empty() {
        p(
            "credentials.accounts",
            "the list is empty; add an account or use `credentials: passthrough`".to_owned(),
        );
    }
    let mut locals = HashSet::new();
    for (i, a) in cfg.accounts.iter().enumerate() {
        let key = |k: &str| format!("credentials.accounts[{i}].{k}");
        if a.upstream_user.is_empty() || a.upstream_user.bytes().any(|b| b.is_ascii_control()) {
            p(
                &key("upstream_user"),
                "the upstream user name is empty or contains control characters".to_owned(),
            );
        }
        check_secret_source(
            a.upstream_password_env.as_deref(),
            a.upstream_password_file.as_deref(),
            &key("upstream_password_env"),
            "upstream_password",
            p,
        );
        match &a.local_user {
            Some(user) => {
                if user.is_empty() || user.bytes().any(|b| b.is_ascii_control() || b == b' ') {
                    p(&key("local_user"), "a local user name must not be empty or contain spaces or control characters".to_owned());
                }
                if !locals.insert(user.as_str()) {
                    p(
                        &key("local_user"),
                        format!("the local user `{user}` is listed twice"),
                    );
                }
                check_secret_source(
                    a.local_password_env.as_deref(),
                    a.local_password_file.as_deref(),
                    &key("local_password_env"),
                    "local_password",
                    p,
                );
            }
            None => {
                if a.local_password_env.is_some() || a.local_password_file.is_some() {
                    p(
                        &key("local_user"),
                        "a local password needs a `local_user:`".to_owned(),
                    );
                }
                if route.protocol != Protocol::Smtp || a.sources.is_none() {
                    p(
                        &key("local_user"),
                        "an account without `local_user:` is a device identified by its address: it needs `sources:` and only works on SMTP routes".to_owned(),
                    );
                }
            }
        }
        if let Some(sources) = &a.sources {
            if sources.is_empty() {
                p(
                    &key("sources"),
                    "the list is empty; list the device's address, e.g. [192.168.1.50/32]"
                        .to_owned(),
                );
            }
        }
    }
}

fn check_secret_source(
    env: Option<&str>,
    file: Option<&Path>,
    key: &str,
    what: &str,
    p: &mut dyn FnMut(&str, String),
) {
    match (env, file) {
        (Some(_), Some(_)) => p(key, format!("give either `{what}_env` or `{what}_file`, not both")),
        (None, None) => p(key, format!("`{what}_env` or `{what}_file` is required (passwords are never written in the configuration)")),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_yaml(text, Path::new("test.yaml"))
    }

    fn problems(text: &str) -> Vec<String> {
        match load(text) {
            Ok(_) => Vec::new(),
            Err(e) => e.problems.iter().map(|p| p.to_string()).collect(),
        }
    }

    const GOOD: &str = r#"
log: { level: debug, format: json }
routes:
  - name: isp-pop-apop
    protocol: pop3
    listen: 127.0.0.1:3999
    upstream: { address: pop.example.net:110, security: none, auth: apop }
  - name: isp-pops
    protocol: pop3
    listen: { address: "[::1]:3995" }
    upstream: { address: pop.example.net:995, security: tls, auth: user, server_name: mail.example.net }
  - name: lan
    protocol: pop3
    listen: 0.0.0.0:3996
    allow: [192.168.0.0/16, "::ffff:10.0.0.0/104"]
    upstream: { address: "[2001:db8::1]:995", auth: cram-md5 }
    credentials: passthrough
"#;

    #[test]
    fn a_good_file_parses_into_typed_values() {
        let c = load(GOOD).expect("valid");
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.routes.len(), 3);
        let r = &c.routes[0];
        assert_eq!(r.listen.address(), "127.0.0.1:3999".parse().expect("addr"));
        assert_eq!(r.upstream.auth, UpstreamAuth::Apop);
        assert_eq!(r.upstream.address.to_string(), "pop.example.net:110");
        assert_eq!(r.allow_list().len(), 2, "default allow is loopback");
        let r = &c.routes[1];
        assert_eq!(r.upstream.tls_name(), "mail.example.net");
        let r = &c.routes[2];
        assert_eq!(r.upstream.security, Security::Tls, "tls is the default");
        assert_eq!(r.upstream.address.host, "2001:db8::1");
        assert_eq!(r.upstream.address.to_string(), "[2001:db8::1]:995");
        assert_eq!(r.allow_list().len(), 2);
    }

    #[test]
    fn unknown_keys_are_refused_with_a_line() {
        let e = load(
            "routes:\n  - name: a\n    protocol: pop3\n    listen: 127.0.0.1:1\n    upstream: { address: h:1, auth: user, sekurity: tls }\n",
        )
        .expect_err("unknown key");
        assert_eq!(e.problems.len(), 1);
        assert_eq!(e.problems[0].line, Some(5));
        let text = e.to_string();
        assert!(text.contains("test.yaml"), "{text}");
        assert!(text.contains("sekurity"), "{text}");
    }

    #[test]
    fn every_problem_is_collected() {
        let p = problems(
            r#"
admin: { listen: 127.0.0.1:9725 }
routes:
  - name: "bad name!"
    protocol: pop3
    listen: 0.0.0.0:3999
    upstream: { address: pop.example.net:110, security: none, auth: user, ca: /nonexistent.pem }
  - name: b
    protocol: pop3
    listen: 0.0.0.0:3999
    allow: [10.0.0.0/8]
    upstream: { address: pop.example.net:995, auth: login, pin_sha256: [short] }
"#,
        );
        let all = p.join("\n");
        for needle in [
            "admin",
            "route name must be",
            "no `allow:` list",
            "in clear",
            "upstream.ca",
            "already listens",
            "not a pop3 login method",
            "pin_sha256[0]",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
    }

    #[test]
    fn overlapping_listen_addresses_are_found() {
        let cases = [
            ("127.0.0.1:3999", "127.0.0.1:3999", true),
            ("127.0.0.1:3999", "0.0.0.0:3999", true),
            ("0.0.0.0:3999", "192.168.1.5:3999", true),
            ("[::]:3999", "127.0.0.1:3999", true),
            ("[::]:3999", "0.0.0.0:3999", true),
            ("[::1]:3999", "[::]:3999", true),
            ("[::ffff:127.0.0.1]:3999", "127.0.0.1:3999", true),
            ("[::ffff:127.0.0.1]:3999", "0.0.0.0:3999", true),
            ("[::1]:3999", "[::1]:3999", true),
            ("127.0.0.1:3999", "127.0.0.2:3999", false),
            ("127.0.0.1:3999", "0.0.0.0:3998", false),
            ("0.0.0.0:3999", "[::1]:3999", false),
            ("127.0.0.1:3999", "[::1]:3999", false),
            ("[::]:3999", "[::]:4000", false),
            ("0.0.0.0:0", "0.0.0.0:0", false),
            ("[::]:0", "127.0.0.1:0", false),
        ];
        for (a, b, want) in cases {
            let (x, y) = (a.parse().expect(a), b.parse().expect(b));
            assert_eq!(listens_overlap(x, y), want, "{a} vs {b}");
            assert_eq!(listens_overlap(y, x), want, "{b} vs {a}");
        }
    }

    #[test]
    fn check_refuses_listeners_run_could_not_both_bind() {
        let route = |name: &str, listen: &str| {
            format!(
                "  - name: {name}\n    protocol: pop3\n    listen: \"{listen}\"\n    allow: [10.0.0.0/8]\n    upstream: {{ address: h:110, security: none, auth: apop }}\n"
            )
        };
        let overlaps = |a: &str, b: &str| {
            let text = format!("routes:\n{}{}", route("first", a), route("second", b));
            problems(&text)
                .into_iter()
                .filter(|p| p.contains("listen:"))
                .collect::<Vec<_>>()
        };
        for (a, b) in [
            ("127.0.0.1:3999", "0.0.0.0:3999"),
            ("0.0.0.0:3999", "127.0.0.1:3999"),
            ("[::]:3999", "192.168.1.5:3999"),
            ("[::1]:3999", "[::]:3999"),
        ] {
            let p = overlaps(a, b);
            assert_eq!(p.len(), 1, "{a} and {b}: {p:?}");
            // The problem is reported on the second route and names the first.
            assert!(p[0].starts_with("route \"second\""), "{p:?}");
            assert!(p[0].contains("route \"first\""), "{p:?}");
            assert!(p[0].contains(a) && p[0].contains(b), "{p:?}");
        }
        let p = overlaps("127.0.0.1:3999", "127.0.0.1:3999");
        assert!(p.len() == 1 && p[0].contains("already listens"), "{p:?}");
        for (a, b) in [
            ("127.0.0.1:3999", "127.0.0.2:3999"),
            ("0.0.0.0:3999", "[::1]:3999"),
            ("0.0.0.0:0", "0.0.0.0:0"),
            ("[::]:3999", "[::]:3998"),
        ] {
            assert_eq!(overlaps(a, b), Vec::<String>::new(), "{a} and {b}");
        }
    }

    #[test]
    fn plaintext_passwords_need_an_explicit_opt_in() {
        let base = "routes:\n  - name: a\n    protocol: pop3\n    listen: 127.0.0.1:1\n    upstream: { address: h:110, security: none, auth: AUTH";
        for (auth, refused) in [
            ("user", true),
            ("plain", true),
            ("apop", false),
            ("cram-md5", false),
        ] {
            let text = format!("{} }}\n", base.replace("AUTH", auth));
            assert_eq!(!problems(&text).is_empty(), refused, "auth {auth}");
            let text = format!(
                "{}, allow_plaintext_password: true }}\n",
                base.replace("AUTH", auth)
            );
            assert!(problems(&text).is_empty(), "auth {auth} with opt-in");
        }
    }

    #[test]
    fn bad_addresses_say_what_to_write() {
        for (listen, upstream) in [
            ("localhost:3999", "h:110"),
            ("127.0.0.1:3999", "h"),
            ("127.0.0.1:3999", "h:0"),
            ("127.0.0.1:3999", "bad host:1"),
        ] {
            let text = format!(
                "routes:\n  - name: a\n    protocol: pop3\n    listen: {listen}\n    upstream: {{ address: \"{upstream}\", auth: apop, security: none }}\n"
            );
            let e = load(&text).expect_err("bad address");
            let msg = e.to_string();
            assert!(msg.contains("like"), "{msg}");
            assert!(e.problems[0].line.is_some(), "{msg}");
        }
    }

    #[test]
    fn credentials_accept_passthrough_or_accounts() {
        let base = "routes:\n  - name: a\n    protocol: pop3\n    listen: 127.0.0.1:1\n    upstream: { address: h:1, auth: apop, security: none }\n";
        assert!(problems(&format!("{base}    credentials: passthrough\n")).is_empty());
        let p = problems(&format!("{base}    credentials: stored\n"));
        assert!(p[0].contains("not a credentials mode"), "{p:?}");
        // Secrets are not read here (see `prepare`): only their sources are checked.
        let p = problems(&format!(
            "{base}    credentials:\n      accounts:\n        - {{ local_user: a, upstream_user: b, upstream_password_env: POSTERN_TEST_UNSET_VARIABLE }}\n"
        ));
        assert!(!p.iter().any(|m| m.contains("not set")), "{p:?}");
        assert!(p.iter().any(|m| m.contains("local_password_env")), "{p:?}");
    }

    #[test]
    fn timeouts_and_limits_layer_route_over_top_over_defaults() {
        let c = load(
            "timeouts: { connect: 5s, client_idle: 20m }\nlimits: { message_size: 1000, sessions: 9 }\nroutes:\n  - name: a\n    protocol: smtp\n    listen: 127.0.0.1:1\n    upstream: { address: h:1, auth: none }\n    timeouts: { connect: 250ms, final_reply: 2m }\n    limits: { max_recipients: 7 }\n",
        )
        .expect("valid");
        let r = &c.routes[0];
        let t = c
            .timeouts
            .resolve(&r.timeouts, crate::limits::Timeouts::SMTP);
        assert_eq!(t.connect, std::time::Duration::from_millis(250));
        assert_eq!(t.client_idle, std::time::Duration::from_secs(1200));
        assert_eq!(t.final_reply, std::time::Duration::from_secs(120));
        assert_eq!(t.tls_handshake, crate::limits::Timeouts::SMTP.tls_handshake);
        let l = c.limits.resolve(&r.limits);
        assert_eq!((l.message_size, l.sessions, l.max_recipients), (1000, 9, 7));
        for bad in ["5", "5x", "0s", "-1s", "s"] {
            let e =
                load(&format!("timeouts: {{ connect: \"{bad}\" }}\nroutes: []\n")).expect_err(bad);
            assert!(
                e.to_string().contains("duration") || e.to_string().contains("zero"),
                "{e}"
            );
        }
    }

    #[test]
    fn log_levels_are_checked() {
        assert!(tracing_subscriber_filter_ok("info").is_ok());
        assert!(tracing_subscriber_filter_ok("warn,postern_pop3=trace").is_ok());
        assert!(tracing_subscriber_filter_ok("loud").is_err());
        assert!(tracing_subscriber_filter_ok("").is_err());
    }
}
