//! Outer framing and chunk framing (DIME.md §7.1-7.4).
//!
//! Parsing borrows from the input and never allocates according to a length field: every length
//! is checked against the bytes actually present first.

use super::Actor;
use super::error::OpenError;

/// Magic number of an encrypted message (DIME.md §4).
pub(crate) const MESSAGE_MAGIC: u16 = 1847;
/// Magic number of the optional tracing block in front of a message (DIME.md §7.1).
pub(crate) const TRACING_MAGIC: u16 = 1837;
/// Bytes in a keyslot.
pub(crate) const SLOT_LEN: usize = 64;
/// Bytes in a signature.
pub(crate) const SIG_LEN: usize = 64;

/// D/MIME chunk types (DIME.md §7.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum ChunkType {
    /// 2: the ephemeral secp256k1 public key, plaintext.
    Ephemeral = 2,
    /// 3: alternate envelope (never emitted; libdime leaves it unimplemented).
    Alternate = 3,
    /// 4: origin envelope (author and destination names), readable by A, O, R.
    Origin = 4,
    /// 5: destination envelope (recipient and origin names), readable by A, D, R.
    Destination = 5,
    /// 33: common headers.
    Common = 33,
    /// 34: other headers.
    Other = 34,
    /// 67: display content (repeatable).
    Display = 67,
    /// 131: attachment content (repeatable).
    Attachment = 131,
    /// 225: author tree signature.
    AuthorTree = 225,
    /// 226: author full signature.
    AuthorFull = 226,
    /// 248: origin metadata-bounce signature.
    OriginMetaBounce = 248,
    /// 249: origin display-bounce signature.
    OriginDisplayBounce = 249,
    /// 255: origin full signature.
    OriginFull = 255,
}

/// Keyslot order inside a chunk is always A, O, D, R (DIME.md §7.4).
const AR: &[Actor] = &[Actor::Author, Actor::Recipient];
const AOR: &[Actor] = &[Actor::Author, Actor::Origin, Actor::Recipient];
const ADR: &[Actor] = &[Actor::Author, Actor::Destination, Actor::Recipient];
const AODR: &[Actor] = &[
    Actor::Author,
    Actor::Origin,
    Actor::Destination,
    Actor::Recipient,
];

/// What a chunk's payload holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PayloadKind {
    /// 33-byte public key, not encrypted.
    Ephemeral,
    /// Signed, padded data (DIME.md §7.5).
    Standard,
    /// A bare 64-byte signature, encrypted.
    Signature,
}

impl ChunkType {
    /// All types, ascending.
    pub const ALL: [ChunkType; 13] = [
        Self::Ephemeral,
        Self::Alternate,
        Self::Origin,
        Self::Destination,
        Self::Common,
        Self::Other,
        Self::Display,
        Self::Attachment,
        Self::AuthorTree,
        Self::AuthorFull,
        Self::OriginMetaBounce,
        Self::OriginDisplayBounce,
        Self::OriginFull,
    ];

    /// The type for a wire byte, if D/MIME defines it.
    pub fn from_u8(b: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|t| *t as u8 == b)
    }

    /// Which actors hold a keyslot, in wire order (DIME.md §7.4).
    pub fn actors(self) -> &'static [Actor] {
        match self {
            Self::Ephemeral => &[],
            Self::Alternate | Self::Common | Self::Other | Self::Display | Self::Attachment => AR,
            Self::Origin | Self::AuthorTree | Self::AuthorFull => AOR,
            Self::Destination => ADR,
            Self::OriginMetaBounce | Self::OriginDisplayBounce | Self::OriginFull => AODR,
        }
    }

    pub(crate) fn kind(self) -> PayloadKind {
        match self {
            Self::Ephemeral => PayloadKind::Ephemeral,
            Self::AuthorTree
            | Self::AuthorFull
            | Self::OriginMetaBounce
            | Self::OriginDisplayBounce
            | Self::OriginFull => PayloadKind::Signature,
            _ => PayloadKind::Standard,
        }
    }

    /// Display and attachment chunks may repeat; every other type is unique.
    pub fn repeatable(self) -> bool {
        matches!(self, Self::Display | Self::Attachment)
    }

    /// Index of `actor`'s keyslot in this chunk, if it has one.
    pub(crate) fn slot_index(self, actor: Actor) -> Option<usize> {
        self.actors().iter().position(|a| *a == actor)
    }
}

