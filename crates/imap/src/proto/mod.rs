//! IMAP without I/O.
