//! Stored-account secrets: file permissions, and `*_env` variables read
//! from the environment of the process.

use super::*;

/// A password file every user can read: `check` warns (naming the file and
/// its mode, as ssh does) but accepts the file; `run` logs the same warning.
/// A 0600 file gets no warning.
#[cfg(unix)]
#[test]
fn world_readable_secret_files_are_warned_about_not_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = TempDir::new("postern-cli-secret-mode");
    let secret = dir.write("office_pw", "s3cret-value\n");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    // Relative to the configuration file.
    let file = dir.write(
        "p.yaml",
        RouteYaml::pop3("office", "h:110")
            .listen(addr)
            .security("none")
            .auth("apop")
            .account(
                Account::upstream("o", Secret::file("office_pw"))
                    .local("u", Secret::file("office_pw")),
            )
            .yaml(),
    );
    let chmod = |mode: u32| {
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(mode)).expect("chmod");
    };
    let check = || {
        let out = postern()
            .args(["check", "-c"])
            .arg(&file)
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "a warning is not a failure: {stderr}");
        stderr
    };

    chmod(0o644);
    let stderr = check();
    let path = secret.display().to_string();
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warnings.len(), 2, "one per key naming the file:\n{stderr}");
    for (line, key) in warnings
        .iter()
        .zip(["upstream_password_file", "local_password_file"])
    {
        for want in ["route \"office\"", key, "0644", &path, "chmod 600"] {
            assert!(line.contains(want), "{want:?} missing: {line}");
        }
    }
    assert!(!stderr.contains("s3cret"), "{stderr}");

    // `run` logs it before anything else (here it then fails to bind).
    let out = postern()
        .args(["run", "-c"])
        .arg(&file)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("WARN") && log.contains("0644") && log.contains(&path),
        "{log}"
    );

    chmod(0o600);
    let stderr = check();
    assert!(!stderr.contains("warning"), "{stderr}");
    let out = postern()
        .args(["run", "-c"])
        .arg(&file)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!log.contains("too open"), "{log}");
    assert!(
        log.contains("in use"),
        "the run got as far as binding: {log}"
    );
    drop(taken);
}

/// Kills and reaps a `postern run` child when the test ends, passed or not.
struct RunningBinary(std::process::Child);

impl Drop for RunningBinary {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `*_password_env` secrets come from the environment of `postern run`.
/// The variables are set on the child process only: tests run in parallel
/// threads of one process and never change its environment (the in-process
/// tests use `*_password_file`). `check` without them names both and
/// fails; with them a local user logs in with the local password and
/// postern logs in upstream with the stored one.
#[tokio::test]
async fn account_secrets_from_the_environment_of_the_process() {
    use postern_testkit::{FakePop3, LineClient, Pop3Event, Pop3Script};

    const LOCAL: &str = "POSTERN_CLI_TEST_LOCAL_PW";
    const UPSTREAM: &str = "POSTERN_CLI_TEST_UPSTREAM_PW";
    let fake = FakePop3::start(Pop3Script::new().credentials("alice", "wonderland")).await;
    let port = common::free_port();
    let dir = TempDir::new("postern-cli-env");
    let file = dir.write(
        "p.yaml",
        RouteYaml::pop3("r", fake.addr())
            .listen(loopback(port))
            .security("none")
            .auth("apop")
            .account(
                Account::upstream("alice", Secret::env(UPSTREAM))
                    .local("scanner", Secret::env(LOCAL)),
            )
            .yaml(),
    );

    let out = postern()
        .args(["check", "-c"])
        .arg(&file)
        .env_remove(LOCAL)
        .env_remove(UPSTREAM)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(LOCAL) && stderr.contains(UPSTREAM),
        "{stderr}"
    );
    let out = postern()
        .args(["check", "-c"])
        .arg(&file)
        .env(LOCAL, "local secret")
        .env(UPSTREAM, "wonderland")
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let log = dir.path().join("log");
    let _postern = RunningBinary(
        postern()
            .args(["run", "-c"])
            .arg(&file)
            .env(LOCAL, "local secret")
            .env(UPSTREAM, "wonderland")
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut c = loop {
        match LineClient::connect(loopback(port)).await {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!(
                "postern did not listen: {e}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            ),
        }
    };
    let greeting = c.read_line().await.expect("greeting");
    assert!(greeting.starts_with("+OK"), "{greeting}");
    c.command("USER scanner").await.expect("user");
    let r = c.command("PASS local secret").await.expect("pass");
    assert!(
        r.starts_with("+OK"),
        "{r}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    fake.expect_event(
        "the stored upstream login",
        |e| matches!(e, Pop3Event::LoggedIn { method, .. } if method == "APOP"),
        Duration::from_secs(5),
    )
    .await;
    assert!(c.command("QUIT").await.expect("quit").starts_with("+OK"));
}
