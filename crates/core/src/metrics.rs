//! Prometheus metrics (`prometheus-client`), one registry per process.
//! Front ends and the server record through the small functions here; the
//! admin endpoint encodes the registry. Names follow Prometheus
//! conventions: `postern_*_total` counters, `_seconds`, `_bytes_total`; a
//! `route` label wherever a route applies.

use std::sync::atomic::AtomicU64;
use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::session::{Closed, SessionEnd};
use crate::upstream::UpstreamError;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteKind {
    route: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabel {
    version: String,
}

type SecondsHistogram = Family<RouteLabel, Histogram, fn() -> Histogram>;

/// Every metric postern exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    sessions_active: Family<RouteLabel, Gauge>,
    sessions: Family<RouteKind, Counter>,
    session_seconds: SecondsHistogram,
    logins: Family<RouteKind, Counter>,
    upstream_failures: Family<RouteKind, Counter>,
    messages: Family<RouteKind, Counter>,
    bytes: Family<RouteKind, Counter>,
    refused: Family<RouteKind, Counter>,
    reloads: Family<ResultLabel, Counter>,
    last_reload: Gauge<f64, AtomicU64>,
    handshakes: Family<SideLabel, Histogram, fn() -> Histogram>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SideLabel {
    side: String,
}

fn handshake_histogram() -> Histogram {
    // 1 ms … ~4 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 13))
}

fn seconds_histogram() -> Histogram {
    // 10 ms … ~3 h.
    Histogram::new(exponential_buckets(0.01, 4.0, 11))
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("postern");
        let m = Self {
            sessions_active: Family::default(),
            sessions: Family::default(),
            session_seconds: Family::new_with_constructor(seconds_histogram),
            logins: Family::default(),
            upstream_failures: Family::default(),
            messages: Family::default(),
            bytes: Family::default(),
            refused: Family::default(),
            reloads: Family::default(),
            last_reload: Gauge::default(),
            handshakes: Family::new_with_constructor(handshake_histogram),
            registry: Registry::default(),
        };
        registry.register(
            "sessions_active",
            "Client sessions running now",
            m.sessions_active.clone(),
        );
        registry.register(
            "sessions",
            "Client sessions ended, by how they ended (kind: quit, client, upstream, refused, shutdown)",
            m.sessions.clone(),
        );
        registry.register(
            "session_duration_seconds",
            "How long client sessions lasted",
            m.session_seconds.clone(),
        );
        registry.register(
            "logins",
            "Login attempts by result (kind: accepted, refused_upstream, refused_locally, temporary)",
            m.logins.clone(),
        );
        registry.register(
            "upstream_failures",
            "Sessions that failed on the upstream side, by kind (resolve, connect, timeout, tls, insecure, closed, protocol, io)",
            m.upstream_failures.clone(),
        );
        registry.register(
            "messages",
            "Messages: SMTP relayed by the upstream's reply class (2xx, 4xx, 5xx) or not delivered (lost, refused); POP3 retrieved",
            m.messages.clone(),
        );
        registry.register(
            "relayed_bytes",
            "Message bytes relayed (kind: to_upstream for SMTP data, to_client for POP3 RETR/TOP)",
            m.bytes.clone(),
        );
        registry.register(
            "refused_connections",
            "Connections turned away before a session, by reason",
            m.refused.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration reloads by result (applied, refused)",
            m.reloads.clone(),
        );
        registry.register(
            "config_last_reload_success_timestamp_seconds",
            "When the configuration was last loaded or reloaded successfully (Unix time)",
            m.last_reload.clone(),
        );
        registry.register(
            "tls_handshake_duration_seconds",
            "TLS handshakes that completed, by side (client: postern's listeners; upstream: postern as a client)",
            m.handshakes.clone(),
        );
        let build: Family<BuildLabel, Gauge> = Family::default();
        build
            .get_or_create(&BuildLabel {
                version: env!("CARGO_PKG_VERSION").to_owned(),
            })
            .set(1);
        registry.register("build_info", "postern's version", build);
        Self { registry, ..m }
    }
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// The registry in the text exposition format.
pub fn encode() -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &metrics().registry);
    out
}

fn route(route: &str) -> RouteLabel {
    RouteLabel {
        route: route.to_owned(),
    }
}

fn kind(route: &str, kind: &str) -> RouteKind {
    RouteKind {
        route: route.to_owned(),
        kind: kind.to_owned(),
    }
}

/// A session started on `route`.
pub fn session_started(r: &str) {
    metrics().sessions_active.get_or_create(&route(r)).inc();
}

