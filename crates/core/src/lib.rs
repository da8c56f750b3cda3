//! postern's shared core: configuration, TLS, connections, listeners,
//! access control, secrets and limits. Protocol front ends build on it.
#![forbid(unsafe_code)]

pub mod acl;
pub mod config;
pub mod credentials;
pub mod io;
pub mod limits;
pub mod login;
pub mod metrics;
pub mod oauth;
pub mod prepare;
pub mod probe;
pub mod proxy;
pub mod sasl;
pub mod secret;
pub mod server;
pub mod session;
pub mod sniff;
pub mod throttle;
pub mod tls;
pub mod upstream;

pub use secret::Secret;
