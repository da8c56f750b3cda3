//! Route and gateway YAML for tests, built from typed parts instead of a
//! `format!` at every call site. The output is the configuration format
//! README.md documents under "Configuration"; `tests/route_yaml.rs` pins the
//! exact text of each shape.
//!
//! ```ignore
//! let yaml = GatewayYaml::new()
//!     .limits("sessions_per_client: 1")
//!     .route(RouteYaml::pop3("p", fake.addr()).security("none").auth("apop"))
//!     .to_string();
//! ```

use std::fmt::{self, Display, Formatter};
use std::path::Path;

/// The front end a route runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Pop3,
    Smtp,
    Imap,
}

impl Protocol {
    fn key(self) -> &'static str {
        match self {
            Protocol::Pop3 => "pop3",
            Protocol::Smtp => "smtp",
            Protocol::Imap => "imap",
        }
    }
}

/// Where a stored password comes from (`*_password_env` or `*_password_file`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Secret {
    /// The name of an environment variable.
    Env(String),
    /// A file; written quoted, so any path works.
    File(String),
}

impl Secret {
    pub fn env(name: impl Into<String>) -> Self {
        Secret::Env(name.into())
    }

    pub fn file(path: impl AsRef<Path>) -> Self {
        Secret::File(path.as_ref().display().to_string())
    }

    /// `{side}_password_env: NAME` or `{side}_password_file: "PATH"`.
    fn write(&self, f: &mut Formatter<'_>, side: &str) -> fmt::Result {
        self.write_key(f, &format!("{side}_password"))
    }

    /// `{key}_env: NAME` or `{key}_file: "PATH"`.
    fn write_key(&self, f: &mut Formatter<'_>, key: &str) -> fmt::Result {
        match self {
            Secret::Env(name) => write!(f, "{key}_env: {name}"),
            Secret::File(path) => write!(f, "{key}_file: \"{path}\""),
        }
    }
}

/// An account's `oauth:` map: where its upstream bearer token comes from.
/// Keys are written in a fixed order, only when set.
#[derive(Clone, Debug)]
pub struct OAuth {
    provider: String,
    client_id: String,
    grant: Option<String>,
    client_secret: Option<Secret>,
    token_url: Option<String>,
    device_authorization_url: Option<String>,
    ca: Option<String>,
    scopes: Vec<String>,
    token_store: Option<String>,
}

impl OAuth {
    /// `provider: PROVIDER, client_id: ID`, nothing else yet.
    pub fn new(provider: &str, client_id: &str) -> Self {
        OAuth {
            provider: provider.to_owned(),
            client_id: client_id.to_owned(),
            grant: None,
            client_secret: None,
            token_url: None,
            device_authorization_url: None,
            ca: None,
            scopes: Vec::new(),
            token_store: None,
        }
    }

    /// `provider: custom` with this client and token endpoint.
    pub fn custom(client_id: &str, token_url: &str) -> Self {
        Self::new("custom", client_id).token_url(token_url)
    }

    /// `grant:` (`device_code` or `client_credentials`).
    pub fn grant(mut self, grant: &str) -> Self {
        self.grant = Some(grant.to_owned());
        self
    }

    /// `client_secret_env` / `client_secret_file`.
    pub fn client_secret(mut self, secret: Secret) -> Self {
        self.client_secret = Some(secret);
        self
    }

    /// `token_url:`.
    pub fn token_url(mut self, url: &str) -> Self {
        self.token_url = Some(url.to_owned());
        self
    }

    /// `device_authorization_url:`.
    pub fn device_authorization_url(mut self, url: &str) -> Self {
        self.device_authorization_url = Some(url.to_owned());
        self
    }

    /// `ca:`: the CA file to trust for the identity provider.
    pub fn ca(mut self, ca: &Path) -> Self {
        self.ca = Some(ca.display().to_string());
        self
    }

