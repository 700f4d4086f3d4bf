//! The DANE matcher on hostile input: TLSA records as they come out of DNS (any usage, selector,
//! matching type, data) against any presented "certificate chain" bytes. No panics, and the
//! outcome is consistent with the records: a match names a usable record of the set, and
//! "no usable records" happens exactly when none is usable.
//!
//! Input layout: byte 0 = number of records (mod 8); each record is usage, selector, matching,
//! a length byte, then that many data bytes; the rest is the chain, certificates separated by
//! the bytes `0xff 0x00`.
#![no_main]

use dimegate::dane::{DaneOutcome, Tlsa, check};
use libfuzzer_sys::fuzz_target;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::time::Duration;

fuzz_target!(|data: &[u8]| {
    let Some((&count, mut rest)) = data.split_first() else {
        return;
    };
    let mut records = Vec::new();
    for _ in 0..count % 8 {
        let [usage, selector, matching, len, tail @ ..] = rest else {
            return;
        };
        let len = usize::from(*len).min(tail.len());
        records.push(Tlsa {
            usage: *usage,
            selector: *selector,
            matching: *matching,
            data: tail[..len].to_vec(),
        });
        rest = &tail[len..];
    }
    let mut chain = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i + 1 < rest.len() {
        if rest[i] == 0xff && rest[i + 1] == 0x00 {
            chain.push(CertificateDer::from(rest[start..i].to_vec()));
            start = i + 2;
            i += 2;
        } else {
            i += 1;
        }
    }
    if start < rest.len() {
        chain.push(CertificateDer::from(rest[start..].to_vec()));
    }
    let names = [ServerName::try_from("mx.example.test").expect("name")];
    let now = UnixTime::since_unix_epoch(Duration::from_secs(1_796_083_200));
    let provider = rustls::crypto::ring::default_provider();
    let any_usable = records.iter().any(|r| r.usable().is_ok());
    match check(&records, &chain, &names, now, &provider) {
        DaneOutcome::Matched { index, .. } => {
            assert!(records[index].usable().is_ok());
            assert!(!chain.is_empty());
        }
        DaneOutcome::Mismatch { reasons } => {
            assert!(any_usable);
            assert!(reasons.iter().all(|(i, _)| records[*i].usable().is_ok()));
        }
        DaneOutcome::NoUsableRecords => assert!(!any_usable),
    }
});
