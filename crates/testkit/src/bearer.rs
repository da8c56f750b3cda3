//! The server side of the OAuth2 SASL mechanisms as both fakes check them:
//! XOAUTH2 (Google's and Microsoft's) and OAUTHBEARER (RFC 7628), checked
//! byte for byte against the one wire form a client must send, with the
//! token's owner asked of a [`BearerVerifier`]. Each fake maps the
//! [`BearerOutcome`] to its own replies and events.

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;

/// The JSON an upstream sends (base64) in its error challenge after a
/// refused token, unless the script says otherwise; the form Microsoft
/// and Google use.
pub const DEFAULT_BEARER_ERROR: &str =
    r#"{"status":"401","schemes":"bearer","scope":"https://mail.example/"}"#;

/// The `host=` an OAUTHBEARER client must send to a fake unless its script
/// says otherwise.
pub const DEFAULT_OAUTHBEARER_HOST: &str = "127.0.0.1";

/// Longest SASL response line in a bearer exchange, CRLF excluded: tokens
/// exceed 2,500 octets (Microsoft's are over 1 KB before base64), and
/// RFC 4954 §4's 12,288 octets is only a floor.
pub(crate) const BEARER_LINE_MAX: usize = 16 * 1024;

type UserOf = dyn Fn(&str) -> Option<String> + Send + Sync;

/// Who a bearer token belongs to, as an upstream asks its authorization
/// server: `Some(user)` for a token valid now, `None` otherwise. Cheap to
/// clone; [`crate::FakeIdp::verifier`] gives one backed by the fake IdP's
/// live token list.
#[derive(Clone)]
pub struct BearerVerifier(Arc<UserOf>);

impl BearerVerifier {
    /// A verifier answering with `user_of`.
    pub fn new(user_of: impl Fn(&str) -> Option<String> + Send + Sync + 'static) -> Self {
        Self(Arc::new(user_of))
    }

    /// A verifier that accepts exactly `token`, as `user`'s.
    pub fn fixed(token: &str, user: &str) -> Self {
        let (token, user) = (token.to_owned(), user.to_owned());
        Self::new(move |t| (t == token).then(|| user.clone()))
    }

    /// The user `token` is valid for now, if it is.
    pub fn user_of(&self, token: &str) -> Option<String> {
        (self.0)(token)
    }
}

impl fmt::Debug for BearerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerVerifier(..)")
    }
}

/// An OAuth2 SASL mechanism.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BearerMechanism {
    /// `XOAUTH2`: `user={U}\x01auth=Bearer {T}\x01\x01`.
    XOAuth2,
    /// `OAUTHBEARER` (RFC 7628):
    /// `n,a={U},\x01host={H}\x01port={P}\x01auth=Bearer {T}\x01\x01`.
    OAuthBearer,
}

impl BearerMechanism {
    /// The mechanism name as on the wire: `"XOAUTH2"` or `"OAUTHBEARER"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::XOAuth2 => "XOAUTH2",
            Self::OAuthBearer => "OAUTHBEARER",
        }
    }

    /// The mechanism named `name` (ASCII case-insensitive), if it is one.
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::XOAuth2, Self::OAuthBearer]
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(name))
    }

    /// The line a client must send after the server's error challenge:
    /// empty for XOAUTH2, `AQ==` (one `%x01`, RFC 7628 §3.2.3) for
    /// OAUTHBEARER.
    pub fn dummy_response(self) -> &'static str {
        match self {
            Self::XOAuth2 => "",
            Self::OAuthBearer => "AQ==",
        }
    }
}

impl fmt::Display for BearerMechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the client put its SASL response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaslForm {
    /// On the AUTH command line (`AUTH XOAUTH2 dXNlcj...`).
    InitialResponse,
    /// On its own line after the server's empty challenge (`+ ` / `334 `).
    Continuation,
}

/// How a fake judged a bearer response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BearerOutcome {
    /// The exact wire form, the script's user, and a token valid for that
    /// user now.
    Accepted,
    /// The exact wire form, but the token is not valid for the script's
    /// user (unknown, expired, revoked, someone else's) or the user is not
    /// the script's: why. The fake played its error challenge.
    Refused(String),
    /// Not the exact wire form (not base64, wrong layout, wrong `host=` or
    /// `port=`, a token that is not an RFC 6750 b64token): what was wrong.
    /// A client bug; also recorded as a client violation. No challenge.
    Malformed(String),
}

