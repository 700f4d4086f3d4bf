//! DMTP placeholder doc (rewritten below).

pub mod client;
pub mod codec;
pub mod listener;
#[cfg(test)]
mod pair_tests;
pub mod server;
#[cfg(test)]
mod test_signets;
pub mod trust;

pub use client::ClientSession;
pub use server::ServerSession;
