//! Fault injection: a small TCP proxy between postern and the fake upstream
//! cuts the connection after N bytes from the server, for N across the
//! whole session; another proxy injects one stray line (`+OK STRAY`,
//! `250 STRAY`) after the k-th complete reply of the server, for every k.
//! Whatever the fault, postern must never report success the upstream did
//! not give: no `250` for a message the upstream did not accept, no
//! complete RETR the upstream did not complete, no `+OK` for a DELE the
//! upstream refused, and never a stray line as the reply to a command.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::start;
use postern_testkit::{
    dot_stuff, sasl_plain_response, DataEnd, FakePop3, FakeSmtp, LineClient, Pop3Script, SmtpScript,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Proxies one connection at a time to `target`, passing at most `limit`
/// bytes from the server to postern, then cutting both directions.
async fn cutting_proxy(target: SocketAddr, limit: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut down, _)) = listener.accept().await {
            let Ok(mut up) = TcpStream::connect(target).await else {
                return;
            };
            tokio::spawn(async move {
                let (mut dr, mut dw) = down.split();
                let (mut ur, mut uw) = up.split();
                let to_server = tokio::io::copy(&mut dr, &mut uw);
                let to_client = async {
                    let mut left = limit;
                    let mut buf = [0u8; 4096];
                    while left > 0 {
                        let n = match ur.read(&mut buf[..left.min(4096)]).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if dw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        left -= n;
                    }
                };
                tokio::select! {
                    _ = to_server => {}
                    _ = to_client => {}
                }
                // Dropping both halves cuts the connection (a server crash).
            });
        }
    });
    addr
}

fn smtp_yaml(upstream: SocketAddr) -> String {
    format!(
        "routes:\n  - name: s\n    protocol: smtp\n    listen: 127.0.0.1:0\n    upstream: {{ address: \"{upstream}\", security: none, auth: plain, allow_plaintext_password: true }}\n    timeouts: {{ upstream_reply: 2s, final_reply: 2s }}\n"
    )
}

/// Runs one SMTP transaction through postern; returns the final reply code
/// the client saw for the message, if it got that far.
async fn smtp_transaction(gw_addr: SocketAddr) -> Option<String> {
    let mut c = LineClient::connect(gw_addr).await.ok()?;
    c.set_timeout(Duration::from_secs(5));
    let greet = c.read_smtp_reply().await.ok()?;
    if !greet[0].starts_with("220") {
        return None;
    }
    let steps = [
        "EHLO c".to_owned(),
        format!(
            "AUTH PLAIN {}",
            sasl_plain_response("", "alice", "wonderland")
        ),
        "MAIL FROM:<a@x>".to_owned(),
        "RCPT TO:<b@y>".to_owned(),
        "DATA".to_owned(),
    ];
    for s in &steps {
        let r = c.smtp_command(s).await.ok()?;
        let code = &r.last()?[..3];
        if !(code.starts_with('2') || code.starts_with('3')) {
            return None;
        }
    }
    c.send_raw(b"Subject: cut\r\n\r\n.leading dot\r\nbody\r\n.\r\n")
        .await
        .ok()?;
    let r = c.read_smtp_reply().await.ok()?;
    Some(r.last()?[..3].to_owned())
}

#[tokio::test]
async fn smtp_upstream_cut_at_every_point_never_fakes_a_250() {
    // The server's bytes for a whole transaction are a few hundred; cut
    // at every point in that range (and once beyond it: no cut).
    let mut saw_success = false;
    let mut saw_failure = false;
    for limit in (0..420).step_by(7).chain([100_000]) {
        let fake = FakeSmtp::start(SmtpScript::new()).await;
        let proxy = cutting_proxy(fake.addr(), limit).await;
        let gw = start(&smtp_yaml(proxy)).await;
        let code = smtp_transaction(gw.addr("s")).await;
        // Give the fake a moment to record what it received.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let accepted = fake.accepted_messages().len();
        match code.as_deref() {
            Some("250") => {
                assert_eq!(
                    accepted, 1,
                    "cut at {limit}: client told 250 but the upstream has no message"
                );
                saw_success = true;
            }
            Some(other) => {
                assert!(
                    other.starts_with('4'),
                    "cut at {limit}: upstream trouble reported as {other}"
                );
                saw_failure = true;
            }
            None => saw_failure = true,
        }
        gw.stop().await;
    }
    assert!(
        saw_success && saw_failure,
        "the cut range did not cover both outcomes"
    );
}

