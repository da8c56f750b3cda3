//! Values inside the configuration: durations, `host:port`, and the
//! `timeouts:` and `limits:` maps with how they layer.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::de::{self, Deserializer};
use serde::Deserialize;

/// `timeouts:` (top level or per route); durations like `30s`, `5m`, `500ms`.
#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsConfig {
    /// Resolving and connecting to the upstream.
    pub connect: Option<Dur>,
    /// TLS handshakes, both sides.
    pub tls_handshake: Option<Dur>,
    /// Each upstream reply.
    pub upstream_reply: Option<Dur>,
    /// A client command before login.
    pub client_login: Option<Dur>,
    /// A client command after login (POP3: RFC 1939 asks for at least 10 minutes).
    pub client_idle: Option<Dur>,
    /// SMTP: the next block of message data.
    pub data_block: Option<Dur>,
    /// SMTP: the upstream's reply to the end of data (keep it under the client's 10 minutes).
    pub final_reply: Option<Dur>,
    /// Writing to a peer that does not read (a slow reader is dropped, not buffered for).
    pub write: Option<Dur>,
    /// Everything before login in total; commands do not extend it.
    pub login_total: Option<Dur>,
    /// SMTP: one message's data in total.
    pub data_total: Option<Dur>,
}

impl TimeoutsConfig {
    /// Applies these settings (then `route`'s) over protocol defaults.
    pub fn resolve(
        &self,
        route: &TimeoutsConfig,
        mut base: crate::limits::Timeouts,
    ) -> crate::limits::Timeouts {
        for c in [self, route] {
            let set = |slot: &mut std::time::Duration, v: Option<Dur>| {
                if let Some(d) = v {
                    *slot = d.0;
                }
            };
            set(&mut base.connect, c.connect);
            set(&mut base.tls_handshake, c.tls_handshake);
            set(&mut base.upstream_reply, c.upstream_reply);
            set(&mut base.client_login, c.client_login);
            set(&mut base.client_idle, c.client_idle);
            set(&mut base.data_block, c.data_block);
            set(&mut base.final_reply, c.final_reply);
            set(&mut base.write, c.write);
            set(&mut base.login_total, c.login_total);
            set(&mut base.data_total, c.data_total);
        }
        base
    }
}

/// `limits:` (top level or per route).
#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// SMTP: the largest message in bytes.
    pub message_size: Option<u64>,
    /// SMTP: recipients per message.
    pub max_recipients: Option<u32>,
    /// Sessions at once on a route.
    pub sessions: Option<usize>,
    /// Sessions at once from one client address on a route.
    pub sessions_per_client: Option<usize>,
    /// Sessions at once across all routes (top level only).
    pub total_sessions: Option<usize>,
    /// SMTP: the slowest average rate of message data, bytes per second (0: no minimum).
    pub data_min_rate: Option<u64>,
}

impl LimitsConfig {
    /// Applies these settings (then `route`'s) over the defaults.
    pub fn resolve(&self, route: &LimitsConfig) -> crate::limits::Limits {
        let mut l = crate::limits::Limits::DEFAULT;
        for c in [self, route] {
            if let Some(v) = c.message_size {
                l.message_size = v;
            }
            if let Some(v) = c.max_recipients {
                l.max_recipients = v;
            }
            if let Some(v) = c.sessions {
                l.sessions = v;
            }
            if let Some(v) = c.sessions_per_client {
                l.sessions_per_client = v;
            }
            if let Some(v) = c.total_sessions {
                l.total_sessions = v;
            }
            if let Some(v) = c.data_min_rate {
                l.data_min_rate = v;
            }
        }
        l
    }
}

/// A duration written as `<number><unit>` with unit `ms`, `s`, `m` or `h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub std::time::Duration);

impl FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("`{s}` is not a duration; write a number and a unit, like 500ms, 30s, 5m or 1h")
        };
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (n, unit) = t.split_at(split);
        let n: u64 = n.parse().map_err(|_| bad())?;
        let d = match unit {
            "ms" => std::time::Duration::from_millis(n),
            "s" => std::time::Duration::from_secs(n),
            "m" => std::time::Duration::from_secs(n.saturating_mul(60)),
            "h" => std::time::Duration::from_secs(n.saturating_mul(3600)),
            _ => return Err(bad()),
        };
        if d.is_zero() {
            return Err(format!(
                "`{s}`: a timeout of zero would end every session at once"
            ));
        }
        Ok(Dur(d))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

/// A host name or IP address with a port, resolved at connect time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// Host name or IP literal (without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for HostPort {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("`{s}` is not a server address; write a host name or IP address and a port, like pop.example.net:995 or [2001:db8::1]:995")
        };
        if let Ok(sa) = s.parse::<SocketAddr>() {
            return Ok(Self {
                host: sa.ip().to_string(),
                port: sa.port(),
            });
        }
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let valid_host = !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_');
        if !valid_host || port == 0 {
            return Err(bad());
        }
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }
}

impl<'de> Deserialize<'de> for HostPort {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}
