//! One check for all the Ed25519 signatures one key made on one message.
//!
//! A destination checks three origin signatures per message (248, 249, 255) and a recipient some
//! five author signatures, each with the same key; one at a time that is a double scalar
//! multiplication per signature, the largest part of a DMTP ingest's CPU. Checked together, with
//! a random 128-bit weight `z_i` per signature, it is one multi-scalar multiplication:
//!
//! ```text
//! Σ z_i·R_i + (Σ z_i·k_i)·A − (Σ z_i·s_i)·B = 0        k_i = SHA-512(R_i ‖ A ‖ M_i) mod ℓ
//! ```
//!
//! [`verify`] returns `true` only where each signature would pass `verify_strict` on its own,
//! with the same preconditions (canonical `s`, canonical `R` that is not of small order, a key not
//! of small order) and the same cofactorless equation, summed. A `false` says only that at least
//! one did not pass or the batch could not tell: the caller then checks them one by one, so every
//! verdict it reports is the single signature's own.
//!
//! The one difference from checking singly: a signature whose equation is off by a point of small
//! order only (`s·B − k·A = R + T`, `T` in the 8-torsion) fails `verify_strict` but can pass the
//! batch when the weights cancel `T`. Making such a signature takes the signing key (the
//! prime-order part must be right), so it lets nobody speak for a signer; it lets a signer make a
//! message other verifiers may refuse, which harms only that signer. A forgery by anyone else
//! passes the batch with probability at most 2^-128 per check, as it would pass singly.

use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use ed25519_dalek::VerifyingKey;
use rand::RngCore;
use sha2::{Digest, Sha512};

use super::chunk::SIG_LEN;

/// Whether every `(data, signature)` verifies under `key` as `verify_strict` would; see the
/// module documentation for what `false` means.
pub(super) fn verify(key: &VerifyingKey, items: &[(&[u8], &[u8; SIG_LEN])]) -> bool {
    if items.is_empty() || key.is_weak() {
        return false;
    }
    let mut rng = rand::thread_rng();
    let mut b_weight = Scalar::ZERO;
    let mut a_weight = Scalar::ZERO;
    let mut scalars = Vec::with_capacity(items.len() + 2);
    let mut points = Vec::with_capacity(items.len() + 2);
    for (data, sig) in items {
        let mut r_bytes = [0u8; 32];
        let mut s_bytes = [0u8; 32];
        r_bytes.copy_from_slice(&sig[..32]);
        s_bytes.copy_from_slice(&sig[32..]);
        let Some(s) = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes)) else {
            return false;
        };
        // verify_strict compares the canonical encoding of s·B − k·A with R's bytes, so a
        // non-canonical R never passes it.
        if !canonical_y(&r_bytes) {
            return false;
        }
        let Some(r) = CompressedEdwardsY(r_bytes).decompress() else {
            return false;
        };
        if r.is_small_order() {
            return false;
        }
        let k = Scalar::from_bytes_mod_order_wide(
            &Sha512::new()
                .chain_update(r_bytes)
                .chain_update(key.as_bytes())
                .chain_update(data)
                .finalize()
                .into(),
        );
        let mut z = [0u8; 16];
        rng.fill_bytes(&mut z);
        // Odd, so never zero: a zero weight would drop its signature from the sum.
        let z = Scalar::from(u128::from_le_bytes(z) | 1);
        b_weight += z * s;
        a_weight += z * k;
        scalars.push(z);
        points.push(r);
    }
    scalars.push(-b_weight);
    points.push(ED25519_BASEPOINT_POINT);
    scalars.push(a_weight);
    points.push(key.to_edwards());
    EdwardsPoint::vartime_multiscalar_mul(scalars, points).is_identity()
}

