//! The admin endpoint: `/metrics` scraped over HTTP and parsed with a real
//! Prometheus text parser after sessions of each outcome (the counters move
//! by exactly what happened), `/healthz` and `/readyz`, and the allow-list.

mod common;

use std::time::Duration;

use common::{config, RouteYaml};
use postern::admin::Admin;
use postern::config::AdminConfig;
use postern::Gateway;
use postern_testkit::{dot_stuff, FakePop3, FakeSmtp, LineClient, Pop3Script, SmtpScript};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// One HTTP/1.1 GET; (status code, body).
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: postern\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("request");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut raw))
        .await
        .expect("in time")
        .expect("read");
    let text = String::from_utf8(raw).expect("utf-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("a response");
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    (code, body.to_owned())
}

/// The value of one sample, 0 if absent.
fn sample(scrape: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

async fn scrape(addr: std::net::SocketAddr) -> prometheus_parse::Scrape {
    let (code, body) = get(addr, "/metrics").await;
    assert_eq!(code, 200, "{body}");
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
        .expect("Prometheus text")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_by_exactly_what_happened_and_health_follows_the_gateway() {
    // A route name no other test uses: the registry is per process.
    let route = "admin-metrics";
    let body = b"Subject: hi\r\n\r\n.dot\r\nbody\r\n".to_vec();
    let fake = FakePop3::start(
        Pop3Script::new()
            .credentials("alice", "wonderland")
            .message(body.clone()),
    )
    .await;
    let mail = FakeSmtp::start(SmtpScript::new().credentials("alice", "wonderland")).await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let yaml = common::routes_yaml(&[
        RouteYaml::pop3(route, fake.addr())
            .security("none")
            .auth("user"),
        RouteYaml::smtp("admin-metrics-smtp", mail.addr())
            .security("none")
            .auth("plain"),
        RouteYaml::pop3("admin-metrics-down", closed)
            .security("none")
            .auth("user"),
    ]);
    let gateway = Gateway::bind(&config(&yaml)).await.expect("bind");
    let shutdown = CancellationToken::new();
    let served = tokio::spawn(
        gateway
            .clone()
            .serve(shutdown.clone(), Duration::from_secs(5)),
    );
    let admin = Admin::bind(&AdminConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        allow: None,
    })
    .await
    .expect("admin");
    let admin_addr = admin.local_addr().expect("addr");
    let admin_stop = CancellationToken::new();
    tokio::spawn(admin.serve(gateway.clone(), admin_stop.clone()));
    let addr = gateway.addr(route).expect("route");

    assert_eq!(get(admin_addr, "/healthz").await.0, 200);
    assert_eq!(get(admin_addr, "/readyz").await.0, 200);
    assert_eq!(get(admin_addr, "/nope").await.0, 404);
    let before = scrape(admin_addr).await;
    let at = |s: &prometheus_parse::Scrape, m: &str, k: &str| {
        sample(s, m, &[("route", route), ("kind", k)])
    };

    // One good session: login, RETR, QUIT.
    let mut c = LineClient::connect(addr).await.expect("connect");
    c.read_line().await.expect("greeting");
    c.command("USER alice").await.expect("user");
    assert!(c
        .command("PASS wonderland")
        .await
        .expect("pass")
        .starts_with("+OK"));
    assert!(c.command("RETR 1").await.expect("retr").starts_with("+OK"));
    c.read_multiline().await.expect("body");
    assert!(c.command("QUIT").await.expect("quit").starts_with("+OK"));
    // One refused upstream, then the client leaves without QUIT.
    let mut c = LineClient::connect(addr).await.expect("connect");
    c.read_line().await.expect("greeting");
    c.command("USER alice").await.expect("user");
    assert!(c
        .command("PASS wrong")
        .await
        .expect("pass")
        .starts_with("-ERR"));
    drop(c);
    // Let both sessions end.
    let mut after = scrape(admin_addr).await;
    for _ in 0..50 {
        if at(&after, "postern_sessions_total", "client")
            - at(&before, "postern_sessions_total", "client")
            >= 1.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        after = scrape(admin_addr).await;
    }
    // One message through SMTP, one login to an upstream that is down.
    let smtp_addr = gateway.addr("admin-metrics-smtp").expect("smtp");
    let mut m = common::smtp_into_data(smtp_addr).await;
    m.send_raw(b"Subject: x\r\n\r\nseven\r\n.\r\n")
        .await
        .expect("body");
    assert!(m.read_smtp_reply().await.expect("final")[0].starts_with("250"));
    m.smtp_command("QUIT").await.expect("quit");
    let mut d = LineClient::connect(gateway.addr("admin-metrics-down").expect("down"))
        .await
        .expect("connect");
    d.read_line().await.expect("greeting");
    d.command("USER a").await.expect("user");
    assert!(d
        .command("PASS b")
        .await
        .expect("pass")
        .starts_with("-ERR [SYS/TEMP]"));
    let other = |s: &prometheus_parse::Scrape, name: &str, m: &str, k: &str| {
        sample(s, m, &[("route", name), ("kind", k)])
    };
    for _ in 0..50 {
        after = scrape(admin_addr).await;
        if other(
            &after,
            "admin-metrics-down",
            "postern_sessions_total",
            "upstream",
        ) >= 1.0
            && other(
                &after,
                "admin-metrics-smtp",
                "postern_sessions_total",
                "quit",
            ) >= 1.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let moved_at =
        |name: &str, m: &str, k: &str| other(&after, name, m, k) - other(&before, name, m, k);
    assert_eq!(
        moved_at("admin-metrics-smtp", "postern_messages_total", "2xx"),
        1.0
    );
    assert_eq!(
        moved_at(
            "admin-metrics-smtp",
            "postern_relayed_bytes_total",
            "to_upstream"
        ),
        21.0
    );
    assert_eq!(
        moved_at("admin-metrics-smtp", "postern_logins_total", "accepted"),
        1.0
    );
    assert_eq!(
        moved_at("admin-metrics-down", "postern_sessions_total", "upstream"),
        1.0
    );
    assert_eq!(
        moved_at(
            "admin-metrics-down",
            "postern_upstream_failures_total",
            "connect"
        ),
        1.0
    );

    let moved = |m: &str, k: &str| at(&after, m, k) - at(&before, m, k);
    assert_eq!(moved("postern_sessions_total", "quit"), 1.0);
    assert_eq!(moved("postern_sessions_total", "client"), 1.0);
    assert_eq!(moved("postern_logins_total", "accepted"), 1.0);
    assert_eq!(moved("postern_logins_total", "refused_upstream"), 1.0);
    assert_eq!(moved("postern_messages_total", "retrieved"), 1.0);
    let mut wire = dot_stuff(&body);
    wire.extend_from_slice(b".\r\n");
    assert_eq!(
        moved("postern_relayed_bytes_total", "to_client"),
        wire.len() as f64
    );
    assert_eq!(
        sample(&after, "postern_sessions_active", &[("route", route)]),
        0.0
    );
    assert!(
        after
            .samples
            .iter()
            .any(|s| s.metric == "postern_build_info"),
        "no build info"
    );

    // Draining: not ready any more while a session finishes.
    let mut held = LineClient::connect(addr).await.expect("connect");
    held.read_line().await.expect("greeting");
    shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(get(admin_addr, "/readyz").await.0, 503);
    tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .expect("stopped")
        .expect("no panic");
    assert_eq!(
        get(admin_addr, "/healthz").await.0,
        503,
        "no listener serves any more"
    );
    admin_stop.cancel();
}

#[tokio::test]
async fn clients_outside_the_allow_list_get_nothing() {
    let fake = FakePop3::start(Pop3Script::new()).await;
    let yaml = common::routes_yaml(&[RouteYaml::pop3("admin-allow", fake.addr())
        .security("none")
        .auth("apop")]);
    let gateway = Gateway::bind(&config(&yaml)).await.expect("bind");
    let admin = Admin::bind(&AdminConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        allow: Some(vec!["10.0.0.0/8".parse().expect("net")]),
    })
    .await
    .expect("admin");
    let admin_addr = admin.local_addr().expect("addr");
    let stop = CancellationToken::new();
    tokio::spawn(admin.serve(gateway.clone(), stop.clone()));
    let mut s = tokio::net::TcpStream::connect(admin_addr)
        .await
        .expect("connect");
    let _ = s
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut raw)).await;
    assert!(
        raw.is_empty(),
        "answered a client outside admin.allow: {:?}",
        String::from_utf8_lossy(&raw)
    );
    stop.cancel();
}
