//! The rules for OAuth2 accounts that types cannot express: the top-level
//! state settings they need, and each account's `oauth:` map.

use std::collections::HashMap;

use super::{Account, Config, Credentials, OAuthGrant, OAuthProvider, Problem, Route};

impl Config {
    /// Whether any stored account gets its upstream credential from OAuth2.
    pub fn has_oauth_accounts(&self) -> bool {
        self.oauth_accounts().next().is_some()
    }

    /// Every OAuth2 account: (route, account index, account).
    pub fn oauth_accounts(&self) -> impl Iterator<Item = (&Route, usize, &Account)> {
        self.routes.iter().flat_map(|r| {
            let accounts: &[Account] = match &r.credentials {
                Credentials::Accounts(c) => &c.accounts,
                Credentials::Passthrough => &[],
            };
            accounts
                .iter()
                .enumerate()
                .filter(|(_, a)| a.oauth.is_some())
                .map(move |(i, a)| (r, i, a))
        })
    }

    /// Every OAuth2 account has a token store of its own: a store is sealed
    /// to its route and account, so two accounts sharing one file (the
    /// same `token_store:`, or default names that coincide) would each make
    /// it unreadable for the other, and `postern oauth login` could fill
    /// it for the wrong one.
    pub(super) fn validate_store_paths(&self, out: &mut Vec<Problem>) {
        let mut seen: HashMap<std::path::PathBuf, (&str, &str)> = HashMap::new();
        for (route, i, a) in self.oauth_accounts() {
            let Some(o) = &a.oauth else { continue };
            let account = a.local_user.as_deref().unwrap_or(&a.upstream_user);
            let path = match (&o.token_store, &self.state_dir) {
                (Some(p), _) => p.clone(),
                (None, Some(dir)) => {
                    dir.join(crate::oauth::default_store_name(&route.name, account))
                }
                // Reported by validate_state.
                (None, None) => continue,
            };
            match seen.get(&path) {
                Some((other_route, other_account)) => out.push(Problem {
                    line: None,
                    route: Some(route.name.clone()),
                    key: Some(format!("credentials.accounts[{i}].oauth.token_store")),
                    message: format!(
                        "{} is also the token store of route \"{other_route}\" account {other_account}; \
                         give each OAuth2 account its own (`oauth.token_store:`, or distinct names under `state_dir`)",
                        path.display()
                    ),
                }),
                None => {
                    seen.insert(path, (&route.name, account));
                }
            }
        }
    }

    /// The top-level state settings OAuth2 accounts need.
    pub(super) fn validate_state(&self, top: &mut dyn FnMut(&str, String)) {
        if self.state_key_env.is_some() && self.state_key_file.is_some() {
            top(
                "state_key_env",
                "give either `state_key_env` or `state_key_file`, not both".to_owned(),
            );
        }
        if !self.has_oauth_accounts() {
            return;
        }
        if self.state_key_env.is_none() && self.state_key_file.is_none() {
            top(
                "state_key_file",
                "OAuth2 accounts keep their tokens encrypted, and no key is configured: \
                 run `postern oauth keygen > state.key`, `chmod 600 state.key`, \
                 and add `state_key_file: state.key` (or put the key in an environment variable named by `state_key_env`)"
                    .to_owned(),
            );
        }
        let needs_dir = self
            .oauth_accounts()
            .any(|(_, _, a)| a.oauth.as_ref().is_some_and(|o| o.token_store.is_none()));
        if needs_dir && self.state_dir.is_none() {
            top(
                "state_dir",
                "OAuth2 accounts keep their token stores under `state_dir`; \
                 add `state_dir:` (for example /var/lib/postern, as in the container image) or give each account `oauth.token_store:`"
                    .to_owned(),
            );
        }
    }
}

pub(super) fn validate_oauth(
    o: &super::OAuthConfig,
    key: &dyn Fn(&str) -> String,
    p: &mut dyn FnMut(&str, String),
) {
    if o.client_id.trim().is_empty() {
        p(&key("client_id"), "the client id is empty".to_owned());
    }
    if o.client_secret_env.is_some() && o.client_secret_file.is_some() {
        p(
            &key("client_secret_env"),
            "give either `client_secret_env` or `client_secret_file`, not both".to_owned(),
        );
    }
    let confidential = o.client_secret_env.is_some() || o.client_secret_file.is_some();
    if o.grant == OAuthGrant::ClientCredentials && !confidential {
        p(
            &key("client_secret_env"),
            "`grant: client_credentials` authenticates the app itself: it needs `client_secret_env` or `client_secret_file`".to_owned(),
        );
    }
    match o.provider {
        OAuthProvider::Custom => {
            if o.token_url.is_none() {
                p(
                    &key("token_url"),
                    "`provider: custom` needs `token_url:`".to_owned(),
                );
            }
            if o.grant == OAuthGrant::DeviceCode && o.device_authorization_url.is_none() {
                p(
                    &key("device_authorization_url"),
                    "`provider: custom` with `grant: device_code` needs `device_authorization_url:`"
                        .to_owned(),
                );
            }
        }
        OAuthProvider::Microsoft => {
            let tenant = o.tenant.as_deref().unwrap_or("organizations");
            if o.grant == OAuthGrant::ClientCredentials
                && matches!(tenant, "organizations" | "common" | "consumers")
            {
                p(
                    &key("tenant"),
                    "app-only access (`grant: client_credentials`) needs your tenant id or domain in `tenant:`".to_owned(),
                );
            }
        }
        OAuthProvider::Google => {}
    }
    if o.tenant.is_some() && o.provider != OAuthProvider::Microsoft {
        p(
            &key("tenant"),
            "`tenant:` only applies to `provider: microsoft`".to_owned(),
        );
    }
    for (name, url) in [
        ("token_url", &o.token_url),
        ("device_authorization_url", &o.device_authorization_url),
    ] {
        if let Some(url) = url {
            if !url.starts_with("https://") || url.len() <= "https://".len() {
                p(
                    &key(name),
                    format!(
                        "`{url}` is not an https:// URL; tokens and secrets are only sent over TLS"
                    ),
                );
            }
        }
    }
    if o.scopes.as_ref().is_some_and(Vec::is_empty) {
        p(
            &key("scopes"),
            "the list is empty; omit it for the provider's default scopes".to_owned(),
        );
    }
}
