//! The `postern` command as a user runs it: `check`, `run`, and secrets
//! from files and the environment. The tests are grouped in `check`, `run`
//! and `secrets`; this file holds what they share.

#[path = "../common/mod.rs"]
mod common;

mod check;
mod run;
mod secrets;

// The tests that talk to a running `postern run` stop it with SIGTERM, so
// they and what only they use are Unix-only (the Windows build is
// cross-compiled and its tests are not run).
#[cfg(unix)]
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
#[cfg(unix)]
use std::net::TcpStream;
use std::process::Command;
#[cfg(unix)]
use std::process::Stdio;
use std::time::{Duration, Instant};

#[cfg(unix)]
use common::GatewayYaml;
use common::{Account, RouteYaml, Secret};
use postern_testkit::TempDir;

fn postern() -> Command {
    Command::new(env!("CARGO_BIN_EXE_postern"))
}

fn repo() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `postern run ARGS -c FILE` on one route (given its listen address here,
/// a free port on loopback), logging at `log` to a pipe. Returns once the
/// route listens, with the first connection to it.
#[cfg(unix)]
fn run_route(
    dir: &TempDir,
    route: RouteYaml,
    args: &[&str],
    log: &str,
) -> (std::process::Child, u16, TcpStream) {
    let port = common::free_port();
    let file = dir.write("p.yaml", route.listen(loopback(port)).yaml());
    let child = postern()
        .arg("run")
        .args(args)
        .arg("-c")
        .arg(&file)
        .env("RUST_LOG", log)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let first = common::wait_listening(port);
    (child, port, first)
}

/// 127.0.0.1 on `port`.
fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}
