//! Opening a message as one actor: decrypt what its keyslots open, check every signature it can
//! see, and report each verdict.

use ed25519_dalek::{Signature, VerifyingKey};
use k256::{PublicKey, SecretKey};

use super::chunk::{self, ChunkType, PayloadKind, RawMessage, SIG_LEN};
use super::crypto::{derive_kek, open_keyslot};
use super::error::OpenError;
use super::payload::{self, FLAG_CONTINUED};
use super::seal::tree_data;
use super::{Actor, Party, TreeSignature, batch};

/// One chunk as the opening actor sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkReport {
    /// The chunk type.
    pub kind: ChunkType,
    /// Serialized length, keyslots included.
    pub size: usize,
    /// Flags of a standard payload (0 otherwise).
    pub flags: u8,
    /// The plaintext data (a standard chunk's data, a signature chunk's 64-byte signature, the
    /// ephemeral key), or `None` when the actor has no keyslot for this chunk.
    pub data: Option<Vec<u8>>,
}

/// The origin chunk's text (DIME.md §7.7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginEnvelope {
    /// Author mailbox.
    pub author: String,
    /// Author signet crypto fingerprint.
    pub author_fingerprint: String,
    /// Destination domain.
    pub destination: String,
    /// Destination signet crypto fingerprint.
    pub destination_fingerprint: String,
}

/// The destination chunk's text (DIME.md §7.7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationEnvelope {
    /// Recipient mailbox.
    pub recipient: String,
    /// Recipient signet crypto fingerprint.
    pub recipient_fingerprint: String,
    /// Origin domain.
    pub origin: String,
    /// Origin signet crypto fingerprint.
    pub origin_fingerprint: String,
}

/// The outcome of one signature check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The signature verifies (for the tree signature: in the spec's form).
    Valid,
    /// The tree signature verifies in libdime's form only (DIME.md §7.8).
    ValidLibdimeTree,
    /// The signature does not verify.
    Invalid,
    /// An origin signature chunk still holds the author's all-zero placeholder.
    Placeholder,
    /// The signer's signet was not supplied.
    SignetMissing {
        /// The fingerprint the message names for the signer (empty if it names none).
        fingerprint: String,
    },
    /// The format does not tell this actor who signed (the destination about the author).
    NotDisclosed,
    /// Not checked in this pass: the caller checked it before, on the same bytes
    /// ([`Scope::AuthorOnly`]).
    CheckedBefore,
}

/// Which signatures [`Decrypted::verify_scoped`] checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every signature the actor can see.
    All,
    /// All but the origin's (248, 249, 255), whose verdicts are [`Verdict::CheckedBefore`]: for
    /// a receiver that checked them as destination on the bytes it now opens as recipient, so
    /// that the same signatures are not verified twice.
    AuthorOnly,
}

/// One signature the actor can see, and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureCheck {
    /// The chunk whose signature this is.
    pub chunk: ChunkType,
    /// Who should have signed it.
    pub signer: Actor,
    /// The result.
    pub verdict: Verdict,
}

/// Everything an actor learns from a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Who opened it.
    pub actor: Actor,
    /// Every chunk in message order.
    pub chunks: Vec<ChunkReport>,
    /// The origin chunk, when the actor can read it.
    pub origin_envelope: Option<OriginEnvelope>,
    /// The destination chunk, when the actor can read it.
    pub destination_envelope: Option<DestinationEnvelope>,
    /// Every signature check, in chunk order.
    pub signatures: Vec<SignatureCheck>,
    /// Which tree-signature form verified, if the actor can see it and it verified.
    pub tree_signature: Option<TreeSignature>,
}

