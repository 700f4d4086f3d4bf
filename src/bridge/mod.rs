//! The bridge between RFC 5322 mail and D/MIME (DESIGN.md §1): the pure conversions the queue
//! runner calls for each flow, with no I/O, no clock and no RNG of its own (time and randomness
//! come in as arguments; signets and keys are looked up by the caller).
//!
//! | flow | function | seals / opens as |
//! |---|---|---|
//! | wrap | [`wrap()`] | author (a hosted user, or the domain's bridge identity) and origin in one pass |
//! | unwrap (inbound) | [`unwrap_prepare`], then [`unwrap_finish`] | destination, then recipient |
//! | submission (from our DIME authors, over DMTP) | [`submission_prepare`], then [`submission_sign`] | origin (checks the author, signs) |
//! | unwrap (outbound, exit) | [`unwrap_exit_prepare`], then [`unwrap_exit_finish`] | origin (checks the author, signs), then the exit identity as recipient |
//! | return a report (for bridge-authored mail) | [`address_report`], then [`returned_report`] | (the report is opened as the bridge identity by unwrap) |
//! | protect at rest | [`protect()`] | the bridge identity as author, our org as origin and destination, the cautious user as recipient |
//!
//! Opening takes two calls because the author's signet must be fetched in between: `*_prepare`
//! says whose signet is needed ([`NeedSignets`]), `*_finish` takes it (or `None`, which unwrap
//! reports as `dime=fail`, never a panic).
//!
//! Every sealed message this module writes is padded to a size bucket ([`padding`]). What the
//! sealed headers carry besides the original message: the `Authentication-Results:` of the legacy
//! sender's checks (when the caller has one) and `X-Envelope-From:` with the SMTP envelope sender,
//! which unwrap takes out again and returns as [`Unwrapped::envelope_from`] (for the backend's
//! `MAIL FROM` and for DSNs); both replace any field of the same kind the input carried.
//!
//! Errors are [`BridgeError`]: each variant answers [`BridgeError::status`] (an RFC 3463 code)
//! and [`BridgeError::is_permanent`]. The functions are deterministic on their inputs, so every
//! error they can return today is permanent: retrying the same bytes with the same keys fails the
//! same way. Temporary conditions (a signet look-up that timed out) belong to the caller.

mod headers;
pub mod padding;
pub mod protect;
pub mod report;
pub mod submit;
#[cfg(test)]
pub(crate) mod testkit;
pub mod unwrap;
pub mod wrap;

use crate::dime::message::{Actor, ChunkType, OpenError, SealError};
use crate::dime::{PrivateKey, Signet};
use crate::status::EnhancedStatus;

pub use padding::Buckets;
pub use protect::{ProtectInput, protect};
pub use report::{ENVELOPE_TO_FIELD, ReportError, Returned, address_report, returned_report};
pub use submit::{Submission, SubmitInput, local_destination, submission_prepare, submission_sign};
pub use unwrap::{
    Destination, DimeResult, ExitInput, Exited, FailReason, NeedSignets, Prepared, UnwrapInput,
    Unwrapped, unwrap_exit_finish, unwrap_exit_prepare, unwrap_finish, unwrap_prepare,
};
pub use wrap::{WrapInput, wrap};

/// A DIME identity whose private key dimegate holds: a signet and its key.
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    /// The public half (org signet or user signet).
    pub signet: &'a Signet,
    /// The private key of that signet (org key 1952 or user key 2013).
    pub key: &'a PrivateKey,
}

/// The field wrap and protect put the SMTP envelope sender in, inside the sealed headers.
pub const ENVELOPE_FROM_FIELD: &str = "X-Envelope-From";

