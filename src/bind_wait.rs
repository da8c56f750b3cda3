//! Binding listen addresses the machine does not have yet.
//!
//! A service started at boot can run before the network is up (the NT
//! service postern replaces failed exactly there). postern connects
//! upstream only when a client logs in, so the one step that needs the
//! network at start is binding: an address on an interface that has no
//! address yet fails with "address not available" (`EADDRNOTAVAIL`,
//! `WSAEADDRNOTAVAIL`). In [`MissingAddress::Wait`] mode that failure is
//! retried until the address appears; every other failure (in use,
//! permission denied, a bad certificate) is reported at once, as it will
//! not cure itself.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::{MissingAddress, StartError};

/// How long [`MissingAddress::Wait`] waits between two tries.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(2);

/// Runs the bind `attempt` once ([`MissingAddress::Fail`]) or until its
/// addresses exist ([`MissingAddress::Wait`], every [`RETRY_INTERVAL`]).
/// `Ok(None)`: `stop` was cancelled while waiting.
pub async fn bind<T, F, Fut>(
    missing: MissingAddress,
    stop: &CancellationToken,
    mut attempt: F,
) -> Result<Option<T>, StartError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StartError>>,
{
    match missing {
        MissingAddress::Fail => attempt().await.map(Some),
        MissingAddress::Wait => retry(RETRY_INTERVAL, stop, attempt).await,
    }
}

/// Runs `attempt` until it succeeds, fails for another reason than a
/// missing address ([`StartError::address_not_available`]), or `stop` is
/// cancelled (then `Ok(None)`); waits `every` between tries, logging one
/// warning per failed try. There is no upper bound: a service should come
/// up whenever the network does, and it can be stopped meanwhile.
pub async fn retry<T, F, Fut>(
    every: Duration,
    stop: &CancellationToken,
    mut attempt: F,
) -> Result<Option<T>, StartError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StartError>>,
{
    let mut failed: u64 = 0;
    loop {
        match attempt().await {
            Ok(bound) => {
                if failed > 0 {
                    tracing::info!(tries = failed + 1, "listen addresses available; starting");
                }
                return Ok(Some(bound));
            }
            Err(e) if e.address_not_available() => {
                failed += 1;
                tracing::warn!(
                    error = %e,
                    tries = failed,
                    "listen address not available yet (network not up?); trying again in {}s",
                    every.as_secs_f32()
                );
            }
            Err(e) => return Err(e),
        }
        tokio::select! {
            () = stop.cancelled() => {
                tracing::info!("stopped while waiting for listen addresses");
                return Ok(None);
            }
            () = tokio::time::sleep(every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_core::server::BindError;
    use std::io::ErrorKind;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn bind_error(kind: ErrorKind) -> StartError {
        StartError::Bind(BindError {
            route: "office".to_owned(),
            address: ([192, 0, 2, 1], 110).into(),
            source: std::io::Error::from(kind),
        })
    }

    /// An attempt that fails with each of `failures` in turn, then
    /// succeeds with the number of tries; `tries` counts every call.
    fn scripted(
        failures: Vec<ErrorKind>,
        tries: &AtomicUsize,
    ) -> impl FnMut() -> std::future::Ready<Result<usize, StartError>> + '_ {
        move || {
            let n = tries.fetch_add(1, Ordering::SeqCst);
            std::future::ready(match failures.get(n) {
                Some(kind) => Err(bind_error(*kind)),
                None => Ok(n + 1),
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_missing_address_is_tried_again_until_it_appears() {
        let tries = AtomicUsize::new(0);
        let stop = CancellationToken::new();
        let started = tokio::time::Instant::now();
        let failures = vec![ErrorKind::AddrNotAvailable, ErrorKind::AddrNotAvailable];
        let got = retry(RETRY_INTERVAL, &stop, scripted(failures, &tries)).await;
        assert_eq!(got.ok().flatten(), Some(3), "bound on the third try");
        assert_eq!(tries.load(Ordering::SeqCst), 3);
        // Two waits of the interval, no more and no less.
        assert_eq!(started.elapsed(), RETRY_INTERVAL * 2);
    }

    #[tokio::test(start_paused = true)]
    async fn any_other_bind_failure_is_reported_at_once() {
        for kind in [
            ErrorKind::AddrInUse,
            ErrorKind::PermissionDenied,
            ErrorKind::InvalidInput,
        ] {
            let tries = AtomicUsize::new(0);
            let stop = CancellationToken::new();
            let started = tokio::time::Instant::now();
            let got = retry(RETRY_INTERVAL, &stop, scripted(vec![kind], &tries)).await;
            match got {
                Err(StartError::Bind(e)) => assert_eq!(e.source.kind(), kind),
                other => panic!("{kind:?}: expected the bind error, got {other:?}"),
            }
            assert_eq!(tries.load(Ordering::SeqCst), 1, "{kind:?}: tried once");
            assert_eq!(started.elapsed(), Duration::ZERO, "{kind:?}: no wait");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_admin_address_that_is_missing_is_waited_for_too() {
        let tries = AtomicUsize::new(0);
        let stop = CancellationToken::new();
        let got = retry(RETRY_INTERVAL, &stop, || {
            let n = tries.fetch_add(1, Ordering::SeqCst);
            std::future::ready(if n == 0 {
                Err(StartError::Admin {
                    address: ([192, 0, 2, 1], 9725).into(),
                    source: ErrorKind::AddrNotAvailable.into(),
                })
            } else {
                Ok(())
            })
        })
        .await;
        assert!(matches!(got, Ok(Some(()))), "{got:?}");
        assert_eq!(tries.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn stopping_while_waiting_ends_the_wait() {
        let tries = AtomicUsize::new(0);
        let stop = CancellationToken::new();
        let canceller = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(7)).await;
            canceller.cancel();
        });
        let started = tokio::time::Instant::now();
        let forever = vec![ErrorKind::AddrNotAvailable; 1000];
        let got = retry(RETRY_INTERVAL, &stop, scripted(forever, &tries)).await;
        assert!(matches!(got, Ok(None)), "{got:?}");
        assert_eq!(started.elapsed(), Duration::from_secs(7));
        // Tried at 0, 2, 4 and 6 seconds.
        assert_eq!(tries.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn fail_mode_reports_a_missing_address_at_once() {
        let tries = AtomicUsize::new(0);
        let stop = CancellationToken::new();
        let failures = vec![ErrorKind::AddrNotAvailable];
        let got = bind(MissingAddress::Fail, &stop, scripted(failures, &tries)).await;
        assert!(
            matches!(&got, Err(e) if e.address_not_available()),
            "{got:?}"
        );
        assert_eq!(tries.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn only_a_missing_address_counts_as_missing() {
        assert!(bind_error(ErrorKind::AddrNotAvailable).address_not_available());
        assert!(!bind_error(ErrorKind::AddrInUse).address_not_available());
        assert!(!bind_error(ErrorKind::PermissionDenied).address_not_available());
    }

    /// The kernel says "address not available" for an address the machine
    /// does not have, as it does at boot for an interface not yet up
    /// (192.0.2.1 is TEST-NET-1, RFC 5737: never a local address).
    #[tokio::test]
    async fn binding_an_address_the_machine_lacks_is_address_not_available() {
        let e = tokio::net::TcpListener::bind("192.0.2.1:0")
            .await
            .expect_err("192.0.2.1 is not one of this machine's addresses");
        assert_eq!(e.kind(), ErrorKind::AddrNotAvailable, "{e}");
    }
}
