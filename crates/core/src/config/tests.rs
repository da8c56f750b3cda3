//! Parsing and validation tests (files are read in `prepare`'s tests).

use std::path::Path;

use super::validate::{listens_overlap, tracing_subscriber_filter_ok};
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
admin: { listen: 0.0.0.0:9725 }
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
        let e = load(&format!("timeouts: {{ connect: \"{bad}\" }}\nroutes: []\n")).expect_err(bad);
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

#[test]
fn the_default_allow_list_is_loopback_only() {
    let c = load("routes:\n  - name: a\n    protocol: pop3\n    listen: 127.0.0.1:1\n    upstream: { address: h:1, auth: apop, security: none }\n")
        .expect("valid");
    let nets = c.routes[0].allow_list();
    let allows = |ip: &str| {
        let ip: std::net::IpAddr = ip.parse().expect("ip");
        nets.iter().any(|n| n.contains(&ip))
    };
    assert!(allows("127.0.0.1") && allows("127.9.9.9") && allows("::1"));
    assert!(!allows("10.0.0.1") && !allows("0.0.0.0") && !allows("::2") && !allows("192.168.1.1"));
}

#[test]
fn each_oauth_account_has_its_own_token_store() {
    let account = |user: &str, extra: &str| {
        format!("{{ {user}oauth: {{ provider: google, client_id: c{extra} }} }}")
    };
    let yaml = |a: &str, b: &str| {
        format!(
            "state_dir: /var/lib/postern\nstate_key_env: K\nroutes:\n  - name: s\n    protocol: smtp\n    listen: 127.0.0.1:1\n    upstream: {{ address: h:465, auth: xoauth2 }}\n    credentials:\n      accounts:\n        - {a}\n        - {b}\n"
        )
    };
    let local =
        |name: &str| format!("local_user: {name}, local_password_env: P, upstream_user: bob, ");
    let device = |name: &str| format!("sources: [10.0.0.9/32], upstream_user: {name}, ");
    // Distinct default names: fine.
    assert_eq!(
        problems(&yaml(
            &account(&local("scanner"), ""),
            &account(&device("alice"), "")
        )),
        Vec::<String>::new()
    );
    // A local user and a device named alike: the same default file.
    let p = problems(&yaml(
        &account(&local("alice"), ""),
        &account(&device("alice"), ""),
    ));
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].contains("route \"s\": credentials.accounts[1].oauth.token_store: /var/lib/postern/s.alice.token is also the token store of route \"s\" account alice"),
        "{p:?}"
    );
    // One explicit file for two accounts.
    let store = ", token_store: /t/one.token";
    let p = problems(&yaml(
        &account(&local("scanner"), store),
        &account(&device("alice"), store),
    ));
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].contains("/t/one.token is also the token store of route \"s\" account scanner"),
        "{p:?}"
    );
}
