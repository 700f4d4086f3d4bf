//! Signets (DIME.md §5): org signets (1776), user signets (1789) and signet signing requests (1215);
//! parsing in dialects D1, D2 and D3, validation levels, splits, fingerprints, and creation in D2.
//!
//! A signet keeps its exact bytes: every signature covers the serialized fields that precede it
//! (DIME.md §5.3), so checks and fingerprints hash byte ranges of the original input, never a
//! re-encoding.

use std::ops::Range;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

use super::Error;
use super::armor;
use super::fingerprint::Fingerprint;
use super::keys::{KeyKind, PrivateKey};
use super::object::{
    Dialect, Field, Magic, Width, encode_object, parse_frame, read_fields, write_fields,
};

/// The three signet-shaped objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SignetKind {
    /// Organizational signet (1776).
    Org,
    /// User signet (1789).
    User,
    /// Signet signing request (1215): a user signet before the org signs it.
    Ssr,
}

impl SignetKind {
    /// The object's magic.
    pub fn magic(self) -> Magic {
        match self {
            SignetKind::Org => Magic::OrgSignet,
            SignetKind::User => Magic::UserSignet,
            SignetKind::Ssr => Magic::Ssr,
        }
    }

    fn from_magic(n: u16) -> Option<SignetKind> {
        match n {
            1776 => Some(SignetKind::Org),
            1789 => Some(SignetKind::User),
            1215 => Some(SignetKind::Ssr),
            _ => None,
        }
    }

    /// Name used in errors.
    pub fn name(self) -> &'static str {
        self.magic().name()
    }

    /// Field of the encryption key: 3 in org signets, 2 in user signets and SSRs.
    pub fn encryption_field(self) -> u8 {
        match self {
            SignetKind::Org => 3,
            SignetKind::User | SignetKind::Ssr => 2,
        }
    }

    /// Field of the signature that ends the cryptographic part: org 4, user 6, SSR 5 (DIME.md §5.4).
    pub fn crypto_field(self) -> u8 {
        match self {
            SignetKind::Org => 4,
            SignetKind::User => 6,
            SignetKind::Ssr => 5,
        }
    }

    fn may_repeat(self, fid: u8) -> bool {
        match self {
            SignetKind::Org => matches!(fid, 2 | 21 | 251),
            SignetKind::User => matches!(fid, 3 | 21 | 202 | 251),
            SignetKind::Ssr => fid == 3,
        }
    }

    fn required(self) -> &'static [u8] {
        match self {
            SignetKind::Org => &[1, 3, 4],
            SignetKind::User => &[1, 2, 5, 6],
            SignetKind::Ssr => &[1, 2, 5],
        }
    }

    /// Length encoding of field `fid` (DIME.md §4 table).
    pub(crate) fn width(self, dialect: Dialect, fid: u8) -> Result<Width, Error> {
        let object = self.name();
        let unknown = Err(Error::UnknownField { object, field: fid });
        match fid {
            0 => unknown,
            1..=3 => {
                // libdime HEAD writes the encryption-key fields with u16 lengths (DIME.md §1, §4).
                let two = dialect == Dialect::D1
                    && match self {
                        SignetKind::Org => fid == 3,
                        SignetKind::User => fid == 2 || fid == 3,
                        SignetKind::Ssr => fid == 2,
                    };
                Ok(Width::Prefix(if two { 2 } else { 1 }))
            }
            4..=15 => {
                let defined = match self {
                    SignetKind::Org => fid == 4,
                    SignetKind::User => fid <= 6,
                    SignetKind::Ssr => fid <= 5,
                };
                if defined {
                    Ok(Width::Fixed(64))
                } else {
                    unknown
                }
            }
            _ if self == SignetKind::Ssr => unknown,
            16..=159 | 254 => Ok(Width::Prefix(1)),
            160..=250 => Ok(Width::Prefix(2)),
            251 => Ok(Width::Named),
            252 => Ok(Width::Prefix(3)),
            253 | 255 => Ok(Width::Fixed(64)),
        }
    }
}

/// The spec's name of field `fid` in a signet of `kind` (DIME.md §5.1, §5.2).
pub fn field_name(kind: SignetKind, fid: u8) -> &'static str {
    let common = match fid {
        16 => "Name",
        17 => "Address",
        18 => "Province",
        19 => "Country",
        20 => "Postal-Code",
        21 => "Phone-Number",
        22 => "Language",
        23 => "Currency",
        24 => "Cryptocurrency",
        25 => "Motto",
        26 => "Extensions",
        27 => "Message-Size-Limit",
        160 => "Website",
        251 => "Undefined-Field",
        252 => "Photo",
        253 => "Full-Signature",
        254 => "Signet-Identifier",
        255 => "ID-Signature",
        _ => "",
    };
    if !common.is_empty() {
        return common;
    }
    match (kind, fid) {
        (SignetKind::Org, 1) => "Primary-Organizational-Key",
        (SignetKind::Org, 2) => "Secondary-Organizational-Key",
        (SignetKind::Org, 3) => "Encryption-Key",
        (SignetKind::Org, 4) => "Organizational-Signature",
        (SignetKind::Org, 200) => "Contact-Abuse",
        (SignetKind::Org, 201) => "Contact-Admin",
        (SignetKind::Org, 202) => "Contact-Support",
        (SignetKind::Org, 203) => "Web-Access-Host",
        (SignetKind::Org, 204) => "Web-Access-Location",
        (SignetKind::Org, 205) => "Web-Access-Certificate",
        (SignetKind::Org, 206) => "Mail-Access-Host",
        (SignetKind::Org, 207) => "Mail-Access-Certificate",
        (SignetKind::Org, 208) => "Onion-Access-Host",
        (SignetKind::Org, 209) => "Onion-Access-Certificate",
        (SignetKind::Org, 210) => "Onion-Delivery-Host",
        (SignetKind::Org, 211) => "Onion-Delivery-Certificate",
        (_, 1) => "Signing-Key",
        (_, 2) => "Encryption-Key",
        (_, 3) => "Alternate-Encryption-Key",
        (_, 4) => "Custody-Signature",
        (_, 5) => "User-Signature",
        (_, 6) => "Organizational-Signature",
        (_, 93) => "Supported-Codecs",
        (_, 94) => "Title",
        (_, 95) => "Employer",
        (_, 96) => "Gender",
        (_, 97) => "Alma-Mater",
        (_, 98) => "Supervisor",
        (_, 99) => "Political-Party",
        (_, 200) => "Alternate-Address",
        (_, 201) => "Resume",
        (_, 202) => "Endorsements",
        _ => "Undefined",
    }
}

