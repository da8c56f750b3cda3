//! `postern probe`: what a route's upstream offers, checked exactly as a
//! session would connect (same transport, same machines), and a verdict.
//! No credential is sent unless asked (`--login`, stored accounts only).

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

/// A certificate closer to expiry than this is a warning.
pub const EXPIRY_WARNING_DAYS: i64 = 14;

/// The upstream's TLS, as the handshake found it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TlsInfo {
    /// Version and cipher suite.
    pub negotiated: String,
    /// The end-entity certificate's subject.
    pub subject: String,
    /// Its issuer.
    pub issuer: String,
    /// Its DNS and IP subject alternative names.
    pub names: Vec<String>,
    /// Whole days until it expires (negative: expired).
    pub days_left: i64,
}

impl TlsInfo {
    /// Reads the negotiated parameters and the server's certificate.
    pub fn of(conn: &rustls::ClientConnection, negotiated: String) -> Option<Self> {
        let cert = conn.peer_certificates()?.first()?;
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
        let mut names = Vec::new();
        if let Ok(Some(san)) = parsed.subject_alternative_name() {
            for n in &san.value.general_names {
                match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => names.push((*d).to_owned()),
                    x509_parser::extensions::GeneralName::IPAddress(ip) => {
                        names.push(format!("{ip:?}"))
                    }
                    _ => {}
                }
            }
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let not_after = parsed.validity().not_after.timestamp();
        Some(Self {
            negotiated,
            subject: parsed.subject().to_string(),
            issuer: parsed.issuer().to_string(),
            names,
            days_left: (not_after - now).div_euclid(86_400),
        })
    }
}

/// What a probe of one route found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Probe {
    /// The route.
    pub route: String,
    /// `pop3` or `smtp`.
    pub protocol: String,
    /// The upstream address.
    pub upstream: String,
    /// `none`, `tls` or `starttls`.
    pub security: String,
    /// The route's login method.
    pub auth: String,
    /// The upstream's greeting (printable).
    pub greeting: Option<String>,
    /// What the upstream offered before STARTTLS (routes that upgrade).
    pub before_tls: Option<Vec<String>>,
    /// TLS as negotiated (after STARTTLS where the route upgrades).
    pub tls: Option<TlsInfo>,
    /// The capabilities the upstream offered on the final (post-TLS)
    /// connection: POP3 CAPA lines, SMTP EHLO keywords.
    pub capabilities: Vec<String>,
    /// POP3 APOP: whether the greeting carried a valid timestamp.
    pub apop_timestamp: Option<bool>,
    /// `--login`: how the login with the stored account went.
    pub login: Option<String>,
    /// Why the route will not work (empty: it will).
    pub problems: Vec<String>,
    /// What works but deserves attention.
    pub warnings: Vec<String>,
}

impl Probe {
    /// A report for a route, nothing found yet.
    pub fn new(route: &str, protocol: &str, upstream: &str, security: &str, auth: &str) -> Self {
        Self {
            route: route.to_owned(),
            protocol: protocol.to_owned(),
            upstream: upstream.to_owned(),
            security: security.to_owned(),
            auth: auth.to_owned(),
            ..Self::default()
        }
    }

    /// Whether a session on this route will work.
    pub fn will_work(&self) -> bool {
        self.problems.is_empty()
    }

    /// Records what the connection showed: greeting, what came before
    /// STARTTLS, the TLS and the certificate (with its expiry check).
    pub fn connected(&mut self, link: &crate::upstream::Link, seen: &crate::upstream::Seen) {
        self.greeting = Some(seen.greeting.clone());
        self.before_tls = seen.before_tls.clone();
        self.tls = link.tls_info();
        self.check_certificate();
    }

    /// Adds the certificate warnings (expiry).
    pub fn check_certificate(&mut self) {
        let Some(tls) = &self.tls else { return };
        if tls.days_left < 0 {
            self.problems.push(format!(
                "the server's certificate expired {} days ago",
                -tls.days_left
            ));
        } else if tls.days_left < EXPIRY_WARNING_DAYS {
            self.warnings.push(format!(
                "the server's certificate expires in {} days",
                tls.days_left
            ));
        }
    }

    /// The verdict in words.
    pub fn verdict(&self) -> String {
        if self.will_work() {
            match self.warnings.first() {
                None => "will work".to_owned(),
                Some(w) => format!("will work, but {w}"),
            }
        } else {
            format!("will not work: {}", self.problems.join("; "))
        }
    }

    /// A human-readable block.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "route {} ({}) -> {} (security: {}, auth: {})",
            self.route, self.protocol, self.upstream, self.security, self.auth
        );
        if let Some(g) = &self.greeting {
            let _ = writeln!(out, "  greeting:     {g}");
        }
        if let Some(b) = &self.before_tls {
            let _ = writeln!(out, "  before TLS:   {}", b.join(" | "));
        }
        if let Some(t) = &self.tls {
            let _ = writeln!(out, "  tls:          {}", t.negotiated);
            let _ = writeln!(out, "  certificate:  {}", t.subject);
            let _ = writeln!(out, "  issuer:       {}", t.issuer);
            let _ = writeln!(out, "  names:        {}", t.names.join(", "));
            let _ = writeln!(out, "  expires in:   {} days", t.days_left);
        }
        if let Some(ts) = self.apop_timestamp {
            let _ = writeln!(
                out,
                "  apop:         {}",
                if ts {
                    "timestamp present and valid"
                } else {
                    "no valid timestamp"
                }
            );
        }
        if !self.capabilities.is_empty() {
            let _ = writeln!(out, "  capabilities: {}", self.capabilities.join(" | "));
        }
        if let Some(l) = &self.login {
            let _ = writeln!(out, "  login:        {l}");
        }
        let _ = writeln!(out, "  verdict:      {}", self.verdict());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_days(days_left: i64) -> Probe {
        let mut p = Probe::new("r", "pop3", "h:995", "tls", "user");
        p.tls = Some(TlsInfo {
            negotiated: "TLSv1_3".to_owned(),
            subject: "CN=h".to_owned(),
            issuer: "CN=ca".to_owned(),
            names: vec!["h".to_owned()],
            days_left,
        });
        p.check_certificate();
        p
    }

    #[test]
    fn certificates_near_or_past_expiry_are_called_out() {
        assert_eq!(with_days(90).verdict(), "will work");
        let soon = with_days(3);
        assert!(soon.will_work());
        assert_eq!(
            soon.verdict(),
            "will work, but the server's certificate expires in 3 days"
        );
        let expired = with_days(-2);
        assert!(!expired.will_work());
        assert!(
            expired.verdict().contains("expired 2 days ago"),
            "{}",
            expired.verdict()
        );
        assert!(expired.to_text().contains("verdict:      will not work"));
    }
}
