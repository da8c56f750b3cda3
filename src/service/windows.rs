//! The Windows half of `postern service`: registering with the Service
//! Control Manager (SCM) and running under it.
//!
//! ```text
//! SCM ── starts ──► postern.exe service run -c FILE
//!                     run(): dispatcher ── calls on its own thread ──► service_main
//!                                                 register control handler
//!                                                 StartPending ─ log file, config
//!                                                 Running ─ postern::run(.., Wait)
//! Stop / Shutdown ──► handler: cancel token ──► StopPending, sessions drain
//! ParamChange ──────► handler: reload the file (as SIGHUP on Unix)
//!                                                 Stopped (exit code)
//! ```

use std::ffi::OsString;
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use windows_service::service::{
    ServiceAccess, ServiceAction, ServiceActionType, ServiceControl, ServiceControlAccept,
    ServiceErrorControl, ServiceExitCode, ServiceFailureActions, ServiceFailureResetPeriod,
    ServiceInfo, ServiceStartType, ServiceState, ServiceStatus, ServiceType,
};
use windows_service::service_control_handler::{
    self, ServiceControlHandlerResult, ServiceStatusHandle,
};
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};

use super::{exit, Install, ServiceRun, DESCRIPTION, FAILURE_RESET, RESTART_DELAYS};
use crate::config::{Config, ConfigError, LogConfig};
use crate::{LogOutput, MissingAddress, SHUTDOWN_GRACE};

/// The error text for a call into the SCM: the system's message, and what
/// to do where [`super::scm_hint`] knows.
fn why(e: &windows_service::Error, name: &str) -> String {
    match e {
        windows_service::Error::Winapi(io) => match io.raw_os_error() {
            Some(code) => match super::scm_hint(code, name) {
                Some(hint) => format!("{hint} ({io})"),
                None => io.to_string(),
            },
            None => io.to_string(),
        },
        other => other.to_string(),
    }
}

/// `postern service install`: registers the service (auto-start, delayed
/// so boot is not slowed; restarted on failure) and returns what to tell
/// the user. The configuration was checked by the caller.
pub fn install(plan: &Install) -> Result<String, String> {
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find this program's own path: {e}"))?;
    let manager = ServiceManager::local_computer(
        None::<&str>,
        ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE,
    )
    .map_err(|e| why(&e, &plan.name))?;
    let info = ServiceInfo {
        name: plan.name.clone().into(),
        display_name: plan.display_name().into(),
        service_type: ServiceType::OWN_PROCESS,
        start_type: ServiceStartType::AutoStart,
        error_control: ServiceErrorControl::Normal,
        executable_path: exe.clone(),
        launch_arguments: plan.arguments(),
        dependencies: vec![],
        // LocalSystem, as `sc.exe create` does by default.
        account_name: None,
        account_password: None,
    };
    let access = ServiceAccess::CHANGE_CONFIG | ServiceAccess::QUERY_CONFIG | ServiceAccess::DELETE;
    let service = manager
        .create_service(&info, access)
        .map_err(|e| why(&e, &plan.name))?;
    let configured = (|| {
        service.set_description(DESCRIPTION)?;
        service.set_delayed_auto_start(true)?;
        service.update_failure_actions(failure_actions())?;
        // A stop with a non-zero exit code counts as a failure too.
        service.set_failure_actions_on_non_crash_failures(true)?;
        service.query_config()
    })();
    let registered = match configured {
        Ok(c) => c.executable_path.to_string_lossy().into_owned(),
        Err(e) => {
            // Half a service would start without its restart policy.
            let _ = service.delete();
            return Err(format!(
                "cannot configure the service (not installed): {}",
                why(&e, &plan.name)
            ));
        }
    };
    let expected = plan.command_line(&exe);
    let mut out = format!(
        "installed service {name:?} (automatic, delayed start; restarted on failure)\n\
         command line: {registered}\n\
         log file: {log}\n\
         start it now with: sc.exe start {name}\n",
        name = plan.name,
        log = plan.log_file().display(),
    );
    if registered != expected {
        out.push_str(&format!(
            "warning: expected the command line {expected}; check it with sc.exe qc {}\n",
            plan.name
        ));
    }
    Ok(out)
}

