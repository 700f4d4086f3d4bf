//! The binary object container (DIME.md §4): a `u16` magic, a `u24` payload length (`u32` for
//! messages, DIME.md §7.1) and fields sorted by id, each with a length prefix whose width depends on
//! the field id, the object and the dialect.

use super::Error;
use super::codec::{Reader, Writer};

/// DIME magic numbers ("DIME numbers", DIME.md §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Magic {
    /// 1215: user signet signing request.
    Ssr,
    /// 1776: organizational signet.
    OrgSignet,
    /// 1789: user signet.
    UserSignet,
    /// 1947: PRIME encrypted org key.
    EncryptedOrgKey,
    /// 1952: org private key file.
    OrgKey,
    /// 1976: PRIME encrypted user key.
    EncryptedUserKey,
    /// 2013: user private key file.
    UserKey,
    /// 1837: libdime message tracing block / PRIME "binary object" (conflicting reuse).
    TracingBlock,
    /// 1847: D/MIME encrypted message (`u32` length).
    EncryptedMessage,
    /// 1908: PRIME naked message (`u32` length).
    PrimeNakedMessage,
}

impl Magic {
    /// Every magic this module knows.
    pub const ALL: [Magic; 10] = [
        Magic::Ssr,
        Magic::OrgSignet,
        Magic::UserSignet,
        Magic::EncryptedOrgKey,
        Magic::OrgKey,
        Magic::EncryptedUserKey,
        Magic::UserKey,
        Magic::TracingBlock,
        Magic::EncryptedMessage,
        Magic::PrimeNakedMessage,
    ];

    /// The number on the wire.
    pub fn number(self) -> u16 {
        match self {
            Magic::Ssr => 1215,
            Magic::OrgSignet => 1776,
            Magic::UserSignet => 1789,
            Magic::EncryptedOrgKey => 1947,
            Magic::OrgKey => 1952,
            Magic::EncryptedUserKey => 1976,
            Magic::UserKey => 2013,
            Magic::TracingBlock => 1837,
            Magic::EncryptedMessage => 1847,
            Magic::PrimeNakedMessage => 1908,
        }
    }

    /// The magic for a number, if known.
    pub fn from_number(n: u16) -> Option<Magic> {
        Magic::ALL.into_iter().find(|m| m.number() == n)
    }

    /// Short name used in errors.
    pub fn name(self) -> &'static str {
        match self {
            Magic::Ssr => "signet signing request",
            Magic::OrgSignet => "org signet",
            Magic::UserSignet => "user signet",
            Magic::EncryptedOrgKey => "encrypted org key",
            Magic::OrgKey => "org key",
            Magic::EncryptedUserKey => "encrypted user key",
            Magic::UserKey => "user key",
            Magic::TracingBlock => "tracing block",
            Magic::EncryptedMessage => "encrypted message",
            Magic::PrimeNakedMessage => "PRIME naked message",
        }
    }

    /// Armor label (DIME.md §4), if the object has one.
    pub fn armor_label(self) -> Option<&'static str> {
        Some(match self {
            Magic::Ssr => "SIGNET SIGNING REQUEST",
            Magic::OrgSignet => "ORGANIZATIONAL SIGNET",
            Magic::UserSignet => "USER SIGNET",
            Magic::EncryptedOrgKey => "ENCRYPTED ORGANIZATIONAL KEY",
            Magic::OrgKey => "ORGANIZATIONAL KEY",
            Magic::EncryptedUserKey => "ENCRYPTED USER KEY",
            Magic::UserKey => "USER KEY",
            Magic::EncryptedMessage => "ENCRYPTED MESSAGE",
            Magic::TracingBlock | Magic::PrimeNakedMessage => return None,
        })
    }

    /// Messages carry a `u32` length, everything else a `u24` (DIME.md §4, §7.1).
    pub fn length_width(self) -> usize {
        match self {
            Magic::EncryptedMessage | Magic::PrimeNakedMessage => 4,
            _ => 3,
        }
    }
}

impl std::fmt::Display for Magic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.number(), self.name())
    }
}

