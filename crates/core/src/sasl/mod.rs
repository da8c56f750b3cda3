//! SASL pieces shared by the POP3 and SMTP front ends: PLAIN (RFC 4616),
//! LOGIN, and CRAM-MD5 (RFC 2195), in both directions. Pure functions.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{KeyInit, Mac};
use zeroize::Zeroizing;

use crate::login::{Login, LoginRefused};
use crate::secret::Secret;

mod server;

pub use server::{numbered_challenge, Mechanism, Mechanisms, Refused, SaslServer, ServerStep};

/// The largest CRAM-MD5 challenge postern accepts from a server, decoded.
pub const MAX_CHALLENGE: usize = 1024;

/// Why a SASL exchange failed on postern's side.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    /// The peer's data was not valid base64.
    #[error("the data is not valid base64")]
    Base64,
    /// The PLAIN message did not have three NUL-separated parts.
    #[error("the PLAIN message is malformed")]
    PlainMalformed,
    /// PLAIN with an authorization identity that differs from the login.
    #[error("acting as another user (authorization identity) is not supported")]
    AuthzidDiffers,
    /// The login itself is unusable.
    #[error("{0}")]
    Login(#[from] LoginRefused),
    /// A CRAM-MD5 challenge that is empty, too long or not printable.
    #[error("the server's CRAM-MD5 challenge is empty, too long or not printable")]
    BadChallenge,
}

/// Decodes base64 into zeroizing memory (it may hold a password).
pub fn decode(b64: &[u8]) -> Result<Zeroizing<Vec<u8>>, SaslError> {
    let trimmed = trim_ascii(b64);
    if trimmed == b"=" {
        return Ok(Zeroizing::new(Vec::new()));
    }
    STANDARD
        .decode(trimmed)
        .map(Zeroizing::new)
        .map_err(|_| SaslError::Base64)
}

/// Encodes bytes as base64.
pub fn encode(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &b[start..end]
}

/// Parses a client's PLAIN message (`authzid NUL authcid NUL passwd`, RFC 4616 §2).
/// An authorization identity different from the login is refused.
pub fn parse_plain(decoded: &[u8]) -> Result<Login, SaslError> {
    let mut parts = decoded.splitn(3, |b| *b == 0);
    let (Some(authzid), Some(authcid), Some(passwd)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::PlainMalformed);
    };
    if !authzid.is_empty() && authzid != authcid {
        return Err(SaslError::AuthzidDiffers);
    }
    Ok(Login::new(authcid, Secret::from(passwd))?)
}

/// The base64 PLAIN initial response for a login (empty authzid).
pub fn plain_response(login: &Login) -> Zeroizing<String> {
    let mut raw = Zeroizing::new(Vec::with_capacity(
        login.user().len() + login.password().expose().len() + 2,
    ));
    raw.push(0);
    raw.extend_from_slice(login.user().as_bytes());
    raw.push(0);
    raw.extend_from_slice(login.password().expose());
    Zeroizing::new(STANDARD.encode(&raw[..]))
}

/// The base64 XOAUTH2 client response (Google's and Microsoft's
/// mechanism): `user={U}^Aauth=Bearer {T}^A^A`; the login's secret is the
/// access token.
pub fn xoauth2_response(login: &Login) -> Zeroizing<String> {
    let mut raw = Zeroizing::new(Vec::with_capacity(login.password().expose().len() + 64));
    raw.extend_from_slice(b"user=");
    raw.extend_from_slice(login.user().as_bytes());
    raw.extend_from_slice(b"\x01auth=Bearer ");
    raw.extend_from_slice(login.password().expose());
    raw.extend_from_slice(b"\x01\x01");
    Zeroizing::new(STANDARD.encode(&raw[..]))
}

