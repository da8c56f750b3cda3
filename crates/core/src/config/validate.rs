//! Every rule the types cannot express, checked without touching the
//! filesystem or the environment (files are read by [`crate::prepare`]).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;

use base64::Engine as _;

use super::validate_oauth::validate_oauth;
use super::{
    AccountsConfig, Config, Credentials, Problem, Protocol, Route, Security, UpstreamAuth,
};

impl Config {
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
        if let Some(admin) = &self.admin {
            if admin.allow.is_none() && !admin.listen.ip().is_loopback() {
                top(
                    "admin.listen",
                    format!(
                        "the admin endpoint would listen on {}, which other machines can reach, without an `allow:` list; \
                         keep it on 127.0.0.1 or add `allow:` with the networks of your monitoring",
                        admin.listen.ip()
                    ),
                );
            }
            if admin.allow.as_ref().is_some_and(Vec::is_empty) {
                top(
                    "admin.allow",
                    "the `allow:` list is empty, so nothing could ever use the endpoint".to_owned(),
                );
            }
            if self
                .routes
                .iter()
                .any(|r| listens_overlap(r.listen.address(), admin.listen))
            {
                top(
                    "admin.listen",
                    format!("{} is also a route's listen address", admin.listen),
                );
            }
        }
        self.validate_state(&mut top);
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
        self.validate_store_paths(&mut out);
        out
    }
}

/// Whether two listeners could not both be bound: same port, and the same
/// address, or one of them unspecified in a family that covers the other.
/// `[::]` counts as covering IPv4 too: on Linux it does unless the socket
/// is v6-only (`net.ipv6.bindv6only`), which postern does not set. Port 0
/// asks the OS for a fresh port each time (tests), so it never overlaps.
pub(super) fn listens_overlap(a: SocketAddr, b: SocketAddr) -> bool {
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

pub(super) fn parse_message(e: &yaml_serde::Error) -> String {
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
pub(super) fn tracing_subscriber_filter_ok(filter: &str) -> Result<(), ()> {
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
    let auth_ok = up.auth.uses_bearer_token()
        || match route.protocol {
            Protocol::Pop3 => matches!(
                up.auth,
                UpstreamAuth::User
                    | UpstreamAuth::Apop
                    | UpstreamAuth::Plain
                    | UpstreamAuth::CramMd5
            ),
            Protocol::Smtp => matches!(
                up.auth,
                UpstreamAuth::Plain
                    | UpstreamAuth::Login
                    | UpstreamAuth::CramMd5
                    | UpstreamAuth::None
            ),
            Protocol::Imap => matches!(
                up.auth,
                UpstreamAuth::Login | UpstreamAuth::Plain | UpstreamAuth::CramMd5
            ),
        };
    if !auth_ok {
        let allowed = match route.protocol {
            Protocol::Pop3 => "user, apop, plain, cram-md5, xoauth2 or oauthbearer",
            Protocol::Smtp => "plain, login, cram-md5, xoauth2, oauthbearer or none",
            Protocol::Imap => "login, plain, cram-md5, xoauth2 or oauthbearer",
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
    if up.auth.uses_bearer_token() {
        if up.security == Security::None {
            p(
                "upstream.security",
                format!(
                    "`auth: {}` sends a bearer token, which must never cross the network in clear; use `security: tls` or `starttls`",
                    up.auth
                ),
            );
        }
        let accounts_ok = match &route.credentials {
            Credentials::Passthrough => false,
            Credentials::Accounts(c) => !c.passthrough,
        };
        if !accounts_ok {
            p(
                "credentials",
                format!(
                    "`auth: {}` logs in with OAuth2 tokens postern obtains itself, so the route needs stored accounts with `oauth:`, \
                     and `passthrough` cannot be used (a client's password is not a token)",
                    up.auth
                ),
            );
        }
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
        let bearer = route.upstream.auth.uses_bearer_token();
        match &a.oauth {
            None if bearer => p(
                &key("oauth"),
                format!(
                    "`upstream.auth: {}` needs an OAuth2 token: give this account an `oauth:` map instead of an upstream password",
                    route.upstream.auth
                ),
            ),
            None => check_secret_source(
                a.upstream_password_env.as_deref(),
                a.upstream_password_file.as_deref(),
                &key("upstream_password_env"),
                "upstream_password",
                p,
            ),
            Some(_) if !bearer => p(
                &key("oauth"),
                format!(
                    "an OAuth2 account needs `upstream.auth: xoauth2` or `oauthbearer`, not `{}`",
                    route.upstream.auth
                ),
            ),
            Some(o) => {
                if a.upstream_password_env.is_some() || a.upstream_password_file.is_some() {
                    p(
                        &key("upstream_password_env"),
                        "an OAuth2 account has no upstream password; remove `upstream_password_*`"
                            .to_owned(),
                    );
                }
                validate_oauth(o, &|k| key(&format!("oauth.{k}")), p);
            }
        }
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
