//! Sealing as author (and, when the caller holds the origin's key, signing as origin in the same
//! pass), and signing an author-sealed message as origin afterwards.

use ed25519_dalek::{Signer, SigningKey};
use k256::SecretKey;
use k256::elliptic_curve::sec1::ToEncodedPoint;
use rand::{CryptoRng, RngCore};
use sha2::{Digest, Sha512};

use super::chunk::{self, ChunkType, SIG_LEN};
use super::crypto::{AesKeyIv, derive_kek, open_keyslot, seal_keyslot};
use super::error::{OpenError, SealError};
use super::payload::{self, FLAG_CONTINUED};
use super::rfc5322;
use super::{Actor, Parties, TreeSignature};

/// Largest data a standard chunk carries here: the u24 payload length minus the 69-byte prefix
/// and the most padding the algorithm can add, rounded down to whole KiB.
pub(crate) const MAX_CHUNK_DATA: usize = 16 * 1024 * 1024 - 1024;

/// Options for [`seal`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SealOptions<'a> {
    /// Which tree-signature form to write (DIME.md §7.8).
    pub tree_signature: TreeSignature,
    /// The origin's message-signing key (POK or an SOK with the message permission). When set,
    /// chunks 248/249/255 get the origin's signatures directly instead of zero placeholders.
    pub origin_signing_key: Option<&'a SigningKey>,
}

/// Largest standard payload a chunk's u24 length can carry, kept block-aligned.
const MAX_PAYLOAD: usize = 0xFF_FFF0;
/// A tracing block's header: magic and u16 length (DIME.md §7.1).
const TRACING_HEADER: usize = 4;

/// Chunk area bounds of the chunks written so far, for the hashes and signature prefixes.
struct Writer<'r, R> {
    out: Vec<u8>,
    /// Offset of the message header in `out` (after the tracing block, if any).
    base: usize,
    /// (type, start, end) of each chunk, offsets in `out`.
    spans: Vec<(ChunkType, usize, usize)>,
    keks: [AesKeyIv; 4],
    rng: &'r mut R,
}

impl<R: CryptoRng + RngCore> Writer<'_, R> {
    /// Appends an encrypted chunk whose plaintext payload is `plain` (block-aligned).
    fn encrypted(&mut self, kind: ChunkType, mut plain: Vec<u8>) {
        let key = AesKeyIv::random(self.rng);
        key.encrypt(&mut plain);
        let start = self.out.len();
        chunk::put_header(&mut self.out, kind, plain.len());
        self.out.extend_from_slice(&plain);
        for actor in kind.actors() {
            let slot = seal_keyslot(&self.keks[*actor as usize], &key, self.rng);
            self.out.extend_from_slice(&slot);
        }
        self.spans.push((kind, start, self.out.len()));
    }

    /// A standard chunk; `pad` is the padding length, or `None` for the spec's random padding.
    fn standard(&mut self, c: &Planned<'_>, pad: Option<usize>, author: &SigningKey) {
        let pad = pad.unwrap_or_else(|| {
            let r = (self.rng.next_u32() & 0xff) as u8;
            payload::pad_len(c.data.len(), r)
        });
        let mut plain = Vec::new();
        payload::encode_into(&mut plain, c.data, c.flags, pad, author);
        self.encrypted(c.kind, plain);
    }

    /// The message bytes from the first chunk to the end of the last chunk below `limit`.
    fn prefix_below(&self, limit: u8) -> &[u8] {
        let area = self.base + 6;
        let end = self
            .spans
            .iter()
            .filter(|(k, _, _)| (*k as u8) < limit)
            .map(|(_, _, e)| *e)
            .max()
            .unwrap_or(area);
        &self.out[area..end]
    }
}

/// One standard chunk to be written: its type, data and flags.
struct Planned<'d> {
    kind: ChunkType,
    data: &'d [u8],
    flags: u8,
}

impl Planned<'_> {
    /// Serialized size with the least padding the spec allows.
    fn min_len(&self) -> usize {
        4 + self.min_payload() + chunk::SLOT_LEN * self.kind.actors().len()
    }

    fn min_payload(&self) -> usize {
        payload::PREFIX_LEN + self.data.len() + payload::pad_len(self.data.len(), 0)
    }
}

/// Pieces of a repeatable type carrying `data`, cut into chunk-sized pieces, each but the last
/// flagged as continuing.
fn spanning<'d>(plan: &mut Vec<Planned<'d>>, kind: ChunkType, data: &'d [u8]) {
    let mut pieces = data.chunks(MAX_CHUNK_DATA).peekable();
    if pieces.peek().is_none() {
        plan.push(Planned {
            kind,
            data: &[],
            flags: 0,
        });
    }
    while let Some(piece) = pieces.next() {
        let flags = if pieces.peek().is_some() {
            FLAG_CONTINUED
        } else {
            0
        };
        plan.push(Planned {
            kind,
            data: piece,
            flags,
        });
    }
}

