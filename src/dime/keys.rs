//! Private key files (DIME.md §6.1): magic 1952 (org) or 2013 (user), field 1 the 32-byte Ed25519
//! seed, then the 32-byte secp256k1 scalar in field 3 (org) or 2 (user). The scalar's length prefix is
//! 2 bytes in D1 (libdime HEAD) and 1 byte in D2/D3; we read both and write D2.
//!
//! Secret material lives in `ed25519_dalek::SigningKey` and `k256::SecretKey`, which zeroize on drop;
//! serialized forms are returned in `Zeroizing` buffers.

use ed25519_dalek::{SigningKey, VerifyingKey};
use k256::elliptic_curve::sec1::ToEncodedPoint;
use rand::{CryptoRng, RngCore};
use zeroize::{Zeroize, Zeroizing};

use super::Error;
use super::codec::{Reader, Writer};
use super::object::{Dialect, Magic, encode_object, parse_object, peek_magic};

/// Org or user key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// Organizational key (magic 1952): the POK and the org encryption key.
    Org,
    /// User key (magic 2013).
    User,
}

impl KeyKind {
    /// The key file's magic.
    pub fn magic(self) -> Magic {
        match self {
            KeyKind::Org => Magic::OrgKey,
            KeyKind::User => Magic::UserKey,
        }
    }

    /// Field id of the encryption scalar: 3 for org keys, 2 for user keys (as in the signets).
    pub fn encryption_field(self) -> u8 {
        match self {
            KeyKind::Org => 3,
            KeyKind::User => 2,
        }
    }
}

/// A private key file: an Ed25519 signing key and a secp256k1 encryption key.
///
/// Accessors: [`kind`](Self::kind), [`dialect`](Self::dialect),
/// [`signing_key`](Self::signing_key) (Ed25519 secret), [`verifying_key`](Self::verifying_key),
/// [`encryption_secret`](Self::encryption_secret) (secp256k1 scalar),
/// [`encryption_public`](Self::encryption_public).
#[derive(Clone)]
pub struct PrivateKey {
    kind: KeyKind,
    dialect: Dialect,
    signing: SigningKey,
    encryption: k256::SecretKey,
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secret material.
        f.debug_struct("PrivateKey")
            .field("kind", &self.kind)
            .field("dialect", &self.dialect)
            .field("verifying_key", &self.verifying_key())
            .finish_non_exhaustive()
    }
}

impl PartialEq for PrivateKey {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind
            && self.dialect == other.dialect
            && self.signing.to_bytes() == other.signing.to_bytes()
            && self.encryption.to_bytes() == other.encryption.to_bytes()
    }
}

impl Eq for PrivateKey {}

impl PrivateKey {
    /// A fresh key from a caller-supplied RNG; it is written in dialect D2.
    pub fn generate<R: CryptoRng + RngCore>(kind: KeyKind, rng: &mut R) -> PrivateKey {
        PrivateKey {
            kind,
            dialect: Dialect::D2,
            signing: SigningKey::generate(rng),
            encryption: k256::SecretKey::random(rng),
        }
    }

    /// Build from parts (dialect D2).
    pub fn from_parts(kind: KeyKind, signing: SigningKey, encryption: k256::SecretKey) -> Self {
        PrivateKey {
            kind,
            dialect: Dialect::D2,
            signing,
            encryption,
        }
    }

    /// The same key, to be written in `dialect` (D1 writes the scalar length as u16; D2 and D3
    /// are identical for key files).
    pub fn with_dialect(mut self, dialect: Dialect) -> PrivateKey {
        self.dialect = if dialect == Dialect::D3 {
            Dialect::D2
        } else {
            dialect
        };
        self
    }

    /// Parse a binary key file of either kind (magic 1952 or 2013), D1 or D2/D3.
    pub fn parse(input: &[u8]) -> Result<PrivateKey, Error> {
        match peek_magic(input) {
            Some(1952) => Self::parse_kind(input, KeyKind::Org),
            Some(2013) => Self::parse_kind(input, KeyKind::User),
            Some(got) => Err(Error::BadMagic {
                expected: "1952 (org key) or 2013 (user key)",
                got,
            }),
            None => Err(Error::Truncated {
                object: "key",
                need: 5,
                have: input.len(),
            }),
        }
    }

    /// Parse armored text or binary bytes (a key file's contents).
    pub fn parse_any(input: &[u8]) -> Result<PrivateKey, Error> {
        let bytes = Zeroizing::new(super::armor::decode_any(input)?);
        Self::parse(&bytes)
    }

    /// Parse a binary key file that must be of `kind`.
    pub fn parse_kind(input: &[u8], kind: KeyKind) -> Result<PrivateKey, Error> {
        let object = kind.magic().name();
        let payload = parse_object(input, kind.magic())?;
        let mut r = Reader::new(payload, object);
        expect_field(&mut r, object, 1)?;
        expect_len(&mut r, object, 1, 1)?;
        let mut seed = Zeroizing::new([0u8; 32]);
        seed.copy_from_slice(r.take(32)?);
        let signing = SigningKey::from_bytes(&seed);

        let enc_fid = kind.encryption_field();
        expect_field(&mut r, object, enc_fid)?;
        // D1 writes this length as u16 0x0020, D2/D3 as u8 0x20 (DIME.md §6.1); a zero first byte
        // can only be the high byte of a D1 length.
        let (dialect, width) = if r.peek() == Some(0) {
            (Dialect::D1, 2)
        } else {
            (Dialect::D2, 1)
        };
        expect_len(&mut r, object, enc_fid, width)?;
        let encryption = k256::SecretKey::from_slice(r.take(32)?).map_err(|_| Error::BadKey {
            object,
            field: enc_fid,
            what: "secp256k1 scalar",
        })?;
        r.expect_empty()?;
        Ok(PrivateKey {
            kind,
            dialect,
            signing,
            encryption,
        })
    }

