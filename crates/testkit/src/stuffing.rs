//! RFC 1939 §3 / RFC 5321 §4.5.2 dot-stuffing of multi-line bodies, as the
//! POP3 fake sends them and the SMTP fake and [`crate::LineClient`] read
//! them.

/// RFC 1939 §3 byte-stuffing: double a leading "." on every line, and make
/// sure the result ends with CRLF. The ".\r\n" terminator is NOT added.
pub fn dot_stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 8);
    let mut at_line_start = true;
    for &b in body {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Undo [`dot_stuff`] on a raw multi-line body as read by
/// [`crate::LineClient::read_multiline`]; the ".\r\n" terminator is
/// required and removed. `None` if it is missing.
pub fn dot_unstuff(raw: &[u8]) -> Option<Vec<u8>> {
    let body = if raw == b".\r\n" {
        &raw[..0]
    } else {
        raw.strip_suffix(b"\r\n.\r\n")
            .map(|b| &raw[..b.len() + 2])?
    };
    let mut out = Vec::with_capacity(body.len());
    let mut at_line_start = true;
    let mut i = 0;
    while i < body.len() {
        let b = body[i];
        if at_line_start && b == b'.' {
            i += 1;
            at_line_start = false;
            continue;
        }
        out.push(b);
        at_line_start = b == b'\n';
        i += 1;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stuffing_round_trips() {
        let body = b"From: a\r\n\r\n.hidden\r\n..two\r\nplain\r\n.\r\n";
        let stuffed = dot_stuff(body);
        assert_eq!(
            stuffed,
            b"From: a\r\n\r\n..hidden\r\n...two\r\nplain\r\n..\r\n".to_vec()
        );
        let mut framed = stuffed.clone();
        framed.extend_from_slice(b".\r\n");
        assert_eq!(dot_unstuff(&framed).as_deref(), Some(&body[..]));
        assert_eq!(dot_unstuff(b".\r\n").as_deref(), Some(&b""[..]));
        assert_eq!(dot_unstuff(b"abc\r\n"), None);
    }

    #[test]
    fn stuffing_adds_final_crlf() {
        assert_eq!(dot_stuff(b"no newline"), b"no newline\r\n".to_vec());
        assert_eq!(dot_stuff(b""), Vec::<u8>::new());
    }
}
