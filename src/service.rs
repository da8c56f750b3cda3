//! `postern service`: postern as a Windows service.
//!
//! `postern service install -c FILE` registers an auto-start service whose
//! command line is `<postern.exe> service run -c <FILE, absolute>`; the
//! Service Control Manager (SCM) starts that at boot, and
//! `postern service run` hands the process to the SCM's dispatcher, serves
//! until Stop or Shutdown cancels the same token SIGTERM cancels on Unix
//! (sessions drain exactly as there), and logs to a file.
//!
//! This file is portable, so what `install` registers is decided, and
//! tested, on any machine: names, absolute paths, the Windows quoting of the
//! command line. `windows.rs` (built only for Windows) talks to the SCM.

use std::borrow::Cow;
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub use windows::{install, run, uninstall};

/// The service name when `--name` is not given (`sc.exe start postern`).
pub const DEFAULT_NAME: &str = "postern";

/// What the Services console shows.
pub const DESCRIPTION: &str =
    "postern secure mail gateway: plain POP3 and SMTP in, TLS, STARTTLS and SASL out";

/// The log file's name, next to the configuration file, when `--log-file`
/// is not given.
pub const LOG_FILE_NAME: &str = "postern.log";

/// The SCM restarts a failed service after these delays (the last one for
/// every failure after the third), counting failures afresh after
/// [`FAILURE_RESET`]. A failure is a crash or a stop with a non-zero exit
/// code (a listen address in use, a configuration that became invalid).
pub const RESTART_DELAYS: [Duration; 3] = [
    Duration::from_secs(5),
    Duration::from_secs(30),
    Duration::from_secs(60),
];

/// See [`RESTART_DELAYS`].
pub const FAILURE_RESET: Duration = Duration::from_secs(24 * 60 * 60);

/// Service-specific exit codes reported to the SCM (`sc.exe query` shows
/// them as `SERVICE_EXIT_CODE`); the log says more.
pub mod exit {
    /// The configuration file could not be read or is invalid.
    pub const CONFIG: u32 = 1;
    /// The gateway could not start or failed (e.g. an address in use).
    pub const GATEWAY: u32 = 2;
    /// The runtime could not be created.
    pub const RUNTIME: u32 = 3;
}

/// Why `postern service install` would register nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstallError {
    /// The SCM refuses names with slashes, empty ones and long ones.
    #[error("service name {0:?}: give 1 to 256 characters without / or \\")]
    Name(String),
    /// The path is relative to something other than the working directory
    /// (Windows `C:file`) and cannot be resolved here.
    #[error("cannot make {} absolute: give the full path (e.g. C:\\postern\\postern.yaml)", .0.display())]
    NotAbsolute(PathBuf),
}

/// What `postern service install` registers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Install {
    /// The service name.
    pub name: String,
    /// The configuration file, absolute: a service starts in
    /// `C:\Windows\System32`, not where `install` was typed.
    pub config: PathBuf,
    /// `--log-file`, absolute; `None`: [`default_log_file`].
    pub log_file: Option<PathBuf>,
}

impl Install {
    /// The service `name` running `config` (relative paths are taken from
    /// `cwd`, the directory `install` runs in), logging to `log_file`.
    pub fn new(
        name: &str,
        config: &Path,
        log_file: Option<&Path>,
        cwd: &Path,
    ) -> Result<Self, InstallError> {
        valid_name(name)?;
        Ok(Self {
            name: name.to_owned(),
            config: absolute(config, cwd)?,
            log_file: log_file.map(|f| absolute(f, cwd)).transpose()?,
        })
    }

    /// The arguments the SCM starts postern with:
    /// `service run -c CONFIG [--name NAME] [--log-file FILE]` (the name
    /// only when it is not [`DEFAULT_NAME`]).
    pub fn arguments(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["service".into(), "run".into(), "-c".into()];
        args.push(self.config.clone().into_os_string());
        if self.name != DEFAULT_NAME {
            args.push("--name".into());
            args.push(self.name.clone().into());
        }
        if let Some(file) = &self.log_file {
            args.push("--log-file".into());
            args.push(file.clone().into_os_string());
        }
        args
    }

