//! The HAProxy PROXY protocol, versions 1 and 2, receiving side only.
//!
//! A load balancer in front of postern (HAProxy, a Kubernetes or cloud
//! TCP load balancer) prepends one header to each connection saying who the
//! real client is. Spec: <https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt>.
//!
//! ```text
//!   first byte 'P' ──► v1: "PROXY " ... CRLF, at most 107 bytes (§2.1)
//!   first byte CR  ──► v2: 12-byte signature, ver/cmd, fam, len (16 bytes),
//!                          then exactly `len` bytes of addresses + TLVs (§2.2)
//!   anything else  ──► ProxyError::Missing
//! ```
//!
//! [`parse`] is the whole protocol, with no I/O: bytes in, "need more" or an
//! answer out. [`read_header`] drives it over a stream, reading only as many
//! bytes as the header can still need, so that the bytes after it (a TLS
//! ClientHello, an SMTP command) stay in the socket for the session.
//!
//! The header is only trustworthy from a trusted peer: a listener that
//! requires it must only be reachable by the load balancer, or anyone can
//! claim any address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// A v1 line may not be longer than this, CRLF included (§2.1: "107 bytes").
pub const MAX_V1_LINE: usize = 107;
/// The largest v2 `len` (addresses plus TLVs) postern accepts. The spec sets
/// no bound beyond the 16-bit field; the largest address block (AF_UNIX, 216
/// bytes) plus the TLVs HAProxy and cloud load balancers send fit easily.
pub const MAX_V2_PAYLOAD: usize = 2048;

/// v1 lines start with this (§2.1).
const V1_PREFIX: &[u8] = b"PROXY ";
/// v2 headers start with this (§2.2).
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The fixed part of a v2 header: signature, ver/cmd, fam, len.
const V2_FIXED: usize = 16;
/// The shortest valid header of either version: `PROXY UNKNOWN\r\n`.
const MIN_HEADER: usize = 15;
/// The most [`read_header`] can ever hold.
const MAX_HEADER: usize = V2_FIXED + MAX_V2_PAYLOAD;

/// v2 commands (§2.2, the low nibble of the 13th byte).
const CMD_LOCAL: u8 = 0x0;
const CMD_PROXY: u8 = 0x1;

/// What a PROXY header said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxiedAddr {
    /// The real client (source) and the address it connected to (destination).
    Tcp {
        /// The client as the load balancer saw it.
        source: SocketAddr,
        /// The address the client connected to (on the load balancer).
        destination: SocketAddr,
    },
    /// v1 `PROXY UNKNOWN`, or v2 LOCAL command, AF_UNSPEC or a family postern
    /// does not handle (UDP, AF_UNIX): use the socket's own peer address.
    Unknown,
}

impl ProxiedAddr {
    /// The client address to use: the proxied source, or `peer` (the
    /// socket's own peer address) when the header did not name one.
    pub fn source_or(self, peer: SocketAddr) -> SocketAddr {
        match self {
            ProxiedAddr::Tcp { source, .. } => source,
            ProxiedAddr::Unknown => peer,
        }
    }
}

