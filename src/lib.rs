//! dimegate: an SMTP <-> DIME mail gateway.
//!
//! Protocol logic is sans-I/O (parsers, state machines, crypto take bytes and return bytes or
//! decisions); the tokio glue only moves bytes. See DESIGN.md for the module layout.
#![warn(unreachable_pub)]

pub mod admin;
pub mod auth;
pub mod body;
pub mod bridge;
pub mod cli;
pub mod config;
pub mod dane;
pub mod deliver;
pub mod demo;
pub mod dime;
pub mod discovery;
pub mod dmtp;
pub mod domain;
pub mod envelope;
pub mod identity;
pub mod malloc;
pub mod metrics;
pub mod queue;
pub mod resolve;
pub mod runner;
pub mod serve;
pub mod smtp;
pub mod status;
pub mod store;
pub mod time;
pub mod tls;
pub mod tlsrpt;
