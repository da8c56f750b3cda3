//! The scripted upstream: a small server per test that answers commands
//! by verb, counts the connections it accepted, and can send one stray
//! line after a reply.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpListener;

/// What a scripted upstream saw, shared with the test.
#[derive(Clone, Default)]
pub struct Seen {
    /// Connections accepted.
    accepts: Arc<AtomicUsize>,
    /// Stray lines actually written.
    strays: Arc<AtomicUsize>,
    /// Every line received, CRLF stripped, over all connections.
    lines: Arc<Mutex<Vec<String>>>,
}

impl Seen {
    pub fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }

    pub fn strays(&self) -> usize {
        self.strays.load(Ordering::SeqCst)
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lines lock").clone()
    }

    /// Whether a line equal to `line` (case-insensitive) was received.
    pub fn received(&self, line: &str) -> bool {
        self.lines().iter().any(|l| l.eq_ignore_ascii_case(line))
    }

    /// Whether a line starting with `prefix` (case-insensitive) was received.
    pub fn received_prefix(&self, prefix: &str) -> bool {
        self.lines()
            .iter()
            .any(|l| l.len() >= prefix.len() && l[..prefix.len()].eq_ignore_ascii_case(prefix))
    }
}

/// One accepted connection of a scripted upstream.
pub struct Peer {
    r: BufReader<OwnedReadHalf>,
    w: OwnedWriteHalf,
    partial: Vec<u8>,
    seen: Seen,
}

impl Peer {
    /// The next line without its CRLF; `None` on EOF or error.
    async fn line(&mut self) -> Option<String> {
        match self.r.read_until(b'\n', &mut self.partial).await {
            Ok(0) | Err(_) => None,
            Ok(_) => {
                let raw = std::mem::take(&mut self.partial);
                let line = String::from_utf8_lossy(&raw)
                    .trim_end_matches(['\r', '\n'])
                    .to_owned();
                self.seen
                    .lines
                    .lock()
                    .expect("lines lock")
                    .push(line.clone());
                Some(line)
            }
        }
    }

    /// Writes and flushes; errors are ignored (postern may have hung up).
    async fn send(&mut self, bytes: &[u8]) {
        let _ = self.w.write_all(bytes).await;
        let _ = self.w.flush().await;
    }

    /// True if postern sent nothing for `wait` (a byte or EOF counts).
    async fn quiet_for(&mut self, wait: Duration) -> bool {
        if !self.r.buffer().is_empty() || !self.partial.is_empty() {
            return false;
        }
        tokio::time::timeout(wait, self.r.fill_buf()).await.is_err()
    }

    /// After `wait`, writes `stray` as its own segment, but only if postern
    /// sent nothing meanwhile (a line arriving after postern's next command
    /// is indistinguishable from the reply to it). Returns whether it did.
    async fn stray_when_quiet(&mut self, wait: Duration, stray: &[u8]) -> bool {
        if !self.quiet_for(wait).await {
            return false;
        }
        self.send(stray).await;
        self.seen.strays.fetch_add(1, Ordering::SeqCst);
        true
    }

    /// Keeps the connection open, reading and discarding, until EOF.
    async fn drain(&mut self) {
        while self.line().await.is_some() {}
    }
}

/// A scripted upstream on 127.0.0.1:0: every accepted connection is
/// counted and handed to `script` in its own task.
pub async fn scripted<F, Fut>(script: F) -> (SocketAddr, Seen)
where
    F: Fn(Peer) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Seen::default();
    let shared = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            shared.accepts.fetch_add(1, Ordering::SeqCst);
            // Every write its own segment.
            let _ = stream.set_nodelay(true);
            let (r, w) = stream.into_split();
            let peer = Peer {
                r: BufReader::new(r),
                w,
                partial: Vec::new(),
                seen: shared.clone(),
            };
            tokio::spawn(script(peer));
        }
    });
    (addr, seen)
}

fn verb(line: &str) -> String {
    line.split(' ').next().unwrap_or("").to_ascii_uppercase()
}

/// When (after which command's reply) and how a script sends a stray line.
#[derive(Clone, Copy)]
pub struct Stray {
    pub after: &'static str,
    pub wait: Duration,
    pub line: &'static [u8],
}

