//! What the OAuth2 end-to-end tests share: a fake identity provider over
//! HTTPS (trusted through the test CA), a state key and secrets in 0600
//! files, fake upstreams that check bearer logins byte for byte, routes
//! and accounts for them, clients, and the `postern` binary.
//!
//! Also used by `tests/log_secrets.rs` (through `#[path]`), so it names
//! the shared harness as `crate::common`.
#![allow(dead_code)]

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use postern_testkit::{
    sasl_plain_response, BearerAttempt, BearerMechanism, FakeIdp, FakePop3, FakeSecurity, FakeSmtp,
    IdpClient, IdpScript, LineClient, Pop3Event, Pop3Script, SmtpEvent, SmtpScript, TempDir,
    TestPki, DEFAULT_CLIENT_ID,
};

use crate::common::{
    secret_file, Account, GatewayYaml, OAuth, RouteYaml, Secret, POP3_GREETING, SMTP_GREETING,
};

pub const WAIT: Duration = Duration::from_secs(5);

/// The mailbox every upstream account is.
pub const USER: &str = "alice";
/// The local login a legacy client gives postern.
pub const LOCAL_USER: &str = "scanner";
pub const LOCAL_PASSWORD: &str = "local-Pw-4711-unique";
/// The confidential app registration (`grant: client_credentials`); its
/// app-only tokens are alice's.
pub const APP_CLIENT: &str = "postern-app";
pub const CLIENT_SECRET: &str = "cs-7Hq2Zx-unique-client-secret";
/// What the fake POP3 mailbox holds.
pub const MESSAGE: &[u8] = b"Subject: oauth\r\n\r\nfetched through a bearer login\r\n";

/// The fake IdP's script for fast tests: device codes approved as alice
/// with no wait between polls.
pub fn idp_script() -> IdpScript {
    IdpScript::new().interval(0)
}

/// One test's world: the fake IdP, the test CA, the state key and the
/// secrets, all in a directory of the test's own.
pub struct World {
    pub pki: TestPki,
    pub idp: FakeIdp,
    pub dir: TempDir,
    /// The test CA (trusted for the IdP and the upstreams).
    pub ca: PathBuf,
    /// The base64 state key, and the 0600 file holding it.
    pub state_key: String,
    pub key_file: PathBuf,
    pub local_password: PathBuf,
    pub client_secret: PathBuf,
}

impl World {
    /// Starts the fake IdP with `script` plus the confidential
    /// [`APP_CLIENT`] (whose client-credentials tokens are alice's).
    pub async fn new(script: IdpScript) -> Self {
        let pki = TestPki::new();
        let idp = FakeIdp::start(
            pki.server_config(),
            script.client(IdpClient::confidential(APP_CLIENT, CLIENT_SECRET).app_user(USER)),
        )
        .await;
        let dir = TempDir::new("postern-oauth");
        let ca = pki.write_ca_pem(dir.path());
        let key = postern::oauth::StateKey::generate().to_base64();
        let state_key = String::from_utf8(key.expose().to_vec()).expect("base64 is ASCII");
        let key_file = secret_file(&dir, "state.key", &state_key);
        let local_password = secret_file(&dir, "local_pw", LOCAL_PASSWORD);
        let client_secret = secret_file(&dir, "client_secret", CLIENT_SECRET);
        World {
            pki,
            idp,
            dir,
            ca,
            state_key,
            key_file,
            local_password,
            client_secret,
        }
    }

    /// App-only access: `grant: client_credentials` with the app's secret.
    pub fn app(&self) -> OAuth {
        OAuth::custom(APP_CLIENT, &self.idp.token_url())
            .grant("client_credentials")
            .client_secret(Secret::file(&self.client_secret))
            .ca(&self.ca)
            .scopes(&["mail"])
    }

    /// Delegated access: `grant: device_code` with the public client; the
    /// store is filled by `postern oauth login`.
    pub fn device(&self) -> OAuth {
        OAuth::custom(DEFAULT_CLIENT_ID, &self.idp.token_url())
            .grant("device_code")
            .device_authorization_url(&self.idp.device_authorization_url())
            .ca(&self.ca)
            .scopes(&["mail", "offline_access"])
    }

