//! Byte I/O at the edge: a stream that may be plain or TLS, and a connection
//! that owns its read buffer.
//!
//! The connection owns the buffer (not the caller) so reads are cancel-safe:
//! a read that times out keeps what it already received. The buffer is also
//! what the STARTTLS checks look at: bytes buffered past a TLS go-ahead are
//! an injection attempt (CVE-2011-0411) and must never be carried over.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// The most a connection buffers from one fill, and so the largest relay
/// chunk: a buffer grows to this while data keeps coming (a bulk transfer;
/// four TLS records, written on to the other side in one call).
pub const READ_BUFFER: usize = 64 * 1024;

/// What a read reserves while a connection is not moving bulk data: a few
/// command or reply lines. Longer lines still assemble (each read adds at
/// least this much); [`Conn::read_line`]'s cap bounds them.
pub const SMALL_READ: usize = 1024;

/// A TCP stream, plain or wrapped in TLS.
#[derive(Debug)]
pub enum Stream {
    /// Plain TCP.
    Tcp(TcpStream),
    /// TLS where postern is the client (upstream side).
    TlsClient(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// TLS where postern is the server (listen side).
    TlsServer(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// Taken out for a TLS upgrade that failed; every I/O call errors.
    Detached,
}

fn detached() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "connection detached by a failed TLS upgrade",
    )
}

impl Stream {
    /// Whether the stream is encrypted.
    pub fn is_tls(&self) -> bool {
        !matches!(self, Stream::Tcp(_))
    }