impl Report {
    /// `Ok` when every check the actor can make passed; otherwise the first failure in chunk
    /// order. Zero placeholders in 248/249/255 are accepted only for author and origin, for whom a
    /// message the origin has not signed yet is normal.
    pub fn check(&self) -> Result<(), OpenError> {
        for c in &self.signatures {
            match &c.verdict {
                Verdict::Valid
                | Verdict::ValidLibdimeTree
                | Verdict::NotDisclosed
                | Verdict::CheckedBefore => {}
                Verdict::Invalid => return Err(OpenError::SignatureInvalid { chunk: c.chunk }),
                Verdict::Placeholder => {
                    if matches!(self.actor, Actor::Destination | Actor::Recipient) {
                        return Err(OpenError::SignatureMissing { chunk: c.chunk });
                    }
                }
                Verdict::SignetMissing { fingerprint } => {
                    return Err(OpenError::SignetMissing {
                        role: c.signer,
                        fingerprint: fingerprint.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    fn data_of(&self, kind: ChunkType) -> impl Iterator<Item = &[u8]> {
        self.chunks
            .iter()
            .filter(move |c| c.kind == kind)
            .filter_map(|c| c.data.as_deref())
    }

    /// The RFC 5322 message (common headers ‖ other headers ‖ CRLF ‖ display ‖ attachments), for
    /// an actor that can read the common headers (author, recipient).
    pub fn rfc5322(&self) -> Option<Vec<u8>> {
        let common = self.data_of(ChunkType::Common).next()?;
        let mut out = common.to_vec();
        for other in self.data_of(ChunkType::Other) {
            out.extend_from_slice(other);
        }
        let mut content = self
            .data_of(ChunkType::Display)
            .chain(self.data_of(ChunkType::Attachment))
            .peekable();
        if content.peek().is_some() {
            out.extend_from_slice(b"\r\n");
            for part in content {
                out.extend_from_slice(part);
            }
        }
        Some(out)
    }
}

/// Opens `message` as `actor` and fails on the first check that does not pass
/// ([`Report::check`]). `signets` must hold the signers' public halves; they are found by the
/// crypto fingerprints in the envelope chunks, the origin's own by its encryption key.
pub fn open(
    message: &[u8],
    actor: Actor,
    key: &SecretKey,
    signets: &[Party],
) -> Result<Report, OpenError> {
    let report = inspect(message, actor, key, signets)?;
    report.check()?;
    Ok(report)
}

fn parse_envelope<const N: usize>(text: &[u8], keys: [(&str, u8, u8); N]) -> Option<[String; N]> {
    let text = std::str::from_utf8(text).ok()?;
    let mut lines = text.split_terminator("\r\n");
    let mut out: [String; N] = std::array::from_fn(|_| String::new());
    for (slot, (key, open, close)) in out.iter_mut().zip(keys) {
        let value = lines.next()?.strip_prefix(key)?.strip_prefix(": ")?;
        let value = value
            .strip_prefix(open as char)?
            .strip_suffix(close as char)?;
        *slot = value.to_owned();
    }
    if lines.next().is_some() || !text.ends_with("\r\n") {
        return None;
    }
    Some(out)
}

fn verify(keys: &[VerifyingKey], data: &[u8], sig: &[u8; SIG_LEN]) -> bool {
    let sig = Signature::from_bytes(sig);
    keys.iter().any(|k| k.verify_strict(data, &sig).is_ok())
}

enum Signer<'a> {
    Known(&'a Party),
    Missing(String),
    NotDisclosed,
}

impl Signer<'_> {
    fn verdict(&self, data: &[u8], sig: &[u8; SIG_LEN]) -> Verdict {
        match self {
            Signer::Known(p) => {
                if verify(&p.signing_keys, data, sig) {
                    Verdict::Valid
                } else {
                    Verdict::Invalid
                }
            }
            Signer::Missing(fp) => Verdict::SignetMissing {
                fingerprint: fp.clone(),
            },
            Signer::NotDisclosed => Verdict::NotDisclosed,
        }
    }
}

fn by_fingerprint<'a>(signets: &'a [Party], fp: &str) -> Signer<'a> {
    signets
        .iter()
        .find(|p| p.fingerprint == fp)
        .map_or_else(|| Signer::Missing(fp.to_owned()), Signer::Known)
}

/// Opens `message` as `actor` and reports every chunk and every signature verdict. Framing,
/// keyslot and padding failures are errors; signature failures are verdicts in the report.
pub fn inspect(
    message: &[u8],
    actor: Actor,
    key: &SecretKey,
    signets: &[Party],
) -> Result<Report, OpenError> {
    Ok(decrypt(message, actor, key)?.verify(signets))
}

/// A message decrypted as one actor, its signatures not checked yet: the first half of
/// [`inspect`], for a caller that learns from the envelopes which signets it needs
/// ([`Decrypted::origin_envelope`]) and then checks them with [`Decrypted::verify`], without
/// decrypting twice.
#[derive(Debug)]
pub struct Decrypted<'a> {
    actor: Actor,
    raw: RawMessage<'a>,
    chunks: Vec<ChunkReport>,
    /// (chunk index, plaintext) of every chunk the actor's keyslots open.
    plains: Vec<(usize, Vec<u8>)>,
    origin_envelope: Option<OriginEnvelope>,
    destination_envelope: Option<DestinationEnvelope>,
    /// The actor's own public key, where nothing else names the actor as origin: only the
    /// origin opens a message without a destination envelope, and the derivation is a scalar
    /// multiplication nobody else needs to pay for.
    own_key: Option<PublicKey>,
}

/// Decrypts `message` as `actor` and reads its envelopes. Framing, keyslot and padding failures
/// are errors.
pub fn decrypt<'a>(
    message: &'a [u8],
    actor: Actor,
    key: &SecretKey,
) -> Result<Decrypted<'a>, OpenError> {
    let raw = chunk::parse(message)?;
    let eph = raw
        .find(ChunkType::Ephemeral)
        .and_then(|c| PublicKey::from_sec1_bytes(c.payload).ok())
        .ok_or(OpenError::BadEphemeralKey)?;
    let kek = derive_kek(key, &eph);

