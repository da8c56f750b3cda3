//! From a validated configuration to the parts a gateway runs: the one step
//! that reads the filesystem and the environment (listener certificates and
//! keys, CA files, stored secrets), each exactly once, collecting every
//! problem at once. `postern check` and `postern run` both call [`prepare`],
//! so they can never disagree about a file.
//!
//! ```text
//! text ─ config::Config::from_yaml (pure: parse, validate) ─► Config
//!      ─ prepare ─► Prepared { routes: [PreparedRoute], warnings } ─► session::Route<P>
//! ```

use std::path::{Path, PathBuf};

use crate::config::{Config, ConfigError, Credentials, Problem, Route, Security};
use crate::credentials::{load_secret, process_env, AccountContext, CredentialSource, EnvLookup};
use crate::oauth::{StateContext, StateKey};
use crate::tls::{ListenSide, TlsSetupError, UpstreamTransport};

/// One route with everything it reads loaded.
#[derive(Debug)]
pub struct PreparedRoute {
    /// The route as configured.
    pub config: Route,
    /// The listen side (with its certificate when TLS is offered).
    pub listen: ListenSide,
    /// How the upstream is reached (with roots, CA file and pins when TLS).
    pub transport: UpstreamTransport,
    /// Where upstream credentials come from (secrets loaded).
    pub credentials: CredentialSource,
}

/// Every route prepared, and what `check` prints and `run` logs as warnings.
#[derive(Debug)]
pub struct Prepared {
    /// The routes, in file order.
    pub routes: Vec<PreparedRoute>,
    /// Secret files every local user can read.
    pub warnings: Vec<ExposedSecret>,
}

/// Prepares every route, reading secrets named by `*_env` from the process
/// environment.
pub fn prepare(config: &Config) -> Result<Prepared, ConfigError> {
    prepare_with(config, &process_env)
}

/// [`prepare`] with an injected environment (tests).
pub fn prepare_with(config: &Config, env: EnvLookup<'_>) -> Result<Prepared, ConfigError> {
    let mut routes = Vec::with_capacity(config.routes.len());
    let mut problems = Vec::new();
    let key = state_key(config, env).map_err(|(key, message)| {
        problems.push(Problem {
            line: None,
            route: None,
            key: Some(key.to_owned()),
            message,
        })
    });
    let state = StateContext {
        key: key.ok().flatten(),
        dir: config.state_dir.clone(),
    };
    for route in &config.routes {
        let mut problem = |key: String, message: String| {
            problems.push(Problem {
                line: None,
                route: Some(route.name.clone()),
                key: Some(key),
                message,
            })
        };
        let listen = ListenSide::prepare(&route.listen.0)
            .map_err(|e| problem("listen.certificate".to_owned(), e.to_string()));
        let transport = UpstreamTransport::prepare(&route.upstream)
            .map_err(|e| problem(upstream_key(&e).to_owned(), e.to_string()));
        let ctx = AccountContext {
            route: &route.name,
            protocol: route.protocol,
            state: state.clone(),
        };
        let credentials =
            CredentialSource::from_config(&route.credentials, env, &ctx).map_err(|ps| {
                for (key, message) in ps {
                    problem(key, message);
                }
            });
        if let (Ok(listen), Ok(transport), Ok(credentials)) = (listen, transport, credentials) {
            routes.push(PreparedRoute {
                config: route.clone(),
                listen,
                transport,
                credentials,
            });
        }
    }
    if !problems.is_empty() {
        return Err(ConfigError {
            file: config.file.clone(),
            problems,
        });
    }
    Ok(Prepared {
        routes,
        warnings: exposed_secrets(config),
    })
}

/// The key the OAuth2 token stores are sealed with, if one is configured.
fn state_key(
    config: &Config,
    env: EnvLookup<'_>,
) -> Result<Option<StateKey>, (&'static str, String)> {
    let (var, file) = (
        config.state_key_env.as_deref(),
        config.state_key_file.as_deref(),
    );
    let which = if var.is_some() {
        "state_key_env"
    } else {
        "state_key_file"
    };
    if var.is_none() && file.is_none() {
        return Ok(None);
    }
    let text = load_secret(var, file, env).map_err(|e| {
        // load_secret words its errors for passwords; this is a key.
        (which, e.to_string().replace("password file", "key file"))
    })?;
    StateKey::from_base64(text.expose())
        .map(Some)
        .map_err(|e| (which, e.to_string()))
}

