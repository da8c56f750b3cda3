//! IMAP without I/O: parsers and machines that take bytes and return
//! decisions; the session (`crate::session`) owns the sockets.
//!
//! ```text
//!  client ──lines, literals──► command::CommandReader ──Command──► client::NotAuthenticated
//!                                                                    │ Step::Login
//!  upstream ◄──────────── upstream::Connect ─► Ready::login ─► LoginMachine ─► LoginDone
//!                                                                    │ LoggedIn
//!  client ◄──► relay::ClientScanner / relay::ServerScanner ◄──► upstream   (authenticated state)
//! ```
//!
//! - [`command`]: client command assembly before login (tags, atoms,
//!   quoted strings, `{n}`/`{n+}` literals, caps checked before reading);
//! - [`client`]: the not-authenticated state postern speaks itself;
//! - [`capability`]: capability lists and their rewriting, both sides of
//!   login;
//! - [`response`]: server response lines and the login-phase framer;
//! - [`upstream`]: the upstream connect and login machines (core's
//!   [`postern_core::upstream::Machine`]);
//! - [`relay`]: the scanners of the authenticated-state relay.
//!
//! Where this differs from the shape first planned, and why:
//!
//! - `CommandKind::Authenticate::initial` is a [`postern_core::Secret`],
//!   not a `Vec<u8>`: it is base64 of credentials and must not show in
//!   `Debug`.
//! - The not-authenticated machine is [`client::NotAuthenticated`] (the
//!   RFC's name for the state); `Step::StartTls`/`Step::Logout` carry only
//!   the tag as planned, and [`client::starttls_go_ahead`] and
//!   [`client::logout`] build what the session writes for them.
//! - An HTTP request line is refused by the [`command::CommandReader`]
//!   (a fatal `Assembled::Bad`, `* BYE`), since the reader sees lines and
//!   the machine only commands; `Step::Close` is what the machine answers
//!   after [`client::MAX_BAD_COMMANDS`] `BAD`s.
//! - Before login postern advertises `LITERAL-`, not `LITERAL+`: it caps
//!   literals there, and `LITERAL+` would promise non-synchronising
//!   literals of any size.
//! - The relay scanners work on the session's unconsumed buffer and may
//!   answer `NeedMore` (nothing consumed) at a line start; the server
//!   scanner's `Out::Replace` says how many octets it replaces, and
//!   `Out::Completion` hands tagged completions to the client scanner, so
//!   a synchronising literal the server refused (`NO [TRYCREATE]` to an
//!   APPEND) does not swallow the client's next command. Only the lines
//!   postern holds are bounded (64 KiB); lines passed through are not,
//!   since nothing of them is kept.
//! - The client scanner reports each command's [`relay::Verb`] (the
//!   commands the relay cares about, not the raw name) and makes the
//!   refusal itself: `ClientOut::Refuse` carries the octets to drop and
//!   the tagged reply, so the policy stays in this pure layer.
//!   `UNAUTHENTICATE` (RFC 8437) is withheld after login and refused too,
//!   as `COMPRESS` and `STARTTLS` are.
//! - `Ready::login` takes `&self` as in the other front ends; postern's
//!   tag counter lives in an atomic so retries on the same connection get
//!   fresh tags.
#![warn(missing_docs)]

pub mod capability;
pub mod client;
pub mod command;
mod literal;
pub mod relay;
pub mod response;
pub mod upstream;