/// One XOAUTH2 or OAUTHBEARER response as a fake checked it. The token is
/// never recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BearerAttempt {
    /// Which mechanism.
    pub mechanism: BearerMechanism,
    /// Initial response or continuation.
    pub form: SaslForm,
    /// The user the client named, if the response got that far.
    pub user: Option<String>,
    /// The verdict.
    pub outcome: BearerOutcome,
}

/// What a fake expects of a bearer response.
pub(crate) struct Expected<'a> {
    pub(crate) user: &'a str,
    pub(crate) host: &'a str,
    pub(crate) port: u16,
    pub(crate) verifier: Option<&'a BearerVerifier>,
}

/// Judge one response (the base64 line as received); returns the user it
/// named, if any, and the verdict.
pub(crate) fn check(
    mechanism: BearerMechanism,
    response: &str,
    expected: &Expected<'_>,
) -> (Option<String>, BearerOutcome) {
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(response) else {
        return (None, BearerOutcome::Malformed("not base64".to_owned()));
    };
    let parsed = match mechanism {
        BearerMechanism::XOAuth2 => parse_xoauth2(&raw),
        BearerMechanism::OAuthBearer => parse_oauthbearer(&raw, expected.host, expected.port),
    };
    let (user, token) = match parsed {
        Ok(parts) => parts,
        Err((user, why)) => return (user, BearerOutcome::Malformed(why)),
    };
    let outcome = judge(&user, &token, expected);
    (Some(user), outcome)
}

fn judge(user: &str, token: &str, expected: &Expected<'_>) -> BearerOutcome {
    if user != expected.user {
        return BearerOutcome::Refused(format!(
            "user {user:?} is not the script's user {:?}",
            expected.user
        ));
    }
    let Some(verifier) = expected.verifier else {
        return BearerOutcome::Refused("the script has no bearer verifier".to_owned());
    };
    match verifier.user_of(token) {
        Some(owner) if owner == user => BearerOutcome::Accepted,
        Some(owner) => BearerOutcome::Refused(format!("token belongs to {owner:?}, not {user:?}")),
        None => BearerOutcome::Refused("token not valid (unknown, expired or revoked)".to_owned()),
    }
}

type Parsed = Result<(String, String), (Option<String>, String)>;

fn malformed(user: Option<&str>, why: impl Into<String>) -> Parsed {
    Err((user.map(str::to_owned), why.into()))
}

/// `user={U}\x01auth=Bearer {T}\x01\x01`, nothing more, nothing less.
fn parse_xoauth2(raw: &[u8]) -> Parsed {
    let Ok(text) = std::str::from_utf8(raw) else {
        return malformed(None, "XOAUTH2 string is not UTF-8");
    };
    let Some(rest) = text.strip_prefix("user=") else {
        return malformed(None, "XOAUTH2 string does not start with \"user=\"");
    };
    let Some((user, rest)) = rest.split_once('\x01') else {
        return malformed(None, "XOAUTH2 string has no ^A after the user");
    };
    if user.is_empty() {
        return malformed(None, "XOAUTH2 user is empty");
    }
    let Some(rest) = rest.strip_prefix("auth=Bearer ") else {
        return malformed(
            Some(user),
            "XOAUTH2 user is not followed by \"^Aauth=Bearer \"",
        );
    };
    let Some(token) = rest.strip_suffix("\x01\x01") else {
        return malformed(
            Some(user),
            "XOAUTH2 string does not end with the token and ^A^A",
        );
    };
    check_token(user, token)
}

