//! Upstream TLS session resumption sized for a gateway.
//!
//! rustls' default client store keeps at most 8 TLS 1.3 tickets per
//! server. A ticket is single-use, so when more than 8 sessions of one
//! route connect at once, the rest make full handshakes: a signature
//! each on the provider's side, and the upstream becomes the bottleneck
//! (the performance issue measured 44 % resumption at 128 clients). This
//! store keeps up to [`TICKETS_PER_SERVER`] tickets per server name (the
//! servers send one or two per handshake, so the pool grows to the
//! route's concurrency), and TLS 1.2 session ids as rustls does. Each
//! route's client configuration has its own store, so a session never
//! resumes across routes with different trust settings.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use rustls::client::{ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue};
use rustls::pki_types::ServerName;
use rustls::NamedGroup;

/// TLS 1.3 tickets kept per server name (oldest dropped first).
pub const TICKETS_PER_SERVER: usize = 512;
/// Server names remembered per route (a route has one, unless it is
/// reloaded with another; the least recently used is forgotten).
const SERVERS: usize = 8;

#[derive(Debug, Default)]
struct Entry {
    kx_hint: Option<NamedGroup>,
    tls12: Option<Tls12ClientSessionValue>,
    tls13: VecDeque<Tls13ClientSessionValue>,
    used: u64,
}

#[derive(Debug, Default)]
struct Inner {
    servers: HashMap<ServerName<'static>, Entry>,
    clock: u64,
}

/// A route's resumption store (see the module docs).
#[derive(Debug)]
pub struct TicketStore {
    per_server: usize,
    inner: Mutex<Inner>,
}

impl TicketStore {
    /// A store keeping `per_server` TLS 1.3 tickets per server name.
    pub fn new(per_server: usize) -> Self {
        Self {
            per_server: per_server.max(1),
            inner: Mutex::new(Inner::default()),
        }
    }

    fn with<T>(&self, name: &ServerName<'_>, f: impl FnOnce(&mut Entry) -> T) -> Option<T> {
        let mut inner = self.inner.lock().ok()?;
        inner.clock += 1;
        let now = inner.clock;
        let entry = inner.servers.get_mut(&name.to_owned())?;
        entry.used = now;
        Some(f(entry))
    }

    fn with_new<T>(&self, name: ServerName<'static>, f: impl FnOnce(&mut Entry) -> T) -> T {
        let Ok(mut inner) = self.inner.lock() else {
            return f(&mut Entry::default());
        };
        inner.clock += 1;
        let now = inner.clock;
        if !inner.servers.contains_key(&name) && inner.servers.len() >= SERVERS {
            if let Some(oldest) = inner
                .servers
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone())
            {
                inner.servers.remove(&oldest);
            }
        }
        let entry = inner.servers.entry(name).or_default();
        entry.used = now;
        f(entry)
    }
}

impl ClientSessionStore for TicketStore {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.with_new(server_name, |e| e.kx_hint = Some(group));
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.with(server_name, |e| e.kx_hint).flatten()
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.with_new(server_name, |e| e.tls12 = Some(value));
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.with(server_name, |e| e.tls12.clone()).flatten()
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.with(server_name, |e| e.tls12 = None);
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        let cap = self.per_server;
        self.with_new(server_name, |e| {
            if e.tls13.len() >= cap {
                e.tls13.pop_front();
            }
            e.tls13.push_back(value);
        });
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        // Newest first: the freshest ticket is the least likely to have
        // expired on the server.
        self.with(server_name, |e| e.tls13.pop_back()).flatten()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use postern_testkit::TestPki;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// `rounds` waves of `wave` concurrent TLS 1.3 connections from one
    /// client config to a rustls server that sends two tickets per
    /// handshake; the number of resumed handshakes in the last wave.
    async fn resumed_in_last_wave(store: Option<Arc<TicketStore>>, wave: usize) -> usize {
        let pki = TestPki::new();
        let mut server = (*pki.server_config()).clone();
        server.ticketer = rustls::crypto::ring::Ticketer::new().expect("ticketer");
        server.send_tls13_tickets = 2;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let mut client = (*pki.client_config()).clone();
        if let Some(store) = store {
            client.resumption = rustls::client::Resumption::store(store);
        }
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server_task = tokio::spawn(async move {
            let mut resumed = Vec::new();
            for _ in 0..3 * wave {
                let (tcp, _) = listener.accept().await.expect("accept");
                let acceptor = acceptor.clone();
                resumed.push(tokio::spawn(async move {
                    let mut tls = acceptor.accept(tcp).await.expect("handshake");
                    let kind = tls.get_ref().1.handshake_kind();
                    // Let the tickets reach the client, then close.
                    tls.write_all(b"x").await.expect("write");
                    let mut b = [0u8; 1];
                    let _ = tls.read(&mut b).await;
                    kind == Some(rustls::HandshakeKind::Resumed)
                }));
            }
            let mut out = Vec::new();
            for r in resumed {
                out.push(r.await.expect("server task"));
            }
            out
        });
        let name = ServerName::try_from("localhost").expect("name");
        for _ in 0..3 {
            let mut clients = Vec::new();
            for _ in 0..wave {
                let connector = connector.clone();
                let name = name.clone();
                clients.push(tokio::spawn(async move {
                    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
                    let mut tls = connector
                        .connect(name, tcp)
                        .await
                        .expect("client handshake");
                    let mut b = [0u8; 1];
                    tls.read_exact(&mut b).await.expect("read");
                    tls.shutdown().await.expect("close");
                }));
            }
            for c in clients {
                c.await.expect("client task");
            }
        }
        let kinds = server_task.await.expect("server");
        kinds[2 * wave..].iter().filter(|r| **r).count()
    }

    #[tokio::test]
    async fn a_wave_of_concurrent_sessions_resumes_where_the_default_store_cannot() {
        let wave = 48;
        let default = resumed_in_last_wave(None, wave).await;
        let ours =
            resumed_in_last_wave(Some(Arc::new(TicketStore::new(TICKETS_PER_SERVER))), wave).await;
        assert!(
            default <= 8,
            "the default store resumed {default} of {wave}"
        );
        assert!(
            ours >= wave * 9 / 10,
            "postern's store resumed only {ours} of {wave}"
        );
    }

    #[test]
    fn tickets_are_bounded_per_server_and_servers_per_store() {
        let store = TicketStore::new(3);
        let names: Vec<ServerName<'static>> = (0..SERVERS + 2)
            .map(|i| ServerName::try_from(format!("s{i}.example")).expect("name"))
            .collect();
        for n in &names {
            store.set_kx_hint(n.clone(), NamedGroup::X25519);
        }
        let inner = store.inner.lock().expect("lock");
        assert_eq!(inner.servers.len(), SERVERS);
        assert!(
            !inner.servers.contains_key(&names[0]),
            "the least recently used is forgotten"
        );
    }
}
