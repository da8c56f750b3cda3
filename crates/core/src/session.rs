//! What every front end's session shares: opening the client side (with
//! implicit TLS when the listener says so) and the one log line that says
//! how a session ended.

use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpStream;

use crate::config::HostPort;
use crate::io::{Conn, Stream};
use crate::limits::Timeouts;
use crate::upstream::UpstreamError;

/// How a session ended; decides the log line.
#[derive(Debug)]
#[non_exhaustive]
pub enum SessionEnd {
    /// The client said goodbye.
    Quit,
    /// The session was closed on the client side or by postern, for this reason.
    Closed(&'static str),
    /// The upstream failed.
    Upstream(UpstreamError),
}

impl From<UpstreamError> for SessionEnd {
    fn from(e: UpstreamError) -> Self {
        SessionEnd::Upstream(e)
    }
}

impl SessionEnd {
    /// Logs the end of a session (inside the session's span: route, client).
    pub fn log(&self, user: Option<&str>, started: Instant, upstream: &HostPort) {
        let ms = started.elapsed().as_millis() as u64;
        let user = user.unwrap_or("-");
        match self {
            SessionEnd::Quit => tracing::info!(user, ms, "session ended with QUIT"),
            SessionEnd::Closed(why) => tracing::info!(user, ms, why, "session closed"),
            SessionEnd::Upstream(e) => tracing::warn!(
                user,
                ms,
                %upstream,
                cause = %e,
                "session failed on the upstream side"
            ),
        }
    }
}

/// Wraps an accepted client; with `implicit_tls` set, completes the TLS
/// handshake first (under the handshake deadline).
pub async fn open_client(
    stream: TcpStream,
    implicit_tls: Option<&Arc<rustls::ServerConfig>>,
    timeouts: &Timeouts,
) -> Result<Conn, &'static str> {
    let mut client = Conn::new(Stream::Tcp(stream));
    client.set_write_timeout(timeouts.write);
    if let Some(config) = implicit_tls {
        client
            .upgrade_server(config, timeouts.tls_handshake)
            .await
            .map_err(|_| "TLS handshake with the client failed")?;
    }
    Ok(client)
}

/// Runs one client session from accept to the final log line: opens the
/// client side (implicit TLS if set), runs the protocol's `run`, closes the
/// client politely and logs how it ended. `run` records the logged-in user.
pub async fn serve_client(
    stream: TcpStream,
    implicit_tls: Option<&Arc<rustls::ServerConfig>>,
    timeouts: &Timeouts,
    upstream: &HostPort,
    run: impl AsyncFnOnce(&mut Conn, &mut Option<String>) -> SessionEnd,
) {
    let started = Instant::now();
    let mut user = None;
    let end = match open_client(stream, implicit_tls, timeouts).await {
        Ok(mut client) => {
            let end = run(&mut client, &mut user).await;
            client.shutdown().await;
            end
        }
        Err(why) => SessionEnd::Closed(why),
    };
    end.log(user.as_deref(), started, upstream);
}
