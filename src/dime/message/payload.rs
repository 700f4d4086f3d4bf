//! The standard chunk payload: author signature, length, flags, pad byte, data, padding
//! (DIME.md §7.5).

use ed25519_dalek::{Signer, SigningKey};

use super::chunk::{ChunkType, SIG_LEN};
use super::error::OpenError;

/// Signature (64) + u24 length + flags + pad byte.
pub(crate) const PREFIX_LEN: usize = SIG_LEN + 5;
/// Flag bit 7: the data continues in the next chunk of the same type (DIME.md §7.5).
pub(crate) const FLAG_CONTINUED: u8 = 0x80;

/// Padding length for `d` data bytes and random byte `r`, by the "primary algorithm" of
/// DIME.md §7.5: at least 256 bytes in total, then 1..256 more in 16-byte steps.
pub(crate) fn pad_len(d: usize, r: u8) -> usize {
    let s = d + PREFIX_LEN;
    let r = usize::from(r);
    if s < 256 {
        (256 - s) + 16 * (r % (s / 16 + 1))
    } else {
        16 - (s % 16) + 16 * (r % 16)
    }
}

/// Plaintext size of a standard payload carrying `d` bytes with random byte `r`.
#[cfg(test)]
pub(crate) fn plain_len(d: usize, r: u8) -> usize {
    d + PREFIX_LEN + pad_len(d, r)
}

/// Writes the signed plaintext for `data` with `pad` padding bytes into `out` (which must be
/// empty). `pad` is [`pad_len`] for the spec's random padding, or that minimum plus a multiple of
/// 16 when padding to an exact size: both decoders accept any length whose low 8 bits are the pad
/// byte (ours in [`decode`]; libdime's `dmsg_chunk_data_get` compares truncated values and checks
/// the first `pad mod 256` bytes), and every pad byte is written equal to it.
pub(crate) fn encode_into(
    out: &mut Vec<u8>,
    data: &[u8],
    flags: u8,
    pad: usize,
    author: &SigningKey,
) {
    out.reserve(PREFIX_LEN + data.len() + pad);
    out.extend_from_slice(&[0u8; SIG_LEN]);
    let d = u32::try_from(data.len()).unwrap_or(u32::MAX).to_be_bytes();
    out.extend_from_slice(&d[1..]);
    out.push(flags);
    // The pad byte is the padding length truncated to 8 bits (256 becomes 0).
    let b = (pad & 0xff) as u8;
    out.push(b);
    out.extend_from_slice(data);
    out.resize(out.len() + pad, b);
    let sig = author.sign(&out[SIG_LEN..]);
    out[..SIG_LEN].copy_from_slice(&sig.to_bytes());
}

/// A decrypted standard payload.
#[derive(Debug)]
pub(crate) struct Decoded<'a> {
    pub(crate) flags: u8,
    pub(crate) data: &'a [u8],
}

/// Checks the layout of a decrypted payload. An impossible length means the key was wrong
/// ([`OpenError::KeyslotMismatch`]); wrong pad bytes mean a damaged tail.
pub(crate) fn decode(
    plain: &[u8],
    chunk: ChunkType,
    actor: super::Actor,
) -> Result<Decoded<'_>, OpenError> {
    if plain.len() < PREFIX_LEN {
        return Err(OpenError::KeyslotMismatch { chunk, actor });
    }
    let d = plain[SIG_LEN..SIG_LEN + 3]
        .iter()
        .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
    let flags = plain[SIG_LEN + 3];
    let b = plain[SIG_LEN + 4];
    let rest = &plain[PREFIX_LEN..];
    if d > rest.len() {
        return Err(OpenError::KeyslotMismatch { chunk, actor });
    }
    let (data, padding) = rest.split_at(d);
    // libdime compares the pad byte with the padding length truncated to 8 bits.
    if padding.is_empty() || (padding.len() & 0xff) as u8 != b || padding.iter().any(|x| *x != b) {
        return Err(OpenError::BadPadding { chunk });
    }
    let allowed = if chunk.repeatable() {
        FLAG_CONTINUED
    } else {
        0
    };
    if flags & !allowed != 0 {
        return Err(OpenError::UnsupportedFlags { chunk, flags });
    }
    Ok(Decoded { flags, data })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dime::message::Actor;

    #[test]
    fn padding_keeps_blocks_and_minimum() {
        for d in 0..600 {
            for r in [0u8, 1, 7, 15, 16, 200, 255] {
                let p = plain_len(d, r);
                assert_eq!(p % 16, 0, "d={d} r={r}");
                assert!(p >= 256, "d={d} r={r}");
                let pad = pad_len(d, r);
                assert!((1..=256).contains(&pad), "d={d} r={r} pad={pad}");
            }
        }
    }

    #[test]
    fn encode_decode_round_trip_and_signature() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        for (data, r) in [(&b""[..], 0u8), (b"hello", 9), (&[0xAAu8; 187][..], 255)] {
            let mut out = Vec::new();
            encode_into(&mut out, data, 0, pad_len(data.len(), r), &key);
            let dec = decode(&out, ChunkType::Common, Actor::Recipient).unwrap();
            assert_eq!(dec.data, data);
            let sig = ed25519_dalek::Signature::from_bytes(out[..64].try_into().unwrap());
            key.verifying_key().verify_strict(&out[64..], &sig).unwrap();
        }
    }
}
