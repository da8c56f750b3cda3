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
/// greets, answers the login -ERR [SYS/TEMP], and stops cleanly on SIGTERM.
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
    let stream = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("postern did not listen: {e}"),
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    // postern greets itself; the upstream is resolved at login.
    let mut reader = BufReader::new(&stream);
    let mut greeting = String::new();
    reader.read_line(&mut greeting).expect("greeting");
    assert!(
        greeting.starts_with("+OK postern POP3 gateway ready"),
        "{greeting}"
    );
    (&stream).write_all(b"USER a\r\n").expect("send USER");
    let mut user = String::new();
    reader.read_line(&mut user).expect("reply to USER");
    assert!(user.starts_with("+OK"), "USER is answered locally: {user}");
    (&stream).write_all(b"PASS b\r\n").expect("send PASS");
    let mut pass = String::new();
    reader.read_line(&mut pass).expect("reply to PASS");
    assert!(pass.starts_with("-ERR [SYS/TEMP]"), "{pass}");
    let _ = (&stream).write_all(b"QUIT\r\n");

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

/// Descriptor exhaustion: with a tiny `ulimit -n`, accept() fails with
/// EMFILE while clients keep coming. postern must back off instead of
/// spinning a CPU, and serve again once descriptors free up.
#[cfg(target_os = "linux")]
#[test]
fn descriptor_exhaustion_backs_off_and_recovers() {
    use std::net::TcpListener;

    // A TLS listener: each silent client holds exactly one descriptor while
    // postern waits for its handshake, so the table stays full.
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let dir = TempDir::new("postern-emfile");
    let pki = postern_testkit::TestPki::new();
    let (cert, key) = pki.write_leaf_pem(dir.path());
    let file = dir.write(
        "p.yaml",
        format!(
            "timeouts: {{ tls_handshake: 4s }}\nroutes:\n  - name: r\n    protocol: pop3\n    listen: {{ address: 127.0.0.1:{port}, security: tls, certificate: \"{}\", key: \"{}\" }}\n    upstream: {{ address: \"127.0.0.1:9\", security: none, auth: apop }}\n",
            cert.display(),
            key.display()
        ),
    );
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n 32 && exec \"$0\" run -c \"{}\"",
            file.display()
        ))
        .arg(env!("CARGO_BIN_EXE_postern"))
        .env("RUST_LOG", "warn")
        // A file, not a pipe: a full pipe would block postern and hide a spin.
        .stderr(std::fs::File::create(dir.path().join("log")).expect("log file"))
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "postern did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    // Far more silent clients than descriptors.
    let clients: Vec<TcpStream> = (0..60)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let cpu = |pid: u32| -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .expect("fields")
            .split_whitespace()
            .collect();
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
    };
    let before = cpu(child.id());
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu(child.id()) - before; // clock ticks, usually 100 per second
    let log = std::fs::read_to_string(dir.path().join("log")).expect("log");
    assert!(
        log.contains("accept failed"),
        "EMFILE was never hit, so the test proved nothing:\n{log}"
    );
    assert!(
        used < 20,
        "postern used {used} ticks of CPU in 2 s while out of descriptors: spinning"
    );
    drop(clients);
    // Recovery: a new connection is handled again (plain text on a TLS
    // port is refused by closing, instead of sitting in the backlog).
    std::thread::sleep(Duration::from_millis(500));
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect after recovery");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(b"hello\r\n").expect("write");
    let mut rest = Vec::new();
    let handled = s.read_to_end(&mut rest).is_ok();
    assert!(handled, "no answer after the descriptors were freed");
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// A listener that cannot bind names the route, the address and the reason.
#[test]
fn a_busy_listen_address_is_named_with_the_reason() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let dir = TempDir::new("postern-cli-bind");
    let file = dir.write(
        "p.yaml",
        format!("routes:\n  - name: busy\n    protocol: pop3\n    listen: {addr}\n    upstream: {{ address: h:110, security: none, auth: apop }}\n"),
    );
    let out = postern()
        .args(["run", "-c"])
        .arg(&file)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("busy") && stderr.contains(&addr.to_string()),
        "{stderr}"
    );
    assert!(stderr.to_lowercase().contains("in use"), "{stderr}");
}

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
    let file = dir.write(
        "p.yaml",
        format!("routes:\n  - name: office\n    protocol: pop3\n    listen: {addr}\n    upstream: {{ address: h:110, security: none, auth: apop }}\n    credentials:\n      accounts:\n        - {{ local_user: u, local_password_file: office_pw, upstream_user: o, upstream_password_file: office_pw }}\n"),
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

/// A flood of refused connections is one log line with the client, then a
/// count (here reported when SIGTERM drains it, before its 10 s are up).
#[cfg(unix)]
#[test]
fn refused_connections_are_counted_not_logged_one_by_one() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let dir = TempDir::new("postern-cli-refusals");
    let file = dir.write(
        "p.yaml",
        format!("routes:\n  - name: r\n    protocol: pop3\n    listen: 127.0.0.1:{port}\n    allow: [10.0.0.0/8]\n    upstream: {{ address: h:110, security: none, auth: apop }}\n"),
    );
    let mut child = postern()
        .args(["run", "-c"])
        .arg(&file)
        .env("RUST_LOG", "warn")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut first = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("postern did not listen: {e}"),
        }
    };
    let refused = |s: &mut TcpStream| {
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut reply = String::new();
        s.read_to_string(&mut reply).expect("refusal");
        assert!(reply.starts_with("-ERR"), "{reply}");
    };
    refused(&mut first);
    for _ in 0..40 {
        refused(&mut TcpStream::connect(("127.0.0.1", port)).expect("connect"));
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let mut log = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut log)
        .expect("log");
    assert!(child.wait().expect("wait").success(), "{log}");
    let alone = log
        .lines()
        .filter(|l| l.contains("refused: address not in the route's allow list"))
        .count();
    assert_eq!(alone, 1, "one line for the first refusal:\n{log}");
    assert!(
        log.contains("40 connections refused in the last")
            && log.contains("s: address not in the route's allow list"),
        "the rest are counted:\n{log}"
    );
    assert!(log.lines().count() < 10, "{log}");
}