/// The three incompatible encodings of DIME objects (DIME.md §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Dialect {
    /// libdime HEAD: 2-byte lengths on encryption-key fields, `0x40`-prefixed Ed25519 keys.
    D1,
    /// magma's DIME provider: 1-byte lengths, `0x40`-prefixed Ed25519 keys. What we emit.
    #[default]
    D2,
    /// magma PRIME: 1-byte lengths, raw 32-byte Ed25519 keys.
    D3,
}

/// Read the 5-byte (or 6-byte for messages) header; returns the magic number and the payload,
/// refusing a payload whose length disagrees with the header (no trailing bytes).
///
/// `width` is 3 for ordinary objects and 4 for messages.
pub fn parse_frame(input: &[u8], width: usize) -> Result<(u16, &[u8]), Error> {
    let mut r = Reader::new(input, "object header");
    let magic = r.u16()?;
    let declared = r.uint(width)?;
    let object = Magic::from_number(magic).map_or("object", Magic::name);
    let actual = r.left();
    if declared > actual {
        return Err(Error::Truncated {
            object,
            need: declared,
            have: actual,
        });
    }
    if declared < actual {
        return Err(Error::TrailingBytes {
            object,
            count: actual - declared,
        });
    }
    Ok((magic, r.rest()))
}

/// Read an object that must carry `expected`'s magic; returns the payload.
pub fn parse_object(input: &[u8], expected: Magic) -> Result<&[u8], Error> {
    let (magic, payload) = parse_frame(input, expected.length_width())?;
    if magic != expected.number() {
        return Err(Error::BadMagic {
            expected: expected_text(expected),
            got: magic,
        });
    }
    Ok(payload)
}

fn expected_text(m: Magic) -> &'static str {
    match m {
        Magic::Ssr => "1215 (signet signing request)",
        Magic::OrgSignet => "1776 (org signet)",
        Magic::UserSignet => "1789 (user signet)",
        Magic::EncryptedOrgKey => "1947 (encrypted org key)",
        Magic::OrgKey => "1952 (org key)",
        Magic::EncryptedUserKey => "1976 (encrypted user key)",
        Magic::UserKey => "2013 (user key)",
        Magic::TracingBlock => "1837 (tracing block)",
        Magic::EncryptedMessage => "1847 (encrypted message)",
        Magic::PrimeNakedMessage => "1908 (PRIME naked message)",
    }
}

/// Frame `payload` with `magic`'s header (`u24` length, or `u32` for messages).
pub fn encode_object(magic: Magic, payload: &[u8]) -> Result<Vec<u8>, Error> {
    encode_frame(magic.number(), magic.length_width(), payload, magic.name())
}

/// Frame `payload` with any magic number and a `width`-byte length (3, or 4 for messages).
pub fn encode_frame(
    magic: u16,
    width: usize,
    payload: &[u8],
    object: &'static str,
) -> Result<Vec<u8>, Error> {
    let mut w = Writer::new();
    w.u16(magic);
    w.uint(width, payload.len(), object)?;
    w.bytes(payload);
    Ok(w.into_inner())
}

/// The magic number of a framed object, if the input is long enough to hold one.
pub fn peek_magic(input: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*input.first()?, *input.get(1)?]))
}

/// How a field's length is written (DIME.md §4 table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Width {
    /// No prefix; the value always has this many bytes (signatures: 64).
    Fixed(usize),
    /// A big-endian length prefix of this many bytes.
    Prefix(usize),
    /// fid 251: `u8` name length, name, `u16` value length, value.
    Named,
}

/// One field: id, the name for fid 251, and the value bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Field id (1..=255).
    pub id: u8,
    /// Name of an undefined field (fid 251 only).
    pub name: Option<Vec<u8>>,
    /// Value bytes.
    pub value: Vec<u8>,
}

impl Field {
    /// A field without a name.
    pub fn new(id: u8, value: impl Into<Vec<u8>>) -> Field {
        Field {
            id,
            name: None,
            value: value.into(),
        }
    }
}

