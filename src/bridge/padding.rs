//! Size privacy: the size buckets every sealed message is padded to, so that what crosses the
//! wire between gateways (and what a mailbox store holds) reveals a bucket, not a length.
//!
//! # The buckets
//!
//! A geometric series with `steps` buckets per doubling, from `minimum` up:
//! `minimum · 2^e · (1 + j/steps)` for `e = 0, 1, …` and `j = 0..steps`. The default,
//! [`Buckets::DEFAULT`], is 4 KiB with 4 steps per doubling:
//!
//! ```text
//! 4096 5120 6144 7168 | 8192 10240 12288 14336 | 16384 20480 … | 1048576 1310720 …
//! ```
//!
//! Why these: the smallest D/MIME message dimegate seals is already about 3.6 KiB (five standard
//! chunks of at least 256 bytes plus keyslots, five signature chunks: 1.5 KiB of those alone), so
//! a 4 KiB floor costs short mails little and makes every mail of up to a few hundred bytes of
//! content look the same. Four steps per doubling bound the overhead to 25 % (powers of two would
//! cost up to 100 %) while revealing only which of about four buckets per doubling a message falls
//! in: two bits more than powers of two. A bucket is exact: the sealed message is that many bytes,
//! tracing block included, so the DMTP `SIZE=` and the bytes after `DATA` show the bucket only.
//!
//! # Overhead, stated
//!
//! For a message whose least sealed length is `m`, the padded length `b` satisfies
//! `b = minimum` when `m + 5 ≤ minimum`, and otherwise `b − m < (m + 5) / steps + 5`: the bucket
//! `p` below the first bucket `≥ m + 5` is `< m + 5`, and the step after it is `base/steps ≤
//! p/steps`; the `5` is the least a tracing block adds (see
//! [`crate::dime::message::seal_sized`]). With the default, at most 25 % plus 6 bytes.
//!
//! # Mechanism
//!
//! DIME.md §7.5 padding, lengthened: [`crate::dime::message::seal_sized`] gives each chunk its
//! least padding and the rest to the last content chunk, in 16-byte steps, with the pad byte equal
//! to the padding length mod 256 and every pad byte equal to it (libdime's decoder compares the
//! truncated length and checks the first `len mod 256` bytes; ours checks all of them). A D/MIME
//! message always has an odd length and every bucket is a multiple of 16, so every padded message
//! also starts with a zero-filled tracing block of 5..=20 bytes (DIME.md §7.1), which both
//! decoders skip; as it is always there, its presence says nothing either.

use crate::dime::message::{SizePolicy, padding_reaches};

/// A bucket series: see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buckets {
    minimum: usize,
    steps: usize,
}

/// Why a bucket series is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "size buckets need a power-of-two minimum of 1 KiB to 1 GiB and a power-of-two number of \
     steps per doubling from 1 to 64 (got minimum {minimum}, steps {steps})"
)]
pub struct InvalidBuckets {
    /// The minimum asked for.
    pub minimum: usize,
    /// The steps asked for.
    pub steps: usize,
}

/// The largest message the D/MIME frame can carry (u32 length), tracing block aside.
const MAX_SIZE: usize = u32::MAX as usize;

impl Buckets {
    /// 4 KiB, four buckets per doubling.
    pub const DEFAULT: Buckets = Buckets {
        minimum: 4096,
        steps: 4,
    };

    /// A series from `minimum` (a power of two, 1 KiB to 1 GiB) with `steps` buckets per
    /// doubling (a power of two, 1 to 64), so every bucket is a whole number of 16-byte blocks.
    pub fn new(minimum: usize, steps: usize) -> Result<Buckets, InvalidBuckets> {
        let ok = minimum.is_power_of_two()
            && (1024..=1 << 30).contains(&minimum)
            && steps.is_power_of_two()
            && steps <= 64;
        if !ok {
            return Err(InvalidBuckets { minimum, steps });
        }
        Ok(Buckets { minimum, steps })
    }

    /// The smallest bucket.
    pub fn minimum(&self) -> usize {
        self.minimum
    }

