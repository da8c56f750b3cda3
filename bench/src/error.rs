//! What can go wrong in a benchmark run, and on which side.

use std::io;

/// A failure of the benchmark itself (set-up) or of one measured session.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Setting up: building postern, installing stunnel, starting processes.
    #[error("set-up: {0}")]
    Setup(String),
    /// An I/O error on a connection of the load generator.
    #[error("{what}: {source}")]
    Io {
        /// What the load generator was doing.
        what: &'static str,
        /// The error.
        source: io::Error,
    },
    /// The peer (proxy or upstream) closed the connection early.
    #[error("{0}: connection closed by the peer")]
    Closed(&'static str),
    /// A step did not finish within its deadline.
    #[error("{0}: timed out")]
    Timeout(&'static str),
    /// The peer answered something other than what the step expects.
    #[error("{what}: unexpected reply {reply:?}")]
    Reply {
        /// The step.
        what: &'static str,
        /// The reply, shortened.
        reply: String,
    },
}

impl BenchError {
    pub fn io(what: &'static str) -> impl FnOnce(io::Error) -> Self {
        move |source| Self::Io { what, source }
    }

    pub fn reply(what: &'static str, line: &[u8]) -> Self {
        let shown = &line[..line.len().min(120)];
        Self::Reply {
            what,
            reply: String::from_utf8_lossy(shown).trim_end().to_owned(),
        }
    }
}

pub type Result<T, E = BenchError> = std::result::Result<T, E>;
