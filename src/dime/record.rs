//! The `_dx.<domain>` TXT management record (DIME.md §9): parse, format, and the `tls=` certificate
//! pins (an Ed25519 signature by a POK over SHA-512 of the DX certificate's DER).

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha512};

use super::Error;
use super::signet::{Signet, Validation};

/// The DNS name prefix (DIME.md §9.1: `_dx`, not `_dime`).
pub const DX_PREFIX: &str = "_dx";

/// Longest character-string in a TXT record.
const TXT_STRING_MAX: usize = 255;

/// `pol=`: the domain's message policy (DIME.md §9.1; semantics unsure there).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Policy {
    /// DIME optional (the default).
    #[default]
    Experimental,
    /// DIME and legacy both accepted.
    Mixed,
    /// DIME only.
    Strict,
}

/// `sub=`: whether subdomains have authority over their own records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Subdomain {
    /// The default.
    #[default]
    Strict,
    /// Subdomains may publish their own.
    Relaxed,
    /// Only explicitly listed subdomains.
    Explicit,
}

/// Result of checking a DX certificate against the record's `tls=` pins (DIME.md §9.4 step 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsPin {
    /// The record has no `tls=`: fall back to X.509 validation (and OCSP).
    NotPinned,
    /// A `tls=` signature verifies under this POK.
    Verified {
        /// The POK whose signature matched.
        pok: VerifyingKey,
    },
    /// The record has `tls=` values and none matches: reject the connection.
    Mismatch,
}

/// A parsed `_dx` record. Unknown keys are dropped on parse; absent optional keys stay `None` and
/// the accessors give the spec's defaults. `ver=` is checked (must be 1) and always written.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DxRecord {
    /// `pok=`: primary org keys (at least one; several during a key rotation).
    pub poks: Vec<VerifyingKey>,
    /// `tls=`: certificate pins.
    pub tls: Vec<Signature>,
    /// `pol=`.
    pub policy: Option<Policy>,
    /// `syn=`: alternative signet sources (parsed, unused).
    pub syndicates: Option<String>,
    /// `dx=`: delivery hosts, in order.
    pub dx: Vec<String>,
    /// `exp=`: cache lifetime in days.
    pub expiry_days: Option<u32>,
    /// `sub=`.
    pub subdomain: Option<Subdomain>,
}

#[derive(Clone, Copy)]
enum Key {
    Ver,
    Pok,
    Tls,
    Pol,
    Syn,
    Dx,
    Exp,
    Sub,
}

impl Key {
    fn lookup(k: &str) -> Option<Key> {
        let k = k.to_ascii_lowercase();
        Some(match k.as_str() {
            "ver" | "version" => Key::Ver,
            "pok" | "primary" => Key::Pok,
            "tls" => Key::Tls,
            "pol" | "policy" => Key::Pol,
            "syn" | "syndicates" => Key::Syn,
            "dx" | "deliver" => Key::Dx,
            "exp" | "expiry" => Key::Exp,
            "sub" | "subdomain" => Key::Sub,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Key::Ver => "ver",
            Key::Pok => "pok",
            Key::Tls => "tls",
            Key::Pol => "pol",
            Key::Syn => "syn",
            Key::Dx => "dx",
            Key::Exp => "exp",
            Key::Sub => "sub",
        }
    }
}

/// Split a token at the `=` that separates key and value: the first `=` that is followed by
/// something other than `=` (DIME.md §9.1), so base64 padding stays in the value.
fn split_token(token: &str) -> Option<(&str, &str)> {
    let b = token.as_bytes();
    (0..b.len())
        .find(|&i| b[i] == b'=' && i + 1 < b.len() && b[i + 1] != b'=')
        .map(|i| (&token[..i], &token[i + 1..]))
}

fn bad(key: Key, value: &str) -> Error {
    Error::DxValue {
        key: key.name(),
        value: Error::clip(value),
    }
}

fn decode_fixed<const N: usize>(key: Key, value: &str) -> Result<[u8; N], Error> {
    let raw = STANDARD_NO_PAD
        .decode(value.trim_end_matches('=').as_bytes())
        .map_err(|_| bad(key, value))?;
    raw.try_into().map_err(|_| bad(key, value))
}

/// Token separators (DIME.md §9.1: whitespace or `;`). Parse and format must agree on this set
/// exactly, or a parsed value may not format (the fuzzer found U+000B, which
/// `char::is_whitespace` counts and `is_ascii_whitespace` does not).
fn is_separator(c: char) -> bool {
    c.is_ascii_whitespace() || c == ';'
}

/// A free-text value must survive the record's tokenizer unchanged.
fn token_safe(v: &str) -> bool {
    !v.is_empty() && !v.contains(is_separator) && !v.starts_with('=')
}

fn hostname_ok(h: &str) -> bool {
    h.len() <= 253
        && !h.is_empty()
        && h.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_'))
}

impl DxRecord {
    /// Parse the character-strings of one TXT record (concatenated, DIME.md §9.1).
    pub fn parse(strings: &[&[u8]]) -> Result<DxRecord, Error> {
        let joined: Vec<u8> = strings.concat();
        Self::parse_str(&String::from_utf8_lossy(&joined))
    }

