//! Configurations `postern check` refuses, each with one problem that
//! names its key and says what to do: a bearer token over a plain
//! connection, OAuth2 accounts without a state key, passthrough or a
//! password account on a bearer route, an OAuth2 account on a password
//! route, two accounts sharing one token store. The same configuration
//! without the fault passes.

use std::ffi::OsString;

use crate::common::{Account, GatewayYaml, RouteYaml, Secret};
use crate::setup::*;

const UP: &str = "127.0.0.1:995";

async fn check(w: &World, name: &str, yaml: &str) -> (bool, String) {
    let file = w.config_file(name, yaml);
    let out = postern(&["check".into(), "-c".into(), OsString::from(&file)]).await;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

async fn refused(w: &World, name: &str, yaml: &str, key: &str, message: &str) {
    let (ok, out) = check(w, name, yaml).await;
    assert!(!ok, "{name}: accepted:\n{yaml}\n{out}");
    assert!(out.contains("1 problem found"), "{name}: {out}");
    assert!(
        out.contains(key),
        "{name}: the key {key} is not named: {out}"
    );
    assert!(out.contains(message), "{name}: {out}");
}

#[tokio::test]
async fn check_refuses_unsafe_or_inconsistent_oauth_configurations() {
    let w = World::new(idp_script()).await;
    let bearer = |auth: &str| w.upstream(RouteYaml::pop3("r", UP), "tls", auth);
    let good = w.yaml(bearer("xoauth2").account(w.scanner(w.app())));
    let (ok, out) = check(&w, "good.yaml", &good).await;
    assert!(ok, "{good}\n{out}");
    assert!(out.contains("configuration OK"), "{out}");

    refused(
        &w,
        "plain.yaml",
        &w.yaml(
            RouteYaml::pop3("r", UP)
                .security("none")
                .auth("xoauth2")
                .account(w.scanner(w.app())),
        ),
        "upstream.security",
        "sends a bearer token, which must never cross the network in clear; use `security: tls` or `starttls`",
    )
    .await;

    refused(
        &w,
        "no-key.yaml",
        &GatewayYaml::new()
            .state_dir(&w.state_dir())
            .route(bearer("oauthbearer").account(w.scanner(w.app())))
            .to_string(),
        "state_key_file",
        "no key is configured: run `postern oauth keygen > state.key`",
    )
    .await;

    refused(
        &w,
        "passthrough.yaml",
        &w.yaml(
            bearer("xoauth2")
                .passthrough(true)
                .account(w.scanner(w.app())),
        ),
        "credentials",
        "`passthrough` cannot be used (a client's password is not a token)",
    )
    .await;

    refused(
        &w,
        "password.yaml",
        &w.yaml(
            bearer("oauthbearer").account(
                Account::upstream(USER, Secret::file(&w.local_password))
                    .local(LOCAL_USER, Secret::file(&w.local_password)),
            ),
        ),
        "credentials.accounts[0].oauth",
        "needs an OAuth2 token: give this account an `oauth:` map instead of an upstream password",
    )
    .await;

    refused(
        &w,
        "oauth-on-plain-auth.yaml",
        &w.yaml(bearer("plain").account(w.scanner(w.app()))),
        "credentials.accounts[0].oauth",
        "an OAuth2 account needs `upstream.auth: xoauth2` or `oauthbearer`, not `plain`",
    )
    .await;

    // A store is sealed to its route and account: two accounts writing one
    // file would each make it unreadable for the other. Named alike...
    let store = w.dir.path().join("alice.token");
    let yaml = w
        .gateway()
        .route(bearer("xoauth2").account(w.scanner(w.app().token_store(&store))))
        .route(
            w.upstream(RouteYaml::smtp("s", UP), "tls", "xoauth2")
                .account(w.scanner(w.app().token_store(&store))),
        )
        .to_string();
    refused(
        &w,
        "shared-store.yaml",
        &yaml,
        "route \"s\": credentials.accounts[0].oauth.token_store",
        "is also the token store of route \"r\" account scanner; give each OAuth2 account its own",
    )
    .await;
    // ...or by default: a local user and a device named alike on one route.
    let yaml = w.yaml(
        w.upstream(RouteYaml::smtp("s", UP), "tls", "xoauth2")
            .account(Account::oauth("bob", w.app()).local(USER, Secret::file(&w.local_password)))
            .account(Account::oauth(USER, w.app()).sources(&["127.0.0.9/32"])),
    );
    refused(
        &w,
        "same-name.yaml",
        &yaml,
        "route \"s\": credentials.accounts[1].oauth.token_store",
        "is also the token store of route \"s\" account alice",
    )
    .await;
}
