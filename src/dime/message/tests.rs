//! Tests over the d1-libdime vectors, byte-flip sweeps and seal/open round trips.

use std::path::PathBuf;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use ed25519_dalek::{SigningKey, VerifyingKey};
use k256::SecretKey;
use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;
use sha2::{Digest, Sha512};

use super::*;

fn vector(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/dime-vectors/d1-libdime")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Private keys of one actor, read straight out of a D1 `.keys` file (DIME.md §6.1).
pub(crate) struct Keys {
    pub(crate) signing: SigningKey,
    pub(crate) encryption: SecretKey,
}

fn unarmor(pem: &[u8]) -> Vec<u8> {
    let text = std::str::from_utf8(pem).unwrap();
    let b64: String = text
        .lines()
        .filter(|l| !l.starts_with("-----") && !l.starts_with('='))
        .collect();
    STANDARD.decode(b64).unwrap()
}

pub(crate) fn keys(actor: &str) -> Keys {
    let bin = unarmor(&vector(&format!("{actor}.keys")));
    // magic(2) len(3) | 01 20 seed(32) | fid u16-len(0020) scalar(32)
    assert_eq!(&bin[5..7], &[1, 0x20]);
    let seed: [u8; 32] = bin[7..39].try_into().unwrap();
    assert_eq!(&bin[40..42], &[0, 0x20]);
    Keys {
        signing: SigningKey::from_bytes(&seed),
        encryption: SecretKey::from_slice(&bin[42..74]).unwrap(),
    }
}

/// The public half of a D1 signet: walk the fields with D1's length widths (DIME.md §4, §5).
pub(crate) fn party(actor: &str) -> Party {
    let bin = vector(&format!("{actor}.signet.bin"));
    let org = u16::from_be_bytes([bin[0], bin[1]]) == 1776;
    let fields = &bin[5..];
    let (mut pos, mut name, mut sign, mut enc, mut fp) = (0, String::new(), None, None, None);
    while pos < fields.len() {
        let fid = fields[pos];
        let start = pos;
        pos += 1;
        let width = match fid {
            1 => 1,
            2 | 3 => 2,
            4..=15 | 253 | 255 => 0,
            16..=159 | 254 => 1,
            160..=250 => 2,
            252 => 3,
            _ => panic!("fid {fid}"),
        };
        let len = if width == 0 {
            64
        } else {
            let l = fields[pos..pos + width]
                .iter()
                .fold(0usize, |a, b| (a << 8) | usize::from(*b));
            pos += width;
            l
        };
        let value = &fields[pos..pos + len];
        pos += len;
        match fid {
            1 => sign = Some(VerifyingKey::from_bytes(value[1..].try_into().unwrap()).unwrap()),
            2 if !org => enc = Some(k256::PublicKey::from_sec1_bytes(value).unwrap()),
            3 if org => enc = Some(k256::PublicKey::from_sec1_bytes(value).unwrap()),
            254 => name = String::from_utf8(value.to_vec()).unwrap(),
            _ => {}
        }
        if (org && fid == 4) || (!org && fid == 6) {
            let _ = start;
            fp = Some(STANDARD_NO_PAD.encode(Sha512::digest(&fields[..pos])));
        }
    }
    Party {
        name,
        fingerprint: fp.unwrap(),
        signing_keys: vec![sign.unwrap()],
        encryption_key: enc.unwrap(),
    }
}

pub(crate) struct World {
    pub(crate) auth: Keys,
    pub(crate) orig: Keys,
    pub(crate) dest: Keys,
    pub(crate) recp: Keys,
    pub(crate) parties: [Party; 4],
}

impl World {
    pub(crate) fn load() -> Self {
        World {
            auth: keys("auth"),
            orig: keys("orig"),
            dest: keys("dest"),
            recp: keys("recp"),
            parties: [party("auth"), party("orig"), party("dest"), party("recp")],
        }
    }
    fn key(&self, actor: Actor) -> &SecretKey {
        match actor {
            Actor::Author => &self.auth.encryption,
            Actor::Origin => &self.orig.encryption,
            Actor::Destination => &self.dest.encryption,
            Actor::Recipient => &self.recp.encryption,
        }
    }
    fn sealing(&self) -> Parties<'_> {
        Parties {
            author: &self.parties[0],
            origin: &self.parties[1],
            destination: &self.parties[2],
            recipient: &self.parties[3],
        }
    }
}

fn readers(actor: Actor) -> bool {
    matches!(actor, Actor::Author | Actor::Recipient)
}

