//! `postern probe`: each route connected exactly as a session would, with a
//! verdict that says why a route will not work; no credential sent unless
//! `--login`.

mod common;

use common::{config, routes_yaml, secret_file, Account, RouteYaml, Secret};
use postern_testkit::{
    CapaBehaviour, FakePop3, FakeSecurity, FakeSmtp, Pop3Event, Pop3Script, SmtpScript, TempDir,
    TestPki,
};

fn verdicts(reports: &[postern_core::probe::Probe]) -> Vec<(String, bool, String)> {
    reports
        .iter()
        .map(|r| (r.route.clone(), r.will_work(), r.verdict()))
        .collect()
}

#[tokio::test]
async fn each_failure_has_its_verdict_and_nothing_is_sent_without_login() {
    let pki = TestPki::new();
    let dir = TempDir::new("postern-probe");
    let ca = pki.write_ca_pem(dir.path());
    // POP3S with a good certificate: will work, TLS details reported.
    let good = FakePop3::start(
        Pop3Script::new()
            .security(FakeSecurity::Tls(pki.server_config()))
            .credentials("alice", "wonderland"),
    )
    .await;
    // STLS route whose server hides STLS: stripped.
    let stripped = FakePop3::start(
        Pop3Script::new()
            .security(FakeSecurity::Starttls(pki.server_config()))
            .capa(CapaBehaviour::WithoutStls),
    )
    .await;
    // STLS route that upgrades properly: will work, CAPA before and after TLS.
    let upgraded =
        FakePop3::start(Pop3Script::new().security(FakeSecurity::Starttls(pki.server_config())))
            .await;
    // SMTP route wanting CRAM-MD5 from a server offering PLAIN only.
    let plain_only = FakeSmtp::start(SmtpScript::new().auth_mechanisms(&["PLAIN"])).await;
    // Nothing listens here.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let yaml = routes_yaml(&[
        RouteYaml::pop3("good", good.addr())
            .security("tls")
            .auth("user")
            .ca(&ca)
            .server_name("localhost"),
        RouteYaml::pop3("stripped", stripped.addr())
            .security("starttls")
            .auth("user")
            .ca(&ca)
            .server_name("localhost"),
        RouteYaml::pop3("upgraded", upgraded.addr())
            .security("starttls")
            .auth("user")
            .ca(&ca)
            .server_name("localhost"),
        RouteYaml::smtp("cram", plain_only.addr())
            .security("none")
            .auth("cram-md5"),
        RouteYaml::pop3("gone", closed)
            .security("none")
            .auth("apop"),
    ]);
    let reports = postern::probe(&config(&yaml), None, false)
        .await
        .expect("probe");
    let v = verdicts(&reports);
    assert_eq!(v.len(), 5, "{v:?}");
    let find = |name: &str| {
        reports
            .iter()
            .find(|r| r.route == name)
            .unwrap_or_else(|| panic!("no report for {name}"))
    };

    let r = find("good");
    assert!(r.will_work(), "{}", r.to_text());
    let tls = r.tls.as_ref().expect("TLS details");
    assert!(tls.negotiated.starts_with("TLSv1_3 TLS13_"), "{tls:?}");
    assert!(tls.names.iter().any(|n| n == "localhost"), "{tls:?}");
    assert!(tls.days_left > 0, "{tls:?}");
    // The handshakes the probe made are in the handshake histogram.
    let metrics = postern_core::metrics::encode();
    assert!(
        metrics.lines().any(|l| l
            .starts_with("postern_tls_handshake_duration_seconds_count{side=\"upstream\"}")
            && !l.ends_with(" 0")),
        "no upstream TLS handshake counted:\n{metrics}"
    );
    assert!(
        r.capabilities.iter().any(|c| c == "USER"),
        "{:?}",
        r.capabilities
    );
    assert!(r.login.is_none());
    assert!(
        !good.events().iter().any(
            |e| matches!(e, Pop3Event::Command(c) if c.starts_with("USER") || c.starts_with("PASS"))
        ),
        "a credential was sent without --login: {:?}",
        good.events()
    );

    assert!(
        r.greeting.as_deref().is_some_and(|g| !g.is_empty()),
        "{r:?}"
    );

    let r = find("upgraded");
    assert!(r.will_work(), "{}", r.to_text());
    let before = r.before_tls.as_ref().expect("CAPA before STLS");
    assert!(before.iter().any(|c| c == "STLS"), "{before:?}");
    assert!(
        !r.capabilities.iter().any(|c| c == "STLS"),
        "{:?}",
        r.capabilities
    );
    assert!(r.tls.is_some());

    let r = find("stripped");
    assert!(!r.will_work());
    assert!(
        r.verdict().contains("does not offer STLS"),
        "{}",
        r.verdict()
    );

    let r = find("cram");
    assert!(!r.will_work());
    assert!(
        r.verdict().contains("does not offer AUTH CRAM-MD5"),
        "{}",
        r.verdict()
    );

    let r = find("gone");
    assert!(!r.will_work());
    assert!(r.verdict().contains("cannot connect"), "{}", r.verdict());

    // One route by name.
    let only = postern::probe(&config(&yaml), Some("good"), false)
        .await
        .expect("probe");
    assert_eq!(verdicts(&only).len(), 1);
}

#[tokio::test]
async fn login_uses_the_stored_account_and_reports_a_refusal() {
    let dir = TempDir::new("postern-probe-login");
    let right = secret_file(&dir, "right", "wonderland");
    let wrong = secret_file(&dir, "wrong", "not-the-password");
    let fake = FakePop3::start(Pop3Script::new().credentials("alice", "wonderland")).await;
    let route = |name: &str, pw: &std::path::Path| {
        RouteYaml::pop3(name, fake.addr())
            .security("none")
            .auth("user")
            .account(Account::upstream("alice", Secret::file(pw)).local("local", Secret::file(pw)))
    };
    let passthrough = RouteYaml::pop3("passthrough", fake.addr())
        .security("none")
        .auth("user");
    let yaml = routes_yaml(&[route("right", &right), route("wrong", &wrong), passthrough]);
    let reports = postern::probe(&config(&yaml), None, true)
        .await
        .expect("probe");
    let find = |name: &str| reports.iter().find(|r| r.route == name).expect("report");
    assert_eq!(find("right").login.as_deref(), Some("accepted"));
    assert!(find("right").will_work(), "{}", find("right").to_text());
    assert!(!find("wrong").will_work());
    assert!(
        find("wrong")
            .verdict()
            .contains("refused the stored account"),
        "{}",
        find("wrong").verdict()
    );
    assert!(find("passthrough")
        .login
        .as_deref()
        .is_some_and(|l| l.contains("not tried")));
    assert!(find("passthrough").will_work());
}

#[test]
fn the_command_exits_non_zero_when_a_route_will_not_work() {
    let dir = TempDir::new("postern-probe-cli");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let file = dir.write(
        "p.yaml",
        routes_yaml(&[RouteYaml::pop3("gone", closed)
            .security("none")
            .auth("apop")]),
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_postern"))
        .args(["probe", "--json", "-c"])
        .arg(&file)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v[0]["route"], "gone");
    assert_eq!(v[0]["will_work"], false);
    assert!(
        v[0]["verdict"]
            .as_str()
            .is_some_and(|s| s.contains("cannot connect")),
        "{v}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_postern"))
        .args(["probe", "-c"])
        .arg(&file)
        .arg("nosuchroute")
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no route named"));
}
