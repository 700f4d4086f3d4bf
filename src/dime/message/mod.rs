//! D/MIME messages (DIME.md §7): sealing an RFC 5322 message for the four actors, signing it as
//! origin, and opening it as any actor with every check that actor can make.
//!
//! This module owns the message format only: chunk framing, keyslots, KEK derivation, AES-256-CBC
//! chunk encryption without padding, padding, per-chunk signatures, the tree and full signatures of
//! the author and the bounce and full signatures of the origin. It is sans-I/O: bytes in, bytes
//! out, randomness from a caller-supplied RNG, so tests and fuzzing are deterministic. Signets
//! enter as [`Party`] values (name, crypto fingerprint, public keys).
//!
//! # Who sees what
//!
//! | actor | opens | verifies |
//! |---|---|---|
//! | author, recipient | every chunk | every chunk's author signature, tree (225), full (226), origin 248/249/255 |
//! | origin | 4, 225, 226, 248, 249, 255 | chunk 4's signature, 225, 226, 248, 249, 255 |
//! | destination | 5, 248, 249, 255 | 248, 249, 255 (chunk 5 is signed by an author the destination is not told about) |
//!
//! The bounce and full signatures cover serialized ciphertext, so each actor's checks together
//! cover every byte of the message it can see.
//!
//! # Tree signature forms
//!
//! The spec's tree signature (225) signs the SHA-512 of every serialized chunk from 2 to 131.
//! libdime writes the destination chunk's hash and then overwrites it with the next one, so it
//! signs the list without the destination hash, followed by 64 zero bytes (DIME.md §7.8).
//! [`open`] accepts both and reports which one matched; [`seal`] writes
//! [`TreeSignature::Spec`] unless told [`TreeSignature::LibdimeCompat`].
//!
//! # Round trip and the normalisation the format forces
//!
//! Opening as author or recipient rebuilds the message as common headers ‖ other headers ‖ (if the
//! original had a blank line) CRLF ‖ display chunks ‖ attachment chunks. The result equals
//! [`canonical_form`] of the sealed input byte for byte; an input already in canonical form comes
//! back unchanged. Canonical form differs from the input only in what D/MIME cannot carry:
//!
//! 1. **Order.** The first `Date`, `To`, `Cc`, `From`, `Organization` and `Subject` fields (those
//!    present) go to the common-headers chunk, which has a fixed order (DIME.md §7.7); they come
//!    back first, in that order. All other fields, including repeated common ones, follow in their
//!    original order.
//! 2. **Names of those six fields** are written as the spec spells them: `Date`, `To`, `CC`,
//!    `From`, `Organization`, `Subject` (so `Cc:` becomes `CC:`). Everything after the colon,
//!    whitespace and folding included, is kept.
//! 3. **Header line endings** become CRLF (§7.7 lines are CRLF-terminated): a bare LF in the
//!    header becomes CRLF, a last header line without a line ending gets one, and the blank line
//!    before the body becomes CRLF.
//! 4. **The body is not touched**: display and attachment chunks partition it (cut where mail-parser
//!    finds top-level `Content-Disposition: attachment` parts), so their concatenation is the body,
//!    line endings and all. A message without a blank line has no display chunk and comes back
//!    without one; an empty body after a blank line is an empty display chunk.
//!
//! The header block is split with a strict line scanner rather than a MIME parser's view of it,
//! because the round trip must reproduce bytes a lenient parser would drop or rewrite; a line that
//! is neither `name: value` nor a continuation is refused ([`SealError::MalformedHeader`]), as is a
//! message without `Date`, `To`, `From` or `Subject` ([`SealError::MissingHeader`]), which the
//! common-headers chunk requires.
//!
//! Bodies larger than one chunk (about 16 MiB) are cut into several display or attachment chunks,
//! each but the last flagged "continues in the next chunk" (flag 128, DIME.md §7.5).

