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
pub use route::{routes_yaml, Account, GatewayYaml, RouteYaml, Secret};

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