    /// The binary key file, in the dialect it was read in (D2 for generated keys).
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut w = Writer::new();
        w.u8(1);
        w.u8(32);
        w.bytes(self.signing.as_bytes());
        w.u8(self.kind.encryption_field());
        match self.dialect {
            Dialect::D1 => w.u16(32),
            Dialect::D2 | Dialect::D3 => w.u8(32),
        }
        let mut scalar = self.encryption.to_bytes();
        w.bytes(&scalar);
        scalar.zeroize();
        let mut payload = w.into_inner();
        // A 68- or 69-byte payload always fits a u24 length.
        let out = encode_object(self.kind.magic(), &payload).unwrap_or_default();
        payload.zeroize();
        Zeroizing::new(out)
    }

    /// Org or user.
    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// Dialect the key was read in.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// The Ed25519 signing key (the org POK or the user signing key).
    pub fn signing_key(&self) -> &SigningKey {
        &self.signing
    }

    /// Public half of [`signing_key`](Self::signing_key).
    pub fn verifying_key(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    /// The secp256k1 encryption secret.
    pub fn encryption_secret(&self) -> &k256::SecretKey {
        &self.encryption
    }

    /// Public half of the encryption key.
    pub fn encryption_public(&self) -> k256::PublicKey {
        super::message::public_of(&self.encryption)
    }

    /// The public encryption key as it appears in a signet: 33-byte compressed SEC1.
    pub fn encryption_public_bytes(&self) -> Vec<u8> {
        self.encryption_public()
            .to_encoded_point(true)
            .as_bytes()
            .to_vec()
    }
}

fn expect_field(r: &mut Reader<'_>, object: &'static str, fid: u8) -> Result<(), Error> {
    let got = r.u8()?;
    if got == fid {
        Ok(())
    } else if got < fid {
        Err(Error::UnknownField { object, field: got })
    } else {
        Err(Error::MissingField { object, field: fid })
    }
}

fn expect_len(
    r: &mut Reader<'_>,
    object: &'static str,
    fid: u8,
    width: usize,
) -> Result<(), Error> {
    let len = r.uint(width)?;
    if len == 32 {
        Ok(())
    } else {
        Err(Error::FieldLength {
            object,
            field: fid,
            expected: "32",
            got: len,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dime::armor::decode_any;
    use rand::SeedableRng;

    pub(crate) fn vector(path: &str) -> Vec<u8> {
        let p = format!(
            "{}/../shared/dime-vectors/{path}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
    }

    #[test]
    fn every_vector_key_parses_and_reencodes_identically() {
        let table = [
            ("d1-libdime/auth.keys", KeyKind::User, Dialect::D1),
            ("d1-libdime/recp.keys", KeyKind::User, Dialect::D1),
            ("d1-libdime/orig.keys", KeyKind::Org, Dialect::D1),
            ("d1-libdime/dest.keys", KeyKind::Org, Dialect::D1),
            ("d2-magma-dime/org-key.bin", KeyKind::Org, Dialect::D2),
            ("d2-magma-dime/user-key.bin", KeyKind::User, Dialect::D2),
            ("d3-prime/prime.user.key.bin", KeyKind::User, Dialect::D2),
            ("d3-prime/prime.user.key.pem", KeyKind::User, Dialect::D2),
            ("d3-prime/sandbox-org.key.pem", KeyKind::Org, Dialect::D2),
        ];
        for (path, kind, dialect) in table {
            let bytes = decode_any(&vector(path)).unwrap();
            let key = PrivateKey::parse(&bytes).unwrap_or_else(|e| panic!("{path}: {e}"));
            assert_eq!(PrivateKey::parse_any(&vector(path)).unwrap(), key);
            assert_eq!(key.kind(), kind, "{path}");
            assert_eq!(key.dialect(), dialect, "{path}");
            assert_eq!(&key.to_bytes()[..], &bytes[..], "{path}");
            assert_eq!(key.encryption_public_bytes().len(), 33);
        }
    }

    #[test]
    fn d2_org_key_matches_the_published_pok() {
        let key = PrivateKey::parse(&vector("d2-magma-dime/org-key.bin")).unwrap();
        let pok = "3ce04f97967426dab7ffc40af059162809644729f2d89d1d5ea637c61d22de6b";
        let hex: String = key
            .verifying_key()
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hex, pok);
    }

    #[test]
    fn generated_keys_round_trip_in_d2() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for kind in [KeyKind::Org, KeyKind::User] {
            let key = PrivateKey::generate(kind, &mut rng);
            let bytes = key.to_bytes();
            assert_eq!(bytes.len(), 73);
            assert_eq!(PrivateKey::parse(&bytes).unwrap(), key);
        }
    }

    #[test]
    fn malformed_keys_get_precise_errors() {
        let good = vector("d2-magma-dime/org-key.bin");
        assert!(matches!(
            PrivateKey::parse(&good[..40]),
            Err(Error::Truncated { .. })
        ));
        let mut wrong_fid = good.clone();
        wrong_fid[5] = 2;
        assert_eq!(
            PrivateKey::parse(&wrong_fid),
            Err(Error::MissingField {
                object: "org key",
                field: 1
            })
        );
        let mut zero_scalar = good.clone();
        zero_scalar[41..].fill(0);
        assert_eq!(
            PrivateKey::parse(&zero_scalar),
            Err(Error::BadKey {
                object: "org key",
                field: 3,
                what: "secp256k1 scalar"
            })
        );
        assert!(matches!(
            PrivateKey::parse(&vector("d2-magma-dime/org-signet.bin")),
            Err(Error::BadMagic { got: 1776, .. })
        ));
    }
}
