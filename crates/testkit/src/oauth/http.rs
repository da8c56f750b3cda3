//! The fake IdP's HTTP side: one TLS connection served by hyper's HTTP/1.1
//! server, the request as the endpoints see it ([`Call`]), form decoding
//! (`application/x-www-form-urlencoded`) and the replies ([`Reply`]).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;

use base64::Engine as _;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::endpoints;
use super::events::IdpEvent;
use super::Shared;

/// Largest request body the fake reads.
const MAX_BODY: usize = 64 * 1024;

/// Form parameters, each at most once (RFC 6749 §3.1).
pub(super) type Form = BTreeMap<String, String>;

/// One request, read whole.
pub(super) struct Call {
    pub(super) method: hyper::Method,
    pub(super) path: String,
    pub(super) query: Option<String>,
    pub(super) content_type: Option<String>,
    /// The `Authorization` header, if any.
    pub(super) authorization: Option<String>,
    pub(super) body: Bytes,
}

impl Call {
    /// `Authorization: Basic` credentials: `None` without the header (or
    /// with another scheme), `Some(None)` if they do not decode. RFC 6749
    /// §2.3.1: id and secret are form-encoded before base64.
    pub(super) fn basic(&self) -> Option<Option<(String, String)>> {
        let value = self.authorization.as_deref()?;
        let (scheme, rest) = value.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("Basic") {
            return None;
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()
            .and_then(|d| String::from_utf8(d).ok());
        Some(decoded.and_then(|d| {
            let (id, secret) = d.split_once(':')?;
            Some((form_decode(id)?, form_decode(secret)?))
        }))
    }

    /// The token of an `Authorization: Bearer` header.
    pub(super) fn bearer(&self) -> Option<&str> {
        let (scheme, rest) = self.authorization.as_deref()?.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("Bearer")
            .then(|| rest.trim())
            .filter(|t| !t.is_empty())
    }

    /// Whether the body is declared form-encoded.
    pub(super) fn is_form(&self) -> bool {
        self.content_type.as_deref().is_some_and(|ct| {
            ct.split(';').next().is_some_and(|m| {
                m.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            })
        })
    }
}

/// What an endpoint answers.
pub(super) struct Reply {
    pub(super) status: u16,
    pub(super) content_type: &'static str,
    pub(super) body: String,
    /// Add `WWW-Authenticate: Basic` (a 401 to a client that used Basic).
    pub(super) www_authenticate: bool,
    /// Add `Allow` (a 405).
    pub(super) allow: Option<&'static str>,
}

impl Reply {
    pub(super) fn json(status: u16, value: &serde_json::Value) -> Self {
        Self {
            status,
            content_type: "application/json",
            body: value.to_string(),
            www_authenticate: false,
            allow: None,
        }
    }

    pub(super) fn text(status: u16, body: &str) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.to_owned(),
            www_authenticate: false,
            allow: None,
        }
    }

    /// RFC 6749 §5.2: `{"error": .., "error_description": ..}`.
    pub(super) fn error(status: u16, error: &str, description: &str) -> Self {
        Self::json(
            status,
            &serde_json::json!({ "error": error, "error_description": description }),
        )
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(Bytes::from(self.body)));
        *response.status_mut() =
            StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(self.content_type),
        );
        // RFC 6749 §5.1: token responses are not cached.
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        if self.www_authenticate {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"fake-idp\""),
            );
        }
        if let Some(allow) = self.allow {
            headers.insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        response
    }
}