    /// The local user `scanner` (its password in a file) mapped to alice.
    pub fn scanner(&self, oauth: OAuth) -> Account {
        Account::oauth(USER, oauth).local(LOCAL_USER, Secret::file(&self.local_password))
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Where an account's token store is by default.
    pub fn store(&self, route: &str, account: &str) -> PathBuf {
        self.state_dir().join(format!("{route}.{account}.token"))
    }

    /// The top level every configuration here has: `state_dir` and
    /// `state_key_file`.
    pub fn gateway(&self) -> GatewayYaml {
        GatewayYaml::new()
            .state_dir(&self.state_dir())
            .state_key(Secret::file(&self.key_file))
    }

    /// A whole configuration with this one route.
    pub fn yaml(&self, route: RouteYaml) -> String {
        self.gateway().route(route).to_string()
    }

    /// `route` to a TLS upstream with `security` and `auth`, trusting the
    /// test CA for the name `localhost`.
    pub fn upstream(&self, route: RouteYaml, security: &str, auth: &str) -> RouteYaml {
        route
            .security(security)
            .auth(auth)
            .ca(&self.ca)
            .server_name("localhost")
    }

    pub fn fake_security(&self, security: &str) -> FakeSecurity {
        match security {
            "tls" => FakeSecurity::Tls(self.pki.server_config()),
            "starttls" => FakeSecurity::Starttls(self.pki.server_config()),
            other => panic!("a bearer upstream is tls or starttls, not {other}"),
        }
    }

    /// A POP3 upstream with alice's mailbox ([`MESSAGE`]) offering only
    /// `mechanism`, checking tokens against the fake IdP.
    pub async fn pop3(&self, security: &str, mechanism: &str) -> FakePop3 {
        FakePop3::start(self.pop3_script(security, mechanism)).await
    }

    pub fn pop3_script(&self, security: &str, mechanism: &str) -> Pop3Script {
        Pop3Script::new()
            .security(self.fake_security(security))
            .credentials(USER, "no password works here")
            .sasl(&[mechanism])
            .bearer(self.idp.verifier())
            .message(MESSAGE.to_vec())
    }

    /// An SMTP upstream requiring AUTH, offering only `mechanism`,
    /// checking tokens against the fake IdP.
    pub async fn smtp(&self, security: &str, mechanism: &str) -> FakeSmtp {
        FakeSmtp::start(self.smtp_script(security, mechanism)).await
    }

    pub fn smtp_script(&self, security: &str, mechanism: &str) -> SmtpScript {
        SmtpScript::new()
            .security(self.fake_security(security))
            .credentials(USER, "no password works here")
            .auth_mechanisms(&[mechanism])
            .require_auth(true)
            .bearer(self.idp.verifier())
    }

    /// Writes a configuration file into the test's directory.
    pub fn config_file(&self, name: &str, yaml: &str) -> PathBuf {
        self.dir.write(name, yaml)
    }

    /// `postern oauth login -c FILE ROUTE ACCOUNT`, which must succeed;
    /// its standard output.
    pub async fn oauth_login(&self, config: &Path, route: &str, account: &str) -> String {
        let out = postern(&[
            "oauth".into(),
            "login".into(),
            "-c".into(),
            config.into(),
            route.into(),
            account.into(),
        ])
        .await;
        assert!(
            out.status.success(),
            "oauth login failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8 output")
    }

    /// `postern oauth status -c FILE`, which must succeed; its standard
    /// output.
    pub async fn oauth_status(&self, config: &Path) -> String {
        let out = postern(&["oauth".into(), "status".into(), "-c".into(), config.into()]).await;
        assert!(
            out.status.success(),
            "oauth status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8 output")
    }
}

/// Runs the `postern` binary to its end on a blocking thread, so the fakes
/// on this test's runtime keep answering it.
pub async fn postern(args: &[OsString]) -> Output {
    let args = args.to_vec();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_postern"))
            .args(args)
            .output()
            .expect("run postern")
    })
    .await
    .expect("join")
}

