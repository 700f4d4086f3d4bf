//! dime