/// One accepted connection: TLS, then HTTP/1.1 until the client closes.
pub(super) async fn connection(
    shared: Arc<Shared>,
    acceptor: TlsAcceptor,
    id: usize,
    tcp: TcpStream,
) {
    let log = shared.log.clone();
    log.push(id, IdpEvent::Connected);
    match acceptor.accept(tcp).await {
        Ok(tls) => {
            log.push(id, IdpEvent::TlsEstablished);
            let service = service_fn(move |request| {
                let shared = Arc::clone(&shared);
                async move { Ok::<_, Infallible>(answer(&shared, id, request).await) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .await
            {
                if e.is_parse() || e.is_parse_too_large() {
                    log.push(id, IdpEvent::ClientViolation(format!("HTTP: {e}")));
                }
            }
        }
        Err(e) => log.push(id, IdpEvent::TlsFailed(e.to_string())),
    }
    log.push(id, IdpEvent::Closed);
}

async fn answer(shared: &Shared, id: usize, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    shared
        .log
        .push(id, IdpEvent::Command(format!("{} {path}", parts.method)));
    let header = |name: header::HeaderName| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            shared.log.push(
                id,
                IdpEvent::ClientViolation(format!("request body not read: {e}")),
            );
            return Reply::text(413, "request body too large or broken").into_response();
        }
    };
    let call = Call {
        method: parts.method.clone(),
        query: parts.uri.query().map(str::to_owned),
        content_type: header(header::CONTENT_TYPE),
        authorization: header(header::AUTHORIZATION),
        path,
        body,
    };
    let delay = shared.lock().script.response_delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    endpoints::route(shared, id, &call).into_response()
}

/// Decode an `application/x-www-form-urlencoded` string; `Err(why)` on a
/// bad `%` escape, non-UTF-8 content or a repeated name (RFC 6749 §3.1).
pub(super) fn parse_form(encoded: &str) -> Result<Form, String> {
    let mut form = Form::new();
    for pair in encoded.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let (Some(name), Some(value)) = (form_decode(name), form_decode(value)) else {
            return Err(format!("form field {name:?} is not form-encoded UTF-8"));
        };
        if form.contains_key(&name) {
            return Err(format!("parameter {name:?} given more than once"));
        }
        form.insert(name, value);
    }
    Ok(form)
}

/// `+` is a space, `%XX` a byte; the bytes must be UTF-8.
fn form_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let form = parse_form("a=1&b=two+words&c=%2F%3D%26&empty=&flag").expect("valid");
        assert_eq!(form["a"], "1");
        assert_eq!(form["b"], "two words");
        assert_eq!(form["c"], "/=&");
        assert_eq!(form["empty"], "");
        assert_eq!(form["flag"], "");
        assert!(parse_form("a=1&a=2")
            .expect_err("repeated name")
            .contains("more than once"));
        assert!(parse_form("a=%zz").is_err());
        assert!(parse_form("a=%C3").is_err());
        assert!(parse_form("a=%").is_err());
        assert_eq!(parse_form("").expect("empty").len(), 0);
        assert_eq!(form_decode("%C3%A9t%C3%A9").as_deref(), Some("été"));
    }

    fn call(authorization: Option<&str>, content_type: Option<&str>) -> Call {
        Call {
            method: hyper::Method::POST,
            path: "/token".to_owned(),
            query: None,
            content_type: content_type.map(str::to_owned),
            authorization: authorization.map(str::to_owned),
            body: Bytes::new(),
        }
    }

    #[test]
    fn authorization_headers() {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let c = call(Some(&format!("Basic {}", b64("app:s%3Acret+x"))), None);
        assert_eq!(
            c.basic(),
            Some(Some(("app".to_owned(), "s:cret x".to_owned())))
        );
        assert_eq!(call(Some("Basic !!"), None).basic(), Some(None));
        assert_eq!(
            call(Some(&format!("Basic {}", b64("nocolon"))), None).basic(),
            Some(None)
        );
        assert_eq!(call(Some("Bearer abc"), None).basic(), None);
        assert_eq!(call(Some("Bearer abc"), None).bearer(), Some("abc"));
        assert_eq!(call(None, None).basic(), None);
        assert!(call(
            None,
            Some("application/x-www-form-urlencoded; charset=UTF-8")
        )
        .is_form());
        assert!(call(None, Some("Application/X-WWW-Form-Urlencoded")).is_form());
        assert!(!call(None, Some("application/json")).is_form());
        assert!(!call(None, None).is_form());
    }
}