/// Why no PROXY header could be taken from a connection. All of these are
/// the fault of the client side (the load balancer or whoever connected),
/// except [`ProxyError::Io`], which may be either.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Reading from the connection failed.
    #[error("reading the PROXY header failed: {0}")]
    Io(#[from] std::io::Error),
    /// The header did not arrive in time.
    #[error("no complete PROXY header before the deadline")]
    Timeout,
    /// The peer closed the connection before the header was complete.
    #[error("connection closed before the PROXY header was complete")]
    Closed,
    /// The connection does not start with a PROXY header at all: most
    /// likely a client that reached the listener without the load balancer.
    #[error("no PROXY header (the listener requires one)")]
    Missing,
    /// It starts like a PROXY header but breaks the syntax.
    #[error("malformed PROXY header: {0}")]
    Malformed(&'static str),
    /// A v1 line longer than 107 bytes, or a v2 header longer than postern accepts.
    #[error("PROXY header too long")]
    TooLong,
}

/// Parses a PROXY header from the start of `buf`, the bytes received so far.
///
/// `Ok(None)`: the header is not complete yet, read more. `Ok(Some((addr,
/// consumed)))`: the first `consumed` bytes are the header; anything after
/// them belongs to the session. `Err`: not a valid PROXY header, close the
/// connection. A connection without a header is an error, since a listener
/// that expects one must not fall back to trusting the socket.
///
/// Never panics and never looks at more than the header needs.
pub fn parse(buf: &[u8]) -> Result<Option<(ProxiedAddr, usize)>, ProxyError> {
    match buf.first() {
        None => Ok(None),
        Some(b'P') => parse_v1(buf),
        Some(b'\r') => parse_v2(buf),
        Some(_) => Err(ProxyError::Missing),
    }
}

/// Reads exactly one PROXY header from `stream` within `timeout` (one
/// deadline for the whole header, so a trickling peer cannot stretch it).
///
/// Never reads past the header: every read asks for at most the number of
/// bytes the header can still need, so whatever follows stays unread in
/// `stream`. That is a few small reads per connection for v1 (15 bytes,
/// then 2 at a time, 1 after a CR) and exactly two for v2 (16 bytes, then
/// `len`), if the peer sends them whole.
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> Result<ProxiedAddr, ProxyError> {
    tokio::time::timeout(timeout, read_header_inner(stream))
        .await
        .map_err(|_| ProxyError::Timeout)?
}

async fn read_header_inner<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<ProxiedAddr, ProxyError> {
    let mut buf = [0u8; MAX_HEADER];
    let mut filled = 0;
    loop {
        let received = buf.get(..filled).ok_or(ProxyError::TooLong)?;
        if let Some((addr, consumed)) = parse(received)? {
            debug_assert_eq!(consumed, filled, "read_header read past the PROXY header");
            return Ok(addr);
        }
        let want = safe_to_read(received).max(1);
        let end = filled.saturating_add(want).min(MAX_HEADER);
        let space = buf.get_mut(filled..end).ok_or(ProxyError::TooLong)?;
        if space.is_empty() {
            // parse() caps both versions well below MAX_HEADER, so this is
            // only reachable through a bug; refuse rather than spin.
            return Err(ProxyError::TooLong);
        }
        let n = stream.read(space).await?;
        if n == 0 {
            return Err(ProxyError::Closed);
        }
        filled += n;
    }
}

/// How many more bytes can be read without risking reading past the end of
/// a header that `parse` found incomplete in `buf`.
fn safe_to_read(buf: &[u8]) -> usize {
    match buf.first() {
        // Both versions need at least this much.
        None => MIN_HEADER,
        Some(b'\r') => match (buf.get(14), buf.get(15)) {
            (Some(&hi), Some(&lo)) => {
                (V2_FIXED + usize::from(u16::from_be_bytes([hi, lo]))).saturating_sub(buf.len())
            }
            _ => V2_FIXED.saturating_sub(buf.len()),
        },
        Some(_) if buf.len() < MIN_HEADER => MIN_HEADER - buf.len(),
        // After a CR the very next byte may end the line; otherwise the line
        // needs at least a CR and an LF more.
        Some(_) if buf.last() == Some(&b'\r') => 1,
        Some(_) => 2,
    }
}

/// Version 1, §2.1: `PROXY TCP4|TCP6|UNKNOWN ...\r\n`.
fn parse_v1(buf: &[u8]) -> Result<Option<(ProxiedAddr, usize)>, ProxyError> {
    let seen = buf.len().min(V1_PREFIX.len());
    if buf.get(..seen) != V1_PREFIX.get(..seen) {
        return Err(ProxyError::Missing);
    }
    let window = buf.get(..buf.len().min(MAX_V1_LINE)).unwrap_or(buf);
    let Some(lf) = memchr::memchr(b'\n', window) else {
        return if buf.len() >= MAX_V1_LINE {
            Err(ProxyError::TooLong)
        } else {
            Ok(None)
        };
    };
    let line = match lf.checked_sub(1) {
        Some(cr) if window.get(cr) == Some(&b'\r') => window.get(..cr),
        _ => None,
    }
    .ok_or(ProxyError::Malformed("v1 line not ended by CRLF"))?;
    let fields = line
        .strip_prefix(V1_PREFIX)
        .ok_or(ProxyError::Malformed("v1 line not ended by CRLF"))?;
    Ok(Some((parse_v1_fields(fields)?, lf + 1)))
}

/// Everything between `PROXY ` and the CRLF.
fn parse_v1_fields(fields: &[u8]) -> Result<ProxiedAddr, ProxyError> {
    if let Some(rest) = fields.strip_prefix(b"UNKNOWN") {
        // §2.1: with UNKNOWN the receiver ignores the rest of the line.
        return match rest.first() {
            None | Some(b' ') => Ok(ProxiedAddr::Unknown),
            Some(_) => Err(ProxyError::Malformed(
                "v1 protocol is not TCP4, TCP6 or UNKNOWN",
            )),
        };
    }
    let (v6, rest) = if let Some(rest) = fields.strip_prefix(b"TCP4 ") {
        (false, rest)
    } else if let Some(rest) = fields.strip_prefix(b"TCP6 ") {
        (true, rest)
    } else {
        return Err(ProxyError::Malformed(
            "v1 protocol is not TCP4, TCP6 or UNKNOWN",
        ));
    };
    // Exactly one space between fields: a doubled space yields an empty
    // field, which no address or port parses.
    let mut parts = rest.split(|&b| b == b' ');
    let mut next = || {
        parts
            .next()
            .ok_or(ProxyError::Malformed("v1 line has too few fields"))
    };
    let (src, dst, sport, dport) = (next()?, next()?, next()?, next()?);
    if parts.next().is_some() {
        return Err(ProxyError::Malformed("v1 line has too many fields"));
    }
    let src = v1_ip(src, v6).ok_or(ProxyError::Malformed(
        "v1 source address invalid for the protocol",
    ))?;
    let dst = v1_ip(dst, v6).ok_or(ProxyError::Malformed(
        "v1 destination address invalid for the protocol",
    ))?;
    let sport = v1_port(sport).ok_or(ProxyError::Malformed("v1 source port invalid"))?;
    let dport = v1_port(dport).ok_or(ProxyError::Malformed("v1 destination port invalid"))?;
    Ok(ProxiedAddr::Tcp {
        source: SocketAddr::new(src, sport),
        destination: SocketAddr::new(dst, dport),
    })
}

/// An address of the family the line named. std's parsers are strict
/// enough: dotted quad without leading zeros for IPv4, RFC 4291 text for
/// IPv6, no zone, no brackets, no whitespace.
fn v1_ip(field: &[u8], v6: bool) -> Option<IpAddr> {
    let text = std::str::from_utf8(field).ok()?;
    if v6 {
        text.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
    } else {
        text.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
    }
}

/// A decimal port in 0..=65535; §2.1 forbids leading zeros (octal
/// confusion), and `u16::from_str` would take a leading `+`.
fn v1_port(field: &[u8]) -> Option<u16> {
    if field.is_empty() || field.len() > 5 || (field.len() > 1 && field.first() == Some(&b'0')) {
        return None;
    }
    let mut value: u32 = 0;
    for &b in field {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value * 10 + u32::from(b - b'0');
    }
    u16::try_from(value).ok()
}

/// Version 2, §2.2.
fn parse_v2(buf: &[u8]) -> Result<Option<(ProxiedAddr, usize)>, ProxyError> {
    let seen = buf.len().min(V2_SIGNATURE.len());
    if buf.get(..seen) != V2_SIGNATURE.get(..seen) {
        return Err(ProxyError::Missing);
    }
    let Some(&ver_cmd) = buf.get(12) else {
        return Ok(None);
    };
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::Malformed("v2 version is not 2"));
    }
    let command = ver_cmd & 0x0f;
    if command != CMD_LOCAL && command != CMD_PROXY {
        return Err(ProxyError::Malformed(
            "v2 command is neither LOCAL nor PROXY",
        ));
    }
    let Some(&family) = buf.get(13) else {
        return Ok(None);
    };
    // §2.2: with LOCAL the receiver discards the whole block, family included.
    let needed = if command == CMD_LOCAL {
        0
    } else {
        v2_address_len(family)?
    };
    let (Some(&hi), Some(&lo)) = (buf.get(14), buf.get(15)) else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    if len > MAX_V2_PAYLOAD {
        return Err(ProxyError::TooLong);
    }
    if len < needed {
        return Err(ProxyError::Malformed(
            "v2 address block shorter than its family needs",
        ));
    }
    let total = V2_FIXED + len;
    let Some(block) = buf.get(V2_FIXED..total) else {
        return Ok(None);
    };
    let addr = if command == CMD_LOCAL {
        ProxiedAddr::Unknown
    } else {
        v2_addresses(family, block)
    };
    // The TLVs after the addresses are counted in `len` and skipped.
    Ok(Some((addr, total)))
}