#[test]
fn signet_and_key_parsing_agree_with_the_raw_helpers() {
    for actor in ["auth", "orig", "dest", "recp"] {
        let signet = crate::dime::Signet::parse(&vector(&format!("{actor}.signet.bin"))).unwrap();
        assert_eq!(Party::from_signet(&signet), party(actor), "{actor}");
        let key =
            crate::dime::PrivateKey::parse(&unarmor(&vector(&format!("{actor}.keys")))).unwrap();
        let raw = keys(actor);
        assert_eq!(key.signing_key().to_bytes(), raw.signing.to_bytes());
        assert_eq!(key.encryption_secret(), &raw.encryption);
    }
}

#[test]
fn vector_parties_match_their_keys() {
    let w = World::load();
    for (k, p) in [&w.auth, &w.orig, &w.dest, &w.recp].iter().zip(&w.parties) {
        assert_eq!(k.signing.verifying_key(), p.signing_keys[0]);
        assert_eq!(k.encryption.public_key(), p.encryption_key);
    }
}

#[test]
fn vector_keks_match() {
    let w = World::load();
    let msg = vector("msg.from_author.bin");
    let eph = k256::PublicKey::from_sec1_bytes(&msg[10..43]).unwrap();
    for (actor, file) in [
        (Actor::Origin, "kek.origin.hex"),
        (Actor::Destination, "kek.destination.hex"),
        (Actor::Recipient, "kek.recipient.hex"),
    ] {
        let want = String::from_utf8(vector(file)).unwrap();
        let got: String = derive_kek(w.key(actor), &eph)
            .to_libdime_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(got, want.trim(), "{actor}");
    }
}

#[test]
fn vectors_open_as_every_actor() {
    let w = World::load();
    for file in [
        "msg.from_author.bin",
        "msg.from_origin.bin",
        "msg.from_destination.bin",
    ] {
        let msg = vector(file);
        let signed = file != "msg.from_author.bin";
        for actor in Actor::ALL {
            let result = open(&msg, actor, w.key(actor), &w.parties);
            if !signed && matches!(actor, Actor::Destination | Actor::Recipient) {
                assert_eq!(
                    result.unwrap_err(),
                    OpenError::SignatureMissing {
                        chunk: ChunkType::OriginMetaBounce
                    },
                    "{file} {actor}"
                );
                continue;
            }
            let report = result.unwrap_or_else(|e| panic!("{file} as {actor}: {e}"));
            let sees_tree = actor != Actor::Destination;
            assert_eq!(
                report.tree_signature,
                sees_tree.then_some(TreeSignature::LibdimeCompat),
                "{file} {actor}"
            );
            let origin_sigs = report
                .signatures
                .iter()
                .filter(|s| s.signer == Actor::Origin && s.verdict == Verdict::Valid)
                .count();
            assert_eq!(origin_sigs, if signed { 3 } else { 0 }, "{file} {actor}");
            if readers(actor) {
                assert_eq!(report.signatures.len(), 5 + 2 + 3, "{file} {actor}");
            }
        }
    }
}

#[test]
fn recipient_recovers_the_vector_plaintext() {
    let w = World::load();
    let report = open(
        &vector("msg.from_destination.bin"),
        Actor::Recipient,
        &w.recp.encryption,
        &w.parties,
    )
    .unwrap();
    let text = |k| {
        let c = report.chunks.iter().find(|c| c.kind == k).unwrap();
        String::from_utf8(c.data.clone().unwrap()).unwrap()
    };
    let [a, o, d, r] = &w.parties;
    assert_eq!(
        text(ChunkType::Origin),
        format!(
            "Author: <alice@a.example>\r\nAuthor-Signet: [{}]\r\nDestination: <b.example>\r\nDestination-Signet: [{}]\r\n",
            a.fingerprint, d.fingerprint
        )
    );
    assert_eq!(
        text(ChunkType::Destination),
        format!(
            "Recipient: <bob@b.example>\r\nRecipient-Signet: [{}]\r\nOrigin: <a.example>\r\nOrigin-Signet: [{}]\r\n",
            r.fingerprint, o.fingerprint
        )
    );
    assert_eq!(
        text(ChunkType::Common),
        "Date: Thu, 26 Nov 2026 12:00:00 +0000\r\nTo: Bob <bob@b.example>\r\nFrom: Alice <alice@a.example>\r\nSubject: DIME test vector\r\n"
    );
    assert_eq!(text(ChunkType::Other), "Message-ID: <vec1@a.example>\r\n");
    assert_eq!(
        text(ChunkType::Display),
        "Hello Bob,\r\nthis is a DIME test vector.\r\n"
    );
    assert_eq!(
        report.rfc5322().unwrap(),
        b"Date: Thu, 26 Nov 2026 12:00:00 +0000\r\nTo: Bob <bob@b.example>\r\nFrom: Alice <alice@a.example>\r\nSubject: DIME test vector\r\nMessage-ID: <vec1@a.example>\r\n\r\nHello Bob,\r\nthis is a DIME test vector.\r\n"
    );
}

