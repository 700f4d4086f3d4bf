//! Submission: a D/MIME message that one of our own DIME authors hands to us, its origin, over
//! DMTP, sealed and author-signed but not yet origin-signed. No origin signature can vouch for
//! it, so the author's do: the author must be a user of our domain (no relaying for others,
//! over DIME either), the signet the message names must be that user's and valid under our org
//! signet, and every author signature the origin can see must verify under it. Only then do we
//! fill in the origin signatures ([`submission_sign`]).
//!
//! Where it goes next is the origin chunk's destination: our own domain means the exit (the
//! recipient keyslot is sealed to our exit identity, [`super::unwrap_exit_finish`] opens it for
//! a legacy mailbox) or one of our own DIME users ([`local_destination`] reads which, as the
//! destination we also are); another domain means DMTP to that domain, the signed message as it
//! is.

use super::unwrap::{NeedSignets, author_signet_check, origin_envelope};
use super::wrap::named;
use super::{BridgeError, Identity, open_error};
use crate::dime::Signet;
use crate::dime::message::{self, Actor, OpenError};

/// What [`submission_prepare`] and [`submission_sign`] open.
#[derive(Debug, Clone, Copy)]
pub struct SubmitInput<'a> {
    /// The D/MIME message as the author's client submitted it.
    pub message: &'a [u8],
    /// Our org: the message's origin.
    pub org: Identity<'a>,
    /// Our domain.
    pub domain: &'a str,
}

/// Who submitted, and for where: what the origin chunk says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submission {
    /// The author's mailbox (a user of our domain).
    pub author: String,
    /// The author signet's crypto fingerprint, as the message names it.
    pub author_fingerprint: String,
    /// The destination domain.
    pub destination: String,
    /// The destination org signet's crypto fingerprint.
    pub destination_fingerprint: String,
}

/// Opens the submission as origin: its author (refused unless one of ours) and destination.
pub fn submission_prepare(input: &SubmitInput<'_>) -> Result<Submission, BridgeError> {
    let org = named(input.org.signet, input.domain);
    let report = message::inspect(
        input.message,
        Actor::Origin,
        input.org.key.encryption_secret(),
        std::slice::from_ref(&org),
    )
    .map_err(|e| open_error(Actor::Origin, e))?;
    let oenv = origin_envelope(&report)?;
    let author_domain = oenv.author.rsplit_once('@').map(|(_, d)| d);
    if !author_domain.is_some_and(|d| d.eq_ignore_ascii_case(input.domain)) {
        return Err(BridgeError::ForeignAuthor {
            author: oenv.author,
            domain: input.domain.to_owned(),
        });
    }
    Ok(Submission {
        author: oenv.author,
        author_fingerprint: oenv.author_fingerprint,
        destination: oenv.destination,
        destination_fingerprint: oenv.destination_fingerprint,
    })
}

/// Checks the author's signet and signatures, then signs as origin: the message as a
/// destination can accept it.
pub fn submission_sign(
    input: &SubmitInput<'_>,
    author_signet: &Signet,
) -> Result<(Submission, Vec<u8>), BridgeError> {
    let submission = submission_prepare(input)?;
    let need = NeedSignets {
        author: submission.author.clone(),
        author_fingerprint: submission.author_fingerprint.clone(),
        origin: input.domain.to_owned(),
        origin_fingerprint: input.org.signet.crypto_fingerprint().to_string(),
        recipient: String::new(),
    };
    author_signet_check(author_signet, &need, input.org.signet)
        .map_err(BridgeError::AuthorSignet)?;
    let signets = [
        named(input.org.signet, input.domain),
        named(author_signet, &submission.author),
    ];
    message::open(
        input.message,
        Actor::Origin,
        input.org.key.encryption_secret(),
        &signets,
    )
    .map_err(|e| match e {
        OpenError::SignatureInvalid { .. } | OpenError::SignetMissing { .. } => {
            BridgeError::AuthorSignature(e)
        }
        e => open_error(Actor::Origin, e),
    })?;
    let signed = message::sign_as_origin(
        input.message,
        input.org.key.encryption_secret(),
        input.org.key.signing_key(),
    )?;
    Ok((submission, signed))
}