fn failure_actions() -> ServiceFailureActions {
    ServiceFailureActions {
        reset_period: ServiceFailureResetPeriod::After(FAILURE_RESET),
        reboot_msg: None,
        command: None,
        actions: Some(
            RESTART_DELAYS
                .iter()
                .map(|&delay| ServiceAction {
                    action_type: ServiceActionType::Restart,
                    delay,
                })
                .collect(),
        ),
    }
}

/// `postern service uninstall`: stops the service (its sessions drain as
/// at any stop) and removes it. Only a service that runs
/// `... service run ...` is removed.
pub fn uninstall(name: &str) -> Result<String, String> {
    let manager = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)
        .map_err(|e| why(&e, name))?;
    let access = ServiceAccess::QUERY_CONFIG
        | ServiceAccess::QUERY_STATUS
        | ServiceAccess::STOP
        | ServiceAccess::DELETE;
    let service = manager
        .open_service(name, access)
        .map_err(|e| why(&e, name))?;
    let config = service.query_config().map_err(|e| why(&e, name))?;
    let line = config.executable_path.to_string_lossy().into_owned();
    if !super::runs_postern_service(&line) {
        return Err(format!(
            "the service {name:?} does not run postern (its command line is {line}); not removing it"
        ));
    }
    // Marked for deletion first: the SCM removes it once it has stopped.
    service.delete().map_err(|e| why(&e, name))?;
    let status = service.query_status().map_err(|e| why(&e, name))?;
    if status.current_state != ServiceState::Stopped {
        if let Err(e) = service.stop() {
            // Starting or already stopping: it is removed once stopped.
            return Ok(format!(
                "service {name:?} is marked for removal; it is removed once it has stopped \
                 (it cannot be stopped now: {})",
                why(&e, name)
            ));
        }
        let deadline = Instant::now() + SHUTDOWN_GRACE + Duration::from_secs(15);
        loop {
            match service.query_status() {
                Ok(s) if s.current_state == ServiceState::Stopped => break,
                Ok(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(500))
                }
                _ => {
                    return Ok(format!(
                        "service {name:?} is marked for removal; it is removed once it has stopped"
                    ))
                }
            }
        }
    }
    Ok(format!("service {name:?} stopped and removed"))
}

/// What `run` was given, for [`service_main`], which the dispatcher calls
/// with only the SCM's start arguments.
static RUN: OnceLock<ServiceRun> = OnceLock::new();

/// `postern service run`: hands this thread to the SCM's dispatcher,
/// which runs [`service_main`] on another thread and returns once the
/// service has stopped. Outside the SCM it fails at once.
pub fn run(options: ServiceRun) -> ExitCode {
    let name = options.name.clone();
    let _ = RUN.set(options);
    match entry::dispatch(&name) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("postern: {}", why(&e, &name));
            ExitCode::FAILURE
        }
    }
}

/// The entry point the SCM calls.
// windows-service's macro generates the `extern "system"` function the SCM
// calls; it converts the raw argument vector in an `unsafe` block, which is
// windows-service's code expanded here. The `unsafe_code` lint (forbidden
// in this crate) does not fire on another crate's macro expansion, so no
// `allow` is needed; should a compiler ever report it, this module is the
// one place to allow it (the crate's `forbid` becoming `deny`).
mod entry {
    use super::service_main;
    windows_service::define_windows_service!(ffi_service_main, service_main);

    /// Runs the SCM's dispatcher with [`service_main`] as the service.
    pub(super) fn dispatch(name: &str) -> windows_service::Result<()> {
        windows_service::service_dispatcher::start(name, ffi_service_main)
    }
}

fn service_main(_arguments: Vec<OsString>) {
    let Some(options) = RUN.get() else {
        return;
    };
    let shutdown = CancellationToken::new();
    let (reload_tx, reloads) = tokio::sync::mpsc::channel(4);
    let handler = control_handler(shutdown.clone(), reload_tx, options.config.clone());
    // Without a status handle nothing can be reported, and nothing logged
    // yet: the SCM notices the service never reported Running.
    let Ok(status) = service_control_handler::register(&options.name, handler) else {
        return;
    };
    let code = serve(options, status, shutdown, reloads);
    if let Err(e) = report(status, ServiceState::Stopped, code, Duration::ZERO) {
        tracing::error!("cannot report the stop to the Service Control Manager: {e}");
    }
}

type Reloads = tokio::sync::mpsc::Sender<Result<Config, ConfigError>>;