/// The signature chunks every sealed message ends with.
const SIGNATURE_CHUNKS: [ChunkType; 5] = [
    ChunkType::AuthorTree,
    ChunkType::AuthorFull,
    ChunkType::OriginMetaBounce,
    ChunkType::OriginDisplayBounce,
    ChunkType::OriginFull,
];

/// Chooses the exact length of a sealed message, for size privacy: given the least length the
/// message can have, the length to seal it to, or `None` to refuse (see [`seal_sized`]).
pub trait SizePolicy: std::fmt::Debug {
    /// The target length; it must satisfy [`padding_reaches`]`(minimum, target)`.
    fn sealed_len(&self, minimum: usize) -> Option<usize>;
}

/// Whether [`seal_sized`] can take a message whose least sealed length is `minimum` to exactly
/// `target` bytes: equal, a multiple of 16 more (padding only), or at least 5 more (padding and a
/// tracing block of 5 to 20 bytes).
pub fn padding_reaches(minimum: usize, target: usize) -> bool {
    target >= minimum
        && ((target - minimum).is_multiple_of(16) || target - minimum > TRACING_HEADER)
}

/// How the bytes between the least and the target length are spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SizePlan {
    /// Length of the tracing block's data (0: no block).
    tracing: usize,
    /// Extra padding, a multiple of 16, over the least padding of every chunk.
    extra: usize,
}

fn size_plan(minimum: usize, target: usize) -> Option<SizePlan> {
    if !padding_reaches(minimum, target) {
        return None;
    }
    let delta = target - minimum;
    if delta.is_multiple_of(16) {
        return Some(SizePlan {
            tracing: 0,
            extra: delta,
        });
    }
    // Chunk sizes move in steps of 16 and every D/MIME message has an odd length (DIME.md §7.2:
    // 4-byte chunk headers, 64-byte slots, block-aligned payloads, a 33-byte key), so only the
    // unsigned tracing block in front (DIME.md §7.1) can take up the rest. libdime refuses an
    // empty one (`dmsg_tracing_load`), hence 1..=16 data bytes.
    let tracing = (delta - TRACING_HEADER - 1) % 16 + 1;
    Some(SizePlan {
        tracing,
        extra: delta - TRACING_HEADER - tracing,
    })
}

/// The data the tree signature signs, computed over serialized chunks 2..131 (DIME.md §7.8).
pub(crate) fn tree_data<'a>(
    chunks: impl Iterator<Item = (ChunkType, &'a [u8])>,
    form: TreeSignature,
) -> Vec<u8> {
    let mut data = Vec::new();
    for (kind, bytes) in chunks.filter(|(k, _)| (*k as u8) < 192) {
        // libdime writes the destination hash and then overwrites it with the next one.
        if form == TreeSignature::LibdimeCompat && kind == ChunkType::Destination {
            continue;
        }
        data.extend_from_slice(&Sha512::digest(bytes));
    }
    if form == TreeSignature::LibdimeCompat {
        data.extend_from_slice(&[0u8; 64]);
    }
    data
}

fn envelope_line(out: &mut Vec<u8>, key: &str, open: char, value: &str, close: char) {
    out.extend_from_slice(format!("{key}: {open}{value}{close}\r\n").as_bytes());
}

/// Seals `message` (RFC 5322) from `parties.author`, signed with `author_key`.
///
/// Without `options.origin_signing_key` the origin chunks 248/249/255 are zero placeholders for
/// [`sign_as_origin`] to fill. Randomness (ephemeral key, chunk keys, IVs, keyslot salts, padding)
/// comes from `rng` only. Each chunk is padded as DIME.md §7.5's primary algorithm says, with a
/// random byte; [`seal_sized`] pads to an exact length instead.
pub fn seal(
    message: &[u8],
    parties: &Parties<'_>,
    author_key: &SigningKey,
    options: &SealOptions<'_>,
    rng: &mut (impl CryptoRng + RngCore),
) -> Result<Vec<u8>, SealError> {
    seal_inner(message, parties, author_key, options, None, rng)
}

