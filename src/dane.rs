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

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
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
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("DANE authentication failed: {reasons:?}")]
pub struct DaneMismatch {
    /// Each usable record's index and why it did not match.
    pub reasons: Vec<(usize, Mismatch)>,
}

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

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
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
