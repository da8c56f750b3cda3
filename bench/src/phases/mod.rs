//! The measured phases. Each is bounded: a rate runs for warm-up plus a
//! window and then stops its clients (each step of a client under its own
//! deadline); a transfer has one deadline; the memory phases open a fixed
//! number of sessions.

pub mod memory;
pub mod rates;
pub mod script;
pub mod transfer;

use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Runs `jobs` futures with at most `width` at a time; results in any order.
pub async fn bounded<T, F, Fut>(jobs: usize, width: usize, make: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let gate = Arc::new(Semaphore::new(width.max(1)));
    let mut set = JoinSet::new();
    let mut out = Vec::with_capacity(jobs);
    for i in 0..jobs {
        let Ok(permit) = gate.clone().acquire_owned().await else {
            break;
        };
        let job = make(i);
        set.spawn(async move {
            let r = job.await;
            drop(permit);
            r
        });
        // Collect as we go, so finished connections are not held twice.
        while let Some(r) = set.try_join_next() {
            if let Ok(r) = r {
                out.push(r);
            }
        }
    }
    while let Some(r) = set.join_next().await {
        if let Ok(r) = r {
            out.push(r);
        }
    }
    out
}
