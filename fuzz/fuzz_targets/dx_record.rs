//! `_dx` record parsing: the input is split into TXT character-strings at 0xff bytes; no panics;
//! a parsed record formats into strings of at most 255 bytes that parse back to the same record.
//! The same bytes as zone-file RDATA (`[[dmtp.static]] record`): no panics, and a parsed record
//! written back as RDATA parses to itself.
#![no_main]

use dimegate::dime::DxRecord;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let strings: Vec<&[u8]> = data.split(|&b| b == 0xff).collect();
    if let Ok(record) = DxRecord::parse(&strings) {
        let out = record.to_txt_strings().expect("format");
        assert!(out.iter().all(|s| s.len() <= 255));
        let parts: Vec<&[u8]> = out.iter().map(|s| s.as_bytes()).collect();
        assert_eq!(DxRecord::parse(&parts).expect("re-parse"), record);
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(record) = DxRecord::parse_zone_rdata(text)
    {
        let rdata = record.to_zone_rdata().expect("format");
        assert_eq!(DxRecord::parse_zone_rdata(&rdata).expect("re-parse"), record);
    }
});
