//! The fake POP3S session: one mailbox with one message, for everyone.

use tokio::io::{AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::{read_line, verb, Fault, Shared};

const GREETING: &[u8] = b"+OK fake POP3S ready <1896.697170952@fake.invalid>\r\n";
const CAPA: &[u8] = b"+OK Capability list follows\r\nUSER\r\nUIDL\r\nTOP\r\nSASL PLAIN\r\n.\r\n";

pub(super) async fn session(tls: TlsStream<TcpStream>, shared: &Shared) -> Result<(), Fault> {
    let mut io = BufReader::with_capacity(4096, tls);
    io.get_mut().write_all(GREETING).await?;
    io.get_mut().flush().await?;
    let stat = format!("+OK 1 {}\r\n", shared.body_len);
    let list = format!("+OK 1 message\r\n1 {}\r\n.\r\n", shared.body_len);
    let retr = format!("+OK {} octets\r\n", shared.body_len);
    let mut line = Vec::with_capacity(256);
    loop {
        if !read_line(&mut io, &mut line).await? {
            return Ok(());
        }
        let w = io.get_mut();
        match &verb(&line) {
            b"CAPA" => w.write_all(CAPA).await?,
            b"USER" | b"PASS" | b"NOOP" | b"RSET" | b"DELE" => w.write_all(b"+OK\r\n").await?,
            b"STAT" => w.write_all(stat.as_bytes()).await?,
            b"LIST" => w.write_all(list.as_bytes()).await?,
            b"UIDL" => w.write_all(b"+OK\r\n1 fake-1\r\n.\r\n").await?,
            b"RETR" => {
                w.write_all(retr.as_bytes()).await?;
                w.write_all(&shared.message).await?;
            }
            b"QUIT" => {
                w.write_all(b"+OK bye\r\n").await?;
                w.shutdown().await?;
                return Ok(());
            }
            _ => {
                w.write_all(b"-ERR unknown command\r\n").await?;
                w.flush().await?;
                return Err(Fault::Protocol);
            }
        }
        w.flush().await?;
    }
}
