//! Drive `FakeIdp` over real HTTPS (rustls, trusting the test CA) with a
//! minimal HTTP/1.1 client. The tests are grouped in `device`, `token`,
//! `introspect` and `wiring`; this file holds the client and what they
//! share.
#![allow(clippy::unwrap_used)]

mod device;
mod introspect;
mod token;
mod wiring;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use postern_testkit::{
    ClientAuth, DeviceOutcome, FakeIdp, GrantType, IdpClient, IdpEvent, IdpScript,
    RefreshTokenState, TestPki, DEFAULT_CLIENT_ID, DEVICE_CODE_GRANT,
};
use rustls_pki_types::ServerName;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// How long a test waits for a response.
const WAIT: Duration = Duration::from_secs(5);

/// One HTTP response, read whole.
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{self:?}"
        );
        serde_json::from_slice(&self.body).unwrap()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// An RFC 6749 §5.2 error: `(status, error)`.
    fn error(&self) -> (u16, String) {
        let json = self.json();
        assert!(json["error_description"].is_string(), "{json}");
        (self.status, json["error"].as_str().unwrap().to_owned())
    }
}

/// A one-request-per-connection HTTPS client, trusting the test CA.
struct Https {
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    name: String,
}

impl Https {
    fn new(idp: &FakeIdp, pki: &TestPki) -> Self {
        let mut config = (*pki.client_config()).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self {
            addr: idp.addr(),
            config: Arc::new(config),
            name: "127.0.0.1".to_owned(),
        }
    }

    async fn request(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> io::Result<Resp> {
        let tcp = TcpStream::connect(self.addr).await?;
        let name = ServerName::try_from(self.name.clone())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let mut tls = TlsConnector::from(Arc::clone(&self.config))
            .connect(name, tcp)
            .await?;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        let mut head = format!(
            "{method} {target} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        tls.write_all(head.as_bytes()).await?;
        tls.write_all(body.as_bytes()).await?;
        tls.flush().await?;
        let mut raw = Vec::new();
        let read = tokio::time::timeout(WAIT, async {
            loop {
                if let Some(resp) = parse_response(&raw) {
                    return Ok(resp);
                }
                let mut chunk = [0u8; 16 * 1024];
                let n = tls.read(&mut chunk).await?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("EOF after {} bytes", raw.len()),
                    ));
                }
                raw.extend_from_slice(&chunk[..n]);
            }
        })
        .await;
        read.map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "response timed out"))?
    }

    /// POST a form (already encoded) to `path`.
    async fn post_form(&self, path: &str, headers: &[(&str, &str)], form: &str) -> Resp {
        let mut all = vec![("Content-Type", "application/x-www-form-urlencoded")];
        all.extend_from_slice(headers);
        self.request("POST", path, &all, form).await.unwrap()
    }

    /// POST `form` to `/token`.
    async fn token(&self, form: &str) -> Resp {
        self.post_form("/token", &[], form).await
    }

    /// POST `form` to `/token` with HTTP Basic client credentials.
    async fn token_basic(&self, id: &str, secret: &str, form: &str) -> Resp {
        let basic = basic(id, secret);
        self.post_form("/token", &[("Authorization", &basic)], form)
            .await
    }
}

fn basic(id: &str, secret: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
    format!("Basic {encoded}")
}

/// A complete response in `raw` (Content-Length framed), if there is one.
fn parse_response(raw: &[u8]) -> Option<Resp> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).unwrap();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_owned(), v.trim().to_owned())
        })
        .collect();
    let len: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse().unwrap())
        .expect("the fake sends Content-Length");
    let body = raw.get(end + 4..end + 4 + len)?.to_vec();
    Some(Resp {
        status,
        headers,
        body,
    })
}

/// Percent-encode a form value.
fn enc(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A fake IdP with `script` and a client for it.
async fn start(script: IdpScript) -> (FakeIdp, Https, TestPki) {
    let pki = TestPki::new();
    let idp = FakeIdp::start(pki.server_config(), script).await;
    let https = Https::new(&idp, &pki);
    (idp, https, pki)
}

/// Ask for a device code as the default public client; returns the JSON.
async fn device_code(https: &Https, scope: &str) -> Value {
    let resp = https
        .post_form(
            "/devicecode",
            &[],
            &format!("client_id={DEFAULT_CLIENT_ID}&scope={}", enc(scope)),
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    resp.json()
}

/// Poll the token endpoint once for `device_code` as the default client.
async fn poll(https: &Https, device_code: &str) -> Resp {
    https
        .token(&format!(
            "grant_type={}&client_id={DEFAULT_CLIENT_ID}&device_code={}",
            enc(DEVICE_CODE_GRANT),
            enc(device_code)
        ))
        .await
}

/// Refresh with `refresh_token` as the default client.
async fn refresh(https: &Https, refresh_token: &str) -> Resp {
    https
        .token(&format!(
            "grant_type=refresh_token&client_id={DEFAULT_CLIENT_ID}&refresh_token={}",
            enc(refresh_token)
        ))
        .await
}

fn violations(idp: &FakeIdp) -> Vec<String> {
    idp.events()
        .into_iter()
        .filter_map(|e| match e {
            IdpEvent::ClientViolation(v) => Some(v),
            _ => None,
        })
        .collect()
}

fn no_violations(idp: &FakeIdp) {
    let v = violations(idp);
    assert!(v.is_empty(), "{v:?}");
    assert!(
        !idp.events()
            .iter()
            .any(|e| matches!(e, IdpEvent::SessionPanicked(_))),
        "{:?}",
        idp.events()
    );
}

/// The `error` of every device poll, in order.
fn poll_answers(idp: &FakeIdp) -> Vec<String> {
    idp.events()
        .into_iter()
        .filter_map(|e| match e {
            IdpEvent::DevicePoll { answer, .. } => Some(answer),
            _ => None,
        })
        .collect()
}
