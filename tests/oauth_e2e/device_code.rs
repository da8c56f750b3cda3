//! `grant: device_code`: `postern oauth login` (the real binary) shows the
//! verification URI and user code, polls through `authorization_pending`,
//! and leaves a sealed 0600 store; the gateway refreshes from it, persists
//! the rotated refresh token, and a restarted gateway (a new process that
//! has nothing but the store) still logs in: the fake refuses the first
//! refresh token once it was rotated away, so only the persisted new one
//! can work.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use postern_testkit::{GrantType, IdpEvent, RefreshTokenState};

use crate::common::{start, wait_listening, RouteYaml};
use crate::setup::*;

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).expect("store").permissions().mode() & 0o777
}

#[cfg(not(unix))]
fn mode(_: &Path) -> u32 {
    0o600
}

/// `postern run`, killed on drop (its log is in `log`).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn device_login_then_sessions_rotation_and_restart() {
    let w = World::new(idp_script().pending_polls(2).rotate_refresh_tokens(true)).await;
    let fake = w.pop3("tls", "XOAUTH2").await;
    let route = w
        .upstream(RouteYaml::pop3("r", fake.addr()), "tls", "xoauth2")
        .account(w.scanner(w.device()));
    let yaml = w.yaml(route.clone());
    let file = w.config_file("postern.yaml", &yaml);
    let store = w.store("r", LOCAL_USER);

    let out = w.oauth_login(&file, "r", LOCAL_USER).await;
    let user_code = w
        .idp
        .events()
        .into_iter()
        .find_map(|e| match e {
            IdpEvent::DeviceAuthorized { user_code, .. } => Some(user_code),
            _ => None,
        })
        .expect("a device code was asked for");
    assert!(
        out.contains(&format!("{}/device", w.idp.base_url())),
        "no verification URI: {out}"
    );
    assert!(out.contains(&user_code), "no user code: {out}");
    let polls: Vec<String> = w
        .idp
        .events()
        .into_iter()
        .filter_map(|e| match e {
            IdpEvent::DevicePoll { answer, .. } => Some(answer),
            _ => None,
        })
        .collect();
    assert_eq!(
        polls,
        ["authorization_pending", "authorization_pending", "tokens"]
    );
    let violations: Vec<_> = w
        .idp
        .events()
        .into_iter()
        .filter(|e| matches!(e, IdpEvent::ClientViolation(_)))
        .collect();
    assert_eq!(violations, []);

    // The store: private, sealed, no token in clear (and none printed).
    assert_eq!(mode(&store), 0o600);
    let sealed = std::fs::read(&store).expect("store written");
    let issued = w.idp.refresh_tokens();
    assert_eq!(issued.len(), 1);
    let first = issued[0].refresh_token.clone();
    assert!(!contains(&sealed, &first), "refresh token in clear");
    assert!(!out.contains(&first), "refresh token printed");
    for t in w.idp.issued_access_tokens() {
        assert!(!contains(&sealed, &t.access_token));
        assert!(!out.contains(&t.access_token), "access token printed");
    }

    // A session refreshes with the stored token, which rotates.
    let gw = start(&yaml).await;
    let (mut c, r) = pop3_login(gw.addr("r"), LOCAL_USER, LOCAL_PASSWORD).await;
    assert!(r.starts_with("+OK"), "{r}");
    c.command("QUIT").await.expect("quit");
    gw.stop().await;
    assert_eq!(w.idp.token_requests_for(GrantType::RefreshToken), 1);
    let issued = w.idp.refresh_tokens();
    assert_eq!(issued.len(), 2, "{issued:?}");
    assert_eq!(issued[0].state, RefreshTokenState::Rotated);
    assert_eq!(issued[1].state, RefreshTokenState::Live);
    let second = issued[1].refresh_token.clone();
    let resealed = std::fs::read(&store).expect("store");
    assert_ne!(
        resealed, sealed,
        "the rotated refresh token was not persisted"
    );
    assert!(!contains(&resealed, &second) && !contains(&resealed, &first));
    assert_eq!(mode(&store), 0o600);

    // A restart: a new process with the same configuration and store.
    let port = crate::common::free_port();
    let listen = SocketAddr::from(([127, 0, 0, 1], port));
    let restart = w.config_file("restart.yaml", &w.yaml(route.listen(listen)));
    let log = std::fs::File::create(w.dir.path().join("run.log")).expect("log file");
    let _postern = Running(
        Command::new(env!("CARGO_BIN_EXE_postern"))
            .arg("run")
            .arg("-c")
            .arg(&restart)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn postern run"),
    );
    tokio::task::spawn_blocking(move || drop(wait_listening(port)))
        .await
        .expect("listening");
    let (mut c, r) = pop3_login(listen, LOCAL_USER, LOCAL_PASSWORD).await;
    let log = || std::fs::read_to_string(w.dir.path().join("run.log")).unwrap_or_default();
    assert!(r.starts_with("+OK"), "after a restart: {r}\n{}", log());
    assert!(c.command("STAT").await.expect("stat").starts_with("+OK 1 "));
    c.command("QUIT").await.expect("quit");

    assert_eq!(w.idp.token_requests_for(GrantType::RefreshToken), 2);
    let issued = w.idp.refresh_tokens();
    assert_eq!(issued.len(), 3, "{issued:?}");
    assert_eq!(
        (issued[1].state, issued[1].uses),
        (RefreshTokenState::Rotated, 1),
        "the restarted gateway used the persisted token"
    );
    assert_eq!(issued[2].state, RefreshTokenState::Live);
    let refused: Vec<_> = w
        .idp
        .events()
        .into_iter()
        .filter(|e| matches!(e, IdpEvent::Refused { .. }))
        .collect();
    assert_eq!(refused, [], "a rotated-away refresh token was tried");
    let status = w.oauth_status(&file).await;
    assert!(status.contains("refresh token present"), "{status}");
    assert_eq!(pop3_violations(&fake), Vec::<String>::new());
}
