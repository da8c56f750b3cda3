//! `postern-bench`: postern against stunnel 5 and a direct TLS client,
//! on fast fake POP3S/SMTPS upstreams, all on loopback (issue 14).
//!
//! ```text
//!                     ┌──────── postern (plain in, TLS out) ─────────┐
//!  load generator ────┼──────── stunnel (client mode) ───────────────┼──► fake POP3S / SMTPS
//!   (tokio, this      └──────── direct: TLS from the client itself ──┘    (tokio-rustls, this
//!    process)                                                               process, own runtime)
//! ```
//!
//! `cargo run --release -p postern-bench -- [--quick] [--json FILE]`
//! builds postern (release), installs Debian's stunnel4 if missing (as
//! root), runs interleaved rounds and prints the ratio table. See
//! docs/PERFORMANCE.md for what each metric means.
#![forbid(unsafe_code)]

mod client;
mod error;
mod fake;
mod measure;
mod phases;
mod procfs;
mod profile;
mod proxies;
mod report;
mod run;
mod stats;
mod wire;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use postern_testkit::{TempDir, TestPki};
use serde::Serialize;

use crate::error::{BenchError, Result};
use crate::profile::Profile;
use crate::run::{Phase, Setup};

/// postern against stunnel and direct TLS, on fake upstreams (loopback only).
#[derive(Debug, Parser)]
#[command(name = "postern-bench", version, about)]
struct Options {
    /// Small sizes and counts, two rounds: validates the benchmark in 1-2 minutes.
    #[arg(long)]
    quick: bool,
    /// Also write every raw number to this file as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Rounds (default: 3, or 2 with --quick).
    #[arg(long, value_name = "N")]
    rounds: Option<usize>,
    /// Only these phases (default: all).
    #[arg(long, value_enum, value_delimiter = ',', value_name = "PHASE,...")]
    only: Vec<Phase>,
    /// Use this postern binary instead of building it.
    #[arg(long, value_name = "PATH")]
    postern: Option<PathBuf>,
    /// Use this stunnel binary instead of looking for (or installing) stunnel4.
    #[arg(long, value_name = "PATH")]
    stunnel: Option<PathBuf>,
    /// Keep configurations and logs here (default: a temporary directory, removed).
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    let opts = Options::parse();
    if cfg!(debug_assertions) {
        eprintln!(
            "postern-bench: a debug build would make the load generator the bottleneck; \
             run it with `cargo run --release -p postern-bench`"
        );
        return ExitCode::FAILURE;
    }
    match bench(opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("postern-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn runtime(name: &str) -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(name)
        .enable_all()
        .build()
        .map_err(|e| BenchError::Setup(format!("tokio runtime: {e}")))
}

fn bench(opts: Options) -> Result<()> {
    let profile = profile(&opts);
    open_files(&profile)?;
    let (stunnel, stunnel_version) = proxies::find_stunnel(opts.stunnel.as_deref())?;
    let postern = match &opts.postern {
        Some(p) => p.clone(),
        None => proxies::build_postern()?,
    };
    let temp;
    let work_dir = match &opts.work_dir {
        Some(d) => {
            std::fs::create_dir_all(d)
                .map_err(|e| BenchError::Setup(format!("create {}: {e}", d.display())))?;
            d.clone()
        }
        None => {
            temp = TempDir::new("bench");
            temp.path().to_path_buf()
        }
    };
    let upstream_rt = runtime(measure::UPSTREAM_THREADS)?;
    let load_rt = runtime(measure::LOADGEN_THREADS)?;
    let pki = TestPki::new();
    let body: Arc<[u8]> = wire::message_body(profile.message_bytes).into();
    let setup = Arc::new(Setup {
        profile: profile.clone(),
        phases: phases(&opts),
        postern: postern.clone(),
        stunnel: stunnel.clone(),
        ca: pki.write_ca_pem(&work_dir),
        work_dir,
        upstream: fake::FakeUpstreams::start(upstream_rt.handle(), upstream_tls(&pki)?, &body)?,
        client_tls: pki.client_config(),
        body,
        ticks_per_second: procfs::clock_ticks_per_second(),
    });
    let started = std::time::Instant::now();
    let load_before = procfs::loadavg();
    eprintln!(
        "postern-bench: {} run, {} round(s); postern {}; {stunnel_version}; load {load_before}",
        profile.name,
        profile.rounds,
        postern.display()
    );
    let results = load_rt.block_on(async {
        // On a worker thread, so the load generator's CPU is its runtime's.
        let task = tokio::spawn(run::run(setup.clone()));
        match tokio::time::timeout(profile.total, task).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(BenchError::Setup(format!("the run panicked: {e}"))),
            Err(_) => Err(BenchError::Timeout("the whole run")),
        }
    })?;
    let summary = report::summarise(&results, profile.rounds);
    println!("{}", report::render(&summary, profile.rounds));
    let machine = procfs::Machine::read();
    println!(
        "machine: {} cpus ({}), load average before {load_before}, after {}; run took {:.0} s",
        machine.cpus,
        machine.cpu_model,
        procfs::loadavg(),
        started.elapsed().as_secs_f64()
    );
    if let Some(path) = &opts.json {
        let record = Record {
            profile: &profile,
            machine,
            postern: postern.display().to_string(),
            postern_revision: revision(),
            stunnel: stunnel.display().to_string(),
            stunnel_version,
            upstream_tls: setup.upstream.stats.suites(),
            upstream_protocol_errors: setup.upstream.stats.protocol_errors(),
            seconds: started.elapsed().as_secs_f64(),
            summary: &summary,
            results: &results,
        };
        write_json(path, &record)?;
    }
    drop(load_rt);
    drop(upstream_rt);
    Ok(())
}

fn profile(opts: &Options) -> Profile {
    let mut profile = if opts.quick {
        Profile::quick()
    } else {
        Profile::full()
    };
    if let Some(r) = opts.rounds {
        profile.rounds = r.max(1);
    }
    profile
}

fn phases(opts: &Options) -> Vec<Phase> {
    if opts.only.is_empty() {
        vec![
            Phase::Memory,
            Phase::Slow,
            Phase::Sessions,
            Phase::Retr,
            Phase::Data,
            Phase::Noop,
        ]
    } else {
        opts.only.clone()
    }
}

/// Raises the open-files limit for the idle sessions (and the proxies,
/// which inherit it); fails if the machine does not allow enough.
fn open_files(profile: &Profile) -> Result<()> {
    let needed = profile.open_files_needed();
    match procfs::raise_open_files(needed.max(32_768)) {
        Some((soft, _)) if soft >= needed => Ok(()),
        other => Err(BenchError::Setup(format!(
            "the open-files limit is {other:?} (soft, hard) but this run needs {needed}: \
             run as root or raise `ulimit -n`"
        ))),
    }
}

fn write_json(path: &std::path::Path, record: &Record<'_>) -> Result<()> {
    let json = serde_json::to_string_pretty(record)
        .map_err(|e| BenchError::Setup(format!("JSON: {e}")))?;
    std::fs::write(path, json)
        .map_err(|e| BenchError::Setup(format!("write {}: {e}", path.display())))?;
    eprintln!("postern-bench: raw numbers in {}", path.display());
    Ok(())
}

/// The JSON file: the run's conditions, the summary and every sample.
#[derive(Debug, Serialize)]
struct Record<'a> {
    profile: &'a Profile,
    machine: procfs::Machine,
    postern: String,
    postern_revision: String,
    stunnel: String,
    stunnel_version: String,
    /// Negotiated "version suite" on the upstream, with counts.
    upstream_tls: std::collections::BTreeMap<String, u64>,
    upstream_protocol_errors: u64,
    seconds: f64,
    summary: &'a report::Summary,
    results: &'a run::Results,
}

/// The fake upstreams' TLS: the test PKI's leaf, stateless tickets.
fn upstream_tls(pki: &TestPki) -> Result<Arc<rustls::ServerConfig>> {
    let mut config = (*pki.server_config()).clone();
    config.ticketer = rustls::crypto::ring::Ticketer::new()
        .map_err(|e| BenchError::Setup(format!("TLS ticketer: {e}")))?;
    Ok(Arc::new(config))
}

/// The workspace's git revision (with `-dirty` if it has changes).
fn revision() -> String {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    std::process::Command::new("git")
        .args(["-C", root, "describe", "--always", "--dirty"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}
