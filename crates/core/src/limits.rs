//! Named limits and timeouts.
//!
//! These are the defaults; the hardening work makes them configurable per
//! route. Each says where its number comes from.

use std::time::Duration;

/// Resolving and connecting to an upstream, per address tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// A TLS handshake on either side.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// Waiting for one upstream reply line (greeting, command replies).
pub const UPSTREAM_REPLY_TIMEOUT: Duration = Duration::from_secs(60);
/// Waiting for a client command before login.
pub const CLIENT_PRELOGIN_IDLE: Duration = Duration::from_secs(120);
/// Waiting for a client command after login: RFC 1939 §3 asks for at least 10 minutes.
pub const CLIENT_IDLE: Duration = Duration::from_secs(10 * 60);
/// Writing to a peer that does not read.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(120);
/// After SIGTERM/SIGINT, how long a session waits for its client's next
/// command before it says goodbye and ends (a client that keeps working
/// keeps the grace period; an idle one does not hold shutdown up).
pub const SHUTDOWN_LAST_CALL: Duration = Duration::from_secs(1);
/// How long sessions may run on after SIGTERM/SIGINT.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Backoff after a failed `accept` (e.g. EMFILE), so the loop does not spin.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(200);

/// SMTP: waiting for a client command (RFC 5321 §4.5.3.2.7: 5 minutes).
pub const SMTP_COMMAND_IDLE: Duration = Duration::from_secs(5 * 60);
/// SMTP: waiting for an upstream reply to MAIL, RCPT, DATA (RFC 5321 §4.5.3.2: 5 and 2 minutes).
pub const SMTP_REPLY_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// SMTP: waiting for the next block of message data (RFC 5321 §4.5.3.2.5: 3 minutes).
pub const SMTP_DATA_BLOCK: Duration = Duration::from_secs(3 * 60);
/// SMTP: waiting for the upstream's reply to the end of data. RFC 5321
/// §4.5.3.2.6 gives a client 10 minutes; postern waits less, so its own
/// client gets a `451` rather than a hang.
pub const SMTP_FINAL_REPLY_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// SMTP: the default largest message (the SIZE postern advertises when the
/// upstream states none).
pub const SMTP_MAX_MESSAGE_SIZE: u64 = 100 * 1024 * 1024;

/// Delay before answering a failed local login (slows guessing; the same for
/// unknown users and wrong passwords).
pub const AUTH_FAILURE_DELAY: Duration = Duration::from_millis(1500);
/// Local login failures from one address that get it refused for a while.
pub const AUTH_FAILURES_BEFORE_BLOCK: u32 = 5;
/// The window in which those failures are counted.
pub const AUTH_FAILURE_WINDOW: Duration = Duration::from_secs(10 * 60);
/// How long an address is refused after too many failures.
pub const AUTH_BLOCK_DURATION: Duration = Duration::from_secs(15 * 60);
/// First pause after the upstream refused stored credentials (doubles on
/// each further refusal, up to an hour), so a provider does not lock the
/// account out.
pub const STORED_LOGIN_BACKOFF: Duration = Duration::from_secs(60);
/// Everything a client may do before it has logged in (greeting, CAPA,
/// EHLO, NOOP...): commands do not extend it, so a client cannot hold a
/// session slot without logging in.
pub const LOGIN_TOTAL: Duration = Duration::from_secs(60);
/// SMTP: the longest one message's data may take, whatever its rate.
pub const SMTP_DATA_TOTAL: Duration = Duration::from_secs(60 * 60);
/// SMTP: the slowest average rate (bytes per second) message data may
/// arrive at, checked once [`DATA_RATE_GRACE`] has passed: a drip cannot
/// hold a session and an upstream connection for hours.
pub const SMTP_DATA_MIN_RATE: u64 = 1024;
/// SMTP: how long message data may arrive slower than the minimum rate
/// before the rate is enforced (a client may pause briefly at the start).
pub const DATA_RATE_GRACE: Duration = Duration::from_secs(10);
/// Reading a PROXY protocol header from a load balancer.
pub const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// The deadlines of one route, after configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Resolving and connecting to the upstream, per address.
    pub connect: Duration,
    /// A TLS handshake on either side.
    pub tls_handshake: Duration,
    /// One upstream reply (greeting, login, commands; SMTP MAIL/RCPT/DATA).
    pub upstream_reply: Duration,
    /// A client command before login.
    pub client_login: Duration,
    /// A client command after login.
    pub client_idle: Duration,
    /// SMTP: the next block of message data from the client.
    pub data_block: Duration,
    /// SMTP: the upstream's reply to the end of data.
    pub final_reply: Duration,
    /// Everything before login, in total (commands do not extend it).
    pub login_total: Duration,
    /// SMTP: one message's data, in total.
    pub data_total: Duration,
    /// Writing to a peer that does not read.
    pub write: Duration,
}

