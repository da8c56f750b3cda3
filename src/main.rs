//! The `postern` command. All the work is in the library (`postern::run`).
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod alloc;
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
        /// When a listen address is not (yet) one of this machine's, try
        /// again every 2 s instead of failing (started at boot before the
        /// network is up).
        #[arg(long)]
        wait_for_addresses: bool,
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
    /// Unix only; a Windows service reloads with
    /// `sc.exe control postern paramchange`.
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
    /// Run postern as a Windows service: install, uninstall, and the entry
    /// point the Service Control Manager starts.
    // Parsed everywhere (so it is tested everywhere); off Windows it is
    // hidden and says it exists only on Windows.
    #[cfg_attr(not(windows), command(hide = true))]
    Service {
        #[command(subcommand)]
        action: ServiceAction,
    },
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

#[derive(Debug, Subcommand)]
enum ServiceAction {
    /// Register an automatic (delayed) start service running
    /// `postern.exe service run -c FILE`, restarted on failure. Needs an
    /// Administrator prompt; the file is checked first.
    Install {
        /// Configuration file (made absolute: a service starts in
        /// C:\Windows\System32).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Service name.
        #[arg(long, value_name = "NAME", default_value = postern::service::DEFAULT_NAME)]
        name: String,
        /// Log file (default: postern.log next to the configuration file).
        #[arg(long, value_name = "PATH")]
        log_file: Option<PathBuf>,
    },
    /// Stop the service (sessions drain) and remove it.
    Uninstall {
        /// Service name.
        #[arg(long, value_name = "NAME", default_value = postern::service::DEFAULT_NAME)]
        name: String,
    },
    /// What the Service Control Manager starts (not for a console: use
    /// `postern run` there). Waits for listen addresses that do not exist
    /// yet; Stop drains sessions as SIGTERM does.
    Run {
        /// Configuration file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Service name.
        #[arg(long, value_name = "NAME", default_value = postern::service::DEFAULT_NAME)]
        name: String,
        /// Log file (default: postern.log next to the configuration file).
        #[arg(long, value_name = "PATH")]
        log_file: Option<PathBuf>,
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
    alloc::return_freed_memory();
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
            wait_for_addresses,
        } => {
            let missing = if wait_for_addresses {
                postern::MissingAddress::Wait
            } else {
                postern::MissingAddress::Fail
            };
            run(config, pid_file, log_format.as_deref(), missing)
        }
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
        Command::Service { action } => service(action),
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

fn run(
    config: Option<PathBuf>,
    pid_file: Option<PathBuf>,
    log_format: Option<&str>,
    missing: postern::MissingAddress,
) -> ExitCode {
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
    postern::init_logging(&log, postern::LogOutput::Stderr);
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
        match postern::run(config, shutdown, reloads, missing).await {
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

/// `postern service`: see [`ServiceAction`].
#[cfg(windows)]
fn service(action: ServiceAction) -> ExitCode {
    use postern::service;
    let outcome = match action {
        ServiceAction::Install {
            config,
            name,
            log_file,
        } => std::env::current_dir()
            .map_err(|e| format!("cannot read the current directory: {e}"))
            .and_then(|cwd| {
                service::Install::new(&name, &config, log_file.as_deref(), &cwd)
                    .map_err(|e| e.to_string())
            })
            .and_then(|plan| {
                // The service would fail at every boot on a broken file.
                let c = Config::load(&plan.config).map_err(|e| e.to_string())?;
                postern::prepare::prepare(&c).map_err(|e| e.to_string())?;
                service::install(&plan)
            }),
        ServiceAction::Uninstall { name } => service::uninstall(&name),
        ServiceAction::Run {
            config,
            name,
            log_file,
        } => return service::run(service::ServiceRun::new(name, config, log_file)),
    };
    match outcome {
        Ok(text) => {
            print!("{text}");
            if !text.ends_with('\n') {
                println!();
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("postern: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `postern service` off Windows.
#[cfg(not(windows))]
fn service(action: ServiceAction) -> ExitCode {
    let _ = action;
    eprintln!(
        "postern: `postern service` runs postern as a Windows service and exists only on \
         Windows; on Linux run `postern run` under systemd (dist/systemd/postern.service)"
    );
    ExitCode::FAILURE
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
    #[cfg(not(unix))]
    {
        let _ = pid_file;
        eprintln!(
            "postern: `postern reload` sends SIGHUP, which Windows does not have: \
             reload a service with `sc.exe control postern paramchange` (or restart it: \
             `sc.exe stop postern`, then `sc.exe start postern`); stop a `postern run` \
             in a console with Ctrl+C and start it again"
        );
        ExitCode::FAILURE
    }
    #[cfg(unix)]
    signal_reload(pid_file)
}

/// SIGHUP to the process named in `pid_file`.
#[cfg(unix)]
fn signal_reload(pid_file: &Path) -> ExitCode {
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
                    // Never wait here: while the gateway waits for its
                    // listen addresses (`--wait-for-addresses`) nothing
                    // takes reloads, and a blocked handler would miss SIGTERM.
                    if reloads.try_send(Config::load(&path)).is_err() {
                        tracing::warn!("reload not queued: earlier ones are still pending");
                    }
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
    // Windows: Ctrl+C in the console (a service is stopped through the
    // Service Control Manager instead: `postern::service`).
    #[cfg(not(unix))]
    {
        let _ = (reloads, path);
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!("cannot watch for Ctrl+C: {e}");
            return;
        }
        tracing::info!("Ctrl+C: stopping: no new sessions; waiting for running ones");
        shutdown.cancel();
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::warn!("second Ctrl+C: exiting now");
            std::process::exit(130);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Command {
        match Cli::try_parse_from(std::iter::once("postern").chain(args.iter().copied())) {
            Ok(cli) => cli.command,
            Err(e) => panic!("{args:?}: {e}"),
        }
    }

    #[test]
    fn service_install_takes_a_config_and_an_optional_name_and_log_file() {
        match parse(&["service", "install", "-c", r"C:\postern\postern.yaml"]) {
            Command::Service {
                action:
                    ServiceAction::Install {
                        config,
                        name,
                        log_file,
                    },
            } => {
                assert_eq!(config, Path::new(r"C:\postern\postern.yaml"));
                assert_eq!(name, "postern");
                assert_eq!(log_file, None);
            }
            other => panic!("{other:?}"),
        }
        match parse(&[
            "service",
            "install",
            "--config",
            "p.yaml",
            "--name",
            "postern-lan",
            "--log-file",
            r"D:\logs\p.log",
        ]) {
            Command::Service {
                action: ServiceAction::Install { name, log_file, .. },
            } => {
                assert_eq!(name, "postern-lan");
                assert_eq!(log_file.as_deref(), Some(Path::new(r"D:\logs\p.log")));
            }
            other => panic!("{other:?}"),
        }
        // A service needs its file named: no search of the working directory.
        assert!(Cli::try_parse_from(["postern", "service", "install"]).is_err());
    }

    #[test]
    fn service_run_parses_what_install_registers() {
        let plan = postern::service::Install::new(
            "postern-lan",
            Path::new("/srv/mail gateway/postern.yaml"),
            Some(Path::new("/var/log/postern.log")),
            Path::new("/"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let args = std::iter::once(std::ffi::OsString::from("postern")).chain(plan.arguments());
        match Cli::try_parse_from(args).map(|c| c.command) {
            Ok(Command::Service {
                action:
                    ServiceAction::Run {
                        config,
                        name,
                        log_file,
                    },
            }) => {
                assert_eq!(config, plan.config);
                assert_eq!(name, plan.name);
                assert_eq!(log_file, plan.log_file);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn service_uninstall_takes_a_name() {
        match parse(&["service", "uninstall"]) {
            Command::Service {
                action: ServiceAction::Uninstall { name },
            } => assert_eq!(name, "postern"),
            other => panic!("{other:?}"),
        }
        match parse(&["service", "uninstall", "--name", "p2"]) {
            Command::Service {
                action: ServiceAction::Uninstall { name },
            } => assert_eq!(name, "p2"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn run_waits_for_addresses_only_when_asked() {
        match parse(&["run", "-c", "p.yaml"]) {
            Command::Run {
                wait_for_addresses, ..
            } => assert!(!wait_for_addresses),
            other => panic!("{other:?}"),
        }
        match parse(&["run", "-c", "p.yaml", "--wait-for-addresses"]) {
            Command::Run {
                wait_for_addresses, ..
            } => assert!(wait_for_addresses),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
