//! The load generator's connection: plain TCP to a proxy, or TLS straight
//! to the fake upstream (the "direct" physical limit). One read buffer per
//! connection, commands written whole and flushed, every step under a
//! deadline.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use postern_core::io::Stream;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;

use crate::error::{BenchError, Result};
use crate::wire::EndFinder;

/// Who the load generator talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Postern,
    Stunnel,
    Direct,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Postern, Kind::Stunnel, Kind::Direct];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Postern => "postern",
            Kind::Stunnel => "stunnel",
            Kind::Direct => "direct",
        }
    }
}

/// One POP3 or SMTP service of a target.
#[derive(Clone)]
pub struct Endpoint {
    pub kind: Kind,
    pub addr: SocketAddr,
    /// Set for the direct target: TLS to the upstream, as a proxy would.
    pub tls: Option<(TlsConnector, ServerName<'static>)>,
    /// Deadline of each step (connect, handshake, one reply, one write).
    pub step: Duration,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("kind", &self.kind)
            .field("addr", &self.addr)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// A connection of the load generator.
pub struct Conn {
    stream: Stream,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    step: Duration,
}

/// Read buffer of connections that move message data.
pub const BULK_BUFFER: usize = 64 * 1024;
/// Read buffer of connections that only exchange command lines.
pub const LINE_BUFFER: usize = 4 * 1024;

async fn step<T>(
    what: &'static str,
    limit: Duration,
    f: impl std::future::Future<Output = io::Result<T>>,
) -> Result<T> {
    match timeout(limit, f).await {
        Ok(r) => r.map_err(BenchError::io(what)),
        Err(_) => Err(BenchError::Timeout(what)),
    }
}

impl Conn {
    /// Connects (and for the direct target, completes the TLS handshake).
    pub async fn open(ep: &Endpoint, buffer: usize) -> Result<Conn> {
        let tcp = step("connect", ep.step, TcpStream::connect(ep.addr)).await?;
        let _ = tcp.set_nodelay(true);
        let stream = match &ep.tls {
            None => Stream::Tcp(tcp),
            Some((connector, name)) => {
                let tls = step(
                    "TLS handshake",
                    ep.step,
                    connector.connect(name.clone(), tcp),
                )
                .await?;
                Stream::TlsClient(Box::new(tls))
            }
        };
        Ok(Conn {
            stream,
            buf: vec![0; buffer].into_boxed_slice(),
            start: 0,
            end: 0,
            step: ep.step,
        })
    }

    async fn fill(&mut self, what: &'static str) -> Result<()> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            if self.start == 0 {
                return Err(BenchError::reply(what, &self.buf[..]));
            }
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let n = step(what, self.step, self.stream.read(&mut self.buf[self.end..])).await?;
        if n == 0 {
            return Err(BenchError::Closed(what));
        }
        self.end += n;
        Ok(())
    }

    /// The next line, CRLF included.
    pub async fn line(&mut self, what: &'static str) -> Result<&[u8]> {
        loop {
            if let Some(i) = memchr::memchr(b'\n', &self.buf[self.start..self.end]) {
                let from = self.start;
                self.start += i + 1;
                return Ok(&self.buf[from..self.start]);
            }
            self.fill(what).await?;
        }
    }

    /// Writes `bytes` whole and flushes.
    pub async fn send(&mut self, what: &'static str, bytes: &[u8]) -> Result<()> {
        let s = &mut self.stream;
        step(what, self.step, async {
            s.write_all(bytes).await?;
            s.flush().await
        })
        .await
    }

    /// Writes a large body under one overall deadline.
    pub async fn send_bulk(
        &mut self,
        what: &'static str,
        bytes: &[u8],
        limit: Duration,
    ) -> Result<()> {
        let s = &mut self.stream;
        step(what, limit, async {
            s.write_all(bytes).await?;
            s.flush().await
        })
        .await
    }

    /// A POP3 reply that must be `+OK`.
    pub async fn pop3_ok(&mut self, what: &'static str) -> Result<&[u8]> {
        let line = self.line(what).await?;
        if line.starts_with(b"+OK") {
            Ok(line)
        } else {
            Err(BenchError::reply(what, line))
        }
    }

    /// Sends a POP3 command and expects `+OK`.
    pub async fn pop3(&mut self, what: &'static str, command: &[u8]) -> Result<()> {
        self.send(what, command).await?;
        self.pop3_ok(what).await.map(drop)
    }

    /// An SMTP reply (all its lines) whose code must be `code`; returns the
    /// last line.
    pub async fn smtp(&mut self, what: &'static str, code: &[u8; 3]) -> Result<Vec<u8>> {
        loop {
            let line = self.line(what).await?;
            if line.len() < 4 || &line[..3] != code {
                return Err(BenchError::reply(what, line));
            }
            if line[3] != b'-' {
                return Ok(line.to_vec());
            }
        }
    }

    /// Reads a multi-line body to its end (after the status line), all
    /// within `limit`; returns its length without the final `.` CRLF.
    pub async fn body(&mut self, what: &'static str, limit: Duration) -> Result<u64> {
        let mut end = EndFinder::default();
        Ok(self.body_rest(what, &mut end, limit).await? - 3)
    }

    /// Reads on to the end `end` is looking for, within `limit`; returns
    /// the bytes consumed, the final `.` CRLF included.
    pub async fn body_rest(
        &mut self,
        what: &'static str,
        end: &mut EndFinder,
        limit: Duration,
    ) -> Result<u64> {
        match timeout(limit, self.read_to_end_marker(what, end)).await {
            Ok(r) => r,
            Err(_) => Err(BenchError::Timeout(what)),
        }
    }

    async fn read_to_end_marker(&mut self, what: &'static str, end: &mut EndFinder) -> Result<u64> {
        let mut total = 0u64;
        loop {
            if self.start == self.end {
                self.fill(what).await?;
            }
            let chunk = &self.buf[self.start..self.end];
            if let Some(n) = end.feed(chunk) {
                self.start += n;
                return Ok(total + n as u64);
            }
            total += chunk.len() as u64;
            self.start = self.end;
        }
    }

    /// Reads at most `max` bytes of a body (for the slow reader), feeding
    /// `end`; `Ok(true)` once the end was seen.
    pub async fn body_some(
        &mut self,
        what: &'static str,
        end: &mut EndFinder,
        max: usize,
    ) -> Result<(usize, bool)> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            let limit = max.min(self.buf.len());
            let n = step(what, self.step, self.stream.read(&mut self.buf[..limit])).await?;
            if n == 0 {
                return Err(BenchError::Closed(what));
            }
            self.end = n;
        }
        let avail = (self.end - self.start).min(max);
        let chunk = &self.buf[self.start..self.start + avail];
        match end.feed(chunk) {
            Some(n) => {
                self.start += n;
                Ok((n, true))
            }
            None => {
                self.start += avail;
                Ok((avail, false))
            }
        }
    }
}

/// A TLS connector for the direct target: trusts the test CA, resumes
/// sessions with rustls's defaults (as postern's own client does).
pub fn direct_connector(config: Arc<rustls::ClientConfig>) -> TlsConnector {
    TlsConnector::from(config)
}
