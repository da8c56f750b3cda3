//! SMTP message data: DATA with its `CRLF.CRLF` terminator (RFC 5321
//! §4.1.1.4), BDAT chunks (RFC 3030), the scripted endings ([`DataEnd`])
//! and the stored [`ReceivedMessage`].

use std::io;
use std::sync::atomic::Ordering;

use super::events::{BareKind, ReceivedMessage, SmtpEvent};
use super::script::DataEnd;
use super::session::{Greeted, Session, GREET_FIRST, NEED_MAIL, TOO_BIG};
use crate::fake::Step;
use crate::stuffing::dot_unstuff;

/// Hard cap on a message held in memory, whatever SIZE says.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// At most this many [`SmtpEvent::BareLineEnding`]s per message; the rest
/// are counted in one [`SmtpEvent::ClientViolation`].
const MAX_BARE_EVENTS: usize = 32;

const NO_RECIPIENTS: &str = "554 5.5.1 No valid recipients";

impl Session {
    /// The error DATA/BDAT gets when the transaction cannot take data yet.
    fn data_sequence_error(&self) -> Option<&'static str> {
        if self.greeted == Greeted::No {
            return Some(GREET_FIRST);
        }
        match &self.txn {
            None => Some(NEED_MAIL),
            Some(t) if t.rcpts.is_empty() => Some(NO_RECIPIENTS),
            Some(_) => None,
        }
    }

    /// The [`DataEnd::DieAfterBytes`] cut, if the script has one.
    fn cut(&self) -> Option<usize> {
        match self.script().data_end {
            DataEnd::DieAfterBytes(n) => Some(n),
            _ => None,
        }
    }

    /// Answer `line` and carry on.
    async fn answer(&mut self, line: &str) -> io::Result<Step> {
        self.link.write_line(line).await?;
        Ok(Step::Continue)
    }

    pub(super) async fn data(&mut self, args: Option<&str>) -> io::Result<Step> {
        if args.is_some() {
            return self.answer("501 5.5.4 Syntax: DATA").await;
        }
        if let Some(error) = self.data_sequence_error() {
            return self.answer(error).await;
        }
        if self.txn.as_ref().is_some_and(|t| t.chunks.is_some()) {
            return self.answer("503 5.5.1 DATA not allowed after BDAT").await;
        }
        let go_ahead = self
            .script()
            .data_command_reply
            .clone()
            .unwrap_or_else(|| "354 End data with <CR><LF>.<CR><LF>".to_owned());
        if !go_ahead.starts_with("354") {
            return self.answer(&go_ahead).await;
        }
        // RFC 2920 §3.1: DATA ends a pipelined group; content waits for 354.
        if !self.link.buf.is_empty() {
            let early = self.link.buf.len();
            self.violation(format!("{early} bytes sent before the 354 reply"));
        }
        self.link.write_line(&go_ahead).await?;
        self.record(SmtpEvent::DataStarted);
        let Some((body_len, consumed)) = self.read_data().await else {
            return Ok(Step::Die);
        };
        if self.cut().is_some() {
            self.record(SmtpEvent::DroppedByScript(format!(
                "whole message ({body_len} bytes) arrived before the cut"
            )));
            return Ok(Step::Die);
        }
        let raw = self.link.buf[..body_len].to_vec();
        self.link.buf.drain(..consumed);
        // `raw` is empty or ends in CRLF, so this always has its terminator.
        let unstuffed = dot_unstuff(&[&raw[..], b".\r\n"].concat()).unwrap_or_default();
        self.finish_message(raw, unstuffed, false).await
    }

    /// Read DATA content up to its terminator, as [`find_data_end`] gives
    /// it; `None` if the session must end (scripted cut, oversized
    /// message, client gone).
    async fn read_data(&mut self) -> Option<(usize, usize)> {
        let cut = self.cut();
        let mut scanned = 0;
        loop {
            let have = self.link.buf.len();
            if let Some(cut) = cut.filter(|cut| have >= *cut) {
                self.record(SmtpEvent::DroppedByScript(format!(
                    "{have} DATA bytes received, cut at {cut}"
                )));
                return None;
            }
            if let Some(end) = find_data_end(&self.link.buf, scanned) {
                return Some(end);
            }
            scanned = have;
            if have > MAX_MESSAGE {
                self.violation(format!("message over {MAX_MESSAGE} octets"));
                return None;
            }
            if !matches!(self.link.fill().await, Ok(n) if n > 0) {
                self.report_bare_line_endings(&self.link.buf);
                self.record(SmtpEvent::MessageAborted {
                    partial_bytes: self.link.buf.len(),
                });
                return None;
            }
        }
    }

    pub(super) async fn bdat(&mut self, args: Option<&str>) -> io::Result<Step> {
        let Some((size, last)) = args.and_then(parse_bdat) else {
            // The chunk length is unknown, so its bytes will be read as
            // commands; a real server is no better off (RFC 3030 §4).
            return self.answer("501 5.5.4 Syntax: BDAT size [LAST]").await;
        };
        let error = if self.greeted != Greeted::Ehlo {
            Some(GREET_FIRST)
        } else {
            self.data_sequence_error()
        };
        let prior = self
            .txn
            .as_ref()
            .and_then(|t| t.chunks.as_ref())
            .map_or(0, Vec::len);
        if prior.saturating_add(size) > MAX_MESSAGE {
            self.violation(format!("message over {MAX_MESSAGE} octets"));
            return Ok(Step::Die);
        }
        let cut = self.cut().filter(|_| error.is_none());
        // RFC 3030 §2: the chunk is read even when the command is refused.
        let Some(chunk) = self.read_chunk(size, prior, cut, error.is_none()).await else {
            return Ok(Step::Die);
        };
        if let Some(error) = error {
            return self.answer(error).await;
        }
        self.record(SmtpEvent::BdatChunk { size, last });
        let Some(txn) = &mut self.txn else {
            return Ok(Step::Die);
        };
        let data = txn.chunks.get_or_insert_with(Vec::new);
        data.extend_from_slice(&chunk);
        if !last {
            return self
                .answer(&format!("250 2.0.0 {size} octets received"))
                .await;
        }
        let raw = std::mem::take(data);
        if cut.is_some() {
            self.record(SmtpEvent::DroppedByScript(format!(
                "whole message ({} bytes) arrived before the cut",
                raw.len()
            )));
            return Ok(Step::Die);
        }
        self.finish_message(raw.clone(), raw, true).await
    }

    /// Read one BDAT chunk of `size` octets, `prior` octets into the
    /// message; `None` if the session must end (scripted `cut`, client
    /// gone: an abort is logged when `counts` says the chunk is part of a
    /// valid transaction).
    async fn read_chunk(
        &mut self,
        size: usize,
        prior: usize,
        cut: Option<usize>,
        counts: bool,
    ) -> Option<Vec<u8>> {
        loop {
            let have = self.link.buf.len().min(size);
            if let Some(cut) = cut.filter(|cut| prior + have >= *cut) {
                self.record(SmtpEvent::DroppedByScript(format!(
                    "{} BDAT bytes received, cut at {cut}",
                    prior + have
                )));
                return None;
            }
            if self.link.buf.len() >= size {
                return Some(self.link.buf.drain(..size).collect());
            }
            if !matches!(self.link.fill().await, Ok(n) if n > 0) {
                if counts {
                    self.record(SmtpEvent::MessageAborted {
                        partial_bytes: prior + self.link.buf.len(),
                    });
                }
                return None;
            }
        }
    }

    /// Store a complete message and give (or withhold) the final reply.
    async fn finish_message(
        &mut self,
        raw: Vec<u8>,
        unstuffed: Vec<u8>,
        chunked: bool,
    ) -> io::Result<Step> {
        self.report_bare_line_endings(&raw);
        let Some(txn) = self.txn.take() else {
            return Ok(Step::Die);
        };
        let too_big = self
            .script()
            .size_limit()
            .is_some_and(|limit| unstuffed.len() > limit);
        let final_reply = match &self.script().data_end {
            _ if too_big => Some(TOO_BIG.to_owned()),
            DataEnd::Accept => {
                let n = self.shared.queued.fetch_add(1, Ordering::SeqCst) + 1;
                Some(format!("250 2.0.0 Ok: queued as FAKE{n}"))
            }
            DataEnd::Reply(answer) => Some(answer.clone()),
            DataEnd::DieAfterBytes(_)
            | DataEnd::DieBeforeFinalReply
            | DataEnd::HangBeforeFinalReply => None,
        };
        let size = raw.len();
        let message = ReceivedMessage {
            raw,
            unstuffed,
            mail_from: txn.mail_from,
            rcpts: txn.rcpts,
            tls: self.link.tls(),
            auth_user: self.auth_user.clone(),
            chunked,
            final_reply: final_reply.clone(),
        };
        let index = match self.shared.messages.lock() {
            Ok(mut messages) => {
                messages.push(message);
                messages.len() - 1
            }
            Err(_) => usize::MAX,
        };
        self.record(SmtpEvent::MessageReceived { index, size });
        match final_reply {
            Some(answer) => self.answer(&answer).await,
            None if self.script().data_end == DataEnd::HangBeforeFinalReply => Ok(Step::Hang),
            None => {
                self.record(SmtpEvent::DroppedByScript(
                    "whole message received, no final reply".to_owned(),
                ));
                Ok(Step::Die)
            }
        }
    }

    fn report_bare_line_endings(&self, data: &[u8]) {
        let found = bare_line_endings(data);
        for (kind, offset) in found.iter().take(MAX_BARE_EVENTS) {
            self.record(SmtpEvent::BareLineEnding {
                kind: *kind,
                offset: *offset,
            });
        }
        if found.len() > MAX_BARE_EVENTS {
            self.violation(format!(
                "{} more bare line endings in one message",
                found.len() - MAX_BARE_EVENTS
            ));
        }
    }
}

