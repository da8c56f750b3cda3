//! Shutdown (SIGTERM): sessions whose client stays silent end after a
//! short last call with a protocol-correct goodbye, instead of holding the
//! gateway for the whole grace period; a session in the middle of a command
//! (here: a message being sent) finishes it.

mod common;

use std::time::{Duration, Instant};

use common::{routes_yaml, start_with_grace, RouteYaml};
use postern_testkit::{FakePop3, FakeSmtp, LineClient, Pop3Event, Pop3Script, SmtpScript};

const GRACE: Duration = Duration::from_secs(8);

#[tokio::test]
async fn idle_sessions_are_told_and_closed_at_once_busy_ones_finish() {
    let pop = FakePop3::start(Pop3Script::new().credentials("alice", "wonderland")).await;
    let smtp = FakeSmtp::start(SmtpScript::new().credentials("alice", "wonderland")).await;
    let yaml = routes_yaml(&[
        RouteYaml::pop3("p", pop.addr())
            .security("none")
            .auth("user"),
        RouteYaml::smtp("s", smtp.addr())
            .security("none")
            .auth("plain"),
    ]);
    let gw = start_with_grace(&yaml, GRACE).await;

    // A POP3 client that never logs in, and one logged in and idle.
    let mut prelogin = LineClient::connect(gw.addr("p")).await.expect("connect");
    assert!(prelogin
        .read_line()
        .await
        .expect("greeting")
        .starts_with("+OK"));
    let mut idle = LineClient::connect(gw.addr("p")).await.expect("connect");
    idle.read_line().await.expect("greeting");
    idle.command("USER alice").await.expect("user");
    assert!(idle
        .command("PASS wonderland")
        .await
        .expect("pass")
        .starts_with("+OK"));

    // An SMTP client in the middle of a message.
    let mut busy = common::smtp_into_data(gw.addr("s")).await;
    busy.send_raw(b"Subject: half\r\n\r\nfirst half\r\n")
        .await
        .expect("half");

    let started = Instant::now();
    let stopping = tokio::spawn(gw.stop());

    // The idle ones hear why after the last call (1 s) and are closed.
    for c in [&mut prelogin, &mut idle] {
        let r = c.read_line().await.expect("goodbye");
        assert!(
            r.starts_with("-ERR [SYS/TEMP] postern is shutting down"),
            "{r}"
        );
        let (rest, _) = c.read_to_close().await;
        assert!(rest.is_empty(), "nothing after the goodbye: {rest:?}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    // The logged-in client left without QUIT: nothing was committed upstream.
    assert!(pop
        .wait_for(
            |e| matches!(e, Pop3Event::ClosedWithoutQuit),
            Duration::from_secs(5)
        )
        .await
        .is_some());
    assert!(!pop
        .events()
        .iter()
        .any(|e| matches!(e, Pop3Event::QuitCommitted { .. })));

    // The message in flight is finished and answered by the upstream...
    busy.send_raw(b"second half\r\n.\r\n").await.expect("end");
    let r = busy.read_smtp_reply().await.expect("final reply");
    assert!(r[0].starts_with("250"), "{r:?}");
    assert_eq!(smtp.accepted_messages().len(), 1);
    // ...then the session ends with 421 instead of waiting for more.
    let r = busy.read_smtp_reply().await.expect("goodbye");
    assert!(r[0].starts_with("421 4.3.2"), "{r:?}");

    tokio::time::timeout(Duration::from_secs(5), stopping)
        .await
        .expect("the gateway stopped well within the grace period")
        .expect("no panic");
    assert!(started.elapsed() < GRACE, "took {:?}", started.elapsed());
}