    /// The whole command line as the SCM stores it (`sc.exe qc NAME`
    /// shows it as `BINARY_PATH_NAME`) for `exe`.
    pub fn command_line(&self, exe: &Path) -> String {
        command_line(exe, &self.arguments())
    }

    /// What the Services console lists.
    pub fn display_name(&self) -> String {
        if self.name == DEFAULT_NAME {
            "postern mail gateway".to_owned()
        } else {
            format!("postern mail gateway ({})", self.name)
        }
    }

    /// Where the service will log.
    pub fn log_file(&self) -> PathBuf {
        self.log_file
            .clone()
            .unwrap_or_else(|| default_log_file(&self.config))
    }
}

/// What `postern service run` (started by the SCM) runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRun {
    /// The service name (for the dispatcher and the log).
    pub name: String,
    /// The configuration file.
    pub config: PathBuf,
    /// The log file.
    pub log_file: PathBuf,
}

impl ServiceRun {
    /// `log_file` defaults to [`default_log_file`] of `config`.
    pub fn new(name: String, config: PathBuf, log_file: Option<PathBuf>) -> Self {
        let log_file = log_file.unwrap_or_else(|| default_log_file(&config));
        Self {
            name,
            config,
            log_file,
        }
    }
}

/// A service has no console: it logs to [`LOG_FILE_NAME`] in the
/// configuration file's directory.
pub fn default_log_file(config: &Path) -> PathBuf {
    match config.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(LOG_FILE_NAME),
        _ => PathBuf::from(LOG_FILE_NAME),
    }
}

fn valid_name(name: &str) -> Result<(), InstallError> {
    let ok = !name.is_empty()
        && name.chars().count() <= 256
        && !name.contains(['/', '\\'])
        && !name.chars().any(char::is_control);
    if ok {
        Ok(())
    } else {
        Err(InstallError::Name(name.to_owned()))
    }
}

/// `path` made absolute against `cwd` (an absolute `path` stays as it is),
/// without `.` components. `..` is kept: resolving it without the
/// filesystem would be wrong across links, and Windows resolves it anyway.
pub fn absolute(path: &Path, cwd: &Path) -> Result<PathBuf, InstallError> {
    // `join` keeps an absolute `path` whole; on Windows a rooted `\x`
    // keeps `cwd`'s drive.
    let joined = cwd.join(path);
    if !joined.is_absolute() {
        return Err(InstallError::NotAbsolute(path.to_owned()));
    }
    Ok(joined
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect())
}

/// One argument quoted for a Windows command line, so that
/// `CommandLineToArgvW` (and Rust's `std::env::args`) give it back
/// unchanged: quoted only if it is empty or holds a space, tab, newline,
/// vertical tab or quote; inside quotes a `"` becomes `\"` and the
/// backslashes right before a `"` or the closing quote are doubled.
/// These are the rules the windows-service crate applies when it
/// registers a service, so [`command_line`] is what the SCM stores.
pub fn quote(arg: &str) -> Cow<'_, str> {
    let special = |c: char| matches!(c, '"' | ' ' | '\n' | '\t' | '\x0B');
    if !arg.is_empty() && !arg.contains(special) {
        return Cow::Borrowed(arg);
    }
    let mut out = String::with_capacity(arg.len() + 2);
    out.push('"');
    let mut backslashes = 0;
    for c in arg.chars() {
        match c {
            '\\' => backslashes += 1,
            '"' => {
                out.extend(std::iter::repeat_n('\\', backslashes * 2 + 1));
                out.push('"');
                backslashes = 0;
            }
            c => {
                out.extend(std::iter::repeat_n('\\', backslashes));
                out.push(c);
                backslashes = 0;
            }
        }
    }
    out.extend(std::iter::repeat_n('\\', backslashes * 2));
    out.push('"');
    Cow::Owned(out)
}

