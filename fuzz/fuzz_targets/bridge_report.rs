//! A report opened for a bridge identity, on hostile bytes: `returned_report` answers or
//! refuses, never panics; what it returns names a mailbox and carries no `X-Envelope-To` in
//! its header block; and `address_report` of what it returns names the same recipient again.
#![no_main]

use dimegate::bridge::{address_report, returned_report};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(r) = returned_report(data) else {
        return;
    };
    assert!(r.recipient.contains('@'));
    assert!(!r.recipient.contains(['<', '>', ' ', '\r', '\n']));
    let again = address_report(&r.message, &r.recipient).expect("a returned recipient addresses");
    assert_eq!(
        returned_report(&again).expect("an addressed report returns").recipient,
        r.recipient
    );
});