/// SOK permission bits (first byte of org field 2, DIME.md §5.1).
pub mod permission {
    /// May sign user signets.
    pub const SIGNETS: u8 = 1;
    /// May sign messages.
    pub const MESSAGES: u8 = 2;
    /// May sign TLS certificates.
    pub const TLS: u8 = 4;
    /// May sign software.
    pub const SOFTWARE: u8 = 8;
}

/// A secondary organizational key (org field 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sok {
    /// Permission bits, see [`permission`].
    pub permissions: u8,
    /// The Ed25519 public key.
    pub key: VerifyingKey,
}

/// How far a signet validates (DIME.md §5.3). Ordered: `Ssr < Crypto < Full < Id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// The user's own signature (field 5) holds; no org signature checked.
    Ssr,
    /// Valid through the crypto signature (org 4, user 6): libdime's SS_CRYPTO.
    Crypto,
    /// Valid through field 253: libdime's SS_FULL ("id-stripped signet").
    Full,
    /// Valid through field 255 with an identifier: libdime's SS_ID ("full signet").
    Id,
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Level::Ssr => "ssr",
            Level::Crypto => "crypto",
            Level::Full => "full",
            Level::Id => "id",
        })
    }
}

/// Why validation stopped below [`Level::Id`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// An SSR carries no org signature.
    Unsigned,
    /// A user signet was checked without its org signet, so fields 6/253/255 were not verified.
    NoOrgSignet,
    /// The field the next level needs is absent (a split).
    Missing {
        /// The absent field.
        field: u8,
    },
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Limit::Unsigned => f.write_str("signing request: not signed by an org yet"),
            Limit::NoOrgSignet => f.write_str("no org signet given: org signatures not checked"),
            Limit::Missing { field } => write!(f, "field {field} is absent"),
        }
    }
}

/// State of the chain-of-custody field (user field 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Custody {
    /// No field 4: the first key of this user.
    Absent,
    /// Field 4 is present; checking it needs the previous signet ([`Signet::verify_custody`]).
    Unchecked,
}

/// The outcome of a successful validation: the level reached and why not higher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validation {
    /// Highest level whose signatures all verify.
    pub level: Level,
    /// Why the level is not higher (`None` at [`Level::Id`]).
    pub limit: Option<Limit>,
    /// Chain-of-custody state (user signets and SSRs; `Absent` for org signets).
    pub custody: Custody,
}

/// A parsed org signet, user signet or SSR.
///
/// Accessors for the message layer: [`signing_key`](Self::signing_key) (Ed25519 public key),
/// [`encryption_key`](Self::encryption_key) (secp256k1 public key),
/// [`crypto_fingerprint`](Self::crypto_fingerprint); also [`kind`](Self::kind),
/// [`dialect`](Self::dialect), [`identifier`](Self::identifier), [`fields`](Self::fields),
/// [`soks`](Self::soks), [`signet_signing_keys`](Self::signet_signing_keys),
/// [`full_fingerprint`](Self::full_fingerprint), [`id_fingerprint`](Self::id_fingerprint),
/// [`as_bytes`](Self::as_bytes), [`armor`](Self::armor), [`to_base64_line`](Self::to_base64_line).
#[derive(Debug, Clone)]
pub struct Signet {
    kind: SignetKind,
    dialect: Dialect,
    /// The whole object, header included.
    bytes: Vec<u8>,
    /// Fields and their byte ranges within `bytes[HEADER..]`.
    fields: Vec<Field>,
    spans: Vec<Range<usize>>,
    signing_key: VerifyingKey,
    encryption_key: k256::PublicKey,
    validated: ValidatedOnce,
}

/// The last successful [`Signet::validate`] and the org signet it was under, shared by clones:
/// a signet handed out by a cache (the signet resolver's, the key store's) is validated once,
/// not once per message. The outcome depends on the two signets' bytes alone, never on time.
#[derive(Debug, Clone, Default)]
struct ValidatedOnce(std::sync::Arc<std::sync::Mutex<Option<Remembered>>>);

/// The org signet's bytes (`None`: validated without one) and the outcome under it.
type Remembered = (Option<Vec<u8>>, Validation);

impl ValidatedOnce {
    fn get(&self, org: Option<&[u8]>) -> Option<Validation> {
        let held = self.0.lock().unwrap_or_else(|p| p.into_inner());
        held.as_ref()
            .filter(|(under, _)| under.as_deref() == org)
            .map(|&(_, v)| v)
    }

    fn set(&self, org: Option<&[u8]>, v: Validation) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some((org.map(<[u8]>::to_vec), v));
    }
}

impl PartialEq for Signet {
    fn eq(&self, other: &Self) -> bool {
        // Everything else is derived from the bytes and the dialect.
        self.bytes == other.bytes && self.dialect == other.dialect
    }
}

impl Eq for Signet {}

const HEADER: usize = 5;

impl Signet {
    /// Parse a binary signet or SSR, detecting the dialect.
    pub fn parse(input: &[u8]) -> Result<Signet, Error> {
        let (magic, payload) = parse_frame(input, 3)?;
        let kind = SignetKind::from_magic(magic).ok_or(Error::BadMagic {
            expected: "1776 (org signet), 1789 (user signet) or 1215 (signet signing request)",
            got: magic,
        })?;
        let dialect = sniff_dialect(kind, payload);
        Self::parse_payload(kind, dialect, input)
    }

    /// Parse armored text or binary bytes (a signet file's contents).
    pub fn parse_any(input: &[u8]) -> Result<Signet, Error> {
        Self::parse(&armor::decode_any(input)?)
    }

    /// Parse the one-line base64 form used on DMTP.
    pub fn from_base64_line(line: &str) -> Result<Signet, Error> {
        Self::parse(&armor::from_base64_line(line)?)
    }