    // Decrypt what this actor's keyslots open.
    let mut chunks = Vec::with_capacity(raw.chunks.len());
    let mut plains: Vec<(usize, Vec<u8>)> = Vec::new();
    for (i, c) in raw.chunks.iter().enumerate() {
        let mut report = ChunkReport {
            kind: c.kind,
            size: c.bytes.len(),
            flags: 0,
            data: None,
        };
        match (c.kind.kind(), c.slot(actor)) {
            (PayloadKind::Ephemeral, _) => report.data = Some(c.payload.to_vec()),
            (_, None) => {}
            (kind, Some(slot)) => {
                let chunk_key = open_keyslot(&kek, slot);
                let mut plain = c.payload.to_vec();
                chunk_key.decrypt(&mut plain);
                if kind == PayloadKind::Standard {
                    let dec = payload::decode(&plain, c.kind, actor)?;
                    report.flags = dec.flags;
                    report.data = Some(dec.data.to_vec());
                } else {
                    report.data = Some(plain.clone());
                }
                plains.push((i, plain));
            }
        }
        chunks.push(report);
    }
    check_spanning(&chunks)?;
    let text = |kind| {
        chunks
            .iter()
            .find(|c: &&ChunkReport| c.kind == kind)
            .and_then(|c| c.data.as_deref())
    };
    let origin_envelope = match text(ChunkType::Origin) {
        None => None,
        Some(t) => {
            let [
                author,
                author_fingerprint,
                destination,
                destination_fingerprint,
            ] = parse_envelope(
                t,
                [
                    ("Author", b'<', b'>'),
                    ("Author-Signet", b'[', b']'),
                    ("Destination", b'<', b'>'),
                    ("Destination-Signet", b'[', b']'),
                ],
            )
            .ok_or(OpenError::MalformedEnvelope {
                chunk: ChunkType::Origin,
            })?;
            Some(OriginEnvelope {
                author,
                author_fingerprint,
                destination,
                destination_fingerprint,
            })
        }
    };
    let destination_envelope = match text(ChunkType::Destination) {
        None => None,
        Some(t) => {
            let [recipient, recipient_fingerprint, origin, origin_fingerprint] = parse_envelope(
                t,
                [
                    ("Recipient", b'<', b'>'),
                    ("Recipient-Signet", b'[', b']'),
                    ("Origin", b'<', b'>'),
                    ("Origin-Signet", b'[', b']'),
                ],
            )
            .ok_or(OpenError::MalformedEnvelope {
                chunk: ChunkType::Destination,
            })?;
            Some(DestinationEnvelope {
                recipient,
                recipient_fingerprint,
                origin,
                origin_fingerprint,
            })
        }
    };

