//! The `postern` command as a user runs it: `check`, `run`, and secrets
//! from files and the environment. The tests are grouped in `check`, `run`
//! and `secrets`; this file holds what they share.

#[path = "../common/mod.rs"]
mod common;

mod check;
mod run;
mod secrets;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Account, GatewayYaml, RouteYaml, Secret};
use postern_testkit::TempDir;

fn postern() -> Command {
    Command::new(env!("CARGO_BIN_EXE_postern"))
}

fn repo() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// 127.0.0.1 on `port`.
fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}
