//! Signet fingerprints (DIME.md §5.5): SHA-512 over a signet's field bytes up to a cut-off, written as
//! 86 characters of unpadded standard base64.

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use sha2::{Digest, Sha512};

use super::Error;

/// A SHA-512 signet fingerprint. `Display` and `FromStr` use the spec's unpadded base64.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 64]);

impl Fingerprint {
    /// SHA-512 of `bytes`.
    pub fn of(bytes: &[u8]) -> Fingerprint {
        Fingerprint(Sha512::digest(bytes).into())
    }

    /// The raw 64 bytes (PRIME uses these directly, DIME.md §5.5).
    pub fn as_bytes(&self) -> &[u8; 64] {
        &self.0
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&STANDARD_NO_PAD.encode(self.0))
    }
}

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl std::str::FromStr for Fingerprint {
    type Err = Error;

    /// Accepts the 86-character form, with or without `==` padding.
    fn from_str(s: &str) -> Result<Fingerprint, Error> {
        let s = s.trim().trim_end_matches('=');
        let raw = STANDARD_NO_PAD
            .decode(s.as_bytes())
            .map_err(|_| Error::Base64 {
                object: "fingerprint",
            })?;
        let got = raw.len();
        raw.try_into()
            .map(Fingerprint)
            .map_err(|_| Error::FieldLength {
                object: "fingerprint",
                field: 0,
                expected: "64",
                got,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_parse_round_trip() {
        let fp = Fingerprint::of(b"abc");
        let s = fp.to_string();
        assert_eq!(s.len(), 86);
        assert_eq!(s.parse::<Fingerprint>().unwrap(), fp);
        assert_eq!(format!("{s}==").parse::<Fingerprint>().unwrap(), fp);
        assert!("AAAA".parse::<Fingerprint>().is_err());
        assert!("!".parse::<Fingerprint>().is_err());
    }
}