#[test]
fn our_origin_signature_reproduces_the_vector() {
    // Ed25519 is deterministic and the origin re-encrypts under the same chunk keys, so signing
    // the author stage must give exactly the origin stage.
    let w = World::load();
    let signed = sign_as_origin(
        &vector("msg.from_author.bin"),
        &w.orig.encryption,
        &w.orig.signing,
    )
    .unwrap();
    assert_eq!(signed, vector("msg.from_origin.bin"));
}

/// Which actors can detect a change of byte `i` (offset in the message) and, for a byte inside a
/// chunk the actor decrypts, which chunk the error must name.
fn flip_sweep(msg: &[u8], actor: Actor, key: &SecretKey, parties: &[Party], placeholders: bool) {
    let raw = chunk::parse(msg).unwrap();
    let spans: Vec<(ChunkType, usize, usize, usize)> = raw
        .chunks
        .iter()
        .map(|c| {
            let s = raw.area_offset + c.start;
            (c.kind, s, s + 4 + c.payload.len(), s + c.bytes.len())
        })
        .collect();
    for i in 0..msg.len() {
        let mut bad = msg.to_vec();
        bad[i] ^= 0x01;
        let span = spans.iter().find(|(_, s, _, e)| (*s..*e).contains(&i));
        // No signature covers chunk 255, so the other actors' keyslots in it are invisible to
        // everyone; with unsigned placeholders the same holds for 226, 248 and 249.
        if let Some((kind, _, pend, _)) = span {
            let slot_owner = (i >= *pend).then(|| kind.actors()[(i - pend) / 64]);
            let uncovered =
                *kind == ChunkType::OriginFull || (placeholders && (*kind as u8) >= 226);
            if uncovered && slot_owner.is_some_and(|o| o != actor) {
                continue;
            }
        }
        let err = match open(&bad, actor, key, parties) {
            Ok(_) => panic!("{actor}: flip at {i} ({span:?}) not detected"),
            Err(e) => e,
        };
        let Some((kind, s, pend, _)) = span else {
            continue;
        };
        let own_slot = kind
            .slot_index(actor)
            .map(|k| pend + 64 * k..pend + 64 * (k + 1));
        let in_payload = (s + 4..*pend).contains(&i);
        if own_slot.is_some() && (in_payload || own_slot.as_ref().is_some_and(|r| r.contains(&i))) {
            let named = match &err {
                OpenError::SignatureInvalid { chunk }
                | OpenError::BadPadding { chunk }
                | OpenError::KeyslotMismatch { chunk, .. }
                | OpenError::UnsupportedFlags { chunk, .. }
                | OpenError::MalformedEnvelope { chunk } => Some(*chunk),
                _ => None,
            };
            // The destination cannot check the author's signature on chunk 5 (it is not told
            // who the author is), so damage confined to that signature surfaces at 248.
            let also = (actor == Actor::Destination && *kind == ChunkType::Destination)
                .then_some(ChunkType::OriginMetaBounce);
            assert!(
                named == Some(*kind) || (named.is_some() && named == also),
                "{actor}: flip at {i} in {kind}: {err}"
            );
        }
    }
}

#[test]
fn every_flipped_byte_fails_for_every_actor() {
    let w = World::load();
    let signed = vector("msg.from_origin.bin");
    let unsigned = vector("msg.from_author.bin");
    for actor in Actor::ALL {
        flip_sweep(&signed, actor, w.key(actor), &w.parties, false);
        if matches!(actor, Actor::Author | Actor::Origin) {
            flip_sweep(&unsigned, actor, w.key(actor), &w.parties, true);
        }
    }
}

const SAMPLE: &[u8] = b"Date: Thu, 26 Nov 2026 12:00:00 +0000\r\nTo: Bob <bob@b.example>\r\nFrom: Alice <alice@a.example>\r\nSubject: hi\r\nMessage-ID: <x@a.example>\r\n\r\nHello\r\n";