#[tokio::test]
async fn pop3_upstream_cut_at_every_point_never_completes_a_retr() {
    let body: Vec<u8> = (0..60)
        .flat_map(|i| format!(".line {i}\r\n").into_bytes())
        .collect();
    let mut wire = dot_stuff(&body);
    wire.extend_from_slice(b".\r\n");
    let mut complete = 0;
    for limit in (0..1400).step_by(23).chain([1_000_000]) {
        let fake = FakePop3::start(
            Pop3Script::new()
                .credentials("a", "b")
                .message(body.clone()),
        )
        .await;
        let proxy = cutting_proxy(fake.addr(), limit).await;
        let gw = start(&format!(
            "routes:\n{}    timeouts: {{ upstream_reply: 2s }}\n",
            common::pop3_route("p", proxy, "none", "apop", "")
        ))
        .await;
        let result: Option<Vec<u8>> = async {
            let mut c = LineClient::connect(gw.addr("p")).await.ok()?;
            c.set_timeout(Duration::from_secs(5));
            if !c.read_line().await.ok()?.starts_with("+OK") {
                return None;
            }
            c.command("USER a").await.ok()?;
            if !c.command("PASS b").await.ok()?.starts_with("+OK") {
                return None;
            }
            if !c.command("RETR 1").await.ok()?.starts_with("+OK") {
                return None;
            }
            // A terminated body, or nothing if the connection closed first.
            let body = tokio::time::timeout(Duration::from_secs(5), c.read_multiline())
                .await
                .ok()?;
            Some(body.unwrap_or_default())
        }
        .await;
        if let Some(got) = result {
            if !got.is_empty() {
                // A terminated body must be exactly the server's.
                assert_eq!(
                    got, wire,
                    "cut at {limit}: a RETR ended that the server did not end"
                );
                complete += 1;
            }
        }
        gw.stop().await;
    }
    assert!(complete >= 1, "no run completed: the uncut case must");
}

// ---------------------------------------------------------------------------
// Stray lines injected at every reply boundary
// ---------------------------------------------------------------------------

/// How the injecting proxy finds the end of each of the server's replies.
#[derive(Clone, Copy, Debug)]
enum Framing {
    /// Status lines; the body of a positive reply to CAPA, RETR, TOP and
    /// argument-less LIST/UIDL, up to its `.` line.
    Pop3,
    /// `ddd-` lines up to the `ddd ` one.
    Smtp,
}

