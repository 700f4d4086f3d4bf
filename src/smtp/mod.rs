//! SMTP ingress: the sans-I/O server session (`session`) and, beside it, the tokio glue.
//!
//! `Session` owns the protocol rules (sequence, limits, relay control, STARTTLS, AUTH, DATA/BDAT);
//! the glue moves bytes and performs what the session's `Output` asks for.

pub mod server;
pub mod session;

pub use session::{Limits, Output, Policy, Session, StoreFailure};
