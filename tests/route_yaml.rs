//! The test route builder (`tests/common/route.rs`) writes exactly the
//! YAML the tests wrote by hand before it existed, shape by shape.

mod common;

use std::path::Path;

use common::{routes_yaml, Account, GatewayYaml, OAuth, RouteYaml, Secret};

const UP: &str = "127.0.0.1:1100";

#[test]
fn plain_routes_allow_plaintext_passwords_only_for_user_plain_and_login() {
    for (auth, plaintext) in [
        ("user", true),
        ("plain", true),
        ("apop", false),
        ("cram-md5", false),
    ] {
        let allow = if plaintext {
            ", allow_plaintext_password: true"
        } else {
            ""
        };
        assert_eq!(
            RouteYaml::pop3("r", UP)
                .security("none")
                .auth(auth)
                .to_string(),
            format!("  - name: r\n    protocol: pop3\n    listen: 127.0.0.1:0\n    upstream: {{ address: \"{UP}\", security: none, auth: {auth}{allow} }}\n")
        );
    }
    for (auth, plaintext) in [
        ("plain", true),
        ("login", true),
        ("cram-md5", false),
        ("none", false),
    ] {
        let allow = if plaintext {
            ", allow_plaintext_password: true"
        } else {
            ""
        };
        assert_eq!(
            RouteYaml::smtp("s", UP)
                .security("none")
                .auth(auth)
                .to_string(),
            format!("  - name: s\n    protocol: smtp\n    listen: 127.0.0.1:0\n    upstream: {{ address: \"{UP}\", security: none, auth: {auth}{allow} }}\n")
        );
    }
    for (auth, plaintext) in [("login", true), ("plain", true), ("cram-md5", false)] {
        let allow = if plaintext {
            ", allow_plaintext_password: true"
        } else {
            ""
        };
        assert_eq!(
            RouteYaml::imap("i", UP)
                .security("none")
                .auth(auth)
                .to_string(),
            format!("  - name: i\n    protocol: imap\n    listen: 127.0.0.1:0\n    upstream: {{ address: \"{UP}\", security: none, auth: {auth}{allow} }}\n")
        );
    }
    // Over TLS no password is in clear; and a test of the check can leave
    // the key out where the rule would add it.
    assert_eq!(
        RouteYaml::pop3("r", UP)
            .security("tls")
            .auth("user")
            .to_string(),
        format!("  - name: r\n    protocol: pop3\n    listen: 127.0.0.1:0\n    upstream: {{ address: \"{UP}\", security: tls, auth: user }}\n")
    );
    assert_eq!(
        RouteYaml::pop3("a", "h:110")
            .listen("0.0.0.0:3999")
            .security("none")
            .auth("user")
            .plaintext_password(false)
            .to_string(),
        "  - name: a\n    protocol: pop3\n    listen: 0.0.0.0:3999\n    upstream: { address: \"h:110\", security: none, auth: user }\n"
    );
    // No security: the default (tls), not written.
    assert_eq!(
        RouteYaml::pop3("dns", "pop.nonexistent.invalid:995")
            .auth("user")
            .to_string(),
        "  - name: dns\n    protocol: pop3\n    listen: 127.0.0.1:0\n    upstream: { address: \"pop.nonexistent.invalid:995\", auth: user }\n"
    );
}

#[test]
fn upstream_tls_settings_follow_the_login_settings() {
    let ca = Path::new("/tmp/x/ca.pem");
    assert_eq!(
        RouteYaml::pop3("r", UP)
            .security("starttls")
            .auth("user")
            .ca(ca)
            .server_name("localhost")
            .pins(&["AAA=", "BBB="])
            .to_string(),
        format!("  - name: r\n    protocol: pop3\n    listen: 127.0.0.1:0\n    upstream: {{ address: \"{UP}\", security: starttls, auth: user, ca: \"/tmp/x/ca.pem\", server_name: localhost, pin_sha256: [\"AAA=\", \"BBB=\"] }}\n")
    );
    assert_eq!(
        RouteYaml::smtp("s", UP)
            .security("tls")
            .auth("login")
            .server_name("localhost")
            .to_string(),
        format!("  - name: s\n    protocol: smtp\n    listen: 127.0.0.1:0\n    upstream: {{ address: \"{UP}\", security: tls, auth: login, server_name: localhost }}\n")
    );
}

#[test]
fn listen_side_allow_list_timeouts_and_limits() {
    assert_eq!(
        RouteYaml::pop3("r", UP)
            .listen_tls("starttls", Path::new("/d/cert.pem"), Path::new("/d/key.pem"))
            .security("none")
            .auth("apop")
            .to_string(),
        format!("  - name: r\n    protocol: pop3\n    listen: {{ address: 127.0.0.1:0, security: starttls, certificate: \"/d/cert.pem\", key: \"/d/key.pem\" }}\n    upstream: {{ address: \"{UP}\", security: none, auth: apop }}\n")
    );
    assert_eq!(
        RouteYaml::pop3("r", UP)
            .proxy_protocol()
            .allow(&["10.1.0.0/16", "192.0.2.0/24"])
            .security("none")
            .auth("apop")
            .to_string(),
        format!("  - name: r\n    protocol: pop3\n    listen: {{ address: 127.0.0.1:0, proxy_protocol: true }}\n    allow: [10.1.0.0/16, 192.0.2.0/24]\n    upstream: {{ address: \"{UP}\", security: none, auth: apop }}\n")
    );
    assert_eq!(
        RouteYaml::smtp("s", UP)
            .security("none")
            .auth("none")
            .timeouts("upstream_reply: 2s")
            .limits("data_min_rate: 1000")
            .to_string(),
        format!("  - name: s\n    protocol: smtp\n    listen: 127.0.0.1:0\n    upstream: {{ address: \"{UP}\", security: none, auth: none }}\n    timeouts: {{ upstream_reply: 2s }}\n    limits: {{ data_min_rate: 1000 }}\n")
    );
}

