//! A proxy that passes the server's bytes on reply by reply and injects
//! one stray line after a chosen reply.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the injecting proxy finds the end of each of the server's replies.
#[derive(Clone, Copy, Debug)]
pub enum Framing {
    /// Status lines; the body of a positive reply to CAPA, RETR, TOP and
    /// argument-less LIST/UIDL, up to its `.` line.
    Pop3,
    /// `ddd-` lines up to the `ddd ` one.
    Smtp,
}

/// When the stray line follows its reply.
#[derive(Clone, Copy, Debug)]
pub enum When {
    /// At once, as a write of its own: in postern's socket or buffer before
    /// postern runs again.
    AtOnce,
    /// After a pause, and only if postern sent nothing meanwhile (a line
    /// arriving after postern's next command cannot be told from the reply
    /// to it); the stray then waits in postern's socket.
    WhenQuiet(Duration),
}

/// What one injecting proxy did.
#[derive(Debug, Default)]
pub struct Injection {
    /// Complete replies the server sent (all connections).
    pub replies: AtomicUsize,
    /// Whether the stray line was written.
    pub injected: AtomicBool,
}

/// Whether a POP3 command's positive reply has a multi-line body.
fn pop3_multiline(command: &str) -> bool {
    let mut words = command.split_ascii_whitespace();
    let verb = words.next().unwrap_or("").to_ascii_uppercase();
    let has_arg = words.next().is_some();
    match verb.as_str() {
        "CAPA" | "RETR" | "TOP" => true,
        "LIST" | "UIDL" => !has_arg,
        _ => false,
    }
}

/// The length of the complete reply at the start of `buf`, if it is all there.
fn reply_len(buf: &[u8], framing: Framing, command: Option<&str>) -> Option<usize> {
    let line_end = |from: usize| {
        buf[from..]
            .iter()
            .position(|b| *b == b'\n')
            .map(|p| from + p + 1)
    };
    let first = line_end(0)?;
    match framing {
        Framing::Pop3 => {
            if !(buf.starts_with(b"+OK") && command.is_some_and(pop3_multiline)) {
                return Some(first);
            }
            let mut at = first;
            loop {
                let end = line_end(at)?;
                if &buf[at..end] == b".\r\n" {
                    return Some(end);
                }
                at = end;
            }
        }
        Framing::Smtp => {
            let mut at = 0;
            loop {
                let end = line_end(at)?;
                if buf.get(at + 3) != Some(&b'-') {
                    return Some(end);
                }
                at = end;
            }
        }
    }
}

/// Proxies connections to `target`, passing the server's bytes on reply by
/// reply; after reply number `after` (0: the greeting) of the first
/// connection it writes `stray` as a write of its own, as `when` says.
pub async fn injecting_proxy(
    target: SocketAddr,
    framing: Framing,
    after: usize,
    when: When,
    stray: &'static [u8],
) -> (SocketAddr, Arc<Injection>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stats = Arc::new(Injection::default());
    let shared = stats.clone();
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((down, _)) = listener.accept().await {
            let Ok(up) = TcpStream::connect(target).await else {
                return;
            };
            let inject = std::mem::take(&mut first);
            let stats = shared.clone();
            tokio::spawn(async move {
                let _ = down.set_nodelay(true);
                let (mut dr, mut dw) = down.into_split();
                let (mut ur, mut uw) = up.into_split();
                // Postern's command lines, in order, and its byte count.
                let commands = Mutex::new(Vec::<String>::new());
                let from_postern = AtomicUsize::new(0);
                let to_server = async {
                    let mut buf = [0u8; 4096];
                    let mut partial = Vec::new();
                    loop {
                        let n = match dr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        partial.extend_from_slice(&buf[..n]);
                        while let Some(p) = partial.iter().position(|b| *b == b'\n') {
                            let line: Vec<u8> = partial.drain(..=p).collect();
                            let line = String::from_utf8_lossy(&line).trim_end().to_owned();
                            commands.lock().expect("commands lock").push(line);
                        }
                        from_postern.fetch_add(n, Ordering::SeqCst);
                        if uw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                };
                let to_client = async {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let mut index = 0usize;
                    loop {
                        loop {
                            let command = (index > 0)
                                .then(|| {
                                    commands
                                        .lock()
                                        .expect("commands lock")
                                        .get(index - 1)
                                        .cloned()
                                })
                                .flatten();
                            let Some(n) = reply_len(&buf, framing, command.as_deref()) else {
                                break;
                            };
                            if dw.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                            buf.drain(..n);
                            stats.replies.fetch_add(1, Ordering::SeqCst);
                            if inject && index == after {
                                let go = match when {
                                    When::AtOnce => true,
                                    When::WhenQuiet(wait) => {
                                        let before = from_postern.load(Ordering::SeqCst);
                                        tokio::time::sleep(wait).await;
                                        from_postern.load(Ordering::SeqCst) == before
                                    }
                                };
                                if go {
                                    if dw.write_all(stray).await.is_err() {
                                        return;
                                    }
                                    stats.injected.store(true, Ordering::SeqCst);
                                }
                            }
                            index += 1;
                        }
                        let n = match ur.read(&mut chunk).await {
                            Ok(0) | Err(_) => {
                                let _ = dw.write_all(&buf).await;
                                return;
                            }
                            Ok(n) => n,
                        };
                        buf.extend_from_slice(&chunk[..n]);
                    }
                };
                tokio::select! {
                    _ = to_server => {}
                    _ = to_client => {}
                }
            });
        }
    });
    (addr, stats)
}
