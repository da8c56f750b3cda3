//! Closed-loop rates: N clients each repeat one thing as fast as the
//! target answers; completions are counted over a window after a warm-up.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use super::script;
use crate::client::{Endpoint, LINE_BUFFER};
use crate::measure::{Errors, Metric, Probe, Sample};
use crate::profile::Profile;

/// What the clients of a rate share.
#[derive(Debug, Default)]
struct Loop {
    done: AtomicU64,
    stop: AtomicBool,
    errors: Errors,
}

/// A failed client pauses before it tries again, so a broken target
/// cannot make the load generator spin.
const ERROR_PAUSE: Duration = Duration::from_millis(20);

/// Sessions per second with `metric.clients()` clients, each looping over
/// connect, greeting, USER, PASS, STAT, QUIT.
pub async fn sessions(
    ep: &Endpoint,
    metric: Metric,
    p: &Profile,
    probe: &Probe,
    round: usize,
) -> Sample {
    let shared = Arc::new(Loop::default());
    let mut set = JoinSet::new();
    for _ in 0..metric.clients() {
        let (ep, shared) = (ep.clone(), shared.clone());
        set.spawn(async move {
            while !shared.stop.load(Ordering::Relaxed) {
                match script::pop3_session(&ep).await {
                    Ok(()) => {
                        shared.done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        shared.errors.record(&e);
                        tokio::time::sleep(ERROR_PAUSE).await;
                    }
                }
            }
        });
    }
    window(ep, metric, set, shared, p, probe, round).await
}

/// NOOP commands per second on `metric.clients()` logged-in sessions.
pub async fn noops(
    ep: &Endpoint,
    metric: Metric,
    p: &Profile,
    probe: &Probe,
    round: usize,
) -> Sample {
    let shared = Arc::new(Loop::default());
    let width = 16;
    let logins = super::bounded(metric.clients(), width, |_| {
        let ep = ep.clone();
        async move { script::pop3_login(&ep, LINE_BUFFER).await }
    })
    .await;
    let mut set = JoinSet::new();
    for login in logins {
        let mut conn = match login {
            Ok(c) => c,
            Err(e) => {
                shared.errors.record(&e);
                continue;
            }
        };
        let shared = shared.clone();
        set.spawn(async move {
            while !shared.stop.load(Ordering::Relaxed) {
                if let Err(e) = conn.pop3("NOOP", b"NOOP\r\n").await {
                    shared.errors.record(&e);
                    return;
                }
                shared.done.fetch_add(1, Ordering::Relaxed);
            }
            let _ = conn.pop3("QUIT", b"QUIT\r\n").await;
        });
    }
    window(ep, metric, set, shared, p, probe, round).await
}

/// Lets the clients warm up, counts completions over the window, stops
/// them and waits (bounded) for them to finish.
async fn window(
    ep: &Endpoint,
    metric: Metric,
    mut set: JoinSet<()>,
    shared: Arc<Loop>,
    p: &Profile,
    probe: &Probe,
    round: usize,
) -> Sample {
    tokio::time::sleep(p.warmup).await;
    let (n0, a) = (shared.done.load(Ordering::Relaxed), probe.snapshot());
    tokio::time::sleep(p.window).await;
    let (n1, b) = (shared.done.load(Ordering::Relaxed), probe.snapshot());
    shared.stop.store(true, Ordering::Relaxed);
    let drained = tokio::time::timeout(p.step * 2, async {
        while set.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        set.abort_all();
    }
    Sample::new(
        metric,
        ep.kind,
        round,
        n1 - n0,
        probe.usage(&a, &b),
        &shared.errors,
    )
}
