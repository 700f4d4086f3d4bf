//! DMTP placeholder doc (rewritten below).

pub mod client;
pub mod codec;
#[cfg(test)]
mod pair_tests;
pub mod server;
pub mod trust;
#[cfg(test)]
mod test_signets;

pub use client::ClientSession;
pub use server::ServerSession;
