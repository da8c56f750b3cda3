//! `postern health`: is the gateway on this machine serving? With an admin
//! endpoint, its `/healthz`; without one, a TCP connection to every route's
//! listener. Blocking I/O with short deadlines: it runs as a container
//! `HEALTHCHECK` or a monitoring probe, not inside the gateway.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

use postern_core::config::Config;

/// Where to reach a listener bound to `addr` from this machine: an
/// unspecified address (`0.0.0.0`, `[::]`) is reached on loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

/// `Ok` with what was checked, or why the gateway is not healthy.
pub fn check(config: &Config, timeout: Duration) -> Result<String, String> {
    match &config.admin {
        Some(admin) => healthz(reachable(admin.listen), timeout),
        None => listeners(config, timeout),
    }
}

fn healthz(addr: SocketAddr, timeout: Duration) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("admin endpoint {addr}: {e}"))?;
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: postern\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("admin endpoint {addr}: {e}"))?;
    let mut head = [0u8; 64];
    let n = s
        .read(&mut head)
        .map_err(|e| format!("admin endpoint {addr}: {e}"))?;
    let status = String::from_utf8_lossy(&head[..n]);
    let code = status.split(' ').nth(1).unwrap_or("");
    if code == "200" {
        Ok(format!("{addr}/healthz answered 200"))
    } else {
        Err(format!(
            "{addr}/healthz answered {:?}",
            status.lines().next().unwrap_or("")
        ))
    }
}

fn listeners(config: &Config, timeout: Duration) -> Result<String, String> {
    let mut down = Vec::new();
    for route in &config.routes {
        let addr = reachable(route.listen.address());
        if addr.port() == 0 {
            continue;
        }
        if let Err(e) = TcpStream::connect_timeout(&addr, timeout) {
            down.push(format!("route {:?} ({addr}): {e}", route.name));
        }
    }
    if down.is_empty() {
        Ok(format!(
            "{} listener(s) accept connections",
            config.routes.len()
        ))
    } else {
        Err(down.join("; "))
    }
}
