//! Text forms of binary objects (DIME.md §5.6): armor with an OpenPGP CRC-24 line, and the single
//! line of padded base64 that carries a signet over DMTP.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::Error;
use super::object::{Magic, peek_magic};

/// OpenPGP CRC-24 (RFC 4880 §6.1): init 0xB704CE, polynomial 0x1864CFB.
pub fn crc24(data: &[u8]) -> u32 {
    let mut crc: u32 = 0x00B7_04CE;
    for &b in data {
        crc ^= u32::from(b) << 16;
        for _ in 0..8 {
            crc <<= 1;
            if crc & 0x0100_0000 != 0 {
                crc ^= 0x0186_4CFB;
            }
        }
    }
    crc & 0x00FF_FFFF
}

/// Armor a binary object under its magic's label: 64-character base64 lines and a CRC-24 line.
pub fn armor(object: &[u8]) -> Result<String, Error> {
    let label = peek_magic(object)
        .and_then(Magic::from_number)
        .and_then(Magic::armor_label)
        .ok_or(Error::Armor {
            reason: "object has no armor label",
        })?;
    Ok(armor_with_label(label, object))
}

/// Armor `data` under an explicit label.
pub fn armor_with_label(label: &str, data: &[u8]) -> String {
    let b64 = STANDARD.encode(data);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    let crc = crc24(data).to_be_bytes();
    out.push('=');
    out.push_str(&STANDARD.encode(&crc[1..]));
    out.push('\n');
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Decode armor: returns the label and the bytes. The CRC-24 line is optional, but when present it
/// must match; the END label must equal the BEGIN label; text outside the block is ignored.
pub fn dearmor(text: &str) -> Result<(String, Vec<u8>), Error> {
    let mut lines = text.lines().map(str::trim);
    let label = loop {
        let line = lines.next().ok_or(Error::Armor {
            reason: "no -----BEGIN line",
        })?;
        if let Some(rest) = line.strip_prefix("-----BEGIN ") {
            break rest.strip_suffix("-----").ok_or(Error::Armor {
                reason: "malformed BEGIN line",
            })?;
        }
    };
    let mut b64 = String::new();
    let mut crc_line = None;
    loop {
        let line = lines.next().ok_or(Error::Armor {
            reason: "no -----END line",
        })?;
        if let Some(rest) = line.strip_prefix("-----END ") {
            if rest.strip_suffix("-----") != Some(label) {
                return Err(Error::Armor {
                    reason: "END label differs from BEGIN label",
                });
            }
            break;
        }
        if line.is_empty() {
            continue;
        }
        if crc_line.is_some() {
            return Err(Error::Armor {
                reason: "text after the CRC-24 line",
            });
        }
        // base64 never starts a line with '=', so this is the checksum line.
        if let Some(crc) = line.strip_prefix('=') {
            crc_line = Some(crc);
        } else {
            b64.push_str(line);
        }
    }
    let data = STANDARD
        .decode(b64.as_bytes())
        .map_err(|_| Error::Base64 { object: "armor" })?;
    if let Some(crc) = crc_line {
        let raw = STANDARD.decode(crc.as_bytes()).map_err(|_| Error::Base64 {
            object: "armor CRC-24",
        })?;
        let [a, b, c] = raw[..] else {
            return Err(Error::Armor {
                reason: "CRC-24 line is not 3 bytes",
            });
        };
        let got = u32::from_be_bytes([0, a, b, c]);
        let expected = crc24(&data);
        if got != expected {
            return Err(Error::ArmorCrc { expected, got });
        }
    }
    if let Some(m) = peek_magic(&data).and_then(Magic::from_number)
        && let Some(expected) = m.armor_label()
        && expected != label
    {
        return Err(Error::ArmorLabel {
            expected,
            got: Error::clip(label),
        });
    }
    Ok((label.to_string(), data))
}

/// Binary object from a file's contents: armored text is decoded, anything else is returned as is.
pub fn decode_any(input: &[u8]) -> Result<Vec<u8>, Error> {
    let trimmed = input.trim_ascii_start();
    if trimmed.starts_with(b"-----BEGIN ") {
        let text = std::str::from_utf8(trimmed).map_err(|_| Error::Armor {
            reason: "armor is not UTF-8",
        })?;
        Ok(dearmor(text)?.1)
    } else {
        Ok(input.to_vec())
    }
}

/// The one-line padded base64 form used on DMTP (DIME.md §5.6).
pub fn to_base64_line(object: &[u8]) -> String {
    STANDARD.encode(object)
}

/// Decode the one-line DMTP form (surrounding whitespace is ignored).
pub fn from_base64_line(line: &str) -> Result<Vec<u8>, Error> {
    STANDARD
        .decode(line.trim().as_bytes())
        .map_err(|_| Error::Base64 {
            object: "signet line",
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc24_matches_openpgp_check_value() {
        // CRC-24/OPENPGP check value for "123456789".
        assert_eq!(crc24(b"123456789"), 0x21CF02);
        assert_eq!(crc24(b""), 0xB704CE);
    }

    #[test]
    fn vector_armor_decodes_and_reencodes_identically() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/dime-vectors/");
        for f in [
            "d1-libdime/auth.signet",
            "d1-libdime/dest.keys",
            "d3-prime/prime.user.signet.pem",
        ] {
            let text = std::fs::read_to_string(format!("{dir}{f}")).unwrap();
            let (label, data) = dearmor(&text).unwrap();
            assert_eq!(armor_with_label(&label, &data).trim(), text.trim(), "{f}");
        }
        let bin = std::fs::read(format!("{dir}d1-libdime/auth.signet.bin")).unwrap();
        let text = std::fs::read(format!("{dir}d1-libdime/auth.signet")).unwrap();
        assert_eq!(decode_any(&text).unwrap(), bin);
        assert_eq!(decode_any(&bin).unwrap(), bin);
    }

    #[test]
    fn bad_crc_and_label_are_refused() {
        let data = [0x06, 0xf0, 0, 0, 0];
        let good = armor(&data).unwrap();
        assert!(good.starts_with("-----BEGIN ORGANIZATIONAL SIGNET-----\n"));
        assert_eq!(dearmor(&good).unwrap().1, data);
        let bad_crc = good.replace(&good[good.find("\n=").unwrap() + 1..][..5], "=AAAA");
        assert!(matches!(dearmor(&bad_crc), Err(Error::ArmorCrc { .. })));
        let bad_label = good.replace("ORGANIZATIONAL SIGNET", "USER SIGNET");
        assert!(matches!(dearmor(&bad_label), Err(Error::ArmorLabel { .. })));
        let no_end = good.replace("-----END ORGANIZATIONAL SIGNET-----", "");
        assert!(matches!(dearmor(&no_end), Err(Error::Armor { .. })));
    }

    #[test]
    fn base64_line_round_trip() {
        let data = [0x06u8, 0xfd, 0, 0, 1, 9];
        let line = to_base64_line(&data);
        assert!(!line.contains('\n'));
        assert_eq!(from_base64_line(&format!(" {line}\r\n")).unwrap(), data);
        assert!(from_base64_line("!!").is_err());
    }
}
