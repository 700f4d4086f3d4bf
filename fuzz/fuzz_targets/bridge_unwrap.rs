//! The inbound unwrap path on hostile bytes: `unwrap_prepare` with the d1-libdime destination and
//! recipient keys and origin signet, then `unwrap_finish` with and without the author signet.
//! No panics, and: whatever prepares must finish; without the author signet it never passes;
//! a pass is rebuilt with our trace fields on top.
#![no_main]

use std::sync::OnceLock;

use dimegate::bridge::{
    Destination, DimeResult, FailReason, UnwrapInput, unwrap_finish, unwrap_prepare};
use dimegate::dime::{PrivateKey, Signet, armor};
use dimegate::time::UnixTime;
use libfuzzer_sys::fuzz_target;



struct World {
    dest: PrivateKey,
    recp: PrivateKey,
    orig: Signet,
    auth: Signet,
}

fn key(bytes: &[u8]) -> PrivateKey {
    PrivateKey::parse(&armor::decode_any(bytes).expect("armor")).expect("key")
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();

    W.get_or_init(|| World {
        dest: key(include_bytes!("../../../shared/dime-vectors/d1-libdime/dest.keys")),
        recp: key(include_bytes!("../../../shared/dime-vectors/d1-libdime/recp.keys")),
        orig: Signet::parse(include_bytes!(
            "../../../shared/dime-vectors/d1-libdime/orig.signet.bin"
        ))
        .expect("origin signet"),
        auth: Signet::parse(include_bytes!(
            "../../../shared/dime-vectors/d1-libdime/auth.signet.bin"
        ))
        .expect("author signet"),
    })
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    let input = UnwrapInput {
        message: data,
        destination: Destination::Open(&w.dest),
        recipient_key: &w.recp,
        hostname: "mx.b.example",
        queue_id: "FUZZ1",
        received_at: UnixTime(1_796_119_200),
        origin_signet: &w.orig,
        origin_domain: "a.example",
    };
    let Ok(prepared) = unwrap_prepare(&input) else {
        return;
    };
    let need = prepared.need.clone();
    // A preparation is used up by its finish: the second finish prepares again, which must
    // give the same answer.
    let again = unwrap_prepare(&input).expect("what prepared once prepares again");
    assert_eq!(again.need, need);
    let without = unwrap_finish(&input, prepared, None).expect("what prepares must finish");
    assert_eq!(
        without.dime,
        DimeResult::Fail {
            reason: FailReason::AuthorSignetMissing {
                fingerprint: need.author_fingerprint.clone()
            }
        }
    );
    let with = unwrap_finish(&input, again, Some(&w.auth)).expect("what prepares must finish");
    assert_eq!(with.author, need.author);
    if with.dime == DimeResult::Pass {
        assert!(with.rfc5322.starts_with(b"Received: from a.example by mx.b.example with DMTP id FUZZ1; "));
        assert!(with.rfc5322.windows(11).any(|x| x == b"; dime=pass"));
    }
});
