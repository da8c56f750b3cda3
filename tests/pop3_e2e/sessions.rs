//! Sessions that cannot reach their upstream or may not connect, and
//! shutdown.

use super::*;

/// A route whose upstream does not resolve still starts, and answers each
/// session with a temporary error.
#[tokio::test]
async fn unresolvable_or_refusing_upstreams_give_a_temporary_error() {
    // A port nobody listens on: bind then drop.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let yaml = routes_yaml(&[
        RouteYaml::pop3("dns", "pop.nonexistent.invalid:995").auth("user"),
        RouteYaml::pop3("refused", closed)
            .security("none")
            .auth("apop"),
    ]);
    let gw = start(&yaml).await;
    for route in ["dns", "refused", "dns"] {
        let mut c = LineClient::connect(gw.addr(route)).await.expect("connect");
        // postern greets itself; the upstream is tried at login.
        let r = pop3_greet_and_pass(&mut c, "a", "b").await;
        assert!(r.starts_with("-ERR [SYS/TEMP]"), "{route}: {r}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn clients_outside_the_allow_list_are_refused() {
    let fake = FakePop3::start(Pop3Script::new()).await;
    let yaml = RouteYaml::pop3("r", fake.addr())
        .allow(&["10.0.0.0/8"])
        .security("none")
        .auth("apop")
        .yaml();
    let gw = start(&yaml).await;
    let mut c = LineClient::connect(gw.addr("r")).await.expect("connect");
    let line = c.read_line().await.expect("refusal");
    assert!(line.starts_with("-ERR"), "{line}");
    assert_eq!(
        fake.connections(),
        0,
        "upstream contacted for a refused client"
    );
    gw.stop().await;
}

/// SIGTERM semantics: after shutdown no new session is accepted, but a
/// running one can finish its work within the grace period.
#[tokio::test]
async fn shutdown_drains_running_sessions() {
    let fake = FakePop3::start(Pop3Script::new().credentials("a", "b").messages(messages())).await;
    let gw = start(&plain_route(fake.addr(), "apop")).await;
    let addr = gw.addr("r");
    let mut c = LineClient::connect(addr).await.expect("connect");
    c.read_line().await.expect("greeting");
    gw.shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        LineClient::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
    c.command("USER a").await.expect("user");
    assert!(c.command("PASS b").await.expect("pass").starts_with("+OK"));
    assert!(c.command("RETR 1").await.expect("retr").starts_with("+OK"));
    assert_eq!(
        c.read_multiline().await.expect("body"),
        wire(&messages()[0])
    );
    assert!(c.command("QUIT").await.expect("quit").starts_with("+OK"));
    gw.stop().await;
}

#[tokio::test]
async fn a_session_past_the_grace_period_is_closed() {
    let fake = FakePop3::start(Pop3Script::new().credentials("a", "b")).await;
    let gw = common::start_with_grace(
        &plain_route(fake.addr(), "apop"),
        Duration::from_millis(200),
    )
    .await;
    let mut c = LineClient::connect(gw.addr("r")).await.expect("connect");
    c.read_line().await.expect("greeting");
    gw.stop().await;
    let (rest, _) = c.read_to_close().await;
    assert!(rest.is_empty(), "{rest:?}");
}
