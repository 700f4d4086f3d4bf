//! D/MIME seal and open against the floor of the primitive operations they perform.
//!
//! `cargo bench --bench dime` runs criterion over seal (10 KiB message, four actors, origin
//! signing in the same pass), open as recipient, and the primitives (secp256k1 key generation
//! and ECDH + KEK, Ed25519 sign and verify, AES-256-CBC and SHA-512 per MiB). It then prints each
//! composite next to the sum of the primitive operations it really performs, counted from the
//! sealed message's structure, so the distance to that floor is visible.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use dimegate::dime::message::{
    self, Actor, AesKeyIv, ChunkType, Parties, Party, Report, SealOptions, derive_kek,
};
use ed25519_dalek::{Signer, SigningKey};
use k256::SecretKey;
use rand::SeedableRng;
use rand::rngs::StdRng;
use sha2::{Digest, Sha512};

struct Actors {
    signing: Vec<SigningKey>,
    encryption: Vec<SecretKey>,
    parties: Vec<Party>,
}

fn actors() -> Actors {
    let mut rng = StdRng::seed_from_u64(1);
    let mut a = Actors {
        signing: Vec::new(),
        encryption: Vec::new(),
        parties: Vec::new(),
    };
    for (i, name) in ["alice@a.example", "a.example", "b.example", "bob@b.example"]
        .into_iter()
        .enumerate()
    {
        let s = SigningKey::generate(&mut rng);
        let e = SecretKey::random(&mut rng);
        a.parties.push(Party {
            name: name.into(),
            fingerprint: format!("{i:086}"),
            signing_keys: vec![s.verifying_key()],
            encryption_key: e.public_key(),
        });
        a.signing.push(s);
        a.encryption.push(e);
    }
    a
}

fn message_10k() -> Vec<u8> {
    let mut m = b"Date: Thu, 26 Nov 2026 12:00:00 +0000\r\nTo: Bob <bob@b.example>\r\nFrom: Alice <alice@a.example>\r\nSubject: bench\r\nMessage-ID: <b@a.example>\r\nMIME-Version: 1.0\r\n\r\n".to_vec();
    while m.len() < 10 * 1024 {
        m.extend_from_slice(b"The quick brown fox jumps over the lazy dog, 0123456789.\r\n");
    }
    m.truncate(10 * 1024);
    m
}

fn seal(a: &Actors, msg: &[u8], rng: &mut StdRng) -> Vec<u8> {
    let p = Parties {
        author: &a.parties[0],
        origin: &a.parties[1],
        destination: &a.parties[2],
        recipient: &a.parties[3],
    };
    let opts = SealOptions {
        origin_signing_key: Some(&a.signing[1]),
        ..SealOptions::default()
    };
    message::seal(msg, &p, &a.signing[0], &opts, rng).expect("seal")
}