fn upstream_key(e: &TlsSetupError) -> &'static str {
    match e {
        TlsSetupError::CaFile { .. } => "upstream.ca",
        _ => "upstream",
    }
}

/// A secret file every user of the machine can read (mode `o+r`). Not a
/// problem that stops start-up (files written with the common umask 0022
/// are 0644, and refusing them would break working setups), but `check`
/// prints it and `run` logs it, as ssh does for private keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExposedSecret {
    /// The route that reads the file (empty for a top-level setting).
    pub route: String,
    /// The key naming the file (`credentials.accounts[0].upstream_password_file`).
    pub key: String,
    /// The file.
    pub path: PathBuf,
    /// Its permission bits.
    pub mode: u32,
}

impl std::fmt::Display for ExposedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = self.path.display();
        if !self.route.is_empty() {
            write!(f, "route \"{}\": ", self.route)?;
        }
        write!(
            f,
            "{}: permissions {:04o} for {path} are too open: every user on this machine can read this secret; \
             restrict it with `chmod 600 {path}` (or 640 with a group only postern is in; \
             Docker and Kubernetes secrets: mount them with mode 0400)",
            self.key, self.mode
        )
    }
}

/// Secret files (passwords, listener private keys) that every local user
/// can read.
pub fn exposed_secrets(config: &Config) -> Vec<ExposedSecret> {
    let mut out = Vec::new();
    if let Some(path) = &config.state_key_file {
        if let Some(mode) = crate::secret::readable_by_everyone(path) {
            out.push(ExposedSecret {
                route: String::new(),
                key: "state_key_file".to_owned(),
                path: path.clone(),
                mode,
            });
        }
    }
    for route in &config.routes {
        let mut files: Vec<(String, &Path)> = Vec::new();
        if route.listen.0.security != Security::None {
            if let Some(key) = &route.listen.0.key {
                files.push(("listen.key".to_owned(), key));
            }
        }
        if let Credentials::Accounts(cfg) = &route.credentials {
            for (i, a) in cfg.accounts.iter().enumerate() {
                let key = |k: &str| format!("credentials.accounts[{i}].{k}");
                if let Some(f) = &a.upstream_password_file {
                    files.push((key("upstream_password_file"), f));
                }
                if let Some(f) = &a.local_password_file {
                    files.push((key("local_password_file"), f));
                }
                if let Some(f) = a.oauth.as_ref().and_then(|o| o.client_secret_file.as_ref()) {
                    files.push((key("oauth.client_secret_file"), f));
                }
            }
        }
        for (key, path) in files {
            if let Some(mode) = crate::secret::readable_by_everyone(path) {
                out.push(ExposedSecret {
                    route: route.name.clone(),
                    key,
                    path: path.to_owned(),
                    mode,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<std::ffi::OsString> {
        None
    }

    fn problems(text: &str, file: &Path) -> Vec<String> {
        let config = Config::from_yaml(text, file).expect("valid before files are read");
        match prepare_with(&config, &no_env) {
            Ok(_) => Vec::new(),
            Err(e) => e.problems.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn every_file_problem_is_collected_with_its_key() {
        let p = problems(
            "routes:\n  - name: a\n    protocol: pop3\n    listen: { address: 127.0.0.1:1, security: tls, certificate: /nonexistent/c.pem, key: /nonexistent/k.pem }\n    upstream: { address: h:1, security: tls, auth: user, ca: /nonexistent/ca.pem }\n    credentials:\n      accounts:\n        - { local_user: a, local_password_file: /nonexistent/pw, upstream_user: b, upstream_password_env: POSTERN_TEST_UNSET_VARIABLE }\n",
            Path::new("test.yaml"),
        );
        let all = p.join("\n");
        for needle in [
            "listen.certificate",
            "upstream.ca",
            "credentials.accounts[0].upstream_password_env: the environment variable POSTERN_TEST_UNSET_VARIABLE is not set",
            "credentials.accounts[0].local_password_file: cannot read the password file /nonexistent/pw",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        assert_eq!(p.len(), 4, "{all}");
    }

    #[test]
    fn secrets_come_from_the_injected_environment() {
        let env = |name: &str| (name == "POSTERN_T_UP").then(|| "s3cret".into());
        let config = Config::from_yaml(
            "routes:\n  - name: a\n    protocol: pop3\n    listen: 127.0.0.1:1\n    upstream: { address: h:1, auth: apop, security: none }\n    credentials:\n      accounts:\n        - { local_user: a, local_password_env: POSTERN_T_UP, upstream_user: b, upstream_password_env: POSTERN_T_UP }\n",
            Path::new("test.yaml"),
        )
        .expect("valid");
        let prepared = prepare_with(&config, &env).expect("prepared");
        assert_eq!(prepared.routes.len(), 1);
        assert!(prepared.routes[0].credentials.offers_challenges());
        assert!(prepare_with(&config, &no_env).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn secret_files_every_user_can_read_are_reported() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = postern_testkit::TempDir::new("postern-exposed");
        let up = dir.write("up_pw", "upstream-secret\n");
        let local = dir.write("local_pw", "local-secret\n");
        let file = dir.path().join("p.yaml");
        let text = "routes:\n  - name: a\n    protocol: pop3\n    listen: 127.0.0.1:1\n    upstream: { address: h:1, auth: apop, security: none }\n    credentials:\n      accounts:\n        - { local_user: u, local_password_file: local_pw, upstream_user: b, upstream_password_file: up_pw }\n";
        let set = |p: &Path, mode: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        };
        set(&up, 0o644);
        set(&local, 0o600);
        let c = Config::from_yaml(text, &file).expect("valid");
        let w = prepare_with(&c, &no_env)
            .expect("a warning is not a problem")
            .warnings;
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(
            (w[0].key.as_str(), w[0].path.as_path(), w[0].mode),
            (
                "credentials.accounts[0].upstream_password_file",
                up.as_path(),
                0o644
            )
        );
        let text_of = w[0].to_string();
        for want in [
            "route \"a\"",
            "0644",
            "chmod 600",
            &up.display().to_string(),
        ] {
            assert!(text_of.contains(want), "{want:?} missing: {text_of}");
        }
        assert!(!text_of.contains("upstream-secret"), "{text_of}");
        set(&local, 0o444);
        let w = exposed_secrets(&c);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[1].key.ends_with("local_password_file") && w[1].mode == 0o444);
        set(&up, 0o600);
        set(&local, 0o640);
        assert_eq!(exposed_secrets(&c), Vec::new());
    }

    #[test]
    fn the_shipped_examples_are_valid() {
        // Copy the examples next to the files they name (certificates,
        // password files) and give the variables they read, as a user would.
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config");
        let dir = postern_testkit::TempDir::new("postern-examples");
        let pki = postern_testkit::TestPki::new();
        std::fs::create_dir_all(dir.path().join("certs")).expect("certs dir");
        std::fs::create_dir_all(dir.path().join("secrets")).expect("secrets dir");
        let (chain, key) = pki.write_leaf_pem(&dir.path().join("certs"));
        std::fs::rename(chain, dir.path().join("certs/server.pem")).expect("rename");
        std::fs::rename(key, dir.path().join("certs/server.key")).expect("rename");
        std::fs::write(dir.path().join("secrets/office_pw"), "example\n").expect("secret");
        std::fs::write(dir.path().join("secrets/google_client_secret"), "example\n")
            .expect("secret");
        let key = StateKey::generate().to_base64();
        std::fs::write(dir.path().join("state.key"), key.expose()).expect("state key");
        let env = |name: &str| {
            [
                "SCANNER_PW",
                "PRINTER_PW",
                "RECEPTION_PW",
                "OFFICE_PW",
                "M365_SECRET",
                "LOCAL_PW",
            ]
            .contains(&name)
            .then(|| "example".into())
        };
        let mut n = 0;
        let image_default = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docker/postern.yaml");
        let entries = std::fs::read_dir(&src)
            .expect("config dir")
            .map(|e| e.expect("entry").path())
            .chain(std::iter::once(image_default));
        for path in entries {
            if path.extension().and_then(|e| e.to_str()) == Some("yaml") {
                let copy = dir.path().join(path.file_name().expect("name"));
                std::fs::copy(&path, &copy).expect("copy");
                let config = Config::load(&copy).unwrap_or_else(|e| panic!("{e}"));
                if let Err(e) = prepare_with(&config, &env) {
                    panic!("{e}");
                }
                n += 1;
            }
        }
        assert!(
            n >= 10,
            "only {n} example configs found in {} (and docker/)",
            src.display()
        );
    }
}