//! # Example
//!
//! ```
//! use dimegate::dime::message::{self, Actor, Parties, Party, SealOptions};
//! use ed25519_dalek::SigningKey;
//! use rand::SeedableRng;
//!
//! let mut rng = rand::rngs::StdRng::seed_from_u64(1);
//! let keys: Vec<(SigningKey, k256::SecretKey)> = (0..4)
//!     .map(|_| (SigningKey::generate(&mut rng), k256::SecretKey::random(&mut rng)))
//!     .collect();
//! let party = |i: usize, name: &str| Party {
//!     name: name.into(),
//!     fingerprint: format!("fp{i}"),
//!     signing_keys: vec![keys[i].0.verifying_key()],
//!     encryption_key: keys[i].1.public_key(),
//! };
//! let all = [party(0, "alice@a.example"), party(1, "a.example"), party(2, "b.example"), party(3, "bob@b.example")];
//! let parties = Parties { author: &all[0], origin: &all[1], destination: &all[2], recipient: &all[3] };
//! let mail = b"Date: Thu, 26 Nov 2026 12:00:00 +0000\r\nTo: <bob@b.example>\r\nFrom: <alice@a.example>\r\nSubject: hi\r\n\r\nHello\r\n";
//! let options = SealOptions { origin_signing_key: Some(&keys[1].0), ..SealOptions::default() };
//! let sealed = message::seal(mail, &parties, &keys[0].0, &options, &mut rng)?;
//! let report = message::open(&sealed, Actor::Recipient, &keys[3].1, &all)?;
//! assert_eq!(report.rfc5322().as_deref(), Some(&mail[..]));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod batch;
mod chunk;
mod crypto;
mod error;
mod open;
mod payload;
mod rfc5322;
mod seal;
#[cfg(test)]
mod tests;

use ed25519_dalek::VerifyingKey;
use k256::PublicKey;

pub use chunk::ChunkType;
pub use crypto::{AesKeyIv, derive_kek, public_of};
pub use error::{OpenError, SealError};
pub use open::{
    ChunkReport, Decrypted, DestinationEnvelope, OriginEnvelope, Report, Scope, SignatureCheck,
    Verdict, decrypt, inspect, open,
};
pub use rfc5322::canonical_form;
pub use seal::{SealOptions, SizePolicy, padding_reaches, seal, seal_sized, sign_as_origin};

/// The four actors of a D/MIME message (DIME.md §2.1), in keyslot order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Actor {
    /// The sending user.
    Author = 0,
    /// The sender's organization.
    Origin = 1,
    /// The recipient's organization.
    Destination = 2,
    /// The receiving user.
    Recipient = 3,
}

impl Actor {
    /// All four, in keyslot order.
    pub const ALL: [Actor; 4] = [
        Actor::Author,
        Actor::Origin,
        Actor::Destination,
        Actor::Recipient,
    ];

    /// Lower-case name, as on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Actor::Author => "author",
            Actor::Origin => "origin",
            Actor::Destination => "destination",
            Actor::Recipient => "recipient",
        }
    }
}

impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which list of hashes the author tree signature (chunk 225) signs (DIME.md §7.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TreeSignature {
    /// SHA-512 of every serialized chunk 2..131, in order.
    #[default]
    Spec,
    /// libdime's form: the destination chunk's hash left out and 64 zero bytes appended.
    LibdimeCompat,
}

/// What a message needs to know about one actor: the public half of its signet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Party {
    /// Mailbox (author, recipient) or domain (origin, destination).
    pub name: String,
    /// Crypto fingerprint of the signet (DIME.md §5.5), as written in the envelope chunks.
    pub fingerprint: String,
    /// Keys whose signatures count as this party's: the user's signing key, or an org's POK
    /// followed by any SOK allowed to sign messages.
    pub signing_keys: Vec<VerifyingKey>,
    /// The signet's secp256k1 encryption key.
    pub encryption_key: PublicKey,
}

impl Party {
    /// The public half of a signet: its identifier (field 254, empty when absent), crypto
    /// fingerprint, encryption key and message-signing keys (an org signet's POK followed by
    /// the SOKs with the message permission, DIME.md §7.8; a user signet's signing key).
    pub fn from_signet(signet: &crate::dime::Signet) -> Party {
        let signing_keys = match signet.kind() {
            crate::dime::SignetKind::Org => {
                signet.signing_keys_for(crate::dime::permission::MESSAGES)
            }
            _ => vec![*signet.signing_key()],
        };
        Party {
            name: signet.identifier().unwrap_or_default().to_owned(),
            fingerprint: signet.crypto_fingerprint().to_string(),
            signing_keys,
            encryption_key: *signet.encryption_key(),
        }
    }
}

/// The four parties a message is sealed for.
#[derive(Debug, Clone, Copy)]
pub struct Parties<'a> {
    /// The sending user.
    pub author: &'a Party,
    /// The sender's organization.
    pub origin: &'a Party,
    /// The recipient's organization.
    pub destination: &'a Party,
    /// The receiving user.
    pub recipient: &'a Party,
}

impl Parties<'_> {
    pub(crate) fn get(&self, actor: Actor) -> &Party {
        match actor {
            Actor::Author => self.author,
            Actor::Origin => self.origin,
            Actor::Destination => self.destination,
            Actor::Recipient => self.recipient,
        }
    }
}
