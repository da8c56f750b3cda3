//! Reference implementations of the mail authentication digests, checked
//! against the RFC test vectors. The fake servers verify with these, and
//! tests can use them to compute what a correct client must send.

use std::fmt::Write as _;

use base64::Engine as _;
use hmac::{Hmac, KeyInit as _, Mac as _};
use md5::{Digest as _, Md5};

/// Lowercase hex of `bytes`.
pub fn lower_hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// RFC 1939 §7 APOP digest: lowercase hex MD5 of `timestamp` (including its
/// angle brackets, exactly as in the greeting) followed by `password`.
pub fn rfc1939_apop_digest(timestamp: &str, password: &str) -> String {
    let mut md5 = Md5::new();
    md5.update(timestamp.as_bytes());
    md5.update(password.as_bytes());
    lower_hex(&md5.finalize())
}

/// RFC 2195 CRAM-MD5 digest: lowercase hex HMAC-MD5 keyed with `password`
/// over `challenge` (the decoded challenge, angle brackets included).
pub fn cram_md5_digest(password: &str, challenge: &str) -> String {
    let mut mac =
        Hmac::<Md5>::new_from_slice(password.as_bytes()).expect("HMAC takes any key length");
    mac.update(challenge.as_bytes());
    lower_hex(&mac.finalize().into_bytes())
}

/// RFC 2195 CRAM-MD5 client response as sent on the wire: base64 of
/// `"<user> <hex digest>"`.
pub fn cram_md5_response(user: &str, password: &str, challenge: &str) -> String {
    let line = format!("{user} {}", cram_md5_digest(password, challenge));
    base64::engine::general_purpose::STANDARD.encode(line)
}

/// RFC 4616 PLAIN response as sent on the wire: base64 of
/// `authzid NUL authcid NUL password`.
pub fn sasl_plain_response(authzid: &str, authcid: &str, password: &str) -> String {
    let raw = format!("{authzid}\0{authcid}\0{password}");
    base64::engine::general_purpose::STANDARD.encode(raw)
}

/// Base64 of `s`, as a SASL LOGIN (draft-murchison-sasl-login) client
/// sends its user name and password, and as the server's `Username:` /
/// `Password:` prompts are encoded.
pub fn login_base64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// XOAUTH2 client response as sent on the wire: base64 of
/// `user={user}\x01auth=Bearer {token}\x01\x01`.
pub fn xoauth2_response(user: &str, token: &str) -> String {
    let raw = format!("user={user}\x01auth=Bearer {token}\x01\x01");
    base64::engine::general_purpose::STANDARD.encode(raw)
}

/// OAUTHBEARER (RFC 7628 §3.1) client response as sent on the wire: base64
/// of `n,a={user},\x01host={host}\x01port={port}\x01auth=Bearer
/// {token}\x01\x01`, the user escaped as an RFC 5801 saslname (`,` as
/// `=2C`, `=` as `=3D`).
pub fn oauthbearer_response(user: &str, host: &str, port: u16, token: &str) -> String {
    let saslname = user.replace('=', "=3D").replace(',', "=2C");
    let raw =
        format!("n,a={saslname},\x01host={host}\x01port={port}\x01auth=Bearer {token}\x01\x01");
    base64::engine::general_purpose::STANDARD.encode(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1939_apop_vector() {
        assert_eq!(
            rfc1939_apop_digest("<1896.697170952@dbc.mtview.ca.us>", "tanstaaf"),
            "c4c9334bac560ecc979e58001b3e22fb"
        );
    }

    #[test]
    fn rfc2195_cram_md5_vector() {
        let challenge = "<1896.697170952@postoffice.reston.mci.net>";
        assert_eq!(
            cram_md5_digest("tanstaaftanstaaf", challenge),
            "b913a602c7eda7a495b4e6e7334d3890"
        );
        // RFC 2195 §2 shows the encoded challenge and response verbatim.
        assert_eq!(
            base64::engine::general_purpose::STANDARD.encode(challenge),
            "PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2UucmVzdG9uLm1jaS5uZXQ+"
        );
        assert_eq!(
            cram_md5_response("tim", "tanstaaftanstaaf", challenge),
            "dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw"
        );
    }

    #[test]
    fn plain_response_layout() {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(sasl_plain_response("", "tim", "tanstaaf"))
            .expect("valid base64");
        assert_eq!(decoded, b"\0tim\0tanstaaf");
    }

    #[test]
    fn bearer_response_layouts() {
        let decode = |s: String| {
            base64::engine::general_purpose::STANDARD
                .decode(s)
                .expect("valid base64")
        };
        // Google's documented example (XOAUTH2 protocol page).
        assert_eq!(
            xoauth2_response("someuser@example.com", "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg"),
            "dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRjMk52YjNSbGNrQmhkSFJoZG1semRHRXVZMjl0Q2cBAQ=="
        );
        // RFC 7628 §4.1's example, with an authzid.
        assert_eq!(
            decode(oauthbearer_response("user@example.com", "server.example.com", 143, "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==")),
            b"n,a=user@example.com,\x01host=server.example.com\x01port=143\x01auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\x01\x01"
        );
        assert_eq!(
            decode(oauthbearer_response("a,b=c", "h", 1, "t")),
            b"n,a=a=2Cb=3Dc,\x01host=h\x01port=1\x01auth=Bearer t\x01\x01"
        );
    }

    #[test]
    fn login_prompts_and_answers() {
        // The two prompts every LOGIN server sends, verbatim on the wire.
        assert_eq!(login_base64("Username:"), "VXNlcm5hbWU6");
        assert_eq!(login_base64("Password:"), "UGFzc3dvcmQ6");
        assert_eq!(login_base64("tim"), "dGlt");
        assert_eq!(login_base64(""), "");
        let spaced = base64::engine::general_purpose::STANDARD
            .decode(login_base64("pass with spaces"))
            .expect("valid base64");
        assert_eq!(spaced, b"pass with spaces");
    }
}