    let own_key = destination_envelope
        .is_none()
        .then(|| super::crypto::public_of(key));
    Ok(Decrypted {
        actor,
        raw,
        chunks,
        plains,
        origin_envelope,
        destination_envelope,
        own_key,
    })
}

impl Decrypted<'_> {
    /// The origin chunk, when the actor can read it.
    pub fn origin_envelope(&self) -> Option<&OriginEnvelope> {
        self.origin_envelope.as_ref()
    }

    /// The destination chunk, when the actor can read it.
    pub fn destination_envelope(&self) -> Option<&DestinationEnvelope> {
        self.destination_envelope.as_ref()
    }

    /// Checks every signature the actor can see under `signets` (found by the crypto
    /// fingerprints in the envelope chunks, the origin's own by its encryption key) and reports.
    pub fn verify(self, signets: &[Party]) -> Report {
        self.verify_scoped(signets, Scope::All)
    }

    /// [`Decrypted::verify`], checking only the signatures `scope` names.
    pub fn verify_scoped(self, signets: &[Party], scope: Scope) -> Report {
        let Decrypted {
            actor,
            raw,
            chunks,
            plains,
            origin_envelope,
            destination_envelope,
            own_key,
        } = self;
        let author = match &origin_envelope {
            Some(env) => by_fingerprint(signets, &env.author_fingerprint),
            None => Signer::NotDisclosed,
        };
        let origin = match (&destination_envelope, actor) {
            (Some(env), _) => by_fingerprint(signets, &env.origin_fingerprint),
            // The origin chunk does not name the origin; the origin knows itself by its key.
            (None, _) => signets
                .iter()
                .find(|p| Some(p.encryption_key) == own_key)
                .map_or(Signer::Missing(String::new()), Signer::Known),
        };

        // First what each signature signs; then each signer's signatures in one batch, and
        // one by one only where the batch did not pass (batch.rs), so a verdict is always the
        // single signature's own.
        let mut signatures = Vec::new();
        let mut pending: Vec<Pending<'_>> = Vec::new();
        for (i, plain) in &plains {
            let c = &raw.chunks[*i];
            let mut sig = [0u8; SIG_LEN];
            sig.copy_from_slice(&plain[..SIG_LEN]);
            let (signer, check) = match c.kind {
                ChunkType::AuthorTree => (
                    Actor::Author,
                    Check::Tree(tree_data(
                        raw.chunks.iter().map(|c| (c.kind, c.bytes)),
                        TreeSignature::Spec,
                    )),
                ),
                ChunkType::AuthorFull => (Actor::Author, Check::Data(raw.prefix_below(226))),
                ChunkType::OriginMetaBounce
                | ChunkType::OriginDisplayBounce
                | ChunkType::OriginFull => {
                    let limit = match c.kind {
                        ChunkType::OriginMetaBounce => 64,
                        ChunkType::OriginDisplayBounce => 128,
                        _ => 255,
                    };
                    let check = if sig == [0u8; SIG_LEN] {
                        Check::Done(Verdict::Placeholder)
                    } else if scope == Scope::AuthorOnly {
                        Check::Done(Verdict::CheckedBefore)
                    } else {
                        Check::Data(raw.prefix_below(limit))
                    };
                    (Actor::Origin, check)
                }
                _ => (Actor::Author, Check::Data(&plain[SIG_LEN..])),
            };
            pending.push(Pending {
                chunk: c.kind,
                signer,
                sig,
                check,
            });
        }
        let mut tree_signature = None;
        for (actor, party) in [(Actor::Author, &author), (Actor::Origin, &origin)] {
            let Signer::Known(p) = party else { continue };
            let Some(key) = p.signing_keys.first() else {
                continue;
            };
            let items: Vec<(&[u8], &[u8; SIG_LEN])> = pending
                .iter()
                .filter(|x| x.signer == actor)
                .filter_map(|x| x.signed().map(|data| (data, &x.sig)))
                .collect();
            if items.len() > 1 && batch::verify(key, &items) {
                for x in pending.iter_mut().filter(|x| x.signer == actor) {
                    if x.signed().is_some() {
                        if matches!(x.check, Check::Tree(_)) {
                            tree_signature = Some(TreeSignature::Spec);
                        }
                        x.check = Check::Done(Verdict::Valid);
                    }
                }
            }
        }
        for x in pending {
            let signer = if x.signer == Actor::Origin {
                &origin
            } else {
                &author
            };
            let verdict = match x.check {
                Check::Done(v) => v,
                Check::Data(data) => signer.verdict(data, &x.sig),
                Check::Tree(_) => {
                    let v = tree_verdict(&raw, signer, &x.sig);
                    tree_signature = match v {
                        Verdict::Valid => Some(TreeSignature::Spec),
                        Verdict::ValidLibdimeTree => Some(TreeSignature::LibdimeCompat),
                        _ => None,
                    };
                    v
                }
            };
            signatures.push(SignatureCheck {
                chunk: x.chunk,
                signer: x.signer,
                verdict,
            });
        }

        Report {
            actor,
            chunks,
            origin_envelope,
            destination_envelope,
            signatures,
            tree_signature,
        }
    }
}

