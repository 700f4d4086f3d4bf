//! Object framing and armor: no panics; whatever parses re-encodes to the same bytes.
#![no_main]

use dimegate::dime::{armor, object};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for width in [3usize, 4] {
        if let Ok((magic, payload)) = object::parse_frame(data, width) {
            let again = object::encode_frame(magic, width, payload, "fuzz").expect("re-encode");
            assert_eq!(again, data);
        }
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok((label, bytes)) = armor::dearmor(text)
    {
        let again = armor::armor_with_label(&label, &bytes);
        assert_eq!(armor::dearmor(&again).expect("re-read armor"), (label, bytes));
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(bytes) = armor::from_base64_line(text)
    {
        assert_eq!(armor::from_base64_line(&armor::to_base64_line(&bytes)).expect("line"), bytes);
    }
});
