//! Shared harness: the whole gateway in-process on 127.0.0.1:0, the
//! typed route builder (`route`) and secret files.
#![allow(dead_code)]

mod route;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use postern::config::Config;
use postern::Gateway;
use postern_testkit::{LineClient, TempDir};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

// Each test target uses its own part of the builder.
#[allow(unused_imports)]
pub use route::{routes_yaml, Account, GatewayYaml, OAuth, RouteYaml, Secret};

/// A running gateway; [`Running::stop`] drains it and surfaces panics.
pub struct Running {
    pub addrs: Vec<(String, SocketAddr)>,
    pub shutdown: CancellationToken,
    handle: JoinHandle<()>,
}

impl Running {
    pub fn addr(&self, route: &str) -> SocketAddr {
        self.addrs
            .iter()
            .find_map(|(r, a)| (r == route).then_some(*a))
            .unwrap_or_else(|| panic!("no route {route}"))
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.handle)
            .await
            .expect("gateway drained in time")
            .expect("gateway task did not panic");
    }
}

pub fn config(yaml: &str) -> Config {
    Config::from_yaml(yaml, Path::new("test.yaml")).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

pub async fn start(yaml: &str) -> Running {
    start_with_grace(yaml, Duration::from_secs(2)).await
}

pub async fn start_with_grace(yaml: &str, grace: Duration) -> Running {
    let config = config(yaml);
    let gateway = Gateway::bind(&config).await.expect("bind");
    let addrs = gateway.local_addrs();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(gateway.serve(shutdown.clone(), grace));
    Running {
        addrs,
        shutdown,
        handle,
    }
}

/// postern's own POP3 greeting (a route with local secrets appends an APOP
/// timestamp): sent at once, before any upstream connection.
pub const POP3_GREETING: &str = "+OK postern POP3 gateway ready";

/// postern's own SMTP greeting: sent at once, before any upstream connection.
pub const SMTP_GREETING: &str = "220 postern ESMTP gateway ready";

/// Reads postern's own POP3 greeting (asserting it is [`POP3_GREETING`]),
/// sends `USER user` (answered locally with `+OK`), then `PASS password`,
/// and returns the reply to PASS: the point where the upstream is opened,
/// so where an upstream failure shows.
pub async fn pop3_greet_and_pass(c: &mut LineClient, user: &str, password: &str) -> String {
    let greeting = c.read_line().await.expect("greeting");
    assert!(
        greeting.starts_with(POP3_GREETING),
        "not postern's own greeting: {greeting}"
    );
    let r = c.command(&format!("USER {user}")).await.expect("user");
    assert!(r.starts_with("+OK"), "USER is answered locally: {r}");
    c.command(&format!("PASS {password}")).await.expect("pass")
}

/// Writes a password file `name` in `dir` (mode 0600, as a secret file
/// should be: postern warns about one every user can read) holding
/// `value` and a newline, and returns its path.
pub fn secret_file(dir: &TempDir, name: &str, value: &str) -> PathBuf {
    use std::io::Write as _;
    let path = dir.path().join(name);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&path).expect("create secret file");
    writeln!(file, "{value}").expect("write secret file");
    path
}

/// A port free on 127.0.0.1 right now (for tests that run the binary on a
/// fixed address).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Connects to 127.0.0.1:`port` once something listens there (10 s).
pub fn wait_listening(port: u16) -> std::net::TcpStream {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => return s,
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => panic!("nothing listened on port {port}: {e}"),
        }
    }
}

/// Waits (10 s) for a child process to exit; its status.
pub fn wait_exit(child: &mut std::process::Child) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the process did not exit in 10 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An SMTP client of `addr` that has greeted, logged in as alice /
/// wonderland (`235`), given a sender and a recipient and had `354` to
/// DATA: the next bytes it sends are message data.
pub async fn smtp_into_data(addr: SocketAddr) -> postern_testkit::LineClient {
    let mut c = postern_testkit::LineClient::connect(addr)
        .await
        .expect("connect");
    let greeting = c.read_smtp_reply().await.expect("greeting");
    assert!(greeting[0].starts_with(SMTP_GREETING), "{greeting:?}");
    c.smtp_command("EHLO c").await.expect("ehlo");
    let auth = format!(
        "AUTH PLAIN {}",
        postern_testkit::sasl_plain_response("", "alice", "wonderland")
    );
    let r = c.smtp_command(&auth).await.expect("auth");
    assert!(r[0].starts_with("235"), "{r:?}");
    for cmd in ["MAIL FROM:<a@example.org>", "RCPT TO:<b@example.org>"] {
        let r = c.smtp_command(cmd).await.expect(cmd);
        assert!(r[0].starts_with("250"), "{cmd}: {r:?}");
    }
    let r = c.smtp_command("DATA").await.expect("data");
    assert!(r[0].starts_with("354"), "{r:?}");
    c
}