    fn parse_payload(kind: SignetKind, dialect: Dialect, input: &[u8]) -> Result<Signet, Error> {
        let object = kind.name();
        let payload = &input[HEADER..];
        let located = read_fields(payload, object, |fid| kind.width(dialect, fid))?;
        let mut prev: Option<u8> = None;
        for (f, _) in &located {
            if let Some(p) = prev {
                if f.id < p {
                    return Err(Error::FieldOrder {
                        object,
                        field: f.id,
                        after: p,
                    });
                }
                if f.id == p && !kind.may_repeat(f.id) {
                    return Err(Error::DuplicateField {
                        object,
                        field: f.id,
                    });
                }
            }
            prev = Some(f.id);
        }
        for &fid in kind.required() {
            if !located.iter().any(|(f, _)| f.id == fid) {
                return Err(Error::MissingField { object, field: fid });
            }
        }
        let (fields, spans): (Vec<Field>, Vec<Range<usize>>) = located.into_iter().unzip();
        let find = |fid: u8| fields.iter().find(|f| f.id == fid).map(|f| &f.value[..]);
        let signing_key = decode_signing_key(find(1).unwrap_or_default(), dialect, object, 1)?;
        let enc_fid = kind.encryption_field();
        let encryption_key =
            decode_encryption_key(find(enc_fid).unwrap_or_default(), object, enc_fid)?;
        for f in &fields {
            match (kind, f.id) {
                (SignetKind::Org, 2) => {
                    decode_sok(&f.value, dialect, object)?;
                }
                (SignetKind::User | SignetKind::Ssr, 3) => {
                    decode_encryption_key(&f.value, object, 3)?;
                }
                _ => {}
            }
        }
        Ok(Signet {
            kind,
            dialect,
            bytes: input.to_vec(),
            fields,
            spans,
            signing_key,
            encryption_key,
            validated: ValidatedOnce::default(),
        })
    }

    /// Org signet, user signet or SSR.
    pub fn kind(&self) -> SignetKind {
        self.kind
    }

    /// Dialect the signet is written in.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// The binary object.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The fields, in order.
    pub fn fields(&self) -> &[Field] {
        &self.fields
    }

    /// The first field with this id.
    pub fn field(&self, fid: u8) -> Option<&Field> {
        self.fields.iter().find(|f| f.id == fid)
    }

    /// Field 1: the POK of an org signet, or the user's signing key.
    pub fn signing_key(&self) -> &VerifyingKey {
        &self.signing_key
    }

    /// The secp256k1 encryption key (org field 3, user field 2).
    pub fn encryption_key(&self) -> &k256::PublicKey {
        &self.encryption_key
    }

    /// The encryption key as written: 33-byte compressed SEC1.
    pub fn encryption_key_bytes(&self) -> &[u8] {
        self.field(self.kind.encryption_field())
            .map_or(&[][..], |f| &f.value[..])
    }

    /// Field 254: the domain (org) or mailbox (user), if present and UTF-8.
    pub fn identifier(&self) -> Option<&str> {
        std::str::from_utf8(&self.field(254)?.value).ok()
    }

    /// The SOKs of an org signet (field 2).
    pub fn soks(&self) -> Vec<Sok> {
        if self.kind != SignetKind::Org {
            return Vec::new();
        }
        self.fields
            .iter()
            .filter(|f| f.id == 2)
            .filter_map(|f| decode_sok(&f.value, self.dialect, "org signet").ok())
            .collect()
    }

    /// Keys of an org signet allowed to do `permission`: the POK first, then each SOK whose bits
    /// include `permission` (DIME.md §5.1).
    pub fn signing_keys_for(&self, permission: u8) -> Vec<VerifyingKey> {
        let mut keys = vec![self.signing_key];
        keys.extend(
            self.soks()
                .into_iter()
                .filter(|s| s.permissions & permission == permission)
                .map(|s| s.key),
        );
        keys
    }

    /// Keys of an org signet that may sign user signets.
    pub fn signet_signing_keys(&self) -> Vec<VerifyingKey> {
        self.signing_keys_for(permission::SIGNETS)
    }

    fn payload(&self) -> &[u8] {
        &self.bytes[HEADER..]
    }

    /// Field bytes that precede the first field with id >= `fid` (what signature `fid` covers).
    fn before(&self, fid: u8) -> &[u8] {
        let end = self
            .fields
            .iter()
            .zip(&self.spans)
            .find(|(f, _)| f.id >= fid)
            .map_or(self.payload().len(), |(_, s)| s.start);
        &self.payload()[..end]
    }

    /// Field bytes up to and including the last field with id <= `fid`.
    fn through(&self, fid: u8) -> &[u8] {
        let end = self
            .fields
            .iter()
            .zip(&self.spans)
            .filter(|(f, _)| f.id <= fid)
            .map(|(_, s)| s.end)
            .next_back()
            .unwrap_or(0);
        &self.payload()[..end]
    }

    fn signature(&self, fid: u8) -> Option<Signature> {
        let v: [u8; 64] = self.field(fid)?.value.as_slice().try_into().ok()?;
        Some(Signature::from_bytes(&v))
    }

    /// Check signature field `fid` under any of `keys`; `Ok(false)` if the field is absent.
    fn check(&self, fid: u8, keys: &[VerifyingKey]) -> Result<bool, Error> {
        let Some(sig) = self.signature(fid) else {
            return Ok(false);
        };
        let msg = self.before(fid);
        if keys.iter().any(|k| k.verify(msg, &sig).is_ok()) {
            Ok(true)
        } else {
            Err(Error::SignatureInvalid {
                object: self.kind.name(),
                field: fid,
            })
        }
    }

    /// Validate to the highest level the signatures allow (DIME.md §5.3).
    ///
    /// `org` is the org signet of a user signet (its POK and signet-signing SOKs are tried); it is
    /// ignored for org signets (self-signed by their POK) and SSRs. Every signature that is present
    /// must verify, else `Err(SignatureInvalid { field })`; absent fields only cap the level, and
    /// [`Validation::limit`] says which.
    pub fn validate(&self, org: Option<&Signet>) -> Result<Validation, Error> {
        let under = org.map(|o| o.bytes.as_slice());
        if let Some(v) = self.validated.get(under) {
            return Ok(v);
        }
        let v = self.validate_now(org)?;
        self.validated.set(under, v);
        Ok(v)
    }

    fn validate_now(&self, org: Option<&Signet>) -> Result<Validation, Error> {
        let object = self.kind.name();
        let custody = if self.kind != SignetKind::Org && self.field(4).is_some() {
            Custody::Unchecked
        } else {
            Custody::Absent
        };
        let org_keys = match self.kind {
            SignetKind::Org => vec![self.signing_key],
            SignetKind::Ssr => {
                self.check(5, &[self.signing_key])?;
                return Ok(Validation {
                    level: Level::Ssr,
                    limit: Some(Limit::Unsigned),
                    custody,
                });
            }
            SignetKind::User => {
                self.check(5, &[self.signing_key])?;
                match org {
                    None => {
                        return Ok(Validation {
                            level: Level::Ssr,
                            limit: Some(Limit::NoOrgSignet),
                            custody,
                        });
                    }
                    Some(o) if o.kind != SignetKind::Org => {
                        return Err(Error::WrongKind {
                            object: o.kind.name(),
                            expected: "an org signet to check a user signet",
                        });
                    }
                    Some(o) => o.signet_signing_keys(),
                }
            }
        };
        // Required by parse, so present; check it first so a bad crypto signature is reported as such.
        if !self.check(self.kind.crypto_field(), &org_keys)? {
            return Err(Error::MissingField {
                object,
                field: self.kind.crypto_field(),
            });
        }
        let full = self.check(253, &org_keys)?;
        let id = self.check(255, &org_keys)?;
        let (level, limit) = if !full {
            (Level::Crypto, Some(Limit::Missing { field: 253 }))
        } else if self.field(254).is_none() {
            (Level::Full, Some(Limit::Missing { field: 254 }))
        } else if !id {
            (Level::Full, Some(Limit::Missing { field: 255 }))
        } else {
            (Level::Id, None)
        };
        Ok(Validation {
            level,
            limit,
            custody,
        })
    }

