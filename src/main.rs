//! The `postern` command. All the work is in the library (`postern::run`).
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use postern::config::Config;
use tokio_util::sync::CancellationToken;

/// postern: plain POP3 in, APOP / POP3S / STLS / SASL out.
#[derive(Debug, Parser)]
#[command(name = "postern", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway until SIGTERM or SIGINT.
    Run {
        /// Configuration file (default: postern.yaml, then config/postern.yaml).
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Validate the configuration and print the route table.
    Check {
        /// Configuration file (default: postern.yaml, then config/postern.yaml).
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

const DEFAULT_PATHS: [&str; 2] = ["postern.yaml", "config/postern.yaml"];

fn find_config(given: Option<PathBuf>) -> Result<PathBuf, String> {
    if let Some(p) = given {
        return Ok(p);
    }
    DEFAULT_PATHS
        .iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .map(Path::to_path_buf)
        .ok_or_else(|| {
            format!(
                "no configuration file given and none found at {}; pass one with -c FILE (see config/postern.example.yaml)",
                DEFAULT_PATHS.join(" or ")
            )
        })
}

fn load(given: Option<PathBuf>) -> Result<Config, String> {
    let path = find_config(given)?;
    Config::load(&path).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match load(config).and_then(|c| {
            // The same step `run` takes: every file is read, once.
            let prepared = postern::prepare::prepare(&c).map_err(|e| e.to_string())?;
            Ok((c, prepared))
        }) {
            Ok((c, prepared)) => {
                // Warnings, not problems: the file is valid and `run` would start.
                for w in &prepared.warnings {
                    eprintln!("postern: warning: {w}");
                }
                print!("{}", postern::route_table(&c));
                println!("configuration OK: {} route(s)", c.routes.len());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("postern: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config } => {
            let config = match load(config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("postern: {e}");
                    return ExitCode::FAILURE;
                }
            };
            postern::init_logging(&config.log);
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("postern: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(async {
                let shutdown = CancellationToken::new();
                tokio::spawn(signals(shutdown.clone()));
                match postern::run(config, shutdown).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        tracing::error!("{e}");
                        eprintln!("postern: {e}");
                        ExitCode::FAILURE
                    }
                }
            })
        }
    }
}

/// First SIGTERM/SIGINT: drain gracefully. Second: exit at once.
async fn signals(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        for n in 0.. {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            if n == 0 {
                tracing::info!(
                    signal = name,
                    "stopping: no new sessions; waiting for running ones"
                );
                shutdown.cancel();
            } else {
                tracing::warn!(signal = name, "second signal: exiting now");
                std::process::exit(130);
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        shutdown.cancel();
    }
}
