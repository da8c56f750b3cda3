//! End-to-end: OAuth2 upstreams. The real gateway (in-process, and the
//! `postern` binary for `oauth login`, `oauth status`, `check` and a
//! restart) against a fake identity provider over HTTPS and fake POP3/SMTP
//! upstreams that check every XOAUTH2 / OAUTHBEARER string byte for byte
//! against the tokens the identity provider issued.
//!
//! - `matrix`: both mechanisms × POP3/SMTP × tls/starttls, the SASL form;
//! - `refresh`: short-lived tokens, 50 sessions, one token request;
//! - `retry`: a refused token is answered, replaced once, then temporary;
//! - `device_code`: `postern oauth login`, the store, rotation, restart;
//! - `consent`: `invalid_grant`, `oauth status`, wrong local passwords;
//! - `device`: an SMTP device with no AUTH through an XOAUTH2 upstream;
//! - `refusals`: configurations `postern check` refuses;
//! - `reload`: a reload keeps the cached token and applies new settings.

#[path = "../common/mod.rs"]
mod common;
mod setup;

mod consent;
mod device;
mod device_code;
mod matrix;
mod refresh;
mod refusals;
mod reload;
mod retry;
