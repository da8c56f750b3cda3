//! Reload (SIGHUP, `postern reload`): a new configuration is applied while
//! sessions run. Transfers in flight complete byte-identical, an unchanged
//! listener never refuses a connection, new routes answer, removed routes
//! stop accepting, and an invalid file changes nothing.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{routes_yaml, RouteYaml};
use postern::config::Config;
use postern::{Gateway, StartError};
use postern_testkit::{dot_stuff, FakePop3, FakeSmtp, LineClient, Pop3Script, SmtpScript};
use tokio_util::sync::CancellationToken;

fn config(yaml: &str) -> Config {
    Config::from_yaml(yaml, Path::new("reload.yaml")).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

fn pop3(name: &str, up: SocketAddr) -> RouteYaml {
    RouteYaml::pop3(name, up).security("none").auth("user")
}

fn smtp(name: &str, up: SocketAddr) -> RouteYaml {
    RouteYaml::smtp(name, up).security("none").auth("plain")
}

fn big_message() -> Vec<u8> {
    let mut body = b"Subject: big\r\n\r\n".to_vec();
    let line: Vec<u8> = (0..76u8).map(|i| b'!' + (i % 90)).chain(*b"\r\n").collect();
    while body.len() < 4 * 1024 * 1024 {
        body.extend_from_slice(&line);
        body.extend_from_slice(b".a line that needs stuffing\r\n");
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_sessions_and_sockets_adds_and_removes_routes() {
    let big = big_message();
    let pop = FakePop3::start(
        Pop3Script::new()
            .credentials("alice", "wonderland")
            .message(big.clone()),
    )
    .await;
    let mail = FakeSmtp::start(SmtpScript::new().credentials("alice", "wonderland")).await;

    let v1 = config(&routes_yaml(&[
        pop3("p", pop.addr()),
        smtp("s", mail.addr()),
    ]));
    let gateway = Gateway::bind(&v1).await.expect("bind");
    let shutdown = CancellationToken::new();
    let served = tokio::spawn(
        gateway
            .clone()
            .serve(shutdown.clone(), Duration::from_secs(5)),
    );
    let p_addr = gateway.addr("p").expect("p");
    let s_addr = gateway.addr("s").expect("s");

    // A RETR of 4 MB in flight: status read, body not yet.
    let mut retr = LineClient::connect(p_addr).await.expect("connect");
    retr.set_timeout(Duration::from_secs(20));
    retr.read_line().await.expect("greeting");
    retr.command("USER alice").await.expect("user");
    assert!(retr
        .command("PASS wonderland")
        .await
        .expect("pass")
        .starts_with("+OK"));
    assert!(retr
        .command("RETR 1")
        .await
        .expect("retr")
        .starts_with("+OK"));

    // A message half sent.
    let mut data = common::smtp_into_data(s_addr).await;
    data.send_raw(b"Subject: during a reload\r\n\r\nfirst half\r\n")
        .await
        .expect("half");

    // New connections to the kept listener, all through the reload.
    let hammering = Arc::new(AtomicBool::new(true));
    let greeted = Arc::new(AtomicUsize::new(0));
    let hammer = {
        let (hammering, greeted) = (hammering.clone(), greeted.clone());
        tokio::spawn(async move {
            let mut failures = Vec::new();
            while hammering.load(Ordering::Relaxed) {
                match LineClient::connect(p_addr).await {
                    Ok(mut c) => match c.read_line().await {
                        Ok(g) if g.starts_with("+OK") => {
                            greeted.fetch_add(1, Ordering::Relaxed);
                        }
                        other => failures.push(format!("{other:?}")),
                    },
                    Err(e) => failures.push(e.to_string()),
                }
            }
            failures
        })
    };

    // v2: p changed (a setting), s unchanged, q new.
    let q_up = FakePop3::start(Pop3Script::new().credentials("bob", "builder")).await;
    let v2 = config(&routes_yaml(&[
        pop3("p", pop.addr()).timeouts("client_idle: 9m"),
        smtp("s", mail.addr()),
        pop3("q", q_up.addr()),
    ]));
    let applied = gateway.reload(&v2).await.expect("valid reload");
    assert_eq!(applied.added, vec!["q".to_owned()]);
    let mut kept = applied.kept.clone();
    kept.sort();
    assert_eq!(kept, vec!["p".to_owned(), "s".to_owned()]);
    assert!(applied.removed.is_empty());
    assert_eq!(
        gateway.addr("p"),
        Some(p_addr),
        "the kept listener kept its socket"
    );

    tokio::time::sleep(Duration::from_millis(200)).await;
    hammering.store(false, Ordering::Relaxed);
    let failures = hammer.await.expect("hammer");
    assert!(
        failures.is_empty(),
        "refused during the reload: {failures:?}"
    );
    assert!(greeted.load(Ordering::Relaxed) > 0);

    // The new route answers and logs in through its own upstream.
    let mut q = LineClient::connect(gateway.addr("q").expect("q"))
        .await
        .expect("connect q");
    q.read_line().await.expect("greeting");
    q.command("USER bob").await.expect("user");
    assert!(q
        .command("PASS builder")
        .await
        .expect("pass")
        .starts_with("+OK"));

    // The transfers in flight complete, byte-identical.
    let mut want = dot_stuff(&big);
    want.extend_from_slice(b".\r\n");
    assert!(
        retr.read_multiline().await.expect("body") == want,
        "RETR body changed"
    );
    data.send_raw(b"second half\r\n.\r\n").await.expect("end");
    assert!(data.read_smtp_reply().await.expect("final")[0].starts_with("250"));
    let got = mail.accepted_messages();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].raw,
        b"Subject: during a reload\r\n\r\nfirst half\r\nsecond half\r\n".to_vec()
    );

    // v3: p removed. It stops accepting; its running session goes on.
    let v3 = config(&routes_yaml(&[
        smtp("s", mail.addr()),
        pop3("q", q_up.addr()),
    ]));
    let applied = gateway.reload(&v3).await.expect("valid reload");
    assert_eq!(applied.removed, vec!["p".to_owned()]);
    assert_eq!(gateway.addr("p"), None);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        tokio::net::TcpStream::connect(p_addr).await.is_err(),
        "a removed route still accepts"
    );
    assert!(retr.command("STAT").await.expect("stat").starts_with("+OK"));
    assert!(retr.command("QUIT").await.expect("quit").starts_with("+OK"));

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .expect("stopped")
        .expect("no panic");
}

