//! A small line-oriented test client (POP3, SMTP or IMAP) over plain TCP,
//! implicit TLS, or plain upgraded in place with STLS/STARTTLS.
//!
//! The client owns its read buffer, so bytes a server sends past a reply
//! (e.g. injected after "+OK Begin TLS") stay visible via
//! [`LineClient::buffered`]. Every read is bounded by [`LineClient::timeout`]
//! so a silent peer fails the test instead of hanging it.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::stream::Stream;

/// Default bound on each read.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest line the client accepts before calling the peer broken.
const MAX_LINE: usize = 64 * 1024;

fn server_name(name: &str) -> io::Result<ServerName<'static>> {
    ServerName::try_from(name.to_owned())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// A test client speaking CRLF lines.
pub struct LineClient {
    stream: Stream,
    buf: Vec<u8>,
    timeout: Duration,
}

impl std::fmt::Debug for LineClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LineClient")
            .field("tls", &self.is_tls())
            .field("buffered", &self.buf.len())
            .finish()
    }
}

impl LineClient {
    /// Connect in plain TCP.
    pub async fn connect(addr: SocketAddr) -> io::Result<Self> {
        let tcp = TcpStream::connect(addr).await?;
        Ok(Self::from_stream(Stream::Plain(tcp)))
    }

