//! postern's SMTP front end: a legacy client or device speaks plain SMTP to
//! postern; postern submits through the provider with AUTH PLAIN, LOGIN or
//! CRAM-MD5 over plain TCP, SMTPS or STARTTLS.
//!
//! `proto` holds the protocol logic with no I/O; `session` plugs it into
//! core's session skeleton. The invariants: postern's 354 follows the upstream's 354; the
//! final reply to a message is the upstream's own; a message the client did
//! not finish is never terminated upstream; bare CR/LF never pass.
#![forbid(unsafe_code)]

pub mod proto;
pub mod session;

pub use session::Smtp;