    /// `scopes:`.
    pub fn scopes(mut self, scopes: &[&str]) -> Self {
        self.scopes = scopes.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    /// `token_store:`.
    pub fn token_store(mut self, path: &Path) -> Self {
        self.token_store = Some(path.display().to_string());
        self
    }
}

impl Display for OAuth {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{{ provider: {}, client_id: {}",
            self.provider, self.client_id
        )?;
        if let Some(grant) = &self.grant {
            write!(f, ", grant: {grant}")?;
        }
        if let Some(secret) = &self.client_secret {
            f.write_str(", ")?;
            secret.write_key(f, "client_secret")?;
        }
        if let Some(url) = &self.token_url {
            write!(f, ", token_url: \"{url}\"")?;
        }
        if let Some(url) = &self.device_authorization_url {
            write!(f, ", device_authorization_url: \"{url}\"")?;
        }
        if let Some(ca) = &self.ca {
            write!(f, ", ca: \"{ca}\"")?;
        }
        if !self.scopes.is_empty() {
            write!(f, ", scopes: [{}]", self.scopes.join(", "))?;
        }
        if let Some(store) = &self.token_store {
            write!(f, ", token_store: \"{store}\"")?;
        }
        f.write_str(" }")
    }
}

/// What an account logs in upstream with.
#[derive(Clone, Debug)]
enum Upstream {
    /// `upstream_password_*`.
    Password(Secret),
    /// `oauth:`.
    OAuth(OAuth),
}

/// One entry of `credentials: accounts:`: a local user or a device
/// (`sources:`) mapped to a stored upstream login.
#[derive(Clone, Debug)]
pub struct Account {
    sources: Vec<String>,
    local: Option<(String, Secret)>,
    upstream_user: String,
    upstream: Upstream,
}

impl Account {
    /// An account logging in upstream as `user` with `password`.
    pub fn upstream(user: &str, password: Secret) -> Self {
        Account {
            sources: Vec::new(),
            local: None,
            upstream_user: user.to_owned(),
            upstream: Upstream::Password(password),
        }
    }

    /// An account logging in upstream as `user` with OAuth2 tokens
    /// (`upstream.auth: xoauth2` or `oauthbearer`).
    pub fn oauth(user: &str, oauth: OAuth) -> Self {
        Account {
            sources: Vec::new(),
            local: None,
            upstream_user: user.to_owned(),
            upstream: Upstream::OAuth(oauth),
        }
    }

    /// The local login a client uses (`local_user`, `local_password_*`).
    pub fn local(mut self, user: &str, password: Secret) -> Self {
        self.local = Some((user.to_owned(), password));
        self
    }

    /// A device account: clients from these networks need no login.
    pub fn sources(mut self, nets: &[&str]) -> Self {
        self.sources = nets.iter().map(|n| (*n).to_owned()).collect();
        self
    }
}

impl Display for Account {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.write_str("{ ")?;
        if !self.sources.is_empty() {
            write!(f, "sources: [{}], ", self.sources.join(", "))?;
        }
        if let Some((user, password)) = &self.local {
            write!(f, "local_user: {user}, ")?;
            password.write(f, "local")?;
            f.write_str(", ")?;
        }
        write!(f, "upstream_user: {}, ", self.upstream_user)?;
        match &self.upstream {
            Upstream::Password(password) => password.write(f, "upstream")?,
            Upstream::OAuth(oauth) => write!(f, "oauth: {oauth}")?,
        }
        f.write_str(" }")
    }
}

/// A route's `listen:`: a bare address, or a map when it has more.
#[derive(Clone, Debug)]
struct Listen {
    address: String,
    /// `security`, `certificate`, `key`.
    tls: Option<(String, String, String)>,
    proxy_protocol: bool,
}

impl Display for Listen {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        if self.tls.is_none() && !self.proxy_protocol {
            return f.write_str(&self.address);
        }
        write!(f, "{{ address: {}", self.address)?;
        if let Some((security, certificate, key)) = &self.tls {
            write!(
                f,
                ", security: {security}, certificate: \"{certificate}\", key: \"{key}\""
            )?;
        }
        if self.proxy_protocol {
            f.write_str(", proxy_protocol: true")?;
        }
        f.write_str(" }")
    }
}

/// One entry of `routes:`, listening on 127.0.0.1:0 unless told otherwise.
///
/// `security: none` with `auth: user` (POP3), `plain` or `login` (SMTP,
/// IMAP) gets `allow_plaintext_password: true` (the config refuses it
/// otherwise) unless [`RouteYaml::plaintext_password`] says differently.
#[derive(Clone, Debug)]
pub struct RouteYaml {
    name: String,
    protocol: Protocol,
    listen: Listen,
    allow: Vec<String>,
    address: String,
    security: Option<String>,
    auth: Option<String>,
    plaintext_password: Option<bool>,
    ca: Option<String>,
    server_name: Option<String>,
    pins: Vec<String>,
    timeouts: Option<String>,
    limits: Option<String>,
    passthrough: Option<bool>,
    accounts: Vec<Account>,
}