/// Median time per call of `f`, over about `budget`.
fn time(budget: Duration, mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    let mut samples = Vec::new();
    while start.elapsed() < budget || samples.len() < 11 {
        let t = Instant::now();
        for _ in 0..8 {
            f();
        }
        samples.push(t.elapsed().as_secs_f64() / 8.0);
    }
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// What seal and open do, counted from the message they produce and read.
#[derive(Debug, Default)]
struct Ops {
    keygen: f64,
    ecdh: f64,
    sign: f64,
    verify: f64,
    aes_bytes: f64,
    sha_bytes: f64,
}

fn counts(report: &Report, sealed: &[u8]) -> (Ops, Ops) {
    let chunks = &report.chunks;
    let std_chunks: Vec<_> = chunks
        .iter()
        .filter(|c| matches!(c.kind as u8, 4..=191))
        .collect();
    let sig_chunks = chunks.iter().filter(|c| c.kind as u8 >= 192).count() as f64;
    let slots: usize = chunks.iter().map(|c| c.kind.actors().len()).sum();
    let payload = |c: &message::ChunkReport| (c.size - 4 - 64 * c.kind.actors().len()) as f64;
    let prefix = |limit: u8| -> f64 {
        let mut n = 0;
        for c in chunks {
            if (c.kind as u8) < limit {
                n += c.size;
            }
        }
        n as f64
    };
    let tree_input: f64 = chunks
        .iter()
        .filter(|c| (c.kind as u8) < 192)
        .map(|c| c.size as f64)
        .sum();
    let std_signed: f64 = std_chunks.iter().map(|c| payload(c) - 64.0).sum();
    let tree_len = 64.0 * chunks.iter().filter(|c| (c.kind as u8) < 192).count() as f64;
    let full_signed = prefix(226) + prefix(64) + prefix(128) + prefix(255);
    let enc_bytes: f64 = chunks
        .iter()
        .filter(|c| c.kind != ChunkType::Ephemeral)
        .map(payload)
        .sum();
    let _ = sealed;
    // Ed25519 signing hashes its input twice, verification once; the baseline sign/verify
    // timings already include a 64-byte input.
    let seal = Ops {
        keygen: 1.0,
        ecdh: 4.0,
        sign: std_chunks.len() as f64 + sig_chunks,
        verify: 0.0,
        aes_bytes: enc_bytes + 64.0 * slots as f64,
        sha_bytes: tree_input + 2.0 * (std_signed + tree_len + full_signed),
    };
    let readable = chunks
        .iter()
        .filter(|c| c.kind.actors().contains(&Actor::Recipient));
    let open = Ops {
        keygen: 0.0,
        ecdh: 1.0,
        sign: 0.0,
        verify: std_chunks.len() as f64 + sig_chunks,
        aes_bytes: readable.map(|c| payload(c) + 64.0).sum(),
        sha_bytes: tree_input + std_signed + tree_len + full_signed,
    };
    (seal, open)
}

fn main() {
    let a = actors();
    let msg = message_10k();
    let mut rng = StdRng::seed_from_u64(2);
    let sealed = seal(&a, &msg, &mut rng);
    let mib = vec![0u8; 1 << 20];

    let mut c = Criterion::default()
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .configure_from_args();
    {
        let mut g = c.benchmark_group("dmime");
        g.throughput(Throughput::Bytes(msg.len() as u64));
        g.bench_function("seal_10KiB_four_actors", |b| {
            b.iter(|| seal(&a, black_box(&msg), &mut rng))
        });
        g.bench_function("open_as_recipient", |b| {
            b.iter(|| {
                message::open(
                    black_box(&sealed),
                    Actor::Recipient,
                    &a.encryption[3],
                    &a.parties,
                )
                .expect("open")
            })
        });
        // What the DMTP listener does before its 2xx: the destination's keyslot and the
        // origin's three signatures.
        g.bench_function("open_as_destination", |b| {
            b.iter(|| {
                message::open(
                    black_box(&sealed),
                    Actor::Destination,
                    &a.encryption[2],
                    &a.parties,
                )
                .expect("open")
            })
        });
        g.finish();
    }
    {
        let mut g = c.benchmark_group("primitives");
        g.bench_function("secp256k1_keygen", |b| {
            b.iter(|| SecretKey::random(&mut rng).public_key())
        });
        let peer = a.encryption[1].public_key();
        g.bench_function("secp256k1_ecdh_kek", |b| {
            b.iter(|| derive_kek(black_box(&a.encryption[0]), &peer))
        });
        let sig = a.signing[0].sign(&[0u8; 64]);
        g.bench_function("ed25519_sign_64B", |b| {
            b.iter(|| a.signing[0].sign(black_box(&[0u8; 64])))
        });
        g.bench_function("ed25519_verify_64B", |b| {
            b.iter(|| a.parties[0].signing_keys[0].verify_strict(black_box(&[0u8; 64]), &sig))
        });
        g.throughput(Throughput::Bytes(mib.len() as u64));
        g.bench_function("sha512_1MiB", |b| {
            b.iter(|| Sha512::digest(black_box(&mib)))
        });
        g.finish();
    }
    c.final_summary();

    // The floor table, with its own quick timings so the sums use the same clock.
    let budget = Duration::from_millis(400);
    let mut kr = StdRng::seed_from_u64(3);
    let keygen = time(budget, || {
        black_box(SecretKey::random(&mut kr).public_key());
    });
    let peer = a.encryption[1].public_key();
    let ecdh = time(budget, || {
        black_box(derive_kek(&a.encryption[0], &peer));
    });
    let sign = time(budget, || {
        black_box(a.signing[0].sign(&[0u8; 64]));
    });
    let sig = a.signing[0].sign(&[0u8; 64]);
    let verify = time(budget, || {
        black_box(a.parties[0].signing_keys[0].verify_strict(&[0u8; 64], &sig)).ok();
    });
    let aes_key = AesKeyIv {
        key: [7; 32],
        iv: [9; 16],
    };
    let mut buf = mib.clone();
    let aes_mib = time(budget, || aes_cbc(&aes_key, &mut buf));
    let sha_mib = time(budget, || {
        black_box(Sha512::digest(&mib));
    });
    let seal_t = time(Duration::from_secs(1), || {
        black_box(seal(&a, &msg, &mut rng));
    });
    let open_t = time(Duration::from_secs(1), || {
        black_box(message::open(&sealed, Actor::Recipient, &a.encryption[3], &a.parties).ok());
    });

    let report = message::open(&sealed, Actor::Author, &a.encryption[0], &a.parties).expect("open");
    let (seal_ops, open_ops) = counts(&report, &sealed);
    let floor = |o: &Ops| {
        o.keygen * keygen
            + o.ecdh * ecdh
            + o.sign * sign
            + o.verify * verify
            + o.aes_bytes / (1 << 20) as f64 * aes_mib
            + o.sha_bytes / (1 << 20) as f64 * sha_mib
    };
    let us = |s: f64| s * 1e6;
    println!();
    println!(
        "primitives: keygen {:.1} us, ECDH+KEK {:.1} us, Ed25519 sign {:.1} us, verify {:.1} us, AES-256-CBC {:.2} ms/MiB, SHA-512 {:.2} ms/MiB",
        us(keygen),
        us(ecdh),
        us(sign),
        us(verify),
        aes_mib * 1e3,
        sha_mib * 1e3
    );
    for (name, t, ops) in [
        ("seal (10 KiB, 4 actors, origin-signed)", seal_t, &seal_ops),
        ("open as recipient", open_t, &open_ops),
    ] {
        let f = floor(ops);
        println!(
            "{name}: {:.1} us; floor {:.1} us ({} keygen, {} ECDH, {} sign, {} verify, {:.0} B AES, {:.0} B SHA-512); ratio {:.2}",
            us(t),
            us(f),
            ops.keygen,
            ops.ecdh,
            ops.sign,
            ops.verify,
            ops.aes_bytes,
            ops.sha_bytes,
            t / f
        );
    }
}

/// AES-256-CBC over a buffer, through the same public path the module uses for keyslots.
fn aes_cbc(key: &AesKeyIv, buf: &mut [u8]) {
    use aes::Aes256;
    use cbc::cipher::{BlockEncryptMut, KeyIvInit, generic_array::GenericArray};
    let mut enc = cbc::Encryptor::<Aes256>::new(&key.key.into(), &key.iv.into());
    for block in buf.chunks_exact_mut(16) {
        enc.encrypt_block_mut(GenericArray::from_mut_slice(block));
    }
    black_box(buf);
}
