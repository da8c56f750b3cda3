//! The POP3 TRANSACTION state: the session's view of the shared mailbox,
//! STAT/LIST/UIDL/RETR/TOP/DELE/RSET, and QUIT's commit (RFC 1939 §5-6).

use std::io;

use super::session::{script_error, Session, State};
use crate::fake::Step;
use crate::stuffing::dot_stuff;

#[derive(Clone, Debug)]
pub(super) struct StoredMessage {
    pub(super) uid: String,
    pub(super) body: Vec<u8>,
}

impl StoredMessage {
    /// The script's messages as a mailbox: UIDs `fake-uid-1`, `-2`, ...
    pub(super) fn mailbox(bodies: &[Vec<u8>]) -> Vec<Self> {
        bodies
            .iter()
            .enumerate()
            .map(|(i, body)| Self {
                uid: format!("fake-uid-{}", i + 1),
                body: body.clone(),
            })
            .collect()
    }
}

impl Session {
    /// Apply deletions to the shared mailbox; return the deleted numbers.
    pub(super) fn commit(&mut self) -> Vec<usize> {
        let State::Transaction { view, deleted } = &self.state else {
            return Vec::new();
        };
        let numbers: Vec<usize> = deleted
            .iter()
            .enumerate()
            .filter(|(_, d)| **d)
            .map(|(i, _)| i + 1)
            .collect();
        let gone: Vec<&str> = numbers.iter().map(|n| view[n - 1].uid.as_str()).collect();
        if let Ok(mut mailbox) = self.shared.mailbox.lock() {
            mailbox.retain(|m| !gone.contains(&m.uid.as_str()));
        }
        numbers
    }

    /// Live (number, message) pairs of this session.
    fn live(&self) -> Vec<(usize, &StoredMessage)> {
        match &self.state {
            State::Transaction { view, deleted } => view
                .iter()
                .zip(deleted)
                .enumerate()
                .filter(|(_, (_, d))| !**d)
                .map(|(i, (m, _))| (i + 1, m))
                .collect(),
            State::Authorization { .. } => Vec::new(),
        }
    }

    /// Parse and check a message number argument (RFC 1939 §5).
    pub(super) fn message_number(&self, arg: Option<&str>) -> Result<usize, Vec<u8>> {
        let State::Transaction { view, deleted } = &self.state else {
            return Err(script_error("command not valid in this state"));
        };
        let Some(arg) = arg else {
            return Err(script_error("message number required"));
        };
        let n: usize = match arg.parse() {
            Ok(n) if arg.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err(script_error("invalid message number")),
        };
        if n == 0 || n > view.len() {
            return Err(script_error("no such message"));
        }
        if deleted[n - 1] {
            return Err(script_error(&format!("message {n} already deleted")));
        }
        Ok(n)
    }

    fn body(&self, n: usize) -> &[u8] {
        match &self.state {
            State::Transaction { view, .. } => &view[n - 1].body,
            State::Authorization { .. } => &[],
        }
    }

    pub(super) fn stat(&self) -> Vec<u8> {
        let live = self.live();
        let size: usize = live.iter().map(|(_, m)| m.body.len()).sum();
        format!("+OK {} {size}\r\n", live.len()).into_bytes()
    }

    pub(super) fn list(&self, args: Option<&str>) -> Vec<u8> {
        if args.is_some() {
            return match self.message_number(args) {
                Ok(n) => format!("+OK {n} {}\r\n", self.body(n).len()).into_bytes(),
                Err(reply) => reply,
            };
        }
        let live = self.live();
        let mut out = format!("+OK {} messages\r\n", live.len());
        for (n, m) in live {
            out.push_str(&format!("{n} {}\r\n", m.body.len()));
        }
        out.push_str(".\r\n");
        out.into_bytes()
    }

    pub(super) fn uidl(&self, args: Option<&str>) -> Vec<u8> {
        let State::Transaction { view, .. } = &self.state else {
            return script_error("command not valid in this state");
        };
        if args.is_some() {
            return match self.message_number(args) {
                Ok(n) => format!("+OK {n} {}\r\n", view[n - 1].uid).into_bytes(),
                Err(reply) => reply,
            };
        }
        let mut out = String::from("+OK unique-id listing follows\r\n");
        for (n, m) in self.live() {
            out.push_str(&format!("{n} {}\r\n", m.uid));
        }
        out.push_str(".\r\n");
        out.into_bytes()
    }

    pub(super) fn dele(&mut self, args: Option<&str>) -> Vec<u8> {
        let n = match self.message_number(args) {
            Ok(n) => n,
            Err(reply) => return reply,
        };
        if let State::Transaction { deleted, .. } = &mut self.state {
            deleted[n - 1] = true;
        }
        format!("+OK message {n} deleted\r\n").into_bytes()
    }

    pub(super) fn rset(&mut self) -> Vec<u8> {
        if let State::Transaction { deleted, .. } = &mut self.state {
            deleted.iter_mut().for_each(|d| *d = false);
        }
        b"+OK maildrop reset\r\n".to_vec()
    }

    pub(super) async fn retr(&mut self, n: usize) -> io::Result<Step> {
        let body = self.body(n);
        let stuffed = dot_stuff(body);
        let status = format!("+OK {} octets\r\n", body.len());
        if let Some(cut) = self.script().die_mid_retr {
            let mut bytes = status.into_bytes();
            bytes.extend_from_slice(&stuffed[..cut.min(stuffed.len())]);
            self.link.write(&bytes).await?;
            return Ok(Step::Die);
        }
        let mut bytes = status.into_bytes();
        bytes.extend_from_slice(&stuffed);
        bytes.extend_from_slice(b".\r\n");
        self.link.write(&bytes).await?;
        Ok(Step::Continue)
    }

    pub(super) fn top(&self, args: Option<&str>) -> Vec<u8> {
        let Some((num, lines)) = args.and_then(|a| a.split_once(' ')) else {
            return script_error("TOP needs a message number and a line count");
        };
        let n = match self.message_number(Some(num)) {
            Ok(n) => n,
            Err(reply) => return reply,
        };
        let Ok(k) = lines.parse::<usize>() else {
            return script_error("invalid line count");
        };
        let body = self.body(n);
        // Headers end at the first empty line (RFC 1939 §7 TOP).
        let (head, rest) = match memchr::memmem::find(body, b"\r\n\r\n") {
            Some(p) => (&body[..p + 4], &body[p + 4..]),
            None => (body, &b""[..]),
        };
        let mut selected = head.to_vec();
        let mut taken = 0;
        let mut start = 0;
        while taken < k && start < rest.len() {
            let end = rest[start..]
                .iter()
                .position(|b| *b == b'\n')
                .map_or(rest.len(), |p| start + p + 1);
            selected.extend_from_slice(&rest[start..end]);
            start = end;
            taken += 1;
        }
        let mut out = b"+OK top of message follows\r\n".to_vec();
        out.extend_from_slice(&dot_stuff(&selected));
        out.extend_from_slice(b".\r\n");
        out
    }
}
