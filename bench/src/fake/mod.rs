//! Fast fake POP3S and SMTPS upstreams (implicit TLS, rustls, the test
//! PKI). Unlike the testkit's scripted fakes they log nothing per command
//! and keep no message: they exist to never be the bottleneck. The
//! protocol is the minimum the three targets use: POP3 greeting, CAPA,
//! USER/PASS, STAT, LIST, RETR of the one message, NOOP, RSET, QUIT; SMTP
//! EHLO, AUTH PLAIN/LOGIN, MAIL, RCPT, DATA (counted and discarded), RSET,
//! NOOP, QUIT.
//!
//! Every handshake is counted by kind (`ServerConnection::handshake_kind`),
//! so the benchmark can tell resumed from full handshakes per phase.
//! Tickets are stateless (the ring ticketer, as large providers issue
//! them), so the upstream never limits resumption: what is measured is
//! how well each client keeps and reuses its tickets.

mod pop3;
mod smtp;

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::{HandshakeKind, ServerConnection};
use serde::Serialize;
use tokio::io::{AsyncBufRead, AsyncBufReadExt as _};
use tokio::net::{TcpListener, TcpSocket};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;

use crate::error::{BenchError, Result};

/// A TLS handshake on the upstream side.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);
/// A command from a client of the upstream; idle benchmark sessions wait
/// far less than this, so only a stuck run is cut.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest command line (SMTP AUTH lines may be long).
const MAX_LINE: usize = 16 * 1024;
/// Accept queue: bursts of logins must not overflow it.
const BACKLOG: u32 = 4096;

/// Counters of everything the upstreams saw.
#[derive(Debug, Default)]
pub struct UpstreamStats {
    full: AtomicU64,
    resumed: AtomicU64,
    failed_handshakes: AtomicU64,
    protocol_errors: AtomicU64,
    suites: Mutex<BTreeMap<String, u64>>,
}

/// Handshake counts at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Handshakes {
    pub full: u64,
    pub resumed: u64,
    pub failed: u64,
}

impl Handshakes {
    pub fn since(self, earlier: Handshakes) -> Handshakes {
        Handshakes {
            full: self.full.saturating_sub(earlier.full),
            resumed: self.resumed.saturating_sub(earlier.resumed),
            failed: self.failed.saturating_sub(earlier.failed),
        }
    }
}

impl UpstreamStats {
    pub fn handshakes(&self) -> Handshakes {
        Handshakes {
            full: self.full.load(Ordering::Relaxed),
            resumed: self.resumed.load(Ordering::Relaxed),
            failed: self.failed_handshakes.load(Ordering::Relaxed),
        }
    }

    pub fn protocol_errors(&self) -> u64 {
        self.protocol_errors.load(Ordering::Relaxed)
    }