/// A session on `route` ended after `took`.
pub fn session_ended(r: &str, end: &SessionEnd, took: Duration) {
    let m = metrics();
    m.sessions_active.get_or_create(&route(r)).dec();
    m.session_seconds
        .get_or_create(&route(r))
        .observe(took.as_secs_f64());
    let outcome = match end {
        SessionEnd::Quit => "quit",
        SessionEnd::Upstream(e) => {
            m.upstream_failures
                .get_or_create(&kind(r, failure_kind(e)))
                .inc();
            "upstream"
        }
        SessionEnd::Closed(Closed::ShuttingDown) => "shutdown",
        SessionEnd::Closed(
            Closed::AddressBlocked
            | Closed::DeviceBackoff
            | Closed::DeviceRefused
            | Closed::EarlyTalker
            | Closed::HttpRequest
            | Closed::ProtocolViolation
            | Closed::TlsOnPlainPort
            | Closed::BytesAfterStartTls
            | Closed::BareLineEnding,
        ) => "refused",
        SessionEnd::Closed(_) => "client",
    };
    m.sessions.get_or_create(&kind(r, outcome)).inc();
}

fn failure_kind(e: &UpstreamError) -> &'static str {
    match e {
        UpstreamError::Resolve { .. } | UpstreamError::NoAddress(_) => "resolve",
        UpstreamError::Connect { .. } => "connect",
        UpstreamError::Timeout(_) => "timeout",
        UpstreamError::Tls(_) | UpstreamError::Upgrade(_) => "tls",
        UpstreamError::Insecure(_) => "insecure",
        UpstreamError::Closed(_) => "closed",
        UpstreamError::Protocol(_) | UpstreamError::Misbehaved(_) => "protocol",
        UpstreamError::Io(_) => "io",
    }
}

/// How a login attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginResult {
    /// Logged in upstream.
    Accepted,
    /// The upstream refused the credentials.
    RefusedUpstream,
    /// postern refused them itself (local accounts, blocks).
    RefusedLocally,
    /// Refused for now (4xx, stored account backing off).
    Temporary,
}

/// A login attempt on `route` ended.
pub fn login(r: &str, result: LoginResult) {
    let k = match result {
        LoginResult::Accepted => "accepted",
        LoginResult::RefusedUpstream => "refused_upstream",
        LoginResult::RefusedLocally => "refused_locally",
        LoginResult::Temporary => "temporary",
    };
    metrics().logins.get_or_create(&kind(r, k)).inc();
}

/// A message on `route` ended as `result` (`2xx`, `4xx`, `5xx`, `lost`,
/// `refused`, `retrieved`).
pub fn message(r: &str, result: &str) {
    metrics().messages.get_or_create(&kind(r, result)).inc();
}

/// Message bytes relayed on `route` in `direction` (`to_upstream`, `to_client`).
pub fn bytes(r: &str, direction: &str, n: u64) {
    metrics().bytes.get_or_create(&kind(r, direction)).inc_by(n);
}

/// A connection to `route` was turned away for `reason`.
pub fn refused(r: &str, reason: &str) {
    metrics().refused.get_or_create(&kind(r, reason)).inc();
}

/// A TLS handshake on `side` (`client` or `upstream`) completed in `took`.
pub fn tls_handshake(side: &str, took: Duration) {
    metrics()
        .handshakes
        .get_or_create(&SideLabel {
            side: side.to_owned(),
        })
        .observe(took.as_secs_f64());
}

/// A configuration was loaded (`applied`) or refused; `now` is Unix time.
pub fn reload(applied: bool, now_unix: f64) {
    let m = metrics();
    let result = if applied { "applied" } else { "refused" };
    m.reloads
        .get_or_create(&ResultLabel {
            result: result.to_owned(),
        })
        .inc();
    if applied {
        m.last_reload.set(now_unix);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_appear_in_the_text_format_with_their_labels() {
        let r = "metrics-unit-test";
        session_started(r);
        session_ended(r, &SessionEnd::Quit, Duration::from_millis(20));
        login(r, LoginResult::Accepted);
        bytes(r, "to_client", 1234);
        tls_handshake("upstream", Duration::from_millis(3));
        let text = encode();
        for want in [
            "postern_sessions_total{route=\"metrics-unit-test\",kind=\"quit\"} 1",
            "postern_logins_total{route=\"metrics-unit-test\",kind=\"accepted\"} 1",
            "postern_relayed_bytes_total{route=\"metrics-unit-test\",kind=\"to_client\"} 1234",
            "postern_sessions_active{route=\"metrics-unit-test\"} 0",
            "postern_build_info{version=",
            "postern_tls_handshake_duration_seconds_bucket{le=\"0.004\",side=\"upstream\"}",
        ] {
            assert!(text.contains(want), "{want:?} missing:\n{text}");
        }
    }
}
