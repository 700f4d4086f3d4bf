//! DANE for SMTP (RFC 7672 on RFC 6698, RFC 7218, RFC 7671): TLSA records as values, the sans-I/O
//! matcher that decides whether a presented certificate chain satisfies them, and a rustls
//! [`ServerCertVerifier`] that applies the matcher during the handshake.
//!
//! This module owns certificate policy only; DNS lives in `resolve` (which returns [`Tlsa`]
//! values with their DNSSEC verdict) and the connection in `deliver`. It is a module of its own,
//! not part of `resolve`, because its inputs are certificates and its output is a TLS decision:
//! the same matcher would serve DMTP or a TLSA set configured by hand.
//!
//! The rules applied (RFC 7672 §3.1):
//! - DANE-EE(3): the leaf certificate (selector 0) or its SubjectPublicKeyInfo (selector 1)
//!   matches; no name check and no validity-period check (§3.1.1).
//! - DANE-TA(2): a certificate of the presented chain *above* the leaf matches; the leaf must
//!   chain to it (signatures, validity, serverAuth where an EKU is present) and carry one of the
//!   reference identifiers (the TLSA base domain or the MX host name, §3.2.2). A trust anchor
//!   that is not in the presented chain is not found (servers must send it, §3.1.2).
//! - PKIX-TA(0) and PKIX-EE(1) are unusable for SMTP (§3.1.3), as are unknown usages, selectors,
//!   matching types and digests of the wrong length (RFC 6698 §4.1, RFC 7671 §4.1). When no
//!   record is usable the set gives [`DaneOutcome::NoUsableRecords`]: RFC 7672 §2.2 then asks for
//!   TLS without authentication, not for a failure and not for cleartext.
//!
//! Wiring into outbound SMTP (RFC 7672 §2.2), per MX host `mx` of a destination:
//! 1. `resolver.mx(domain)` and `resolver.addresses_with_verdict(mx)`; only when both verdicts
//!    are [`Verdict::Secure`](crate::resolve::Verdict) is DANE considered.
//! 2. `resolver.tlsa(25, mx)`: `Ok(None)` or an insecure set: no DANE (MTA-STS or the local
//!    policy decide); `Err(Bogus)` or `Err(Temporary)`: this MX host cannot be used now (try
//!    the next, or defer), never a downgrade to opportunistic TLS or cleartext.
//! 3. A secure set: [`client_config`]`(records, &[mx])` (add the CNAME-expanded name first when
//!    it differs). `Ok(config)`: STARTTLS is mandatory (no STARTTLS offered, or a failed
//!    handshake, defers the host with 4.7.5), connect with SNI `mx`. `Err(NoUsableRecords)`:
//!    STARTTLS is still mandatory, with the opportunistic (accept-any) verifier.

use rustls::ClientConfig;
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256, Sha512};
use std::sync::Arc;

/// One TLSA record as published: the raw parameter numbers, so that unknown values survive to be
/// judged unusable rather than being rejected at parse time.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tlsa {
    /// Certificate usage (RFC 6698 §2.1.1; 2 DANE-TA, 3 DANE-EE).
    pub usage: u8,
    /// Selector (0 full certificate, 1 SubjectPublicKeyInfo).
    pub selector: u8,
    /// Matching type (0 exact, 1 SHA-256, 2 SHA-512).
    pub matching: u8,
    /// Certificate association data.
    pub data: Vec<u8>,
}

/// The usages RFC 7672 lets an SMTP client use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Usage {
    /// DANE-TA(2): a trust anchor in the presented chain.
    DaneTa,
    /// DANE-EE(3): the server's own certificate or key.
    DaneEe,
}

/// What part of a certificate a record matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Selector {
    /// The whole DER certificate (0).
    FullCertificate,
    /// The DER SubjectPublicKeyInfo (1).
    Spki,
}

/// How the selected bytes are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Matching {
    /// Byte for byte (0).
    Exact,
    /// SHA-256 of the selected bytes (1).
    Sha256,
    /// SHA-512 of the selected bytes (2).
    Sha512,
}

/// A record this module can apply.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UsableTlsa {
    /// DANE-TA or DANE-EE.
    pub usage: Usage,
    /// Full certificate or SPKI.
    pub selector: Selector,
    /// Exact, SHA-256 or SHA-512.
    pub matching: Matching,
    /// The association data, of the right length for `matching`.
    pub data: Vec<u8>,
}

