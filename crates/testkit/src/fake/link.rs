//! One accepted connection as a fake server sees it: the stream (plain or
//! TLS), the bytes read but not yet used, whether TLS is up, and where the
//! session's events go.

use std::io;
use std::sync::Arc;

use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::log::{EventLog, SessionEvent};
use crate::stream::Stream;

/// How a fake reads a command (or SASL) line and what it calls a broken
/// one. The texts go into the `ClientViolation` events verbatim.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LineRules {
    /// Longest line, CRLF excluded.
    pub max: usize,
    /// `true` (SMTP): a complete line over `max` is refused too, and an
    /// unterminated one once more than `max` octets plus a pending CR are
    /// buffered. `false` (POP3): only more than `max` octets buffered
    /// without an LF are refused.
    pub strict: bool,
    /// Written (best effort) before the session ends on an overlong line.
    pub too_long_reply: Option<&'static [u8]>,
    /// Violation text for an LF without CR before it.
    pub bare_lf: &'static str,
    /// Violation text for a CR inside a line.
    pub bare_cr: &'static str,
    /// Violation text for a line that is not UTF-8 (it is decoded lossily).
    pub non_utf8: &'static str,
}

pub(crate) struct Link<E: SessionEvent> {
    log: EventLog<E>,
    id: usize,
    tls: bool,
    /// The port the client connected to (what OAUTHBEARER's `port=` names).
    local_port: u16,
    stream: Stream,
    /// Read but not yet consumed.
    pub(crate) buf: Vec<u8>,
}

impl<E: SessionEvent> Link<E> {
    /// A fresh plain connection, session number `id`.
    pub(crate) fn new(log: EventLog<E>, id: usize, tcp: TcpStream) -> Self {
        let local_port = tcp.local_addr().map_or(0, |a| a.port());
        Self {
            log,
            id,
            tls: false,
            local_port,
            stream: Stream::Plain(tcp),
            buf: Vec::new(),
        }
    }

    pub(crate) fn log(&self) -> &EventLog<E> {
        &self.log
    }

    /// The session number (0-based connection counter).
    pub(crate) fn id(&self) -> usize {
        self.id
    }

    pub(crate) fn record(&self, event: E) {
        self.log.push(self.id, event);
    }

    pub(crate) fn violation(&self, what: impl Into<String>) {
        self.record(E::violation(what.into()));
    }

    /// The port this connection came in on.
    pub(crate) fn local_port(&self) -> u16 {
        self.local_port
    }

    /// Whether the session is under TLS now.
    pub(crate) fn tls(&self) -> bool {
        self.tls
    }

    pub(crate) async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_flush(bytes).await
    }

    /// Write `line` followed by CRLF.
    pub(crate) async fn write_line(&mut self, line: &str) -> io::Result<()> {
        let mut bytes = Vec::with_capacity(line.len() + 2);
        bytes.extend_from_slice(line.as_bytes());
        bytes.extend_from_slice(b"\r\n");
        self.write(&bytes).await
    }

    /// Read more bytes into [`Link::buf`]; `Ok(0)` on EOF.
    pub(crate) async fn fill(&mut self) -> io::Result<usize> {
        self.stream.fill(&mut self.buf).await
    }

    /// Clean close: TLS close_notify, then FIN.
    pub(crate) async fn shutdown(&mut self) {
        let _ = self.stream.shutdown().await;
    }

    /// Read and discard until the client closes (or the read fails).
    pub(crate) async fn drain(&mut self) {
        let mut sink = Vec::new();
        while let Ok(n) = self.stream.fill(&mut sink).await {
            if n == 0 {
                break;
            }
            sink.clear();
        }
    }

    /// TLS handshake on the plain stream; records the outcome. `false` if
    /// it failed (or the stream was not plain).
    pub(crate) async fn accept_tls(&mut self, config: Arc<rustls::ServerConfig>) -> bool {
        let Some(tcp) = self.stream.take_plain() else {
            return false;
        };
        match TlsAcceptor::from(config).accept(tcp).await {
            Ok(tls) => {
                self.tls = true;
                self.stream = Stream::tls(tls);
                self.record(E::tls_established());
                true
            }
            Err(e) => {
                self.record(E::tls_failed(e.to_string()));
                false
            }
        }
    }

    /// STLS/STARTTLS was accepted: refuse bytes the client pipelined after
    /// `verb` (RFC 2595 §4, RFC 3207 §4.2, CVE-2011-0411), write `go_ahead`
    /// in one go, then handshake. `false` if the session must end.
    pub(crate) async fn start_tls(
        &mut self,
        verb: &str,
        go_ahead: &[u8],
        config: Arc<rustls::ServerConfig>,
    ) -> bool {
        if !self.buf.is_empty() {
            self.violation(format!("{} bytes pipelined after {verb}", self.buf.len()));
            return false;
        }
        if self.write(go_ahead).await.is_err() {
            return false;
        }
        self.plaintext_before_handshake(verb).await;
        self.accept_tls(config).await
    }

    /// After the go-ahead the client's first byte must open a TLS record
    /// (a handshake, 0x16). Anything else is a command it sent without
    /// waiting for the handshake: a violation (its content is not logged,
    /// it may be a password). The handshake then fails as it would anyway.
    async fn plaintext_before_handshake(&mut self, verb: &str) {
        const TLS_HANDSHAKE_RECORD: u8 = 0x16;
        let mut peeked = [0u8; 1024];
        if let Ok(n @ 1..) = self.stream.peek_plain(&mut peeked).await {
            if peeked[0] != TLS_HANDSHAKE_RECORD {
                self.violation(format!(
                    "{n} bytes of plaintext after the {verb} go-ahead, before the TLS handshake"
                ));
            }
        }
    }

    /// One line without its CRLF; `None` on EOF, error or an overlong line
    /// (answered with [`LineRules::too_long_reply`], if any).
    pub(crate) async fn read_line(&mut self, rules: &LineRules) -> Option<String> {
        loop {
            if let Some(pos) = memchr::memchr(b'\n', &self.buf) {
                let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                } else {
                    self.violation(rules.bare_lf);
                }
                if line.contains(&b'\r') {
                    self.violation(rules.bare_cr);
                }
                if rules.strict && line.len() > rules.max {
                    return self.line_too_long(rules).await;
                }
                return Some(match String::from_utf8(line) {
                    Ok(s) => s,
                    Err(e) => {
                        self.violation(rules.non_utf8);
                        String::from_utf8_lossy(e.as_bytes()).into_owned()
                    }
                });
            }
            let most = if rules.strict {
                rules.max + 1
            } else {
                rules.max
            };
            if self.buf.len() > most {
                return self.line_too_long(rules).await;
            }
            match self.fill().await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    async fn line_too_long(&mut self, rules: &LineRules) -> Option<String> {
        self.violation(format!("line longer than {} octets", rules.max));
        if let Some(reply) = rules.too_long_reply {
            let _ = self.write(reply).await;
        }
        None
    }
}