/// One signature seen by the opening actor, before or after its check.
struct Pending<'a> {
    chunk: ChunkType,
    signer: Actor,
    sig: [u8; SIG_LEN],
    check: Check<'a>,
}

enum Check<'a> {
    /// Decided without checking the signature (placeholder, checked before), or checked.
    Done(Verdict),
    /// A signature over these bytes.
    Data(&'a [u8]),
    /// The tree signature, with its data in the spec's form (the libdime form is tried only
    /// when this fails).
    Tree(Vec<u8>),
}

impl Pending<'_> {
    /// What the signature signs, while it is still to be checked.
    fn signed(&self) -> Option<&[u8]> {
        match &self.check {
            Check::Done(_) => None,
            Check::Data(data) => Some(data),
            Check::Tree(data) => Some(data),
        }
    }
}

fn tree_verdict(raw: &RawMessage<'_>, author: &Signer<'_>, sig: &[u8; SIG_LEN]) -> Verdict {
    let chunks = || raw.chunks.iter().map(|c| (c.kind, c.bytes));
    match author.verdict(&tree_data(chunks(), TreeSignature::Spec), sig) {
        Verdict::Invalid => {
            match author.verdict(&tree_data(chunks(), TreeSignature::LibdimeCompat), sig) {
                Verdict::Valid => Verdict::ValidLibdimeTree,
                other => other,
            }
        }
        other => other,
    }
}

/// A "continues in the next chunk" flag must be followed by a chunk of the same type.
fn check_spanning(chunks: &[ChunkReport]) -> Result<(), OpenError> {
    for (i, c) in chunks.iter().enumerate() {
        if c.flags & FLAG_CONTINUED != 0 && chunks.get(i + 1).is_none_or(|n| n.kind != c.kind) {
            return Err(OpenError::UnsupportedFlags {
                chunk: c.kind,
                flags: c.flags,
            });
        }
    }
    Ok(())
}