    /// Validate an org signet and require its POK to be one of `poks` (from the `_dx` record,
    /// DIME.md §9.5).
    pub fn validate_org_pok(&self, poks: &[VerifyingKey]) -> Result<Validation, Error> {
        if self.kind != SignetKind::Org {
            return Err(Error::WrongKind {
                object: self.kind.name(),
                expected: "an org signet",
            });
        }
        if !poks.contains(&self.signing_key) {
            return Err(Error::KeyMismatch {
                object: "org signet",
                what: "any pok= of the _dx record",
            });
        }
        self.validate(None)
    }

    /// Check the chain-of-custody signature (field 4) under the user's previous signing key.
    pub fn verify_custody(&self, previous: &VerifyingKey) -> Result<(), Error> {
        if self.kind == SignetKind::Org {
            return Err(Error::WrongKind {
                object: self.kind.name(),
                expected: "a user signet or SSR",
            });
        }
        if self.check(4, &[*previous])? {
            Ok(())
        } else {
            Err(Error::MissingField {
                object: self.kind.name(),
                field: 4,
            })
        }
    }

    /// Crypto fingerprint: SHA-512 of the field bytes through the crypto signature (org 4, user 6;
    /// for an SSR, through field 5: the SSR fingerprint). This identifies a signet in envelopes and
    /// DMTP commands (DIME.md §5.5).
    pub fn crypto_fingerprint(&self) -> Fingerprint {
        Fingerprint::of(self.through(self.kind.crypto_field()))
    }

    /// Full fingerprint: through field 253, if present.
    pub fn full_fingerprint(&self) -> Option<Fingerprint> {
        self.field(253)?;
        Some(Fingerprint::of(self.through(253)))
    }

    /// ID fingerprint: over all fields, if field 255 is present.
    pub fn id_fingerprint(&self) -> Option<Fingerprint> {
        self.field(255)?;
        Some(Fingerprint::of(self.payload()))
    }

    /// Split (DIME.md §5.4): `Crypto` keeps fields through the crypto signature, `Full` through 253,
    /// `Id` everything. The split gets a new header. `Ssr` is not a split level.
    pub fn split(&self, level: Level) -> Result<Signet, Error> {
        let object = self.kind.name();
        let fields = match level {
            Level::Ssr => {
                return Err(Error::WrongKind {
                    object,
                    expected: "a split level of crypto, full or id",
                });
            }
            Level::Crypto => self.through(self.kind.crypto_field()),
            Level::Full => {
                if self.field(253).is_none() {
                    return Err(Error::MissingField { object, field: 253 });
                }
                self.through(253)
            }
            Level::Id => self.payload(),
        };
        Self::parse_payload(
            self.kind,
            self.dialect,
            &encode_object(self.kind.magic(), fields)?,
        )
    }

    /// Armored text (`-----BEGIN ORGANIZATIONAL SIGNET-----` …).
    pub fn armor(&self) -> String {
        // Signet magics always have a label.
        armor::armor(&self.bytes).unwrap_or_default()
    }

    /// One line of padded base64, as sent over DMTP.
    pub fn to_base64_line(&self) -> String {
        armor::to_base64_line(&self.bytes)
    }

    /// Build a signet from fields in the given dialect; runs every structural check of `parse`.
    pub fn from_fields(
        kind: SignetKind,
        dialect: Dialect,
        fields: &[Field],
    ) -> Result<Signet, Error> {
        let mut payload = Vec::new();
        write_fields(&mut payload, fields, kind.name(), |fid| {
            kind.width(dialect, fid)
        })?;
        Self::parse_payload(kind, dialect, &encode_object(kind.magic(), &payload)?)
    }

    /// Create an org signet (D2) for `domain`: fields 1, SOKs, 3, 4, `extra`, 253, 254, 255, all
    /// signed by the org key's POK. `extra` holds informational fields (16..=252), sorted by id.
    pub fn create_org(
        key: &PrivateKey,
        domain: &str,
        soks: &[Sok],
        extra: &[Field],
    ) -> Result<Signet, Error> {
        if key.kind() != KeyKind::Org {
            return Err(Error::WrongKind {
                object: "user key",
                expected: "an org key",
            });
        }
        check_extra(SignetKind::Org, extra)?;
        let mut fields = vec![Field::new(1, encode_signing_key(&key.verifying_key()))];
        for s in soks {
            let mut v = vec![s.permissions];
            v.extend(encode_signing_key(&s.key));
            fields.push(Field::new(2, v));
        }
        fields.push(Field::new(3, key.encryption_public_bytes()));
        sign_next(SignetKind::Org, &mut fields, 4, key.signing_key())?;
        fields.extend_from_slice(extra);
        finish(SignetKind::Org, fields, key.signing_key(), domain)
    }

    /// Create a signing request (D2) for a user key: fields 1, 2, optional 4, 5. When the user
    /// rotates keys, `previous` (the old user key) signs the chain-of-custody field 4.
    pub fn create_ssr(key: &PrivateKey, previous: Option<&PrivateKey>) -> Result<Signet, Error> {
        if key.kind() != KeyKind::User {
            return Err(Error::WrongKind {
                object: "org key",
                expected: "a user key",
            });
        }
        let mut fields = vec![
            Field::new(1, encode_signing_key(&key.verifying_key())),
            Field::new(2, key.encryption_public_bytes()),
        ];
        if let Some(prev) = previous {
            sign_next(SignetKind::Ssr, &mut fields, 4, prev.signing_key())?;
        }
        sign_next(SignetKind::Ssr, &mut fields, 5, key.signing_key())?;
        Signet::from_fields(SignetKind::Ssr, Dialect::D2, &fields)
    }

