//! Key file parsing: no panics; a parsed key re-encodes to the input.
#![no_main]

use dimegate::dime::PrivateKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(key) = PrivateKey::parse(data) {
        assert_eq!(&key.to_bytes()[..], data);
    }
});