impl std::fmt::Display for ChunkType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Self::Ephemeral => "ephemeral",
            Self::Alternate => "alternate",
            Self::Origin => "origin",
            Self::Destination => "destination",
            Self::Common => "common-headers",
            Self::Other => "other-headers",
            Self::Display => "display",
            Self::Attachment => "attachment",
            Self::AuthorTree => "author-tree-signature",
            Self::AuthorFull => "author-full-signature",
            Self::OriginMetaBounce => "origin-meta-bounce-signature",
            Self::OriginDisplayBounce => "origin-display-bounce-signature",
            Self::OriginFull => "origin-full-signature",
        };
        write!(f, "{} ({name})", *self as u8)
    }
}

/// One chunk as it sits in the message.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawChunk<'a> {
    pub(crate) kind: ChunkType,
    /// Offset of the type byte within the chunk area (after the 6-byte message header).
    pub(crate) start: usize,
    /// The serialized chunk, type byte through last keyslot.
    pub(crate) bytes: &'a [u8],
    pub(crate) payload: &'a [u8],
    pub(crate) slots: &'a [u8],
}

impl<'a> RawChunk<'a> {
    /// `actor`'s 64-byte keyslot, if this chunk type gives it one.
    pub(crate) fn slot(&self, actor: Actor) -> Option<&'a [u8]> {
        let i = self.kind.slot_index(actor)?;
        self.slots.get(i * SLOT_LEN..(i + 1) * SLOT_LEN)
    }

    /// Offset just past this chunk within the chunk area.
    pub(crate) fn end(&self) -> usize {
        self.start + self.bytes.len()
    }
}

/// A parsed message: the chunk area and its chunks.
#[derive(Debug)]
pub(crate) struct RawMessage<'a> {
    /// Everything after the 6-byte message header: what the full signatures cover prefixes of.
    pub(crate) area: &'a [u8],
    /// Offset of the chunk area within the input (tracing block + 6).
    pub(crate) area_offset: usize,
    pub(crate) chunks: Vec<RawChunk<'a>>,
}

impl<'a> RawMessage<'a> {
    pub(crate) fn find(&self, kind: ChunkType) -> Option<&RawChunk<'a>> {
        self.chunks.iter().find(|c| c.kind == kind)
    }

    /// The chunk area from its start up to the end of the last chunk whose type is below `limit`:
    /// the full and bounce signatures each cover such a prefix (DIME.md §7.8).
    pub(crate) fn prefix_below(&self, limit: u8) -> &'a [u8] {
        let end = self
            .chunks
            .iter()
            .filter(|c| (c.kind as u8) < limit)
            .map(RawChunk::end)
            .max()
            .unwrap_or(0);
        &self.area[..end]
    }
}

fn be(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
}