impl RouteYaml {
    pub fn new(protocol: Protocol, name: &str, upstream: impl Display) -> Self {
        RouteYaml {
            name: name.to_owned(),
            protocol,
            listen: Listen {
                address: "127.0.0.1:0".to_owned(),
                tls: None,
                proxy_protocol: false,
            },
            allow: Vec::new(),
            address: upstream.to_string(),
            security: None,
            auth: None,
            plaintext_password: None,
            ca: None,
            server_name: None,
            pins: Vec::new(),
            timeouts: None,
            limits: None,
            passthrough: None,
            accounts: Vec::new(),
        }
    }

    /// A POP3 route to `upstream` (an address or `host:port`).
    pub fn pop3(name: &str, upstream: impl Display) -> Self {
        Self::new(Protocol::Pop3, name, upstream)
    }

    /// An SMTP route to `upstream` (an address or `host:port`).
    pub fn smtp(name: &str, upstream: impl Display) -> Self {
        Self::new(Protocol::Smtp, name, upstream)
    }

    /// An IMAP route to `upstream` (an address or `host:port`).
    pub fn imap(name: &str, upstream: impl Display) -> Self {
        Self::new(Protocol::Imap, name, upstream)
    }

    /// `upstream.security`: `none`, `tls` or `starttls`; left out (the
    /// default, `tls`) unless set.
    pub fn security(mut self, security: &str) -> Self {
        self.security = Some(security.to_owned());
        self
    }

    /// `upstream.auth`.
    pub fn auth(mut self, auth: &str) -> Self {
        self.auth = Some(auth.to_owned());
        self
    }

    /// Whether `allow_plaintext_password: true` is written, instead of the
    /// automatic choice (`false` writes nothing: the default).
    pub fn plaintext_password(mut self, allow: bool) -> Self {
        self.plaintext_password = Some(allow);
        self
    }

    /// `upstream.ca`: the CA file to trust.
    pub fn ca(mut self, ca: &Path) -> Self {
        self.ca = Some(ca.display().to_string());
        self
    }

    /// `upstream.server_name`.
    pub fn server_name(mut self, name: &str) -> Self {
        self.server_name = Some(name.to_owned());
        self
    }

    /// `upstream.pin_sha256`.
    pub fn pins(mut self, pins: &[&str]) -> Self {
        self.pins = pins.iter().map(|p| (*p).to_owned()).collect();
        self
    }

    /// The listen address (default `127.0.0.1:0`).
    pub fn listen(mut self, address: impl Display) -> Self {
        self.listen.address = address.to_string();
        self
    }

    /// Listen with `security` (`tls` or `starttls`) and this certificate.
    pub fn listen_tls(mut self, security: &str, certificate: &Path, key: &Path) -> Self {
        self.listen.tls = Some((
            security.to_owned(),
            certificate.display().to_string(),
            key.display().to_string(),
        ));
        self
    }

    /// `listen.proxy_protocol: true`.
    pub fn proxy_protocol(mut self) -> Self {
        self.listen.proxy_protocol = true;
        self
    }

    /// `allow:` networks.
    pub fn allow(mut self, nets: &[&str]) -> Self {
        self.allow = nets.iter().map(|n| (*n).to_owned()).collect();
        self
    }

    /// The route's `timeouts:` map, inside the braces: `"write: 1s"`.
    pub fn timeouts(mut self, timeouts: &str) -> Self {
        self.timeouts = Some(timeouts.to_owned());
        self
    }

    /// The route's `limits:` map, inside the braces: `"sessions: 1"`.
    pub fn limits(mut self, limits: &str) -> Self {
        self.limits = Some(limits.to_owned());
        self
    }

    /// `credentials.passthrough`.
    pub fn passthrough(mut self, passthrough: bool) -> Self {
        self.passthrough = Some(passthrough);
        self
    }

    /// One more entry of `credentials.accounts`.
    pub fn account(mut self, account: Account) -> Self {
        self.accounts.push(account);
        self
    }

    /// A whole configuration with this route alone.
    pub fn yaml(&self) -> String {
        routes_yaml(std::slice::from_ref(self))
    }