    /// Sign an SSR into a user signet for `address`: fields of the SSR, 6, `extra`, 253, 254, 255.
    ///
    /// `signer` must be the POK of `org` or one of its SOKs with the signet-signing bit; the SSR's
    /// own signature must verify. The SSR's dialect is kept (its field 5 covers its encoding).
    pub fn sign_ssr(
        ssr: &Signet,
        signer: &SigningKey,
        org: &Signet,
        address: &str,
        extra: &[Field],
    ) -> Result<Signet, Error> {
        if ssr.kind != SignetKind::Ssr {
            return Err(Error::WrongKind {
                object: ssr.kind.name(),
                expected: "a signet signing request",
            });
        }
        if org.kind != SignetKind::Org {
            return Err(Error::WrongKind {
                object: org.kind.name(),
                expected: "an org signet",
            });
        }
        ssr.validate(None)?;
        if !org.signet_signing_keys().contains(&signer.verifying_key()) {
            return Err(Error::NotPermitted {
                object: "user signet",
                permission: "sign signets",
            });
        }
        Self::sign_checked_ssr(ssr, signer, address, extra)
    }

    /// Sign an SSR with an org key file's POK (no org signet needed: the POK may always sign).
    pub fn sign_ssr_with_org_key(
        ssr: &Signet,
        org_key: &PrivateKey,
        address: &str,
        extra: &[Field],
    ) -> Result<Signet, Error> {
        if org_key.kind() != KeyKind::Org {
            return Err(Error::WrongKind {
                object: "user key",
                expected: "an org key",
            });
        }
        if ssr.kind != SignetKind::Ssr {
            return Err(Error::WrongKind {
                object: ssr.kind.name(),
                expected: "a signet signing request",
            });
        }
        ssr.validate(None)?;
        Self::sign_checked_ssr(ssr, org_key.signing_key(), address, extra)
    }

    fn sign_checked_ssr(
        ssr: &Signet,
        signer: &SigningKey,
        address: &str,
        extra: &[Field],
    ) -> Result<Signet, Error> {
        check_extra(SignetKind::User, extra)?;
        let mut fields = ssr.fields.clone();
        // Field 6 covers the SSR's field bytes exactly as they are (fields before 6).
        let sig = signer.sign(ssr.payload());
        fields.push(Field::new(6, sig.to_bytes().to_vec()));
        fields.extend_from_slice(extra);
        finish_in(SignetKind::User, ssr.dialect, fields, signer, address)
    }
}

/// Guess the dialect from the first key fields (DIME.md §1): a 32-byte field 1 is PRIME's raw
/// Ed25519 key (D3); an encryption-key length whose first byte is 0 can only be D1's u16 length
/// (the value is 33 bytes). Anything unreadable defaults to D2 and fails in the real parse.
fn sniff_dialect(kind: SignetKind, payload: &[u8]) -> Dialect {
    let sniff = || -> Option<Dialect> {
        let mut pos = 0usize;
        if *payload.first()? != 1 {
            return None;
        }
        let l1 = usize::from(*payload.get(1)?);
        pos += 2 + l1;
        let enc = kind.encryption_field();
        loop {
            let fid = *payload.get(pos)?;
            if fid == enc {
                break;
            }
            if fid != 2 || kind != SignetKind::Org {
                return None;
            }
            pos += 2 + usize::from(*payload.get(pos + 1)?);
        }
        if *payload.get(pos + 1)? == 0 {
            Some(Dialect::D1)
        } else if l1 == 32 {
            Some(Dialect::D3)
        } else {
            Some(Dialect::D2)
        }
    };
    sniff().unwrap_or(Dialect::D2)
}

/// D1/D2 write Ed25519 keys as `0x40` + 32 bytes; D3 writes the bare 32 bytes (DIME.md §1).
fn decode_signing_key(
    v: &[u8],
    dialect: Dialect,
    object: &'static str,
    field: u8,
) -> Result<VerifyingKey, Error> {
    let raw = match (dialect, v) {
        (Dialect::D3, raw) if raw.len() == 32 => raw,
        (Dialect::D1 | Dialect::D2, [0x40, raw @ ..]) if raw.len() == 32 => raw,
        (Dialect::D1 | Dialect::D2, [_, _, ..]) if v.len() == 33 => {
            return Err(Error::BadKey {
                object,
                field,
                what: "0x40-prefixed Ed25519 key",
            });
        }
        _ => {
            return Err(Error::FieldLength {
                object,
                field,
                expected: if dialect == Dialect::D3 { "32" } else { "33" },
                got: v.len(),
            });
        }
    };
    let arr: [u8; 32] = raw.try_into().map_err(|_| Error::BadKey {
        object,
        field,
        what: "Ed25519 key",
    })?;
    VerifyingKey::from_bytes(&arr).map_err(|_| Error::BadKey {
        object,
        field,
        what: "Ed25519 key",
    })
}

fn decode_sok(v: &[u8], dialect: Dialect, object: &'static str) -> Result<Sok, Error> {
    let [permissions, key @ ..] = v else {
        return Err(Error::FieldLength {
            object,
            field: 2,
            expected: "34",
            got: 0,
        });
    };
    Ok(Sok {
        permissions: *permissions,
        key: decode_signing_key(key, dialect, object, 2)?,
    })
}

fn decode_encryption_key(
    v: &[u8],
    object: &'static str,
    field: u8,
) -> Result<k256::PublicKey, Error> {
    if v.len() != 33 {
        return Err(Error::FieldLength {
            object,
            field,
            expected: "33",
            got: v.len(),
        });
    }
    k256::PublicKey::from_sec1_bytes(v).map_err(|_| Error::BadKey {
        object,
        field,
        what: "compressed secp256k1 point",
    })
}

/// The D2 encoding of an Ed25519 public key.
pub(crate) fn encode_signing_key(k: &VerifyingKey) -> Vec<u8> {
    let mut v = Vec::with_capacity(33);
    v.push(0x40);
    v.extend_from_slice(k.as_bytes());
    v
}

fn check_extra(kind: SignetKind, extra: &[Field]) -> Result<(), Error> {
    match extra.iter().find(|f| !(16..=252).contains(&f.id)) {
        Some(f) => Err(Error::UnknownField {
            object: kind.name(),
            field: f.id,
        }),
        None => Ok(()),
    }
}

/// Append signature field `fid` over the D2 serialization of `fields`.
fn sign_next(
    kind: SignetKind,
    fields: &mut Vec<Field>,
    fid: u8,
    key: &SigningKey,
) -> Result<(), Error> {
    let mut msg = Vec::new();
    write_fields(&mut msg, fields.iter(), kind.name(), |f| {
        kind.width(Dialect::D2, f)
    })?;
    fields.push(Field::new(fid, key.sign(&msg).to_bytes().to_vec()));
    Ok(())
}

