//! Stray lines injected at every reply boundary, at once or when postern
//! is quiet: never the reply to a command.

use std::sync::atomic::Ordering;

use postern_testkit::DataEnd;

use super::inject::{injecting_proxy, Framing, When};
use super::*;

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
            let gw = start(
                &RouteYaml::pop3("p", proxy)
                    .security("none")
                    .auth("user")
                    .timeouts("upstream_reply: 2s")
                    .yaml(),
            )
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
            let gw = start(
                &RouteYaml::smtp("s", proxy)
                    .security("none")
                    .auth("none")
                    .timeouts("upstream_reply: 2s, final_reply: 2s")
                    .yaml(),
            )
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
