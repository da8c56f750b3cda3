//! Reply framing that cannot be fooled, and no upstream for a client that
//! has not logged in (issue 9).
//!
//! Every upstream here is a small scripted server that answers commands by
//! verb, so it does not care whether postern opens the connection before
//! the greeting or only at login, and counts the connections it accepted.
//! A stray line is written as its own segment after a reply and only while
//! nothing else is pending from postern: a line that arrives after postern
//! already sent its next command cannot be told apart from the reply to it,
//! by postern or by anyone.

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::start;
use postern_testkit::LineClient;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpListener;

// ---------------------------------------------------------------------------
// The scripted upstream
// ---------------------------------------------------------------------------

/// What a scripted upstream saw, shared with the test.
#[derive(Clone, Default)]
struct Seen {
    /// Connections accepted.
    accepts: Arc<AtomicUsize>,
    /// Stray lines actually written.
    strays: Arc<AtomicUsize>,
    /// Every line received, CRLF stripped, over all connections.
    lines: Arc<Mutex<Vec<String>>>,
}

impl Seen {
    fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }

    fn strays(&self) -> usize {
        self.strays.load(Ordering::SeqCst)
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lines lock").clone()
    }

    /// Whether a line equal to `line` (case-insensitive) was received.
    fn received(&self, line: &str) -> bool {
        self.lines().iter().any(|l| l.eq_ignore_ascii_case(line))
    }

    /// Whether a line starting with `prefix` (case-insensitive) was received.
    fn received_prefix(&self, prefix: &str) -> bool {
        self.lines()
            .iter()
            .any(|l| l.len() >= prefix.len() && l[..prefix.len()].eq_ignore_ascii_case(prefix))
    }
}