    /// Parse the record text.
    pub fn parse_str(text: &str) -> Result<DxRecord, Error> {
        let mut rec = DxRecord::default();
        let mut seen_ver = false;
        for token in text.split(is_separator).filter(|t| !t.is_empty()) {
            let (k, value) = split_token(token).ok_or_else(|| Error::DxSyntax {
                reason: "token is not key=value",
                token: Error::clip(token),
            })?;
            // Unknown keys are ignored (DIME.md §9.1).
            let Some(key) = Key::lookup(k) else { continue };
            let once = |present: bool| {
                if present {
                    Err(Error::DxDuplicate { key: key.name() })
                } else {
                    Ok(())
                }
            };
            match key {
                Key::Ver => {
                    once(seen_ver)?;
                    seen_ver = true;
                    if value.parse::<u32>() != Ok(1) {
                        return Err(bad(key, value));
                    }
                }
                Key::Pok => {
                    let raw = decode_fixed::<32>(key, value)?;
                    rec.poks
                        .push(VerifyingKey::from_bytes(&raw).map_err(|_| bad(key, value))?);
                }
                Key::Tls => {
                    rec.tls
                        .push(Signature::from_bytes(&decode_fixed::<64>(key, value)?));
                }
                Key::Pol => {
                    once(rec.policy.is_some())?;
                    rec.policy = Some(match value.to_ascii_lowercase().as_str() {
                        "experimental" => Policy::Experimental,
                        "mixed" => Policy::Mixed,
                        "strict" => Policy::Strict,
                        _ => return Err(bad(key, value)),
                    });
                }
                Key::Syn => {
                    once(rec.syndicates.is_some())?;
                    rec.syndicates = Some(value.to_string());
                }
                Key::Dx => {
                    if !hostname_ok(value) {
                        return Err(bad(key, value));
                    }
                    rec.dx.push(value.to_string());
                }
                Key::Exp => {
                    once(rec.expiry_days.is_some())?;
                    rec.expiry_days = Some(value.parse().map_err(|_| bad(key, value))?);
                }
                Key::Sub => {
                    once(rec.subdomain.is_some())?;
                    rec.subdomain = Some(match value.to_ascii_lowercase().as_str() {
                        "strict" => Subdomain::Strict,
                        "relaxed" => Subdomain::Relaxed,
                        "explicit" => Subdomain::Explicit,
                        _ => return Err(bad(key, value)),
                    });
                }
            }
        }
        if rec.poks.is_empty() {
            return Err(Error::DxNoPok);
        }
        Ok(rec)
    }

