//! Reply framing for the upstream side (sans-IO): a status line and, when
//! the command has one and the status is positive, the multi-line body up
//! to its terminator (collected only for small replies such as CAPA).

use postern_core::upstream::Framer;

use super::command;
use super::reply::{parse_status, unstuff, Status, MAX_COLLECTED, MAX_REPLY_LINE};

/// A status line and the (unstuffed) body lines of a collected reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The status line, terminator included.
    pub status: Vec<u8>,
    /// The body lines, terminators and dot-stuffing removed.
    pub body: Vec<Vec<u8>>,
}

/// Frames one reply.
#[derive(Debug)]
pub struct StatusFramer {
    body: bool,
    status: Option<Vec<u8>>,
    lines: Vec<Vec<u8>>,
    total: usize,
}

impl StatusFramer {
    /// A framer for a reply with a body when positive (`body`), or a
    /// status line alone.
    pub fn new(body: bool) -> Self {
        Self {
            body,
            status: None,
            lines: Vec::new(),
            total: 0,
        }
    }

    /// Whether a positive reply's body is collected.
    pub fn expects_body(&self) -> bool {
        self.body
    }
}

impl Framer for StatusFramer {
    type Reply = Reply;

    fn max_line(&self) -> usize {
        MAX_REPLY_LINE
    }

    fn push(&mut self, line: Vec<u8>) -> Result<Option<Reply>, String> {
        let Some(status) = &self.status else {
            let complete = !self.body || !matches!(parse_status(&line), Some(Status::Ok(_)));
            if complete {
                return Ok(Some(Reply {
                    status: line,
                    body: Vec::new(),
                }));
            }
            self.status = Some(line);
            return Ok(None);
        };
        if line == b".\r\n" {
            return Ok(Some(Reply {
                status: status.clone(),
                body: std::mem::take(&mut self.lines),
            }));
        }
        self.total += line.len();
        if self.total > MAX_COLLECTED || !line.ends_with(b"\r\n") {
            return Err("the multi-line reply is malformed or too long".to_owned());
        }
        self.lines.push(unstuff(command::strip_eol(&line)).to_vec());
        Ok(None)
    }
}

/// A status line that must be a POP3 `+OK` or `-ERR` with CRLF (the reply
/// to a relayed command).
#[derive(Debug, Default)]
pub struct CommandFramer;

impl Framer for CommandFramer {
    type Reply = Vec<u8>;

    fn max_line(&self) -> usize {
        MAX_REPLY_LINE
    }

    fn push(&mut self, line: Vec<u8>) -> Result<Option<Vec<u8>>, String> {
        match parse_status(&line) {
            Some(Status::Ok(_) | Status::Err(_)) if line.ends_with(b"\r\n") => Ok(Some(line)),
            _ => Err("the reply is not a POP3 status line".to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(f: &mut impl Framer<Reply = Reply>, lines: &[&str]) -> Result<Option<Reply>, String> {
        let mut last = Ok(None);
        for l in lines {
            last = f.push(l.as_bytes().to_vec());
        }
        last
    }

    #[test]
    fn bodies_are_collected_only_when_positive_and_wanted() {
        let r = run(
            &mut StatusFramer::new(true),
            &["+OK\r\n", "TOP\r\n", "..x\r\n", ".\r\n"],
        )
        .expect("ok")
        .expect("complete");
        assert_eq!(r.body, vec![b"TOP".to_vec(), b".x".to_vec()]);
        let r = run(&mut StatusFramer::new(true), &["-ERR no\r\n"])
            .expect("ok")
            .expect("complete");
        assert!(r.body.is_empty());
        let r = run(&mut StatusFramer::new(false), &["+OK hi\r\n"])
            .expect("ok")
            .expect("complete");
        assert_eq!(r.status, b"+OK hi\r\n");
    }

    #[test]
    fn command_replies_must_be_status_lines() {
        assert!(CommandFramer.push(b"+OK 1 2\r\n".to_vec()).is_ok());
        assert!(CommandFramer.push(b"* OK imap\r\n".to_vec()).is_err());
        assert!(CommandFramer.push(b"+OK no crlf\n".to_vec()).is_err());
    }
}
