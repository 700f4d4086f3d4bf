//! MTA-STS and TLS-RPT inputs from the network: the `_mta-sts` and `_smtp._tls` TXT records, the
//! HTTP response carrying the policy (every prefix, as the fetch reads it), and the policy file.
//! No panics; a parsed response body is never above the cap; every split of a complete
//! response is incomplete or the same response; a parsed policy's patterns match consistently.
#![no_main]

use dimegate::deliver::{mta_sts, sts_fetch, tlsrpt};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = mta_sts::parse_record(&text);
    let _ = tlsrpt::parse_record(&text);
    if let Ok(policy) = mta_sts::parse_policy(data) {
        for pattern in &policy.mx {
            let probe = pattern.strip_prefix("*.").map_or(pattern.clone(), |rest| format!("x.{rest}"));
            assert!(policy.matches(&probe), "{pattern} does not match {probe}");
        }
        let _ = policy.policy_strings();
    }
    let whole = sts_fetch::parse_response(data, true);
    if let Ok(Some(response)) = &whole {
        assert!(response.body.len() <= mta_sts::MAX_POLICY_BYTES);
    }
    if let Ok(Some(complete)) = sts_fetch::parse_response(data, false) {
        // A response complete before the end stays the same when the rest arrives at EOF.
        assert_eq!(whole, Ok(Some(complete)));
    }
});