/// For a submission to our own domain that is not for the exit: the destination chunk of
/// `signed` (the message as [`submission_sign`] signed it), read with our org key as the
/// destination we are too. It names the hosted recipient and the signet it was sealed to; the
/// origin signatures it checks are the ones we just made.
pub fn local_destination(
    input: &SubmitInput<'_>,
    signed: &[u8],
) -> Result<message::DestinationEnvelope, BridgeError> {
    let org = named(input.org.signet, input.domain);
    let report = message::open(
        signed,
        Actor::Destination,
        input.org.key.encryption_secret(),
        std::slice::from_ref(&org),
    )
    .map_err(|e| open_error(Actor::Destination, e))?;
    report
        .destination_envelope
        .ok_or(BridgeError::NotForUs(Actor::Destination))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::testkit::{self, World};
    use crate::dime::message::{Parties, SealOptions};
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    /// `author` seals `mail` for `to` at `destination`, signs as author only.
    fn submission(
        author: &testkit::User,
        origin: &testkit::Org,
        destination: &testkit::Org,
        to: &testkit::User,
        to_address: &str,
    ) -> Vec<u8> {
        let a = named(&author.signet, author.address);
        let o = named(&origin.signet, origin.domain);
        let d = named(&destination.signet, destination.domain);
        let r = named(&to.signet, to_address);
        let mail = testkit::mail(author.address, to_address);
        message::seal(
            mail.as_bytes(),
            &Parties {
                author: &a,
                origin: &o,
                destination: &d,
                recipient: &r,
            },
            author.key.signing_key(),
            &SealOptions::default(),
            &mut StdRng::seed_from_u64(5),
        )
        .unwrap()
    }

    fn input<'a>(w: &'a World, msg: &'a [u8]) -> SubmitInput<'a> {
        SubmitInput {
            message: msg,
            org: w.north.identity(),
            domain: "north.test",
        }
    }

    #[test]
    fn our_authors_mail_for_another_dime_domain_is_signed_for_it() {
        let w = testkit::world();
        let msg = submission(&w.alice, &w.north, &w.south, &w.bob, w.bob.address);
        let sub = submission_prepare(&input(w, &msg)).unwrap();
        assert_eq!(sub.author, "alice@north.test");
        assert_eq!(sub.destination, "south.test");
        assert_eq!(
            sub.destination_fingerprint,
            w.south.signet.crypto_fingerprint().to_string()
        );
        let (_, signed) = submission_sign(&input(w, &msg), &w.alice.signet).unwrap();
        // The destination accepts the signed copy, and refuses the submission as it came.
        let org = [named(&w.north.signet, "north.test")];
        let key = w.south.key.encryption_secret();
        assert!(message::open(&signed, Actor::Destination, key, &org).is_ok());
        assert!(message::open(&msg, Actor::Destination, key, &org).is_err());
    }

    /// To another user of our own domain: once signed, we read as its destination which user
    /// and signet it is sealed to; the author's unsigned copy does not open that way.
    #[test]
    fn our_authors_mail_for_our_own_dime_user_names_them_once_signed() {
        let w = testkit::world();
        let to = &w.north_bridge;
        let msg = submission(&w.alice, &w.north, &w.north, to, to.address);
        let (sub, signed) = submission_sign(&input(w, &msg), &w.alice.signet).unwrap();
        assert_eq!(sub.destination, "north.test");
        let dest = local_destination(&input(w, &msg), &signed).unwrap();
        assert_eq!(dest.recipient, to.address);
        assert_eq!(
            dest.recipient_fingerprint,
            to.signet.crypto_fingerprint().to_string()
        );
        assert_eq!(dest.origin, "north.test");
        assert!(matches!(
            local_destination(&input(w, &msg), &msg),
            Err(BridgeError::OriginSignature(_))
        ));
    }

    fn vector(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/../shared/dime-vectors/d1-libdime/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// libdime's own message as its author left it, submitted to a.example: we sign it as
    /// libdime's origin stage did, byte for byte (Ed25519 is deterministic, and the origin
    /// signatures are re-encrypted under the author's chunk keys and IVs).
    #[test]
    fn libdime_authors_message_is_signed_as_libdime_signed_it() {
        let key = crate::dime::PrivateKey::parse(
            &crate::dime::armor::decode_any(&vector("orig.keys")).unwrap(),
        )
        .unwrap();
        let org = Signet::parse(&vector("orig.signet.bin")).unwrap();
        let author = Signet::parse(&vector("auth.signet.bin")).unwrap();
        let msg = vector("msg.from_author.bin");
        let input = SubmitInput {
            message: &msg,
            org: Identity {
                signet: &org,
                key: &key,
            },
            domain: "a.example",
        };
        let (sub, signed) = submission_sign(&input, &author).unwrap();
        assert_eq!(sub.author, "alice@a.example");
        assert_eq!(sub.destination, "b.example");
        assert_eq!(signed, vector("msg.from_origin.bin"));
    }

    #[test]
    fn what_the_author_cannot_vouch_for_is_refused() {
        let w = testkit::world();
        let msg = submission(&w.alice, &w.north, &w.south, &w.bob, w.bob.address);
        // Another user's signet, even one of ours.
        let e = submission_sign(&input(w, &msg), &w.north_bridge.signet).unwrap_err();
        assert!(matches!(e, BridgeError::AuthorSignet(_)), "{e}");
        // A user of another domain submitting through us.
        let foreign = submission(&w.mallory, &w.north, &w.south, &w.bob, w.bob.address);
        let e = submission_prepare(&input(w, &foreign)).unwrap_err();
        assert!(matches!(e, BridgeError::ForeignAuthor { .. }), "{e}");
        // Sealed with another org as origin: our key does not open it.
        let elsewhere = submission(&w.alice, &w.south, &w.south, &w.bob, w.bob.address);
        let e = submission_prepare(&input(w, &elsewhere)).unwrap_err();
        assert_eq!(e, BridgeError::NotForUs(Actor::Origin));
        // A flipped bit in the origin chunk (after the header and the ephemeral key): no
        // signature from us.
        let mut bad = msg.clone();
        bad[120] ^= 1;
        let e = submission_sign(&input(w, &bad), &w.alice.signet)
            .map(|_| ())
            .unwrap_err();
        assert!(e.is_permanent(), "{e}");
        // One in a content chunk, which the origin cannot read: the author's tree signature
        // covers its ciphertext. (1600 bytes from the end: before the five signature chunks.)
        let mut bad = msg.clone();
        let at = bad.len() - 1600;
        bad[at] ^= 1;
        let e = submission_sign(&input(w, &bad), &w.alice.signet)
            .map(|_| ())
            .unwrap_err();
        assert!(matches!(e, BridgeError::AuthorSignature(_)), "{e}");
    }
}
