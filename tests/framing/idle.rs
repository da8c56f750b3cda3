//! Idle clients that never log in hold nothing upstream.

use super::*;

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
    let yaml = GatewayYaml::new()
        .limits("sessions: 1000, sessions_per_client: 1000")
        .timeouts("login_total: 1s, client_login: 10s, client_idle: 10s, upstream_reply: 2s")
        .route(RouteYaml::pop3("p", pop_up).security("none").auth("user"))
        .route(RouteYaml::smtp("s", smtp_up).security("none").auth("plain"))
        .to_string();
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
