//! D/MIME messages, three ways, picked by the first byte:
//! 0. the input is a message: open it as each actor with the d1 vector keys; no panics, and a
//!    message that passes every check as recipient rebuilds without panicking;
//! 1. the input is an RFC 5322 message: seal it (deterministic RNG) and open it as all four
//!    actors; author and recipient must get back exactly `canonical_form(input)`;
//! 2. the input patches a sealed message (offset, xor pairs): if the recipient's checks all pass,
//!    the recipient must still read the original message (damage is never silently accepted).
#![no_main]

use std::sync::OnceLock;

use dimegate::dime::message::{self, Actor, Parties, Party, SealOptions};
use dimegate::dime::{PrivateKey, Signet, armor};
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;
use rand::rngs::StdRng;

const KEYS: [&[u8]; 4] = [
    include_bytes!("../../../shared/dime-vectors/d1-libdime/auth.keys"),
    include_bytes!("../../../shared/dime-vectors/d1-libdime/orig.keys"),
    include_bytes!("../../../shared/dime-vectors/d1-libdime/dest.keys"),
    include_bytes!("../../../shared/dime-vectors/d1-libdime/recp.keys"),
];
const SIGNETS: [&[u8]; 4] = [
    include_bytes!("../../../shared/dime-vectors/d1-libdime/auth.signet.bin"),
    include_bytes!("../../../shared/dime-vectors/d1-libdime/orig.signet.bin"),
    include_bytes!("../../../shared/dime-vectors/d1-libdime/dest.signet.bin"),
    include_bytes!("../../../shared/dime-vectors/d1-libdime/recp.signet.bin"),
];
const SAMPLE: &[u8] = b"Date: Thu, 26 Nov 2026 12:00:00 +0000\r\nTo: Bob <bob@b.example>\r\nFrom: Alice <alice@a.example>\r\nSubject: fuzz\r\nMessage-ID: <f@a.example>\r\n\r\nHello\r\n";

struct World {
    keys: Vec<PrivateKey>,
    parties: Vec<Party>,
    sealed: Vec<u8>,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let keys: Vec<PrivateKey> = KEYS
            .iter()
            .map(|k| PrivateKey::parse(&armor::decode_any(k).expect("armor")).expect("key"))
            .collect();
        let parties: Vec<Party> = SIGNETS
            .iter()
            .map(|s| Party::from_signet(&Signet::parse(s).expect("signet")))
            .collect();
        let sealed = seal(&keys, &parties, SAMPLE, 0).expect("seal sample");
        World {
            keys,
            parties,
            sealed,
        }
    })
}

fn seal(
    keys: &[PrivateKey],
    parties: &[Party],
    msg: &[u8],
    seed: u64,
) -> Result<Vec<u8>, message::SealError> {
    let p = Parties {
        author: &parties[0],
        origin: &parties[1],
        destination: &parties[2],
        recipient: &parties[3],
    };
    let opts = SealOptions {
        origin_signing_key: Some(keys[1].signing_key()),
        ..SealOptions::default()
    };
    message::seal(msg, &p, keys[0].signing_key(), &opts, &mut StdRng::seed_from_u64(seed))
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let w = world();
    match mode % 3 {
        0 => {
            for actor in Actor::ALL {
                let key = w.keys[actor as usize].encryption_secret();
                if let Ok(report) = message::inspect(rest, actor, key, &w.parties) {
                    let _ = report.check();
                    let _ = report.rfc5322();
                }
            }
        }
        1 => {
            let Ok(sealed) = seal(&w.keys, &w.parties, rest, u64::from(mode)) else {
                return;
            };
            let canonical = message::canonical_form(rest).expect("sealable input has a canonical form");
            for actor in Actor::ALL {
                let key = w.keys[actor as usize].encryption_secret();
                let report = message::open(&sealed, actor, key, &w.parties).expect("open own seal");
                if matches!(actor, Actor::Author | Actor::Recipient) {
                    assert_eq!(report.rfc5322().as_deref(), Some(&canonical[..]));
                }
            }
        }
        _ => {
            let mut msg = w.sealed.clone();
            for pair in rest.chunks_exact(3) {
                let at = usize::from(u16::from_be_bytes([pair[0], pair[1]])) % msg.len();
                msg[at] ^= pair[2];
            }
            let key = w.keys[3].encryption_secret();
            if let Ok(report) = message::open(&msg, Actor::Recipient, key, &w.parties) {
                assert_eq!(report.rfc5322().as_deref(), Some(SAMPLE));
            }
        }
    }
});