    /// Buckets per doubling.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// Every bucket, ascending, up to the largest message D/MIME can frame.
    pub fn sizes(&self) -> impl Iterator<Item = usize> + '_ {
        (0..usize::BITS)
            .map_while(move |e| self.minimum.checked_shl(e).filter(|b| *b <= MAX_SIZE))
            .flat_map(move |base| (0..self.steps).map(move |j| base + j * (base / self.steps)))
            .take_while(|b| *b <= MAX_SIZE)
    }

    /// The bucket a message whose least sealed length is `minimum_len` is padded to: the smallest
    /// bucket padding can reach exactly, or `None` past the largest.
    pub fn bucket_for(&self, minimum_len: usize) -> Option<usize> {
        self.sizes().find(|b| padding_reaches(minimum_len, *b))
    }

    /// Whether `len` is a bucket size (what a wire observer may see).
    pub fn is_bucket(&self, len: usize) -> bool {
        self.sizes().take_while(|b| *b <= len).any(|b| b == len)
    }
}

impl Default for Buckets {
    fn default() -> Self {
        Buckets::DEFAULT
    }
}

impl SizePolicy for Buckets {
    fn sealed_len(&self, minimum: usize) -> Option<usize> {
        self.bucket_for(minimum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::testkit;
    use crate::dime::message::{Actor, canonical_form, open};
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn default_series() {
        let first: Vec<usize> = Buckets::DEFAULT.sizes().take(9).collect();
        assert_eq!(
            first,
            [4096, 5120, 6144, 7168, 8192, 10240, 12288, 14336, 16384]
        );
        assert!(Buckets::DEFAULT.sizes().all(|b| b % 16 == 0));
        assert!(Buckets::DEFAULT.sizes().last().unwrap() <= MAX_SIZE);
        assert!(Buckets::DEFAULT.is_bucket(10240));
        assert!(!Buckets::DEFAULT.is_bucket(10241));
        assert!(!Buckets::DEFAULT.is_bucket(4095));
    }

    #[test]
    fn invalid_series_are_refused() {
        for (m, s) in [(1000, 4), (512, 4), (4096, 3), (4096, 0), (4096, 128)] {
            assert_eq!(
                Buckets::new(m, s),
                Err(InvalidBuckets {
                    minimum: m,
                    steps: s
                })
            );
        }
        assert_eq!(Buckets::new(4096, 4), Ok(Buckets::DEFAULT));
        let powers: Vec<usize> = Buckets::new(1024, 1).unwrap().sizes().take(4).collect();
        assert_eq!(powers, [1024, 2048, 4096, 8192]);
    }

    #[test]
    fn bucket_for_respects_what_padding_can_reach() {
        let b = Buckets::DEFAULT;
        assert_eq!(b.bucket_for(0), Some(4096));
        assert_eq!(b.bucket_for(4091), Some(4096));
        // 1..=4 bytes short: only a 16-byte step or a 5-byte tracing block could fill it.
        assert_eq!(b.bucket_for(4092), Some(5120));
        assert_eq!(b.bucket_for(4096), Some(4096));
        assert_eq!(b.bucket_for(4080), Some(4096));
        assert_eq!(b.bucket_for(MAX_SIZE), None);
    }

    /// Overhead bound of the module documentation.
    fn assert_bound(b: &Buckets, m: usize, padded: usize) {
        if m + 5 <= b.minimum() {
            assert_eq!(padded, b.minimum(), "m={m}");
        } else {
            assert!(
                padded - m < (m + 5) / b.steps() + 5,
                "m={m} padded={padded}"
            );
        }
    }

    #[test]
    fn overhead_bound_holds_over_a_sweep() {
        for b in [Buckets::DEFAULT, Buckets::new(1024, 1).unwrap()] {
            for m in (0..200_000)
                .step_by(7)
                .chain([1 << 20, (1 << 20) + 1, 3 << 24])
            {
                let padded = b.bucket_for(m).unwrap();
                assert!(padding_reaches(m, padded));
                assert_bound(&b, m, padded);
            }
        }
    }

    fn message_of(body_len: usize) -> Vec<u8> {
        let mut m = testkit::mail_headers("alice@north.test", "bob@south.test").into_bytes();
        let line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit.\r\n";
        let mut body = Vec::new();
        while body.len() < body_len {
            body.extend_from_slice(line);
        }
        body.truncate(body_len);
        m.extend_from_slice(&body);
        m
    }

    /// Buckets that remember the least length seal asked about.
    #[derive(Debug)]
    struct Recording(Buckets, std::cell::Cell<usize>);

    impl SizePolicy for Recording {
        fn sealed_len(&self, minimum: usize) -> Option<usize> {
            self.1.set(minimum);
            self.0.bucket_for(minimum)
        }
    }

    /// Many message sizes: the sealed length is always a bucket, within the stated overhead of
    /// the least length, and the recipient opens it to the canonical input.
    #[test]
    fn sealed_lengths_are_buckets_and_open() {
        let w = testkit::world();
        let mut rng = StdRng::seed_from_u64(9);
        let sizes = (0..48)
            .map(|i| i * 89)
            .chain([5000, 9000, 20_000, 70_000, 300_000, 1_200_000]);
        for body_len in sizes {
            let msg = message_of(body_len);
            for buckets in [Buckets::DEFAULT, Buckets::new(1024, 1).unwrap()] {
                let policy = Recording(buckets, std::cell::Cell::new(0));
                let sealed = w.seal_with(&msg, &policy, &mut rng).unwrap();
                assert!(
                    buckets.is_bucket(sealed.len()),
                    "body {body_len}: sealed {} is no bucket",
                    sealed.len()
                );
                assert_bound(&buckets, policy.1.get(), sealed.len());
                // D/MIME lengths are odd, buckets even: there is always a tracing block.
                assert_eq!(&sealed[..2], &[0x07, 0x2d]);
                let report = open(
                    &sealed,
                    Actor::Recipient,
                    w.bob.key.encryption_secret(),
                    &w.parties_north_to_south(),
                )
                .unwrap();
                assert_eq!(
                    report.rfc5322().unwrap(),
                    canonical_form(&msg).unwrap(),
                    "body {body_len}"
                );
            }
        }
    }

    /// A policy asking for a length padding cannot reach gets a typed refusal, not a wrong size.
    #[derive(Debug)]
    struct Off(usize);

    impl SizePolicy for Off {
        fn sealed_len(&self, minimum: usize) -> Option<usize> {
            Some(minimum + self.0)
        }
    }

    #[test]
    fn unreachable_targets_are_refused() {
        let w = testkit::world();
        let mut rng = StdRng::seed_from_u64(6);
        let msg = message_of(100);
        for off in [1, 2, 3, 4] {
            let e = w.seal_with(&msg, &Off(off), &mut rng).unwrap_err();
            assert!(matches!(e, crate::bridge::BridgeError::TooLarge(_)), "{e}");
        }
        for off in [0, 5, 16, 21, 4000] {
            let sealed = w.seal_with(&msg, &Off(off), &mut rng).unwrap();
            let again = w.seal_with(&msg, &Off(0), &mut rng).unwrap();
            assert_eq!(sealed.len(), again.len() + off);
        }
    }

    /// A sealed message with a tracing block as libdime frames it: magic 1837, a u16 length of
    /// at least 1, then the message whose u32 length covers the rest exactly.
    #[test]
    fn tracing_block_is_framed_as_libdime_reads_it() {
        let w = testkit::world();
        let mut rng = StdRng::seed_from_u64(4);
        for body_len in 0..40 {
            let sealed = w
                .wrap(&message_of(body_len * 3), None, Buckets::DEFAULT, &mut rng)
                .unwrap();
            assert_eq!(&sealed[..2], &[0x07, 0x2d]);
            let t = usize::from(u16::from_be_bytes([sealed[2], sealed[3]]));
            assert!((1..=16).contains(&t));
            assert!(sealed[4..4 + t].iter().all(|b| *b == 0));
            assert_eq!(&sealed[4 + t..6 + t], &[0x07, 0x37]);
            let len = u32::from_be_bytes(sealed[6 + t..10 + t].try_into().unwrap());
            assert_eq!(len as usize, sealed.len() - 10 - t);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn any_body_seals_to_a_bucket(body in proptest::collection::vec(any::<u8>(), 0..12_000), seed: u64) {
            let w = testkit::world();
            let mut msg = testkit::mail_headers("alice@north.test", "bob@south.test").into_bytes();
            msg.extend_from_slice(&body);
            let mut rng = StdRng::seed_from_u64(seed);
            let sealed = w.wrap(&msg, None, Buckets::DEFAULT, &mut rng).unwrap();
            prop_assert!(Buckets::DEFAULT.is_bucket(sealed.len()));
            let report = open(
                &sealed,
                Actor::Destination,
                w.south.key.encryption_secret(),
                &w.parties_north_to_south(),
            );
            prop_assert!(report.is_ok(), "{:?}", report.err());
        }
    }
}
