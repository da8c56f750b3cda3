//! The `postern` command as a user runs it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use postern_testkit::TempDir;

fn postern() -> Command {
    Command::new(env!("CARGO_BIN_EXE_postern"))
}

fn repo() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
}

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
    let file = dir.write(
        "bad.yaml",
        "routes:\n  - name: a\n    protocol: pop3\n    listen: 0.0.0.0:3999\n    upstream: { address: h:110, security: none, auth: user }\n",
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
        format!("routes:\n  - name: {name}\n    protocol: pop3\n    listen: 127.0.0.1:3999\n    upstream: {{ address: h:110, security: none, auth: apop }}\n")
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

/// `postern run` on a config whose upstream cannot resolve: it starts,
/// answers -ERR [SYS/TEMP], and stops cleanly on SIGTERM.
#[cfg(unix)]
#[test]
fn run_starts_answers_and_stops_on_sigterm() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let dir = TempDir::new("postern-cli-run");
    let file = dir.write(
        "p.yaml",
        format!("routes:\n  - name: r\n    protocol: pop3\n    listen: 127.0.0.1:{port}\n    upstream: {{ address: pop.nonexistent.invalid:995, auth: user }}\n"),
    );
    let mut child = postern()
        .args(["run", "-c"])
        .arg(&file)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stream = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("postern did not listen: {e}"),
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut greeting = String::new();
    BufReader::new(&stream)
        .read_line(&mut greeting)
        .expect("greeting");
    assert!(greeting.starts_with("-ERR [SYS/TEMP]"), "{greeting}");
    let _ = stream.write_all(b"QUIT\r\n");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "postern did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit:?}");
    let mut log = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut log)
        .expect("log");
    assert!(
        log.contains("route=r") || log.contains("route: r") || log.contains("\"r\""),
        "{log}"
    );
    assert!(log.contains("resolve"), "the cause is logged: {log}");
    assert!(log.contains("SIGTERM"), "{log}");
}