/// `n,a={U},\x01host={H}\x01port={P}\x01auth=Bearer {T}\x01\x01`, with the
/// expected host and port, nothing more, nothing less.
fn parse_oauthbearer(raw: &[u8], host: &str, port: u16) -> Parsed {
    let Ok(text) = std::str::from_utf8(raw) else {
        return malformed(None, "OAUTHBEARER string is not UTF-8");
    };
    let Some(rest) = text.strip_prefix("n,a=") else {
        return malformed(None, "GS2 header does not start with \"n,a=\"");
    };
    let Some((saslname, rest)) = rest.split_once(',') else {
        return malformed(None, "GS2 header has no ',' after the authzid");
    };
    let Some(user) = decode_saslname(saslname) else {
        return malformed(
            None,
            "authzid is not a valid saslname (RFC 5801: only =2C and =3D)",
        );
    };
    if user.is_empty() {
        return malformed(None, "authzid is empty");
    }
    let Some(kvpairs) = rest
        .strip_prefix('\x01')
        .and_then(|r| r.strip_suffix("\x01\x01"))
    else {
        return malformed(
            Some(&user),
            "GS2 header is not followed by ^A, or the string does not end with ^A^A",
        );
    };
    let pairs: Vec<&str> = kvpairs.split('\x01').collect();
    let [host_kv, port_kv, auth_kv] = pairs.as_slice() else {
        return malformed(
            Some(&user),
            format!("{} kvpairs, expected host, port, auth", pairs.len()),
        );
    };
    let want_host = format!("host={host}");
    if *host_kv != want_host {
        return malformed(
            Some(&user),
            format!("first kvpair is {host_kv:?}, expected {want_host:?}"),
        );
    }
    let want_port = format!("port={port}");
    if *port_kv != want_port {
        return malformed(
            Some(&user),
            format!("second kvpair is {port_kv:?}, expected {want_port:?}"),
        );
    }
    let Some(token) = auth_kv.strip_prefix("auth=Bearer ") else {
        return malformed(
            Some(&user),
            "third kvpair does not start with \"auth=Bearer \"",
        );
    };
    check_token(&user, token)
}

/// RFC 5801 saslname: `,` is sent as `=2C` and `=` as `=3D`.
fn decode_saslname(name: &str) -> Option<String> {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(at) = rest.find('=') {
        out.push_str(&rest[..at]);
        let escape = rest.get(at..at + 3)?;
        out.push(match escape {
            "=2C" => ',',
            "=3D" => '=',
            _ => return None,
        });
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Some(out)
}

/// RFC 6750 §2.1 b64token: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" /
/// "+" / "/" ) *"="`.
fn check_token(user: &str, token: &str) -> Parsed {
    let body = token.trim_end_matches('=');
    let ok = !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b));
    if ok {
        Ok((user.to_owned(), token.to_owned()))
    } else {
        malformed(
            Some(user),
            format!(
                "token of {} octets is not an RFC 6750 b64token",
                token.len()
            ),
        )
    }
}