/// Why a bridge conversion failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum BridgeError {
    /// The RFC 5322 message cannot be sealed: a malformed header line, or no `Date`, `To`,
    /// `From` or `Subject` (D/MIME requires them, DIME.md §7.7).
    #[error("the message cannot be sealed: {0}")]
    Unparsable(SealError),
    /// Too large for D/MIME or for the largest size bucket.
    #[error("message too large: {0}")]
    TooLarge(SealError),
    /// A value to be written into a header field or an envelope line holds a line break or a
    /// control character (the caller's `Authentication-Results` value, host name, queue id or an
    /// address).
    #[error("{what} cannot go into a header: {value:?}")]
    BadValue {
        /// Which input.
        what: &'static str,
        /// The value.
        value: String,
    },
    /// A party's name or fingerprint cannot go into a D/MIME envelope line.
    #[error("the {0}'s name or fingerprint cannot go into the D/MIME envelope")]
    BadParty(Actor),
    /// The D/MIME message is damaged or not D/MIME: framing, padding, envelope text.
    #[error("the D/MIME message is damaged: {0}")]
    Corrupt(OpenError),
    /// Our key does not open the chunks this actor should be able to read: the message was
    /// sealed for someone else (or an older key generation).
    #[error("the message was not sealed for us as {0}")]
    NotForUs(Actor),
    /// An origin signature (248/249/255) fails, or is still the author's placeholder.
    #[error("origin signature refused: {0}")]
    OriginSignature(OpenError),
    /// The destination chunk names another origin than the one that handed the message over.
    #[error("the message names origin {found} [{found_fingerprint}], not {expected}")]
    OriginMismatch {
        /// The origin the caller knows (the DMTP session's).
        expected: String,
        /// The origin the destination chunk names.
        found: String,
        /// Its fingerprint as named.
        found_fingerprint: String,
    },
    /// Exit: the author is not a user of our domain, and we relay for our own users only.
    #[error("author {author} is not a user of {domain}: no relaying for others")]
    ForeignAuthor {
        /// The author the message names.
        author: String,
        /// Our domain.
        domain: String,
    },
    /// Exit: the message is addressed to another DIME destination than our own domain.
    #[error("the message is for destination {found}, not {expected}")]
    WrongDestination {
        /// Our domain.
        expected: String,
        /// The destination the origin chunk names.
        found: String,
    },
    /// Exit: the author's signet is not available, or is not the one the message names, or
    /// does not validate under our org signet.
    #[error("author signet refused: {0}")]
    AuthorSignet(FailReason),
    /// Exit: an author signature fails.
    #[error("author signature refused: {0}")]
    AuthorSignature(OpenError),
}

impl BridgeError {
    /// The RFC 3463 enhanced status code for a DSN or a reply.
    pub fn status(&self) -> EnhancedStatus {
        match self {
            // X.6.0: other or undefined media error (the content cannot be converted).
            BridgeError::Unparsable(_) | BridgeError::Corrupt(_) => EnhancedStatus::new(5, 6, 0),
            // X.3.4: message too big for system.
            BridgeError::TooLarge(_) => EnhancedStatus::new(5, 3, 4),
            // X.3.0: other or undefined mail system status (our own inputs are wrong).
            BridgeError::BadValue { .. } => EnhancedStatus::new(5, 3, 0),
            // X.1.3: bad destination mailbox address syntax; X.1.7/X.1.8 for the sender side.
            BridgeError::BadParty(actor) => match actor {
                Actor::Recipient => EnhancedStatus::new(5, 1, 3),
                Actor::Destination => EnhancedStatus::new(5, 1, 2),
                Actor::Author => EnhancedStatus::new(5, 1, 7),
                Actor::Origin => EnhancedStatus::new(5, 1, 8),
            },
            BridgeError::NotForUs(actor) => match actor {
                // X.1.1: bad destination mailbox (not sealed to this user's key).
                Actor::Recipient => EnhancedStatus::new(5, 1, 1),
                // X.1.2: bad destination system (not sealed to this org).
                Actor::Destination => EnhancedStatus::new(5, 1, 2),
                Actor::Author | Actor::Origin => EnhancedStatus::new(5, 7, 1),
            },
            // X.7.7: message integrity failure.
            BridgeError::OriginSignature(_) | BridgeError::AuthorSignature(_) => {
                EnhancedStatus::new(5, 7, 7)
            }
            // X.7.1: delivery not authorized.
            BridgeError::OriginMismatch { .. }
            | BridgeError::ForeignAuthor { .. }
            | BridgeError::AuthorSignet(_) => EnhancedStatus::new(5, 7, 1),
            BridgeError::WrongDestination { .. } => EnhancedStatus::new(5, 1, 2),
        }
    }

