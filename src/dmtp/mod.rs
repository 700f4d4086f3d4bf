//! DMTP placeholder doc (rewritten below).

pub mod client;
pub mod codec;
#[cfg(test)]
mod pair_tests;
pub mod server;

pub use client::ClientSession;
pub use server::ServerSession;
