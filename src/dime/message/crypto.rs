//! KEK derivation, keyslots and AES-256-CBC without padding (DIME.md §7.6).

use aes::Aes256;
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit, generic_array::GenericArray};
use k256::{PublicKey, SecretKey};
use rand::{CryptoRng, RngCore};
use sha2::{Digest, Sha512};
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::chunk::SLOT_LEN;

/// An AES-256 key and IV: a KEK, or a chunk's key.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct AesKeyIv {
    /// 32-byte AES-256 key.
    pub key: [u8; 32],
    /// 16-byte CBC IV.
    pub iv: [u8; 16],
}

impl std::fmt::Debug for AesKeyIv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AesKeyIv(..)")
    }
}

impl AesKeyIv {
    pub(crate) fn random(rng: &mut (impl CryptoRng + RngCore)) -> Self {
        let mut k = AesKeyIv {
            key: [0; 32],
            iv: [0; 16],
        };
        rng.fill_bytes(&mut k.key);
        rng.fill_bytes(&mut k.iv);
        k
    }

    /// The 48 bytes the way libdime stores a KEK (`kek.*.hex` in the vectors): IV then key.
    pub fn to_libdime_bytes(&self) -> [u8; 48] {
        let mut out = [0u8; 48];
        out[..16].copy_from_slice(&self.iv);
        out[16..].copy_from_slice(&self.key);
        out
    }

    /// AES-256-CBC without padding, in place. `buf.len()` must be a multiple of 16; callers only
    /// pass block-aligned payloads (checked by the chunk parser), any tail is left untouched.
    pub(crate) fn encrypt(&self, buf: &mut [u8]) {
        let mut enc = cbc::Encryptor::<Aes256>::new(&self.key.into(), &self.iv.into());
        for block in buf.chunks_exact_mut(16) {
            enc.encrypt_block_mut(GenericArray::from_mut_slice(block));
        }
    }

    /// Inverse of [`encrypt`](Self::encrypt).
    pub(crate) fn decrypt(&self, buf: &mut [u8]) {
        let mut dec = cbc::Decryptor::<Aes256>::new(&self.key.into(), &self.iv.into());
        for block in buf.chunks_exact_mut(16) {
            dec.decrypt_block_mut(GenericArray::from_mut_slice(block));
        }
    }
}

/// KEK between one side's private key and the other side's public key: SHA-512 of the ECDH
/// x-coordinate, IV = h[0..16] xor h[16..32], key = h[32..64] (DIME.md §7.6).
pub fn derive_kek(secret: &SecretKey, public: &PublicKey) -> AesKeyIv {
    let mut x = shared_x(secret, public);
    let mut h = Sha512::digest(x);
    x.zeroize();
    let mut kek = AesKeyIv {
        key: [0; 32],
        iv: [0; 16],
    };
    for i in 0..16 {
        kek.iv[i] = h[i] ^ h[16 + i];
    }
    kek.key.copy_from_slice(&h[32..64]);
    h.as_mut_slice().zeroize();
    kek
}

/// `secret`'s public key, by k256's precomputed multiples of the generator: `public_key()`
/// multiplies the generator as any point, several times slower, and a seal does this for its
/// ephemeral key and every open for the actor's own key.
pub fn public_of(secret: &SecretKey) -> PublicKey {
    use k256::elliptic_curve::ops::MulByGenerator;
    let point = k256::ProjectivePoint::mul_by_generator(secret.to_nonzero_scalar().as_ref());
    // Never the identity, since the scalar is not zero; the fallback is for form's sake.
    PublicKey::from_affine(point.to_affine()).unwrap_or_else(|_| secret.public_key())
}

/// The x coordinate of `secret` × `public`: by libsecp256k1, which does the scalar
/// multiplication in about half k256's time (a wrap does four, an unwrap two), both in constant
/// time; by k256 if a key does not convert, which a valid k256 key always does.
fn shared_x(secret: &SecretKey, public: &PublicKey) -> [u8; 32] {
    use k256::elliptic_curve::sec1::ToEncodedPoint;
    let mut bytes: [u8; 32] = secret.to_bytes().into();
    let scalar = secp256k1::SecretKey::from_secret_bytes(bytes);
    bytes.zeroize();
    let point = <[u8; 65]>::try_from(public.to_encoded_point(false).as_bytes())
        .ok()
        .and_then(|b| secp256k1::PublicKey::from_byte_array_uncompressed(b).ok());
    let mut x = [0u8; 32];
    match (scalar, point) {
        (Ok(mut scalar), Some(point)) => {
            let mut xy = secp256k1::ecdh::shared_secret_point(&point, &scalar);
            x.copy_from_slice(&xy[..32]);
            xy.zeroize();
            scalar.non_secure_erase();
        }
        _ => {
            let shared = k256::ecdh::diffie_hellman(secret.to_nonzero_scalar(), public.as_affine());
            x.copy_from_slice(shared.raw_secret_bytes());
        }
    }
    x
}