/// A POP3 client that read postern's greeting and gave `USER` and `PASS`;
/// the reply to PASS.
pub async fn pop3_login(addr: SocketAddr, user: &str, password: &str) -> (LineClient, String) {
    let mut c = LineClient::connect(addr).await.expect("connect");
    let greeting = c.read_line().await.expect("greeting");
    assert!(greeting.starts_with(POP3_GREETING), "{greeting}");
    let r = c.command(&format!("USER {user}")).await.expect("user");
    assert!(r.starts_with("+OK"), "USER is answered locally: {r}");
    let r = c.command(&format!("PASS {password}")).await.expect("pass");
    (c, r)
}

/// An SMTP client that read postern's greeting, said EHLO and gave
/// `AUTH PLAIN`; the reply to AUTH.
pub async fn smtp_login(addr: SocketAddr, user: &str, password: &str) -> (LineClient, Vec<String>) {
    let mut c = smtp_ehlo(addr).await;
    let r = c
        .smtp_command(&format!(
            "AUTH PLAIN {}",
            sasl_plain_response("", user, password)
        ))
        .await
        .expect("auth");
    (c, r)
}

/// An SMTP client that read postern's greeting and said EHLO.
pub async fn smtp_ehlo(addr: SocketAddr) -> LineClient {
    let mut c = LineClient::connect(addr).await.expect("connect");
    let greeting = c.read_smtp_reply().await.expect("greeting");
    assert!(greeting[0].starts_with(SMTP_GREETING), "{greeting:?}");
    let r = c.smtp_command("EHLO scanner.lan").await.expect("ehlo");
    assert!(r[0].starts_with("250"), "{r:?}");
    c
}

/// The message a client sends.
pub const SENT: &str = "Subject: scan\r\n\r\nscanned page attached\r\n";

/// Sends [`SENT`] from a@example.org to b@example.org; the final reply.
pub async fn smtp_send(c: &mut LineClient) -> Vec<String> {
    for cmd in ["MAIL FROM:<a@example.org>", "RCPT TO:<b@example.org>"] {
        let r = c.smtp_command(cmd).await.expect(cmd);
        assert!(r[0].starts_with("250"), "{cmd}: {r:?}");
    }
    let r = c.smtp_command("DATA").await.expect("data");
    assert!(r[0].starts_with("354"), "{r:?}");
    c.send_raw(SENT.as_bytes()).await.expect("data");
    c.smtp_command(".").await.expect("end of data")
}

/// The bearer logins a fake POP3 upstream checked.
pub fn pop3_bearer(fake: &FakePop3) -> Vec<BearerAttempt> {
    fake.events()
        .into_iter()
        .filter_map(|e| match e {
            Pop3Event::BearerAuth(a) => Some(a),
            _ => None,
        })
        .collect()
}

/// The bearer logins a fake SMTP upstream checked.
pub fn smtp_bearer(fake: &FakeSmtp) -> Vec<BearerAttempt> {
    fake.events()
        .into_iter()
        .filter_map(|e| match e {
            SmtpEvent::BearerAuth(a) => Some(a),
            _ => None,
        })
        .collect()
}

/// The protocol violations a fake POP3 upstream saw (none, for postern).
pub fn pop3_violations(fake: &FakePop3) -> Vec<String> {
    fake.events()
        .into_iter()
        .filter_map(|e| match e {
            Pop3Event::ClientViolation(v) => Some(v),
            _ => None,
        })
        .collect()
}

/// The protocol violations a fake SMTP upstream saw (none, for postern).
pub fn smtp_violations(fake: &FakeSmtp) -> Vec<String> {
    fake.events()
        .into_iter()
        .filter_map(|e| match e {
            SmtpEvent::ClientViolation(v) => Some(v),
            _ => None,
        })
        .collect()
}

/// The mechanism a route's `auth:` names.
pub fn mechanism(auth: &str) -> BearerMechanism {
    BearerMechanism::from_name(auth).expect("xoauth2 or oauthbearer")
}