    /// The local address of the underlying TCP socket.
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        match self {
            Stream::Tcp(s) => s.local_addr(),
            Stream::TlsClient(s) => s.get_ref().0.local_addr(),
            Stream::TlsServer(s) => s.get_ref().0.local_addr(),
            Stream::Detached => Err(detached()),
        }
    }

    /// The negotiated TLS version, for logs.
    pub fn tls_version(&self) -> Option<&'static str> {
        let v = match self {
            Stream::Tcp(_) | Stream::Detached => return None,
            Stream::TlsClient(s) => s.get_ref().1.protocol_version(),
            Stream::TlsServer(s) => s.get_ref().1.protocol_version(),
        };
        v.and_then(|v| v.as_str())
    }

    /// The negotiated TLS version and cipher suite (`TLSv1_3
    /// TLS13_AES_256_GCM_SHA384`), for the end-of-session line.
    pub fn tls_description(&self) -> Option<String> {
        let suite = match self {
            Stream::Tcp(_) | Stream::Detached => return None,
            Stream::TlsClient(s) => s.get_ref().1.negotiated_cipher_suite(),
            Stream::TlsServer(s) => s.get_ref().1.negotiated_cipher_suite(),
        };
        let version = self.tls_version().unwrap_or("TLS");
        Some(match suite.and_then(|s| s.suite().as_str()) {
            Some(name) => format!("{version} {name}"),
            None => version.to_owned(),
        })
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::TlsClient(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::TlsServer(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Detached => Poll::Ready(Err(detached())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::TlsClient(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::TlsServer(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Detached => Poll::Ready(Err(detached())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::TlsClient(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::TlsServer(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Detached => Poll::Ready(Err(detached())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::TlsClient(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::TlsServer(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Detached => Poll::Ready(Ok(())),
        }
    }
}

/// One reusable timer for a connection's deadlines (reads and writes).
///
/// A fresh `tokio::time::timeout` per operation registers a timer in the
/// runtime's wheel (under its lock) and removes it again when the operation
/// ends, on every command and relay chunk. This one timer is moved to each
/// operation's deadline instead: moving it later, the usual case, is one atomic update in
/// tokio, and the wheel is touched only when an old deadline comes round
/// (issue 14: CPU per command). Semantics are `timeout`'s: the future is
/// polled first, so an answer that is already there wins over an expired
/// deadline; the time counts from the first poll.
#[derive(Debug)]
pub struct Deadline {
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl Deadline {
    /// A timer that is not armed yet. Needs the runtime.
    pub fn new() -> Self {
        Self {
            sleep: Box::pin(tokio::time::sleep(Duration::from_secs(86_400))),
        }
    }

    /// Runs `fut` for at most `limit`: `None` if the time ran out first.
    /// The timer is moved only once `fut` has to wait, so an operation that
    /// completes at once (most writes, a line already buffered) does not
    /// touch it at all.
    pub async fn run<F: Future>(&mut self, limit: Duration, fut: F) -> Option<F::Output> {
        let mut fut = std::pin::pin!(fut);
        let mut armed = false;
        std::future::poll_fn(|cx| {
            if let Poll::Ready(out) = fut.as_mut().poll(cx) {
                return Poll::Ready(Some(out));
            }
            if !armed {
                self.sleep
                    .as_mut()
                    .reset(tokio::time::Instant::now() + limit);
                armed = true;
            }
            self.sleep.as_mut().poll(cx).map(|()| None)
        })
        .await
    }
}

impl Default for Deadline {
    fn default() -> Self {
        Self::new()
    }
}

/// What [`Conn::write_or_fill`] achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Duplex {
    /// Every byte is written and flushed; nothing was read.
    Written,
    /// The peer sent `read` bytes (now buffered; 0: its end of stream)
    /// before the write was done; the first `written` bytes went out.
    Read {
        /// Bytes of the write that went out.
        written: usize,
        /// Bytes read into the buffer (0 at end of stream).
        read: usize,
    },
}

/// What [`Conn::read_line`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum LineRead {
    /// A whole line, terminator included.
    Line(Vec<u8>),
    /// A line longer than the cap; it was discarded up to its end.
    TooLong,
    /// The peer closed the connection (any partial line is dropped).
    Eof,
}

/// A stream plus its read buffer.
#[derive(Debug)]
pub struct Conn {
    stream: Stream,
    /// Received bytes; `buf[start..]` are not consumed yet. Its capacity
    /// follows the traffic: released while the peer is quiet, a small read
    /// when it talks, up to [`READ_BUFFER`] in a bulk transfer.
    buf: Vec<u8>,
    start: usize,
    /// The last read brought at least [`SMALL_READ`]: more is probably
    /// coming, so the next read gets [`READ_BUFFER`].
    bulk: bool,
    /// A read error met after a read that brought bytes; returned by the
    /// next read, after the caller has had the bytes.
    deferred: Option<io::Error>,
    write_timeout: std::time::Duration,
}

impl Conn {
    /// Wraps a stream with an empty buffer.
    pub fn new(stream: Stream) -> Self {
        Self {
            stream,
            buf: Vec::new(),
            start: 0,
            bulk: false,
            deferred: None,
            write_timeout: crate::limits::WRITE_TIMEOUT,
        }
    }

    /// How long a write may wait for a peer that does not read.
    pub fn write_timeout(&self) -> std::time::Duration {
        self.write_timeout
    }

    /// Sets the write deadline (`timeouts.write`).
    pub fn set_write_timeout(&mut self, limit: std::time::Duration) {
        self.write_timeout = limit;
    }

    /// The stream, e.g. to ask whether it is TLS.
    pub fn stream(&self) -> &Stream {
        &self.stream
    }

    /// Bytes received but not consumed yet.
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Marks `n` buffered bytes as used.
    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.buf.len());
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
    }

    /// Reads more bytes into the buffer; returns how many (0 at end of stream).
    ///
    /// Cancel-safe: bytes go straight into the buffer's spare capacity, so a
    /// read abandoned by a timeout leaves the buffer as it was.
    pub async fn fill(&mut self) -> io::Result<usize> {
        self.compact();
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }

    /// One poll of a read into the buffer (see [`Conn::fill`]).
    ///
    /// Memory follows the traffic: a read is given [`SMALL_READ`] octets
    /// unless the one before brought at least that much, then
    /// [`READ_BUFFER`]; and when the peer has nothing to say while nothing
    /// is buffered, the buffer is released, so an idle connection holds no
    /// read buffer at all (issue 14: memory per idle session).
    ///
    /// In a bulk transfer over TLS it also takes whatever else is ready
    /// now, up to [`READ_BUFFER`] unconsumed octets, so a relay writes it
    /// on in one call: a TLS stream hands over one record (16 KiB) per
    /// read. An error met after some bytes is kept for the next call; the
    /// bytes come first. The buffer never holds more than [`READ_BUFFER`] +
    /// [`SMALL_READ`] past `start` unless a caller is assembling a line
    /// longer than that.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if let Some(e) = self.deferred.take() {
            return Poll::Ready(Err(e));
        }
        let mut total = match self.poll_read_once(cx) {
            Poll::Ready(Ok(n)) => n,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {
                if self.start == self.buf.len() {
                    self.buf = Vec::new();
                    self.start = 0;
                    self.bulk = false;
                }
                return Poll::Pending;
            }
        };
        // Plain TCP already gave everything there was (up to the offer);
        // asking again would only be answered "would block".
        while total > 0 && self.bulk && self.stream.is_tls() && self.buffered().len() < READ_BUFFER
        {
            match self.poll_read_once(cx) {
                // End of stream is seen again by the next read.
                Poll::Ready(Ok(0)) | Poll::Pending => break,
                Poll::Ready(Ok(n)) => total += n,
                Poll::Ready(Err(e)) => {
                    self.deferred = Some(e);
                    break;
                }
            }
        }
        Poll::Ready(Ok(total))
    }

    /// One read into the buffer's spare room, sized by [`Conn::poll_fill`]'s rule.
    fn poll_read_once(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let want = if self.bulk { READ_BUFFER } else { SMALL_READ };
        let spare = (self.start + want)
            .saturating_sub(self.buf.len())
            .max(SMALL_READ);
        self.buf.reserve(spare);
        let read = tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.buf);
        if let Poll::Ready(Ok(n)) = read {
            self.bulk = n >= SMALL_READ;
        }
        read
    }

    /// Whether the peer has already sent something, without waiting (see
    /// [`Conn::poll_input`]).
    pub async fn has_pending_input(&mut self) -> bool {
        if !self.buffered().is_empty() {
            return true;
        }
        matches!(self.poll_input().await, Some(Ok(n)) if n > 0)
    }

    /// Polls the socket once, without waiting: `None` when nothing is
    /// there; else what one read gave (bytes taken into the buffer, `0` at
    /// end of stream, or an error). Cancel-safe like [`Conn::fill`], and
    /// unlike a zero timeout it never waits for a timer tick.
    pub async fn poll_input(&mut self) -> Option<io::Result<usize>> {
        let fill = self.fill();
        let mut fill = std::pin::pin!(fill);
        std::future::poll_fn(|cx| match fill.as_mut().poll(cx) {
            Poll::Ready(r) => Poll::Ready(Some(r)),
            Poll::Pending => Poll::Ready(None),
        })
        .await
    }

    /// Reads one line ending in LF, at most `max` bytes long (terminator
    /// included). A longer line is discarded through its LF and reported as
    /// [`LineRead::TooLong`], so memory stays bounded whatever the peer sends.
    pub async fn read_line(&mut self, max: usize) -> io::Result<LineRead> {
        let mut scanned = 0;
        loop {
            let pending = self.buffered();
            if let Some(i) = memchr::memchr(b'\n', &pending[scanned..]) {
                let end = scanned + i + 1;
                if end > max {
                    self.consume(end);
                    return Ok(LineRead::TooLong);
                }
                let line = pending[..end].to_vec();
                self.consume(end);
                return Ok(LineRead::Line(line));
            }
            scanned = pending.len();
            if scanned > max {
                // Drop what we have and skip to the end of this line.
                self.consume(scanned);
                loop {
                    if self.fill().await? == 0 {
                        return Ok(LineRead::Eof);
                    }
                    if let Some(i) = memchr::memchr(b'\n', self.buffered()) {
                        self.consume(i + 1);
                        return Ok(LineRead::TooLong);
                    }
                    let n = self.buffered().len();
                    self.consume(n);
                }
            }
            if self.fill().await? == 0 {
                return Ok(LineRead::Eof);
            }
        }
    }

    /// Writes all bytes and flushes them (TLS needs the flush).
    pub async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Writes `bytes` and flushes them while reading whatever the peer
    /// sends meanwhile into the buffer: returns when the write is done, or
    /// as soon as something was read (or the peer's end of stream seen).
    ///
    /// A full-duplex relay needs this: a peer that reads nothing until it
    /// has written (an IMAP server sending a long response before it reads
    /// the next command) deadlocks a relay that waits on its write to that
    /// peer without reading from it. With `read: false` (after the peer's
    /// end of stream) only the write goes on. At most one buffer's worth
    /// is read per call, so the caller consumes before reading more.
    ///
    /// Not cancel-safe for the write (bytes written before a cancellation
    /// are not counted): bound it with a deadline that ends the connection.
    pub async fn write_or_fill(&mut self, bytes: &[u8], read: bool) -> io::Result<Duplex> {
        if read {
            self.compact();
        }
        let mut written = 0;
        std::future::poll_fn(|cx| {
            let mut got = None;
            if read {
                match self.poll_fill(cx) {
                    Poll::Ready(Ok(n)) => got = Some(n),
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {}
                }
            }
            let mut flushed = false;
            loop {
                if written < bytes.len() {
                    match Pin::new(&mut self.stream).poll_write(cx, &bytes[written..]) {
                        Poll::Ready(Ok(0)) => {
                            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()))
                        }
                        Poll::Ready(Ok(n)) => {
                            written += n;
                            continue;
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => break,
                    }
                }
                match Pin::new(&mut self.stream).poll_flush(cx) {
                    Poll::Ready(Ok(())) => flushed = true,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {}
                }
                break;
            }
            match got {
                Some(read) => Poll::Ready(Ok(Duplex::Read { written, read })),
                None if flushed => Poll::Ready(Ok(Duplex::Written)),
                None => Poll::Pending,
            }
        })
        .await
    }

    /// Drops consumed bytes from the front of the buffer when that frees
    /// enough room (as [`Conn::fill`] does before reading).
    fn compact(&mut self) {
        if self.start > 0 && (self.start == self.buf.len() || self.start >= self.buf.capacity() / 2)
        {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }

    /// Closes the write side politely.
    pub async fn shutdown(&mut self) {
        let _ = self.stream.shutdown().await;
    }

    /// Upgrades a plain upstream connection to TLS (STLS/STARTTLS).
    ///
    /// Refuses if any byte is buffered past the go-ahead: those bytes were
    /// sent before the handshake, so an attacker could have injected them.
    pub async fn upgrade_client(
        self,
        config: Arc<rustls::ClientConfig>,
        name: ServerName<'static>,
    ) -> Result<Conn, UpgradeError> {
        if !self.buffered().is_empty() {
            return Err(UpgradeError::BytesAfterGoAhead);
        }
        let self_write_timeout = self.write_timeout;
        let Stream::Tcp(tcp) = self.stream else {
            return Err(UpgradeError::AlreadyTls);
        };
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(UpgradeError::Handshake)?;
        let mut conn = Conn::new(Stream::TlsClient(Box::new(tls)));
        conn.write_timeout = self_write_timeout;
        Ok(conn)
    }
}

impl Conn {
    /// Upgrades a plain client connection in place after postern's own
    /// STLS/STARTTLS go-ahead (listen side), under the handshake deadline.
    /// The caller must first check that nothing is buffered past the
    /// client's STLS/STARTTLS line ([`Conn::buffered`]): such bytes were sent
    /// in clear and would be taken as commands from inside TLS
    /// (CVE-2011-0411). On failure the connection is unusable.
    pub async fn upgrade_server(
        &mut self,
        config: &Arc<rustls::ServerConfig>,
        timeout: std::time::Duration,
    ) -> Result<(), UpgradeError> {
        if !self.buffered().is_empty() {
            return Err(UpgradeError::BytesAfterGoAhead);
        }
        let Stream::Tcp(tcp) = std::mem::replace(&mut self.stream, Stream::Detached) else {
            return Err(UpgradeError::AlreadyTls);
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(config.clone());
        let started = std::time::Instant::now();
        let tls = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
            Ok(r) => r.map_err(UpgradeError::Handshake)?,
            Err(_) => {
                return Err(UpgradeError::Handshake(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "TLS handshake timed out",
                )))
            }
        };
        crate::metrics::tls_handshake("client", started.elapsed());
        self.stream = Stream::TlsServer(Box::new(tls));
        self.buf.clear();
        self.start = 0;
        Ok(())
    }
}

/// Why a STARTTLS upgrade did not happen.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// Bytes arrived after the go-ahead, before the handshake.
    #[error("the peer sent data after the TLS go-ahead and before the handshake (possible injection attack)")]
    BytesAfterGoAhead,
    /// The stream is already encrypted.
    #[error("the connection is already encrypted")]
    AlreadyTls,
    /// The TLS handshake failed.
    #[error("TLS handshake failed: {0}")]
    Handshake(io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    async fn pair() -> (Conn, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let (a, b) = tokio::join!(TcpStream::connect(addr), l.accept());
        (
            Conn::new(Stream::Tcp(a.expect("connect"))),
            b.expect("accept").0,
        )
    }

    #[tokio::test]
    async fn lines_are_split_and_long_lines_discarded() {
        let (mut conn, mut peer) = pair().await;
        let long = vec![b'x'; 5000];
        peer.write_all(b"ONE\r\nTW").await.expect("w");
        peer.write_all(b"O\r\n").await.expect("w");
        peer.write_all(&long).await.expect("w");
        peer.write_all(b"\r\nTHREE\r\n").await.expect("w");
        drop(peer);
        assert_eq!(
            conn.read_line(100).await.expect("r"),
            LineRead::Line(b"ONE\r\n".to_vec())
        );
        assert_eq!(
            conn.read_line(100).await.expect("r"),
            LineRead::Line(b"TWO\r\n".to_vec())
        );
        assert_eq!(conn.read_line(100).await.expect("r"), LineRead::TooLong);
        assert_eq!(
            conn.read_line(100).await.expect("r"),
            LineRead::Line(b"THREE\r\n".to_vec())
        );
        assert_eq!(conn.read_line(100).await.expect("r"), LineRead::Eof);
    }

    /// Memory follows the traffic: a quiet peer costs no read buffer, a
    /// command gets a small read, a bulk transfer reads [`READ_BUFFER`] at
    /// a time and never holds more.
    #[tokio::test]
    async fn the_buffer_is_released_while_the_peer_is_quiet() {
        let (mut conn, mut peer) = pair().await;
        assert_eq!(conn.buf.capacity(), 0, "a new connection holds no buffer");
        peer.write_all(b"NOOP\r\n").await.expect("w");
        assert_eq!(
            conn.read_line(100).await.expect("r"),
            LineRead::Line(b"NOOP\r\n".to_vec())
        );
        assert!(
            conn.buf.capacity() <= SMALL_READ,
            "a command got a small read"
        );
        assert!(conn.poll_input().await.is_none(), "the peer is quiet");
        assert_eq!(conn.buf.capacity(), 0, "released while waiting");

        let bulk = vec![b'b'; 4 * READ_BUFFER];
        peer.write_all(&bulk).await.expect("w");
        let (mut got, mut largest) = (0, 0);
        while got < bulk.len() {
            let n = conn.fill().await.expect("fill");
            assert!(n > 0, "early end of stream");
            largest = largest.max(n);
            assert!(conn.buf.capacity() <= 2 * READ_BUFFER, "buffer grew");
            got += conn.buffered().len();
            let all = conn.buffered().len();
            conn.consume(all);
        }
        assert!(largest > SMALL_READ, "bulk reads stayed small: {largest}");

        // Bytes not yet consumed are never released.
        peer.write_all(b"PARTIAL").await.expect("w");
        while conn.buffered().len() < 7 {
            conn.fill().await.expect("fill");
        }
        assert!(conn.poll_input().await.is_none(), "the peer is quiet");
        assert_eq!(conn.buffered(), b"PARTIAL");
    }

    /// Over TLS each read hands over one record: a bulk fill takes every
    /// record already there (up to `READ_BUFFER`), so a relay writes them
    /// on in one call. An error met after some bytes (here the server's
    /// TCP close without close_notify) comes on the next fill: no byte
    /// received before it is lost.
    #[tokio::test]
    async fn a_bulk_fill_takes_every_tls_record_that_is_ready() {
        use postern_testkit::TestPki;
        // Less than a full buffer, so the error is met inside the batch.
        const SIZE: usize = 40 * 1024;
        let pki = TestPki::new();
        let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_config());
        let connector = tokio_rustls::TlsConnector::from(pki.client_config());
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let (sent_tx, sent_rx) = tokio::sync::oneshot::channel();
        let server = tokio::spawn(async move {
            let (tcp, _) = l.accept().await.expect("accept");
            let mut tls = acceptor.accept(tcp).await.expect("handshake");
            tls.write_all(&vec![b'm'; SIZE]).await.expect("write");
            tls.flush().await.expect("flush");
            // Close the TCP connection without a TLS close_notify.
            drop(tls.into_inner().0);
            let _ = sent_tx.send(());
        });
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let name = ServerName::try_from("localhost").expect("name");
        let tls = connector
            .connect(name, tcp)
            .await
            .expect("client handshake");
        let mut conn = Conn::new(Stream::TlsClient(Box::new(tls)));
        sent_rx.await.expect("server sent");
        server.await.expect("server");
        // Let every record reach the client's socket.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;

        let first = conn.fill().await.expect("first fill");
        assert!(
            first > 16 * 1024 + SMALL_READ,
            "one fill took {first} octets: a single record"
        );
        let mut got = 0;
        let end = loop {
            got += conn.buffered().len();
            let all = conn.buffered().len();
            conn.consume(all);
            match conn.fill().await {
                Ok(0) => break None,
                Ok(_) => {}
                Err(e) => break Some(e.kind()),
            }
        };
        assert_eq!(got, SIZE, "every byte before the error");
        assert_eq!(end, Some(io::ErrorKind::UnexpectedEof));
    }

    /// One timer serves every read: an answer already there wins even
    /// over a zero limit (and leaves the timer alone), a shorter deadline
    /// after a longer one rules, and the timer is armed again after it
    /// expired.
    #[tokio::test(start_paused = true)]
    async fn one_deadline_serves_every_read() {
        use std::time::Duration;
        use tokio::time::Instant;
        let within = |at: Instant, secs: u64| {
            let e = at.elapsed();
            e >= Duration::from_secs(secs) && e < Duration::from_secs(secs + 1)
        };
        let mut d = Deadline::new();
        let unarmed = d.sleep.deadline();
        assert_eq!(d.run(Duration::ZERO, async { 7 }).await, Some(7));
        assert_eq!(
            d.sleep.deadline(),
            unarmed,
            "an operation done at once leaves the timer alone"
        );
        assert_eq!(d.run(Duration::from_secs(600), async { 1 }).await, Some(1));
        let at = Instant::now();
        let never = std::future::pending::<()>;
        assert_eq!(d.run(Duration::from_secs(5), never()).await, None);
        assert!(within(at, 5), "a shorter deadline after a longer one");
        let at = Instant::now();
        let answer = tokio::time::sleep(Duration::from_secs(1));
        assert_eq!(d.run(Duration::from_secs(3), answer).await, Some(()));
        assert!(within(at, 1), "re-armed after it expired");
        let at = Instant::now();
        assert_eq!(d.run(Duration::from_secs(3), never()).await, None);
        assert!(within(at, 3), "and expires again");
    }

    #[tokio::test]
    async fn a_huge_line_does_not_grow_the_buffer() {
        let (mut conn, mut peer) = pair().await;
        let writer = tokio::spawn(async move {
            let chunk = vec![b'y'; 64 * 1024];
            for _ in 0..64 {
                peer.write_all(&chunk).await.expect("w");
            }
            peer.write_all(b"\r\nOK\r\n").await.expect("w");
        });
        assert_eq!(conn.read_line(255).await.expect("r"), LineRead::TooLong);
        assert!(conn.buf.capacity() <= 2 * READ_BUFFER, "buffer grew");
        assert_eq!(
            conn.read_line(255).await.expect("r"),
            LineRead::Line(b"OK\r\n".to_vec())
        );
        writer.await.expect("writer");
    }

    #[tokio::test]
    async fn upgrade_refuses_bytes_after_the_go_ahead() {
        let (mut conn, mut peer) = pair().await;
        peer.write_all(b"+OK begin TLS\r\nINJECTED\r\n")
            .await
            .expect("w");
        let line = conn.read_line(100).await.expect("r");
        assert_eq!(line, LineRead::Line(b"+OK begin TLS\r\n".to_vec()));
        // Make sure the injected bytes are in the buffer.
        while conn.buffered().is_empty() {
            conn.fill().await.expect("fill");
        }
        let config = crate::tls::client_config(&crate::config::Upstream {
            address: "localhost:1".parse().expect("hp"),
            security: crate::config::Security::Starttls,
            auth: crate::config::UpstreamAuth::User,
            ca: None,
            server_name: None,
            pin_sha256: vec![],
            allow_plaintext_password: false,
        })
        .expect("config");
        let name = ServerName::try_from("localhost").expect("name");
        match conn.upgrade_client(config, name).await {
            Err(UpgradeError::BytesAfterGoAhead) => {}
            other => panic!("expected refusal, got {other:?}"),
        }
    }

    /// A peer that reads nothing until it has written 8 MiB, while we
    /// write 8 MiB to it: waiting on the write alone deadlocks;
    /// `write_or_fill` hands back what was read and goes on.
    #[tokio::test]
    async fn write_or_fill_reads_while_the_peer_does_not() {
        use tokio::io::AsyncReadExt;
        const SIZE: usize = 8 * 1024 * 1024;
        let (mut conn, peer) = pair().await;
        let (mut peer_r, mut peer_w) = peer.into_split();
        let peer = tokio::spawn(async move {
            peer_w
                .write_all(&vec![b'r'; SIZE])
                .await
                .expect("peer write");
            let mut got = Vec::new();
            peer_r.read_to_end(&mut got).await.expect("peer read");
            got
        });
        let out = vec![b'w'; SIZE];
        let mut rest = &out[..];
        let mut read = 0;
        let mut reading = true;
        let write = async {
            loop {
                match conn.write_or_fill(rest, reading).await.expect("duplex") {
                    Duplex::Written => break,
                    Duplex::Read { written, read: n } => {
                        rest = &rest[written..];
                        read += n;
                        reading = n > 0;
                        let all = conn.buffered().len();
                        assert!(all <= READ_BUFFER + 1024, "{all} octets buffered");
                        conn.consume(all);
                    }
                }
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(20), write)
            .await
            .expect("deadlocked");
        while read < SIZE {
            let n = conn.fill().await.expect("fill");
            assert!(n > 0);
            read += n;
            let all = conn.buffered().len();
            conn.consume(all);
        }
        assert_eq!(read, SIZE);
        conn.shutdown().await;
        assert_eq!(peer.await.expect("peer").len(), SIZE);
    }
}