/// `exe` and `args`, each [`quote`]d, joined by spaces: a Windows command
/// line (paths that are not Unicode are shown lossily).
pub fn command_line(exe: &Path, args: &[OsString]) -> String {
    let mut line = quote(&exe.to_string_lossy()).into_owned();
    for arg in args {
        line.push(' ');
        line.push_str(&quote(&arg.to_string_lossy()));
    }
    line
}

/// A Windows command line split into arguments as `CommandLineToArgvW`
/// splits it: the program name runs to the next space (or, quoted, to the
/// next quote); in the arguments `2n` backslashes and a quote give `n`
/// backslashes and toggle quoting, `2n+1` give `n` and a literal quote,
/// `""` inside quotes is a literal quote, and other backslashes are kept.
pub fn split_command_line(line: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut chars = line.chars().peekable();
    // The program name: no escapes (a path cannot hold a quote).
    let mut program = String::new();
    if chars.peek() == Some(&'"') {
        chars.next();
        program.extend(chars.by_ref().take_while(|&c| c != '"'));
    } else {
        while let Some(&c) = chars.peek() {
            if c == ' ' || c == '\t' {
                break;
            }
            program.push(c);
            chars.next();
        }
    }
    args.push(program);
    loop {
        while matches!(chars.peek(), Some(' ' | '\t')) {
            chars.next();
        }
        if chars.peek().is_none() {
            return args;
        }
        let mut arg = String::new();
        let mut quoted = false;
        while let Some(&c) = chars.peek() {
            match c {
                ' ' | '\t' if !quoted => break,
                '\\' => {
                    let mut n = 0;
                    while chars.peek() == Some(&'\\') {
                        chars.next();
                        n += 1;
                    }
                    if chars.peek() == Some(&'"') {
                        arg.extend(std::iter::repeat_n('\\', n / 2));
                        if n % 2 == 1 {
                            arg.push('"');
                            chars.next();
                        }
                    } else {
                        arg.extend(std::iter::repeat_n('\\', n));
                    }
                }
                '"' => {
                    chars.next();
                    if quoted && chars.peek() == Some(&'"') {
                        chars.next();
                        arg.push('"');
                    } else {
                        quoted = !quoted;
                    }
                }
                c => {
                    arg.push(c);
                    chars.next();
                }
            }
        }
        args.push(arg);
    }
}

/// Whether a registered command line starts postern's service mode
/// (`<exe> service run ...`): `uninstall` removes only such services, so a
/// mistyped `--name` cannot delete another program's service.
pub fn runs_postern_service(command_line: &str) -> bool {
    let args = split_command_line(command_line);
    args.get(1).map(String::as_str) == Some("service")
        && args.get(2).map(String::as_str) == Some("run")
}

