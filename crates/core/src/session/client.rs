//! The client half of a session: the connection, its deadlines (a command
//! deadline, and a total one before login that commands do not extend),
//! the early-talker check, and STLS/STARTTLS on the listen side.

use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::Closed;
use crate::io::{Conn, Deadline, LineRead, Stream};
use crate::limits::Timeouts;
use crate::tls::{ListenSide, ListenTls};
use crate::upstream::{Link, UpstreamError};

/// The client connection of one session.
#[derive(Debug)]
pub struct ClientSide {
    conn: Conn,
    /// The one timer for every read and write deadline on this side.
    deadline: Deadline,
    listen: ListenSide,
    timeouts: Timeouts,
    /// Until login: when the pre-login time is up.
    login_deadline: Option<Instant>,
    /// Cancelled when the gateway shuts down.
    stop: CancellationToken,
}

impl ClientSide {
    /// Wraps an accepted client; an implicit-TLS listener handshakes first.
    pub async fn open(
        stream: TcpStream,
        listen: &ListenSide,
        timeouts: &Timeouts,
        stop: CancellationToken,
    ) -> Result<Self, Closed> {
        let mut conn = Conn::new(Stream::Tcp(stream));
        conn.set_write_timeout(timeouts.write);
        if let ListenSide::ImplicitTls(config) = listen {
            conn.upgrade_server(config, timeouts.tls_handshake)
                .await
                .map_err(|_| Closed::TlsFailed)?;
        }
        Ok(Self {
            conn,
            deadline: Deadline::new(),
            listen: listen.clone(),
            timeouts: *timeouts,
            login_deadline: Some(Instant::now() + timeouts.login_total),
            stop,
        })
    }

    /// The listen side's TLS situation, for the protocol machines.
    pub fn tls(&self) -> ListenTls {
        ListenTls {
            starttls: matches!(self.listen, ListenSide::StartTls { .. }),
            active: self.conn.stream().is_tls(),
            required_for_auth: self.listen.required_for_auth(),
        }
    }

    /// The client side's TLS version and cipher suite, if encrypted.
    pub fn tls_description(&self) -> Option<String> {
        self.conn.stream().tls_description()
    }

    /// The connection, for streaming message data.
    pub fn conn(&mut self) -> &mut Conn {
        &mut self.conn
    }

