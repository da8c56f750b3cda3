//! Who may connect: a route's `allow:` list of CIDRs.

use std::net::IpAddr;

use ipnet::IpNet;

/// An allow-list of networks.
#[derive(Debug, Clone)]
pub struct Acl {
    nets: Vec<IpNet>,
}

impl Acl {
    /// An allow-list of these networks.
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self { nets }
    }

    /// Whether `ip` may connect. IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`,
    /// as a dual-stack socket reports IPv4 clients) are matched as IPv4.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|n| n.contains(&ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(nets: &[&str]) -> Acl {
        Acl::new(nets.iter().map(|n| n.parse().expect("cidr")).collect())
    }

    #[test]
    fn matches_by_network() {
        let a = acl(&["127.0.0.0/8", "::1/128", "192.168.1.0/24"]);
        for (ip, ok) in [
            ("127.0.0.1", true),
            ("127.9.9.9", true),
            ("::1", true),
            ("192.168.1.77", true),
            ("192.168.2.1", false),
            ("10.0.0.1", false),
            ("::ffff:192.168.1.5", true),
            ("::ffff:10.0.0.1", false),
            ("2001:db8::1", false),
        ] {
            assert_eq!(a.allows(ip.parse().expect("ip")), ok, "{ip}");
        }
    }

    #[test]
    fn empty_list_allows_nobody() {
        assert!(!acl(&[]).allows("127.0.0.1".parse().expect("ip")));
    }
}