/// What to tell the user for a Windows error code from the SCM, where
/// the system's own message would not say what to do.
pub fn scm_hint(os_error: i32, name: &str) -> Option<String> {
    Some(match os_error {
        // ERROR_ACCESS_DENIED
        5 => "access denied: run this in a command prompt opened with \"Run as administrator\""
            .to_owned(),
        // ERROR_SERVICE_DOES_NOT_EXIST
        1060 => format!("no service named {name:?} is installed"),
        // ERROR_FAILED_SERVICE_CONTROLLER_CONNECT
        1063 => "`postern service run` is what the Service Control Manager starts; \
                 start the service with `sc.exe start NAME`, or run postern in this \
                 console with `postern run -c FILE`"
            .to_owned(),
        // ERROR_SERVICE_MARKED_FOR_DELETE
        1072 => format!(
            "the service {name:?} is marked for deletion: close the Services console \
             (services.msc) and any `sc.exe` still querying it, then try again"
        ),
        // ERROR_SERVICE_EXISTS
        1073 => format!(
            "a service named {name:?} already exists: remove it first with \
             `postern service uninstall --name {name}`, or choose another --name"
        ),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn install(name: &str, config: &str, log: Option<&str>, cwd: &str) -> Install {
        Install::new(name, Path::new(config), log.map(Path::new), Path::new(cwd))
            .unwrap_or_else(|e| panic!("{config}: {e}"))
    }

    #[test]
    fn a_relative_config_path_is_made_absolute_at_install() {
        let plan = install(DEFAULT_NAME, "conf/postern.yaml", None, "/srv/post ern");
        assert_eq!(plan.config, Path::new("/srv/post ern/conf/postern.yaml"));
        let plan = install(DEFAULT_NAME, "./postern.yaml", None, "/srv");
        assert_eq!(plan.config, Path::new("/srv/postern.yaml"));
        // An absolute path is kept as it is.
        let plan = install(DEFAULT_NAME, "/etc/postern.yaml", None, "/srv");
        assert_eq!(plan.config, Path::new("/etc/postern.yaml"));
    }

    #[test]
    fn the_log_file_defaults_to_the_config_directory() {
        let plan = install(DEFAULT_NAME, "postern.yaml", None, "/srv/p");
        assert_eq!(plan.log_file(), Path::new("/srv/p/postern.log"));
        let plan = install(DEFAULT_NAME, "postern.yaml", Some("logs/x.log"), "/srv/p");
        assert_eq!(plan.log_file(), Path::new("/srv/p/logs/x.log"));
        assert_eq!(
            default_log_file(Path::new("p.yaml")),
            Path::new("postern.log")
        );
        let run = ServiceRun::new("n".into(), "/a/b.yaml".into(), None);
        assert_eq!(run.log_file, Path::new("/a/postern.log"));
    }

    #[test]
    fn the_registered_command_line_quotes_paths_with_spaces() {
        let plan = install(DEFAULT_NAME, "postern.yaml", None, "/srv/mail gateway");
        let exe = Path::new("/opt/Program Files/postern/postern.exe");
        assert_eq!(
            plan.command_line(exe),
            r#""/opt/Program Files/postern/postern.exe" service run -c "/srv/mail gateway/postern.yaml""#
        );
        // Without spaces nothing needs quoting (and the SCM stores it so).
        let plan = install(DEFAULT_NAME, "/srv/postern.yaml", None, "/");
        assert_eq!(
            plan.command_line(Path::new("/opt/postern.exe")),
            "/opt/postern.exe service run -c /srv/postern.yaml"
        );
    }

    #[test]
    fn a_name_other_than_the_default_and_a_log_file_are_passed_on() {
        let plan = install("postern-lan", "/srv/p.yaml", Some("/var/log/p.log"), "/");
        let args: Vec<String> = plan
            .arguments()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "service",
                "run",
                "-c",
                "/srv/p.yaml",
                "--name",
                "postern-lan",
                "--log-file",
                "/var/log/p.log"
            ]
        );
        assert_eq!(plan.display_name(), "postern mail gateway (postern-lan)");
        assert_eq!(
            install(DEFAULT_NAME, "/p.yaml", None, "/").display_name(),
            "postern mail gateway"
        );
    }

    #[test]
    fn service_names_the_scm_refuses_are_refused_here() {
        for bad in ["", "a/b", r"a\b", "tab\there", &"x".repeat(257)] {
            assert_eq!(
                Install::new(bad, Path::new("/p.yaml"), None, Path::new("/")),
                Err(InstallError::Name(bad.to_owned())),
                "{bad:?}"
            );
        }
        assert!(Install::new("postern 2", Path::new("/p.yaml"), None, Path::new("/")).is_ok());
    }

    #[test]
    fn quoting_follows_the_windows_rules() {
        for (arg, quoted) in [
            ("plain", "plain"),
            (r"C:\postern\postern.yaml", r"C:\postern\postern.yaml"),
            ("", r#""""#),
            (r"C:\Program Files\postern", r#""C:\Program Files\postern""#),
            // A trailing backslash would otherwise escape the closing quote.
            (r"C:\mail gateway\", r#""C:\mail gateway\\""#),
            (r#"say "hi""#, r#""say \"hi\"""#),
            (r#"a\"b c"#, r#""a\\\"b c""#),
            // windows-service's own test vectors (src/shell_escape.rs),
            // so that what is shown is what the SCM is given.
            (
                "linker=gcc -L/foo -Wl,bar",
                r#""linker=gcc -L/foo -Wl,bar""#,
            ),
            (r#"--features="default""#, r#""--features=\"default\"""#),
            (r#"hello \\\"quote\\\""#, r#""hello \\\\\\\"quote\\\\\\\"""#),
            (
                r#"\some\directory with\spaces\"#,
                r#""\some\directory with\spaces\\""#,
            ),
        ] {
            assert_eq!(quote(arg), quoted, "{arg:?}");
        }
    }

    #[test]
    fn quoted_arguments_split_back_unchanged() {
        let exe = Path::new(r"C:\Program Files\postern\postern.exe");
        let args = [
            "service",
            "run",
            "-c",
            r"C:\mail gateway\postern.yaml",
            r"C:\dir with space\",
            r#"quote " inside"#,
            r#"\\server\share\"x"\"#,
            "",
            "tab\there",
        ];
        let os: Vec<OsString> = args.iter().map(OsString::from).collect();
        let line = command_line(exe, &os);
        let split = split_command_line(&line);
        assert_eq!(split[0], exe.to_string_lossy(), "{line}");
        assert_eq!(split[1..], args, "{line}");
    }

    #[test]
    fn splitting_matches_command_line_to_argv() {
        // Examples from Microsoft's "Parsing C++ command-line arguments".
        for (line, want) in [
            (r#"p "a b c" d e"#, vec!["p", "a b c", "d", "e"]),
            (r#"p "ab\"c" "\\" d"#, vec!["p", r#"ab"c"#, r"\", "d"]),
            (r#"p a\\\b d"e f"g h"#, vec!["p", r"a\\\b", "de fg", "h"]),
            (r#"p a\\\"b c d"#, vec!["p", r#"a\"b"#, "c", "d"]),
            (r#"p a\\\\"b c" d e"#, vec!["p", r"a\\b c", "d", "e"]),
            (r#"p a"b"" c d"#, vec!["p", r#"ab" c d"#]),
            (
                r#""C:\Program Files\p.exe" x"#,
                vec![r"C:\Program Files\p.exe", "x"],
            ),
        ] {
            assert_eq!(split_command_line(line), want, "{line}");
        }
    }

    #[test]
    fn only_postern_service_command_lines_are_uninstalled() {
        assert!(runs_postern_service(
            r#""C:\Program Files\postern\postern.exe" service run -c "C:\p\p.yaml""#
        ));
        assert!(runs_postern_service(
            r"C:\postern\postern.exe service run -c C:\p.yaml"
        ));
        assert!(!runs_postern_service(r"C:\Windows\System32\spoolsv.exe"));
        assert!(!runs_postern_service(
            r"C:\Windows\system32\svchost.exe -k netsvcs -p"
        ));
        assert!(!runs_postern_service(r"C:\postern.exe run -c C:\p.yaml"));
    }

    #[test]
    fn scm_errors_say_what_to_do() {
        let exists = scm_hint(1073, "postern").unwrap_or_default();
        assert!(
            exists.contains("postern service uninstall --name postern"),
            "{exists}"
        );
        let denied = scm_hint(5, "postern").unwrap_or_default();
        assert!(denied.contains("Run as administrator"), "{denied}");
        let console = scm_hint(1063, "postern").unwrap_or_default();
        assert!(console.contains("postern run -c FILE"), "{console}");
        assert_eq!(scm_hint(2, "postern"), None);
    }
}
