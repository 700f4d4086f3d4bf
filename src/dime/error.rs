//! The one error type of the `dime` module: every variant names the object and, where it applies,
//! the field, so a caller (or an operator reading a log line) knows what was wrong without the bytes.

/// What went wrong while reading, writing or checking a DIME object.
///
/// `object` is a short fixed name such as `"org signet"`, `"user key"`, `"object header"`,
/// `"armor"` or `"_dx record"`; `field` is the DIME field id (DIME.md §4, §5).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input ended before the object or field did.
    #[error("{object}: truncated, need {need} more bytes, have {have}")]
    Truncated {
        /// Object being read.
        object: &'static str,
        /// Bytes the next item needs.
        need: usize,
        /// Bytes left in the input.
        have: usize,
    },
    /// The magic number is not the one this parser reads.
    #[error("bad magic: expected {expected}, got {got}")]
    BadMagic {
        /// Magic(s) accepted, as text (`"1776 (org signet)"`).
        expected: &'static str,
        /// Magic found.
        got: u16,
    },
    /// Bytes left over after a complete object (every `parse` refuses them).
    #[error("{object}: {count} trailing bytes after the end")]
    TrailingBytes {
        /// Object being read.
        object: &'static str,
        /// How many bytes were left.
        count: usize,
    },
    /// A value does not fit the length prefix it must be written with.
    #[error("{object}: {len} bytes do not fit (maximum {max})")]
    TooLarge {
        /// Object or field being written.
        object: &'static str,
        /// Length of the value.
        len: usize,
        /// Maximum the encoding allows.
        max: usize,
    },
    /// A field id this object does not define (or field id 0).
    #[error("{object}: field {field} is not defined here")]
    UnknownField {
        /// Object being read.
        object: &'static str,
        /// The field id.
        field: u8,
    },
    /// Fields must be sorted by ascending id (DIME.md §4).
    #[error("{object}: field {field} after field {after}, fields must ascend")]
    FieldOrder {
        /// Object being read.
        object: &'static str,
        /// The out-of-order field id.
        field: u8,
        /// The field before it.
        after: u8,
    },
    /// A field that may appear once appeared again.
    #[error("{object}: field {field} appears more than once")]
    DuplicateField {
        /// Object being read.
        object: &'static str,
        /// The field id.
        field: u8,
    },
    /// A required field is absent.
    #[error("{object}: required field {field} is missing")]
    MissingField {
        /// Object being read.
        object: &'static str,
        /// The field id.
        field: u8,
    },
    /// A field has a length its content cannot have.
    #[error("{object}: field {field} is {got} bytes, expected {expected}")]
    FieldLength {
        /// Object being read.
        object: &'static str,
        /// The field id.
        field: u8,
        /// Length(s) allowed, as text.
        expected: &'static str,
        /// Length found.
        got: usize,
    },
    /// A key field does not hold a usable key (not a curve point, missing `0x40` prefix, zero scalar).
    #[error("{object}: field {field} is not a valid {what}")]
    BadKey {
        /// Object being read.
        object: &'static str,
        /// The field id.
        field: u8,
        /// Kind of key expected.
        what: &'static str,
    },
    /// A signature field does not verify.
    #[error("{object}: signature in field {field} does not verify")]
    SignatureInvalid {
        /// Object being checked.
        object: &'static str,
        /// The signature field id.
        field: u8,
    },
    /// A key file's public halves do not match the signet they are used with.
    #[error("{object}: the key does not match {what}")]
    KeyMismatch {
        /// Object being built or checked.
        object: &'static str,
        /// What it should have matched.
        what: &'static str,
    },
    /// The signing key is neither the POK nor an SOK allowed to sign signets (DIME.md §5.1).
    #[error("{object}: signing key is not an org key with permission to {permission}")]
    NotPermitted {
        /// Object being built.
        object: &'static str,
        /// The permission that was needed.
        permission: &'static str,
    },
    /// The operation needs a different kind of object (for example signing a user signet as an SSR).
    #[error("{object}: expected {expected}")]
    WrongKind {
        /// Object given.
        object: &'static str,
        /// Object needed.
        expected: &'static str,
    },
    /// Armor (`-----BEGIN …-----`) that cannot be read.
    #[error("armor: {reason}")]
    Armor {
        /// What is wrong.
        reason: &'static str,
    },
    /// The armor label does not name the object inside.
    #[error("armor: label {got:?} does not match the object ({expected})")]
    ArmorLabel {
        /// Label for the object's magic.
        expected: &'static str,
        /// Label found.
        got: String,
    },
    /// The CRC-24 line of the armor does not match the content.
    #[error("armor: CRC-24 {got:06x} does not match the content ({expected:06x})")]
    ArmorCrc {
        /// CRC-24 of the decoded bytes.
        expected: u32,
        /// CRC-24 in the armor.
        got: u32,
    },
    /// Base64 text that does not decode.
    #[error("{object}: invalid base64")]
    Base64 {
        /// Object or value being decoded.
        object: &'static str,
    },
    /// A `_dx` record token that cannot be read (DIME.md §9.1).
    #[error("_dx record: {reason}: {token:?}")]
    DxSyntax {
        /// What is wrong.
        reason: &'static str,
        /// The token (truncated to 64 bytes).
        token: String,
    },
    /// A `_dx` record value outside what the key allows.
    #[error("_dx record: bad value for {key}: {value:?}")]
    DxValue {
        /// The record key (canonical short name).
        key: &'static str,
        /// The value (truncated to 64 bytes).
        value: String,
    },
    /// A `_dx` key that may appear once appeared again.
    #[error("_dx record: {key} appears more than once")]
    DxDuplicate {
        /// The record key (canonical short name).
        key: &'static str,
    },
    /// A `_dx` record without any `pok=` (DIME.md §9.1: at least one is required).
    #[error("_dx record: no pok= value")]
    DxNoPok,
}

impl Error {
    /// Shorten attacker-controlled text that goes into an error.
    pub(crate) fn clip(s: &str) -> String {
        let mut end = s.len().min(64);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s[..end].to_string()
    }
}
