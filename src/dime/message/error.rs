//! Errors of D/MIME sealing and opening: one enum per operation, each variant holding the facts.

use super::Actor;
use super::chunk::ChunkType;

/// Why a message could not be sealed (or signed as origin).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SealError {
    /// A header line is neither a field (`name: value`) nor a continuation line.
    #[error("malformed header line at byte {offset}")]
    MalformedHeader {
        /// Byte offset of the offending line in the input.
        offset: usize,
    },
    /// D/MIME's common-headers chunk requires this field (DIME.md §7.7).
    #[error("the message has no {name} header, which D/MIME requires")]
    MissingHeader {
        /// Canonical field name.
        name: &'static str,
    },
    /// A chunk or the whole message would exceed its length field (u24 per chunk, u32 in total).
    #[error("{what} too large: {len} bytes, at most {max}")]
    TooLarge {
        /// What overflowed.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The largest length the format can carry.
        max: usize,
    },
    /// A party's name or fingerprint cannot be written into an envelope line (DIME.md §7.7):
    /// it holds a control character or the line's own delimiters.
    #[error("the {actor}'s name or fingerprint cannot go into an envelope line")]
    BadEnvelopeValue {
        /// Whose.
        actor: Actor,
    },
    /// The size policy gave no length padding can reach ([`super::padding_reaches`]).
    #[error("cannot pad a message of at least {minimum} bytes to {target:?} bytes")]
    SizeUnreachable {
        /// The least length the message can be sealed to.
        minimum: usize,
        /// The length the policy asked for, if any.
        target: Option<usize>,
    },
    /// The message to be signed as origin does not open as origin.
    #[error("cannot sign as origin: {0}")]
    Open(#[from] OpenError),
}

/// Why a message could not be opened, or which check failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum OpenError {
    /// The input ends before a length field says it should.
    #[error("truncated {what}: need {need} bytes, have {have}")]
    Truncated {
        /// The object being read.
        what: &'static str,
        /// Bytes the length fields require.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// Bytes after the end the message header announces.
    #[error("{count} bytes after the end of the message")]
    TrailingBytes {
        /// How many.
        count: usize,
    },
    /// The object is not an encrypted message (magic 1847).
    #[error("bad magic: expected {expected}, got {got}")]
    BadMagic {
        /// 1847.
        expected: u16,
        /// What the input carries.
        got: u16,
    },
    /// A chunk type D/MIME does not define (DIME.md §7.3).
    #[error("unknown chunk type {chunk}")]
    UnknownChunk {
        /// The type byte.
        chunk: u8,
    },
    /// Chunks must come in ascending type order.
    #[error("chunk {chunk} after chunk {after}")]
    ChunkOutOfOrder {
        /// The misplaced chunk.
        chunk: ChunkType,
        /// The chunk before it.
        after: ChunkType,
    },
    /// A unique chunk type appears twice.
    #[error("chunk {chunk} appears twice")]
    DuplicateChunk {
        /// The type.
        chunk: ChunkType,
    },
    /// A required chunk is absent (DIME.md §7.8: 2, 4, 5, 33, 225, 226, 255).
    #[error("required chunk {chunk} missing")]
    MissingChunk {
        /// The type.
        chunk: ChunkType,
    },
    /// A chunk's payload length is impossible for its type.
    #[error("chunk {chunk}: payload length {len} is invalid for this type")]
    BadPayloadLength {
        /// The chunk.
        chunk: ChunkType,
        /// The declared length.
        len: usize,
    },
    /// The ephemeral chunk does not hold a valid secp256k1 point.
    #[error("the ephemeral key is not a valid secp256k1 point")]
    BadEphemeralKey,
    /// The actor's keyslot does not open this chunk: the decrypted layout is impossible.
    #[error("chunk {chunk}: the {actor} keyslot does not open it")]
    KeyslotMismatch {
        /// The chunk.
        chunk: ChunkType,
        /// The actor whose slot was used.
        actor: Actor,
    },
    /// Decrypted padding bytes differ from the pad byte (DIME.md §7.5).
    #[error("chunk {chunk}: bad padding")]
    BadPadding {
        /// The chunk.
        chunk: ChunkType,
    },
    /// Flags this implementation does not support (alternate padding, compression, …).
    #[error("chunk {chunk}: unsupported flags {flags:#04x}")]
    UnsupportedFlags {
        /// The chunk.
        chunk: ChunkType,
        /// The flags byte.
        flags: u8,
    },
    /// An origin or destination chunk does not have the four lines of DIME.md §7.7.
    #[error("chunk {chunk}: malformed envelope text")]
    MalformedEnvelope {
        /// The chunk.
        chunk: ChunkType,
    },
    /// No signet with this crypto fingerprint was supplied, so a signature cannot be checked.
    #[error("no signet for the {role} (fingerprint {fingerprint})")]
    SignetMissing {
        /// Whose signet.
        role: Actor,
        /// The fingerprint the message names (empty when the message names none).
        fingerprint: String,
    },
    /// A signature does not verify.
    #[error("chunk {chunk}: signature invalid")]
    SignatureInvalid {
        /// The chunk whose signature fails (a standard chunk's own signature, or 225..255).
        chunk: ChunkType,
    },
    /// An origin signature is still the author's all-zero placeholder (DIME.md §7.8).
    #[error("chunk {chunk}: not signed by the origin yet")]
    SignatureMissing {
        /// 248, 249 or 255.
        chunk: ChunkType,
    },
}