/// The base64 OAUTHBEARER client response (RFC 7628 §3.1): a GS2 header
/// naming the user, then the host and port connected to and the token:
/// `n,a={U},^Ahost={H}^Aport={P}^Aauth=Bearer {T}^A^A`. Commas and `=` in
/// the user name are escaped as RFC 5801 §4 requires (`=2C`, `=3D`).
pub fn oauthbearer_response(login: &Login, host: &str, port: u16) -> Zeroizing<String> {
    let user = login.user().replace('=', "=3D").replace(',', "=2C");
    let mut raw = Zeroizing::new(Vec::with_capacity(login.password().expose().len() + 96));
    raw.extend_from_slice(
        format!("n,a={user},\x01host={host}\x01port={port}\x01auth=Bearer ").as_bytes(),
    );
    raw.extend_from_slice(login.password().expose());
    raw.extend_from_slice(b"\x01\x01");
    Zeroizing::new(STANDARD.encode(&raw[..]))
}

/// What the client answers a bearer mechanism's error challenge with, so
/// the server can send its final failure (RFC 7628 §3.2.3 for OAUTHBEARER:
/// a single `^A`; XOAUTH2: an empty response).
pub fn bearer_error_ack(oauthbearer: bool) -> &'static [u8] {
    if oauthbearer {
        b"AQ=="
    } else {
        b""
    }
}