/// Whether the y coordinate of an encoded point (sign bit cleared) is below p = 2^255 − 19, i.e.
/// the encoding is the one `compress` would produce (the sign bit of x = 0 aside, which only the
/// small-order points (0, ±1) have, and those are refused anyway).
fn canonical_y(bytes: &[u8; 32]) -> bool {
    let top = bytes[31] & 0x7f;
    !(top == 0x7f && bytes[1..31].iter().all(|&b| b == 0xff) && bytes[0] >= 0xed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signature, Signer, SigningKey};
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    type Items = Vec<(Vec<u8>, [u8; SIG_LEN])>;

    fn signed(n: usize) -> (SigningKey, Items) {
        let mut rng = StdRng::seed_from_u64(7);
        let key = SigningKey::generate(&mut rng);
        let items = (0..n)
            .map(|i| {
                let data = vec![i as u8; 100 * i + 1];
                let sig = key.sign(&data).to_bytes();
                (data, sig)
            })
            .collect();
        (key, items)
    }

    fn batch(key: &VerifyingKey, items: &[(Vec<u8>, [u8; SIG_LEN])]) -> bool {
        let refs: Vec<(&[u8], &[u8; SIG_LEN])> =
            items.iter().map(|(d, s)| (d.as_slice(), s)).collect();
        verify(key, &refs)
    }

    fn singly(key: &VerifyingKey, items: &[(Vec<u8>, [u8; SIG_LEN])]) -> bool {
        items
            .iter()
            .all(|(d, s)| key.verify_strict(d, &Signature::from_bytes(s)).is_ok())
    }

    #[test]
    fn valid_signatures_pass_together() {
        for n in 1..6 {
            let (key, items) = signed(n);
            assert!(batch(&key.verifying_key(), &items), "{n}");
        }
        assert!(!verify(&signed(1).0.verifying_key(), &[]));
    }

    /// Every single-bit flip of any signature or any signed byte, and another key: the batch
    /// agrees with verify_strict on each.
    #[test]
    fn agrees_with_verify_strict_on_every_flip() {
        let (key, items) = signed(3);
        let vk = key.verifying_key();
        let other = SigningKey::generate(&mut StdRng::seed_from_u64(8)).verifying_key();
        assert!(!batch(&other, &items));
        for i in 0..items.len() {
            for byte in 0..SIG_LEN {
                for bit in [0x01u8, 0x80] {
                    let mut t = items.clone();
                    t[i].1[byte] ^= bit;
                    assert_eq!(batch(&vk, &t), singly(&vk, &t), "sig {i} byte {byte}");
                }
            }
            for byte in 0..items[i].0.len().min(40) {
                let mut t = items.clone();
                t[i].0[byte] ^= 0x04;
                assert!(!batch(&vk, &t), "data {i} byte {byte}");
            }
        }
        // Two signatures swapped between their messages.
        let mut t = items.clone();
        let (a, b) = (t[0].1, t[1].1);
        t[0].1 = b;
        t[1].1 = a;
        assert!(!batch(&vk, &t));
    }

    /// s ≥ ℓ (s + ℓ still satisfies the equation) and an R of small order are refused, as
    /// verify_strict refuses them.
    #[test]
    fn strict_preconditions() {
        let (key, mut items) = signed(2);
        let vk = key.verifying_key();
        let s: [u8; 32] = items[1].1[32..].try_into().unwrap();
        let s = Scalar::from_canonical_bytes(s).unwrap();
        // ℓ = 2^252 + 27742317777372353535851937790883648493, little-endian.
        let ell: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
            0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        // s + ℓ as a 256-bit integer (s < ℓ < 2^253, so no overflow).
        let mut sum = [0u8; 32];
        let mut carry = 0u16;
        for (i, out) in sum.iter_mut().enumerate() {
            let v = u16::from(s.as_bytes()[i]) + u16::from(ell[i]) + carry;
            *out = v as u8;
            carry = v >> 8;
        }
        items[1].1[32..].copy_from_slice(&sum);
        assert!(!singly(&vk, &items));
        assert!(!batch(&vk, &items));

        let (_, mut items) = signed(2);
        // The identity (0, 1) as R.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        items[0].1[..32].copy_from_slice(&identity);
        assert!(!batch(&vk, &items));
    }

    #[test]
    fn canonical_y_matches_compress() {
        let p_minus_1: [u8; 32] = {
            let mut b = [0xffu8; 32];
            b[0] = 0xec;
            b[31] = 0x7f;
            b
        };
        assert!(canonical_y(&p_minus_1));
        for low in 0xed..=0xffu8 {
            let mut b = p_minus_1;
            b[0] = low;
            assert!(!canonical_y(&b), "{low:#x}");
            if let Some(point) = CompressedEdwardsY(b).decompress() {
                assert_ne!(point.compress().0, b, "{low:#x}");
            }
            b[31] |= 0x80;
            assert!(!canonical_y(&b), "{low:#x} with sign bit");
        }
        // Every decompressible encoding whose y is canonical compresses back to itself, apart
        // from the sign bit of x = 0.
        let mut rng = StdRng::seed_from_u64(9);
        for _ in 0..2000 {
            let mut b = [0u8; 32];
            rng.fill_bytes(&mut b);
            if let Some(p) = CompressedEdwardsY(b).decompress() {
                assert_eq!(p.compress().0 == b, canonical_y(&b), "{b:02x?}");
            }
        }
    }
}