#[test]
fn seal_then_open_as_every_actor_in_both_tree_forms() {
    let w = World::load();
    for form in [TreeSignature::Spec, TreeSignature::LibdimeCompat] {
        let mut rng = StdRng::seed_from_u64(7);
        let opts = SealOptions {
            tree_signature: form,
            origin_signing_key: Some(&w.orig.signing),
        };
        let msg = seal(SAMPLE, &w.sealing(), &w.auth.signing, &opts, &mut rng).unwrap();
        for actor in Actor::ALL {
            let r = open(&msg, actor, w.key(actor), &w.parties).unwrap();
            if actor != Actor::Destination {
                assert_eq!(r.tree_signature, Some(form));
            }
            if readers(actor) {
                assert_eq!(r.rfc5322().unwrap(), SAMPLE);
            } else {
                assert_eq!(r.rfc5322(), None);
            }
        }
        // Sealing unsigned and signing afterwards gives the same bytes as signing in one pass.
        let mut rng = StdRng::seed_from_u64(7);
        let unsigned = seal(
            SAMPLE,
            &w.sealing(),
            &w.auth.signing,
            &SealOptions {
                tree_signature: form,
                origin_signing_key: None,
            },
            &mut rng,
        )
        .unwrap();
        let signed = sign_as_origin(&unsigned, &w.orig.encryption, &w.orig.signing).unwrap();
        assert_eq!(signed, msg);
    }
}

#[test]
fn sealed_messages_are_padded_and_deterministic_per_rng() {
    let w = World::load();
    let opts = SealOptions::default();
    let a = seal(
        SAMPLE,
        &w.sealing(),
        &w.auth.signing,
        &opts,
        &mut StdRng::seed_from_u64(1),
    )
    .unwrap();
    let b = seal(
        SAMPLE,
        &w.sealing(),
        &w.auth.signing,
        &opts,
        &mut StdRng::seed_from_u64(1),
    )
    .unwrap();
    assert_eq!(a, b);
    let raw = chunk::parse(&a).unwrap();
    for c in &raw.chunks {
        if c.kind.kind() == chunk::PayloadKind::Standard {
            assert!(c.payload.len() >= 256 && c.payload.len() % 16 == 0);
        }
    }
}

#[test]
fn bodies_beyond_one_chunk_span_several_display_chunks() {
    let w = World::load();
    let mut msg = SAMPLE.to_vec();
    msg.extend((0..seal::MAX_CHUNK_DATA + 5000).map(|i| (i % 253) as u8));
    let sealed = seal(
        &msg,
        &w.sealing(),
        &w.auth.signing,
        &SealOptions::default(),
        &mut StdRng::seed_from_u64(3),
    )
    .unwrap();
    let report = open(&sealed, Actor::Recipient, &w.recp.encryption, &w.parties);
    // Unsigned by the origin, so the recipient refuses; the author reads it all.
    assert_eq!(
        report.unwrap_err(),
        OpenError::SignatureMissing {
            chunk: ChunkType::OriginMetaBounce
        }
    );
    let report = open(&sealed, Actor::Author, &w.auth.encryption, &w.parties).unwrap();
    let display: Vec<u8> = report
        .chunks
        .iter()
        .filter(|c| c.kind == ChunkType::Display)
        .map(|c| c.flags)
        .collect();
    assert_eq!(display, [payload::FLAG_CONTINUED, 0]);
    assert_eq!(report.rfc5322().unwrap(), msg);
}

#[test]
fn attachments_get_their_own_chunks_and_round_trip() {
    let w = World::load();
    let mail = b"Date: d\r\nTo: t\r\nFrom: f\r\nSubject: s\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\npreamble\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b\r\nContent-Disposition: attachment; filename=x\r\n\r\nAAAA\r\n--b\r\nContent-Disposition: attachment; filename=y\r\n\r\nBBBB\r\n--b--\r\nepilogue";
    let opts = SealOptions {
        origin_signing_key: Some(&w.orig.signing),
        ..SealOptions::default()
    };
    let sealed = seal(
        mail,
        &w.sealing(),
        &w.auth.signing,
        &opts,
        &mut StdRng::seed_from_u64(4),
    )
    .unwrap();
    let report = open(&sealed, Actor::Recipient, &w.recp.encryption, &w.parties).unwrap();
    let kinds: Vec<ChunkType> = report
        .chunks
        .iter()
        .map(|c| c.kind)
        .filter(|k| matches!(k, ChunkType::Display | ChunkType::Attachment))
        .collect();
    assert_eq!(
        kinds,
        [
            ChunkType::Display,
            ChunkType::Attachment,
            ChunkType::Attachment
        ]
    );
    assert_eq!(report.rfc5322().unwrap(), mail);
}

