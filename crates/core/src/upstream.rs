//! Reaching an upstream: resolve afresh per session, connect with a
//! deadline, optionally wrap in TLS. Every failure says it is the upstream's.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use crate::config::HostPort;
use crate::io::{Conn, Stream, UpgradeError};
use crate::limits::Timeouts;

/// Something went wrong on the upstream side of a session.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    /// DNS failed.
    #[error("cannot resolve {address}: {source}")]
    Resolve {
        /// What was looked up.
        address: String,
        /// Why it failed.
        source: io::Error,
    },
    /// DNS returned nothing.
    #[error("{0} resolves to no address")]
    NoAddress(String),
    /// TCP connect failed on every address.
    #[error("cannot connect to {address}: {source}")]
    Connect {
        /// Where.
        address: String,
        /// The last error.
        source: io::Error,
    },
    /// A deadline passed.
    #[error("the server did not answer in time ({0})")]
    Timeout(&'static str),
    /// TLS handshake or verification failed.
    #[error("TLS with the server failed: {0}")]
    Tls(io::Error),
    /// The STARTTLS upgrade was refused or unsafe.
    #[error("{0}")]
    Upgrade(#[from] UpgradeError),
    /// The server closed the connection.
    #[error("the server closed the connection ({0})")]
    Closed(&'static str),
    /// Reading or writing failed.
    #[error("connection to the server failed: {0}")]
    Io(#[from] io::Error),
    /// The server said something that breaks the protocol.
    #[error("{0}")]
    Protocol(String),
}

/// Runs `fut` with a deadline, mapping expiry to [`UpstreamError::Timeout`].
pub async fn deadline<T, E>(
    limit: Duration,
    what: &'static str,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, UpstreamError>
where
    UpstreamError: From<E>,
{
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r.map_err(UpstreamError::from),
        Err(_) => Err(UpstreamError::Timeout(what)),
    }
}

/// Resolves `addr` now and connects to the first address that answers.
pub async fn connect_tcp(addr: &HostPort, timeout: Duration) -> Result<TcpStream, UpstreamError> {
    let display = addr.to_string();
    let resolved = match tokio::time::timeout(
        timeout,
        tokio::net::lookup_host((addr.host.as_str(), addr.port)),
    )
    .await
    {
        Ok(Ok(it)) => it.collect::<Vec<_>>(),
        Ok(Err(source)) => {
            return Err(UpstreamError::Resolve {
                address: display,
                source,
            })
        }
        Err(_) => return Err(UpstreamError::Timeout("resolving the server name")),
    };
    if resolved.is_empty() {
        return Err(UpstreamError::NoAddress(display));
    }
    let mut last = None;
    for sa in resolved {
        match tokio::time::timeout(timeout, TcpStream::connect(sa)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Ok(Err(e)) => last = Some(e),
            Err(_) => last = Some(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
        }
    }
    Err(UpstreamError::Connect {
        address: display,
        source: last.unwrap_or_else(|| io::Error::other("no address tried")),
    })
}

/// TLS settings for one upstream.
#[derive(Debug, Clone)]
pub struct TlsTarget {
    /// Client configuration (roots, pins).
    pub config: Arc<rustls::ClientConfig>,
    /// Name checked and sent as SNI.
    pub name: ServerName<'static>,
}

/// Connects with implicit TLS from the first byte.
pub async fn connect_tls(
    addr: &HostPort,
    tls: &TlsTarget,
    timeouts: &Timeouts,
) -> Result<Conn, UpstreamError> {
    let tcp = connect_tcp(addr, timeouts.connect).await?;
    let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
    match tokio::time::timeout(
        timeouts.tls_handshake,
        connector.connect(tls.name.clone(), tcp),
    )
    .await
    {
        Ok(Ok(s)) => Ok(Conn::new(Stream::TlsClient(Box::new(s)))),
        Ok(Err(e)) => Err(UpstreamError::Tls(e)),
        Err(_) => Err(UpstreamError::Timeout("TLS handshake")),
    }
}

/// Upgrades after a STLS/STARTTLS go-ahead, under the handshake deadline.
pub async fn starttls(
    conn: Conn,
    tls: &TlsTarget,
    timeouts: &Timeouts,
) -> Result<Conn, UpstreamError> {
    match tokio::time::timeout(
        timeouts.tls_handshake,
        conn.upgrade_client(tls.config.clone(), tls.name.clone()),
    )
    .await
    {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(UpgradeError::Handshake(e))) => Err(UpstreamError::Tls(e)),
        Ok(Err(e)) => Err(UpstreamError::Upgrade(e)),
        Err(_) => Err(UpstreamError::Timeout("TLS handshake")),
    }
}