#[tokio::test]
async fn an_invalid_configuration_or_a_busy_address_changes_nothing() {
    let pop = FakePop3::start(Pop3Script::new().credentials("alice", "wonderland")).await;
    let v1 = config(&pop3("p", pop.addr()).yaml());
    let gateway = Gateway::bind(&v1).await.expect("bind");
    let shutdown = CancellationToken::new();
    let served = tokio::spawn(
        gateway
            .clone()
            .serve(shutdown.clone(), Duration::from_secs(2)),
    );
    let p_addr = gateway.addr("p").expect("p");

    // A file that parses but cannot be prepared: a CA file that is not there.
    let broken = config(&routes_yaml(&[
        RouteYaml::pop3("p", pop.addr())
            .security("tls")
            .auth("user")
            .ca(Path::new("/nonexistent/ca.pem")),
        RouteYaml::pop3("n", pop.addr())
            .security("none")
            .auth("apop"),
    ]));
    match gateway.reload(&broken).await {
        Err(StartError::Config(e)) => {
            let text = e.to_string();
            assert!(
                text.contains("upstream.ca") && text.contains("/nonexistent/ca.pem"),
                "{text}"
            );
        }
        other => panic!("expected the problems, got {other:?}"),
    }
    // A new route whose address is taken: the bind fails before anything changes.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").expect("squat");
    let taken = squatter.local_addr().expect("addr");
    let clash = config(&routes_yaml(&[
        pop3("p", pop.addr()).timeouts("client_idle: 9m"),
        RouteYaml::pop3("n", pop.addr())
            .listen(taken)
            .security("none")
            .auth("apop"),
    ]));
    match gateway.reload(&clash).await {
        Err(StartError::Bind(e)) => assert_eq!(e.address, taken),
        other => panic!("expected a bind error, got {other:?}"),
    }
    // Still the old configuration: p serves on its socket, n does not exist.
    assert_eq!(gateway.addr("p"), Some(p_addr));
    assert_eq!(gateway.addr("n"), None);
    let mut c = LineClient::connect(p_addr).await.expect("connect");
    c.read_line().await.expect("greeting");
    c.command("USER alice").await.expect("user");
    assert!(c
        .command("PASS wonderland")
        .await
        .expect("pass")
        .starts_with("+OK"));
    assert!(c.command("QUIT").await.expect("quit").starts_with("+OK"));

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .expect("stopped")
        .expect("no panic");
}