impl Timeouts {
    /// RFC-based defaults for POP3.
    pub const POP3: Timeouts = Timeouts {
        connect: CONNECT_TIMEOUT,
        tls_handshake: TLS_HANDSHAKE_TIMEOUT,
        upstream_reply: UPSTREAM_REPLY_TIMEOUT,
        client_login: CLIENT_PRELOGIN_IDLE,
        client_idle: CLIENT_IDLE,
        data_block: SMTP_DATA_BLOCK,
        final_reply: SMTP_FINAL_REPLY_TIMEOUT,
        login_total: LOGIN_TOTAL,
        data_total: SMTP_DATA_TOTAL,
        write: WRITE_TIMEOUT,
    };
    /// RFC 5321 §4.5.3.2-based defaults for SMTP.
    pub const SMTP: Timeouts = Timeouts {
        connect: CONNECT_TIMEOUT,
        tls_handshake: TLS_HANDSHAKE_TIMEOUT,
        upstream_reply: SMTP_REPLY_TIMEOUT,
        client_login: SMTP_COMMAND_IDLE,
        client_idle: SMTP_COMMAND_IDLE,
        data_block: SMTP_DATA_BLOCK,
        final_reply: SMTP_FINAL_REPLY_TIMEOUT,
        login_total: LOGIN_TOTAL,
        data_total: SMTP_DATA_TOTAL,
        write: WRITE_TIMEOUT,
    };
}

impl Timeouts {
    /// RFC 9051-based defaults for IMAP: a logged-in client may stay idle
    /// (IDLE, or simply between commands) for the 30-minute autologout
    /// timer §5.4 requires at least; upstream replies get the POP3 bound.
    pub const IMAP: Timeouts = Timeouts {
        client_idle: IMAP_IDLE,
        ..Timeouts::POP3
    };
}

/// IMAP: a logged-in client's inactivity before autologout (RFC 9051 §5.4:
/// at least 30 minutes).
pub const IMAP_IDLE: Duration = Duration::from_secs(30 * 60 + 60);

/// The size limits of one route, after configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// SMTP: the largest message (`552 5.3.4` beyond it).
    pub message_size: u64,
    /// SMTP: recipients per message (`452 4.5.3` beyond it; RFC 5321 §4.5.3.1.8 asks for at least 100).
    pub max_recipients: u32,
    /// Sessions at once on this route (`-ERR [SYS/TEMP]` / `421 4.7.0` beyond it).
    pub sessions: usize,
    /// Sessions at once from one client address on this route.
    pub sessions_per_client: usize,
    /// Sessions at once across all routes.
    pub total_sessions: usize,
    /// SMTP: the slowest average rate of message data, in bytes per second.
    pub data_min_rate: u64,
}

impl Limits {
    /// Defaults.
    pub const DEFAULT: Limits = Limits {
        message_size: SMTP_MAX_MESSAGE_SIZE,
        max_recipients: 100,
        sessions: 500,
        sessions_per_client: 50,
        total_sessions: 2000,
        data_min_rate: SMTP_DATA_MIN_RATE,
    };
}
