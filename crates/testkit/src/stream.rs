//! One TCP stream type, plain or TLS, for both ends the testkit plays: the
//! [`crate::LineClient`] and the fake servers. A plain stream can be taken
//! out for a TLS handshake in place (STLS/STARTTLS), leaving
//! [`Stream::Gone`] until the handshake puts the TLS stream back.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsStream;

/// Bytes asked for per read.
const READ_CHUNK: usize = 16 * 1024;

pub(crate) enum Stream {
    Plain(TcpStream),
    /// Client or server side of a TLS session.
    Tls(Box<TlsStream<TcpStream>>),
    /// Only while an upgrade is in flight or after one failed.
    Gone,
}

impl Stream {
    /// Wrap a finished handshake (client or server side).
    pub(crate) fn tls(tls: impl Into<TlsStream<TcpStream>>) -> Self {
        Self::Tls(Box::new(tls.into()))
    }

    pub(crate) fn is_tls(&self) -> bool {
        matches!(self, Self::Tls(_))
    }

    /// Take the plain TCP stream out for a TLS handshake, leaving
    /// [`Stream::Gone`]; `None` (and the stream untouched) if it is not
    /// plain.
    pub(crate) fn take_plain(&mut self) -> Option<TcpStream> {
        match std::mem::replace(self, Self::Gone) {
            Self::Plain(tcp) => Some(tcp),
            other => {
                *self = other;
                None
            }
        }
    }

    /// Look at the bytes waiting on a plain stream without consuming them;
    /// `Ok(0)` on EOF or if the stream is not plain.
    pub(crate) async fn peek_plain(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Plain(tcp) => tcp.peek(buf).await,
            _ => Ok(0),
        }
    }

    /// Write all of `bytes` and flush (one TLS record flight, one segment
    /// where the kernel allows).
    pub(crate) async fn write_flush(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.write_all(bytes).await?;
        self.flush().await
    }

    /// Read once and append to `buf`; `Ok(0)` on EOF.
    pub(crate) async fn fill(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        let mut chunk = [0u8; READ_CHUNK];
        let n = self.read(&mut chunk).await?;
        buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Self::Gone => Poll::Ready(Err(gone())),
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
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Self::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Self::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Self::Gone => Poll::Ready(Err(gone())),
        }
    }
}

fn gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "stream lost in a failed TLS upgrade",
    )
}
