//! Fault injection: a small TCP proxy between postern and the fake upstream
//! cuts the connection after N bytes from the server, for N across the
//! whole session; another proxy injects one stray line (`+OK STRAY`,
//! `250 STRAY`) after the k-th complete reply of the server, for every k.
//! Whatever the fault, postern must never report success the upstream did
//! not give: no `250` for a message the upstream did not accept, no
//! complete RETR the upstream did not complete, no `+OK` for a DELE the
//! upstream refused, and never a stray line as the reply to a command.
//!
//! The cutting proxy and its runs are in `cut`; the injecting proxy is in
//! `inject`, its runs in `stray`.

#[path = "../common/mod.rs"]
mod common;

mod cut;
mod inject;
mod stray;

use std::net::SocketAddr;
use std::time::Duration;

use common::{start, RouteYaml};
use postern_testkit::{FakePop3, FakeSmtp, LineClient, Pop3Script, SmtpScript};
