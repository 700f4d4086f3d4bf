//! SMTP ingress: the sans-I/O server session (`session`) and, beside it, the tokio glue.
//!
//! `Session` owns the protocol rules (sequence, limits, relay control, STARTTLS, AUTH, DATA/BDAT);
//! the glue moves bytes and performs what the session's `Output` asks for. `ratelimit` holds the
//! per-client limits (connections per second, AUTH back-off) and `pressure` the back-pressure
//! gauge a background task keeps fresh.

pub mod pressure;
pub mod ratelimit;
pub mod server;
pub mod session;

pub use session::{AuthResult, CloseReason, Limits, Output, Policy, Session, StoreFailure};