/// Base64 of the error challenge's JSON.
pub(crate) fn error_challenge(json: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{oauthbearer_response, xoauth2_response};

    const TOKEN: &str = "EwB4A8l6BAAU-tok.en_~+/==";

    fn expected(verifier: &BearerVerifier) -> Expected<'_> {
        Expected {
            user: "alice@example.test",
            host: "127.0.0.1",
            port: 995,
            verifier: Some(verifier),
        }
    }

    fn b64(raw: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(raw)
    }

    #[test]
    fn exact_forms_are_accepted() {
        let v = BearerVerifier::fixed(TOKEN, "alice@example.test");
        let e = expected(&v);
        let x = xoauth2_response("alice@example.test", TOKEN);
        assert_eq!(
            check(BearerMechanism::XOAuth2, &x, &e),
            (Some("alice@example.test".into()), BearerOutcome::Accepted)
        );
        let o = oauthbearer_response("alice@example.test", "127.0.0.1", 995, TOKEN);
        assert_eq!(
            check(BearerMechanism::OAuthBearer, &o, &e),
            (Some("alice@example.test".into()), BearerOutcome::Accepted)
        );
        // One mechanism's string is malformed for the other.
        assert!(matches!(
            check(BearerMechanism::OAuthBearer, &x, &e).1,
            BearerOutcome::Malformed(_)
        ));
    }

    #[test]
    fn refusals_name_the_reason() {
        let v = BearerVerifier::fixed(TOKEN, "bob@example.test");
        let e = expected(&v);
        let x = xoauth2_response("alice@example.test", TOKEN);
        let (_, outcome) = check(BearerMechanism::XOAuth2, &x, &e);
        assert!(
            matches!(&outcome, BearerOutcome::Refused(w) if w.contains("belongs to \"bob@example.test\"")),
            "{outcome:?}"
        );
        let x = xoauth2_response("bob@example.test", TOKEN);
        let (user, outcome) = check(BearerMechanism::XOAuth2, &x, &e);
        assert_eq!(user.as_deref(), Some("bob@example.test"));
        assert!(matches!(&outcome, BearerOutcome::Refused(w) if w.contains("script's user")));
        let x = xoauth2_response("alice@example.test", "other");
        let (_, outcome) = check(BearerMechanism::XOAuth2, &x, &e);
        assert!(matches!(&outcome, BearerOutcome::Refused(w) if w.contains("not valid")));
        let none = Expected {
            verifier: None,
            ..expected(&v)
        };
        let (_, outcome) = check(BearerMechanism::XOAuth2, &x, &none);
        assert!(matches!(&outcome, BearerOutcome::Refused(w) if w.contains("no bearer verifier")));
    }

    #[test]
    fn near_misses_are_malformed() {
        let v = BearerVerifier::fixed(TOKEN, "alice@example.test");
        let e = expected(&v);
        let bad_x = [
            format!("user=alice@example.test\x01auth=Bearer {TOKEN}\x01"),
            format!("user=alice@example.test\x01auth=bearer {TOKEN}\x01\x01"),
            format!("user=alice@example.test\x01auth=Bearer {TOKEN} \x01\x01"),
            format!("user=alice@example.test auth=Bearer {TOKEN}\x01\x01"),
            format!("User=alice@example.test\x01auth=Bearer {TOKEN}\x01\x01"),
            format!("user=\x01auth=Bearer {TOKEN}\x01\x01"),
            "user=alice@example.test\x01auth=Bearer \x01\x01".to_owned(),
            format!("user=alice@example.test\x01auth=Bearer {TOKEN}\x01\x01\n"),
        ];
        for raw in bad_x {
            let (_, outcome) = check(BearerMechanism::XOAuth2, &b64(&raw), &e);
            assert!(matches!(outcome, BearerOutcome::Malformed(_)), "{raw:?}");
        }
        assert_eq!(
            check(BearerMechanism::XOAuth2, "not base64!", &e),
            (None, BearerOutcome::Malformed("not base64".into()))
        );
        let bad_o = [
            format!("n,,\x01host=127.0.0.1\x01port=995\x01auth=Bearer {TOKEN}\x01\x01"),
            format!("y,a=alice@example.test,\x01host=127.0.0.1\x01port=995\x01auth=Bearer {TOKEN}\x01\x01"),
            format!("n,a=alice@example.test,\x01port=995\x01host=127.0.0.1\x01auth=Bearer {TOKEN}\x01\x01"),
            format!("n,a=alice@example.test,\x01host=localhost\x01port=995\x01auth=Bearer {TOKEN}\x01\x01"),
            format!("n,a=alice@example.test,\x01host=127.0.0.1\x01port=465\x01auth=Bearer {TOKEN}\x01\x01"),
            format!("n,a=alice@example.test,\x01auth=Bearer {TOKEN}\x01\x01"),
            format!("n,a=alice@example.test,\x01host=127.0.0.1\x01port=995\x01auth=Bearer {TOKEN}\x01"),
            format!("n,a=alice=example.test,\x01host=127.0.0.1\x01port=995\x01auth=Bearer {TOKEN}\x01\x01"),
        ];
        for raw in bad_o {
            let (_, outcome) = check(BearerMechanism::OAuthBearer, &b64(&raw), &e);
            assert!(matches!(outcome, BearerOutcome::Malformed(_)), "{raw:?}");
        }
    }

    #[test]
    fn saslname_escapes() {
        assert_eq!(decode_saslname("a=2Cb=3Dc").as_deref(), Some("a,b=c"));
        assert_eq!(decode_saslname("plain"), Some("plain".into()));
        assert_eq!(decode_saslname("a=2"), None);
        assert_eq!(decode_saslname("a=41"), None);
        let v = BearerVerifier::fixed(TOKEN, "o,dd=name");
        let e = Expected {
            user: "o,dd=name",
            ..expected(&v)
        };
        let o = oauthbearer_response("o,dd=name", "127.0.0.1", 995, TOKEN);
        assert_eq!(
            check(BearerMechanism::OAuthBearer, &o, &e).1,
            BearerOutcome::Accepted
        );
    }

    #[test]
    fn mechanism_names() {
        assert_eq!(
            BearerMechanism::from_name("xoauth2"),
            Some(BearerMechanism::XOAuth2)
        );
        assert_eq!(
            BearerMechanism::from_name("OAuthBearer"),
            Some(BearerMechanism::OAuthBearer)
        );
        assert_eq!(BearerMechanism::from_name("PLAIN"), None);
        assert_eq!(BearerMechanism::OAuthBearer.dummy_response(), "AQ==");
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(BearerMechanism::OAuthBearer.dummy_response())
                .expect("base64"),
            b"\x01"
        );
        assert_eq!(BearerMechanism::XOAuth2.dummy_response(), "");
    }
}
