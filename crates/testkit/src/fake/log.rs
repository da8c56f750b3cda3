//! The event log every fake server keeps: one list for all its sessions,
//! appended by the session tasks, read and waited on by the test.
//!
//! [`EventLog`] is generic over the fake's event enum through [`Event`]
//! (how an event is stored, which one closes a connection, which are
//! commands); [`SessionEvent`] adds the events the line-protocol plumbing
//! records itself (connect, TLS, violations, panics). [`fake_event!`]
//! implements both for an event enum with the usual variant names; the
//! fake IdP, which speaks HTTP, implements only [`Event`]. [`event_log_api!`] writes the
//! public reading/waiting methods onto a fake, so `FakePop3` and
//! `FakeSmtp` offer the same ones with the same documentation.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// A fake's event enum, as the event log sees it.
pub(crate) trait Event: Clone + PartialEq + fmt::Debug + Send + Sync + 'static {
    /// The public "event with its session number" struct.
    type Logged: Clone + fmt::Debug + Send + Sync + 'static;

    /// Names the fake in panic messages, e.g. `"fake POP3"`.
    const FAKE: &'static str;

    fn logged(session: usize, event: Self) -> Self::Logged;
    fn of(logged: &Self::Logged) -> &Self;

    /// The connection's socket is closed.
    fn closed() -> Self;
    /// The command line, if this is a command event.
    fn command(&self) -> Option<&str>;
}

/// The events the line-protocol plumbing ([`super::Link`],
/// [`super::run_session`], the accept loop) records itself.
pub(crate) trait SessionEvent: Event {
    /// A TCP connection was accepted.
    fn connected() -> Self;
    /// A TLS handshake completed.
    fn tls_established() -> Self;
    /// A TLS handshake failed; the rustls error text.
    fn tls_failed(error: String) -> Self;
    /// The client broke the protocol.
    fn violation(what: String) -> Self;
    /// The session ended without QUIT.
    fn closed_without_quit() -> Self;
    /// A session task panicked.
    fn panicked(what: String) -> Self;
}

/// Every event of one fake server, all sessions, in order. Cloning shares
/// the log.
pub(crate) struct EventLog<E: Event> {
    // A watch channel is a mutex-guarded value plus change notification,
    // which is what `wait_until` needs.
    tx: Arc<watch::Sender<Vec<E::Logged>>>,
}

impl<E: Event> Clone for EventLog<E> {
    fn clone(&self) -> Self {
        Self {
            tx: Arc::clone(&self.tx),
        }
    }
}

impl<E: Event> EventLog<E> {
    pub(crate) fn new() -> Self {
        let (tx, _) = watch::channel(Vec::new());
        Self { tx: Arc::new(tx) }
    }

    /// Append `event` for `session` and wake the waiters.
    pub(crate) fn push(&self, session: usize, event: E) {
        self.tx
            .send_modify(|log| log.push(E::logged(session, event)));
    }

    pub(crate) fn len(&self) -> usize {
        self.tx.borrow().len()
    }

    /// Every entry so far, with session numbers.
    pub(crate) fn snapshot(&self) -> Vec<E::Logged> {
        self.tx.borrow().clone()
    }

    /// Every event so far.
    pub(crate) fn events(&self) -> Vec<E> {
        self.tx.borrow().iter().map(|e| E::of(e).clone()).collect()
    }

    /// Only the command lines.
    pub(crate) fn commands(&self) -> Vec<String> {
        self.tx
            .borrow()
            .iter()
            .filter_map(|e| E::of(e).command().map(str::to_owned))
            .collect()
    }

    /// Wait until `pred` holds over the whole log; `false` on timeout.
    pub(crate) async fn wait_until(
        &self,
        mut pred: impl FnMut(&[E::Logged]) -> bool,
        timeout: Duration,
    ) -> bool {
        let mut rx = self.tx.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if pred(&rx.borrow_and_update()) {
                return true;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                // The sender lives in `self`, so it cannot be dropped here;
                // a timeout is the only way out.
                Ok(Err(_)) | Err(_) => return pred(&rx.borrow()),
            }
        }
    }

    /// The first event matching `pred`, waiting for it if need be; `None`
    /// on timeout.
    pub(crate) async fn wait_for(&self, pred: impl Fn(&E) -> bool, timeout: Duration) -> Option<E> {
        let mut found = None;
        let ok = self
            .wait_until(
                |log| {
                    found = log.iter().map(E::of).find(|e| pred(e)).cloned();
                    found.is_some()
                },
                timeout,
            )
            .await;
        if ok {
            found
        } else {
            None
        }
    }

    /// Like [`EventLog::wait_for`] but panics with the whole log on timeout.
    pub(crate) async fn expect(
        &self,
        what: &str,
        pred: impl Fn(&E) -> bool,
        timeout: Duration,
    ) -> E {
        match self.wait_for(pred, timeout).await {
            Some(e) => e,
            None => panic!(
                "{}: no {what} within {timeout:?}; log: {:#?}",
                E::FAKE,
                self.snapshot()
            ),
        }
    }

    /// Wait until at least `n` sessions have closed in total.
    pub(crate) async fn wait_closed(&self, n: usize, timeout: Duration) -> bool {
        let closed = E::closed();
        self.wait_until(
            |log| log.iter().filter(|e| *E::of(e) == closed).count() >= n,
            timeout,
        )
        .await
    }
}

