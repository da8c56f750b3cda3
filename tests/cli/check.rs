//! `postern check`, the default configuration search, `--version` and
//! `--help`.

use super::*;

#[test]
fn check_prints_the_route_table_of_the_example() {
    let out = postern()
        .args(["check", "-c", "config/postern.example.yaml"])
        .current_dir(repo())
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "ROUTE",
        "PROTOCOL",
        "LISTEN",
        "UPSTREAM",
        "SECURITY",
        "AUTH",
        "isp-pop-apop",
        "127.0.0.1:3999",
        "pop.example.net:110",
        "apop",
    ] {
        assert!(stdout.contains(want), "{want} missing:\n{stdout}");
    }
}

#[test]
fn check_fails_with_every_problem_named() {
    let dir = TempDir::new("postern-cli");
    // No allow-list on 0.0.0.0, and a password in clear without saying so.
    let file = dir.write(
        "bad.yaml",
        RouteYaml::pop3("a", "h:110")
            .listen("0.0.0.0:3999")
            .security("none")
            .auth("user")
            .plaintext_password(false)
            .yaml(),
    );
    let out = postern()
        .args(["check", "-c"])
        .arg(&file)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.yaml"), "{stderr}");
    assert!(stderr.contains("route \"a\""), "{stderr}");
    assert!(stderr.contains("allow"), "{stderr}");
    assert!(stderr.contains("in clear"), "{stderr}");
    assert!(stderr.contains("2 problems"), "{stderr}");

    let file = dir.write("syntax.yaml", "routes:\n  - name: a\n    protocl: pop3\n");
    let out = postern()
        .args(["check", "-c"])
        .arg(&file)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 3"), "{stderr}");
    assert!(stderr.contains("protocl"), "{stderr}");

    let out = postern()
        .args(["check", "-c", "/nonexistent/postern.yaml"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}

#[test]
fn default_config_search_order() {
    let dir = TempDir::new("postern-cli-default");
    let out = postern()
        .arg("check")
        .current_dir(dir.path())
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("postern.yaml"));

    std::fs::create_dir(dir.path().join("config")).expect("mkdir");
    let route = |name: &str| {
        RouteYaml::pop3(name, "h:110")
            .listen("127.0.0.1:3999")
            .security("none")
            .auth("apop")
            .yaml()
    };
    dir.write("config/postern.yaml", route("from-config-dir"));
    let out = postern()
        .arg("check")
        .current_dir(dir.path())
        .output()
        .expect("run");
    assert!(String::from_utf8_lossy(&out.stdout).contains("from-config-dir"));
    dir.write("postern.yaml", route("from-cwd"));
    let out = postern()
        .arg("check")
        .current_dir(dir.path())
        .output()
        .expect("run");
    assert!(String::from_utf8_lossy(&out.stdout).contains("from-cwd"));
}

#[test]
fn version_and_help() {
    let out = postern().arg("--version").output().expect("run");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    let out = postern().arg("--help").output().expect("run");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("run") && help.contains("check"), "{help}");
}
