//! Bytes on the wire shared by the fake upstreams and the load generator:
//! the test message and the end-of-data scanner.

/// POP3 multi-line and SMTP DATA end with CRLF "." CRLF (RFC 1939 §3,
/// RFC 5321 §4.1.1.4).
pub const END: &[u8] = b"\r\n.\r\n";

/// Finds the end of a multi-line body or of message data across reads.
/// It starts as if a CRLF had just been seen (the status line or the DATA
/// command ended with one), so an empty body `.\r\n` is found too.
#[derive(Debug, Clone)]
pub struct EndFinder {
    /// The last bytes seen (at most `END.len() - 1`).
    carry: [u8; 4],
    carried: usize,
    finder: memchr::memmem::Finder<'static>,
}

impl Default for EndFinder {
    fn default() -> Self {
        Self {
            carry: [b'\r', b'\n', 0, 0],
            carried: 2,
            finder: memchr::memmem::Finder::new(END),
        }
    }
}

impl EndFinder {
    /// Feeds the next chunk; `Some(n)` when the end is within it, `n`
    /// being the bytes of the chunk up to and including the end.
    pub fn feed(&mut self, chunk: &[u8]) -> Option<usize> {
        // The end may straddle the previous chunk: look at carry + head.
        let head = &chunk[..chunk.len().min(END.len() - 1)];
        let mut joint = [0u8; 8];
        joint[..self.carried].copy_from_slice(&self.carry[..self.carried]);
        joint[self.carried..self.carried + head.len()].copy_from_slice(head);
        let joint = &joint[..self.carried + head.len()];
        if let Some(at) = self.finder.find(joint) {
            return Some(at + END.len() - self.carried);
        }
        if let Some(at) = self.finder.find(chunk) {
            return Some(at + END.len());
        }
        self.remember(chunk);
        None
    }

    fn remember(&mut self, chunk: &[u8]) {
        let keep = END.len() - 1;
        if chunk.len() >= keep {
            self.carry.copy_from_slice(&chunk[chunk.len() - keep..]);
            self.carried = keep;
        } else {
            let mut all = [0u8; 8];
            all[..self.carried].copy_from_slice(&self.carry[..self.carried]);
            all[self.carried..self.carried + chunk.len()].copy_from_slice(chunk);
            let total = self.carried + chunk.len();
            let from = total.saturating_sub(keep);
            self.carried = total - from;
            self.carry[..self.carried].copy_from_slice(&all[from..total]);
        }
    }
}

/// A message body of exactly `len` bytes (at least 3): CRLF-terminated
/// lines of 76 printable characters, none starting with `.`, so neither
/// side has to dot-stuff it and the end marker appears only after it.
pub fn message_body(len: usize) -> Vec<u8> {
    const LINE: usize = 78;
    let len = len.max(3);
    let mut out = Vec::with_capacity(len);
    let mut remaining = len;
    let mut n = 0usize;
    while remaining > 0 {
        let mut line = remaining.min(LINE);
        // Never leave a tail too short for one character and CRLF.
        if (1..3).contains(&(remaining - line)) {
            line = remaining - 3;
        }
        for i in 0..line - 2 {
            out.push(b'a' + ((n + i) % 26) as u8);
        }
        out.extend_from_slice(b"\r\n");
        remaining -= line;
        n += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find_in_chunks(data: &[u8], size: usize) -> Option<usize> {
        let mut f = EndFinder::default();
        let mut offset = 0;
        for chunk in data.chunks(size) {
            if let Some(n) = f.feed(chunk) {
                return Some(offset + n);
            }
            offset += chunk.len();
        }
        None
    }

    #[test]
    fn end_found_in_every_chunk_size() {
        let cases: &[(&[u8], Option<usize>)] = &[
            (b".\r\n", Some(3)),
            (b"abc\r\n.\r\n", Some(8)),
            (b"abc\r\n.\r\nNEXT", Some(8)),
            (b"a\r\n..\r\n.\r\n", Some(10)),
            (b"abc\r\n.x\r\n", None),
            (b"\r\n\r\n", None),
            (b"x.\r\n", None),
        ];
        for (data, want) in cases {
            for size in 1..=data.len() + 1 {
                assert_eq!(find_in_chunks(data, size), *want, "{data:?} in {size}s");
            }
        }
    }

    #[test]
    fn body_has_exact_length_and_no_early_end() {
        for len in [
            3, 4, 5, 77, 78, 79, 80, 81, 156, 157, 158, 1000, 4096, 65_537,
        ] {
            let body = message_body(len);
            assert_eq!(body.len(), len);
            assert!(body.ends_with(b"\r\n"));
            assert!(body.split(|b| *b == b'\n').all(|l| !l.starts_with(b".")));
            let mut full = body.clone();
            full.extend_from_slice(b".\r\n");
            for size in [1, 2, 3, 7, 4096, 1 << 20] {
                assert_eq!(
                    find_in_chunks(&full, size),
                    Some(len + 3),
                    "{len} in {size}s"
                );
            }
        }
    }
}