/// `n` or `n LAST` (RFC 3030 §2).
fn parse_bdat(args: &str) -> Option<(usize, bool)> {
    let mut words = args.split(' ');
    let size = words.next()?;
    if size.is_empty() || !size.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let size = size.parse().ok()?;
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return None,
    };
    words.next().is_none().then_some((size, last))
}

/// Where DATA content ends, searching from `from` (a previous search's
/// `data.len()`, to scan a large message once). Returns `(body_len,
/// consumed)`: the body is `data[..body_len]` (last CRLF included) and the
/// terminator ends at `consumed`. The DATA command's own CRLF counts as the
/// CRLF before the terminator, so `.\r\n` first is an empty message. Only
/// `CRLF.CRLF` ends the data; `LF.LF`, `CRLF.LF`, `LF.CRLF` and `CR.CR` are
/// content (SMTP smuggling).
fn find_data_end(data: &[u8], from: usize) -> Option<(usize, usize)> {
    if data.starts_with(b".\r\n") {
        return Some((0, 3));
    }
    let start = from.saturating_sub(4).min(data.len());
    memchr::memmem::find(&data[start..], b"\r\n.\r\n").map(|p| (start + p + 2, start + p + 5))
}

/// Every bare LF (no CR before; the very first octet follows the DATA
/// line's LF, so an LF there is bare) and bare CR (no LF after).
fn bare_line_endings(data: &[u8]) -> Vec<(BareKind, usize)> {
    let mut found = Vec::new();
    for (i, &b) in data.iter().enumerate() {
        match b {
            b'\n' if i == 0 || data[i - 1] != b'\r' => found.push((BareKind::Lf, i)),
            b'\r' if data.get(i + 1) != Some(&b'\n') => found.push((BareKind::Cr, i)),
            _ => {}
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `input` in chunks of `size` and search like the session does.
    fn scan_in_chunks(input: &[u8], size: usize) -> Option<(Vec<u8>, Vec<u8>)> {
        let mut buf = Vec::new();
        let mut scanned = 0;
        for chunk in input.chunks(size) {
            buf.extend_from_slice(chunk);
            if let Some((body_len, consumed)) = find_data_end(&buf, scanned) {
                let body = buf[..body_len].to_vec();
                let rest = [&buf[consumed..], &input[buf.len()..]].concat();
                return Some((body, rest));
            }
            scanned = buf.len();
        }
        None
    }

    #[test]
    fn data_terminator_table_in_every_chunk_size() {
        type Case = (&'static [u8], Option<(&'static [u8], &'static [u8])>);
        let cases: &[Case] = &[
            (b".\r\n", Some((b"", b""))),
            (b".\r\nQUIT\r\n", Some((b"", b"QUIT\r\n"))),
            (b"a\r\n.\r\n", Some((b"a\r\n", b""))),
            (b"\r\n.\r\n", Some((b"\r\n", b""))),
            (b"..\r\n.\r\n", Some((b"..\r\n", b""))),
            (b".x\r\n.\r\nRSET\r\n", Some((b".x\r\n", b"RSET\r\n"))),
            (b"a\r\n..\r\nb\r\n.\r\n", Some((b"a\r\n..\r\nb\r\n", b""))),
            // SMTP smuggling vectors: none of these end the data.
            (b"a\n.\nb\r\n.\r\n", Some((b"a\n.\nb\r\n", b""))),
            (b"a\r\n.\nb\r\n.\r\n", Some((b"a\r\n.\nb\r\n", b""))),
            (b"a\n.\r\nb\r\n.\r\n", Some((b"a\n.\r\nb\r\n", b""))),
            (b"a\r.\r\nb\r\n.\r\n", Some((b"a\r.\r\nb\r\n", b""))),
            (b"a\r\n.\rb\r\n.\r\n", Some((b"a\r\n.\rb\r\n", b""))),
            (b"a\r\r\n.\r\n", Some((b"a\r\r\n", b""))),
            (b".\n", None),
            (b".\r", None),
            (b"a\r\n.\r", None),
            (b"a\r\n.\n", None),
            (b"", None),
        ];
        for (input, expected) in cases {
            for size in 1..=input.len().max(1) {
                let got = scan_in_chunks(input, size);
                let expected = expected.map(|(b, r)| (b.to_vec(), r.to_vec()));
                assert_eq!(
                    got,
                    expected,
                    "input {:?} in chunks of {size}",
                    String::from_utf8_lossy(input)
                );
            }
        }
    }

    #[test]
    fn data_terminator_is_found_once_across_pipelined_messages() {
        let input = b"one\r\n.\r\nMAIL FROM:<a@b>\r\n";
        assert_eq!(find_data_end(input, 0), Some((5, 8)));
        // A resumed search must not miss a terminator split across reads.
        let partial = b"x\r\n.";
        assert_eq!(find_data_end(partial, 0), None);
        let whole = b"x\r\n.\r\n";
        assert_eq!(find_data_end(whole, partial.len()), Some((3, 6)));
    }

    #[test]
    fn bare_line_ending_table() {
        assert!(bare_line_endings(b"a\r\nb\r\n").is_empty());
        assert!(bare_line_endings(b"").is_empty());
        assert_eq!(bare_line_endings(b"\nx\r\n"), [(BareKind::Lf, 0)]);
        assert_eq!(
            bare_line_endings(b"a\nb\rc\r\r\n"),
            [(BareKind::Lf, 1), (BareKind::Cr, 3), (BareKind::Cr, 5)]
        );
        assert_eq!(bare_line_endings(b"a\r"), [(BareKind::Cr, 1)]);
    }

    #[test]
    fn bdat_argument_parsing() {
        assert_eq!(parse_bdat("10"), Some((10, false)));
        assert_eq!(parse_bdat("0 LAST"), Some((0, true)));
        assert_eq!(parse_bdat("7 last"), Some((7, true)));
        assert_eq!(parse_bdat(""), None);
        assert_eq!(parse_bdat("-1"), None);
        assert_eq!(parse_bdat("+1"), None);
        assert_eq!(parse_bdat("1 FIRST"), None);
        assert_eq!(parse_bdat("1 LAST x"), None);
        assert_eq!(parse_bdat("99999999999999999999999"), None);
    }
}