    /// Whether retrying cannot help (a DSN now) rather than later (the schedule).
    pub fn is_permanent(&self) -> bool {
        self.status().class == 5
    }
}

/// Seal errors split into the message's fault, its size and the parties'.
impl From<SealError> for BridgeError {
    fn from(e: SealError) -> Self {
        match e {
            SealError::TooLarge { .. } | SealError::SizeUnreachable { .. } => {
                BridgeError::TooLarge(e)
            }
            SealError::BadEnvelopeValue { actor } => BridgeError::BadParty(actor),
            SealError::Open(o) => BridgeError::Corrupt(o),
            other => BridgeError::Unparsable(other),
        }
    }
}

/// An open error as `actor` saw it: a key that does not fit is "not for us", a signature failure
/// is the origin's or the author's, the rest is damage.
fn open_error(actor: Actor, e: OpenError) -> BridgeError {
    match e {
        OpenError::KeyslotMismatch { .. } => BridgeError::NotForUs(actor),
        OpenError::SignatureInvalid { chunk } | OpenError::SignatureMissing { chunk }
            if is_origin_chunk(chunk) =>
        {
            BridgeError::OriginSignature(e)
        }
        OpenError::SignatureInvalid { .. } | OpenError::SignatureMissing { .. } => {
            BridgeError::AuthorSignature(e)
        }
        OpenError::SignetMissing {
            role: Actor::Origin,
            ..
        } => BridgeError::OriginSignature(e),
        OpenError::SignetMissing { .. } => BridgeError::AuthorSignature(e),
        other => BridgeError::Corrupt(other),
    }
}

fn is_origin_chunk(chunk: ChunkType) -> bool {
    matches!(
        chunk,
        ChunkType::OriginMetaBounce | ChunkType::OriginDisplayBounce | ChunkType::OriginFull
    )
}

/// `value` as one header line's content: no CR, LF or other control character but tab.
fn header_safe(what: &'static str, value: &str) -> Result<(), BridgeError> {
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return Err(BridgeError::BadValue {
            what,
            value: value.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_permanent_and_in_the_right_class() {
        let open = || OpenError::SignatureInvalid {
            chunk: ChunkType::OriginFull,
        };
        let rows: Vec<(BridgeError, &str)> = vec![
            (
                BridgeError::Unparsable(SealError::MissingHeader { name: "Date" }),
                "5.6.0",
            ),
            (
                BridgeError::TooLarge(SealError::SizeUnreachable {
                    minimum: 1,
                    target: None,
                }),
                "5.3.4",
            ),
            (BridgeError::NotForUs(Actor::Recipient), "5.1.1"),
            (BridgeError::NotForUs(Actor::Destination), "5.1.2"),
            (BridgeError::OriginSignature(open()), "5.7.7"),
            (BridgeError::AuthorSignature(open()), "5.7.7"),
            (
                BridgeError::ForeignAuthor {
                    author: "a@b".into(),
                    domain: "c".into(),
                },
                "5.7.1",
            ),
            (BridgeError::Corrupt(OpenError::BadEphemeralKey), "5.6.0"),
        ];
        for (e, want) in rows {
            assert_eq!(e.status().to_string(), want, "{e}");
            assert!(e.is_permanent(), "{e}");
        }
    }

    #[test]
    fn open_errors_are_attributed() {
        let origin = open_error(
            Actor::Destination,
            OpenError::SignatureMissing {
                chunk: ChunkType::OriginMetaBounce,
            },
        );
        assert!(matches!(origin, BridgeError::OriginSignature(_)));
        let author = open_error(
            Actor::Recipient,
            OpenError::SignatureInvalid {
                chunk: ChunkType::Display,
            },
        );
        assert!(matches!(author, BridgeError::AuthorSignature(_)));
        assert_eq!(
            open_error(
                Actor::Recipient,
                OpenError::KeyslotMismatch {
                    chunk: ChunkType::Common,
                    actor: Actor::Recipient
                }
            ),
            BridgeError::NotForUs(Actor::Recipient)
        );
    }
}
