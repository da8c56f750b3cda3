//! Dev-only helpers for postern's tests.
//!
//! - [`TestPki`]: a CA and server leaf minted per run with rcgen, with rustls
//!   server/client configs built on the ring provider explicitly.
//! - [`FakePop3`]: a scripted POP3 upstream on `127.0.0.1:0` (plain,
//!   implicit TLS or STLS) that verifies USER/PASS, APOP, AUTH PLAIN and
//!   AUTH CRAM-MD5 for real, XOAUTH2 and OAUTHBEARER byte for byte against
//!   a [`BearerVerifier`], and logs [`Pop3Event`]s.
//! - [`FakeSmtp`]: a scripted SMTP submission upstream on `127.0.0.1:0`
//!   (plain, implicit TLS or STARTTLS) that verifies AUTH PLAIN, LOGIN and
//!   CRAM-MD5 for real, XOAUTH2 and OAUTHBEARER like the POP3 fake,
//!   records messages byte-exactly and logs [`SmtpEvent`]s.
//! - [`FakeImap`]: a scripted IMAP upstream on `127.0.0.1:0` (plain,
//!   implicit TLS or STARTTLS) that verifies LOGIN, AUTHENTICATE PLAIN,
//!   LOGIN and CRAM-MD5 for real, XOAUTH2 and OAUTHBEARER like the POP3
//!   fake, keeps a small shared mailbox model (LIST, SELECT, FETCH with
//!   real literals, STORE, EXPUNGE, APPEND of any size, IDLE) and logs
//!   [`ImapEvent`]s.
//! - [`FakeIdp`]: a scripted OAuth2 authorization server over HTTPS (device
//!   authorization, token endpoint with the device code, refresh and
//!   client credentials grants, introspection) whose [`BearerVerifier`]
//!   the fake upstreams check tokens with.
//! - [`LineClient`]: a CRLF line client (plain, TLS, in-place upgrade) to
//!   drive either the fakes or postern itself.
//! - Digest and SASL response helpers checked against the RFC 1939, RFC
//!   2195 and RFC 7628 examples.
//! - [`TempDir`]: a self-deleting temporary directory.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod auth;
mod bearer;
mod client;
mod fake;
mod imap;
mod oauth;
mod pki;
mod pop3;
mod rng;
mod sasl;
mod smtp;
mod stream;
mod stuffing;
mod tempdir;
mod unique;

pub use auth::{
    cram_md5_digest, cram_md5_response, login_base64, lower_hex, oauthbearer_response,
    rfc1939_apop_digest, sasl_plain_response, xoauth2_response,
};
pub use bearer::{
    BearerAttempt, BearerMechanism, BearerOutcome, BearerVerifier, SaslForm, DEFAULT_BEARER_ERROR,
    DEFAULT_OAUTHBEARER_HOST,
};
pub use client::{LineClient, DEFAULT_READ_TIMEOUT};
pub use fake::FakeSecurity;
pub use imap::{
    FakeImap, ImapEvent, ImapGreeting, ImapMessage, ImapMoment, ImapScript, ImapStarttls,
    LoggedImapEvent, INJECTED_CAPABILITY, STRAY_OK,
};
pub use oauth::{
    ClientAuth, DeviceOutcome, FakeIdp, GrantType, IdpClient, IdpEvent, IdpScript,
    IssuedRefreshToken, IssuedToken, LoggedIdpEvent, RefreshTokenState, DEFAULT_CLIENT_ID,
    DEVICE_CODE_GRANT,
};
pub use pki::{ring_provider, TestPki, DEFAULT_LEAF_NAMES, TEST_CA_COMMON_NAME};
pub use pop3::{
    CapaBehaviour, FakePop3, LoggedEvent, Pop3Event, Pop3Script, StlsBehaviour, RFC1939_TIMESTAMP,
    UNIQUE_TIMESTAMP,
};
pub use rng::Rng;
pub use smtp::{
    BareKind, DataEnd, EhloBehaviour, FakeSmtp, LoggedSmtpEvent, ReceivedMessage, SmtpEvent,
    SmtpScript, StarttlsBehaviour, FAKE_SMTP_HOST,
};
pub use stuffing::{dot_stuff, dot_unstuff};
pub use tempdir::TempDir;
