//! Command-line interface: clap definitions and the dispatch to library functions.
//!
//! Exit codes: 0 success, 1 a check failed, 2 usage or invalid configuration.

pub mod dime;