    /// The record as one line of text, keys in genrec's order:
    /// `ver=1 pok=… tls=… pol=… syn=… dx=… exp=… sub=…`.
    pub fn to_text(&self) -> Result<String, Error> {
        if self.poks.is_empty() {
            return Err(Error::DxNoPok);
        }
        let mut parts = vec!["ver=1".to_string()];
        for p in &self.poks {
            parts.push(format!("pok={}", STANDARD_NO_PAD.encode(p.as_bytes())));
        }
        for t in &self.tls {
            parts.push(format!("tls={}", STANDARD_NO_PAD.encode(t.to_bytes())));
        }
        if let Some(p) = self.policy {
            let v = match p {
                Policy::Experimental => "experimental",
                Policy::Mixed => "mixed",
                Policy::Strict => "strict",
            };
            parts.push(format!("pol={v}"));
        }
        if let Some(s) = &self.syndicates {
            if !token_safe(s) {
                return Err(bad(Key::Syn, s));
            }
            parts.push(format!("syn={s}"));
        }
        for d in &self.dx {
            if !hostname_ok(d) {
                return Err(bad(Key::Dx, d));
            }
            parts.push(format!("dx={d}"));
        }
        if let Some(e) = self.expiry_days {
            parts.push(format!("exp={e}"));
        }
        if let Some(s) = self.subdomain {
            let v = match s {
                Subdomain::Strict => "strict",
                Subdomain::Relaxed => "relaxed",
                Subdomain::Explicit => "explicit",
            };
            parts.push(format!("sub={v}"));
        }
        Ok(parts.join(" "))
    }

    /// The record as TXT character-strings of at most 255 bytes each (DIME.md §9.1).
    pub fn to_txt_strings(&self) -> Result<Vec<String>, Error> {
        let text = self.to_text()?;
        let mut out = Vec::new();
        let mut rest = text.as_str();
        while !rest.is_empty() {
            let mut end = rest.len().min(TXT_STRING_MAX);
            while !rest.is_char_boundary(end) {
                end -= 1;
            }
            out.push(rest[..end].to_string());
            rest = &rest[end..];
        }
        Ok(out)
    }

