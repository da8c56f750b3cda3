//! `postern oauth keygen | login | status`: the OAuth2 account chores, all
//! headless (a terminal, `docker exec`, SSH). Nothing printed here is a
//! token; `keygen` prints the new state key, which is its purpose.

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use postern::config::Config;
use postern::oauth::{DeviceCode, StateKey, TokenSource};

/// `postern oauth keygen`: a fresh state key on stdout.
pub fn keygen() -> ExitCode {
    let key = StateKey::generate().to_base64();
    let mut out = std::io::stdout().lock();
    let written = out
        .write_all(key.expose())
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("postern: cannot write the key: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Every OAuth2 account of the configuration, prepared (key and secrets read).
fn accounts(config: &Config) -> Result<Vec<Arc<TokenSource>>, String> {
    let prepared = postern::prepare::prepare(config).map_err(|e| e.to_string())?;
    Ok(prepared
        .routes
        .iter()
        .flat_map(|r| r.credentials.token_sources())
        .collect())
}

/// `postern oauth login -c FILE ROUTE ACCOUNT`: the device authorization
/// grant for one account; the refresh token goes to its encrypted store.
pub fn login(config: &Config, route: &str, account: &str) -> ExitCode {
    let sources = match accounts(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("postern: {e}");
            return ExitCode::FAILURE;
        }
    };
    let wanted = format!("{route} {account}");
    let Some(source) = sources.iter().find(|s| s.settings().name == wanted) else {
        let known: Vec<&str> = sources.iter().map(|s| s.settings().name.as_str()).collect();
        eprintln!(
            "postern: no OAuth2 account {account:?} on route {route:?}; the OAuth2 accounts are: {}",
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        );
        return ExitCode::FAILURE;
    };
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        eprintln!("postern: cannot start the runtime");
        return ExitCode::FAILURE;
    };
    let settings = source.settings();
    let mut show = |code: &DeviceCode| {
        println!(
            "To let postern use {} for route {route}, sign in as that user:",
            settings.user
        );
        println!();
        println!("  1. open   {}", code.verification_uri);
        println!("  2. enter  {}", code.user_code);
        if let Some(complete) = &code.verification_uri_complete {
            println!("     (or open {complete} directly)");
        }
        println!();
        println!(
            "The code is valid for {} minutes. Waiting for the approval...",
            code.expires_in.as_secs().div_ceil(60)
        );
        let _ = std::io::stdout().flush();
    };
    match runtime.block_on(settings.device_login(&mut show)) {
        Ok(()) => {
            println!(
                "Approved. The refresh token is stored encrypted in {}; a running postern uses it from its next login.",
                settings.store.path().display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("postern: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `postern oauth status -c FILE`: each OAuth2 account, no secret.
pub fn status(config: &Config) -> ExitCode {
    let sources = match accounts(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("postern: {e}");
            return ExitCode::FAILURE;
        }
    };
    if sources.is_empty() {
        println!("no OAuth2 accounts in the configuration");
        return ExitCode::SUCCESS;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let when = |t: Option<u64>| match t {
        None => "never".to_owned(),
        Some(t) if t >= now => format!("in {}", span(t - now)),
        Some(t) => format!("{} ago", span(now - t)),
    };
    for source in &sources {
        let st = source.settings().status();
        println!("{}", st.name);
        println!("  user:          {}", st.user);
        if let Some(nets) = device_sources(config, &st.name) {
            println!("  device:        {nets} (no client login)");
        }
        println!("  provider:      {} ({})", st.provider, st.grant);
        println!("  token store:   {}", st.store.display());
        match &st.state {
            Err(e) => println!("  state:         unreadable: {e}"),
            Ok(None) => println!(
                "  state:         {}",
                match st.grant {
                    postern::config::OAuthGrant::DeviceCode =>
                        "no consent yet: run `postern oauth login` for this account",
                    postern::config::OAuthGrant::ClientCredentials =>
                        "no token requested yet (none is needed before the first session)",
                }
            ),
            Ok(Some(s)) => {
                let state = if s.needs_consent {
                    "NEEDS CONSENT: the provider refused the refresh token; run `postern oauth login`"
                } else if s.refresh_token.is_some() {
                    "refresh token present"
                } else {
                    "no refresh token (client credentials)"
                };
                println!("  state:         {state}");
                println!("  last refresh:  {}", when(s.last_refresh));
                println!("  access token:  expires {}", when(s.access_expires));
                println!(
                    "  last error:    {}",
                    s.last_error.as_deref().unwrap_or("none")
                );
            }
        }
    }
    ExitCode::SUCCESS
}

/// The `sources:` of the device account named `ROUTE ACCOUNT`, if it is one.
fn device_sources(config: &Config, name: &str) -> Option<String> {
    let (route, account) = name.split_once(' ')?;
    let route = config.routes.iter().find(|r| r.name == route)?;
    let postern::config::Credentials::Accounts(c) = &route.credentials else {
        return None;
    };
    let a = c
        .accounts
        .iter()
        .find(|a| a.local_user.is_none() && a.upstream_user == account)?;
    let nets: Vec<String> = a
        .sources
        .as_ref()?
        .iter()
        .map(ToString::to_string)
        .collect();
    Some(nets.join(", "))
}

fn span(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86_400),
    }
}