/// Read fields until the input ends; `width` gives each field id's encoding (an `Err` rejects the id).
/// Each field comes with its byte range in `payload` (signatures cover exact byte prefixes).
pub(crate) fn read_fields(
    payload: &[u8],
    object: &'static str,
    width: impl Fn(u8) -> Result<Width, Error>,
) -> Result<Vec<(Field, std::ops::Range<usize>)>, Error> {
    let mut r = Reader::new(payload, object);
    let mut fields = Vec::new();
    while r.left() > 0 {
        let start = r.used();
        let id = r.u8()?;
        let (name, len) = match width(id)? {
            Width::Fixed(n) => (None, n),
            Width::Prefix(n) => (None, r.uint(n)?),
            Width::Named => {
                let nlen = usize::from(r.u8()?);
                let name = r.take(nlen)?.to_vec();
                (Some(name), usize::from(r.u16()?))
            }
        };
        // Bounded allocation: `take` checks the bytes exist before anything is copied.
        let value = r.take(len)?.to_vec();
        fields.push((Field { id, name, value }, start..r.used()));
    }
    r.expect_empty()?;
    Ok(fields)
}

/// Serialize fields (no header) with the same width rules.
pub(crate) fn write_fields<'f>(
    out: &mut Vec<u8>,
    fields: impl IntoIterator<Item = &'f Field>,
    object: &'static str,
    width: impl Fn(u8) -> Result<Width, Error>,
) -> Result<(), Error> {
    let mut w = Writer {
        buf: std::mem::take(out),
    };
    let result = (|| {
        for f in fields {
            w.u8(f.id);
            match width(f.id)? {
                Width::Fixed(n) => {
                    if f.value.len() != n {
                        return Err(Error::FieldLength {
                            object,
                            field: f.id,
                            expected: "64",
                            got: f.value.len(),
                        });
                    }
                }
                Width::Prefix(n) => w.uint(n, f.value.len(), object)?,
                Width::Named => {
                    let name = f.name.as_deref().unwrap_or_default();
                    w.uint(1, name.len(), object)?;
                    w.bytes(name);
                    w.uint(2, f.value.len(), object)?;
                }
            }
            w.bytes(&f.value);
        }
        Ok(())
    })();
    *out = w.into_inner();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trip_and_trailing_bytes() {
        let obj = encode_object(Magic::OrgKey, &[1, 2, 3]).unwrap();
        assert_eq!(obj, vec![0x07, 0xa0, 0, 0, 3, 1, 2, 3]);
        assert_eq!(parse_object(&obj, Magic::OrgKey).unwrap(), &[1, 2, 3]);
        let mut longer = obj.clone();
        longer.push(0);
        assert_eq!(
            parse_object(&longer, Magic::OrgKey),
            Err(Error::TrailingBytes {
                object: "org key",
                count: 1
            })
        );
        assert_eq!(
            parse_object(&obj[..7], Magic::OrgKey),
            Err(Error::Truncated {
                object: "org key",
                need: 3,
                have: 2
            })
        );
        assert_eq!(
            parse_object(&obj, Magic::UserKey),
            Err(Error::BadMagic {
                expected: "2013 (user key)",
                got: 1952
            })
        );
    }

    #[test]
    fn message_frames_have_u32_lengths() {
        // DIME.md §12.2: the encrypted message header for length 1024 is 073700000400.
        let obj = encode_object(Magic::EncryptedMessage, &[0u8; 1024]).unwrap();
        assert_eq!(&obj[..6], &[0x07, 0x37, 0, 0, 4, 0]);
        assert_eq!(
            parse_object(&obj, Magic::EncryptedMessage).unwrap().len(),
            1024
        );
    }

    #[test]
    fn magic_numbers_round_trip() {
        for m in Magic::ALL {
            assert_eq!(Magic::from_number(m.number()), Some(m));
            assert!(expected_text(m).starts_with(&m.number().to_string()));
        }
        assert_eq!(Magic::from_number(0), None);
    }

    #[test]
    fn named_field_round_trip() {
        let width = |id: u8| {
            Ok(if id == 251 {
                Width::Named
            } else {
                Width::Prefix(1)
            })
        };
        let fields = vec![
            Field::new(16, b"abc".to_vec()),
            Field {
                id: 251,
                name: Some(b"nm".to_vec()),
                value: vec![9; 300],
            },
        ];
        let mut out = Vec::new();
        write_fields(&mut out, &fields, "x", width).unwrap();
        let read: Vec<Field> = read_fields(&out, "x", width)
            .unwrap()
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        assert_eq!(read, fields);
    }
}