/// When the stray line follows its reply.
#[derive(Clone, Copy, Debug)]
enum When {
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
struct Injection {
    /// Complete replies the server sent (all connections).
    replies: AtomicUsize,
    /// Whether the stray line was written.
    injected: AtomicBool,
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
async fn injecting_proxy(
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

/// Pause before each client command in [`When::WhenQuiet`] runs: longer
/// than the proxy's quiet wait, so a stray is in postern's socket first.
const CLIENT_PAUSE: Duration = Duration::from_millis(60);
const QUIET: Duration = Duration::from_millis(20);

fn pause_for(when: When) -> Duration {
    match when {
        When::AtOnce => Duration::ZERO,
        When::WhenQuiet(_) => CLIENT_PAUSE,
    }
}

/// What one injected POP3 session showed the client.
#[derive(Debug, Default)]
struct Pop3Run {
    /// Every (command, reply) the client got.
    replies: Vec<(String, String)>,
    /// Whether the session ran to QUIT's `+OK`.
    completed: bool,
}

/// Logs in, STAT, DELE 5 (refused by the server: one message), LIST,
/// DELE 1, QUIT; stops at the first failure.
async fn pop3_injected_session(gw: SocketAddr, pause: Duration) -> Pop3Run {
    let mut run = Pop3Run::default();
    let Ok(mut c) = LineClient::connect(gw).await else {
        return run;
    };
    c.set_timeout(Duration::from_secs(4));
    match c.read_line().await {
        Ok(g) if g.starts_with("+OK") => run.replies.push((String::new(), g)),
        Ok(g) => {
            run.replies.push((String::new(), g));
            return run;
        }
        Err(_) => return run,
    }
    for cmd in [
        "USER a", "PASS b", "STAT", "DELE 5", "LIST", "DELE 1", "QUIT",
    ] {
        tokio::time::sleep(pause).await;
        let Ok(r) = c.command(cmd).await else {
            return run;
        };
        let ok = r.starts_with("+OK");
        run.replies.push((cmd.to_owned(), r));
        if cmd == "LIST" && ok {
            match c.read_multiline_lines().await {
                Ok(lines) => run
                    .replies
                    .extend(lines.into_iter().map(|l| ("LIST line".to_owned(), l))),
                Err(_) => return run,
            }
        }
        // DELE 5 is refused: go on; anything else refused ends the run.
        if !ok && cmd != "DELE 5" {
            return run;
        }
    }
    run.completed = true;
    run
}

#[tokio::test]
async fn pop3_stray_line_at_every_reply_boundary_never_answers_a_command() {
    let mut violations = Vec::new();
    for when in [When::AtOnce, When::WhenQuiet(QUIET)] {
        let mut injected = 0;
        let mut failed_safe = 0;
        for after in 0..16 {
            let fake = FakePop3::start(
                Pop3Script::new()
                    .credentials("a", "b")
                    .message(&b"hi\r\n"[..]),
            )
            .await;
            let (proxy, stats) =
                injecting_proxy(fake.addr(), Framing::Pop3, after, when, b"+OK STRAY\r\n").await;
            let gw = start(&format!(
                "routes:\n{}    timeouts: {{ upstream_reply: 2s }}\n",
                common::pop3_route("p", proxy, "none", "user", "")
            ))
            .await;
            let run = pop3_injected_session(gw.addr("p"), pause_for(when)).await;
            gw.stop().await;
            let did = stats.injected.load(Ordering::SeqCst);
            let replies = stats.replies.load(Ordering::SeqCst);
            for (cmd, reply) in &run.replies {
                if reply.contains("STRAY") {
                    violations.push(format!(
                        "{when:?}, stray after reply {after}: the client got the stray line as {cmd:?}'s reply: {run:?}"
                    ));
                } else if cmd == "DELE 5" && reply.starts_with("+OK") {
                    violations.push(format!(
                        "{when:?}, stray after reply {after}: DELE 5, refused by the server, reached the client as {reply:?}: {run:?}"
                    ));
                }
            }
            if did {
                injected += 1;
                if !run.completed {
                    failed_safe += 1;
                }
            } else if after >= replies {
                // Past the server's last reply: an uninjected session.
                assert!(
                    run.completed,
                    "{when:?}: the session without a stray failed: {run:?}"
                );
                break;
            }
        }
        eprintln!("POP3 {when:?}: {injected} injected runs, {failed_safe} of them ended early");
        assert!(injected > 0, "{when:?}: no stray line was ever injected");
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

/// What one injected SMTP transaction showed the client.
#[derive(Debug, Default)]
struct SmtpRun {
    replies: Vec<(String, String)>,
}

/// EHLO, MAIL, RCPT to a refused address, RCPT, DATA, the message (the
/// server answers its end with 554), QUIT; stops at the first failure.
async fn smtp_injected_session(gw: SocketAddr, pause: Duration) -> SmtpRun {
    let mut run = SmtpRun::default();
    let Ok(mut c) = LineClient::connect(gw).await else {
        return run;
    };
    c.set_timeout(Duration::from_secs(4));
    match c.read_smtp_reply().await {
        Ok(g) => {
            let ok = g[0].starts_with("220");
            run.replies.push((String::new(), g.join(" / ")));
            if !ok {
                return run;
            }
        }
        Err(_) => return run,
    }
    let steps = [
        "EHLO c",
        "MAIL FROM:<a@x>",
        "RCPT TO:<bad@y>",
        "RCPT TO:<b@y>",
        "DATA",
        "end of data",
        "QUIT",
    ];
    for step in steps {
        tokio::time::sleep(pause).await;
        let r = if step == "end of data" {
            if c.send_raw(b"Subject: stray\r\n\r\nbody\r\n.\r\n")
                .await
                .is_err()
            {
                return run;
            }
            c.read_smtp_reply().await
        } else {
            c.smtp_command(step).await
        };
        let Ok(r) = r else {
            return run;
        };
        let r = r.join(" / ");
        let go_on = match step {
            "RCPT TO:<bad@y>" => r.starts_with("550"),
            "DATA" => r.starts_with("354"),
            "end of data" => r.starts_with("554"),
            _ => r.starts_with('2'),
        };
        run.replies.push((step.to_owned(), r));
        if !go_on {
            return run;
        }
    }
    run
}

#[tokio::test]
async fn smtp_stray_reply_at_every_reply_boundary_never_answers_a_command() {
    let mut violations = Vec::new();
    for when in [When::AtOnce, When::WhenQuiet(QUIET)] {
        let mut injected = 0;
        for after in 0..16 {
            let fake = FakeSmtp::start(
                SmtpScript::new()
                    .require_auth(false)
                    .rcpt_reply("bad@y", "550 5.1.1 No such user")
                    .data_end(DataEnd::Reply("554 5.7.1 Rejected".to_owned())),
            )
            .await;
            let (proxy, stats) =
                injecting_proxy(fake.addr(), Framing::Smtp, after, when, b"250 STRAY\r\n").await;
            let gw = start(&format!(
                "routes:\n  - name: s\n    protocol: smtp\n    listen: 127.0.0.1:0\n    upstream: {{ address: \"{proxy}\", security: none, auth: none }}\n    timeouts: {{ upstream_reply: 2s, final_reply: 2s }}\n"
            ))
            .await;
            let run = smtp_injected_session(gw.addr("s"), pause_for(when)).await;
            gw.stop().await;
            let did = stats.injected.load(Ordering::SeqCst);
            let replies = stats.replies.load(Ordering::SeqCst);
            for (step, reply) in &run.replies {
                // The server refuses this recipient and the message, and
                // answers DATA with 354: a 2xx to any of them is not its.
                let not_its = matches!(step.as_str(), "RCPT TO:<bad@y>" | "DATA" | "end of data")
                    && reply.starts_with('2');
                if reply.contains("STRAY") || not_its {
                    violations.push(format!(
                        "{when:?}, stray after reply {after}: {step:?} reached the client as {reply:?}: {run:?}"
                    ));
                }
            }
            if did {
                injected += 1;
            } else if after >= replies {
                let last = run.replies.last().map(|(s, _)| s.as_str());
                assert_eq!(
                    last,
                    Some("QUIT"),
                    "{when:?}: the transaction without a stray did not run to QUIT: {run:?}"
                );
                break;
            }
        }
        eprintln!("SMTP {when:?}: {injected} injected runs");
        assert!(injected > 0, "{when:?}: no stray reply was ever injected");
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}
