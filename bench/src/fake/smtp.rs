//! The fake SMTPS session: accepts any login and any envelope, counts
//! message data to its end and discards it; the reply to the end of data
//! names the byte count, so the sender can check nothing was lost.

use tokio::io::{AsyncBufRead, AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::server::TlsStream;

use super::{argument, read_line, verb, Fault, Shared, COMMAND_TIMEOUT};
use crate::wire::EndFinder;

const GREETING: &[u8] = b"220 fake.invalid ESMTP fake SMTPS ready\r\n";
const EHLO: &[u8] = b"250-fake.invalid\r\n250-8BITMIME\r\n250-SIZE 4294967296\r\n\
250-ENHANCEDSTATUSCODES\r\n250 AUTH PLAIN LOGIN\r\n";
const AUTHENTICATED: &[u8] = b"235 2.7.0 Authentication successful\r\n";

pub(super) async fn session(tls: TlsStream<TcpStream>, _shared: &Shared) -> Result<(), Fault> {
    let mut io = BufReader::with_capacity(64 * 1024, tls);
    io.get_mut().write_all(GREETING).await?;
    io.get_mut().flush().await?;
    let mut line = Vec::with_capacity(256);
    loop {
        if !read_line(&mut io, &mut line).await? {
            return Ok(());
        }
        let reply: Vec<u8> = match &verb(&line) {
            b"EHLO" => EHLO.to_vec(),
            b"HELO" => b"250 fake.invalid\r\n".to_vec(),
            b"AUTH" => {
                auth(&mut io, &line).await?;
                AUTHENTICATED.to_vec()
            }
            b"MAIL" | b"RCPT" | b"RSET" | b"NOOP" => b"250 2.0.0 OK\r\n".to_vec(),
            b"DATA" => {
                io.get_mut()
                    .write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    .await?;
                io.get_mut().flush().await?;
                let n = data(&mut io).await?;
                format!("250 2.0.0 OK received {n} octets\r\n").into_bytes()
            }
            b"QUIT" => {
                io.get_mut().write_all(b"221 2.0.0 Bye\r\n").await?;
                io.get_mut().shutdown().await?;
                return Ok(());
            }
            _ => {
                io.get_mut()
                    .write_all(b"502 5.5.2 unknown command\r\n")
                    .await?;
                io.get_mut().flush().await?;
                return Err(Fault::Protocol);
            }
        };
        io.get_mut().write_all(&reply).await?;
        io.get_mut().flush().await?;
    }
}

/// AUTH PLAIN (with or without an initial response) or LOGIN; any
/// credentials are accepted.
async fn auth(io: &mut BufReader<TlsStream<TcpStream>>, line: &[u8]) -> Result<(), Fault> {
    let arg = argument(line).to_ascii_uppercase();
    let prompts: &[&[u8]] = if arg.starts_with(b"PLAIN ") {
        &[]
    } else if arg.starts_with(b"PLAIN") {
        &[b"334 \r\n"]
    } else if arg.starts_with(b"LOGIN") {
        &[b"334 VXNlcm5hbWU6\r\n", b"334 UGFzc3dvcmQ6\r\n"]
    } else {
        return Err(Fault::Protocol);
    };
    let mut answer = Vec::new();
    for prompt in prompts {
        io.get_mut().write_all(prompt).await?;
        io.get_mut().flush().await?;
        if !read_line(io, &mut answer).await? {
            return Err(Fault::Gone);
        }
    }
    Ok(())
}

/// Message data up to CRLF . CRLF; returns the bytes before the final
/// `.` CRLF.
async fn data<R: AsyncBufRead + Unpin>(r: &mut R) -> Result<u64, Fault> {
    let mut end = EndFinder::default();
    let mut total = 0u64;
    loop {
        let buf = timeout(COMMAND_TIMEOUT, r.fill_buf())
            .await
            .map_err(|_| Fault::Gone)??;
        if buf.is_empty() {
            return Err(Fault::Gone);
        }
        if let Some(n) = end.feed(buf) {
            r.consume(n);
            return Ok(total + n as u64 - 3);
        }
        let n = buf.len();
        total += n as u64;
        r.consume(n);
    }
}