/// Why a record cannot be used (RFC 7672 §3.1.3, RFC 7671 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Unusable {
    /// PKIX-TA(0) or PKIX-EE(1): SMTP has no agreed set of public CAs (RFC 7672 §3.1.3).
    #[error("PKIX usage {0} is not used for SMTP (RFC 7672 section 3.1.3)")]
    PkixUsage(u8),
    /// An unassigned or private-use certificate usage.
    #[error("unknown certificate usage {0}")]
    UnknownUsage(u8),
    /// An unassigned or private-use selector.
    #[error("unknown selector {0}")]
    UnknownSelector(u8),
    /// An unassigned or private-use matching type.
    #[error("unknown matching type {0}")]
    UnknownMatching(u8),
    /// A digest whose length does not fit its matching type, or empty exact data.
    #[error("association data of {got} bytes for matching type {matching}")]
    BadLength {
        /// The matching type.
        matching: u8,
        /// The data length.
        got: usize,
    },
}

impl Tlsa {
    /// The record as this module can apply it, or why it cannot.
    pub fn usable(&self) -> Result<UsableTlsa, Unusable> {
        let usage = match self.usage {
            0 | 1 => return Err(Unusable::PkixUsage(self.usage)),
            2 => Usage::DaneTa,
            3 => Usage::DaneEe,
            other => return Err(Unusable::UnknownUsage(other)),
        };
        let selector = match self.selector {
            0 => Selector::FullCertificate,
            1 => Selector::Spki,
            other => return Err(Unusable::UnknownSelector(other)),
        };
        let (matching, length_ok) = match self.matching {
            0 => (Matching::Exact, !self.data.is_empty()),
            1 => (Matching::Sha256, self.data.len() == 32),
            2 => (Matching::Sha512, self.data.len() == 64),
            other => return Err(Unusable::UnknownMatching(other)),
        };
        if !length_ok {
            return Err(Unusable::BadLength {
                matching: self.matching,
                got: self.data.len(),
            });
        }
        Ok(UsableTlsa {
            usage,
            selector,
            matching,
            data: self.data.clone(),
        })
    }
}

impl UsableTlsa {
    /// Whether `selected` (a DER certificate or SPKI, as the selector says) matches the data.
    fn matches(&self, selected: &[u8]) -> bool {
        match self.matching {
            Matching::Exact => selected == self.data.as_slice(),
            Matching::Sha256 => Sha256::digest(selected).as_slice() == self.data.as_slice(),
            Matching::Sha512 => Sha512::digest(selected).as_slice() == self.data.as_slice(),
        }
    }
}

/// Why a usable record did not authenticate the chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    /// The server presented no certificate.
    #[error("no certificate presented")]
    NoCertificate,
    /// A DANE-EE record does not match the leaf.
    #[error("DANE-EE record does not match the server certificate")]
    LeafDiffers,
    /// An SPKI selector was asked of a certificate that does not parse.
    #[error("certificate at depth {depth} does not parse: {reason}")]
    Unparsable {
        /// 0 for the leaf.
        depth: usize,
        /// webpki's reason.
        reason: String,
    },
    /// A DANE-TA record matches no certificate above the leaf.
    #[error("DANE-TA record matches no certificate above the leaf")]
    AnchorNotInChain,
    /// The chain does not verify up to the matched trust anchor.
    #[error("chain does not verify to the DANE-TA anchor at depth {depth}: {reason}")]
    ChainInvalid {
        /// Depth of the matched anchor.
        depth: usize,
        /// webpki's reason (expired, bad signature, wrong EKU...).
        reason: String,
    },
    /// The leaf names neither the TLSA base domain nor the MX host.
    #[error("certificate is not valid for {names:?}")]
    NameMismatch {
        /// The reference identifiers tried.
        names: Vec<String>,
    },
}

/// The matcher's decision for one TLSA set and one presented chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DaneOutcome {
    /// The chain is authenticated by the record at `index` of the input set.
    Matched {
        /// Index into the records given to [`check`].
        index: usize,
        /// That record's usage.
        usage: Usage,
    },
    /// Usable records exist and none authenticates the chain: the connection must fail.
    Mismatch {
        /// Each usable record's index and why it did not match.
        reasons: Vec<(usize, Mismatch)>,
    },
    /// No record of the set is usable: TLS is still mandatory, without authentication
    /// (RFC 7672 §2.2).
    NoUsableRecords,
}

