//! Configurable timeouts and limits, end to end.

mod common;

use std::time::{Duration, Instant};

use common::{start, GatewayYaml, RouteYaml};
use postern_testkit::{
    sasl_plain_response, DataEnd, FakePop3, FakeSmtp, LineClient, Pop3Script, SmtpScript,
};

/// SMTP route `s` to `upstream` with CRAM-MD5.
fn smtp_route(upstream: std::net::SocketAddr) -> RouteYaml {
    RouteYaml::smtp("s", upstream)
        .security("none")
        .auth("cram-md5")
}

/// POP3 route `name` to `upstream` with APOP.
fn pop3_route(name: &str, upstream: std::net::SocketAddr) -> RouteYaml {
    RouteYaml::pop3(name, upstream)
        .security("none")
        .auth("apop")
}

async fn smtp_login(c: &mut LineClient) {
    assert!(c.read_smtp_reply().await.expect("greeting")[0].starts_with("220"));
    c.smtp_command("EHLO c").await.expect("ehlo");
    let r = c
        .smtp_command(&format!(
            "AUTH PLAIN {}",
            sasl_plain_response("", "alice", "wonderland")
        ))
        .await
        .expect("auth");
    assert!(r[0].starts_with("235"), "{r:?}");
}

/// The upstream accepts the data but never answers: postern's final-reply
/// deadline (shorter than a client's 10 minutes) gives the client 451.
#[tokio::test]
async fn upstream_silence_after_data_gives_451_not_a_hang() {
    let fake = FakeSmtp::start(SmtpScript::new().data_end(DataEnd::HangBeforeFinalReply)).await;
    let gw = start(&smtp_route(fake.addr()).timeouts("final_reply: 1s").yaml()).await;
    let mut c = LineClient::connect(gw.addr("s")).await.expect("connect");
    smtp_login(&mut c).await;
    c.smtp_command("MAIL FROM:<a@x>").await.expect("mail");
    c.smtp_command("RCPT TO:<b@y>").await.expect("rcpt");
    assert!(c.smtp_command("DATA").await.expect("data")[0].starts_with("354"));
    let started = Instant::now();
    c.send_raw(b"Subject: x\r\n\r\nhi\r\n.\r\n")
        .await
        .expect("body");
    let r = c.read_smtp_reply().await.expect("final");
    assert!(r[0].starts_with("451 4.4.2"), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(4));
    gw.stop().await;
}

#[tokio::test]
async fn recipients_and_size_limits() {
    let fake = FakeSmtp::start(SmtpScript::new()).await;
    let gw = start(
        &smtp_route(fake.addr())
            .limits("max_recipients: 2, message_size: 5000")
            .yaml(),
    )
    .await;
    let mut c = LineClient::connect(gw.addr("s")).await.expect("connect");
    assert!(c.read_smtp_reply().await.expect("greeting")[0].starts_with("220"));
    let ehlo = c.smtp_command("EHLO c").await.expect("ehlo");
    assert!(ehlo.iter().any(|l| l.ends_with("SIZE 5000")), "{ehlo:?}");
    c.smtp_command(&format!(
        "AUTH PLAIN {}",
        sasl_plain_response("", "alice", "wonderland")
    ))
    .await
    .expect("auth");
    c.smtp_command("MAIL FROM:<a@x>").await.expect("mail");
    assert!(c.smtp_command("RCPT TO:<1@y>").await.expect("r1")[0].starts_with("250"));
    assert!(c.smtp_command("RCPT TO:<2@y>").await.expect("r2")[0].starts_with("250"));
    let r = c.smtp_command("RCPT TO:<3@y>").await.expect("r3");
    assert!(r[0].starts_with("452 4.5.3"), "{r:?}");
    assert_eq!(
        fake.commands()
            .iter()
            .filter(|l| l.starts_with("RCPT"))
            .count(),
        2
    );
    gw.stop().await;
}

#[tokio::test]
async fn sessions_per_client_and_per_route() {
    let fake = FakePop3::start(Pop3Script::new()).await;
    let yaml = GatewayYaml::new()
        .limits("sessions_per_client: 1")
        .route(pop3_route("p", fake.addr()))
        .to_string();
    let gw = start(&yaml).await;
    let mut first = LineClient::connect(gw.addr("p")).await.expect("connect");
    assert!(first
        .read_line()
        .await
        .expect("greeting")
        .starts_with("+OK"));
    let mut second = LineClient::connect(gw.addr("p")).await.expect("connect");
    let r = second.read_line().await.expect("busy");
    assert!(r.starts_with("-ERR [SYS/TEMP]"), "{r}");
    // Another address still gets in; and the place frees when the first leaves.
    let mut other = LineClient::connect_from("127.0.0.20".parse().expect("ip"), gw.addr("p"))
        .await
        .expect("connect");
    assert!(other
        .read_line()
        .await
        .expect("greeting")
        .starts_with("+OK"));
    first.command("QUIT").await.expect("quit");
    drop(first);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = LineClient::connect(gw.addr("p")).await.expect("connect");
    assert!(again
        .read_line()
        .await
        .expect("greeting")
        .starts_with("+OK"));
    drop((other, again));
    gw.stop().await;

    let fake = FakeSmtp::start(SmtpScript::new()).await;
    let gw = start(&smtp_route(fake.addr()).limits("sessions: 1").yaml()).await;
    let mut first = LineClient::connect(gw.addr("s")).await.expect("connect");
    assert!(first.read_smtp_reply().await.expect("greeting")[0].starts_with("220"));
    let mut second = LineClient::connect_from("127.0.0.21".parse().expect("ip"), gw.addr("s"))
        .await
        .expect("connect");
    let r = second.read_smtp_reply().await.expect("busy");
    assert!(r[0].starts_with("421 4.7.0"), "{r:?}");
    drop(first);
    gw.stop().await;
}