/// Splits `input` into chunks, checking framing, order, uniqueness, payload sizes and presence of
/// the required chunks. Decrypts nothing.
pub(crate) fn parse(input: &[u8]) -> Result<RawMessage<'_>, OpenError> {
    let mut at = 0usize;
    let magic_at = |at: usize| -> Result<u16, OpenError> {
        input
            .get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or(OpenError::Truncated {
                what: "message header",
                need: at + 2,
                have: input.len(),
            })
    };
    // An optional tracing block may precede the message (DIME.md §7.1); it is not signed.
    if magic_at(0)? == TRACING_MAGIC {
        let len = input.get(2..4).map(be).ok_or(OpenError::Truncated {
            what: "tracing block",
            need: 4,
            have: input.len(),
        })?;
        at = 4 + len;
        if at > input.len() {
            return Err(OpenError::Truncated {
                what: "tracing block",
                need: at,
                have: input.len(),
            });
        }
    }
    let magic = magic_at(at)?;
    if magic != MESSAGE_MAGIC {
        return Err(OpenError::BadMagic {
            expected: MESSAGE_MAGIC,
            got: magic,
        });
    }
    let header = input.get(at + 2..at + 6).ok_or(OpenError::Truncated {
        what: "message header",
        need: at + 6,
        have: input.len(),
    })?;
    let declared = be(header);
    let area_offset = at + 6;
    let rest = &input[area_offset..];
    if declared > rest.len() {
        return Err(OpenError::Truncated {
            what: "message",
            need: declared,
            have: rest.len(),
        });
    }
    if declared < rest.len() {
        return Err(OpenError::TrailingBytes {
            count: rest.len() - declared,
        });
    }
    let area = rest;
    let mut chunks: Vec<RawChunk<'_>> = Vec::new();
    let mut pos = 0usize;
    while pos < area.len() {
        let have = area.len() - pos;
        if have < 4 {
            return Err(OpenError::Truncated {
                what: "chunk header",
                need: 4,
                have,
            });
        }
        let kind =
            ChunkType::from_u8(area[pos]).ok_or(OpenError::UnknownChunk { chunk: area[pos] })?;
        if let Some(prev) = chunks.last() {
            if prev.kind == kind && !kind.repeatable() {
                return Err(OpenError::DuplicateChunk { chunk: kind });
            }
            if prev.kind > kind {
                return Err(OpenError::ChunkOutOfOrder {
                    chunk: kind,
                    after: prev.kind,
                });
            }
        }
        let plen = be(&area[pos + 1..pos + 4]);
        let nslots = kind.actors().len();
        let need = 4 + plen + nslots * SLOT_LEN;
        if need > have {
            return Err(OpenError::Truncated {
                what: "chunk",
                need,
                have,
            });
        }
        let ok_len = match kind.kind() {
            PayloadKind::Ephemeral => plen == 33,
            PayloadKind::Signature => plen == SIG_LEN,
            // 69 bytes of prefix, padded to a multiple of 16 (DIME.md §7.5).
            PayloadKind::Standard => plen.is_multiple_of(16) && plen >= 80,
        };
        if !ok_len {
            return Err(OpenError::BadPayloadLength {
                chunk: kind,
                len: plen,
            });
        }
        let bytes = &area[pos..pos + need];
        chunks.push(RawChunk {
            kind,
            start: pos,
            bytes,
            payload: &bytes[4..4 + plen],
            slots: &bytes[4 + plen..],
        });
        pos += need;
    }
    for required in [
        ChunkType::Ephemeral,
        ChunkType::Origin,
        ChunkType::Destination,
        ChunkType::Common,
        ChunkType::AuthorTree,
        ChunkType::AuthorFull,
        ChunkType::OriginFull,
    ] {
        if !chunks.iter().any(|c| c.kind == required) {
            return Err(OpenError::MissingChunk { chunk: required });
        }
    }
    Ok(RawMessage {
        area,
        area_offset,
        chunks,
    })
}

/// Appends a chunk header (type and u24 payload length).
pub(crate) fn put_header(out: &mut Vec<u8>, kind: ChunkType, payload_len: usize) {
    out.push(kind as u8);
    let len = u32::try_from(payload_len).unwrap_or(u32::MAX).to_be_bytes();
    out.extend_from_slice(&len[1..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyslot_table_matches_spec() {
        let counts: Vec<(u8, usize)> = ChunkType::ALL
            .iter()
            .map(|t| (*t as u8, t.actors().len()))
            .collect();
        assert_eq!(
            counts,
            [
                (2, 0),
                (3, 2),
                (4, 3),
                (5, 3),
                (33, 2),
                (34, 2),
                (67, 2),
                (131, 2),
                (225, 3),
                (226, 3),
                (248, 4),
                (249, 4),
                (255, 4)
            ]
        );
    }

    #[test]
    fn unknown_and_short_inputs_are_refused() {
        assert!(matches!(parse(&[]), Err(OpenError::Truncated { .. })));
        assert!(matches!(
            parse(&[0x07, 0x37, 0, 0, 0, 4, 7, 0, 0, 0]),
            Err(OpenError::UnknownChunk { chunk: 7 })
        ));
        assert!(matches!(
            parse(&[0x07, 0x38, 0, 0, 0, 0]),
            Err(OpenError::BadMagic { got: 0x0738, .. })
        ));
        // A length field far beyond the input is reported, not allocated.
        assert!(matches!(
            parse(&[0x07, 0x37, 0xff, 0xff, 0xff, 0xff]),
            Err(OpenError::Truncated { .. })
        ));
        assert!(matches!(
            parse(&[0x07, 0x37, 0, 0, 0, 0, 1]),
            Err(OpenError::TrailingBytes { count: 1 })
        ));
    }
}
