//! postern's POP3 front end: a legacy client speaks plain POP3 to postern;
//! postern logs in to the real server with USER/PASS, APOP, SASL PLAIN or
//! CRAM-MD5, over plain TCP, implicit TLS or STLS, then relays the
//! transaction state byte for byte.
//!
//! `proto` holds the protocol logic with no I/O; `session` plugs it into
//! core's session skeleton (one [`postern_core::session::Protocol`] impl).
#![forbid(unsafe_code)]

pub mod proto;
pub mod session;

pub use session::Pop3;