#[test]
fn stored_accounts_and_devices() {
    assert_eq!(
        RouteYaml::smtp("s", UP)
            .security("none")
            .auth("cram-md5")
            .passthrough(false)
            .account(
                Account::upstream("alice", Secret::env("UP_PW"))
                    .local("scanner", Secret::file("/s/local_pw"))
            )
            .account(
                Account::upstream("alice", Secret::file("device_pw")).sources(&["127.0.0.9/32"])
            )
            .to_string(),
        format!("  - name: s\n    protocol: smtp\n    listen: 127.0.0.1:0\n    upstream: {{ address: \"{UP}\", security: none, auth: cram-md5 }}\n    credentials:\n      passthrough: false\n      accounts:\n        - {{ local_user: scanner, local_password_file: \"/s/local_pw\", upstream_user: alice, upstream_password_env: UP_PW }}\n        - {{ sources: [127.0.0.9/32], upstream_user: alice, upstream_password_file: \"device_pw\" }}\n")
    );
}

#[test]
fn oauth_accounts_and_state_settings() {
    let cc = OAuth::custom("postern-app", "https://127.0.0.1:8443/token")
        .grant("client_credentials")
        .client_secret(Secret::file("/s/cs"))
        .ca(Path::new("/s/ca.pem"))
        .scopes(&["mail"]);
    let device = OAuth::new("microsoft", "9e5f94bc")
        .device_authorization_url("https://idp/devicecode")
        .client_secret(Secret::env("M365_SECRET"))
        .token_store(Path::new("/var/lib/postern/p.token"));
    let route = RouteYaml::smtp("s", UP)
        .security("starttls")
        .auth("xoauth2")
        .account(Account::oauth("alice", cc).local("scanner", Secret::file("/s/local_pw")))
        .account(Account::oauth("printer@x", device).sources(&["127.0.0.9/32"]));
    assert_eq!(
        route.to_string(),
        format!("  - name: s\n    protocol: smtp\n    listen: 127.0.0.1:0\n    upstream: {{ address: \"{UP}\", security: starttls, auth: xoauth2 }}\n    credentials:\n      accounts:\n        - {{ local_user: scanner, local_password_file: \"/s/local_pw\", upstream_user: alice, oauth: {{ provider: custom, client_id: postern-app, grant: client_credentials, client_secret_file: \"/s/cs\", token_url: \"https://127.0.0.1:8443/token\", ca: \"/s/ca.pem\", scopes: [mail] }} }}\n        - {{ sources: [127.0.0.9/32], upstream_user: printer@x, oauth: {{ provider: microsoft, client_id: 9e5f94bc, client_secret_env: M365_SECRET, device_authorization_url: \"https://idp/devicecode\", token_store: \"/var/lib/postern/p.token\" }} }}\n")
    );
    let yaml = GatewayYaml::new()
        .state_dir(Path::new("/var/lib/postern"))
        .state_key(Secret::file("/s/state.key"))
        .limits("sessions_per_client: 100")
        .route(route.clone())
        .to_string();
    assert_eq!(
        yaml,
        format!("state_dir: \"/var/lib/postern\"\nstate_key_file: \"/s/state.key\"\nlimits: {{ sessions_per_client: 100 }}\nroutes:\n{route}")
    );
    assert!(GatewayYaml::new()
        .state_key(Secret::env("POSTERN_STATE_KEY"))
        .to_string()
        .starts_with("state_key_env: POSTERN_STATE_KEY\nroutes:\n"));
    // And postern reads it (files are read later, when routes are prepared).
    let config = common::config(&yaml);
    assert_eq!(config.routes.len(), 1);
    assert!(config.has_oauth_accounts());
    assert_eq!(
        config.state_key_file.as_deref(),
        Some(Path::new("/s/state.key"))
    );
}

#[test]
fn whole_configurations() {
    let p = RouteYaml::pop3("p", UP).security("none").auth("apop");
    let s = RouteYaml::smtp("s", UP).security("none").auth("cram-md5");
    assert_eq!(p.yaml(), format!("routes:\n{p}"));
    assert_eq!(
        routes_yaml(&[p.clone(), s.clone()]),
        format!("routes:\n{p}{s}")
    );
    assert_eq!(
        GatewayYaml::new()
            .limits("sessions: 1000, sessions_per_client: 1000")
            .timeouts("login_total: 1s")
            .route(p.clone())
            .route(s.clone())
            .to_string(),
        format!("limits: {{ sessions: 1000, sessions_per_client: 1000 }}\ntimeouts: {{ login_total: 1s }}\nroutes:\n{p}{s}")
    );
    assert_eq!(
        GatewayYaml::new()
            .timeouts("tls_handshake: 4s")
            .route(p.clone())
            .to_string(),
        format!("timeouts: {{ tls_handshake: 4s }}\nroutes:\n{p}")
    );
    // And postern reads them, an IMAP route with a plain-text LOGIN too.
    let i = RouteYaml::imap("i", UP).security("none").auth("login");
    let config = common::config(
        &GatewayYaml::new()
            .limits("total_sessions: 3")
            .route(p)
            .route(s)
            .route(i)
            .to_string(),
    );
    assert_eq!(config.routes.len(), 3);
}
