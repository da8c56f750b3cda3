//! postern's IMAP front end (RFC 9051, RFC 3501): postern speaks the
//! not-authenticated state itself, logs in upstream with the route's
//! method, then relays the authenticated session both ways.
//!
//! - [`proto`]: parsers and machines with no I/O (client commands and
//!   literals, server responses, capability rewriting, the upstream
//!   machines, the relay scanners);
//! - [`Imap`]: the [`postern_core::session::Protocol`] impl (I/O glue).

pub mod proto;
mod session;

pub use session::{Imap, ImapExtra};