/// `impl Event` and `impl SessionEvent` for `$event`, where `$event` has the variants every fake
/// logs (`Connected`, `TlsEstablished`, `TlsFailed(String)`,
/// `Command(String)`, `ClientViolation(String)`, `ClosedWithoutQuit`,
/// `Closed`, `SessionPanicked(String)`) and `$logged` is
/// `{ session: usize, event: $event }`. `$fake` names the fake in panics.
macro_rules! fake_event {
    ($event:ident, $logged:ident, $fake:literal) => {
        impl $crate::fake::Event for $event {
            type Logged = $logged;

            const FAKE: &'static str = $fake;

            fn logged(session: usize, event: Self) -> $logged {
                $logged { session, event }
            }

            fn of(logged: &$logged) -> &Self {
                &logged.event
            }

            fn closed() -> Self {
                Self::Closed
            }

            fn command(&self) -> Option<&str> {
                match self {
                    Self::Command(line) => Some(line),
                    _ => None,
                }
            }
        }

        impl $crate::fake::SessionEvent for $event {
            fn connected() -> Self {
                Self::Connected
            }

            fn tls_established() -> Self {
                Self::TlsEstablished
            }

            fn tls_failed(error: String) -> Self {
                Self::TlsFailed(error)
            }

            fn violation(what: String) -> Self {
                Self::ClientViolation(what)
            }

            fn closed_without_quit() -> Self {
                Self::ClosedWithoutQuit
            }

            fn panicked(what: String) -> Self {
                Self::SessionPanicked(what)
            }
        }
    };
}
pub(crate) use fake_event;

/// The public log-reading methods of a fake: `$event` is its event enum,
/// `$logged` the event-with-session struct. The fake needs fields
/// `log: EventLog<$event>` and `server: Listener`.
macro_rules! event_log_api {
    ($event:ident, $logged:ident) => {
        /// Every event so far, all sessions, in order.
        pub fn events(&self) -> Vec<$event> {
            self.log.events()
        }

        /// Every event so far with its session number.
        pub fn logged_events(&self) -> Vec<$logged> {
            self.log.snapshot()
        }

        #[doc = concat!("Only the [`", stringify!($event), "::Command`] lines, in order.")]
        pub fn commands(&self) -> Vec<String> {
            self.log.commands()
        }

        /// Number of connections accepted so far.
        pub fn connections(&self) -> usize {
            self.server.connections()
        }

        /// Wait until an event matching `pred` has been logged (it may already
        /// have been) and return the first such; `None` on timeout.
        pub async fn wait_for(
            &self,
            pred: impl Fn(&$event) -> bool,
            timeout: std::time::Duration,
        ) -> Option<$event> {
            self.log.wait_for(pred, timeout).await
        }

        /// Like [`Self::wait_for`] but panics with the whole log on timeout.
        pub async fn expect_event(
            &self,
            what: &str,
            pred: impl Fn(&$event) -> bool,
            timeout: std::time::Duration,
        ) -> $event {
            self.log.expect(what, pred, timeout).await
        }

        /// Wait until `pred` holds over the whole log; `false` on timeout.
        /// E.g. "two sessions closed": `|log| log.iter().filter(|e| e.event ==
        #[doc = concat!(stringify!($event), "::Closed).count() == 2`.")]
        pub async fn wait_until(
            &self,
            pred: impl FnMut(&[$logged]) -> bool,
            timeout: std::time::Duration,
        ) -> bool {
            self.log.wait_until(pred, timeout).await
        }

        #[doc = concat!("Wait until at least `n` [`", stringify!($event), "::Closed`] events")]
        /// (i.e. `n` finished sessions) have been logged in total; `false` on
        /// timeout.
        pub async fn wait_closed(&self, n: usize, timeout: std::time::Duration) -> bool {
            self.log.wait_closed(n, timeout).await
        }
    };
}
pub(crate) use event_log_api;
