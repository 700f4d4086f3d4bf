//! Signet parsing: no panics; a parsed signet re-encodes to the input, from its fields too; every
//! derived operation (validation, fingerprints, splits, armor) runs without panicking.
#![no_main]

use dimegate::dime::{Level, Signet};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(signet) = Signet::parse(data) else {
        return;
    };
    assert_eq!(signet.as_bytes(), data);
    let rebuilt = Signet::from_fields(signet.kind(), signet.dialect(), signet.fields()).expect("rebuild");
    assert_eq!(rebuilt.as_bytes(), data);
    assert_eq!(Signet::parse_any(signet.armor().as_bytes()).expect("armor"), signet);
    assert_eq!(Signet::from_base64_line(&signet.to_base64_line()).expect("line"), signet);
    let _ = signet.validate(None);
    let _ = signet.validate(Some(&signet));
    let _ = (signet.crypto_fingerprint(), signet.full_fingerprint(), signet.id_fingerprint());
    for level in [Level::Crypto, Level::Full, Level::Id] {
        if let Ok(split) = signet.split(level) {
            assert_eq!(split.crypto_fingerprint(), signet.crypto_fingerprint());
        }
    }
});
