//! The bridge flows on a 10 KiB message, next to the bare D/MIME seal and open they are built
//! on, so the cost of the bridge's own work (header surgery, bucket padding, the second open
//! for the author check, the rebuild) is the difference.
//!
//! `cargo bench --bench bridge` runs criterion over: `dime_seal` (message::seal, no padding),
//! `wrap` (the same parties, padded to a bucket), `dime_open_recipient`, `unwrap_prepare`,
//! `unwrap_finish` and `unwrap_both` (prepare + finish, what the runner does per message).

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput};
use dimegate::bridge::{
    Buckets, Destination, Identity, UnwrapInput, WrapInput, unwrap_finish, unwrap_prepare, wrap,
};
use dimegate::dime::message::{self, Actor, Parties, Party, SealOptions};
use dimegate::dime::{KeyKind, PrivateKey, Signet};
use dimegate::time::UnixTime;
use rand::SeedableRng;
use rand::rngs::StdRng;

struct Id {
    key: PrivateKey,
    signet: Signet,
}

fn org(domain: &str, rng: &mut StdRng) -> Id {
    let key = PrivateKey::generate(KeyKind::Org, rng);
    let signet = Signet::create_org(&key, domain, &[], &[]).expect("org signet");
    Id { key, signet }
}

fn user(address: &str, org: &Id, rng: &mut StdRng) -> Id {
    let key = PrivateKey::generate(KeyKind::User, rng);
    let ssr = Signet::create_ssr(&key, None).expect("ssr");
    let signet = Signet::sign_ssr_with_org_key(&ssr, &org.key, address, &[]).expect("signet");
    Id { key, signet }
}

fn message_10k() -> Vec<u8> {
    let mut m = b"Date: Thu, 26 Nov 2026 12:00:00 +0000\r\nTo: Bob <bob@south.test>\r\nFrom: Alice <alice@north.test>\r\nSubject: bench\r\nMessage-ID: <b@north.test>\r\nMIME-Version: 1.0\r\n\r\n".to_vec();
    while m.len() < 10 * 1024 {
        m.extend_from_slice(b"The quick brown fox jumps over the lazy dog, 0123456789.\r\n");
    }
    m.truncate(10 * 1024);
    m
}

fn named(s: &Signet, name: &str) -> Party {
    let mut p = Party::from_signet(s);
    p.name = name.into();
    p
}

fn main() {
    let mut rng = StdRng::seed_from_u64(3);
    let north = org("north.test", &mut rng);
    let south = org("south.test", &mut rng);
    let alice = user("alice@north.test", &north, &mut rng);
    let bob = user("bob@south.test", &south, &mut rng);
    let msg = message_10k();
    let input = WrapInput {
        message: &msg,
        mail_from: "alice@north.test",
        recipient: "bob@south.test",
        author: Identity {
            signet: &alice.signet,
            key: &alice.key,
        },
        author_address: "alice@north.test",
        origin: Identity {
            signet: &north.signet,
            key: &north.key,
        },
        origin_domain: "north.test",
        destination: &south.signet,
        destination_domain: "south.test",
        recipient_signet: &bob.signet,
        authentication_results: Some("mx.north.test; spf=pass smtp.mailfrom=alice@north.test"),
        padding: Buckets::DEFAULT,
    };
    let wrapped = wrap(&input, &mut rng).expect("wrap");
    let parties = [
        named(&alice.signet, "alice@north.test"),
        named(&north.signet, "north.test"),
        named(&south.signet, "south.test"),
        named(&bob.signet, "bob@south.test"),
    ];
    let p = Parties {
        author: &parties[0],
        origin: &parties[1],
        destination: &parties[2],
        recipient: &parties[3],
    };
    let opts = SealOptions {
        origin_signing_key: Some(north.key.signing_key()),
        ..SealOptions::default()
    };
    let unwrap_input = UnwrapInput {
        message: &wrapped,
        destination: Destination::Open(&south.key),
        recipient_key: &bob.key,
        hostname: "mx.south.test",
        queue_id: "Q1",
        received_at: UnixTime(1_796_119_200),
        origin_signet: &north.signet,
        origin_domain: "north.test",
    };
    println!(
        "10 KiB message: sealed {} bytes padded (bucket), unpadded about {}",
        wrapped.len(),
        message::seal(&msg, &p, alice.key.signing_key(), &opts, &mut rng)
            .expect("seal")
            .len()
    );

    let mut c = Criterion::default()
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .configure_from_args();
    let mut g = c.benchmark_group("bridge");
    g.throughput(Throughput::Bytes(msg.len() as u64));
    g.bench_function("dime_seal", |b| {
        b.iter(|| {
            message::seal(
                black_box(&msg),
                &p,
                alice.key.signing_key(),
                &opts,
                &mut rng,
            )
        })
    });
    g.bench_function("wrap", |b| b.iter(|| wrap(black_box(&input), &mut rng)));
    g.bench_function("dime_open_recipient", |b| {
        b.iter(|| {
            message::open(
                black_box(&wrapped),
                Actor::Recipient,
                bob.key.encryption_secret(),
                &parties,
            )
        })
    });
    g.bench_function("unwrap_prepare", |b| {
        b.iter(|| unwrap_prepare(black_box(&unwrap_input)))
    });
    // Finish alone: each iteration's prepare is set-up, not measured.
    g.bench_function("unwrap_finish", |b| {
        b.iter_batched(
            || unwrap_prepare(&unwrap_input).expect("prepare"),
            |prepared| unwrap_finish(black_box(&unwrap_input), prepared, Some(&alice.signet)),
            criterion::BatchSize::SmallInput,
        )
    });
    g.bench_function("unwrap_both", |b| {
        b.iter(|| {
            let prepared = unwrap_prepare(black_box(&unwrap_input)).expect("prepare");
            unwrap_finish(&unwrap_input, prepared, Some(&alice.signet)).expect("finish")
        })
    });
    g.finish();
    c.final_summary();
}