/// The address block size for a PROXY command's family/protocol byte.
/// §2.2: values other than these "must be rejected as invalid by receivers".
fn v2_address_len(family: u8) -> Result<usize, ProxyError> {
    match family {
        0x00 => Ok(0),
        0x11 | 0x12 => Ok(12),
        0x21 | 0x22 => Ok(36),
        0x31 | 0x32 => Ok(216),
        _ => Err(ProxyError::Malformed(
            "v2 address family/protocol undefined",
        )),
    }
}

/// The addresses of a PROXY command whose block `v2_address_len` has
/// checked. §2.2: a receiver falls back to UNSPEC (the socket's addresses)
/// for valid combinations it does not support, here UDP and AF_UNIX.
fn v2_addresses(family: u8, block: &[u8]) -> ProxiedAddr {
    match family {
        0x11 => match (
            block.get(0..4),
            block.get(4..8),
            block.get(8..10),
            block.get(10..12),
        ) {
            (Some(src), Some(dst), Some(sport), Some(dport)) => tcp(
                Ipv4Addr::from(octets::<4>(src)).into(),
                Ipv4Addr::from(octets::<4>(dst)).into(),
                sport,
                dport,
            ),
            _ => ProxiedAddr::Unknown,
        },
        0x21 => match (
            block.get(0..16),
            block.get(16..32),
            block.get(32..34),
            block.get(34..36),
        ) {
            (Some(src), Some(dst), Some(sport), Some(dport)) => tcp(
                Ipv6Addr::from(octets::<16>(src)).into(),
                Ipv6Addr::from(octets::<16>(dst)).into(),
                sport,
                dport,
            ),
            _ => ProxiedAddr::Unknown,
        },
        _ => ProxiedAddr::Unknown,
    }
}

fn tcp(src: IpAddr, dst: IpAddr, sport: &[u8], dport: &[u8]) -> ProxiedAddr {
    ProxiedAddr::Tcp {
        source: SocketAddr::new(src, u16::from_be_bytes(octets::<2>(sport))),
        destination: SocketAddr::new(dst, u16::from_be_bytes(octets::<2>(dport))),
    }
}