#[tokio::test]
async fn idle_clients_before_login_are_dropped() {
    let fake = FakePop3::start(Pop3Script::new()).await;
    let yaml = pop3_route("p", fake.addr())
        .timeouts("client_login: 500ms")
        .yaml();
    let gw = start(&yaml).await;
    let mut c = LineClient::connect(gw.addr("p")).await.expect("connect");
    c.read_line().await.expect("greeting");
    let started = Instant::now();
    let (rest, _) = c.read_to_close().await;
    assert!(rest.is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    gw.stop().await;
}

/// A client that stops reading a large RETR: postern's writes wait at most
/// `timeouts.write`, then the session ends (upstream dropped without QUIT)
/// instead of buffering the message.
#[tokio::test]
async fn a_slow_reader_is_dropped_not_buffered_for() {
    let body: Vec<u8> = (0..400_000)
        .flat_map(|i| format!("line {i:08}\r\n").into_bytes())
        .collect();
    let fake = FakePop3::start(Pop3Script::new().credentials("a", "b").message(body)).await;
    let yaml = pop3_route("p", fake.addr()).timeouts("write: 1s").yaml();
    let gw = start(&yaml).await;
    let mut c = LineClient::connect(gw.addr("p")).await.expect("connect");
    c.read_line().await.expect("greeting");
    c.command("USER a").await.expect("user");
    assert!(c.command("PASS b").await.expect("pass").starts_with("+OK"));
    c.send("RETR 1").await.expect("retr");
    // Never read again: postern must give up within a few seconds.
    let dropped = fake
        .wait_for(
            |e| matches!(e, postern_testkit::Pop3Event::ClosedWithoutQuit),
            Duration::from_secs(15),
        )
        .await;
    assert!(
        dropped.is_some(),
        "postern kept the session of a client that stopped reading"
    );
    drop(c);
    gw.stop().await;
}

/// An upstream that accepts TCP but never speaks (or black-holes SYNs):
/// the client gets a fast temporary error, bounded by the configured
/// deadlines.
#[tokio::test]
async fn a_black_hole_upstream_gives_a_fast_temporary_error() {
    // A listener that never accepts, with its queue filled.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let hole = socket.local_addr().expect("addr");
    let _listener = socket.listen(1).expect("listen");
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(hole),
        )
        .await
        {
            fillers.push(s);
        }
    }
    let yaml = pop3_route("p", hole)
        .timeouts("connect: 500ms, upstream_reply: 500ms")
        .yaml();
    let gw = start(&yaml).await;
    let mut c = LineClient::connect(gw.addr("p")).await.expect("connect");
    // postern greets itself; the upstream is opened by the login.
    let greeting = c.read_line().await.expect("greeting");
    assert!(greeting.starts_with(common::POP3_GREETING), "{greeting}");
    assert!(c.command("USER a").await.expect("user").starts_with("+OK"));
    let started = Instant::now();
    let r = c.command("PASS b").await.expect("pass");
    assert!(r.starts_with("-ERR [SYS/TEMP]"), "{r}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    gw.stop().await;
}

#[tokio::test]
async fn total_sessions_across_routes() {
    let fake = FakePop3::start(Pop3Script::new()).await;
    let yaml = GatewayYaml::new()
        .limits("total_sessions: 1")
        .route(pop3_route("a", fake.addr()))
        .route(pop3_route("b", fake.addr()))
        .to_string();
    let gw = start(&yaml).await;
    let mut first = LineClient::connect(gw.addr("a")).await.expect("connect");
    assert!(first
        .read_line()
        .await
        .expect("greeting")
        .starts_with("+OK"));
    let mut second = LineClient::connect(gw.addr("b")).await.expect("connect");
    let r = second.read_line().await.expect("busy");
    assert!(r.starts_with("-ERR [SYS/TEMP]"), "{r}");
    first.command("QUIT").await.expect("quit");
    drop(first);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = LineClient::connect(gw.addr("b")).await.expect("connect");
    assert!(
        third
            .read_line()
            .await
            .expect("greeting")
            .starts_with("+OK"),
        "the place was not given back"
    );
    drop(third);
    gw.stop().await;
}