/// Stop and Shutdown cancel `shutdown` (sessions drain as after SIGTERM);
/// ParamChange (`sc.exe control NAME paramchange`) reloads the file as
/// SIGHUP does.
fn control_handler(
    shutdown: CancellationToken,
    reloads: Reloads,
    config: std::path::PathBuf,
) -> impl FnMut(ServiceControl) -> ServiceControlHandlerResult + Send + 'static {
    move |control| match control {
        ServiceControl::Stop | ServiceControl::Shutdown => {
            tracing::info!(
                control = ?control,
                "stopping: no new sessions; waiting for running ones"
            );
            shutdown.cancel();
            ServiceControlHandlerResult::NoError
        }
        ServiceControl::ParamChange => {
            tracing::info!(file = %config.display(), "paramchange: reloading the configuration");
            if reloads.try_send(Config::load(&config)).is_err() {
                tracing::warn!("reload not queued: earlier ones are still pending");
            }
            ServiceControlHandlerResult::NoError
        }
        ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
        _ => ServiceControlHandlerResult::NotImplemented,
    }
}

/// Logging, the configuration, the gateway; the exit code to report.
fn serve(
    options: &ServiceRun,
    status: ServiceStatusHandle,
    shutdown: CancellationToken,
    reloads: tokio::sync::mpsc::Receiver<Result<Config, ConfigError>>,
) -> ServiceExitCode {
    let _ = report(
        status,
        ServiceState::StartPending,
        ServiceExitCode::NO_ERROR,
        Duration::from_secs(10),
    );
    let file = match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&options.log_file)
    {
        Ok(f) => f,
        // Nowhere to log: the Win32 error code is what `sc.exe query` shows.
        Err(e) => return ServiceExitCode::Win32(e.raw_os_error().map_or(1, i32::unsigned_abs)),
    };
    let config = Config::load(&options.config);
    let log = config
        .as_ref()
        .map_or_else(|_| LogConfig::default(), |c| c.log.clone());
    crate::init_logging(&log, LogOutput::File(file));
    log_panics();
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}");
            return ServiceExitCode::ServiceSpecific(exit::CONFIG);
        }
    };
    tracing::info!(
        service = %options.name,
        config = %options.config.display(),
        version = env!("CARGO_PKG_VERSION"),
        "starting as a Windows service"
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the runtime: {e}");
            return ServiceExitCode::ServiceSpecific(exit::RUNTIME);
        }
    };
    let result = runtime.block_on(async {
        let stopping = shutdown.clone();
        tokio::spawn(async move {
            stopping.cancelled().await;
            let _ = report(
                status,
                ServiceState::StopPending,
                ServiceExitCode::NO_ERROR,
                SHUTDOWN_GRACE + Duration::from_secs(10),
            );
        });
        // Running before the listeners are bound: at boot an address may
        // not exist until the network is up (`MissingAddress::Wait`), and
        // the service must neither look hung nor fail meanwhile.
        let _ = report(
            status,
            ServiceState::Running,
            ServiceExitCode::NO_ERROR,
            Duration::ZERO,
        );
        crate::run(config, shutdown, reloads, MissingAddress::Wait).await
    });
    match result {
        Ok(()) => {
            tracing::info!("stopped");
            ServiceExitCode::NO_ERROR
        }
        Err(e) => {
            tracing::error!("{e}");
            ServiceExitCode::ServiceSpecific(exit::GATEWAY)
        }
    }
}

/// Tells the SCM what the service is doing.
fn report(
    status: ServiceStatusHandle,
    state: ServiceState,
    exit_code: ServiceExitCode,
    wait_hint: Duration,
) -> windows_service::Result<()> {
    let controls_accepted = match state {
        ServiceState::Running => {
            ServiceControlAccept::STOP
                | ServiceControlAccept::SHUTDOWN
                | ServiceControlAccept::PARAM_CHANGE
        }
        _ => ServiceControlAccept::empty(),
    };
    let pending = matches!(
        state,
        ServiceState::StartPending | ServiceState::StopPending
    );
    status.set_service_status(ServiceStatus {
        service_type: ServiceType::OWN_PROCESS,
        current_state: state,
        controls_accepted,
        exit_code,
        checkpoint: u32::from(pending),
        wait_hint,
        process_id: None,
    })
}

/// A service has no stderr: a panic is written to the log file instead.
fn log_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!("panic: {info}");
        default(info);
    }));
}
