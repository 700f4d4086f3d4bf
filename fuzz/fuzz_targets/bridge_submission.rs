//! The DMTP submission path on hostile bytes: `submission_prepare` with the d1-libdime origin
//! key as our org (a.example), then `submission_sign` with the author signet it names. No
//! panics, and: an author outside a.example is never prepared; what prepares names our
//! author's domain; what is signed opens for its destination (the d1-libdime destination key)
//! with every signature checked, unless the author broke one of the origin-signature chunks'
//! own destination keyslots: the author seals those (248, 249, 255), no author signature covers
//! them and the origin cannot open them, so a broken one is the author's loss, refused by the
//! destination, and nothing the origin can check before it signs.
#![no_main]

use std::sync::OnceLock;

use dimegate::bridge::{Identity, SubmitInput, submission_prepare, submission_sign};
use dimegate::dime::message::{self, Actor, ChunkType, OpenError, Party};
use dimegate::dime::{PrivateKey, Signet, armor};
use libfuzzer_sys::fuzz_target;

struct World {
    org_key: PrivateKey,
    org: Signet,
    dest: PrivateKey,
    auth: Signet,
}

fn key(bytes: &[u8]) -> PrivateKey {
    PrivateKey::parse(&armor::decode_any(bytes).expect("armor")).expect("key")
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| World {
        org_key: key(include_bytes!("../../../shared/dime-vectors/d1-libdime/orig.keys")),
        org: Signet::parse(include_bytes!(
            "../../../shared/dime-vectors/d1-libdime/orig.signet.bin"
        ))
        .expect("origin signet"),
        dest: key(include_bytes!("../../../shared/dime-vectors/d1-libdime/dest.keys")),
        auth: Signet::parse(include_bytes!(
            "../../../shared/dime-vectors/d1-libdime/auth.signet.bin"
        ))
        .expect("author signet"),
    })
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    let input = SubmitInput {
        message: data,
        org: Identity {
            signet: &w.org,
            key: &w.org_key,
        },
        domain: "a.example",
    };
    let Ok(submission) = submission_prepare(&input) else {
        return;
    };
    assert!(
        submission
            .author
            .rsplit_once('@')
            .is_some_and(|(_, d)| d.eq_ignore_ascii_case("a.example")),
        "{submission:?}"
    );
    let Ok((signed_for, signed)) = submission_sign(&input, &w.auth) else {
        return;
    };
    assert_eq!(signed_for, submission);
    if submission.destination == "b.example" {
        let mut origin = Party::from_signet(&w.org);
        origin.name = "a.example".into();
        match message::open(&signed, Actor::Destination, w.dest.encryption_secret(), &[origin]) {
            Ok(_) => {}
            Err(
                OpenError::SignatureInvalid { chunk, .. }
                | OpenError::KeyslotMismatch { chunk, .. }
                | OpenError::BadPadding { chunk, .. }
                | OpenError::BadPayloadLength { chunk, .. },
            ) if ORIGIN_SIGNATURES.contains(&chunk) => {}
            Err(e) => panic!("what we signed opens for its destination: {e:?}"),
        }
    }
});

/// The chunks the origin fills in, whose destination keyslots only the author made.
const ORIGIN_SIGNATURES: [ChunkType; 3] = [
    ChunkType::OriginMetaBounce,
    ChunkType::OriginDisplayBounce,
    ChunkType::OriginFull,
];