/// [`seal`], padded so that the output is exactly `size.sealed_len(minimum)` bytes long, where
/// `minimum` is the least length the message can take.
///
/// Every chunk gets the least padding of DIME.md §7.5 (`r = 0`) and the extra padding goes into
/// the last content chunk (then the ones before it, when a chunk is full), still as §7.5 padding:
/// pad bytes equal to the pad byte, which is the padding length truncated to 8 bits. Chunk sizes
/// move in steps of 16 and a D/MIME message always has an odd length, so any remainder goes into a
/// zero-filled tracing block of 1..=16 bytes in front of the message (DIME.md §7.1): unsigned,
/// skipped by both our parser and libdime's, and absent when padding alone reaches the target.
pub fn seal_sized(
    message: &[u8],
    parties: &Parties<'_>,
    author_key: &SigningKey,
    options: &SealOptions<'_>,
    size: &dyn SizePolicy,
    rng: &mut (impl CryptoRng + RngCore),
) -> Result<Vec<u8>, SealError> {
    seal_inner(message, parties, author_key, options, Some(size), rng)
}

fn seal_inner(
    message: &[u8],
    parties: &Parties<'_>,
    author_key: &SigningKey,
    options: &SealOptions<'_>,
    size: Option<&dyn SizePolicy>,
    rng: &mut (impl CryptoRng + RngCore),
) -> Result<Vec<u8>, SealError> {
    // Signet identifiers come from the network; one holding CRLF or a delimiter could forge
    // envelope lines.
    for actor in Actor::ALL {
        let p = parties.get(actor);
        let bad = |v: &str, delims: &[char]| {
            v.is_empty() || v.chars().any(|c| c.is_control() || delims.contains(&c))
        };
        if bad(&p.name, &['<', '>']) || bad(&p.fingerprint, &['[', ']']) {
            return Err(SealError::BadEnvelopeValue { actor });
        }
    }
    let split = rfc5322::split(message)?;
    for (what, len) in [
        ("common headers", split.common.len()),
        ("other headers", split.other.len()),
    ] {
        if len > MAX_CHUNK_DATA {
            return Err(SealError::TooLarge {
                what,
                len,
                max: MAX_CHUNK_DATA,
            });
        }
    }

    let mut origin_text = Vec::new();
    envelope_line(&mut origin_text, "Author", '<', &parties.author.name, '>');
    envelope_line(
        &mut origin_text,
        "Author-Signet",
        '[',
        &parties.author.fingerprint,
        ']',
    );
    envelope_line(
        &mut origin_text,
        "Destination",
        '<',
        &parties.destination.name,
        '>',
    );
    envelope_line(
        &mut origin_text,
        "Destination-Signet",
        '[',
        &parties.destination.fingerprint,
        ']',
    );
    let mut dest_text = Vec::new();
    envelope_line(
        &mut dest_text,
        "Recipient",
        '<',
        &parties.recipient.name,
        '>',
    );
    envelope_line(
        &mut dest_text,
        "Recipient-Signet",
        '[',
        &parties.recipient.fingerprint,
        ']',
    );
    envelope_line(&mut dest_text, "Origin", '<', &parties.origin.name, '>');
    envelope_line(
        &mut dest_text,
        "Origin-Signet",
        '[',
        &parties.origin.fingerprint,
        ']',
    );

    let mut plan = vec![
        Planned {
            kind: ChunkType::Origin,
            data: &origin_text,
            flags: 0,
        },
        Planned {
            kind: ChunkType::Destination,
            data: &dest_text,
            flags: 0,
        },
        Planned {
            kind: ChunkType::Common,
            data: &split.common,
            flags: 0,
        },
    ];
    if !split.other.is_empty() {
        plan.push(Planned {
            kind: ChunkType::Other,
            data: &split.other,
            flags: 0,
        });
    }
    if let Some(body) = split.body {
        let first = split
            .attachment_starts
            .first()
            .copied()
            .unwrap_or(body.len());
        spanning(&mut plan, ChunkType::Display, &body[..first]);
        let mut bounds = split.attachment_starts.clone();
        bounds.push(body.len());
        for pair in bounds.windows(2) {
            spanning(&mut plan, ChunkType::Attachment, &body[pair[0]..pair[1]]);
        }
    }

    // Exact padding: the least length, the target, and where the difference goes.
    let mut pads: Vec<Option<usize>> = vec![None; plan.len()];
    let mut tracing = 0;
    if let Some(policy) = size {
        let minimum = 6
            + 4
            + 33
            + plan.iter().map(Planned::min_len).sum::<usize>()
            + SIGNATURE_CHUNKS
                .iter()
                .map(|k| 4 + SIG_LEN + chunk::SLOT_LEN * k.actors().len())
                .sum::<usize>();
        let target = policy.sealed_len(minimum);
        let sp = target
            .and_then(|t| size_plan(minimum, t))
            .ok_or(SealError::SizeUnreachable { minimum, target })?;
        tracing = sp.tracing;
        let mut extra = sp.extra;
        for (c, pad) in plan.iter().zip(pads.iter_mut()).rev() {
            let more = extra.min(MAX_PAYLOAD - c.min_payload());
            extra -= more;
            *pad = Some(payload::pad_len(c.data.len(), 0) + more);
        }
        if extra > 0 {
            return Err(SealError::TooLarge {
                what: "padded message",
                len: target.unwrap_or(minimum),
                max: target.unwrap_or(minimum) - extra,
            });
        }
    }

    let ephemeral = SecretKey::random(rng);
    let keks = Actor::ALL.map(|a| derive_kek(&ephemeral, &parties.get(a).encryption_key));
    let body_len = split.body.map_or(0, <[u8]>::len);
    let base = if tracing > 0 {
        TRACING_HEADER + tracing
    } else {
        0
    };
    let mut w = Writer {
        out: Vec::with_capacity(base + 2048 + body_len + body_len / 8),
        base,
        spans: Vec::new(),
        keks,
        rng,
    };
    if tracing > 0 {
        w.out.extend_from_slice(&chunk::TRACING_MAGIC.to_be_bytes());
        w.out
            .extend_from_slice(&u16::try_from(tracing).unwrap_or(16).to_be_bytes());
        w.out.resize(base, 0);
    }
    w.out.extend_from_slice(&chunk::MESSAGE_MAGIC.to_be_bytes());
    w.out.extend_from_slice(&[0; 4]);

    let eph = super::crypto::public_of(&ephemeral).to_encoded_point(true);
    let eph_start = w.out.len();
    chunk::put_header(&mut w.out, ChunkType::Ephemeral, eph.len());
    w.out.extend_from_slice(eph.as_bytes());
    w.spans.push((ChunkType::Ephemeral, eph_start, w.out.len()));

    for (c, pad) in plan.iter().zip(&pads) {
        w.standard(c, *pad, author_key);
    }

    let tree = tree_data(
        w.spans.iter().map(|(k, s, e)| (*k, &w.out[*s..*e])),
        options.tree_signature,
    );
    let sig = author_key.sign(&tree).to_bytes();
    w.encrypted(ChunkType::AuthorTree, sig.to_vec());
    let sig = author_key.sign(w.prefix_below(226)).to_bytes();
    w.encrypted(ChunkType::AuthorFull, sig.to_vec());

    // Bounce signatures cover envelope + metadata (types below 64) and envelope + metadata +
    // display (below 128); the full one everything before 255 (DIME.md §7.8).
    for (kind, limit) in [
        (ChunkType::OriginMetaBounce, 64),
        (ChunkType::OriginDisplayBounce, 128),
        (ChunkType::OriginFull, 255),
    ] {
        let sig = match options.origin_signing_key {
            Some(k) => k.sign(w.prefix_below(limit)).to_bytes(),
            None => [0u8; SIG_LEN],
        };
        w.encrypted(kind, sig.to_vec());
    }

    let len = w.out.len() - base - 6;
    let len32 = u32::try_from(len).map_err(|_| SealError::TooLarge {
        what: "message",
        len,
        max: u32::MAX as usize,
    })?;
    w.out[base + 2..base + 6].copy_from_slice(&len32.to_be_bytes());
    Ok(w.out)
}