/// Decides whether `chain` (leaf first, as the server sent it) satisfies `records` for a server
/// known by the reference identifiers `names` (the TLSA base domain and the MX host name), at
/// time `now`. Pure: no clock, no I/O.
pub fn check(
    records: &[Tlsa],
    chain: &[CertificateDer<'_>],
    names: &[ServerName<'_>],
    now: UnixTime,
    provider: &CryptoProvider,
) -> DaneOutcome {
    let usable: Vec<(usize, UsableTlsa)> = records
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.usable().ok().map(|u| (i, u)))
        .collect();
    if usable.is_empty() {
        return DaneOutcome::NoUsableRecords;
    }
    let Some(leaf) = chain.first() else {
        return DaneOutcome::Mismatch {
            reasons: usable
                .iter()
                .map(|(i, _)| (*i, Mismatch::NoCertificate))
                .collect(),
        };
    };
    let mut reasons = Vec::new();
    // DANE-EE first: it needs no path building and is what most MX hosts publish.
    for (index, record) in usable.iter().filter(|(_, r)| r.usage == Usage::DaneEe) {
        match selected(record.selector, leaf, 0) {
            Ok(bytes) if record.matches(&bytes) => {
                return DaneOutcome::Matched {
                    index: *index,
                    usage: Usage::DaneEe,
                };
            }
            Ok(_) => reasons.push((*index, Mismatch::LeafDiffers)),
            Err(e) => reasons.push((*index, e)),
        }
    }
    for (index, record) in usable.iter().filter(|(_, r)| r.usage == Usage::DaneTa) {
        match check_trust_anchor(record, chain, names, now, provider) {
            Ok(()) => {
                return DaneOutcome::Matched {
                    index: *index,
                    usage: Usage::DaneTa,
                };
            }
            Err(e) => reasons.push((*index, e)),
        }
    }
    reasons.sort_by_key(|(i, _)| *i);
    DaneOutcome::Mismatch { reasons }
}

/// The bytes a selector picks from a certificate.
fn selected(
    selector: Selector,
    cert: &CertificateDer<'_>,
    depth: usize,
) -> Result<Vec<u8>, Mismatch> {
    match selector {
        Selector::FullCertificate => Ok(cert.as_ref().to_vec()),
        Selector::Spki => {
            // The trust-anchor parser accepts CA and leaf certificates alike and tolerates
            // unknown critical extensions: only the SPKI is wanted here, not a judgement.
            let anchor =
                webpki::anchor_from_trusted_cert(cert).map_err(|e| Mismatch::Unparsable {
                    depth,
                    reason: e.to_string(),
                })?;
            Ok(webpki::spki_for_anchor(&anchor).as_ref().to_vec())
        }
    }
}

fn check_trust_anchor(
    record: &UsableTlsa,
    chain: &[CertificateDer<'_>],
    names: &[ServerName<'_>],
    now: UnixTime,
    provider: &CryptoProvider,
) -> Result<(), Mismatch> {
    let leaf = chain.first().ok_or(Mismatch::NoCertificate)?;
    let mut failure = Mismatch::AnchorNotInChain;
    // Depth 0 is never a trust anchor: a record that matches only the leaf is an EE record
    // published under the wrong usage, and treating it as TA would skip nothing but the name.
    for (depth, cert) in chain.iter().enumerate().skip(1) {
        match selected(record.selector, cert, depth) {
            Ok(bytes) if record.matches(&bytes) => {}
            Ok(_) => continue,
            Err(e) => {
                failure = e;
                continue;
            }
        }
        match verify_to_anchor(leaf, &chain[1..depth], cert, names, now, provider, depth) {
            Ok(()) => return Ok(()),
            Err(e) => failure = e,
        }
    }
    Err(failure)
}

fn verify_to_anchor(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    anchor_cert: &CertificateDer<'_>,
    names: &[ServerName<'_>],
    now: UnixTime,
    provider: &CryptoProvider,
    depth: usize,
) -> Result<(), Mismatch> {
    let invalid = |e: webpki::Error| Mismatch::ChainInvalid {
        depth,
        reason: e.to_string(),
    };
    let anchor = webpki::anchor_from_trusted_cert(anchor_cert).map_err(invalid)?;
    let end_entity = webpki::EndEntityCert::try_from(leaf).map_err(|e| Mismatch::Unparsable {
        depth: 0,
        reason: e.to_string(),
    })?;
    end_entity
        .verify_for_usage(
            provider.signature_verification_algorithms.all,
            &[anchor],
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(invalid)?;
    if names
        .iter()
        .any(|name| end_entity.verify_is_valid_for_subject_name(name).is_ok())
    {
        Ok(())
    } else {
        Err(Mismatch::NameMismatch {
            names: names.iter().map(|n| n.to_str().into_owned()).collect(),
        })
    }
}

/// Why a DANE verifier or client configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum DaneError {
    /// No record of the set is usable: connect with TLS but without authentication instead
    /// (RFC 7672 §2.2).
    #[error("no usable TLSA record")]
    NoUsableRecords,
    /// A reference identifier is not a DNS name.
    #[error("not a DNS name: {0:?}")]
    InvalidName(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The TLSA set did not authenticate the server; carried inside the rustls error of a failed
/// handshake (`rustls::Error::InvalidCertificate(CertificateError::Other(..))`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaneMismatch {
    /// Each usable record's index and why it did not match.
    pub reasons: Vec<(usize, Mismatch)>,
}

impl std::fmt::Display for DaneMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DANE authentication failed")?;
        for (i, (index, reason)) in self.reasons.iter().enumerate() {
            let sep = if i == 0 { ": " } else { "; " };
            write!(f, "{sep}TLSA record {index}: {reason}")?;
        }
        Ok(())
    }
}

impl std::error::Error for DaneMismatch {}

/// A rustls certificate verifier that authenticates the server by a TLSA set (RFC 7672) and
/// nothing else: no WebPKI roots, no OCSP. Handshake signatures are checked by the crypto
/// provider's own `verify_tls12_signature`/`verify_tls13_signature`.
#[derive(Debug)]
pub struct DaneVerifier {
    records: Vec<Tlsa>,
    names: Vec<ServerName<'static>>,
    provider: Arc<CryptoProvider>,
}

impl DaneVerifier {
    /// A verifier for `records`, with the reference identifiers `names` (RFC 7672 §3.2.2: the
    /// TLSA base domain after CNAME expansion, and the MX host name). Refuses a set with no
    /// usable record, so that a caller cannot build a verifier that fails every handshake.
    pub fn new(
        records: Vec<Tlsa>,
        names: &[&str],
        provider: Arc<CryptoProvider>,
    ) -> Result<DaneVerifier, DaneError> {
        if !records.iter().any(|r| r.usable().is_ok()) {
            return Err(DaneError::NoUsableRecords);
        }
        let names = names
            .iter()
            .map(|n| {
                let n = n.trim_end_matches('.');
                ServerName::try_from(n.to_owned()).map_err(|_| DaneError::InvalidName(n.to_owned()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(DaneVerifier {
            records,
            names,
            provider,
        })
    }
}

impl ServerCertVerifier for DaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The SNI name is not a reference identifier of its own: the caller chose it from the
        // same names this verifier was built with (RFC 7672 §8.1).
        let mut chain = Vec::with_capacity(1 + intermediates.len());
        chain.push(end_entity.clone());
        chain.extend(intermediates.iter().cloned());
        match check(&self.records, &chain, &self.names, now, &self.provider) {
            DaneOutcome::Matched { .. } => Ok(ServerCertVerified::assertion()),
            DaneOutcome::Mismatch { reasons } => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(DaneMismatch {
                    reasons,
                }))),
            )),
            // `new` refuses such a set; kept as a failure so that no path authenticates nothing.
            DaneOutcome::NoUsableRecords => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )),
        }
    }

    crate::tls::handshake_signatures_by_provider!();
}