/// One accepted connection of a scripted upstream.
struct Peer {
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
async fn scripted<F, Fut>(script: F) -> (SocketAddr, Seen)
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
struct Stray {
    after: &'static str,
    wait: Duration,
    line: &'static [u8],
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
async fn pop3_server(mut p: Peer, stray: Option<Stray>) {
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
struct SmtpBehaviour {
    stray: Option<Stray>,
    /// Reply to `MAIL`.
    mail: Option<&'static [u8]>,
    /// Reply to `RCPT`.
    rcpt: Option<&'static [u8]>,
    /// Reply to `DATA`.
    data: Option<&'static [u8]>,
    /// Sent mid-body, after this many body lines.
    early: Option<(usize, &'static [u8])>,
    /// Reply to the end of data; `None`: never reply.
    final_reply: Option<&'static [u8]>,
}

/// An SMTP server that answers by verb. A `.` line it receives as the end
/// of data is logged as `"."` in [`Seen::lines`].
async fn smtp_server(mut p: Peer, b: SmtpBehaviour) {
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

// ---------------------------------------------------------------------------
// Routes
// ---------------------------------------------------------------------------

/// A POP3 route passing USER/PASS through in plain text.
fn pop3_yaml(upstream: SocketAddr, timeouts: &str) -> String {
    format!(
        "routes:\n{}    timeouts: {{ {timeouts} }}\n",
        common::pop3_route("p", upstream, "none", "user", "")
    )
}

/// An SMTP route without authentication (`auth: none`).
fn smtp_yaml(upstream: SocketAddr, timeouts: &str) -> String {
    format!(
        "routes:\n  - name: s\n    protocol: smtp\n    listen: 127.0.0.1:0\n    upstream: {{ address: \"{upstream}\", security: none, auth: none }}\n    timeouts: {{ {timeouts} }}\n"
    )
}

const FAST: &str = "upstream_reply: 2s, final_reply: 2s";

/// Logs in to a POP3 route; panics unless the login works.
async fn pop3_login(gw: SocketAddr) -> LineClient {
    let mut c = LineClient::connect(gw).await.expect("connect");
    c.set_timeout(Duration::from_secs(3));
    let greeting = c.read_line().await.expect("greeting");
    assert!(greeting.starts_with("+OK"), "{greeting}");
    let r = c.command("USER a").await.expect("USER");
    assert!(r.starts_with("+OK"), "USER: {r}");
    let r = c.command("PASS b").await.expect("PASS");
    assert!(r.starts_with("+OK"), "PASS: {r}");
    c
}

/// The reply to `cmd`: Ok(line), or Err if the connection closed instead.
async fn pop3_reply(c: &mut LineClient, cmd: &str) -> Result<String, String> {
    c.command(cmd).await.map_err(|e| e.to_string())
}

/// Asserts a POP3 reply was a temporary error or the connection closed,
/// and that nothing but that reached the client afterwards.
async fn assert_pop3_temp_failure(c: &mut LineClient, cmd: &str, reply: Result<String, String>) {
    // An Err is a closed connection: acceptable.
    if let Ok(r) = &reply {
        assert!(
            r.starts_with("-ERR [SYS/TEMP]"),
            "{cmd} got {r:?} (the stray line or a shifted reply), not a temporary error"
        );
    }
    let (rest, _) = c.read_to_close().await;
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        !rest.contains("+OK") && !rest.contains("STRAY"),
        "after the stray line the client still got: {rest:?}"
    );
}

/// Greets, sends `EHLO c` and returns the client.
async fn smtp_hello(gw: SocketAddr) -> LineClient {
    let mut c = LineClient::connect(gw).await.expect("connect");
    c.set_timeout(Duration::from_secs(4));
    let greeting = c.read_smtp_reply().await.expect("greeting");
    assert!(greeting[0].starts_with("220"), "{greeting:?}");
    let r = c.smtp_command("EHLO c").await.expect("EHLO");
    assert!(r[0].starts_with("250"), "EHLO: {r:?}");
    c
}

/// An SMTP reply's first line, or why there was none.
async fn smtp_reply(c: &mut LineClient, cmd: &str) -> Result<String, String> {
    match c.smtp_command(cmd).await {
        Ok(r) => Ok(r.join(" / ")),
        Err(e) => Err(e.to_string()),
    }
}

fn assert_not_success(cmd: &str, reply: &Result<String, String>) {
    if let Ok(r) = reply {
        assert!(
            !r.starts_with('2') && !r.starts_with('3') && !r.contains("STRAY"),
            "{cmd} got {r:?}, a reply the upstream did not give to it"
        );
    }
}

// ---------------------------------------------------------------------------
// 1. POP3: a stray line in its own segment
// ---------------------------------------------------------------------------

/// The stray arrives 100 ms after STAT's reply; the client sends DELE only
/// after 300 ms, so the stray sits in postern's socket (not in its buffer)
/// when DELE is due. The server answers DELE with -ERR.
#[tokio::test]
async fn pop3_stray_line_in_the_socket_is_not_paired_with_dele() {
    let stray = Stray {
        after: "STAT",
        wait: Duration::from_millis(100),
        line: b"+OK 7 777 STRAY\r\n",
    };
    let (up, seen) = scripted(move |p| pop3_server(p, Some(stray))).await;
    let gw = start(&pop3_yaml(up, FAST)).await;
    let mut c = pop3_login(gw.addr("p")).await;
    assert_eq!(c.command("STAT").await.expect("STAT"), "+OK 1 10");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(seen.strays(), 1, "the fake did not send its stray line");
    let r = pop3_reply(&mut c, "DELE 5").await;
    assert_pop3_temp_failure(&mut c, "DELE 5", r).await;
    assert!(
        !seen.received("DELE 5"),
        "postern sent DELE upstream with an unsolicited line pending"
    );
    gw.stop().await;
}

/// The stray is written right after STAT's reply, before postern runs
/// again: it lands in postern's buffer; the client sends DELE at once.
#[tokio::test]
async fn pop3_stray_line_in_the_buffer_is_not_paired_with_dele() {
    let stray = Stray {
        after: "STAT",
        wait: Duration::ZERO,
        line: b"+OK 7 777 STRAY\r\n",
    };
    let (up, seen) = scripted(move |p| pop3_server(p, Some(stray))).await;
    let gw = start(&pop3_yaml(up, FAST)).await;
    let mut c = pop3_login(gw.addr("p")).await;
    assert_eq!(c.command("STAT").await.expect("STAT"), "+OK 1 10");
    let r = pop3_reply(&mut c, "DELE 5").await;
    assert_pop3_temp_failure(&mut c, "DELE 5", r).await;
    assert_eq!(seen.strays(), 1);
    gw.stop().await;
}

/// The stray follows the login reply (the upstream connection may have
/// been opened at login); the next command must not get it.
#[tokio::test]
async fn pop3_stray_line_after_login_is_not_paired_with_the_next_command() {
    let stray = Stray {
        after: "PASS",
        wait: Duration::from_millis(100),
        line: b"+OK 7 777 STRAY\r\n",
    };
    let (up, seen) = scripted(move |p| pop3_server(p, Some(stray))).await;
    let gw = start(&pop3_yaml(up, FAST)).await;
    let mut c = pop3_login(gw.addr("p")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(seen.strays(), 1, "the fake did not send its stray line");
    let r = pop3_reply(&mut c, "STAT").await;
    assert_pop3_temp_failure(&mut c, "STAT", r).await;
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// 2. SMTP: a stray 250 in its own segment
// ---------------------------------------------------------------------------

/// A stray `250` 100 ms after MAIL's reply; RCPT (sent after 300 ms) is
/// refused by the server with 550.
#[tokio::test]
async fn smtp_stray_250_in_the_socket_is_not_paired_with_rcpt() {
    let b = SmtpBehaviour {
        stray: Some(Stray {
            after: "MAIL",
            wait: Duration::from_millis(100),
            line: b"250 2.0.0 STRAY\r\n",
        }),
        rcpt: Some(b"550 5.1.1 no such user\r\n"),
        ..SmtpBehaviour::default()
    };
    let (up, seen) = scripted(move |p| smtp_server(p, b)).await;
    let gw = start(&smtp_yaml(up, FAST)).await;
    let mut c = smtp_hello(gw.addr("s")).await;
    let r = smtp_reply(&mut c, "MAIL FROM:<a@x>").await;
    assert!(matches!(&r, Ok(r) if r.starts_with("250")), "MAIL: {r:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(seen.strays(), 1, "the fake did not send its stray line");
    let r = smtp_reply(&mut c, "RCPT TO:<b@y>").await;
    assert_not_success("RCPT", &r);
    assert!(
        matches!(&r, Ok(r) if r.starts_with('4')) || r.is_err(),
        "RCPT got {r:?}: expected a temporary error (the upstream is out of step)"
    );
    assert!(
        !seen.received_prefix("RCPT"),
        "postern sent RCPT upstream with an unsolicited reply pending"
    );
    gw.stop().await;
}

/// The stray `250` is written right after MAIL's reply and lands in
/// postern's buffer; the client sends RCPT at once.
#[tokio::test]
async fn smtp_stray_250_in_the_buffer_is_not_paired_with_rcpt() {
    let b = SmtpBehaviour {
        stray: Some(Stray {
            after: "MAIL",
            wait: Duration::ZERO,
            line: b"250 2.0.0 STRAY\r\n",
        }),
        rcpt: Some(b"550 5.1.1 no such user\r\n"),
        ..SmtpBehaviour::default()
    };
    let (up, _seen) = scripted(move |p| smtp_server(p, b)).await;
    let gw = start(&smtp_yaml(up, FAST)).await;
    let mut c = smtp_hello(gw.addr("s")).await;
    let r = smtp_reply(&mut c, "MAIL FROM:<a@x>").await;
    assert!(matches!(&r, Ok(r) if r.starts_with("250")), "MAIL: {r:?}");
    let r = smtp_reply(&mut c, "RCPT TO:<b@y>").await;
    assert_not_success("RCPT", &r);
    gw.stop().await;
}

/// A stray `250` after the upstream's EHLO reply; MAIL is refused with 550
/// by the server. If postern opens the upstream only at MAIL it sends MAIL
/// straight after the EHLO reply and the fake, seeing it, sends no stray
/// (a stray after that would be undecidable): the test then only checks
/// that MAIL's real 550 reaches the client.
#[tokio::test]
async fn smtp_stray_250_after_the_upstream_ehlo_is_not_paired_with_mail() {
    let b = SmtpBehaviour {
        stray: Some(Stray {
            after: "EHLO",
            wait: Duration::from_millis(100),
            line: b"250 2.0.0 STRAY\r\n",
        }),
        mail: Some(b"550 5.7.1 sender refused\r\n"),
        ..SmtpBehaviour::default()
    };
    let (up, seen) = scripted(move |p| smtp_server(p, b)).await;
    let gw = start(&smtp_yaml(up, FAST)).await;
    let mut c = smtp_hello(gw.addr("s")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = smtp_reply(&mut c, "MAIL FROM:<a@x>").await;
    assert_not_success("MAIL", &r);
    if seen.strays() == 0 {
        assert!(
            matches!(&r, Ok(r) if r.starts_with("550")),
            "no stray was sent, so MAIL should get the server's 550: {r:?}"
        );
    }
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// 3-5. SMTP DATA: early replies, 250 to DATA, silence
// ---------------------------------------------------------------------------

/// Runs EHLO, MAIL, RCPT, DATA; returns the client after the 354.
async fn smtp_to_data(gw: SocketAddr) -> LineClient {
    let mut c = smtp_hello(gw).await;
    for cmd in ["MAIL FROM:<a@x>", "RCPT TO:<b@y>"] {
        let r = smtp_reply(&mut c, cmd).await;
        assert!(matches!(&r, Ok(r) if r.starts_with("250")), "{cmd}: {r:?}");
    }
    let r = smtp_reply(&mut c, "DATA").await;
    assert!(matches!(&r, Ok(r) if r.starts_with("354")), "DATA: {r:?}");
    c
}

/// The server sends `250 early ok` after two body lines, before the end of
/// data, and `554` after the real end: the client must get `451 4.4.2`,
/// and the server must never get the final dot (the upstream is dropped).
#[tokio::test]
async fn smtp_250_sent_during_data_never_becomes_the_final_reply() {
    let b = SmtpBehaviour {
        early: Some((2, b"250 2.0.0 early ok\r\n")),
        final_reply: Some(b"554 5.7.1 rejected\r\n"),
        ..SmtpBehaviour::default()
    };
    let (up, seen) = scripted(move |p| smtp_server(p, b)).await;
    let gw = start(&smtp_yaml(up, FAST)).await;
    let mut c = smtp_to_data(gw.addr("s")).await;
    c.send_raw(b"Subject: early\r\n\r\nfirst line\r\n")
        .await
        .expect("first part");
    // The early reply arrives while postern waits for the rest.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = c.send_raw(b"second line\r\n.\r\n").await;
    let r = c
        .read_smtp_reply()
        .await
        .map(|r| r.join(" / "))
        .map_err(|e| e.to_string());
    assert!(
        matches!(&r, Ok(r) if r.starts_with("451 4.4.2")),
        "the reply to the end of data was {r:?}, not 451 4.4.2"
    );
    assert!(
        !seen.received("."),
        "postern ended the message upstream after the server had spoken out of turn"
    );
    gw.stop().await;
}

/// The server answers DATA with `250` instead of `354`.
#[tokio::test]
async fn smtp_250_in_answer_to_data_is_a_protocol_error() {
    let b = SmtpBehaviour {
        data: Some(b"250 2.0.0 ok\r\n"),
        ..SmtpBehaviour::default()
    };
    let (up, _seen) = scripted(move |p| smtp_server(p, b)).await;
    let gw = start(&smtp_yaml(up, FAST)).await;
    let mut c = smtp_hello(gw.addr("s")).await;
    for cmd in ["MAIL FROM:<a@x>", "RCPT TO:<b@y>"] {
        let r = smtp_reply(&mut c, cmd).await;
        assert!(matches!(&r, Ok(r) if r.starts_with("250")), "{cmd}: {r:?}");
    }
    let r = smtp_reply(&mut c, "DATA").await;
    assert!(
        matches!(&r, Ok(r) if r.starts_with("451")),
        "DATA answered 250 upstream reached the client as {r:?}, not 451"
    );
    gw.stop().await;
}

/// The server never answers the end of data: `451 4.4.2` within
/// `final_reply` (1 s), never `250`.
#[tokio::test]
async fn smtp_silent_upstream_after_end_of_data_gives_451_in_time() {
    let b = SmtpBehaviour {
        final_reply: None,
        ..SmtpBehaviour::default()
    };
    let (up, seen) = scripted(move |p| smtp_server(p, b)).await;
    let gw = start(&smtp_yaml(up, "upstream_reply: 2s, final_reply: 1s")).await;
    let mut c = smtp_to_data(gw.addr("s")).await;
    c.send_raw(b"Subject: silent\r\n\r\nbody\r\n.\r\n")
        .await
        .expect("body");
    let sent = Instant::now();
    let r = c
        .read_smtp_reply()
        .await
        .map(|r| r.join(" / "))
        .map_err(|e| e.to_string());
    let took = sent.elapsed();
    assert!(
        matches!(&r, Ok(r) if r.starts_with("451 4.4.2")),
        "the reply to the end of data was {r:?}"
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "451 after {took:?}, final_reply is 1 s"
    );
    assert!(
        seen.received("."),
        "the whole message should have reached the upstream"
    );
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// 6. Idle clients that never log in hold nothing upstream
// ---------------------------------------------------------------------------

const IDLE_CLIENTS: usize = 100;

/// One client that never logs in: greeting, (EHLO), then NOOP every 200 ms.
/// Returns how long the connection stayed open, or None if still open at
/// `give_up`.
async fn idle_client(gw: SocketAddr, smtp: bool, give_up: Duration) -> Option<Duration> {
    let began = Instant::now();
    let mut c = LineClient::connect(gw).await.expect("connect");
    c.set_timeout(give_up);
    match tokio::time::timeout(give_up, idle_session(&mut c, smtp)).await {
        Ok(_) => Some(began.elapsed()),
        Err(_) => None,
    }
}

/// Talks without logging in until the gateway closes (an error).
async fn idle_session(c: &mut LineClient, smtp: bool) -> std::io::Result<()> {
    if smtp {
        c.read_smtp_reply().await?;
        c.smtp_command("EHLO x").await?;
    } else {
        c.read_line().await?;
    }
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if smtp {
            c.smtp_command("NOOP").await?;
        } else {
            c.command("NOOP").await?;
        }
    }
}

/// 100 POP3 and 100 SMTP clients that greet and send NOOP every 200 ms but
/// never log in: all are closed at `login_total` (1 s) although they keep
/// talking, and no upstream connection is ever opened for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_clients_before_login_hold_no_upstream_and_are_closed_at_login_total() {
    let (pop_up, pop_seen) = scripted(|p| pop3_server(p, None)).await;
    let (smtp_up, smtp_seen) = scripted(|p| smtp_server(p, SmtpBehaviour::default())).await;
    let yaml = format!(
        "limits: {{ sessions: 1000, sessions_per_client: 1000 }}\ntimeouts: {{ login_total: 1s, client_login: 10s, client_idle: 10s, upstream_reply: 2s }}\nroutes:\n{}  - name: s\n    protocol: smtp\n    listen: 127.0.0.1:0\n    upstream: {{ address: \"{smtp_up}\", security: none, auth: plain, allow_plaintext_password: true }}\n",
        common::pop3_route("p", pop_up, "none", "user", "")
    );
    let gw = start(&yaml).await;
    // Whatever the gateway opens on its own (none today) is not the clients'.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = pop_seen.accepts() + smtp_seen.accepts();
    let give_up = Duration::from_secs(3);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..IDLE_CLIENTS * 2 {
        let smtp = i % 2 == 1;
        let addr = gw.addr(if smtp { "s" } else { "p" });
        tasks.spawn(async move { idle_client(addr, smtp, give_up).await });
    }
    let mut still_open = 0;
    let mut late = 0;
    let mut slowest = Duration::ZERO;
    while let Some(done) = tasks.join_next().await {
        match done.expect("client task") {
            Some(open) => {
                slowest = slowest.max(open);
                if open > Duration::from_millis(2500) {
                    late += 1;
                }
            }
            None => still_open += 1,
        }
    }
    let pop_accepts = pop_seen.accepts();
    let smtp_accepts = smtp_seen.accepts();
    let opened = pop_accepts + smtp_accepts - before;
    assert!(
        still_open == 0 && late == 0 && opened == 0,
        "of {} idle clients, {still_open} were still open after {give_up:?} and {late} closed after more than 2.5 s (slowest closed: {slowest:?}; login_total is 1 s); upstream connections opened while they never logged in: {opened} (POP3 {pop_accepts}, SMTP {smtp_accepts}, {before} before they came)",
        IDLE_CLIENTS * 2
    );
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// 7. DATA drip
// ---------------------------------------------------------------------------

/// After 354 the client sends its message one byte every 100 ms (final dot
/// included, so an unlimited drip would end the message after
/// `body.len()` tenths of a second). Returns when the gateway answered or
/// closed (after how long, and the reply if any), or None if the whole
/// message went through without either.
async fn drip(c: &mut LineClient, body: &[u8]) -> Option<(Duration, Option<String>)> {
    let began = Instant::now();
    c.set_timeout(Duration::from_millis(100));
    for byte in body {
        if c.send_raw(std::slice::from_ref(byte)).await.is_err() {
            return Some((began.elapsed(), None));
        }
        match c.read_line().await {
            Ok(line) => return Some((began.elapsed(), Some(line))),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return Some((began.elapsed(), None)),
        }
    }
    None
}

fn drip_body(len: usize) -> Vec<u8> {
    let mut body = b"Subject: drip\r\n\r\n".to_vec();
    while body.len() + 7 < len {
        body.push(b'x');
    }
    body.extend_from_slice(b"\r\n.\r\n");
    body
}

/// `data_total: 2s`: a 1-byte-per-100-ms drip (4 s for the whole message)
/// is cut at about 2 s with a 4xx or a close; the upstream never gets the
/// final dot and the client never a 250.
#[tokio::test]
async fn smtp_data_drip_is_cut_at_data_total() {
    let b = SmtpBehaviour {
        final_reply: Some(b"250 2.0.0 queued\r\n"),
        ..SmtpBehaviour::default()
    };
    let (up, seen) = scripted(move |p| smtp_server(p, b)).await;
    let gw = start(&smtp_yaml(up, "upstream_reply: 2s, data_total: 2s")).await;
    let mut c = smtp_to_data(gw.addr("s")).await;
    let outcome = drip(&mut c, &drip_body(40)).await;
    let after_body = match outcome {
        None => {
            c.set_timeout(Duration::from_secs(2));
            c.read_line().await.ok()
        }
        Some(_) => None,
    };
    assert!(
        matches!(&outcome, Some((t, r)) if *t < Duration::from_millis(3500)
            && r.as_deref().is_none_or(|r| r.starts_with('4'))),
        "the drip was not cut at data_total (2 s): {outcome:?}; reply after the whole body: {after_body:?}"
    );
    assert!(
        !seen.received("."),
        "the dripped message reached its end upstream"
    );
    gw.stop().await;
}

/// `limits.data_min_rate: 1000` (enforced after a 10 s grace): a drip at
/// 10 bytes/s is cut soon after the grace, never completed.
#[tokio::test]
async fn smtp_data_drip_is_cut_by_data_min_rate() {
    let b = SmtpBehaviour {
        final_reply: Some(b"250 2.0.0 queued\r\n"),
        ..SmtpBehaviour::default()
    };
    let (up, seen) = scripted(move |p| smtp_server(p, b)).await;
    let gw = start(&format!(
        "{}    limits: {{ data_min_rate: 1000 }}\n",
        smtp_yaml(up, "upstream_reply: 2s")
    ))
    .await;
    let mut c = smtp_to_data(gw.addr("s")).await;
    // 140 bytes: 14 s for the whole message.
    let outcome = drip(&mut c, &drip_body(140)).await;
    assert!(
        matches!(&outcome, Some((t, r)) if *t < Duration::from_millis(13_000)
            && r.as_deref().is_none_or(|r| r.starts_with('4'))),
        "the drip was not cut by data_min_rate: {outcome:?}"
    );
    assert!(
        !seen.received("."),
        "the dripped message reached its end upstream"
    );
    gw.stop().await;
}