/// Fills the origin signatures 248, 249 and 255 of an author-sealed message, in place of whatever
/// they hold, re-encrypting each under the key and IV of the origin's keyslot (DIME.md §7.8).
///
/// This checks framing only; open the message as origin first to check the author's signatures.
pub fn sign_as_origin(
    message: &[u8],
    origin_encryption_key: &SecretKey,
    origin_signing_key: &SigningKey,
) -> Result<Vec<u8>, SealError> {
    let raw = chunk::parse(message)?;
    let eph = raw
        .find(ChunkType::Ephemeral)
        .and_then(|c| k256::PublicKey::from_sec1_bytes(c.payload).ok())
        .ok_or(OpenError::BadEphemeralKey)?;
    let kek = derive_kek(origin_encryption_key, &eph);
    let base = raw.area_offset;
    let mut jobs = Vec::new();
    for (kind, limit) in [
        (ChunkType::OriginMetaBounce, 64u8),
        (ChunkType::OriginDisplayBounce, 128),
        (ChunkType::OriginFull, 255),
    ] {
        if let Some(c) = raw.find(kind) {
            let slot = c.slot(Actor::Origin).ok_or(OpenError::KeyslotMismatch {
                chunk: kind,
                actor: Actor::Origin,
            })?;
            let end = raw.prefix_below(limit).len();
            jobs.push((open_keyslot(&kek, slot), base + c.start + 4, end));
        }
    }
    let mut out = message.to_vec();
    for (key, at, end) in jobs {
        let mut sig = origin_signing_key.sign(&out[base..base + end]).to_bytes();
        key.encrypt(&mut sig);
        out[at..at + SIG_LEN].copy_from_slice(&sig);
    }
    Ok(out)
}
