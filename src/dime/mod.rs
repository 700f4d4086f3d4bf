//! dime
pub mod message;