#[test]
fn envelope_values_cannot_inject_lines() {
    let w = World::load();
    for (name, fp) in [
        ("bob@b.example>\r\nOrigin: <evil", "x"),
        ("", "x"),
        ("bob@b.example", "x]"),
    ] {
        let mut r = w.parties[3].clone();
        r.name = name.into();
        r.fingerprint = fp.into();
        let p = Parties {
            recipient: &r,
            ..w.sealing()
        };
        let err = seal(
            SAMPLE,
            &p,
            &w.auth.signing,
            &SealOptions::default(),
            &mut StdRng::seed_from_u64(1),
        )
        .unwrap_err();
        assert_eq!(
            err,
            SealError::BadEnvelopeValue {
                actor: Actor::Recipient
            }
        );
    }
}

#[test]
fn wrong_key_is_a_keyslot_mismatch() {
    let w = World::load();
    let msg = vector("msg.from_origin.bin");
    // The recipient's key used in the author's place opens nothing.
    let err = open(&msg, Actor::Author, &w.recp.encryption, &w.parties).unwrap_err();
    assert!(
        matches!(
            err,
            OpenError::KeyslotMismatch {
                chunk: ChunkType::Origin,
                ..
            } | OpenError::BadPadding {
                chunk: ChunkType::Origin
            }
        ),
        "{err}"
    );
}

#[test]
fn missing_signet_is_reported() {
    let w = World::load();
    let msg = vector("msg.from_origin.bin");
    let without_author = &w.parties[1..];
    let err = open(&msg, Actor::Recipient, &w.recp.encryption, without_author).unwrap_err();
    assert_eq!(
        err,
        OpenError::SignetMissing {
            role: Actor::Author,
            fingerprint: w.parties[0].fingerprint.clone()
        }
    );
}

fn header_value() -> impl Strategy<Value = Vec<u8>> {
    // Any bytes except line breaks, optionally folded once.
    (
        proptest::collection::vec(
            any::<u8>().prop_filter("no EOL", |b| *b != b'\n' && *b != b'\r'),
            0..40,
        ),
        proptest::option::of(proptest::collection::vec(b'a'..=b'z', 1..10)),
    )
        .prop_map(|(mut v, fold)| {
            if let Some(f) = fold {
                v.extend_from_slice(b"\r\n ");
                v.extend_from_slice(&f);
            }
            v
        })
}

fn message() -> impl Strategy<Value = Vec<u8>> {
    let name = proptest::collection::vec(33u8..=126, 1..20)
        .prop_filter("no colon", |n| !n.contains(&b':'));
    (
        proptest::collection::vec((name, header_value()), 0..8),
        [
            header_value(),
            header_value(),
            header_value(),
            header_value(),
        ],
        proptest::option::of(prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..2000),
            proptest::string::string_regex("(.|\r\n){0,500}")
                .unwrap()
                .prop_map(String::into_bytes),
            Just(Vec::new()),
            (0usize..300_000).prop_map(|n| (0..n).map(|i| (i % 251) as u8).collect()),
        ]),
    )
        .prop_map(|(extra, [date, to, from, subject], body)| {
            let mut m = Vec::new();
            for (n, v) in [
                (&b"Date"[..], date),
                (b"To", to),
                (b"From", from),
                (b"Subject", subject),
            ] {
                m.extend_from_slice(n);
                m.push(b':');
                m.extend_from_slice(&v);
                m.extend_from_slice(b"\r\n");
            }
            for (n, v) in extra {
                m.extend_from_slice(&n);
                m.push(b':');
                m.extend_from_slice(&v);
                m.extend_from_slice(b"\r\n");
            }
            if let Some(b) = body {
                m.extend_from_slice(b"\r\n");
                m.extend_from_slice(&b);
            }
            m
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn round_trip_as_recipient_and_author(msg in message(), seed in any::<u64>()) {
        let w = World::load();
        let mut rng = StdRng::seed_from_u64(seed);
        let opts = SealOptions { origin_signing_key: Some(&w.orig.signing), ..SealOptions::default() };
        let sealed = seal(&msg, &w.sealing(), &w.auth.signing, &opts, &mut rng).unwrap();
        let canonical = canonical_form(&msg).unwrap();
        for actor in [Actor::Recipient, Actor::Author] {
            let report = open(&sealed, actor, w.key(actor), &w.parties).unwrap();
            prop_assert_eq!(report.rfc5322().unwrap(), canonical.clone());
        }
        // Canonical form is a fixed point: sealing it gives it back unchanged.
        prop_assert_eq!(canonical_form(&canonical).unwrap(), canonical);
    }
}