/// A keyslot: `rand16 | (IV xor rand16) | K`, encrypted under the actor's KEK.
pub(crate) fn seal_keyslot(
    kek: &AesKeyIv,
    chunk: &AesKeyIv,
    rng: &mut (impl CryptoRng + RngCore),
) -> [u8; SLOT_LEN] {
    let mut slot = [0u8; SLOT_LEN];
    rng.fill_bytes(&mut slot[..16]);
    for i in 0..16 {
        slot[16 + i] = chunk.iv[i] ^ slot[i];
    }
    slot[32..].copy_from_slice(&chunk.key);
    kek.encrypt(&mut slot);
    slot
}

/// Recovers a chunk's key and IV from the actor's keyslot. Any 64 bytes "open"; whether they were
/// the right ones shows only when the chunk's plaintext is checked.
pub(crate) fn open_keyslot(kek: &AesKeyIv, slot: &[u8]) -> AesKeyIv {
    let mut buf = [0u8; SLOT_LEN];
    let n = slot.len().min(SLOT_LEN);
    buf[..n].copy_from_slice(&slot[..n]);
    kek.decrypt(&mut buf);
    let mut chunk = AesKeyIv {
        key: [0; 32],
        iv: [0; 16],
    };
    for i in 0..16 {
        chunk.iv[i] = buf[i] ^ buf[16 + i];
    }
    chunk.key.copy_from_slice(&buf[32..]);
    buf.zeroize();
    chunk
}

#[cfg(test)]
mod tests {
    #[test]
    fn libsecp256k1_and_k256_agree_on_the_shared_point() {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for _ in 0..64 {
            let a = k256::SecretKey::random(&mut rng);
            let b = k256::SecretKey::random(&mut rng);
            let k = k256::ecdh::diffie_hellman(a.to_nonzero_scalar(), b.public_key().as_affine());
            assert_eq!(
                &super::shared_x(&a, &b.public_key())[..],
                &k.raw_secret_bytes()[..]
            );
            assert_eq!(
                super::shared_x(&b, &a.public_key()),
                super::shared_x(&a, &b.public_key())
            );
        }
    }

    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn keyslot_round_trips() {
        let mut rng = StdRng::seed_from_u64(1);
        let kek = AesKeyIv::random(&mut rng);
        let chunk = AesKeyIv::random(&mut rng);
        let slot = seal_keyslot(&kek, &chunk, &mut rng);
        assert_eq!(open_keyslot(&kek, &slot), chunk);
    }

    #[test]
    fn kek_is_symmetric() {
        let mut rng = StdRng::seed_from_u64(2);
        let a = SecretKey::random(&mut rng);
        let b = SecretKey::random(&mut rng);
        assert_eq!(
            derive_kek(&a, &b.public_key()),
            derive_kek(&b, &a.public_key())
        );
    }

    #[test]
    fn cbc_matches_known_answer() {
        // NIST SP 800-38A F.2.5, CBC-AES256.Encrypt, first block.
        let key = AesKeyIv {
            key: *b"\x60\x3d\xeb\x10\x15\xca\x71\xbe\x2b\x73\xae\xf0\x85\x7d\x77\x81\x1f\x35\x2c\x07\x3b\x61\x08\xd7\x2d\x98\x10\xa3\x09\x14\xdf\xf4",
            iv: *b"\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f",
        };
        let mut block = *b"\x6b\xc1\xbe\xe2\x2e\x40\x9f\x96\xe9\x3d\x7e\x11\x73\x93\x17\x2a";
        key.encrypt(&mut block);
        assert_eq!(
            block,
            *b"\xf5\x8c\x4c\x04\xd6\xe5\xf1\xba\x77\x9e\xab\xfb\x5f\x7b\xfb\xd6"
        );
    }
}