impl Stray {
    /// Sends the stray if `verb` is the one it follows and it has not been
    /// sent on this connection yet.
    async fn maybe(&self, p: &mut Peer, verb: &str, done: &mut bool) {
        if *done || verb != self.after {
            return;
        }
        *done = true;
        if self.wait.is_zero() {
            // Straight after the reply: in postern's socket before postern
            // can run again.
            p.send(self.line).await;
            p.seen.strays.fetch_add(1, Ordering::SeqCst);
        } else {
            p.stray_when_quiet(self.wait, self.line).await;
        }
    }
}

/// A POP3 server with one 10-octet message that answers by verb; `DELE` is
/// always refused. With `stray`, one unsolicited line follows a reply.
pub async fn pop3_server(mut p: Peer, stray: Option<Stray>) {
    p.send(b"+OK fake POP3 ready\r\n").await;
    let mut done = false;
    while let Some(line) = p.line().await {
        let v = verb(&line);
        let reply: &[u8] = match v.as_str() {
            "CAPA" => b"+OK Capability list follows\r\nUSER\r\nUIDL\r\nTOP\r\n.\r\n",
            "USER" => b"+OK\r\n",
            "PASS" => b"+OK logged in\r\n",
            "STAT" => b"+OK 1 10\r\n",
            "DELE" => b"-ERR no such message\r\n",
            "NOOP" => b"+OK\r\n",
            "QUIT" => {
                p.send(b"+OK bye\r\n").await;
                return;
            }
            _ => b"-ERR unknown command\r\n",
        };
        p.send(reply).await;
        if let Some(s) = &stray {
            s.maybe(&mut p, &v, &mut done).await;
        }
    }
}

/// How a scripted SMTP server behaves around DATA.
#[derive(Clone, Copy, Default)]
pub struct SmtpBehaviour {
    pub stray: Option<Stray>,
    /// Reply to `MAIL`.
    pub mail: Option<&'static [u8]>,
    /// Reply to `RCPT`.
    pub rcpt: Option<&'static [u8]>,
    /// Reply to `DATA`.
    pub data: Option<&'static [u8]>,
    /// Sent mid-body, after this many body lines.
    pub early: Option<(usize, &'static [u8])>,
    /// Reply to the end of data; `None`: never reply.
    pub final_reply: Option<&'static [u8]>,
}

/// An SMTP server that answers by verb. A `.` line it receives as the end
/// of data is logged as `"."` in [`Seen::lines`].
pub async fn smtp_server(mut p: Peer, b: SmtpBehaviour) {
    p.send(b"220 fake ESMTP\r\n").await;
    let mut done = false;
    while let Some(line) = p.line().await {
        let v = verb(&line);
        let reply: &[u8] = match v.as_str() {
            "EHLO" => b"250-fake\r\n250-8BITMIME\r\n250 AUTH PLAIN\r\n",
            "HELO" => b"250 fake\r\n",
            "AUTH" => b"235 2.7.0 ok\r\n",
            "MAIL" => b.mail.unwrap_or(b"250 2.1.0 Ok\r\n"),
            "RCPT" => b.rcpt.unwrap_or(b"250 2.1.5 Ok\r\n"),
            "RSET" | "NOOP" => b"250 2.0.0 Ok\r\n",
            "QUIT" => {
                p.send(b"221 2.0.0 Bye\r\n").await;
                return;
            }
            "DATA" => {
                let reply = b.data.unwrap_or(b"354 go ahead\r\n");
                p.send(reply).await;
                if !reply.starts_with(b"354") {
                    continue;
                }
                let mut body_lines = 0;
                loop {
                    let Some(l) = p.line().await else { return };
                    if l == "." {
                        break;
                    }
                    body_lines += 1;
                    if let Some((after, early)) = b.early {
                        if body_lines == after {
                            p.send(early).await;
                        }
                    }
                }
                match b.final_reply {
                    Some(r) => p.send(r).await,
                    None => {
                        p.drain().await;
                        return;
                    }
                }
                continue;
            }
            _ => b"502 5.5.2 unknown command\r\n",
        };
        p.send(reply).await;
        if let Some(s) = &b.stray {
            s.maybe(&mut p, &v, &mut done).await;
        }
    }
}
