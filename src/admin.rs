//! The admin endpoint (`admin: { listen: 127.0.0.1:9725 }`, off unless
//! configured): `GET /healthz` (200 while every listener is serving),
//! `GET /readyz` (200 while new sessions are taken; 503 once shutdown
//! began), `GET /metrics` (Prometheus/OpenMetrics text). HTTP/1.1 by
//! hyper; the allow-list is checked before a byte is read.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use postern_core::acl::Acl;
use postern_core::config::AdminConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::Gateway;

/// How long one admin connection may take (a scrape is one request).
const CONNECTION_DEADLINE: Duration = Duration::from_secs(10);

/// The bound admin endpoint.
#[derive(Debug)]
pub struct Admin {
    listener: TcpListener,
    acl: Acl,
}

impl Admin {
    /// Binds the endpoint now, so a busy address fails start-up.
    pub async fn bind(config: &AdminConfig) -> std::io::Result<Self> {
        Ok(Self {
            listener: TcpListener::bind(config.listen).await?,
            acl: Acl::new(config.allow_list()),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `stop`.
    pub async fn serve(self, gateway: Gateway, stop: CancellationToken) {
        loop {
            let (stream, peer) = tokio::select! {
                _ = stop.cancelled() => return,
                r = self.listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin endpoint: accept failed");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                },
            };
            if !self.acl.allows(peer.ip()) {
                tracing::warn!(client = %peer, "admin endpoint: refused (not in admin.allow)");
                continue;
            }
            let gateway = gateway.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let answer = answer(&gateway, &req);
                    async move { Ok::<_, Infallible>(answer) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                let _ = tokio::time::timeout(CONNECTION_DEADLINE, conn).await;
            });
        }
    }
}

fn answer(gateway: &Gateway, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: &str| {
        respond(status, "text/plain; charset=utf-8", body.to_owned())
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match req.uri().path() {
        "/healthz" if gateway.healthy() => text(StatusCode::OK, "ok\n"),
        "/healthz" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "a listener is not serving\n",
        ),
        "/readyz" if gateway.ready() => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not taking new sessions\n"),
        "/metrics" => respond(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            postern_core::metrics::encode(),
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "postern admin endpoint: /healthz /readyz /metrics\n",
        ),
    }
}

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}
