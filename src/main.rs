//! The `postern` command. All the work is in the library (`postern::run`).
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod oauth_cmd;

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
    /// Run the gateway until SIGTERM or SIGINT; SIGHUP reloads the file.
    Run {
        /// Configuration file (default: postern.yaml, then config/postern.yaml).
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Write the process id here (for `postern reload` and init systems).
        #[arg(long, value_name = "FILE")]
        pid_file: Option<PathBuf>,
        /// Log line format, overriding `log.format` in the file.
        #[arg(long, value_name = "FORMAT", value_parser = ["text", "json"])]
        log_format: Option<String>,
    },
    /// Connect to each route's upstream exactly as a session would and say
    /// whether the route will work (TLS, certificate, capabilities, the
    /// route's login method). No credential is sent unless --login.
    Probe {
        /// Configuration file (default: postern.yaml, then config/postern.yaml).
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Only this route.
        route: Option<String>,
        /// Also log in with the route's first stored account, then QUIT.
        #[arg(long)]
        login: bool,
        /// One JSON object per route (an array), for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Exit 0 if the running gateway is healthy: `GET /healthz` on the admin
    /// endpoint when one is configured, else a connection to every route's
    /// listener (for container health checks: a scratch image has no curl).
    Health {
        /// Configuration file (default: postern.yaml, then config/postern.yaml).
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Ask a running gateway to reload its configuration (sends SIGHUP to
    /// the process named in its pid file). The new file is checked first.
    Reload {
        /// The pid file the gateway was started with (`run --pid-file`).
        #[arg(long, value_name = "FILE")]
        pid_file: PathBuf,
        /// Check this configuration file before signalling (recommended:
        /// the one the gateway runs with).
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Validate the configuration and print the route table.
    Check {
        /// Configuration file (default: postern.yaml, then config/postern.yaml).
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Print the JSON Schema of the configuration file, for editors and
    /// validators (`postern schema > postern.schema.json`).
    Schema,
    /// OAuth2 accounts: make the state key, give consent, see their state.
    #[command(subcommand)]
    Oauth(OauthCommand),
}

#[derive(Debug, Subcommand)]
enum OauthCommand {
    /// Print a new key for `state_key_file` / `state_key_env` (base64 of
    /// 32 random bytes).
    Keygen,
    /// Sign in once for an account with `grant: device_code`: prints a URL
    /// and a code to enter on any device, waits for the approval, stores
    /// the refresh token encrypted. No browser is needed here.
    Login {
        /// Configuration file (default: postern.yaml, then config/postern.yaml).
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The route's name.
        route: String,
        /// The account: its `local_user`, or `upstream_user` for a device.
        account: String,
    },
    /// List every OAuth2 account: provider, grant, whether a token is
    /// stored, expiry, last refresh and last error (never a token).
    Status {
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
        Command::Run {
            config,
            pid_file,
            log_format,
        } => run(config, pid_file, log_format.as_deref()),
        Command::Reload { pid_file, config } => reload(&pid_file, config),
        Command::Health { config } => health(config),
        Command::Probe {
            config,
            route,
            login,
            json,
        } => probe(config, route.as_deref(), login, json),
        Command::Oauth(OauthCommand::Keygen) => oauth_cmd::keygen(),
        Command::Oauth(OauthCommand::Login {
            config,
            route,
            account,
        }) => match load(config) {
            Ok(c) => oauth_cmd::login(&c, &route, &account),
            Err(e) => {
                eprintln!("postern: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Oauth(OauthCommand::Status { config }) => match load(config) {
            Ok(c) => oauth_cmd::status(&c),
            Err(e) => {
                eprintln!("postern: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Schema => match postern::config::json_schema_text() {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("postern: cannot write the schema: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn run(config: Option<PathBuf>, pid_file: Option<PathBuf>, log_format: Option<&str>) -> ExitCode {
    let path = match find_config(config) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("postern: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("postern: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut log = config.log.clone();
    match log_format {
        Some("json") => log.format = postern::config::LogFormat::Json,
        Some(_) => log.format = postern::config::LogFormat::Text,
        None => {}
    }
    postern::init_logging(&log);
    if let Some(pid_file) = &pid_file {
        if let Err(e) = std::fs::write(pid_file, format!("{}\n", std::process::id())) {
            eprintln!(
                "postern: cannot write the pid file {}: {e}",
                pid_file.display()
            );
            return ExitCode::FAILURE;
        }
    }
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    let code = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let (reload_tx, reloads) = tokio::sync::mpsc::channel(4);
        let handler = tokio::spawn(signals(shutdown.clone(), reload_tx, path));
        // Without its signal handler the gateway could never be stopped
        // politely: if the handler ever dies, drain and stop now.
        let watchdog = shutdown.clone();
        tokio::spawn(async move {
            if handler.await.is_err() {
                tracing::error!("the signal handler failed; stopping");
                watchdog.cancel();
            }
        });
        match postern::run(config, shutdown, reloads).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e}");
                eprintln!("postern: {e}");
                ExitCode::FAILURE
            }
        }
    });
    if let Some(pid_file) = &pid_file {
        let _ = std::fs::remove_file(pid_file);
    }
    code
}

/// The tokio runtime for `run` and `probe`; `None` (and a message) if the
/// machine cannot give us one.
fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("postern: cannot start the runtime: {e}");
            None
        }
    }
}

/// `postern health`: see [`Command::Health`].
fn health(config: Option<PathBuf>) -> ExitCode {
    let config = match load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("postern: {e}");
            return ExitCode::FAILURE;
        }
    };
    match postern::health::check(&config, std::time::Duration::from_secs(3)) {
        Ok(what) => {
            println!("healthy: {what}");
            ExitCode::SUCCESS
        }
        Err(why) => {
            eprintln!("postern: unhealthy: {why}");
            ExitCode::FAILURE
        }
    }
}

/// `postern probe`: exit 0 when every probed route will work.
fn probe(config: Option<PathBuf>, route: Option<&str>, login: bool, json: bool) -> ExitCode {
    let config = match load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("postern: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(name) = route {
        if !config.routes.iter().any(|r| r.name == name) {
            eprintln!("postern: no route named {name:?} in the configuration");
            return ExitCode::FAILURE;
        }
    }
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    let reports = match runtime.block_on(postern::probe(&config, route, login)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("postern: {e}");
            return ExitCode::FAILURE;
        }
    };
    if json {
        let items: Vec<serde_json::Value> = reports
            .iter()
            .map(|r| {
                let mut v = serde_json::to_value(r).unwrap_or_default();
                v["will_work"] = r.will_work().into();
                v["verdict"] = r.verdict().into();
                v
            })
            .collect();
        println!("{}", serde_json::Value::Array(items));
    } else {
        for r in &reports {
            print!("{}", r.to_text());
        }
    }
    if reports.iter().all(|r| r.will_work()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `postern reload`: check the file, then SIGHUP the running process.
fn reload(pid_file: &Path, config: Option<PathBuf>) -> ExitCode {
    if let Some(path) = config {
        let checked = Config::load(&path)
            .map_err(|e| e.to_string())
            .and_then(|c| postern::prepare::prepare(&c).map_err(|e| e.to_string()));
        if let Err(e) = checked {
            eprintln!("postern: {e}");
            eprintln!("postern: not reloading: the running gateway keeps its configuration");
            return ExitCode::FAILURE;
        }
    }
    let pid = match std::fs::read_to_string(pid_file) {
        Ok(text) => match text.trim().parse::<u32>() {
            Ok(pid) if pid > 1 => pid,
            _ => {
                eprintln!("postern: {} does not hold a process id", pid_file.display());
                return ExitCode::FAILURE;
            }
        },
        Err(e) => {
            eprintln!("postern: cannot read {}: {e}", pid_file.display());
            return ExitCode::FAILURE;
        }
    };
    match std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
    {
        Ok(s) if s.success() => {
            println!("postern: asked process {pid} to reload; its log says whether the new configuration was applied");
            ExitCode::SUCCESS
        }
        Ok(_) => {
            eprintln!(
                "postern: process {pid} (from {}) is not running",
                pid_file.display()
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("postern: cannot run kill: {e}");
            ExitCode::FAILURE
        }
    }
}

type Reloads = tokio::sync::mpsc::Sender<Result<Config, postern::config::ConfigError>>;

/// First SIGTERM/SIGINT: drain gracefully. Second: exit at once. SIGHUP:
/// read the configuration file again and hand it to the gateway.
async fn signals(shutdown: CancellationToken, reloads: Reloads, path: PathBuf) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        let mut stopping = false;
        loop {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
                _ = hup.recv() => {
                    tracing::info!(file = %path.display(), "SIGHUP: reloading the configuration");
                    let _ = reloads.send(Config::load(&path)).await;
                    continue;
                }
            };
            if !stopping {
                tracing::info!(
                    signal = name,
                    "stopping: no new sessions; waiting for running ones"
                );
                shutdown.cancel();
                stopping = true;
            } else {
                tracing::warn!(signal = name, "second signal: exiting now");
                std::process::exit(130);
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (reloads, path);
        let _ = tokio::signal::ctrl_c().await;
        shutdown.cancel();
    }
}
