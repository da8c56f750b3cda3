//! Reaching an upstream: resolve afresh per session, connect with a
//! deadline, optionally wrap in TLS. Every failure says it is the upstream's.

use std::io;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::config::HostPort;
use crate::io::{Conn, Deadline, LineRead, Stream, UpgradeError};
use crate::limits::Timeouts;
pub use crate::tls::{TlsTarget, UpstreamTransport};

/// Something went wrong on the upstream side of a session.
#[derive(Debug, thiserror::Error)]
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
    /// The server said something that breaks the protocol (the machine's
    /// reason, safe to log).
    #[error("{0}")]
    Protocol(String),
    /// The server broke the reply framing.
    #[error("{0}")]
    Misbehaved(#[from] Misbehaved),
    /// TLS cannot be had on a route that requires it (STARTTLS not offered
    /// or refused, the route's mechanism missing after TLS): fail closed.
    #[error("{0}")]
    Insecure(String),
}

impl UpstreamError {
    /// Whether the failure is about getting a secure connection (clients
    /// are told so with their protocol's security code).
    pub fn is_tls(&self) -> bool {
        matches!(
            self,
            UpstreamError::Tls(_) | UpstreamError::Upgrade(_) | UpstreamError::Insecure(_)
        )
    }
}

/// Ways an upstream breaks the framing that pairs replies with commands.
/// Each one ends the upstream session: a reply that cannot be paired with
/// its command must never reach a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Misbehaved {
    /// Bytes arrived while no command was outstanding.
    #[error("the server sent data nobody asked for (unsolicited reply, {0})")]
    Unsolicited(&'static str),
    /// A reply line exceeded the protocol's cap.
    #[error("the server sent a line longer than {max} bytes during {phase}")]
    LineTooLong {
        /// What postern was waiting for.
        phase: &'static str,
        /// The cap.
        max: usize,
    },
    /// A reply did not parse.
    #[error("the server's reply is malformed during {phase}: {why}")]
    Malformed {
        /// What postern was waiting for.
        phase: &'static str,
        /// What was wrong (sanitized).
        why: String,
    },
    /// SMTP: a reply arrived while the message data was being sent.
    #[error("the server replied in the middle of the message data")]
    ReplyDuringData,
    /// SMTP: DATA was answered with a positive reply other than 354.
    #[error("the server answered DATA with {0} instead of 354")]
    DataNotStarted(u16),
    /// POP3: the server repeated an APOP timestamp.
    #[error("the server repeated an APOP timestamp (a chosen-timestamp attack on APOP?); refusing to send a digest")]
    RepeatedTimestamp,
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

/// Connects with implicit TLS from the first byte.
pub async fn connect_tls(
    addr: &HostPort,
    tls: &TlsTarget,
    timeouts: &Timeouts,
) -> Result<Conn, UpstreamError> {
    let tcp = connect_tcp(addr, timeouts.connect).await?;
    let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
    let started = std::time::Instant::now();
    match tokio::time::timeout(
        timeouts.tls_handshake,
        connector.connect(tls.name.clone(), tcp),
    )
    .await
    {
        Ok(Ok(s)) => {
            crate::metrics::tls_handshake("upstream", started.elapsed());
            Ok(Conn::new(Stream::TlsClient(Box::new(s))))
        }
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
    let started = std::time::Instant::now();
    match tokio::time::timeout(
        timeouts.tls_handshake,
        conn.upgrade_client(tls.config.clone(), tls.name.clone()),
    )
    .await
    {
        Ok(Ok(c)) => {
            crate::metrics::tls_handshake("upstream", started.elapsed());
            Ok(c)
        }
        Ok(Err(UpgradeError::Handshake(e))) => Err(UpstreamError::Tls(e)),
        Ok(Err(e)) => Err(UpstreamError::Upgrade(e)),
        Err(_) => Err(UpstreamError::Timeout("TLS handshake")),
    }
}

/// Accumulates reply lines into one complete reply (sans-IO): a POP3
/// status line (plus its body when one is expected), an SMTP multi-line
/// reply.
pub trait Framer {
    /// A complete reply.
    type Reply;
    /// The longest line accepted.
    fn max_line(&self) -> usize;
    /// Takes one line (terminator included); `Some` once the reply is complete.
    fn push(&mut self, line: Vec<u8>) -> Result<Option<Self::Reply>, String>;
}

/// What an upstream machine wants done on the wire.
#[derive(Debug)]
pub enum Io {
    /// Read the next reply.
    Read,
    /// Send these bytes (they may hold a secret: never log them), then read.
    Send(zeroize::Zeroizing<Vec<u8>>),
    /// The server said go ahead: handshake (refusing bytes past the
    /// go-ahead), then call [`Machine::on_tls`].
    StartTls,
}

/// The next step of an upstream machine.
#[derive(Debug)]
pub enum Step<D> {
    /// Wire work for the driver.
    Io(Io),
    /// The machine needs the client again.
    Done(D),
}

impl<D> Step<D> {
    /// Read the next reply.
    pub fn read() -> Self {
        Step::Io(Io::Read)
    }

    /// Send one command line made of `parts` (CRLF added), then read.
    pub fn send(parts: &[&[u8]]) -> Self {
        Step::Io(Io::Send(command_line(parts)))
    }

    /// Handshake after the server's go-ahead.
    pub fn start_tls() -> Self {
        Step::Io(Io::StartTls)
    }

    /// The command a `Send` step carries (it may hold a secret: never log it).
    pub fn sent(&self) -> Option<&[u8]> {
        match self {
            Step::Io(Io::Send(bytes)) => Some(bytes),
            _ => None,
        }
    }

    /// Where the machine stopped, if it did.
    pub fn into_done(self) -> Option<D> {
        match self {
            Step::Done(d) => Some(d),
            Step::Io(_) => None,
        }
    }
}

/// One command line from `parts`, CRLF added, in memory that is zeroized
/// when dropped (it may hold a password or digest).
pub fn command_line(parts: &[&[u8]]) -> zeroize::Zeroizing<Vec<u8>> {
    let len = parts.iter().map(|p| p.len()).sum::<usize>() + 2;
    let mut v = zeroize::Zeroizing::new(Vec::with_capacity(len));
    for p in parts {
        v.extend_from_slice(p);
    }
    v.extend_from_slice(b"\r\n");
    v
}

/// Server text made safe to log or quote: printable ASCII, at most 120
/// characters, anything else as `?`.
pub fn printable(text: &[u8]) -> String {
    text.iter()
        .take(120)
        .map(|&b| {
            if (0x20..0x7f).contains(&b) {
                b as char
            } else {
                '?'
            }
        })
        .collect()
}

/// What a connect machine saw on the way to `Ready`, for `postern probe`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    /// The greeting's text, printable.
    pub greeting: String,
    /// What the server offered before STARTTLS (routes that upgrade): POP3
    /// CAPA lines, SMTP EHLO keywords.
    pub before_tls: Option<Vec<String>>,
}

/// A sans-IO upstream machine (connect, secure, log in) the generic
/// [`drive`] executes.
pub trait Machine {
    /// One complete reply.
    type Reply;
    /// How the machine's replies are framed.
    type Framer: Framer<Reply = Self::Reply>;
    /// Where the machine stops for the client.
    type Done;
    /// Whether the server may speak between commands. POP3 and SMTP
    /// servers answer only when asked, so by default anything unasked ends
    /// the session and a stray line is never paired with the next command
    /// ([`Link::send`]). IMAP tags every completion and may send untagged
    /// data at any time (RFC 9051 §7); its framer collects that data while
    /// it reads up to the tagged completion, so its machines set this.
    const UNSOLICITED_ALLOWED: bool = false;
    /// What the machine waits for, for logs and timeouts.
    fn phase(&self) -> &'static str;
    /// A framer for the next reply.
    fn framer(&self) -> Self::Framer;
    /// Handles one reply.
    fn on_reply(&mut self, reply: Self::Reply) -> Result<Step<Self::Done>, UpstreamError>;
    /// The STARTTLS handshake succeeded (only called after the machine
    /// asked for it with [`Io::StartTls`]).
    fn on_tls(&mut self) -> Result<Step<Self::Done>, UpstreamError> {
        Err(UpstreamError::Protocol(format!(
            "TLS upgrade not expected during {}",
            self.phase()
        )))
    }
}

/// One upstream connection: every command goes through [`Link::send`],
/// which refuses to write while the server has anything pending, so a
/// stray line can never be paired with the next command.
#[derive(Debug)]
pub struct Link {
    conn: Conn,
    /// The one timer for every read and write deadline on this link.
    deadline: Deadline,
    tls: Option<TlsTarget>,
    timeouts: Timeouts,
}

impl Link {
    /// Resolves, connects and (for implicit TLS) handshakes.
    pub async fn connect(
        addr: &HostPort,
        transport: &UpstreamTransport,
        timeouts: &Timeouts,
    ) -> Result<Self, UpstreamError> {
        let (mut conn, tls) = match transport {
            UpstreamTransport::Tls(t) => (connect_tls(addr, t, timeouts).await?, None),
            UpstreamTransport::StartTls(t) => (
                Conn::new(Stream::Tcp(connect_tcp(addr, timeouts.connect).await?)),
                Some(t.clone()),
            ),
            UpstreamTransport::Plain => (
                Conn::new(Stream::Tcp(connect_tcp(addr, timeouts.connect).await?)),
                None,
            ),
        };
        conn.set_write_timeout(timeouts.write);
        Ok(Self {
            conn,
            deadline: Deadline::new(),
            tls,
            timeouts: *timeouts,
        })
    }

    /// The connection, for streaming bodies.
    pub fn conn(&mut self) -> &mut Conn {
        &mut self.conn
    }

    /// Runs `op` on the connection for at most `limit` (`None`: the time
    /// ran out), on the link's one deadline timer: what relays use per
    /// chunk.
    pub async fn within<'a, F, Fut>(&'a mut self, limit: Duration, op: F) -> Option<Fut::Output>
    where
        F: FnOnce(&'a mut Conn) -> Fut,
        Fut: std::future::Future + 'a,
    {
        self.deadline.run(limit, op(&mut self.conn)).await
    }

    /// postern's own address on this connection.
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.conn.stream().local_addr()
    }

    /// The negotiated TLS and the server's certificate (`postern probe`).
    pub fn tls_info(&self) -> Option<crate::probe::TlsInfo> {
        match self.conn.stream() {
            Stream::TlsClient(s) => {
                crate::probe::TlsInfo::of(s.get_ref().1, self.tls_description()?)
            }
            _ => None,
        }
    }

    /// The negotiated TLS version and cipher suite, for logs.
    pub fn tls_description(&self) -> Option<String> {
        self.conn.stream().tls_description()
    }

    /// The negotiated TLS version, for logs.
    pub fn tls_version(&self) -> Option<&'static str> {
        self.conn.stream().tls_version()
    }

    /// Fails if the server has sent anything nobody asked for: in the
    /// buffer, or already waiting in the socket.
    pub async fn ensure_quiet(&mut self, phase: &'static str) -> Result<(), UpstreamError> {
        if !self.conn.buffered().is_empty() {
            return Err(Misbehaved::Unsolicited(phase).into());
        }
        match self.conn.poll_input().await {
            None => Ok(()),
            Some(Ok(0)) => Err(UpstreamError::Closed(phase)),
            Some(Ok(_)) => Err(Misbehaved::Unsolicited(phase).into()),
            Some(Err(e)) => Err(UpstreamError::Io(e)),
        }
    }

    /// Writes a command (or data) once the server is quiet, within the
    /// write deadline.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), UpstreamError> {
        self.ensure_quiet("before a command").await?;
        self.write_raw(bytes).await
    }

    /// Reads more into the buffer within `limit` (a relay's next chunk);
    /// `Ok(0)` at the server's end of stream.
    pub async fn fill(
        &mut self,
        limit: Duration,
        what: &'static str,
    ) -> Result<usize, UpstreamError> {
        match self.within(limit, |c| c.fill()).await {
            Some(r) => Ok(r?),
            None => Err(UpstreamError::Timeout(what)),
        }
    }

    /// Writes without the quiet check (message data, whose end is checked
    /// by the caller).
    pub async fn write_raw(&mut self, bytes: &[u8]) -> Result<(), UpstreamError> {
        let limit = self.conn.write_timeout();
        match self.within(limit, |c| c.write_all(bytes)).await {
            Some(r) => r.map_err(UpstreamError::Io),
            None => Err(UpstreamError::Timeout("writing to the server")),
        }
    }

    /// Reads one complete reply through `framer`, under one deadline.
    pub async fn read_reply<F: Framer>(
        &mut self,
        mut framer: F,
        phase: &'static str,
        limit: Duration,
    ) -> Result<F::Reply, UpstreamError> {
        let conn = &mut self.conn;
        let read = async move {
            loop {
                let max = framer.max_line();
                let line = match conn.read_line(max).await? {
                    LineRead::Line(l) => l,
                    LineRead::TooLong => return Err(Misbehaved::LineTooLong { phase, max }.into()),
                    LineRead::Eof => return Err(UpstreamError::Closed(phase)),
                };
                match framer.push(line) {
                    Ok(Some(reply)) => return Ok(reply),
                    Ok(None) => {}
                    Err(why) => return Err(Misbehaved::Malformed { phase, why }.into()),
                }
            }
        };
        match self.deadline.run(limit, read).await {
            Some(r) => r,
            None => Err(UpstreamError::Timeout(phase)),
        }
    }

    /// Sends a command and reads its reply.
    pub async fn command<F: Framer>(
        &mut self,
        line: &[u8],
        framer: F,
        phase: &'static str,
    ) -> Result<F::Reply, UpstreamError> {
        self.send(line).await?;
        let limit = self.timeouts.upstream_reply;
        self.read_reply(framer, phase, limit).await
    }

    /// Resolves when the server sends anything or closes while postern is
    /// not waiting for a reply: always an error (use in a `select!` beside
    /// the client read; cancel-safe).
    pub async fn unsolicited(&mut self, phase: &'static str) -> UpstreamError {
        if !self.conn.buffered().is_empty() {
            return Misbehaved::Unsolicited(phase).into();
        }
        match self.conn.fill().await {
            Ok(0) => UpstreamError::Closed(phase),
            Ok(_) => Misbehaved::Unsolicited(phase).into(),
            Err(e) => UpstreamError::Io(e),
        }
    }

    /// Upgrades after a STLS/STARTTLS go-ahead. A link without TLS
    /// settings (a `Plain` or already-TLS transport) refuses.
    async fn starttls(&mut self) -> Result<(), UpstreamError> {
        let Some(tls) = self.tls.take() else {
            return Err(UpstreamError::Upgrade(UpgradeError::AlreadyTls));
        };
        let conn = std::mem::replace(&mut self.conn, Conn::new(Stream::Detached));
        self.conn = starttls(conn, &tls, &self.timeouts).await?;
        Ok(())
    }

    /// Best effort goodbye: writes `line`, waits briefly for any answer.
    pub async fn goodbye(mut self, line: &[u8]) {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            self.conn.write_all(line).await?;
            self.conn.read_line(512).await
        })
        .await;
    }
}