    fn allow_plaintext_password(&self) -> bool {
        self.plaintext_password.unwrap_or_else(|| {
            self.security.as_deref() == Some("none")
                && matches!(self.auth.as_deref(), Some("user" | "plain" | "login"))
        })
    }
}

impl Display for RouteYaml {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        writeln!(f, "  - name: {}", self.name)?;
        writeln!(f, "    protocol: {}", self.protocol.key())?;
        writeln!(f, "    listen: {}", self.listen)?;
        if !self.allow.is_empty() {
            writeln!(f, "    allow: [{}]", self.allow.join(", "))?;
        }
        write!(f, "    upstream: {{ address: \"{}\"", self.address)?;
        if let Some(security) = &self.security {
            write!(f, ", security: {security}")?;
        }
        if let Some(auth) = &self.auth {
            write!(f, ", auth: {auth}")?;
        }
        if self.allow_plaintext_password() {
            f.write_str(", allow_plaintext_password: true")?;
        }
        if let Some(ca) = &self.ca {
            write!(f, ", ca: \"{ca}\"")?;
        }
        if let Some(name) = &self.server_name {
            write!(f, ", server_name: {name}")?;
        }
        if !self.pins.is_empty() {
            let pins: Vec<String> = self.pins.iter().map(|p| format!("\"{p}\"")).collect();
            write!(f, ", pin_sha256: [{}]", pins.join(", "))?;
        }
        f.write_str(" }\n")?;
        if let Some(timeouts) = &self.timeouts {
            writeln!(f, "    timeouts: {{ {timeouts} }}")?;
        }
        if let Some(limits) = &self.limits {
            writeln!(f, "    limits: {{ {limits} }}")?;
        }
        if self.passthrough.is_some() || !self.accounts.is_empty() {
            f.write_str("    credentials:\n")?;
            if let Some(passthrough) = self.passthrough {
                writeln!(f, "      passthrough: {passthrough}")?;
            }
            if !self.accounts.is_empty() {
                f.write_str("      accounts:\n")?;
                for account in &self.accounts {
                    writeln!(f, "        - {account}")?;
                }
            }
        }
        Ok(())
    }
}

/// A whole configuration: top-level `state_dir:`, `state_key_*:`,
/// `limits:` and `timeouts:`, then `routes:`.
#[derive(Clone, Debug, Default)]
pub struct GatewayYaml {
    state_dir: Option<String>,
    state_key: Option<Secret>,
    limits: Option<String>,
    timeouts: Option<String>,
    routes: Vec<RouteYaml>,
}

impl GatewayYaml {
    pub fn new() -> Self {
        Self::default()
    }

    /// `state_dir:`: where OAuth2 token stores are kept by default.
    pub fn state_dir(mut self, dir: &Path) -> Self {
        self.state_dir = Some(dir.display().to_string());
        self
    }

    /// `state_key_env:` or `state_key_file:`: the key token stores are
    /// sealed with.
    pub fn state_key(mut self, key: Secret) -> Self {
        self.state_key = Some(key);
        self
    }

    /// The top-level `limits:` map, inside the braces.
    pub fn limits(mut self, limits: &str) -> Self {
        self.limits = Some(limits.to_owned());
        self
    }

    /// The top-level `timeouts:` map, inside the braces.
    pub fn timeouts(mut self, timeouts: &str) -> Self {
        self.timeouts = Some(timeouts.to_owned());
        self
    }

    /// One more route.
    pub fn route(mut self, route: RouteYaml) -> Self {
        self.routes.push(route);
        self
    }
}

impl Display for GatewayYaml {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        if let Some(dir) = &self.state_dir {
            writeln!(f, "state_dir: \"{dir}\"")?;
        }
        if let Some(key) = &self.state_key {
            key.write_key(f, "state_key")?;
            f.write_str("\n")?;
        }
        if let Some(limits) = &self.limits {
            writeln!(f, "limits: {{ {limits} }}")?;
        }
        if let Some(timeouts) = &self.timeouts {
            writeln!(f, "timeouts: {{ {timeouts} }}")?;
        }
        f.write_str("routes:\n")?;
        for route in &self.routes {
            write!(f, "{route}")?;
        }
        Ok(())
    }
}

/// A configuration with these routes and no top-level settings.
pub fn routes_yaml(routes: &[RouteYaml]) -> String {
    let mut yaml = String::from("routes:\n");
    for route in routes {
        yaml.push_str(&route.to_string());
    }
    yaml
}