    /// Negotiated "version suite" strings and how often each was seen.
    pub fn suites(&self) -> BTreeMap<String, u64> {
        self.suites.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn record(&self, conn: &ServerConnection) {
        let counter = match conn.handshake_kind() {
            Some(HandshakeKind::Resumed) => &self.resumed,
            _ => &self.full,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let suite = format!(
            "{:?} {:?}",
            conn.protocol_version(),
            conn.negotiated_cipher_suite().map(|s| s.suite())
        );
        if let Ok(mut s) = self.suites.lock() {
            *s.entry(suite).or_default() += 1;
        }
    }
}

/// What a connection of the fakes shares: the counters and the message.
#[derive(Debug)]
struct Shared {
    stats: Arc<UpstreamStats>,
    /// The one POP3 message, its body followed by `.` CRLF.
    message: Arc<[u8]>,
    /// The body's length (what STAT and LIST say).
    body_len: usize,
}

/// The two fake upstreams, running on their own runtime.
#[derive(Debug)]
pub struct FakeUpstreams {
    pub pop3: SocketAddr,
    pub smtp: SocketAddr,
    pub stats: Arc<UpstreamStats>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for FakeUpstreams {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Proto {
    Pop3,
    Smtp,
}

impl FakeUpstreams {
    /// Starts both on `rt`, with `body` as the POP3 message.
    pub fn start(
        rt: &Handle,
        tls: Arc<rustls::ServerConfig>,
        body: &[u8],
    ) -> Result<FakeUpstreams> {
        let mut message = Vec::with_capacity(body.len() + 3);
        message.extend_from_slice(body);
        message.extend_from_slice(b".\r\n");
        let stats = Arc::new(UpstreamStats::default());
        let shared = Arc::new(Shared {
            stats: stats.clone(),
            message: message.into(),
            body_len: body.len(),
        });
        let acceptor = TlsAcceptor::from(tls);
        let _guard = rt.enter();
        let (pop3_l, pop3) = listen()?;
        let (smtp_l, smtp) = listen()?;
        let tasks = vec![
            rt.spawn(serve(pop3_l, acceptor.clone(), shared.clone(), Proto::Pop3)),
            rt.spawn(serve(smtp_l, acceptor, shared, Proto::Smtp)),
        ];
        Ok(FakeUpstreams {
            pop3,
            smtp,
            stats,
            tasks,
        })
    }
}

fn listen() -> Result<(TcpListener, SocketAddr)> {
    let setup = |e: io::Error| BenchError::Setup(format!("fake upstream listener: {e}"));
    let socket = TcpSocket::new_v4().map_err(setup)?;
    socket
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .map_err(setup)?;
    let listener = socket.listen(BACKLOG).map_err(setup)?;
    let addr = listener.local_addr().map_err(setup)?;
    Ok((listener, addr))
}

async fn serve(listener: TcpListener, acceptor: TlsAcceptor, shared: Arc<Shared>, proto: Proto) {
    loop {
        match listener.accept().await {
            Ok((tcp, _)) => {
                let _ = tcp.set_nodelay(true);
                tokio::spawn(connection(tcp, acceptor.clone(), shared.clone(), proto));
            }
            // EMFILE and friends: do not spin.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

async fn connection(
    tcp: tokio::net::TcpStream,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    proto: Proto,
) {
    let tls = match timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        _ => {
            shared
                .stats
                .failed_handshakes
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    shared.stats.record(tls.get_ref().1);
    let result = match proto {
        Proto::Pop3 => pop3::session(tls, &shared).await,
        Proto::Smtp => smtp::session(tls, &shared).await,
    };
    // A client that goes away is normal (a dropped session); a command the
    // fake does not know is a bug in the benchmark or the proxy.
    if let Err(Fault::Protocol) = result {
        shared.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// Why a fake session ended early.
#[derive(Debug)]
enum Fault {
    Gone,
    Protocol,
}

impl From<io::Error> for Fault {
    fn from(_: io::Error) -> Self {
        Fault::Gone
    }
}

/// Reads one line (CRLF included) into `line`; `Ok(false)` at a clean EOF.
async fn read_line<R: AsyncBufRead + Unpin>(r: &mut R, line: &mut Vec<u8>) -> Result<bool, Fault> {
    line.clear();
    let read = async {
        loop {
            let buf = r.fill_buf().await?;
            if buf.is_empty() {
                return Ok::<bool, Fault>(false);
            }
            let (take, done) = match memchr::memchr(b'\n', buf) {
                Some(i) => (i + 1, true),
                None => (buf.len(), false),
            };
            line.extend_from_slice(&buf[..take]);
            r.consume(take);
            if done {
                return Ok(true);
            }
            if line.len() > MAX_LINE {
                return Err(Fault::Protocol);
            }
        }
    };
    timeout(COMMAND_TIMEOUT, read)
        .await
        .map_err(|_| Fault::Gone)?
}

/// The command verb of `line`, upper-cased.
fn verb(line: &[u8]) -> [u8; 4] {
    let mut v = [b' '; 4];
    for (d, s) in v
        .iter_mut()
        .zip(line.iter().take_while(|b| b.is_ascii_alphabetic()))
    {
        *d = s.to_ascii_uppercase();
    }
    v
}

/// The first argument of `line` (after the verb), without CRLF.
fn argument(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\r\n").unwrap_or(line);
    match line.iter().position(|b| *b == b' ') {
        Some(i) => &line[i + 1..],
        None => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_and_arguments() {
        assert_eq!(&verb(b"retr 1\r\n"), b"RETR");
        assert_eq!(&verb(b"QUIT\r\n"), b"QUIT");
        assert_eq!(&verb(b"DATA\r\n"), b"DATA");
        assert_eq!(&verb(b"X\r\n"), b"X   ");
        assert_eq!(argument(b"AUTH PLAIN AGEAYg==\r\n"), b"PLAIN AGEAYg==");
        assert_eq!(argument(b"NOOP\r\n"), b"");
    }
}