fn finish(
    kind: SignetKind,
    fields: Vec<Field>,
    key: &SigningKey,
    ident: &str,
) -> Result<Signet, Error> {
    finish_in(kind, Dialect::D2, fields, key, ident)
}

/// Append 253 (full signature), 254 (identifier) and 255 (ID signature) and build the signet.
fn finish_in(
    kind: SignetKind,
    dialect: Dialect,
    mut fields: Vec<Field>,
    key: &SigningKey,
    ident: &str,
) -> Result<Signet, Error> {
    let width = |f| kind.width(dialect, f);
    let mut msg = Vec::new();
    write_fields(&mut msg, fields.iter(), kind.name(), width)?;
    fields.push(Field::new(253, key.sign(&msg).to_bytes().to_vec()));
    fields.push(Field::new(254, ident.as_bytes().to_vec()));
    msg.clear();
    write_fields(&mut msg, fields.iter(), kind.name(), width)?;
    fields.push(Field::new(255, key.sign(&msg).to_bytes().to_vec()));
    Signet::from_fields(kind, dialect, &fields)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dime::armor::decode_any;
    use rand::SeedableRng;

    fn vector(path: &str) -> Vec<u8> {
        let p = format!(
            "{}/../shared/dime-vectors/{path}",
            env!("CARGO_MANIFEST_DIR")
        );
        let raw = std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"));
        decode_any(&raw).unwrap()
    }

    fn signet(path: &str) -> Signet {
        Signet::parse(&vector(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn ids(s: &Signet) -> Vec<u8> {
        s.fields().iter().map(|f| f.id).collect()
    }

    const D2_ORG_FP: &str =
        "EQBttXLIOm5wCdw0FqPENS19byUuDS33UBoyPacjC46c+esDpPgeh8w4tDJCn9s0Bp+HXodEWQ4V93E76ujstw";
    const D2_USER_FP: &str =
        "JTqL9oUynQrFxge1Q0swRvEmKqVN7WyKlQPRYzR9k8z1xR8MxSjMZX0a3uc3llgsdyelWgBRrsXRdIYJJlAxNQ";

    /// (signet, its org signet, kind, dialect, field ids, level)
    #[allow(clippy::type_complexity)]
    const TABLE: &[(&str, Option<&str>, SignetKind, Dialect, &[u8], Level)] = &[
        (
            "d1-libdime/orig.signet",
            None,
            SignetKind::Org,
            Dialect::D1,
            &[1, 3, 4, 253, 254, 255],
            Level::Id,
        ),
        (
            "d1-libdime/dest.signet",
            None,
            SignetKind::Org,
            Dialect::D1,
            &[1, 3, 4, 253, 254, 255],
            Level::Id,
        ),
        (
            "d1-libdime/orig.signet.bin",
            None,
            SignetKind::Org,
            Dialect::D1,
            &[1, 3, 4, 253, 254, 255],
            Level::Id,
        ),
        (
            "d1-libdime/dest.signet.bin",
            None,
            SignetKind::Org,
            Dialect::D1,
            &[1, 3, 4, 253, 254, 255],
            Level::Id,
        ),
        (
            "d1-libdime/auth.signet",
            Some("d1-libdime/orig.signet"),
            SignetKind::User,
            Dialect::D1,
            &[1, 2, 5, 6, 253, 254, 255],
            Level::Id,
        ),
        (
            "d1-libdime/recp.signet",
            Some("d1-libdime/dest.signet"),
            SignetKind::User,
            Dialect::D1,
            &[1, 2, 5, 6, 253, 254, 255],
            Level::Id,
        ),
        (
            "d1-libdime/auth.signet.bin",
            Some("d1-libdime/orig.signet"),
            SignetKind::User,
            Dialect::D1,
            &[1, 2, 5, 6, 253, 254, 255],
            Level::Id,
        ),
        (
            "d1-libdime/recp.signet.bin",
            Some("d1-libdime/dest.signet"),
            SignetKind::User,
            Dialect::D1,
            &[1, 2, 5, 6, 253, 254, 255],
            Level::Id,
        ),
        (
            "d2-magma-dime/org-signet.bin",
            None,
            SignetKind::Org,
            Dialect::D2,
            &[1, 3, 4, 16, 17, 19, 20, 21, 253, 254, 255],
            Level::Id,
        ),
        (
            "d2-magma-dime/user-signet.bin",
            Some("d2-magma-dime/org-signet.bin"),
            SignetKind::User,
            Dialect::D2,
            &[1, 2, 5, 6, 16, 253, 254, 255],
            Level::Id,
        ),
        (
            "d2-magma-dime/user-ssr.bin",
            None,
            SignetKind::Ssr,
            Dialect::D2,
            &[1, 2, 5],
            Level::Ssr,
        ),
        (
            "d3-prime/sandbox-org.signet.pem",
            None,
            SignetKind::Org,
            Dialect::D3,
            &[1, 3, 4],
            Level::Crypto,
        ),
        (
            "d3-prime/prime.org.signet.regenerated.bin",
            None,
            SignetKind::Org,
            Dialect::D3,
            &[1, 3, 4],
            Level::Crypto,
        ),
        (
            "d3-prime/prime.user.ssr.bin",
            None,
            SignetKind::Ssr,
            Dialect::D3,
            &[1, 2, 5],
            Level::Ssr,
        ),
        (
            "d3-prime/prime.user.signet.bin",
            Some("d3-prime/sandbox-org.signet.pem"),
            SignetKind::User,
            Dialect::D3,
            &[1, 2, 5, 6],
            Level::Crypto,
        ),
        (
            "d3-prime/prime.user.signet.pem",
            Some("d3-prime/sandbox-org.signet.pem"),
            SignetKind::User,
            Dialect::D3,
            &[1, 2, 5, 6],
            Level::Crypto,
        ),
    ];

    #[test]
    fn every_vector_signet_parses_and_validates() {
        for &(path, org, kind, dialect, field_ids, level) in TABLE {
            let s = signet(path);
            let org = org.map(signet);
            assert_eq!(s.kind(), kind, "{path}");
            assert_eq!(s.dialect(), dialect, "{path}");
            assert_eq!(ids(&s), field_ids, "{path}");
            assert_eq!(s.as_bytes(), &vector(path)[..], "{path}");
            let v = s
                .validate(org.as_ref())
                .unwrap_or_else(|e| panic!("{path}: {e}"));
            assert_eq!(v.level, level, "{path}: {v:?}");
            assert_eq!(v.custody, Custody::Absent, "{path}");
            // A split re-frames the prefix and still validates at the split's level.
            let crypto = s.split(Level::Crypto).unwrap();
            assert_eq!(
                crypto.crypto_fingerprint(),
                s.crypto_fingerprint(),
                "{path}"
            );
            if kind != SignetKind::Ssr {
                assert_eq!(
                    crypto.validate(org.as_ref()).unwrap().level,
                    Level::Crypto,
                    "{path}"
                );
            }
        }
    }

    #[test]
    fn d1_user_signets_are_signed_by_their_org() {
        let auth = signet("d1-libdime/auth.signet");
        let dest = signet("d1-libdime/dest.signet");
        assert_eq!(
            auth.validate(Some(&dest)),
            Err(Error::SignatureInvalid {
                object: "user signet",
                field: 6
            })
        );
        assert_eq!(auth.identifier(), Some("alice@a.example"));
        assert_eq!(dest.identifier(), Some("b.example"));
        // A validation remembered under its own org (and shared with a clone) says nothing
        // about another org.
        let orig = signet("d1-libdime/orig.signet");
        let under_own = auth.validate(Some(&orig)).unwrap();
        assert_eq!(auth.clone().validate(Some(&orig)), Ok(under_own));
        assert!(auth.clone().validate(Some(&dest)).is_err());
        assert_eq!(auth.validate(Some(&orig)), Ok(under_own));
    }

    #[test]
    fn d2_fingerprints_match_the_published_values() {
        let org = signet("d2-magma-dime/org-signet.bin");
        let user = signet("d2-magma-dime/user-signet.bin");
        assert_eq!(org.crypto_fingerprint().to_string(), D2_ORG_FP);
        assert_eq!(user.crypto_fingerprint().to_string(), D2_USER_FP);
        assert_eq!(org.identifier(), Some("example.com"));
        assert_eq!(user.identifier(), Some("user@example.com"));
        assert!(org.full_fingerprint().is_some() && org.id_fingerprint().is_some());
        assert_ne!(org.full_fingerprint(), org.id_fingerprint());
        // The SSR is the 140-byte prefix of the user signet's fields.
        let ssr = signet("d2-magma-dime/user-ssr.bin");
        assert_eq!(&ssr.as_bytes()[5..], &user.as_bytes()[5..140]);
        assert_eq!(
            ssr.crypto_fingerprint(),
            Fingerprint::of(&user.as_bytes()[5..140])
        );
        // Full split drops 254/255 and validates as SS_FULL.
        let full = user.split(Level::Full).unwrap();
        assert_eq!(ids(&full), [1, 2, 5, 6, 16, 253]);
        let v = full.validate(Some(&org)).unwrap();
        assert_eq!(
            (v.level, v.limit),
            (Level::Full, Some(Limit::Missing { field: 254 }))
        );
        assert_eq!(full.full_fingerprint(), user.full_fingerprint());
    }

    #[test]
    fn d2_org_key_matches_its_signet() {
        let key = PrivateKey::parse(&vector("d2-magma-dime/org-key.bin")).unwrap();
        let org = signet("d2-magma-dime/org-signet.bin");
        assert_eq!(&key.verifying_key(), org.signing_key());
        assert_eq!(key.encryption_public(), *org.encryption_key());
        for path in [
            "d1-libdime/orig",
            "d1-libdime/dest",
            "d1-libdime/auth",
            "d1-libdime/recp",
        ] {
            let key = PrivateKey::parse(&vector(&format!("{path}.keys"))).unwrap();
            let s = signet(&format!("{path}.signet"));
            assert_eq!(&key.verifying_key(), s.signing_key(), "{path}");
            assert_eq!(
                key.encryption_public_bytes(),
                s.encryption_key_bytes(),
                "{path}"
            );
        }
    }

    /// Flip each byte of the object in turn: parsing or validation must fail, with a precise error.
    fn assert_every_flip_fails(path: &str, org: Option<&str>) {
        let bytes = vector(path);
        let org = org.map(signet);
        let good = signet(path);
        let object = good.kind().name();
        let sig_fields: Vec<u8> = good
            .fields()
            .iter()
            .map(|f| f.id)
            .filter(|&id| (4..=15).contains(&id) || id == 253 || id == 255)
            .collect();
        for i in 0..bytes.len() {
            // Alternate low and high bits so both ends of each byte get flipped somewhere.
            let mask = if i % 2 == 0 { 0x01u8 } else { 0x80 };
            let mut b = bytes.clone();
            b[i] ^= mask;
            let result = Signet::parse(&b).and_then(|s| s.validate(org.as_ref()));
            let err = match result {
                Ok(v) => panic!("{path}: flip {mask:#x} at byte {i} still validates: {v:?}"),
                Err(e) => e,
            };
            // A flip inside a field's value (not its id or length) must be caught by the first
            // signature covering it (signatures are checked in field order), or, in a key field,
            // possibly by the key no longer being a curve point.
            let Some(pos) = i.checked_sub(HEADER) else {
                continue;
            };
            let Some((f, span)) = good
                .fields
                .iter()
                .zip(&good.spans)
                .find(|(_, s)| s.contains(&pos))
            else {
                continue;
            };
            let value_start = span.end - f.value.len();
            if pos < value_start {
                continue;
            }
            let first_sig = sig_fields.iter().copied().find(|&s| s >= f.id).unwrap();
            let expected = Error::SignatureInvalid {
                object,
                field: first_sig,
            };
            let key_field = f.id <= 3;
            assert!(
                err == expected
                    || (key_field && matches!(err, Error::BadKey { field, .. } if field == f.id)),
                "{path}: flip at byte {i} (field {}): got {err:?}, expected {expected:?}",
                f.id
            );
        }
    }

    #[test]
    fn every_flipped_byte_breaks_a_check() {
        assert_every_flip_fails("d2-magma-dime/org-signet.bin", None);
        assert_every_flip_fails(
            "d2-magma-dime/user-signet.bin",
            Some("d2-magma-dime/org-signet.bin"),
        );
        assert_every_flip_fails("d1-libdime/auth.signet.bin", Some("d1-libdime/orig.signet"));
        assert_every_flip_fails("d2-magma-dime/user-ssr.bin", None);
    }

    #[test]
    fn flipped_signature_byte_names_the_field() {
        let bytes = vector("d2-magma-dime/org-signet.bin");
        let org = signet("d2-magma-dime/org-signet.bin");
        let table = [(4u8, 4u8), (16, 253), (253, 253), (254, 255), (255, 255)];
        for (flip_in, failing) in table {
            let i = org.fields.iter().position(|f| f.id == flip_in).unwrap();
            let mut b = bytes.clone();
            b[5 + org.spans[i].end - 1] ^= 1;
            assert_eq!(
                Signet::parse(&b).unwrap().validate(None),
                Err(Error::SignatureInvalid {
                    object: "org signet",
                    field: failing
                }),
                "flip in field {flip_in}"
            );
        }
    }

    #[test]
    fn d3_and_malformed_inputs_get_precise_errors() {
        let user = signet("d2-magma-dime/user-signet.bin");
        let b = user.as_bytes();
        // Trailing byte after the declared length.
        let mut t = b.to_vec();
        t.push(0);
        assert_eq!(
            Signet::parse(&t),
            Err(Error::TrailingBytes {
                object: "user signet",
                count: 1
            })
        );
        // A key file is not a signet.
        assert!(matches!(
            Signet::parse(&vector("d2-magma-dime/org-key.bin")),
            Err(Error::BadMagic { got: 1952, .. })
        ));
        // A PRIME message is not a signet either (and has a u32 length).
        assert!(Signet::parse(&vector("d3-prime/prime.naked.message.bin")).is_err());
        // Fields out of order.
        let fields = vec![user.fields[1].clone(), user.fields[0].clone()];
        assert!(matches!(
            Signet::from_fields(SignetKind::Ssr, Dialect::D2, &fields),
            Err(Error::FieldOrder {
                field: 1,
                after: 2,
                ..
            })
        ));
        // Missing field 0x40 prefix.
        let mut f0 = user.fields[..3].to_vec();
        f0[0].value[0] = 0x41;
        assert!(matches!(
            Signet::from_fields(SignetKind::Ssr, Dialect::D2, &f0),
            Err(Error::BadKey { field: 1, .. })
        ));
        // An SSR may not carry field 6.
        assert_eq!(
            Signet::from_fields(SignetKind::Ssr, Dialect::D2, &user.fields[..4]),
            Err(Error::UnknownField {
                object: "signet signing request",
                field: 6
            })
        );
        // Duplicate unique field.
        let dup = [user.fields[0].clone(), user.fields[0].clone()];
        assert!(matches!(
            Signet::from_fields(SignetKind::Ssr, Dialect::D2, &dup),
            Err(Error::DuplicateField { field: 1, .. })
        ));
    }

    #[test]
    fn create_org_and_user_then_rotate_with_custody() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let org_key = PrivateKey::generate(KeyKind::Org, &mut rng);
        let extra = [
            Field::new(16, b"Example".to_vec()),
            Field::new(160, b"https://x".to_vec()),
        ];
        let org = Signet::create_org(&org_key, "example.org", &[], &extra).unwrap();
        assert_eq!(org.dialect(), Dialect::D2);
        assert_eq!(ids(&org), [1, 3, 4, 16, 160, 253, 254, 255]);
        assert_eq!(org.validate(None).unwrap().level, Level::Id);
        assert_eq!(
            org.validate_org_pok(&[org_key.verifying_key()])
                .unwrap()
                .level,
            Level::Id
        );
        assert!(matches!(
            org.validate_org_pok(&[]),
            Err(Error::KeyMismatch { .. })
        ));

        let user_key = PrivateKey::generate(KeyKind::User, &mut rng);
        let ssr = Signet::create_ssr(&user_key, None).unwrap();
        assert_eq!(ssr.validate(None).unwrap().level, Level::Ssr);
        let user =
            Signet::sign_ssr(&ssr, org_key.signing_key(), &org, "a@example.org", &[]).unwrap();
        assert_eq!(ids(&user), [1, 2, 5, 6, 253, 254, 255]);
        assert_eq!(user.validate(Some(&org)).unwrap().level, Level::Id);
        let v = user.validate(None).unwrap();
        assert_eq!((v.level, v.limit), (Level::Ssr, Some(Limit::NoOrgSignet)));
        assert_eq!(Signet::parse(user.as_bytes()).unwrap(), user);
        assert_eq!(Signet::parse_any(user.armor().as_bytes()).unwrap(), user);
        assert_eq!(
            Signet::from_base64_line(&user.to_base64_line()).unwrap(),
            user
        );

        // Rotation: the new SSR carries field 4 signed by the old key.
        let new_key = PrivateKey::generate(KeyKind::User, &mut rng);
        let ssr2 = Signet::create_ssr(&new_key, Some(&user_key)).unwrap();
        let user2 =
            Signet::sign_ssr(&ssr2, org_key.signing_key(), &org, "a@example.org", &[]).unwrap();
        let v = user2.validate(Some(&org)).unwrap();
        assert_eq!((v.level, v.custody), (Level::Id, Custody::Unchecked));
        user2.verify_custody(user.signing_key()).unwrap();
        assert_eq!(
            user2.verify_custody(user2.signing_key()),
            Err(Error::SignatureInvalid {
                object: "user signet",
                field: 4
            })
        );
    }

    #[test]
    fn only_pok_or_permitted_sok_may_sign_ssrs() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let org_key = PrivateKey::generate(KeyKind::Org, &mut rng);
        let signer_sok = ed25519_dalek::SigningKey::generate(&mut rng);
        let msg_sok = ed25519_dalek::SigningKey::generate(&mut rng);
        let soks = [
            Sok {
                permissions: permission::SIGNETS | permission::TLS,
                key: signer_sok.verifying_key(),
            },
            Sok {
                permissions: permission::MESSAGES,
                key: msg_sok.verifying_key(),
            },
        ];
        let org = Signet::create_org(&org_key, "example.org", &soks, &[]).unwrap();
        assert_eq!(ids(&org), [1, 2, 2, 3, 4, 253, 254, 255]);
        assert_eq!(org.soks(), soks);
        assert_eq!(Signet::parse(org.as_bytes()).unwrap(), org);
        let ssr = Signet::create_ssr(&PrivateKey::generate(KeyKind::User, &mut rng), None).unwrap();
        let user = Signet::sign_ssr(&ssr, &signer_sok, &org, "b@example.org", &[]).unwrap();
        assert_eq!(user.validate(Some(&org)).unwrap().level, Level::Id);
        assert_eq!(
            Signet::sign_ssr(&ssr, &msg_sok, &org, "b@example.org", &[]),
            Err(Error::NotPermitted {
                object: "user signet",
                permission: "sign signets"
            })
        );
        assert!(matches!(
            Signet::sign_ssr(&user, &signer_sok, &org, "b@example.org", &[]),
            Err(Error::WrongKind { .. })
        ));
    }
}