    /// The record as zone-file RDATA: quoted character-strings separated by spaces.
    pub fn to_zone_rdata(&self) -> Result<String, Error> {
        Ok(self
            .to_txt_strings()?
            .iter()
            .map(|s| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")))
            .collect::<Vec<_>>()
            .join(" "))
    }

    /// Parse zone-file RDATA as [`DxRecord::to_zone_rdata`] writes it (and `dimegate record`
    /// prints it): quoted character-strings with `\\` and `\"` escapes, separated by blanks.
    /// Text without a leading quote is read as one unquoted record text.
    pub fn parse_zone_rdata(rdata: &str) -> Result<DxRecord, Error> {
        let rdata = rdata.trim();
        if !rdata.starts_with('"') {
            return Self::parse_str(rdata);
        }
        let unterminated = || Error::DxSyntax {
            reason: "unterminated quoted string",
            token: Error::clip(rdata),
        };
        let mut strings: Vec<String> = Vec::new();
        let mut chars = rdata.chars();
        loop {
            match chars.find(|c| !c.is_ascii_whitespace()) {
                None => break,
                Some('"') => {}
                Some(_) => {
                    return Err(Error::DxSyntax {
                        reason: "text outside quoted strings",
                        token: Error::clip(chars.as_str()),
                    });
                }
            }
            let mut s = String::new();
            loop {
                match chars.next().ok_or_else(unterminated)? {
                    '"' => break,
                    '\\' => s.push(chars.next().ok_or_else(unterminated)?),
                    c => s.push(c),
                }
            }
            strings.push(s);
        }
        let parts: Vec<&[u8]> = strings.iter().map(|s| s.as_bytes()).collect();
        Self::parse(&parts)
    }

    /// Policy, defaulting to `experimental`.
    pub fn policy(&self) -> Policy {
        self.policy.unwrap_or_default()
    }

    /// Subdomain mode, defaulting to `strict`.
    pub fn subdomain(&self) -> Subdomain {
        self.subdomain.unwrap_or_default()
    }

    /// Check a DX certificate (DER) against the `tls=` pins: every pin is tried under every POK.
    pub fn check_tls(&self, cert_der: &[u8]) -> TlsPin {
        if self.tls.is_empty() {
            return TlsPin::NotPinned;
        }
        let digest = Sha512::digest(cert_der);
        for pok in &self.poks {
            if self.tls.iter().any(|sig| pok.verify(&digest, sig).is_ok()) {
                return TlsPin::Verified { pok: *pok };
            }
        }
        TlsPin::Mismatch
    }

    /// Bind an org signet to this record (DIME.md §9.5): its POK must be listed and its signatures
    /// must verify.
    pub fn validate_org_signet(&self, signet: &Signet) -> Result<Validation, Error> {
        signet.validate_org_pok(&self.poks)
    }
}

/// The `tls=` value for a certificate: the POK's Ed25519 signature over SHA-512 of its DER.
pub fn tls_signature(pok: &SigningKey, cert_der: &[u8]) -> Signature {
    pok.sign(&Sha512::digest(cert_der))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn b64(b: &[u8]) -> String {
        STANDARD_NO_PAD.encode(b)
    }

    #[test]
    fn parses_aliases_case_and_separators_and_drops_unknown_keys() {
        let pok = key(1).verifying_key();
        let pok2 = key(2).verifying_key();
        let text = format!(
            "VERSION=1; primary={}\tPOK={}= pol=Strict;syn=x.example deliver=dx1.example dx=dx2.example \
             expiry=30 subdomain=relaxed future=thing",
            b64(pok.as_bytes()),
            b64(pok2.as_bytes())
        );
        let r = DxRecord::parse_str(&text).unwrap();
        assert_eq!(r.poks, [pok, pok2]);
        assert_eq!(r.policy(), Policy::Strict);
        assert_eq!(r.syndicates.as_deref(), Some("x.example"));
        assert_eq!(r.dx, ["dx1.example", "dx2.example"]);
        assert_eq!(r.expiry_days, Some(30));
        assert_eq!(r.subdomain(), Subdomain::Relaxed);
        assert!(!r.to_text().unwrap().contains("future"));
        assert_eq!(DxRecord::parse_str(&r.to_text().unwrap()).unwrap(), r);
    }

    #[test]
    fn fuzz_found_vertical_tab_in_a_value_round_trips() {
        let pok = b64(key(1).verifying_key().as_bytes());
        let r = DxRecord::parse_str(&format!("pok={pok} syn=a\u{b}b")).unwrap();
        assert_eq!(r.syndicates.as_deref(), Some("a\u{b}b"));
        assert_eq!(DxRecord::parse_str(&r.to_text().unwrap()).unwrap(), r);
    }

    #[test]
    fn defaults_when_absent() {
        let r = DxRecord::parse_str(&format!("pok={}", b64(key(1).verifying_key().as_bytes())))
            .unwrap();
        assert_eq!(
            (r.policy(), r.subdomain()),
            (Policy::Experimental, Subdomain::Strict)
        );
        assert_eq!(r.check_tls(b"cert"), TlsPin::NotPinned);
    }

    #[test]
    fn bad_records_get_precise_errors() {
        let pok = format!("pok={}", b64(key(1).verifying_key().as_bytes()));
        let table: Vec<(String, Error)> = vec![
            ("ver=1".into(), Error::DxNoPok),
            (format!("ver=2 {pok}"), bad(Key::Ver, "2")),
            (format!("{pok} pok=AAAA"), bad(Key::Pok, "AAAA")),
            (format!("{pok} tls=abc"), bad(Key::Tls, "abc")),
            (format!("{pok} pol=lax"), bad(Key::Pol, "lax")),
            (format!("{pok} exp=-1"), bad(Key::Exp, "-1")),
            (format!("{pok} dx=a/b"), bad(Key::Dx, "a/b")),
            (
                format!("{pok} pol=mixed pol=strict"),
                Error::DxDuplicate { key: "pol" },
            ),
            (
                format!("{pok} garbage"),
                Error::DxSyntax {
                    reason: "token is not key=value",
                    token: "garbage".into(),
                },
            ),
        ];
        for (text, err) in table {
            assert_eq!(DxRecord::parse_str(&text), Err(err), "{text}");
        }
    }

    #[test]
    fn long_records_split_at_255_and_concatenate() {
        let mut r = DxRecord {
            poks: (1..=5).map(|i| key(i).verifying_key()).collect(),
            ..Default::default()
        };
        r.tls = (1..=3).map(|i| tls_signature(&key(1), &[i])).collect();
        r.dx = vec!["dx.example".into()];
        let strings = r.to_txt_strings().unwrap();
        assert!(strings.len() > 2);
        assert!(strings.iter().all(|s| s.len() <= 255));
        assert!(strings[..strings.len() - 1].iter().all(|s| s.len() == 255));
        let parts: Vec<&[u8]> = strings.iter().map(|s| s.as_bytes()).collect();
        assert_eq!(DxRecord::parse(&parts).unwrap(), r);
        assert!(r.to_zone_rdata().unwrap().starts_with("\"ver=1 pok="));
    }

    #[test]
    fn zone_rdata_parses_back() {
        let mut r = DxRecord {
            poks: (1..=5).map(|i| key(i).verifying_key()).collect(),
            ..Default::default()
        };
        r.tls = vec![tls_signature(&key(1), b"cert")];
        r.dx = vec!["dx.example".into()];
        let rdata = r.to_zone_rdata().unwrap();
        assert_eq!(DxRecord::parse_zone_rdata(&rdata).unwrap(), r);
        // Escapes, blanks around, and the unquoted form.
        let text = r.to_text().unwrap();
        let escaped = format!(" \"{}\" ", text.replace("ver=1", "v\\er=1"));
        assert_eq!(DxRecord::parse_zone_rdata(&escaped).unwrap(), r);
        assert_eq!(DxRecord::parse_zone_rdata(&text).unwrap(), r);
        for bad in ["\"ver=1", "\"ver=1\\", "\"ver=1\" x", "\"pok=AAAA\""] {
            assert!(DxRecord::parse_zone_rdata(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tls_pins_verify_under_any_pok() {
        let old = key(1);
        let new = key(2);
        let cert = b"0\x82 a DER certificate";
        let r = DxRecord {
            poks: vec![old.verifying_key(), new.verifying_key()],
            tls: vec![tls_signature(&new, cert)],
            ..Default::default()
        };
        assert_eq!(
            r.check_tls(cert),
            TlsPin::Verified {
                pok: new.verifying_key()
            }
        );
        assert_eq!(r.check_tls(b"another certificate"), TlsPin::Mismatch);
        let text = r.to_text().unwrap();
        assert_eq!(
            DxRecord::parse_str(&text).unwrap().check_tls(cert),
            r.check_tls(cert)
        );
    }

    #[test]
    fn binds_org_signets_to_poks() {
        use crate::dime::{KeyKind, PrivateKey};
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let org_key = PrivateKey::generate(KeyKind::Org, &mut rng);
        let org = Signet::create_org(&org_key, "example.org", &[], &[]).unwrap();
        let r = DxRecord {
            poks: vec![org_key.verifying_key()],
            ..Default::default()
        };
        assert!(r.validate_org_signet(&org).is_ok());
        let other = DxRecord {
            poks: vec![key(9).verifying_key()],
            ..Default::default()
        };
        assert!(matches!(
            other.validate_org_signet(&org),
            Err(Error::KeyMismatch { .. })
        ));
    }
}