/// Waits until `port` greets with `+OK`.
fn greets(port: u16) -> bool {
    use std::io::{BufRead, BufReader};
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if let Ok(s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut line = String::new();
            if BufReader::new(&s).read_line(&mut line).is_ok() && line.starts_with("+OK") {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A failing assertion must not leave the gateway running.
struct KillOnDrop(Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The binary: `run --pid-file`, then `postern reload` (which checks the
/// file first) and a bare SIGHUP with a broken file.
#[test]
fn sighup_and_postern_reload_apply_a_new_file_and_refuse_a_broken_one() {
    use std::process::{Command, Stdio};
    let dir = postern_testkit::TempDir::new("postern-reload-cli");
    let (p, q) = (common::free_port(), common::free_port());
    let route = |name: &str, port: u16| {
        RouteYaml::pop3(name, "pop.nonexistent.invalid:995")
            .listen(SocketAddr::from(([127, 0, 0, 1], port)))
            .auth("user")
    };
    let file = dir.write("p.yaml", route("p", p).yaml());
    let pid_file = dir.path().join("postern.pid");
    let mut child = KillOnDrop(Some(
        Command::new(env!("CARGO_BIN_EXE_postern"))
            .args(["run", "-c"])
            .arg(&file)
            .arg("--pid-file")
            .arg(&pid_file)
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn"),
    ));
    assert!(greets(p), "p did not start");
    assert!(pid_file.is_file(), "no pid file");

    // A good new file through `postern reload`: q starts, p stays.
    std::fs::write(&file, routes_yaml(&[route("p", p), route("q", q)])).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_postern"))
        .args(["reload", "--pid-file"])
        .arg(&pid_file)
        .arg("-c")
        .arg(&file)
        .output()
        .expect("reload");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        greets(q),
        "the new route q does not answer after the reload"
    );
    assert!(greets(p), "p stopped answering");

    // A broken file: `postern reload` refuses to signal...
    std::fs::write(&file, "routes:\n  - name: p\n    protocol: imap4\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_postern"))
        .args(["reload", "--pid-file"])
        .arg(&pid_file)
        .arg("-c")
        .arg(&file)
        .output()
        .expect("reload");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not reloading"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // ...and a bare SIGHUP is refused by the gateway, which keeps serving.
    let pid = std::fs::read_to_string(&pid_file).expect("pid");
    let hup = Command::new("kill")
        .args(["-HUP", pid.trim()])
        .status()
        .expect("kill");
    assert!(hup.success());
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        greets(p) && greets(q),
        "the running configuration stopped serving"
    );

    let term = Command::new("kill")
        .args(["-TERM", pid.trim()])
        .status()
        .expect("kill");
    assert!(term.success());
    let out = child
        .0
        .take()
        .expect("child")
        .wait_with_output()
        .expect("wait");
    assert!(out.status.success(), "exit {:?}", out.status);
    let log = String::from_utf8_lossy(&out.stderr);
    for want in ["configuration reloaded", "reload refused", "imap4"] {
        assert!(log.contains(want), "{want:?} missing from the log:\n{log}");
    }
    assert!(!pid_file.exists(), "the pid file was not removed at exit");
}
