//! The accept loop of a fake server: `127.0.0.1:0`, one task per
//! connection, all of them aborted when the [`Listener`] is dropped.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use super::link::Link;
use super::log::{EventLog, SessionEvent};
use super::{run_session, Protocol};

/// A bound, serving listener; stops (aborting live sessions) on drop.
pub(crate) struct Listener {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Dropping the accept loop drops its JoinSet, aborting every session.
        self.task.abort();
    }
}

impl Listener {
    /// Bind `127.0.0.1:0` and serve every connection with the session
    /// `open` makes of it. `what` names the fake in the bind panic.
    pub(crate) async fn start<P, F>(what: &str, log: EventLog<P::Event>, open: F) -> Self
    where
        P: Protocol + 'static,
        F: Fn(Link<P::Event>) -> P + Send + 'static,
    {
        let panics = log.clone();
        Self::bind(
            what,
            move |id, tcp| run_session(open(Link::new(log.clone(), id, tcp))),
            move |what| panics.push(usize::MAX, P::Event::panicked(what)),
        )
        .await
    }

    /// Bind `127.0.0.1:0` and run `serve(session number, socket)` in a task
    /// per connection; `on_panic` hears of a task that panicked. `what`
    /// names the fake in the bind panic.
    pub(crate) async fn bind<F, Fut>(
        what: &str,
        serve: F,
        on_panic: impl Fn(String) + Send + 'static,
    ) -> Self
    where
        F: Fn(usize, TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap_or_else(|e| panic!("bind {what} on loopback: {e}"));
        let addr = listener.local_addr().expect("local addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(accept_loop(
            listener,
            Arc::clone(&accepted),
            serve,
            on_panic,
        ));
        Self {
            addr,
            accepted,
            task,
        }
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub(crate) fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

async fn accept_loop<F, Fut>(
    listener: TcpListener,
    accepted: Arc<AtomicUsize>,
    serve: F,
    on_panic: impl Fn(String),
) where
    F: Fn(usize, TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            accept = listener.accept() => match accept {
                Ok((tcp, _peer)) => {
                    let id = accepted.fetch_add(1, Ordering::SeqCst);
                    sessions.spawn(serve(id, tcp));
                }
                // EMFILE and friends: back off briefly rather than spin.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(joined) = sessions.join_next(), if !sessions.is_empty() => {
                if let Err(e) = joined {
                    if e.is_panic() {
                        on_panic(e.to_string());
                    }
                }
            }
        }
    }
}