    /// Runs `op` on the connection for at most `limit` (`None`: the time
    /// ran out), on this side's one deadline timer: what relays use per
    /// chunk.
    pub async fn within<'a, F, Fut>(&'a mut self, limit: Duration, op: F) -> Option<Fut::Output>
    where
        F: FnOnce(&'a mut Conn) -> Fut,
        Fut: std::future::Future + 'a,
    {
        self.deadline.run(limit, op(&mut self.conn)).await
    }

    /// Cancelled when the gateway begins shutting down: for a session
    /// that waits on more than its client (IMAP's relay), which then ends
    /// itself at the next point where that is clean.
    pub fn stopping(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// The client logged in: from now on only the idle deadline applies.
    pub fn logged_in(&mut self) {
        self.login_deadline = None;
    }

    /// Sends the greeting, unless the client talked first (real clients
    /// wait; a TLS ClientHello on a plain port is closed quietly, anything
    /// else gets `early_reply`).
    pub async fn greet(&mut self, greeting: &[u8], early_reply: &[u8]) -> Result<(), Closed> {
        if self.conn.has_pending_input().await {
            if crate::sniff::looks_like_tls(self.conn.buffered()) {
                return Err(Closed::TlsOnPlainPort);
            }
            let _ = self.write(early_reply).await;
            return Err(Closed::EarlyTalker);
        }
        self.write(greeting).await
    }

    /// Which deadline applies to the next read, and what its expiry means.
    fn read_deadline(&self) -> (Duration, Closed) {
        match self.login_deadline {
            None => (self.timeouts.client_idle, Closed::Idle),
            Some(at) => {
                let left = at.saturating_duration_since(Instant::now());
                if left < self.timeouts.client_login {
                    (left, Closed::LoginTimeout)
                } else {
                    (self.timeouts.client_login, Closed::Idle)
                }
            }
        }
    }

    /// Reads one line of at most `max` bytes: `None` if it was longer
    /// (already discarded). Once the gateway shuts down, a client that stays
    /// silent for [`crate::limits::SHUTDOWN_LAST_CALL`] ends the session
    /// ([`Closed::ShuttingDown`]); a client that keeps working keeps going
    /// until the grace period ends.
    pub async fn read_line(&mut self, max: usize) -> Result<Option<Vec<u8>>, Closed> {
        let (limit, expired) = self.read_deadline();
        let read = self.deadline.run(limit, self.conn.read_line(max));
        let mut read = std::pin::pin!(read);
        let read = tokio::select! {
            biased;
            r = &mut read => r,
            _ = self.stop.cancelled() => {
                match tokio::time::timeout(crate::limits::SHUTDOWN_LAST_CALL, &mut read).await {
                    Ok(r) => r,
                    Err(_) => return Err(Closed::ShuttingDown),
                }
            }
        };
        match read {
            Some(Ok(LineRead::Line(l))) => Ok(Some(l)),
            Some(Ok(LineRead::TooLong)) => Ok(None),
            Some(Ok(LineRead::Eof)) => Err(Closed::ClientGone),
            Some(Err(_)) => Err(Closed::ClientFailed),
            None => Err(expired),
        }
    }

    /// Reads exactly `n` bytes (an IMAP literal), under the same deadlines
    /// as [`ClientSide::read_line`]; the caller bounds `n`.
    pub async fn read_exact(&mut self, n: usize) -> Result<Vec<u8>, Closed> {
        let (limit, expired) = self.read_deadline();
        let conn = &mut self.conn;
        let read = async move {
            let mut out = Vec::with_capacity(n);
            while out.len() < n {
                if conn.buffered().is_empty() && conn.fill().await? == 0 {
                    return Ok(None);
                }
                let take = conn.buffered().len().min(n - out.len());
                out.extend_from_slice(&conn.buffered()[..take]);
                conn.consume(take);
            }
            Ok::<_, std::io::Error>(Some(out))
        };
        match self.deadline.run(limit, read).await {
            Some(Ok(Some(bytes))) => Ok(bytes),
            Some(Ok(None)) => Err(Closed::ClientGone),
            Some(Err(_)) => Err(Closed::ClientFailed),
            None => Err(expired),
        }
    }

    /// Reads the client's next line while watching the upstream: a byte
    /// (or a close) from the upstream while no command is outstanding is
    /// unsolicited and ends the upstream session.
    pub async fn read_line_watching(
        &mut self,
        max: usize,
        up: &mut Link,
    ) -> Result<Result<Option<Vec<u8>>, Closed>, UpstreamError> {
        tokio::select! {
            biased;
            line = self.read_line(max) => Ok(line),
            e = up.unsolicited("while waiting for the client") => Err(e),
        }
    }

    /// Writes within the write deadline.
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), Closed> {
        let limit = self.conn.write_timeout();
        match self.within(limit, |c| c.write_all(bytes)).await {
            Some(Ok(())) => Ok(()),
            Some(Err(_)) => Err(Closed::ClientFailed),
            None => Err(Closed::StoppedReading),
        }
    }

    /// The client asked for STLS/STARTTLS and the protocol allowed it:
    /// refuse bytes pipelined after the request (CVE-2011-0411), send
    /// `go_ahead`, handshake. The protocol then resets its state.
    pub async fn start_tls(&mut self, go_ahead: &[u8]) -> Result<(), Closed> {
        let ListenSide::StartTls { config, .. } = &self.listen else {
            // The machines only ask on a STARTTLS listener; never upgrade elsewhere.
            return Err(Closed::TlsFailed);
        };
        let config = config.clone();
        if !self.conn.buffered().is_empty() {
            tracing::warn!(
                "the client sent more after STARTTLS in the same packet (command injection?); closing"
            );
            return Err(Closed::BytesAfterStartTls);
        }
        self.write(go_ahead).await?;
        self.conn
            .upgrade_server(&config, self.timeouts.tls_handshake)
            .await
            .map_err(|_| Closed::TlsFailed)
    }

    /// Closes the write side politely.
    pub async fn shutdown(&mut self) {
        self.conn.shutdown().await;
    }
}
