//! SMTP protocol logic with no I/O: command and reply parsers, EHLO
//! rewriting, the DATA scanner and the two session machines.

pub mod client;
pub mod command;
pub mod data;
pub mod ehlo;
pub mod reply;
pub mod upstream;