    /// Connect in plain TCP from a chosen local address (any 127.0.0.0/8
    /// address works on Linux loopback), to test address-based rules.
    pub async fn connect_from(local: std::net::IpAddr, addr: SocketAddr) -> io::Result<Self> {
        let socket = match local {
            std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.bind(SocketAddr::new(local, 0))?;
        let tcp = socket.connect(addr).await?;
        Ok(Self::from_stream(Stream::Plain(tcp)))
    }

    /// Connect with implicit TLS (handshake before any protocol byte).
    pub async fn connect_tls(
        addr: SocketAddr,
        config: Arc<rustls::ClientConfig>,
        name: &str,
    ) -> io::Result<Self> {
        let tcp = TcpStream::connect(addr).await?;
        let tls = TlsConnector::from(config)
            .connect(server_name(name)?, tcp)
            .await?;
        Ok(Self::from_stream(Stream::tls(tls)))
    }

    fn from_stream(stream: Stream) -> Self {
        Self {
            stream,
            buf: Vec::new(),
            timeout: DEFAULT_READ_TIMEOUT,
        }
    }

    /// Change the per-read timeout.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The per-read timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether the connection is TLS now.
    pub fn is_tls(&self) -> bool {
        self.stream.is_tls()
    }

    /// Bytes received but not yet consumed as a line.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Upgrade a plain connection to TLS in place (after the caller got the
    /// server's go-ahead). Fails, without touching the socket, if bytes are
    /// still buffered: a real client must treat those as an injection
    /// attempt (RFC 2595 §4, CVE-2011-0411).
    pub async fn upgrade_tls(
        &mut self,
        config: Arc<rustls::ClientConfig>,
        name: &str,
    ) -> io::Result<()> {
        if !self.buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} bytes buffered before TLS upgrade", self.buf.len()),
            ));
        }
        let name = server_name(name)?;
        let Some(tcp) = self.stream.take_plain() else {
            return Err(io::Error::other("connection is not plain"));
        };
        let tls = TlsConnector::from(config).connect(name, tcp).await?;
        self.stream = Stream::tls(tls);
        Ok(())
    }

    /// Send `line` followed by CRLF.
    pub async fn send(&mut self, line: &str) -> io::Result<()> {
        let mut bytes = Vec::with_capacity(line.len() + 2);
        bytes.extend_from_slice(line.as_bytes());
        bytes.extend_from_slice(b"\r\n");
        self.send_raw(&bytes).await
    }

    /// Send bytes verbatim, in one write.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_flush(bytes).await
    }

    /// Read more bytes into the buffer; `Ok(0)` on EOF.
    async fn fill(&mut self) -> io::Result<usize> {
        tokio::time::timeout(self.timeout, self.stream.fill(&mut self.buf))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "read timed out"))?
    }

    /// Read until at least `n` bytes are buffered (e.g. to see bytes a
    /// server wrote after its last reply). EOF first is `UnexpectedEof`.
    pub async fn fill_to(&mut self, n: usize) -> io::Result<()> {
        while self.buf.len() < n {
            if self.fill().await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("EOF with {} of {n} bytes buffered", self.buf.len()),
                ));
            }
        }
        Ok(())
    }

    /// Read one line and return it without its CRLF (a bare LF also ends a
    /// line). EOF before a whole line is `UnexpectedEof`.
    pub async fn read_line(&mut self) -> io::Result<String> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return String::from_utf8(line)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e));
            }
            if self.buf.len() > MAX_LINE {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
            }
            if self.fill().await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("EOF with {} bytes of partial line", self.buf.len()),
                ));
            }
        }
    }

    /// Read exactly `n` bytes (e.g. an IMAP literal announced as `{n}`),
    /// buffered ones first. EOF first is `UnexpectedEof`.
    pub async fn read_bytes(&mut self, n: usize) -> io::Result<Vec<u8>> {
        self.fill_to(n).await?;
        Ok(self.buf.drain(..n).collect())
    }

    /// Read IMAP responses up to and including the tagged status line for
    /// `tag` (a line starting `tag `) or a continuation request (a line
    /// starting `+`), returned raw with every CRLF. A line ending in a
    /// literal announcement `{n}` is followed by exactly `n` bytes, read by
    /// count (however many CRLFs or `tag` strings they hold), and then the
    /// rest of that response line.
    pub async fn read_imap_response(&mut self, tag: &str) -> io::Result<Vec<u8>> {
        let prefix = format!("{tag} ");
        let mut out = Vec::new();
        let mut line_start = true;
        loop {
            let line = self.read_line().await?;
            let is_last = line_start && (line.starts_with(&prefix) || line.starts_with('+'));
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
            if let Some(n) = literal_len(&line) {
                let bytes = self.read_bytes(n).await?;
                // The CRLF above belongs to the announcement; the literal
                // follows, then the line goes on.
                out.extend_from_slice(&bytes);
                line_start = false;
                continue;
            }
            if is_last {
                return Ok(out);
            }
            line_start = true;
        }
    }

    /// Send `line` and read the one-line reply.
    pub async fn command(&mut self, line: &str) -> io::Result<String> {
        self.send(line).await?;
        self.read_line().await
    }

    /// Read one SMTP reply (RFC 5321 §4.2.1): every `ddd-text` line up to
    /// and including the `ddd text` (or bare `ddd`) one, without CRLFs.
    pub async fn read_smtp_reply(&mut self) -> io::Result<Vec<String>> {
        let mut lines = Vec::new();
        loop {
            let line = self.read_line().await?;
            let more = line.as_bytes().get(3) == Some(&b'-');
            lines.push(line);
            if !more {
                return Ok(lines);
            }
        }
    }

    /// Send `line` and read the whole (possibly multi-line) SMTP reply.
    pub async fn smtp_command(&mut self, line: &str) -> io::Result<Vec<String>> {
        self.send(line).await?;
        self.read_smtp_reply().await
    }

    /// Read a POP3/SMTP-DATA style multi-line body up to and including the
    /// terminating `CRLF.CRLF`, returned raw (still dot-stuffed, terminator
    /// included) so tests can check framing. Use [`crate::dot_unstuff`] to
    /// decode it.
    pub async fn read_multiline(&mut self) -> io::Result<Vec<u8>> {
        // Resume the search where the last one stopped (minus a possible
        // partial terminator) so a large body is scanned once, not per read.
        let mut scanned: usize = 0;
        loop {
            let end = if self.buf.starts_with(b".\r\n") {
                Some(3)
            } else {
                let from = scanned.saturating_sub(4);
                let hit =
                    memchr::memmem::find(&self.buf[from..], b"\r\n.\r\n").map(|p| from + p + 5);
                scanned = self.buf.len();
                hit
            };
            if let Some(end) = end {
                return Ok(self.buf.drain(..end).collect());
            }
            if self.fill().await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("EOF inside multi-line body after {} bytes", self.buf.len()),
                ));
            }
        }
    }

    /// Read multi-line lines until "." and return them unstuffed, without
    /// CRLF (for CAPA, LIST, UIDL).
    pub async fn read_multiline_lines(&mut self) -> io::Result<Vec<String>> {
        let mut lines = Vec::new();
        loop {
            let line = self.read_line().await?;
            if line == "." {
                return Ok(lines);
            }
            lines.push(match line.strip_prefix('.') {
                Some(rest) => rest.to_owned(),
                None => line,
            });
        }
    }

    /// Read until the peer closes; returns everything received (buffer
    /// included) and how the stream ended (`Ok` for a clean EOF; a TLS peer
    /// that vanished without close_notify gives `UnexpectedEof`).
    pub async fn read_to_close(&mut self) -> (Vec<u8>, io::Result<()>) {
        let end = loop {
            match self.fill().await {
                Ok(0) => break Ok(()),
                Ok(_) => {}
                Err(e) => break Err(e),
            }
        };
        (std::mem::take(&mut self.buf), end)
    }

    /// Send `line` (`tag command ...`) and read the IMAP responses up to its
    /// tagged status line or a continuation request, as
    /// [`LineClient::read_imap_response`].
    pub async fn imap_command(&mut self, line: &str) -> io::Result<Vec<u8>> {
        let tag = line.split(' ').next().unwrap_or(line).to_owned();
        self.send(line).await?;
        self.read_imap_response(&tag).await
    }

    /// Send TLS close_notify (if TLS) and shut down the write half.
    pub async fn shutdown(&mut self) -> io::Result<()> {
        self.stream.shutdown().await
    }
}

/// The `n` of a line ending in an IMAP literal announcement `{n}`.
fn literal_len(line: &str) -> Option<usize> {
    let open = line.rfind('{')?;
    let digits = line[open + 1..].strip_suffix('}')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::literal_len;

    #[test]
    fn literal_announcements() {
        assert_eq!(literal_len("* 1 FETCH (RFC822 {12}"), Some(12));
        assert_eq!(literal_len("{0}"), Some(0));
        assert_eq!(literal_len("a OK {x}"), None);
        assert_eq!(literal_len("a OK {3} done"), None);
        assert_eq!(literal_len("{3+}"), None);
        assert_eq!(literal_len("a OK done"), None);
    }
}
