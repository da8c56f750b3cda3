//! `postern run`: serving, SIGTERM, descriptor exhaustion, bind errors
//! (and waiting for a missing address), refused-connection logging.

use super::*;

/// `postern run` on a config whose upstream cannot resolve: it starts,
/// greets, answers the login -ERR [SYS/TEMP], and stops cleanly on SIGTERM.
#[cfg(unix)]
#[test]
fn run_starts_answers_and_stops_on_sigterm() {
    let dir = TempDir::new("postern-cli-run");
    let (mut child, _, stream) = run_route(
        &dir,
        RouteYaml::pop3("r", "pop.nonexistent.invalid:995").auth("user"),
        &[],
        "info",
    );
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
    let exit = common::wait_exit(&mut child);
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
        GatewayYaml::new()
            .timeouts("tls_handshake: 4s")
            .route(
                RouteYaml::pop3("r", "127.0.0.1:9")
                    .listen(loopback(port))
                    .listen_tls("tls", &cert, &key)
                    .security("none")
                    .auth("apop"),
            )
            .to_string(),
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
    drop(common::wait_listening(port));
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
        RouteYaml::pop3("busy", "h:110")
            .listen(addr)
            .security("none")
            .auth("apop")
            .yaml(),
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

/// A listen address the machine does not have (as at boot, before the
/// network is up; 192.0.2.1 is TEST-NET-1, never local): plain `run`
/// fails at once and says so.
#[test]
fn a_missing_listen_address_fails_at_once_without_wait_for_addresses() {
    let dir = TempDir::new("postern-cli-noaddr");
    let file = dir.write(
        "p.yaml",
        RouteYaml::pop3("lan", "h:110")
            .listen("192.0.2.1:1110")
            .allow(&["192.0.2.0/24"])
            .auth("user")
            .yaml(),
    );
    let started = Instant::now();
    let out = postern()
        .args(["run", "-c"])
        .arg(&file)
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(5), "no waiting");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("lan") && stderr.contains("192.0.2.1:1110"),
        "{stderr}"
    );
}

/// `run --wait-for-addresses` keeps trying the missing address (one
/// warning per try, every 2 s) instead of exiting, and SIGTERM still stops
/// it cleanly while it waits, after SIGHUPs too.
#[cfg(unix)]
#[test]
fn wait_for_addresses_retries_a_missing_address_until_stopped() {
    let dir = TempDir::new("postern-cli-waitaddr");
    let file = dir.write(
        "p.yaml",
        RouteYaml::pop3("lan", "h:110")
            .listen("192.0.2.1:1110")
            .allow(&["192.0.2.0/24"])
            .auth("user")
            .yaml(),
    );
    let mut child = postern()
        .args(["run", "--wait-for-addresses", "-c"])
        .arg(&file)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    // Lines arrive on a thread so that a silent process fails the test
    // instead of hanging it.
    let (tx, lines) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = Vec::new();
    let mut tries = 0;
    let deadline = Instant::now() + Duration::from_secs(15);
    while tries < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                if line.contains("listen address not available yet") {
                    tries += 1;
                }
                log.push(line);
            }
            Err(e) => panic!("{e}: fewer than two tries logged: {log:#?}"),
        }
    }
    assert!(
        child.try_wait().expect("wait").is_none(),
        "still running after two tries"
    );
    // Reload signals while nothing takes reloads yet (more than the queue
    // holds) must not block the signal handler: SIGTERM still works.
    for _ in 0..6 {
        let hup = Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .expect("kill -HUP");
        assert!(hup.success());
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = common::wait_exit(&mut child);
    assert!(exit.success(), "{exit:?}: {log:#?}");
    log.extend(lines.iter());
    let _ = reader.join();
    let log = log.join("\n");
    assert!(
        log.contains("192.0.2.1:1110"),
        "the address is named: {log}"
    );
    assert!(
        log.contains("stopped while waiting for listen addresses"),
        "{log}"
    );
}

/// A flood of refused connections is one log line with the client, then a
/// count (here reported when SIGTERM drains it, before its 10 s are up).
#[cfg(unix)]
#[test]
fn refused_connections_are_counted_not_logged_one_by_one() {
    let dir = TempDir::new("postern-cli-refusals");
    let (mut child, port, mut first) = run_route(
        &dir,
        RouteYaml::pop3("r", "h:110")
            .allow(&["10.0.0.0/8"])
            .security("none")
            .auth("apop"),
        &[],
        "warn",
    );
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

/// `--log-format json` overrides the file: every line on stderr is one
/// JSON object, the end-of-session summary included.
#[cfg(unix)]
#[test]
fn log_format_json_from_the_command_line() {
    let dir = TempDir::new("postern-cli-json");
    let (child, _, stream) = run_route(
        &dir,
        RouteYaml::pop3("r", "pop.nonexistent.invalid:995").auth("user"),
        &["--log-format", "json"],
        "info",
    );
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut reader = BufReader::new(&stream);
    let mut line = String::new();
    reader.read_line(&mut line).expect("greeting");
    (&stream).write_all(b"QUIT\r\n").expect("quit");
    line.clear();
    reader.read_line(&mut line).expect("bye");
    drop(reader);
    drop(stream);
    std::thread::sleep(Duration::from_millis(200));
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let out = child.wait_with_output().expect("wait");
    let log = String::from_utf8_lossy(&out.stderr);
    let mut summary = false;
    for l in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        if v["fields"]["message"] == "session ended" {
            assert_eq!(v["fields"]["outcome"], "quit", "{l}");
            summary = true;
        }
    }
    assert!(summary, "no JSON session summary in:\n{log}");
}

/// A log line that cannot be written (stderr a closed pipe: a log
/// collector gone) is dropped; it must not take the signal handler down
/// with it, so SIGTERM still stops the gateway.
#[cfg(unix)]
#[test]
fn sigterm_stops_the_gateway_even_when_stderr_is_a_closed_pipe() {
    let dir = TempDir::new("postern-cli-epipe");
    let (mut child, port, _first) = run_route(
        &dir,
        RouteYaml::pop3("r", "pop.nonexistent.invalid:995").auth("user"),
        &[],
        "debug",
    );
    // The log collector goes away: every later log line hits EPIPE.
    drop(child.stderr.take());
    // A session logs on the broken pipe too.
    let _ = TcpStream::connect(("127.0.0.1", port));
    std::thread::sleep(Duration::from_millis(200));
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let status = common::wait_exit(&mut child);
    assert!(status.success(), "exit {status:?}");
}

/// The gateway gives memory freed after a burst back to the system while
/// it idles (issue 14): jemalloc's background purging thread must be
/// running in `postern run` (a process without it keeps its peak RSS).
#[cfg(target_os = "linux")]
#[test]
fn run_has_the_allocator_purging_thread() {
    let dir = TempDir::new("postern-cli-alloc");
    let (mut child, _, _stream) = run_route(
        &dir,
        RouteYaml::pop3("r", "pop.nonexistent.invalid:995").auth("user"),
        &[],
        "info",
    );
    let tasks = format!("/proc/{}/task", child.id());
    let thread_names = || -> Vec<String> {
        std::fs::read_dir(&tasks)
            .expect("task list")
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .map(|n| n.trim().to_owned())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut names = thread_names();
    while !names.iter().any(|n| n.starts_with("jemalloc_bg")) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        names = thread_names();
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        names.iter().any(|n| n.starts_with("jemalloc_bg")),
        "no jemalloc background thread among {names:?}"
    );
}
