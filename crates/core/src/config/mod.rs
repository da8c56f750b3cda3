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
//!
//! Files: [`route`] (what a route is), [`values`] (durations, host:port,
//! timeouts and limits), [`validate`] (every rule types cannot express),
//! [`schema`] (the JSON Schema `postern schema` prints, from these types).

mod oauth;
mod route;
mod schema;
mod validate;
mod validate_oauth;
mod values;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::Deserialize;

pub use oauth::*;
pub use route::*;
pub use schema::{json_schema, json_schema_text};
pub use values::*;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Logging settings.
    #[serde(default)]
    pub log: LogConfig,
    /// The admin endpoint (`/healthz`, `/readyz`, `/metrics`); off unless set.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// Deadlines for every route (each route may override).
    #[serde(default)]
    pub timeouts: TimeoutsConfig,
    /// Limits for every route (each route may override).
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Where postern keeps state between runs (OAuth2 token stores).
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// Environment variable holding the key that encrypts the token stores
    /// (base64 of 32 bytes; `postern oauth keygen` prints one).
    #[serde(default)]
    pub state_key_env: Option<String>,
    /// File holding that key.
    #[serde(default)]
    pub state_key_file: Option<PathBuf>,
    /// Every route: one listener, one protocol, one upstream.
    pub routes: Vec<Route>,
    /// The file this came from (for messages; relative paths in it are
    /// already resolved against its directory).
    #[serde(skip)]
    pub file: PathBuf,
}

/// `log:` settings.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `admin:` settings.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Where the admin HTTP endpoint (`/healthz`, `/readyz`, `/metrics`)
    /// listens; keep it on loopback unless `allow:` says who may scrape it.
    #[schemars(with = "schema::SocketAddrSchema")]
    pub listen: SocketAddr,
    /// Which addresses may use the endpoint. Absent: loopback only (and the
    /// endpoint must then listen on loopback).
    #[serde(default)]
    #[schemars(with = "Option<Vec<schema::IpNetSchema>>")]
    pub allow: Option<Vec<ipnet::IpNet>>,
}

impl AdminConfig {
    /// The effective allow-list: the configured one, or loopback only.
    pub fn allow_list(&self) -> Vec<ipnet::IpNet> {
        self.allow.clone().unwrap_or_else(route::loopback_nets)
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
                message: validate::parse_message(&e),
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
        self.state_dir.iter_mut().for_each(fix);
        self.state_key_file.iter_mut().for_each(fix);
        for route in &mut self.routes {
            let listen = &mut route.listen.0;
            listen.certificate.iter_mut().for_each(fix);
            listen.key.iter_mut().for_each(fix);
            route.upstream.ca.iter_mut().for_each(fix);
            if let Credentials::Accounts(cfg) = &mut route.credentials {
                for a in &mut cfg.accounts {
                    a.local_password_file.iter_mut().for_each(fix);
                    a.upstream_password_file.iter_mut().for_each(fix);
                    if let Some(o) = &mut a.oauth {
                        o.client_secret_file.iter_mut().for_each(fix);
                        o.ca.iter_mut().for_each(fix);
                        o.token_store.iter_mut().for_each(fix);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
