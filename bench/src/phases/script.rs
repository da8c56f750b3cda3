//! What a client says: the POP3 session of the session-rate metric, a
//! POP3 login kept open, and an SMTP session up to DATA.

use base64::Engine as _;

use crate::client::{Conn, Endpoint};
use crate::error::{BenchError, Result};

pub const USER: &[u8] = b"USER bench\r\n";
pub const PASS: &[u8] = b"PASS bench-secret\r\n";

/// connect, greeting, USER, PASS, STAT, QUIT: the session of the
/// sessions/s metric.
pub async fn pop3_session(ep: &Endpoint) -> Result<()> {
    let mut c = pop3_login(ep, crate::client::LINE_BUFFER).await?;
    c.pop3("STAT", b"STAT\r\n").await?;
    c.pop3("QUIT", b"QUIT\r\n").await
}

/// connect, greeting, USER, PASS: a logged-in session.
pub async fn pop3_login(ep: &Endpoint, buffer: usize) -> Result<Conn> {
    let mut c = Conn::open(ep, buffer).await?;
    c.pop3_ok("POP3 greeting").await?;
    c.pop3("USER", USER).await?;
    c.pop3("PASS", PASS).await?;
    Ok(c)
}

/// A logged-in session whose STAT says the mailbox holds the one message
/// of `len` bytes (so a proxy is routed to the right upstream).
pub async fn pop3_mailbox(ep: &Endpoint, buffer: usize, len: usize) -> Result<Conn> {
    let mut c = pop3_login(ep, buffer).await?;
    c.send("STAT", b"STAT\r\n").await?;
    let want = format!("+OK 1 {len}\r\n");
    let line = c.pop3_ok("STAT").await?;
    if line != want.as_bytes() {
        return Err(BenchError::reply("STAT", line));
    }
    Ok(c)
}

/// connect, 220, EHLO, AUTH PLAIN, MAIL, RCPT, DATA: ready for the
/// message after the 354.
pub async fn smtp_to_data(ep: &Endpoint, buffer: usize) -> Result<Conn> {
    let mut c = Conn::open(ep, buffer).await?;
    c.smtp("SMTP greeting", b"220").await?;
    c.send("EHLO", b"EHLO bench.invalid\r\n").await?;
    c.smtp("EHLO", b"250").await?;
    let plain = base64::engine::general_purpose::STANDARD.encode(b"\0bench\0bench-secret");
    c.send("AUTH PLAIN", format!("AUTH PLAIN {plain}\r\n").as_bytes())
        .await?;
    c.smtp("AUTH PLAIN", b"235").await?;
    smtp_transaction(&mut c).await?;
    Ok(c)
}

/// MAIL, RCPT, DATA: a transaction up to the 354.
pub async fn smtp_transaction(c: &mut Conn) -> Result<()> {
    c.send("MAIL", b"MAIL FROM:<bench@example.invalid>\r\n")
        .await?;
    c.smtp("MAIL", b"250").await?;
    c.send("RCPT", b"RCPT TO:<sink@example.invalid>\r\n")
        .await?;
    c.smtp("RCPT", b"250").await?;
    c.send("DATA", b"DATA\r\n").await?;
    c.smtp("DATA", b"354").await?;
    Ok(())
}

/// The octet count in the fake upstream's reply to the end of data
/// (`250 2.0.0 OK received N octets`).
pub fn received_octets(reply: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(reply).ok()?;
    let after = text.split("received ").nth(1)?;
    after.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octets_from_the_final_reply() {
        assert_eq!(
            received_octets(b"250 2.0.0 OK received 268435456 octets\r\n"),
            Some(268_435_456)
        );
        assert_eq!(received_octets(b"250 2.0.0 OK\r\n"), None);
        assert_eq!(received_octets(b"250 received x octets\r\n"), None);
    }
}