/// Copies a slice the caller has already cut to `N` bytes into an array.
fn octets<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    for (o, b) in out.iter_mut().zip(bytes) {
        *o = *b;
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test
mod tests {
    use super::*;

    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::io::{AsyncWriteExt, ReadBuf};

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn tcp_addr(src: &str, dst: &str) -> ProxiedAddr {
        ProxiedAddr::Tcp {
            source: sa(src),
            destination: sa(dst),
        }
    }

    /// A v2 header: `ver_cmd`, `family`, then `block` (addresses and TLVs)
    /// with `len` set to its length.
    fn v2(ver_cmd: u8, family: u8, block: &[u8]) -> Vec<u8> {
        v2_with_len(ver_cmd, family, u16::try_from(block.len()).unwrap(), block)
    }

    /// A v2 header whose `len` field may lie about `block`.
    fn v2_with_len(ver_cmd: u8, family: u8, len: u16, block: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(ver_cmd);
        out.push(family);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(block);
        out
    }

    fn v4_block(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&src);
        b.extend_from_slice(&dst);
        b.extend_from_slice(&sport.to_be_bytes());
        b.extend_from_slice(&dport.to_be_bytes());
        b
    }

    fn v6_block(src: &str, dst: &str, sport: u16, dport: u16) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&src.parse::<Ipv6Addr>().unwrap().octets());
        b.extend_from_slice(&dst.parse::<Ipv6Addr>().unwrap().octets());
        b.extend_from_slice(&sport.to_be_bytes());
        b.extend_from_slice(&dport.to_be_bytes());
        b
    }

    /// A TLV: type, 16-bit length, value (§2.2.1).
    fn tlv(kind: u8, value: &[u8]) -> Vec<u8> {
        let mut b = vec![kind];
        b.extend_from_slice(&u16::try_from(value.len()).unwrap().to_be_bytes());
        b.extend_from_slice(value);
        b
    }

    fn valid_cases() -> Vec<(&'static str, Vec<u8>, ProxiedAddr)> {
        let unknown_107 = {
            let mut l = b"PROXY UNKNOWN ".to_vec();
            l.resize(MAX_V1_LINE - 2, b'f');
            l.extend_from_slice(b"\r\n");
            l
        };
        let longest_tcp6 = b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n".to_vec();
        // The spec's 107 is this line with UNKNOWN instead of TCP6.
        assert_eq!(longest_tcp6.len(), MAX_V1_LINE - 3);
        let mut tlvs = v4_block([192, 0, 2, 1], [198, 51, 100, 2], 40000, 993);
        tlvs.extend(tlv(0x02, b"mail.example.com")); // PP2_TYPE_AUTHORITY
        tlvs.extend(tlv(0x05, b"\x01\x02\x03")); // PP2_TYPE_UNIQUE_ID
        tlvs.extend(tlv(0x04, b"")); // PP2_TYPE_NOOP, empty
        vec![
            (
                "v1 tcp4",
                b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 995\r\n".to_vec(),
                tcp_addr("192.0.2.1:56324", "198.51.100.2:995"),
            ),
            (
                "v1 tcp4 port bounds",
                b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n".to_vec(),
                tcp_addr("0.0.0.0:0", "255.255.255.255:65535"),
            ),
            (
                "v1 tcp6",
                b"PROXY TCP6 2001:db8::1 2001:db8::2 4242 465\r\n".to_vec(),
                tcp_addr("[2001:db8::1]:4242", "[2001:db8::2]:465"),
            ),
            (
                "v1 tcp6 v4-mapped",
                b"PROXY TCP6 ::ffff:192.0.2.1 :: 1 2\r\n".to_vec(),
                tcp_addr("[::ffff:192.0.2.1]:1", "[::]:2"),
            ),
            (
                "v1 tcp6 longest line",
                longest_tcp6,
                tcp_addr(
                    "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
                    "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
                ),
            ),
            (
                "v1 unknown bare",
                b"PROXY UNKNOWN\r\n".to_vec(),
                ProxiedAddr::Unknown,
            ),
            (
                "v1 unknown with addresses",
                b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n".to_vec(),
                ProxiedAddr::Unknown,
            ),
            ("v1 unknown 107 bytes", unknown_107, ProxiedAddr::Unknown),
            (
                "v2 proxy tcp4",
                v2(
                    0x21,
                    0x11,
                    &v4_block([192, 0, 2, 1], [198, 51, 100, 2], 40000, 993),
                ),
                tcp_addr("192.0.2.1:40000", "198.51.100.2:993"),
            ),
            (
                "v2 proxy tcp6",
                v2(0x21, 0x21, &v6_block("2001:db8::1", "2001:db8::2", 1, 587)),
                tcp_addr("[2001:db8::1]:1", "[2001:db8::2]:587"),
            ),
            (
                "v2 proxy tcp4 with TLVs",
                v2(0x21, 0x11, &tlvs),
                tcp_addr("192.0.2.1:40000", "198.51.100.2:993"),
            ),
            ("v2 local empty", v2(0x20, 0x00, b""), ProxiedAddr::Unknown),
            (
                "v2 local with addresses",
                v2(0x20, 0x11, &v4_block([10, 0, 0, 1], [10, 0, 0, 2], 1, 2)),
                ProxiedAddr::Unknown,
            ),
            (
                "v2 local undefined family",
                v2(0x20, 0x55, b"xyz"),
                ProxiedAddr::Unknown,
            ),
            ("v2 proxy unspec", v2(0x21, 0x00, b""), ProxiedAddr::Unknown),
            (
                "v2 proxy unspec with junk",
                v2(0x21, 0x00, b"junk"),
                ProxiedAddr::Unknown,
            ),
            (
                "v2 proxy udp4",
                v2(0x21, 0x12, &v4_block([10, 0, 0, 1], [10, 0, 0, 2], 1, 2)),
                ProxiedAddr::Unknown,
            ),
            (
                "v2 proxy udp6",
                v2(0x21, 0x22, &v6_block("::1", "::2", 1, 2)),
                ProxiedAddr::Unknown,
            ),
            (
                "v2 proxy unix stream",
                v2(0x21, 0x31, &[b'/'; 216]),
                ProxiedAddr::Unknown,
            ),
            (
                "v2 proxy unix dgram",
                v2(0x21, 0x32, &[0; 216]),
                ProxiedAddr::Unknown,
            ),
            (
                "v2 largest accepted",
                v2(0x21, 0x11, &{
                    let mut b = v4_block([192, 0, 2, 9], [192, 0, 2, 10], 9, 10);
                    b.resize(MAX_V2_PAYLOAD, 0);
                    b
                }),
                tcp_addr("192.0.2.9:9", "192.0.2.10:10"),
            ),
        ]
    }

    /// What an invalid case must fail with.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Want {
        Missing,
        Malformed,
        TooLong,
    }

    fn kind(e: &ProxyError) -> Option<Want> {
        match e {
            ProxyError::Missing => Some(Want::Missing),
            ProxyError::Malformed(_) => Some(Want::Malformed),
            ProxyError::TooLong => Some(Want::TooLong),
            _ => None,
        }
    }

    fn invalid_cases() -> Vec<(&'static str, Vec<u8>, Want)> {
        use Want::*;
        let long_unknown = {
            let mut l = b"PROXY UNKNOWN ".to_vec();
            l.resize(MAX_V1_LINE - 1, b'f');
            l.extend_from_slice(b"\r\n");
            l
        };
        let v4 = v4_block([192, 0, 2, 1], [198, 51, 100, 2], 1, 2);
        let mut bad_sig = v2(0x21, 0x11, &v4);
        bad_sig[11] = b'X';
        let v1 = |s: &'static str| s.as_bytes().to_vec();
        vec![
            ("http get", v1("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), Missing),
            ("http post", v1("POST / HTTP/1.1\r\n\r\n"), Missing),
            (
                "http2 preface",
                v1("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
                Missing,
            ),
            ("smtp ehlo", v1("EHLO client.example\r\n"), Missing),
            ("pop3 user", v1("USER x\r\n"), Missing),
            (
                "tls client hello",
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(),
                Missing,
            ),
            (
                "lower case",
                v1("proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n"),
                Missing,
            ),
            (
                "no space after PROXY",
                v1("PROXYTCP4 1.2.3.4 5.6.7.8 1 2\r\n"),
                Missing,
            ),
            ("crlf then smtp", v1("\r\nEHLO x\r\n"), Missing),
            ("crlf crlf then smtp", v1("\r\n\r\nEHLO x\r\n"), Missing),
            ("v2 signature broken", bad_sig, Missing),
            (
                "v1 double space",
                v1("PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n"),
                Malformed,
            ),
            (
                "v1 double space later",
                v1("PROXY TCP4 1.2.3.4 5.6.7.8  1 2\r\n"),
                Malformed,
            ),
            (
                "v1 tab",
                v1("PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n"),
                Malformed,
            ),
            (
                "v1 trailing space",
                v1("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n"),
                Malformed,
            ),
            (
                "v1 extra field",
                v1("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n"),
                Malformed,
            ),
            (
                "v1 missing port",
                v1("PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n"),
                Malformed,
            ),
            ("v1 nothing after protocol", v1("PROXY TCP4\r\n"), Malformed),
            ("v1 empty protocol", v1("PROXY \r\n"), Malformed),
            (
                "v1 tcp5",
                v1("PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n"),
                Malformed,
            ),
            (
                "v1 udp4",
                v1("PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n"),
                Malformed,
            ),
            ("v1 UNKNOWNX", v1("PROXY UNKNOWNX\r\n"), Malformed),
            ("v1 unknown lower", v1("PROXY unknown\r\n"), Malformed),
            (
                "v1 port 65536",
                v1("PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n"),
                Malformed,
            ),
            (
                "v1 port 99999",
                v1("PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n"),
                Malformed,
            ),
            (
                "v1 port plus",
                v1("PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n"),
                Malformed,
            ),
            (
                "v1 port minus",
                v1("PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n"),
                Malformed,
            ),
            (
                "v1 port leading zero",
                v1("PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n"),
                Malformed,
            ),
            (
                "v1 port 00",
                v1("PROXY TCP4 1.2.3.4 5.6.7.8 1 00\r\n"),
                Malformed,
            ),
            (
                "v1 port six digits",
                v1("PROXY TCP4 1.2.3.4 5.6.7.8 1 000001\r\n"),
                Malformed,
            ),
            (
                "v1 port hex",
                v1("PROXY TCP4 1.2.3.4 5.6.7.8 0x10 2\r\n"),
                Malformed,
            ),
            (
                "v1 tcp4 with v6",
                v1("PROXY TCP4 ::1 5.6.7.8 1 2\r\n"),
                Malformed,
            ),
            (
                "v1 tcp4 with v6 dst",
                v1("PROXY TCP4 1.2.3.4 ::1 1 2\r\n"),
                Malformed,
            ),
            (
                "v1 tcp6 with v4",
                v1("PROXY TCP6 1.2.3.4 ::1 1 2\r\n"),
                Malformed,
            ),
            (
                "v1 ipv4 octet 256",
                v1("PROXY TCP4 256.0.0.1 5.6.7.8 1 2\r\n"),
                Malformed,
            ),
            (
                "v1 ipv4 three octets",
                v1("PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n"),
                Malformed,
            ),
            (
                "v1 ipv4 five octets",
                v1("PROXY TCP4 1.2.3.4.5 5.6.7.8 1 2\r\n"),
                Malformed,
            ),
            (
                "v1 ipv4 leading zero",
                v1("PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n"),
                Malformed,
            ),
            (
                "v1 ipv6 bracketed",
                v1("PROXY TCP6 [::1] ::2 1 2\r\n"),
                Malformed,
            ),
            (
                "v1 ipv6 zone",
                v1("PROXY TCP6 fe80::1%eth0 ::2 1 2\r\n"),
                Malformed,
            ),
            (
                "v1 hostname",
                v1("PROXY TCP4 localhost 5.6.7.8 1 2\r\n"),
                Malformed,
            ),
            (
                "v1 lf only",
                v1("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"),
                Malformed,
            ),
            (
                "v1 cr cr lf",
                v1("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n"),
                Malformed,
            ),
            (
                "v1 non-utf8 address",
                b"PROXY TCP4 1.2.3.\xff 5.6.7.8 1 2\r\n".to_vec(),
                Malformed,
            ),
            (
                "v1 nul in line",
                b"PROXY TCP4 1.2.3.4\x005.6.7.8 1 2\r\n".to_vec(),
                Malformed,
            ),
            ("v1 108 bytes", long_unknown, TooLong),
            (
                "v1 never ends",
                [b"PROXY ".as_slice(), &[b'A'; 200]].concat(),
                TooLong,
            ),
            ("v2 version 1", v2(0x11, 0x11, &v4), Malformed),
            ("v2 version 3", v2(0x31, 0x11, &v4), Malformed),
            ("v2 version 0", v2(0x01, 0x11, &v4), Malformed),
            ("v2 command 2", v2(0x22, 0x11, &v4), Malformed),
            ("v2 command f", v2(0x2f, 0x11, &v4), Malformed),
            ("v2 proxy family 0x13", v2(0x21, 0x13, &v4), Malformed),
            ("v2 proxy family 0x10", v2(0x21, 0x10, &v4), Malformed),
            ("v2 proxy family 0x01", v2(0x21, 0x01, &v4), Malformed),
            ("v2 proxy family 0x41", v2(0x21, 0x41, &v4), Malformed),
            (
                "v2 tcp4 block 11 bytes",
                v2(0x21, 0x11, &v4[..11]),
                Malformed,
            ),
            ("v2 tcp4 block empty", v2(0x21, 0x11, b""), Malformed),
            (
                "v2 tcp6 block 35 bytes",
                v2(0x21, 0x21, &v6_block("::1", "::2", 1, 2)[..35]),
                Malformed,
            ),
            ("v2 tcp6 with v4 block", v2(0x21, 0x21, &v4), Malformed),
            ("v2 unix block short", v2(0x21, 0x31, &[0; 215]), Malformed),
            (
                "v2 len over cap",
                v2_with_len(0x21, 0x11, 2049, &v4),
                TooLong,
            ),
            (
                "v2 len max u16",
                v2_with_len(0x21, 0x11, u16::MAX, &v4),
                TooLong,
            ),
        ]
    }

    #[test]
    fn tables_are_not_empty() {
        assert!(valid_cases().len() > 15);
        assert!(invalid_cases().len() > 40);
    }

    #[test]
    fn valid_headers_whole() {
        for (name, bytes, want) in valid_cases() {
            let got = parse(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(got, Some((want, bytes.len())), "{name}");
        }
    }

    #[test]
    fn invalid_headers_whole() {
        for (name, bytes, want) in invalid_cases() {
            match parse(&bytes) {
                Err(e) => assert_eq!(kind(&e), Some(want), "{name}: {e}"),
                Ok(r) => panic!("{name}: accepted as {r:?}"),
            }
        }
    }

    #[test]
    fn every_prefix_of_a_valid_header_needs_more() {
        for (name, bytes, _) in valid_cases() {
            for end in 0..bytes.len() {
                assert!(
                    matches!(parse(&bytes[..end]), Ok(None)),
                    "{name}: prefix of {end} bytes gave {:?}",
                    parse(&bytes[..end])
                );
            }
        }
    }

    /// Each header followed by session bytes, delivered in every chunk size:
    /// `parse` wants more until the header is whole, then gives the same
    /// answer as for the whole header and claims only the header's bytes.
    #[test]
    fn valid_headers_in_every_chunk_size_and_pipelined() {
        let trailer: &[u8] = b"\x16\x03\x01 EHLO x\r\nPROXY TCP4 6.6.6.6 6.6.6.6 6 6\r\n";
        for (name, header, want) in valid_cases() {
            let mut stream = header.clone();
            stream.extend_from_slice(trailer);
            for chunk in 1..=stream.len() {
                let mut received = 0;
                let got = loop {
                    assert!(received < stream.len(), "{name}/{chunk}: never completed");
                    received = (received + chunk).min(stream.len());
                    if let Some(r) =
                        parse(&stream[..received]).unwrap_or_else(|e| panic!("{name}/{chunk}: {e}"))
                    {
                        break r;
                    }
                    assert!(
                        received < header.len(),
                        "{name}/{chunk}: still incomplete at {received} bytes"
                    );
                };
                assert_eq!(got, (want, header.len()), "{name}/{chunk}");
            }
        }
    }

    /// Fed in every chunk size, an invalid header never parses, and once all
    /// of it is in, it fails the same way as whole.
    #[test]
    fn invalid_headers_in_every_chunk_size() {
        for (name, bytes, want) in invalid_cases() {
            for chunk in 1..=bytes.len() {
                let mut received = 0;
                let err = loop {
                    received = (received + chunk).min(bytes.len());
                    match parse(&bytes[..received]) {
                        Ok(None) => assert!(
                            received < bytes.len(),
                            "{name}/{chunk}: wants more than the whole input"
                        ),
                        Ok(Some(r)) => panic!("{name}/{chunk}: accepted as {r:?}"),
                        Err(e) => break e,
                    }
                };
                assert_eq!(kind(&err), Some(want), "{name}/{chunk}: {err}");
            }
        }
    }

    #[test]
    fn garbage_is_refused_at_the_first_byte() {
        for first in 0..=u8::MAX {
            if first == b'P' || first == b'\r' {
                assert!(matches!(parse(&[first]), Ok(None)));
            } else {
                assert!(
                    matches!(parse(&[first]), Err(ProxyError::Missing)),
                    "{first:#x}"
                );
            }
        }
    }

    #[test]
    fn source_or_falls_back_to_the_peer() {
        let peer = sa("10.1.1.1:5000");
        assert_eq!(ProxiedAddr::Unknown.source_or(peer), peer);
        assert_eq!(
            tcp_addr("192.0.2.1:1", "192.0.2.2:2").source_or(peer),
            sa("192.0.2.1:1")
        );
    }

    #[test]
    fn errors_read_well() {
        assert_eq!(
            ProxyError::Malformed("v1 source port invalid").to_string(),
            "malformed PROXY header: v1 source port invalid"
        );
        assert_eq!(
            ProxyError::Missing.to_string(),
            "no PROXY header (the listener requires one)"
        );
    }

    /// A reader that hands out at most `chunk` bytes per read and counts
    /// what it handed out.
    struct Trickle<'a> {
        data: &'a [u8],
        chunk: usize,
    }

    impl AsyncRead for Trickle<'_> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let n = self.chunk.min(buf.remaining()).min(self.data.len());
            let (head, tail) = self.data.split_at(n);
            buf.put_slice(head);
            self.data = tail;
            Poll::Ready(Ok(()))
        }
    }

    const T: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn read_header_leaves_the_following_bytes_unread() {
        let trailer: &[u8] = b"EHLO client.example\r\nMAIL FROM:<a@b>\r\n";
        for (name, header, want) in valid_cases() {
            let mut stream = header.clone();
            stream.extend_from_slice(trailer);
            for chunk in [1, 2, 3, 7, 16, 64, 4096] {
                let mut reader = Trickle {
                    data: &stream,
                    chunk,
                };
                let got = read_header(&mut reader, T)
                    .await
                    .unwrap_or_else(|e| panic!("{name}/{chunk}: {e}"));
                assert_eq!(got, want, "{name}/{chunk}");
                assert_eq!(
                    reader.data, trailer,
                    "{name}/{chunk}: bytes after the header were read"
                );
            }
            // A plain `&[u8]` hands out as much as asked for.
            let mut slice: &[u8] = &stream;
            assert_eq!(read_header(&mut slice, T).await.unwrap(), want, "{name}");
            assert_eq!(slice, trailer, "{name}");
        }
    }

    #[tokio::test]
    async fn read_header_over_a_duplex_stream() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            client
                .write_all(b"PROXY TCP6 2001:db8::7 2001:db8::8 ")
                .await
                .unwrap();
            tokio::task::yield_now().await;
            client.write_all(b"50000 995\r").await.unwrap();
            tokio::task::yield_now().await;
            client.write_all(b"\n\x16\x03\x01").await.unwrap();
            client
        });
        let got = read_header(&mut server, T).await.unwrap();
        assert_eq!(got, tcp_addr("[2001:db8::7]:50000", "[2001:db8::8]:995"));
        let _client = writer.await.unwrap();
        let mut rest = [0u8; 3];
        server.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"\x16\x03\x01");
    }

    #[tokio::test]
    async fn read_header_v2_over_a_duplex_stream() {
        let header = v2(
            0x21,
            0x11,
            &v4_block([203, 0, 113, 5], [203, 0, 113, 6], 1234, 587),
        );
        let (mut client, mut server) = tokio::io::duplex(4096);
        client.write_all(&header).await.unwrap();
        client.write_all(b"EHLO x\r\n").await.unwrap();
        let got = read_header(&mut server, T).await.unwrap();
        assert_eq!(got, tcp_addr("203.0.113.5:1234", "203.0.113.6:587"));
        let mut rest = [0u8; 8];
        server.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"EHLO x\r\n");
    }

    #[tokio::test]
    async fn read_header_refuses_invalid_headers() {
        for (name, bytes, want) in invalid_cases() {
            let mut reader = Trickle {
                data: &bytes,
                chunk: 1,
            };
            let err = read_header(&mut reader, T).await.unwrap_err();
            assert_eq!(kind(&err), Some(want), "{name}: {err}");
        }
    }

    #[tokio::test]
    async fn garbage_is_refused_without_waiting_for_more() {
        // A client speaking first with a short line: refused at once, not
        // after waiting for 15 bytes that never come.
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"QUIT\r\n").await.unwrap();
        let err = read_header(&mut server, Duration::from_secs(3600))
            .await
            .unwrap_err();
        assert!(matches!(err, ProxyError::Missing), "{err}");
        drop(client);
    }

    #[tokio::test]
    async fn closed_before_the_header_ends() {
        let mut empty: &[u8] = b"";
        assert!(matches!(
            read_header(&mut empty, T).await,
            Err(ProxyError::Closed)
        ));
        let mut cut: &[u8] = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r";
        assert!(matches!(
            read_header(&mut cut, T).await,
            Err(ProxyError::Closed)
        ));
        let header = v2(0x21, 0x11, &v4_block([1, 2, 3, 4], [5, 6, 7, 8], 1, 2));
        let mut cut: &[u8] = &header[..header.len() - 1];
        assert!(matches!(
            read_header(&mut cut, T).await,
            Err(ProxyError::Closed)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn silent_peer_times_out() {
        let (client, mut server) = tokio::io::duplex(64);
        let err = read_header(&mut server, T).await.unwrap_err();
        assert!(matches!(err, ProxyError::Timeout), "{err}");
        drop(client);
    }

    #[tokio::test(start_paused = true)]
    async fn slow_loris_times_out() {
        let (mut client, mut server) = tokio::io::duplex(64);
        // One byte a second of a header that is valid so far: each read
        // succeeds, but the deadline covers the whole header.
        let writer = tokio::spawn(async move {
            for &b in b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 995\r\n" {
                if client.write_all(&[b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let started = tokio::time::Instant::now();
        let err = read_header(&mut server, Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(matches!(err, ProxyError::Timeout), "{err}");
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        drop(server);
        writer.await.unwrap();
    }

    /// Random bytes, random mutations of valid headers and random v2
    /// headers: `parse` never panics, never claims more than it was given,
    /// and a complete answer does not change when more bytes arrive or when
    /// the input is cut to exactly the header.
    #[test]
    fn fuzz_parse_never_panics() {
        let seeds: Vec<Vec<u8>> = valid_cases().into_iter().map(|(_, b, _)| b).collect();
        let alphabet = b"PROXY TCP46UNKNOWN0123456789abcdef.:\r\n ";
        let mut rng = postern_testkit::Rng::new(0x9e37_79b9_7f4a_7c15);
        let mut accepted = 0;
        for _ in 0..50_000 {
            let mut input = match rng.below(4) {
                0 => (0..rng.below(300)).map(|_| rng.next_u64() as u8).collect(),
                1 => {
                    let mut line = b"PROXY ".to_vec();
                    line.extend((0..rng.below(110)).map(|_| alphabet[rng.below(alphabet.len())]));
                    line
                }
                2 => {
                    let mut block = vec![0u8; rng.below(300)];
                    block.iter_mut().for_each(|b| *b = rng.next_u64() as u8);
                    let len = if rng.below(2) == 0 {
                        block.len() as u16
                    } else {
                        rng.next_u64() as u16
                    };
                    v2_with_len(rng.next_u64() as u8, rng.next_u64() as u8, len, &block)
                }
                _ => {
                    let mut b = seeds[rng.below(seeds.len())].clone();
                    for _ in 0..=rng.below(4) {
                        let at = rng.below(b.len());
                        match rng.below(3) {
                            0 => b[at] = rng.next_u64() as u8,
                            1 => {
                                b.remove(at);
                            }
                            _ => b.insert(at, rng.next_u64() as u8),
                        }
                        if b.is_empty() {
                            break;
                        }
                    }
                    b
                }
            };
            if let Ok(Some((addr, consumed))) = parse(&input) {
                accepted += 1;
                assert!(consumed <= input.len());
                assert_eq!(parse(&input[..consumed]).unwrap(), Some((addr, consumed)));
                input.extend_from_slice(b"trailing");
                assert_eq!(parse(&input).unwrap(), Some((addr, consumed)));
            }
        }
        // The loop exercised the success path too, not only rejections.
        assert!(accepted > 100, "only {accepted} inputs parsed");
    }
}
