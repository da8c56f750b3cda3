//! The server side of SASL as both fakes check it: decoding responses,
//! verifying PLAIN and CRAM-MD5 answers for the one scripted account for
//! real, and minting fresh challenges. Each fake maps a [`Verdict`] to
//! its own replies and events.

use base64::Engine as _;

use crate::auth::cram_md5_digest;
use crate::unique::{stamp, Stamp};

/// What a SASL response proved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Right user, right secret.
    Accepted,
    /// Well-formed, but wrong credentials (or a malformed message inside
    /// valid base64).
    Rejected,
    /// Not base64 (or, for CRAM-MD5, not UTF-8 inside).
    Undecodable,
}

impl Verdict {
    fn of(ok: bool) -> Self {
        if ok {
            Self::Accepted
        } else {
            Self::Rejected
        }
    }
}

/// Decode a SASL response; RFC 4954 §4 / RFC 5034 §4: `=` is an empty
/// response.
pub(crate) fn decode(response: &str) -> Option<Vec<u8>> {
    if response == "=" {
        return Some(Vec::new());
    }
    base64::engine::general_purpose::STANDARD
        .decode(response)
        .ok()
}

/// RFC 4616 PLAIN: `authzid NUL authcid NUL password`, where an authzid,
/// if any, must equal the authcid.
pub(crate) fn check_plain(response: &str, user: &str, password: &str) -> Verdict {
    let Some(decoded) = decode(response) else {
        return Verdict::Undecodable;
    };
    let parts: Vec<&[u8]> = decoded.split(|b| *b == 0).collect();
    let [authzid, authcid, given] = parts.as_slice() else {
        return Verdict::Rejected;
    };
    Verdict::of(
        *authcid == user.as_bytes()
            && *given == password.as_bytes()
            && (authzid.is_empty() || authzid == authcid),
    )
}

/// RFC 2195 CRAM-MD5: `user SP lower-hex-digest` for `challenge`.
pub(crate) fn check_cram(response: &str, challenge: &str, user: &str, password: &str) -> Verdict {
    let Some(decoded) = decode(response).and_then(|d| String::from_utf8(d).ok()) else {
        return Verdict::Undecodable;
    };
    // RFC 2195 §2: the user name may contain spaces; the digest is the last
    // word, lower-case hex.
    let Some((name, digest)) = decoded.rsplit_once(' ') else {
        return Verdict::Rejected;
    };
    Verdict::of(name == user && digest == cram_md5_digest(password, challenge))
}

/// A fresh RFC 2195-style challenge, `<digits.digits@fake.test>` (also the
/// POP3 fake's APOP timestamp).
pub(crate) fn fresh_challenge() -> String {
    let Stamp { pid, n, nanos } = stamp();
    format!("<{pid}{n}.{nanos}@fake.test>")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{cram_md5_response, sasl_plain_response};

    #[test]
    fn decoding() {
        assert_eq!(decode("="), Some(Vec::new()));
        assert_eq!(decode("YQ=="), Some(b"a".to_vec()));
        assert_eq!(decode("not base64!"), None);
    }

    #[test]
    fn plain_verdicts() {
        let check = |r: &str| check_plain(r, "tim", "tanstaaf");
        assert_eq!(
            check(&sasl_plain_response("", "tim", "tanstaaf")),
            Verdict::Accepted
        );
        assert_eq!(
            check(&sasl_plain_response("tim", "tim", "tanstaaf")),
            Verdict::Accepted
        );
        assert_eq!(
            check(&sasl_plain_response("bob", "tim", "tanstaaf")),
            Verdict::Rejected
        );
        assert_eq!(
            check(&sasl_plain_response("", "tim", "wrong")),
            Verdict::Rejected
        );
        assert_eq!(check("="), Verdict::Rejected);
        assert_eq!(check("not base64!"), Verdict::Undecodable);
    }

    #[test]
    fn cram_verdicts() {
        let challenge = fresh_challenge();
        let check = |r: &str| check_cram(r, &challenge, "tim", "tanstaaf");
        assert_eq!(
            check(&cram_md5_response("tim", "tanstaaf", &challenge)),
            Verdict::Accepted
        );
        assert_eq!(
            check(&cram_md5_response("tim", "wrong", &challenge)),
            Verdict::Rejected
        );
        assert_eq!(
            check(&cram_md5_response("tom", "tanstaaf", &challenge)),
            Verdict::Rejected
        );
        assert_eq!(check("="), Verdict::Rejected);
        assert_eq!(check("not base64!"), Verdict::Undecodable);
        assert_ne!(challenge, fresh_challenge());
    }
}
