//! DMTP (DIME.md §10).

pub mod trust;