/// The server's bearer error challenge (base64 JSON such as
/// `{"status":"401","schemes":"bearer","scope":"..."}`) in words for the
/// log: its `status` and `scope`, never more than 200 characters.
pub fn bearer_error_summary(b64: &[u8]) -> String {
    let Ok(raw) = STANDARD.decode(trim_ascii(b64)) else {
        return "an error challenge that is not base64".to_owned();
    };
    let field = |name: &str| -> Option<String> {
        let v: serde_json::Value = serde_json::from_slice(&raw).ok()?;
        v.get(name).map(|x| match x {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    };
    let out = match (field("status"), field("scope")) {
        (None, None) => format!("\"{}\"", String::from_utf8_lossy(&raw).escape_debug()),
        (status, scope) => format!(
            "status={} scope={}",
            status.as_deref().unwrap_or("-"),
            scope.as_deref().unwrap_or("-")
        ),
    };
    out.chars().take(200).collect()
}

/// Decodes and checks a server's CRAM-MD5 challenge (the text after `+ `).
pub fn cram_md5_challenge(b64: &[u8]) -> Result<Vec<u8>, SaslError> {
    let raw = STANDARD
        .decode(trim_ascii(b64))
        .map_err(|_| SaslError::BadChallenge)?;
    if raw.is_empty() || raw.len() > MAX_CHALLENGE || raw.iter().any(|b| !(0x20..0x7f).contains(b))
    {
        return Err(SaslError::BadChallenge);
    }
    Ok(raw)
}

/// Lowercase hex HMAC-MD5 of `challenge` keyed with `password` (RFC 2195 §2).
pub fn cram_md5_digest(password: &Secret, challenge: &[u8]) -> Zeroizing<String> {
    let mut mac = match hmac::Hmac::<md5::Md5>::new_from_slice(password.expose()) {
        Ok(m) => m,
        // HMAC takes keys of any length; this arm cannot be reached.
        Err(_) => return Zeroizing::new(String::new()),
    };
    mac.update(challenge);
    Zeroizing::new(hex(&mac.finalize().into_bytes()))
}

/// The base64 CRAM-MD5 response: `user SP hex-digest`.
pub fn cram_md5_response(login: &Login, challenge: &[u8]) -> Zeroizing<String> {
    let digest = cram_md5_digest(login.password(), challenge);
    let raw = Zeroizing::new(format!("{} {}", login.user(), &*digest));
    Zeroizing::new(STANDARD.encode(raw.as_bytes()))
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(b64: &str) -> Vec<u8> {
        STANDARD.decode(b64).expect("base64")
    }

    #[test]
    fn xoauth2_matches_the_documented_format() {
        // Google's XOAUTH2 documentation example.
        let login = Login::new(
            b"someuser@example.com",
            Secret::from("ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg"),
        )
        .expect("login");
        let ir = xoauth2_response(&login);
        assert_eq!(
            *ir,
            "dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRjMk52YjNSbGNrQmhkSFJoZG1semRHRXVZMjl0Q2cBAQ=="
        );
    }

    #[test]
    fn oauthbearer_matches_rfc7628() {
        let login = Login::new(
            b"user@example.com",
            Secret::from("vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg=="),
        )
        .expect("login");
        let ir = oauthbearer_response(&login, "server.example.com", 143);
        assert_eq!(
            decoded(&ir),
            b"n,a=user@example.com,\x01host=server.example.com\x01port=143\x01auth=Bearer vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg==\x01\x01"
        );
        // RFC 5801 §4: ',' and '=' in the authzid are escaped.
        let odd = Login::new(b"a,b=c", Secret::from("t")).expect("login");
        assert!(decoded(&oauthbearer_response(&odd, "h", 1)).starts_with(b"n,a=a=2Cb=3Dc,\x01"));
        assert_eq!(
            STANDARD.decode(bearer_error_ack(true)).expect("b64"),
            b"\x01"
        );
        assert_eq!(bearer_error_ack(false), b"");
    }

    #[test]
    fn bearer_error_challenges_are_summarised_without_echoing_blobs() {
        let json = STANDARD
            .encode(r#"{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}"#);
        assert_eq!(
            bearer_error_summary(json.as_bytes()),
            "status=401 scope=https://mail.google.com/"
        );
        assert_eq!(
            bearer_error_summary(b"!!"),
            "an error challenge that is not base64"
        );
        let long = STANDARD.encode("x".repeat(1000));
        assert!(bearer_error_summary(long.as_bytes()).chars().count() <= 200);
    }

    #[test]
    fn rfc2195_cram_md5_vector() {
        let challenge = b"<1896.697170952@postoffice.reston.mci.net>";
        let b64 = STANDARD.encode(challenge);
        let parsed = cram_md5_challenge(b64.as_bytes()).expect("valid challenge");
        assert_eq!(parsed, challenge);
        let digest = cram_md5_digest(&Secret::from("tanstaaftanstaaf"), &parsed);
        assert_eq!(&*digest, "b913a602c7eda7a495b4e6e7334d3890");
        let login = Login::new(b"tim", Secret::from("tanstaaftanstaaf")).expect("login");
        let resp = cram_md5_response(&login, &parsed);
        // RFC 2195 §2 gives this exact base64 response.
        assert_eq!(&*resp, "dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw");
    }

    #[test]
    fn bad_challenges_are_refused() {
        for bad in [
            "",
            "!!!notbase64",
            &STANDARD.encode("a\0b"),
            &STANDARD.encode("x".repeat(2000)),
        ] {
            assert_eq!(
                cram_md5_challenge(bad.as_bytes()),
                Err(SaslError::BadChallenge),
                "{bad}"
            );
        }
    }

    #[test]
    fn plain_round_trip_and_authzid_rules() {
        let login = Login::new(b"tim", Secret::from("pass word")).expect("login");
        let b64 = plain_response(&login);
        let decoded = decode(b64.as_bytes()).expect("b64");
        assert_eq!(&decoded[..], b"\0tim\0pass word");
        let back = parse_plain(&decoded).expect("parse");
        assert_eq!(back.user(), "tim");
        assert_eq!(back.password().expose(), b"pass word");
        assert!(
            parse_plain(b"tim\0tim\0p").is_ok(),
            "authzid equal to authcid"
        );
        assert_eq!(
            parse_plain(b"root\0tim\0p").err(),
            Some(SaslError::AuthzidDiffers)
        );
        assert_eq!(
            parse_plain(b"tim\0p").err(),
            Some(SaslError::PlainMalformed)
        );
        assert!(matches!(
            parse_plain(b"\0tim\0p\r\nDELE 1"),
            Err(SaslError::Login(_))
        ));
        assert_eq!(decode(b"=").expect("empty").len(), 0);
        assert_eq!(decode(b"*!").err(), Some(SaslError::Base64));
    }
}
