//! `postern health`: what a container HEALTHCHECK runs. With an admin
//! endpoint it asks `/healthz`; without one it connects to every listener.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::RouteYaml;
use postern_testkit::TempDir;

fn health(file: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_postern"))
        .args(["health", "-c"])
        .arg(file)
        .output()
        .expect("health")
}

/// Runs the gateway on `file` until `health` says so, then stops it.
fn with_gateway(file: &std::path::Path, check: impl Fn() -> bool) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_postern"))
        .args(["run", "-c"])
        .arg(file)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut ok = false;
    while Instant::now() < deadline && !ok {
        ok = check();
        if !ok {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(ok, "postern health never reported healthy");
}

#[test]
fn health_follows_the_listeners_or_the_admin_endpoint() {
    let dir = TempDir::new("postern-health");
    let port = common::free_port();
    let route = RouteYaml::pop3("r", "pop.nonexistent.invalid:995")
        .listen(format!("127.0.0.1:{port}"))
        .auth("user")
        .yaml();

    // Listeners only.
    let file = dir.write("plain.yaml", route.clone());
    let down = health(&file);
    assert!(!down.status.success(), "healthy with nothing running");
    assert!(
        String::from_utf8_lossy(&down.stderr).contains("route \"r\""),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    with_gateway(&file, || {
        let out = health(&file);
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1 listener(s)")
    });

    // With an admin endpoint.
    let admin = common::free_port();
    let file = dir.write(
        "admin.yaml",
        route.replacen(
            "routes:",
            &format!("admin: {{ listen: \"127.0.0.1:{admin}\" }}\nroutes:"),
            1,
        ),
    );
    assert!(!health(&file).status.success());
    with_gateway(&file, || {
        let out = health(&file);
        out.status.success()
            && String::from_utf8_lossy(&out.stdout).contains("/healthz answered 200")
    });
}
