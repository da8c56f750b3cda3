//! POP3 protocol logic with no I/O: parsers, capability rewriting and the
//! two login machines (client-facing and upstream-facing).

pub mod apop;
pub mod capa;
pub mod client;
pub mod command;
pub mod framer;
pub mod reply;
pub mod upstream;