/// A rustls client configuration (ring provider, TLS 1.2 and 1.3) that authenticates the server
/// by `records` alone, for a server known as `names` (TLSA base domain, MX host name).
/// [`DaneError::NoUsableRecords`] means: connect with TLS but do not authenticate (RFC 7672
/// §2.2), never in cleartext.
pub fn client_config(records: Vec<Tlsa>, names: &[&str]) -> Result<ClientConfig, DaneError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = DaneVerifier::new(records, names, provider.clone())?;
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        PublicKeyData, date_time_ymd,
    };
    use std::time::Duration;

    /// 2026-12-01T00:00:00Z.
    fn now() -> UnixTime {
        UnixTime::since_unix_epoch(Duration::from_secs(1_796_083_200))
    }

    fn provider() -> CryptoProvider {
        rustls::crypto::ring::default_provider()
    }

    struct Made {
        der: CertificateDer<'static>,
        spki: Vec<u8>,
        key: KeyPair,
        params: CertificateParams,
    }

    fn params(names: &[&str], valid: (i32, i32)) -> CertificateParams {
        let mut p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
        p.not_before = date_time_ymd(valid.0, 1, 1);
        p.not_after = date_time_ymd(valid.1, 1, 1);
        p
    }

    fn ca(name: &str) -> Made {
        let mut p = params(&[], (2020, 2040));
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let der = p.self_signed(&key).unwrap().der().clone();
        Made {
            der,
            spki: key.subject_public_key_info(),
            key,
            params: p,
        }
    }

    /// A certificate for `names` signed by `issuer` (or self-signed), valid in the given years.
    fn leaf(names: &[&str], issuer: Option<&Made>, valid: (i32, i32)) -> Made {
        let p = params(names, valid);
        let key = KeyPair::generate().unwrap();
        let der = match issuer {
            Some(ca) => {
                let issuer = Issuer::from_params(&ca.params, &ca.key);
                p.signed_by(&key, &issuer).unwrap().der().clone()
            }
            None => p.self_signed(&key).unwrap().der().clone(),
        };
        Made {
            der,
            spki: key.subject_public_key_info(),
            key,
            params: p,
        }
    }

    /// An intermediate CA signed by `issuer`.
    fn intermediate(name: &str, issuer: &Made) -> Made {
        let mut p = params(&[], (2020, 2040));
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let key = KeyPair::generate().unwrap();
        let der = p
            .signed_by(&key, &Issuer::from_params(&issuer.params, &issuer.key))
            .unwrap()
            .der()
            .clone();
        Made {
            der,
            spki: key.subject_public_key_info(),
            key,
            params: p,
        }
    }

    fn tlsa(usage: u8, selector: u8, matching: u8, selected: &[u8]) -> Tlsa {
        let data = match matching {
            0 => selected.to_vec(),
            1 => Sha256::digest(selected).to_vec(),
            2 => Sha512::digest(selected).to_vec(),
            _ => selected.to_vec(),
        };
        Tlsa {
            usage,
            selector,
            matching,
            data,
        }
    }

    fn names(list: &[&'static str]) -> Vec<ServerName<'static>> {
        list.iter()
            .map(|n| ServerName::try_from(*n).unwrap())
            .collect()
    }

    fn run(records: &[Tlsa], chain: &[&Made], reference: &[&'static str]) -> DaneOutcome {
        let chain: Vec<CertificateDer<'_>> = chain.iter().map(|m| m.der.clone()).collect();
        check(records, &chain, &names(reference), now(), &provider())
    }

    fn matched(index: usize, usage: Usage) -> DaneOutcome {
        DaneOutcome::Matched { index, usage }
    }

    fn mismatch(reasons: Vec<(usize, Mismatch)>) -> DaneOutcome {
        DaneOutcome::Mismatch { reasons }
    }

    #[test]
    fn usability_table() {
        let d32 = vec![7u8; 32];
        let d64 = vec![7u8; 64];
        type Row<'a> = (u8, u8, u8, &'a [u8], Result<(), Unusable>);
        let rows: &[Row<'_>] = &[
            (3, 1, 1, &d32, Ok(())),
            (3, 0, 2, &d64, Ok(())),
            (2, 1, 0, b"spki", Ok(())),
            (2, 0, 1, &d32, Ok(())),
            (0, 0, 1, &d32, Err(Unusable::PkixUsage(0))),
            (1, 1, 1, &d32, Err(Unusable::PkixUsage(1))),
            (4, 1, 1, &d32, Err(Unusable::UnknownUsage(4))),
            (255, 1, 1, &d32, Err(Unusable::UnknownUsage(255))),
            (3, 2, 1, &d32, Err(Unusable::UnknownSelector(2))),
            (3, 255, 1, &d32, Err(Unusable::UnknownSelector(255))),
            (3, 1, 3, &d32, Err(Unusable::UnknownMatching(3))),
            (3, 1, 255, &d32, Err(Unusable::UnknownMatching(255))),
            (
                3,
                1,
                1,
                &d64,
                Err(Unusable::BadLength {
                    matching: 1,
                    got: 64,
                }),
            ),
            (
                3,
                1,
                2,
                &d32,
                Err(Unusable::BadLength {
                    matching: 2,
                    got: 32,
                }),
            ),
            (
                3,
                0,
                0,
                b"",
                Err(Unusable::BadLength {
                    matching: 0,
                    got: 0,
                }),
            ),
        ];
        for (usage, selector, matching, data, want) in rows {
            let record = Tlsa {
                usage: *usage,
                selector: *selector,
                matching: *matching,
                data: data.to_vec(),
            };
            assert_eq!(
                record.usable().map(|_| ()),
                *want,
                "{usage} {selector} {matching}"
            );
        }
    }

    #[test]
    fn dane_ee_every_selector_and_matching_type() {
        let cert = leaf(&["mx.example.test"], None, (2020, 2040));
        for selector in [0u8, 1] {
            let selected: &[u8] = if selector == 0 {
                cert.der.as_ref()
            } else {
                &cert.spki
            };
            for matching in [0u8, 1, 2] {
                let records = [tlsa(3, selector, matching, selected)];
                assert_eq!(
                    run(&records, &[&cert], &["mx.example.test"]),
                    matched(0, Usage::DaneEe),
                    "3 {selector} {matching}"
                );
            }
        }
    }

    #[test]
    fn dane_ee_ignores_names_and_expiry() {
        // RFC 7672 §3.1.1: neither the name nor the validity period of a DANE-EE match matters.
        let expired = leaf(&["somewhere.else"], None, (2000, 2001));
        let records = [tlsa(3, 1, 1, &expired.spki)];
        assert_eq!(
            run(&records, &[&expired], &["mx.example.test"]),
            matched(0, Usage::DaneEe)
        );
        let not_yet = leaf(&["somewhere.else"], None, (2030, 2031));
        let records = [tlsa(3, 0, 2, not_yet.der.as_ref())];
        assert_eq!(
            run(&records, &[&not_yet], &["mx.example.test"]),
            matched(0, Usage::DaneEe)
        );
    }

    #[test]
    fn dane_ee_mismatch_and_other_keys() {
        let cert = leaf(&["mx.example.test"], None, (2020, 2040));
        let other = leaf(&["mx.example.test"], None, (2020, 2040));
        let records = [
            tlsa(3, 1, 1, &other.spki),
            tlsa(3, 0, 1, other.der.as_ref()),
        ];
        assert_eq!(
            run(&records, &[&cert], &["mx.example.test"]),
            mismatch(vec![(0, Mismatch::LeafDiffers), (1, Mismatch::LeafDiffers)])
        );
        // One matching record among several is enough, whatever its position.
        let records = [
            tlsa(3, 1, 1, &other.spki),
            tlsa(0, 0, 1, cert.der.as_ref()),
            tlsa(3, 1, 2, &cert.spki),
        ];
        assert_eq!(
            run(&records, &[&cert], &["mx.example.test"]),
            matched(2, Usage::DaneEe)
        );
        // A DANE-EE record is about the leaf only, never an issuer in the chain.
        let ca = ca("Test CA");
        let issued = leaf(&["mx.example.test"], Some(&ca), (2020, 2040));
        let records = [tlsa(3, 1, 1, &ca.spki)];
        assert_eq!(
            run(&records, &[&issued, &ca], &["mx.example.test"]),
            mismatch(vec![(0, Mismatch::LeafDiffers)])
        );
    }

    #[test]
    fn dane_ta_full_certificate_and_spki() {
        let ca = ca("Test CA");
        let cert = leaf(&["mx.example.test"], Some(&ca), (2020, 2040));
        for (selector, selected) in [(0u8, ca.der.as_ref()), (1, ca.spki.as_slice())] {
            for matching in [0u8, 1, 2] {
                let records = [tlsa(2, selector, matching, selected)];
                assert_eq!(
                    run(&records, &[&cert, &ca], &["mx.example.test"]),
                    matched(0, Usage::DaneTa),
                    "2 {selector} {matching}"
                );
            }
        }
    }

    #[test]
    fn dane_ta_names_tlsa_base_or_mx_host() {
        let ca = ca("Test CA");
        let cert = leaf(&["mx.example.test"], Some(&ca), (2020, 2040));
        let wildcard = leaf(&["*.example.test"], Some(&ca), (2020, 2040));
        let records = [tlsa(2, 0, 1, ca.der.as_ref())];
        // Either reference identifier will do: TLSA base domain first, MX host name second.
        assert_eq!(
            run(
                &records,
                &[&cert, &ca],
                &["mx.cname-target.test", "mx.example.test"]
            ),
            matched(0, Usage::DaneTa)
        );
        assert_eq!(
            run(&records, &[&wildcard, &ca], &["mx.example.test"]),
            matched(0, Usage::DaneTa)
        );
        assert_eq!(
            run(&records, &[&cert, &ca], &["mx.other.test"]),
            mismatch(vec![(
                0,
                Mismatch::NameMismatch {
                    names: vec!["mx.other.test".into()]
                }
            )])
        );
    }

    #[test]
    fn dane_ta_chain_must_verify() {
        let ca = ca("Test CA");
        let impostor = ca_named_like(&ca);
        // Signed by another key under the same name: the presented CA matches the record, but
        // the leaf does not chain to it.
        let forged = leaf(&["mx.example.test"], Some(&impostor), (2020, 2040));
        let records = [tlsa(2, 1, 1, &ca.spki)];
        let outcome = run(&records, &[&forged, &ca], &["mx.example.test"]);
        assert!(
            matches!(&outcome, DaneOutcome::Mismatch { reasons } if matches!(reasons[..], [(0, Mismatch::ChainInvalid { depth: 1, .. })])),
            "{outcome:?}"
        );
        // Under DANE-TA the validity period is checked (RFC 7672 §3.1.2 relaxes it only for EE).
        let expired = leaf(&["mx.example.test"], Some(&ca), (2000, 2001));
        let outcome = run(&records, &[&expired, &ca], &["mx.example.test"]);
        assert!(
            matches!(&outcome, DaneOutcome::Mismatch { reasons } if matches!(&reasons[0].1, Mismatch::ChainInvalid { reason, .. } if reason.contains("Expired"))),
            "{outcome:?}"
        );
    }

    /// A different key under the same distinguished name as `ca`.
    fn ca_named_like(ca_cert: &Made) -> Made {
        let mut twin = ca("Test CA");
        twin.params.distinguished_name = ca_cert.params.distinguished_name.clone();
        twin
    }

    #[test]
    fn dane_ta_must_be_presented_above_the_leaf() {
        let ca = ca("Test CA");
        let cert = leaf(&["mx.example.test"], Some(&ca), (2020, 2040));
        let records = [tlsa(2, 0, 1, ca.der.as_ref())];
        // The server left its trust anchor out of the chain.
        assert_eq!(
            run(&records, &[&cert], &["mx.example.test"]),
            mismatch(vec![(0, Mismatch::AnchorNotInChain)])
        );
        // A TA record that matches only the leaf is not a trust anchor.
        let self_signed = leaf(&["mx.example.test"], None, (2020, 2040));
        let records = [tlsa(2, 0, 1, self_signed.der.as_ref())];
        assert_eq!(
            run(&records, &[&self_signed], &["mx.example.test"]),
            mismatch(vec![(0, Mismatch::AnchorNotInChain)])
        );
    }

    #[test]
    fn dane_ta_through_an_intermediate() {
        let root = ca("Root");
        let inter = intermediate("Intermediate", &root);
        let cert = leaf(&["mx.example.test"], Some(&inter), (2020, 2040));
        let chain = [&cert, &inter, &root];
        for anchor in [&root, &inter] {
            let records = [tlsa(2, 1, 2, &anchor.spki)];
            assert_eq!(
                run(&records, &chain, &["mx.example.test"]),
                matched(0, Usage::DaneTa)
            );
        }
        // Root as anchor, intermediate missing: no path.
        let records = [tlsa(2, 1, 1, &root.spki)];
        let outcome = run(&records, &[&cert, &root], &["mx.example.test"]);
        assert!(
            matches!(&outcome, DaneOutcome::Mismatch { reasons } if matches!(reasons[..], [(0, Mismatch::ChainInvalid { .. })])),
            "{outcome:?}"
        );
    }

    #[test]
    fn unusable_sets_and_empty_chains() {
        let cert = leaf(&["mx.example.test"], None, (2020, 2040));
        // Only PKIX and unknown parameters: nothing to authenticate with, even if they "match".
        let records = [
            tlsa(1, 1, 1, &cert.spki),
            tlsa(0, 0, 1, cert.der.as_ref()),
            tlsa(3, 2, 1, &cert.spki),
            tlsa(3, 1, 9, &cert.spki),
        ];
        assert_eq!(
            run(&records, &[&cert], &["mx.example.test"]),
            DaneOutcome::NoUsableRecords
        );
        assert_eq!(
            run(&[], &[&cert], &["mx.example.test"]),
            DaneOutcome::NoUsableRecords
        );
        // Unusable records next to usable ones are ignored; only the usable are reported.
        let other = leaf(&["mx.example.test"], None, (2020, 2040));
        let records = [tlsa(1, 1, 1, &cert.spki), tlsa(3, 1, 1, &other.spki)];
        assert_eq!(
            run(&records, &[&cert], &["mx.example.test"]),
            mismatch(vec![(1, Mismatch::LeafDiffers)])
        );
        assert_eq!(
            run(&records, &[], &["mx.example.test"]),
            mismatch(vec![(1, Mismatch::NoCertificate)])
        );
    }

    #[test]
    fn garbage_certificates_do_not_match_and_do_not_panic() {
        let junk = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]);
        let records = [
            tlsa(3, 1, 1, &[0u8; 32]),
            tlsa(3, 0, 0, junk.as_ref()),
            tlsa(2, 1, 1, &[0u8; 32]),
        ];
        let outcome = check(
            &records,
            &[junk.clone(), junk.clone()],
            &names(&["mx.example.test"]),
            now(),
            &provider(),
        );
        // The exact full-certificate record matches the bytes it was given: DANE-EE 3 0 0 is
        // byte equality, whatever the bytes are.
        assert_eq!(outcome, matched(1, Usage::DaneEe));
        let outcome = check(
            &records[..1],
            &[junk],
            &names(&["mx.example.test"]),
            now(),
            &provider(),
        );
        assert!(
            matches!(&outcome, DaneOutcome::Mismatch { reasons } if matches!(reasons[..], [(0, Mismatch::Unparsable { depth: 0, .. })])),
            "{outcome:?}"
        );
    }

    #[test]
    fn verifier_refuses_sets_without_usable_records() {
        let provider = Arc::new(provider());
        let pkix_only = vec![tlsa(1, 1, 1, &[1u8; 32])];
        assert!(matches!(
            DaneVerifier::new(pkix_only, &["mx.example.test"], provider.clone()),
            Err(DaneError::NoUsableRecords)
        ));
        assert!(matches!(
            DaneVerifier::new(vec![tlsa(3, 1, 1, &[1u8; 32])], &["bad name!"], provider),
            Err(DaneError::InvalidName(_))
        ));
        assert!(client_config(vec![tlsa(3, 1, 1, &[1u8; 32])], &["mx.example.test."]).is_ok());
    }

    #[test]
    fn verifier_maps_outcomes_to_rustls() {
        let cert = leaf(&["mx.example.test"], None, (2020, 2040));
        let other = leaf(&["mx.example.test"], None, (2020, 2040));
        let provider = Arc::new(provider());
        let sni = ServerName::try_from("mx.example.test").unwrap();
        let good = DaneVerifier::new(
            vec![tlsa(3, 1, 1, &cert.spki)],
            &["mx.example.test"],
            provider.clone(),
        )
        .unwrap();
        assert!(
            good.verify_server_cert(&cert.der, &[], &sni, &[], now())
                .is_ok()
        );
        let bad = DaneVerifier::new(
            vec![tlsa(3, 1, 1, &other.spki)],
            &["mx.example.test"],
            provider,
        )
        .unwrap();
        match bad.verify_server_cert(&cert.der, &[], &sni, &[], now()) {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other))) => {
                assert!(
                    other.to_string().contains("DANE-EE record does not match"),
                    "{other}"
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
