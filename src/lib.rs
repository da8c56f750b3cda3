//! postern: a secure mail gateway. Legacy clients speak plain POP3 (and,
//! later, SMTP) to postern; postern carries each session to the real server
//! in the secure mode it demands.
//!
//! The binary is a thin shell over this library so tests can run the whole
//! gateway in-process: [`Gateway::bind`] then [`Gateway::serve`], or [`run`].
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use postern_core::acl::Acl;
use postern_core::config::{Config, LogConfig, LogFormat, Protocol};
use postern_core::limits::Timeouts;
use postern_core::prepare::prepare;
use postern_core::prepare::PreparedRoute;
use postern_core::server::{
    Applied, BindError, Frontend, ListenOptions, ListenerSpec, Server, Serving,
};
use postern_core::session::{Frontdoor, Route as SessionRoute};
use postern_imap::Imap;
use postern_pop3::Pop3;
use postern_smtp::Smtp;
use tokio_util::sync::CancellationToken;

pub use postern_core::limits::SHUTDOWN_GRACE;
pub mod admin;
pub mod bind_wait;
pub mod health;
pub mod service;

pub use postern_core::{config, oauth, prepare};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Certificates, CA files or secrets could not be loaded (every
    /// problem, as `postern check` reports them).
    #[error(transparent)]
    Config(#[from] postern_core::config::ConfigError),
    /// A listen address could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The admin endpoint's address could not be bound.
    #[error("admin endpoint: cannot listen on {address}: {source}")]
    Admin {
        /// The address.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

impl StartError {
    /// Whether a listen address is not (yet) one of this machine's: at
    /// boot, before the network is up, an interface's address does not
    /// exist and binding it fails with `EADDRNOTAVAIL` (`WSAEADDRNOTAVAIL`
    /// on Windows). Any other failure (in use, permission denied, a bad
    /// file) will not cure itself by waiting.
    pub fn address_not_available(&self) -> bool {
        let source = match self {
            Self::Bind(e) => &e.source,
            Self::Admin { source, .. } => source,
            Self::Config(_) => return false,
        };
        source.kind() == std::io::ErrorKind::AddrNotAvailable
    }
}

/// What [`run`] does when a listen address is not one of this machine's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingAddress {
    /// Fail at once (`postern run`: a typo in an address is reported).
    Fail,
    /// Try again every [`bind_wait::RETRY_INTERVAL`] until it appears or
    /// the gateway is stopped (the Windows service, and
    /// `postern run --wait-for-addresses`: started at boot before the
    /// network is up).
    Wait,
}

/// A gateway: every route's listener, and the sessions they run. Cheap to
/// clone (one shared server), so one task can serve while another reloads.
#[derive(Debug, Clone)]
pub struct Gateway {
    server: Arc<Server>,
}

impl Gateway {
    /// Prepares every route (reading certificates, CA files and secrets
    /// once, as `postern check` does) and binds its listener. Upstreams are
    /// not contacted: each session resolves and connects afresh.
    pub async fn bind(config: &Config) -> Result<Self, StartError> {
        let gateway = Self {
            server: Arc::new(Server::new(total_sessions(config))),
        };
        gateway.apply(config).await?;
        Ok(gateway)
    }

    /// Applies a new configuration to the running gateway: files are read
    /// afresh (certificates, CA files, secrets); listeners whose address is
    /// unchanged keep their socket and take new sessions with the new
    /// settings; new routes start listening; removed ones stop accepting.
    /// Running sessions are never touched. On any problem nothing changes.
    pub async fn reload(&self, config: &Config) -> Result<Applied, StartError> {
        notify(ServiceState::Reloading);
        let result = self.apply(config).await;
        postern_core::metrics::reload(result.is_ok(), unix_now());
        notify(ServiceState::Ready);
        result
    }

    /// Whether every listener is serving (`/healthz`).
    pub fn healthy(&self) -> bool {
        self.server.healthy()
    }

    /// Whether new sessions are taken (`/readyz`).
    pub fn ready(&self) -> bool {
        self.server.ready()
    }

    async fn apply(&self, config: &Config) -> Result<Applied, StartError> {
        let prepared = prepare(config)?;
        // The same list `postern check` prints.
        for w in &prepared.warnings {
            tracing::warn!(
                route = %w.route,
                file = %w.path.display(),
                mode = %format_args!("{:04o}", w.mode),
                "{w}"
            );
        }
        let specs = prepared
            .routes
            .into_iter()
            .map(|route| listener_spec(config, route))
            .collect();
        Ok(self.server.apply(specs, total_sessions(config)).await?)
    }

    /// Route names with their bound addresses (real ports when 0 was configured).
    pub fn local_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.server.local_addrs()
    }

    /// The bound address of one route.
    pub fn addr(&self, route: &str) -> Option<SocketAddr> {
        self.local_addrs()
            .into_iter()
            .find_map(|(r, a)| (r == route).then_some(a))
    }

    /// Serves until `shutdown` is cancelled, then drains for `grace`.
    pub async fn serve(self, shutdown: CancellationToken, grace: std::time::Duration) {
        self.server.serve(shutdown, grace).await;
    }
}

/// `postern probe`: every route (or the one named), connected exactly as a
/// session would; `login` also logs in with the route's first stored
/// account. Files are read as `check` and `run` read them.
pub async fn probe(
    config: &Config,
    only: Option<&str>,
    login: bool,
) -> Result<Vec<postern_core::probe::Probe>, StartError> {
    use postern_core::session::Protocol as _;
    let prepared = prepare(config)?;
    let mut out = Vec::new();
    for route in prepared.routes {
        if only.is_some_and(|name| name != route.config.name) {
            continue;
        }
        let c = route.config.clone();
        let limits = config.limits.resolve(&c.limits);
        let stored = login.then(|| route.credentials.probe_login()).flatten();
        let mut token_problem = None;
        let credentials = match &stored {
            None => None,
            Some(resolved) => match resolved.login().await {
                Ok(l) => Some(l),
                Err(e) => {
                    token_problem = Some(e.to_string());
                    None
                }
            },
        };
        let mut report = match c.protocol {
            Protocol::Pop3 => {
                let timeouts = config.timeouts.resolve(&c.timeouts, Timeouts::POP3);
                let r = SessionRoute::<Pop3>::new(route, timeouts, limits);
                Pop3::probe(&r, credentials.clone()).await
            }
            Protocol::Smtp => {
                let timeouts = config.timeouts.resolve(&c.timeouts, Timeouts::SMTP);
                let r = SessionRoute::<Smtp>::new(route, timeouts, limits);
                Smtp::probe(&r, credentials.clone()).await
            }
            Protocol::Imap => {
                let timeouts = config.timeouts.resolve(&c.timeouts, Timeouts::IMAP);
                let r = SessionRoute::<Imap>::new(route, timeouts, limits);
                Imap::probe(&r, credentials.clone()).await
            }
        };
        if let Some(problem) = token_problem {
            report.login = Some("failed: no OAuth2 access token".to_owned());
            report.problems.push(problem);
        } else if login && credentials.is_none() {
            report.login = Some(
                "not tried: passthrough routes store no credentials (clients bring their own)"
                    .to_owned(),
            );
        }
        out.push(report);
    }
    Ok(out)
}

fn total_sessions(config: &Config) -> usize {
    config.limits.resolve(&Default::default()).total_sessions
}

/// A prepared route as its listener serves it.
fn listener_spec(config: &Config, route: PreparedRoute) -> ListenerSpec {
    let c = route.config.clone();
    let limits = config.limits.resolve(&c.limits);
    let frontend: Arc<dyn Frontend> = match c.protocol {
        Protocol::Pop3 => {
            let timeouts = config.timeouts.resolve(&c.timeouts, Timeouts::POP3);
            Arc::new(Frontdoor::new(SessionRoute::<Pop3>::new(
                route, timeouts, limits,
            )))
        }
        Protocol::Smtp => {
            let timeouts = config.timeouts.resolve(&c.timeouts, Timeouts::SMTP);
            Arc::new(Frontdoor::new(SessionRoute::<Smtp>::new(
                route, timeouts, limits,
            )))
        }
        Protocol::Imap => {
            let timeouts = config.timeouts.resolve(&c.timeouts, Timeouts::IMAP);
            Arc::new(Frontdoor::new(SessionRoute::<Imap>::new(
                route, timeouts, limits,
            )))
        }
    };
    ListenerSpec {
        address: c.listen.address(),
        serving: Serving {
            route: Arc::from(c.name.as_str()),
            acl: Arc::new(Acl::new(c.allow_list())),
            frontend,
            options: ListenOptions {
                proxy_protocol: c.listen.0.proxy_protocol,
                max_sessions: limits.sessions,
                max_per_client: limits.sessions_per_client,
            },
        },
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// What the service is doing, for systemd (`Type=notify`).
#[derive(Debug, Clone, Copy)]
enum ServiceState {
    Ready,
    Reloading,
    Stopping,
}

/// Tells systemd what the service is doing; a no-op outside systemd and
/// off Unix.
fn notify(state: ServiceState) {
    #[cfg(unix)]
    {
        let s = match state {
            ServiceState::Ready => sd_notify::NotifyState::Ready,
            ServiceState::Reloading => sd_notify::NotifyState::Reloading,
            ServiceState::Stopping => sd_notify::NotifyState::Stopping,
        };
        if let Err(e) = sd_notify::notify(&[s]) {
            tracing::warn!(error = %e, "cannot notify systemd");
        }
    }
    #[cfg(not(unix))]
    let _ = state;
}

/// Binds every route (and the admin endpoint, if configured) and serves
/// until `shutdown` is cancelled; each message on `reloads` (a
/// configuration read afresh, e.g. at SIGHUP) is applied, or refused with
/// every problem logged while the running configuration keeps serving.
/// `missing` says what to do about a listen address the machine does not
/// have (yet); stopped while waiting for one, `run` returns `Ok`.
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    mut reloads: tokio::sync::mpsc::Receiver<Result<Config, postern_core::config::ConfigError>>,
    missing: MissingAddress,
) -> Result<(), StartError> {
    let bound = bind_wait::bind(missing, &shutdown, || Gateway::bind(&config)).await?;
    let Some(gateway) = bound else {
        return Ok(());
    };
    postern_core::metrics::reload(true, unix_now());
    if let Some(admin) = &config.admin {
        let bound = bind_wait::bind(missing, &shutdown, || async {
            admin::Admin::bind(admin)
                .await
                .map_err(|source| StartError::Admin {
                    address: admin.listen,
                    source,
                })
        })
        .await?;
        // `None`: stopped while waiting; the routes already took sessions,
        // which drain below like any others.
        if let Some(endpoint) = bound {
            tracing::info!(listen = %admin.listen, "admin endpoint: /healthz /readyz /metrics");
            tokio::spawn(endpoint.serve(gateway.clone(), shutdown.clone()));
        }
    }
    notify(ServiceState::Ready);
    let reloader = gateway.clone();
    tokio::spawn(async move {
        while let Some(next) = reloads.recv().await {
            let result = match next {
                Ok(config) => reloader.reload(&config).await,
                Err(e) => {
                    // A file that does not even parse is a refused reload too.
                    postern_core::metrics::reload(false, unix_now());
                    Err(StartError::Config(e))
                }
            };
            log_reload(&result);
        }
    });
    let stopping = shutdown.clone();
    tokio::spawn(async move {
        stopping.cancelled().await;
        notify(ServiceState::Stopping);
    });
    gateway.serve(shutdown, SHUTDOWN_GRACE).await;
    Ok(())
}

/// One log line for a reload, and one per problem when it was refused.
pub fn log_reload(result: &Result<Applied, StartError>) {
    match result {
        Ok(a) => tracing::info!(
            added = ?a.added,
            kept = ?a.kept,
            removed = ?a.removed,
            "configuration reloaded; running sessions keep their settings"
        ),
        Err(StartError::Config(e)) => {
            for p in &e.problems {
                tracing::error!(file = %e.file.display(), "reload refused: {p}");
            }
            tracing::error!("reload refused: still running the previous configuration");
        }
        Err(e) => tracing::error!(
            error = %e,
            "reload refused: still running the previous configuration"
        ),
    }
}

/// Where log lines go.
#[derive(Debug)]
pub enum LogOutput {
    /// Standard error (`postern run`: the console, journald, a container).
    Stderr,
    /// A file, appended to (the Windows service, which has no console).
    File(std::fs::File),
}

/// Installs the global log subscriber: `RUST_LOG` if set, else `log.level`,
/// writing to `output`.
pub fn init_logging(log: &LogConfig, output: LogOutput) {
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, ansi) = match output {
        LogOutput::Stderr => (
            BoxMakeWriter::new(std::io::stderr),
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
        ),
        // One line is formatted whole, then written under the lock.
        LogOutput::File(file) => (BoxMakeWriter::new(std::sync::Mutex::new(file)), false),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer)
        // A log line that cannot be written (stderr a closed pipe, a full
        // disk) is dropped. Reporting it would use eprintln!, which panics
        // on the same broken stderr and would kill the task that logged:
        // the signal handler, so SIGTERM would no longer stop the gateway.
        .log_internal_errors(false);
    let _ = match log.format {
        LogFormat::Json => builder.json().try_init(),
        _ => builder.try_init(),
    };
}

/// The route table `postern check` prints.
pub fn route_table(config: &Config) -> String {
    let mut rows = vec![[
        "ROUTE".to_owned(),
        "PROTOCOL".to_owned(),
        "LISTEN".to_owned(),
        "UPSTREAM".to_owned(),
        "SECURITY".to_owned(),
        "AUTH".to_owned(),
        "CREDENTIALS".to_owned(),
        "ALLOW".to_owned(),
    ]];
    for r in &config.routes {
        let allow = match &r.allow {
            None => "loopback".to_owned(),
            Some(nets) => nets
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
        };
        let listen = match r.listen.0.security {
            postern_core::config::Security::None => r.listen.address().to_string(),
            other => format!("{} ({other})", r.listen.address()),
        };
        let credentials = match &r.credentials {
            postern_core::config::Credentials::Accounts(a) => format!(
                "{} account(s){}",
                a.accounts.len(),
                if a.passthrough { " + passthrough" } else { "" }
            ),
            _ => "passthrough".to_owned(),
        };
        rows.push([
            r.name.clone(),
            r.protocol.to_string(),
            listen,
            r.upstream.address.to_string(),
            r.upstream.security.to_string(),
            r.upstream.auth.to_string(),
            credentials,
            allow,
        ]);
    }
    let mut widths = [0usize; 8];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