/// Executes a machine's wire steps until it needs the client again.
pub async fn drive<M: Machine>(
    link: &mut Link,
    machine: &mut M,
    first: Step<M::Done>,
) -> Result<M::Done, UpstreamError> {
    let mut step = first;
    loop {
        step = match step {
            Step::Done(done) => return Ok(done),
            Step::Io(Io::Read) => {
                let limit = link.timeouts.upstream_reply;
                let reply = link
                    .read_reply(machine.framer(), machine.phase(), limit)
                    .await?;
                machine.on_reply(reply)?
            }
            Step::Io(Io::Send(bytes)) => {
                // The bytes may hold a password or digest: log the phase only.
                tracing::trace!(phase = machine.phase(), "sending to upstream");
                let reply = if M::UNSOLICITED_ALLOWED {
                    link.write_raw(&bytes).await?;
                    let limit = link.timeouts.upstream_reply;
                    link.read_reply(machine.framer(), machine.phase(), limit)
                        .await?
                } else {
                    link.command(&bytes, machine.framer(), machine.phase())
                        .await?
                };
                machine.on_reply(reply)?
            }
            Step::Io(Io::StartTls) => {
                link.starttls().await?;
                tracing::debug!(
                    tls = link.tls_version().unwrap_or("?"),
                    "upstream STARTTLS done"
                );
                machine.on_tls()?
            }
        }
    }
}
