//! Whether a DX host's certificate may carry DMTP (DIME.md §9.4), as a pure decision and as a
//! rustls certificate verifier that applies it.
//!
//! The `tls=` pins of a `_dx` record are signatures by the organization's POK over the DX
//! certificate; they are only as good as the record they came in. So:
//!
//! | record | pins | certificate | verdict |
//! |---|---|---|---|
//! | any | a pin, none matches | any | refused (§9.4 step 1) |
//! | DNSSEC-secure | one matches | any, self-signed too | trusted by pin |
//! | not DNSSEC-secure | one matches | must also pass WebPKI for the DX name | trusted by pin and CA |
//! | any | none | must pass WebPKI for the DX name | trusted by CA (§9.4 step 3) |
//!
//! "WebPKI" means a chain to the bundled Web roots or to `[dmtp] ca_file`, with the DX host
//! name checked; a self-signed certificate fails it, which is §9.4 step 2. A bogus record never
//! gets here: the resolver refuses it before any connection. The OCSP check of §9.4 step 4 is not
//! made (rustls has no OCSP fetching; stapled responses are passed to the WebPKI verifier).

use crate::dime::{DxRecord, TlsPin};
use crate::resolve::Verdict as RecordSecurity;
use ed25519_dalek::VerifyingKey;
use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use std::sync::{Arc, Mutex};

/// Why a certificate is trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// A `tls=` pin of a DNSSEC-secure record matches.
    Pinned {
        /// The POK whose signature matched.
        pok: VerifyingKey,
    },
    /// A `tls=` pin matches and, the record being unsigned, the certificate also passed WebPKI.
    PinnedAndCa {
        /// The POK whose signature matched.
        pok: VerifyingKey,
    },
    /// No pins: the certificate passed WebPKI for the DX host name.
    Ca,
}

impl std::fmt::Display for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trust::Pinned { .. } => f.write_str("tls= pin under a DNSSEC-secure record"),
            Trust::PinnedAndCa { .. } => f.write_str("tls= pin and a CA-signed certificate"),
            Trust::Ca => f.write_str("CA-signed certificate for the DX host"),
        }
    }
}

/// Why a certificate is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The record pins certificates and this is not one of them.
    #[error("the certificate matches none of the record's tls= pins")]
    PinMismatch,
    /// The pin matched but the record is not DNSSEC-secure, and the certificate is not CA-signed
    /// for the host: an unsigned record can be forged along with its pin.
    #[error(
        "tls= pin matches, but the _dx record is not DNSSEC-secure and the certificate fails WebPKI: {0}"
    )]
    UnsignedPin(String),
    /// No pin, and the certificate fails WebPKI (self-signed, wrong name, expired...).
    #[error("no tls= pin and the certificate fails WebPKI: {0}")]
    NotTrusted(String),
}

/// The §9.4 decision from its three facts; `webpki` is consulted only when needed (it is a
/// closure so that a pinned, DNSSEC-secure self-signed certificate never meets a CA check).
pub fn decide(
    pin: TlsPin,
    security: RecordSecurity,
    webpki: impl FnOnce() -> Result<(), String>,
) -> Result<Trust, Refusal> {
    match (pin, security) {
        (TlsPin::Mismatch, _) => Err(Refusal::PinMismatch),
        (TlsPin::Verified { pok }, RecordSecurity::Secure) => Ok(Trust::Pinned { pok }),
        (TlsPin::Verified { pok }, RecordSecurity::Insecure) => webpki()
            .map(|()| Trust::PinnedAndCa { pok })
            .map_err(Refusal::UnsignedPin),
        (TlsPin::NotPinned, _) => webpki().map(|()| Trust::Ca).map_err(Refusal::NotTrusted),
    }
}

/// A rustls verifier for one DMTP connection to a DX host found through `record`.
///
/// Handshake signatures are verified by the ring provider as usual; only the certificate's
/// acceptance follows [`decide`]. The verdict of the last handshake is kept for logs and
/// `dimegate lookup` ([`DxCertVerifier::verdict`]).
#[derive(Debug)]
pub struct DxCertVerifier {
    record: DxRecord,
    security: RecordSecurity,
    webpki: Arc<WebPkiServerVerifier>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    verdict: Mutex<Option<Result<Trust, Refusal>>>,
}

impl DxCertVerifier {
    /// `roots`: the Web roots, plus `[dmtp] ca_file` if configured.
    pub fn new(
        record: DxRecord,
        security: RecordSecurity,
        roots: Arc<RootCertStore>,
    ) -> Result<DxCertVerifier, rustls::client::VerifierBuilderError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let webpki =
            WebPkiServerVerifier::builder_with_provider(roots, provider.clone()).build()?;
        Ok(DxCertVerifier {
            record,
            security,
            webpki,
            provider,
            verdict: Mutex::new(None),
        })
    }

    /// What the last handshake decided, if one got that far.
    pub fn verdict(&self) -> Option<Result<Trust, Refusal>> {
        self.verdict
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The Web roots (webpki-roots) plus the PEM certificates of `ca_file`, if given.
pub fn root_store(ca_file: Option<&std::path::Path>) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca_file {
        use rustls::pki_types::pem::PemObject;
        let certs =
            CertificateDer::pem_file_iter(path).map_err(|e| format!("{}: {e}", path.display()))?;
        for cert in certs {
            let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    Ok(roots)
}

impl ServerCertVerifier for DxCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verdict = decide(self.record.check_tls(end_entity), self.security, || {
            self.webpki
                .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
        *self.verdict.lock().unwrap_or_else(|p| p.into_inner()) = Some(verdict.clone());
        match verdict {
            Ok(_) => Ok(ServerCertVerified::assertion()),
            Err(refusal) => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(refusal))),
            )),
        }
    }

    crate::tls::handshake_signatures_by_provider!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dime::tls_signature;
    use ed25519_dalek::SigningKey;

    fn pok() -> SigningKey {
        SigningKey::from_bytes(&[9; 32])
    }

    #[test]
    fn decision_table() {
        let key = pok().verifying_key();
        let ok = || Ok(());
        let bad = || Err("self-signed".to_owned());
        let never = || -> Result<(), String> { panic!("WebPKI must not be consulted") };
        use RecordSecurity::{Insecure, Secure};
        let rows: Vec<(TlsPin, RecordSecurity, Result<Trust, Refusal>)> = vec![
            (TlsPin::Mismatch, Secure, Err(Refusal::PinMismatch)),
            (TlsPin::Mismatch, Insecure, Err(Refusal::PinMismatch)),
            (
                TlsPin::Verified { pok: key },
                Secure,
                Ok(Trust::Pinned { pok: key }),
            ),
        ];
        for (pin, sec, want) in rows {
            assert_eq!(decide(pin, sec, never), want, "{pin:?} {sec:?}");
        }
        assert_eq!(
            decide(TlsPin::Verified { pok: key }, Insecure, ok),
            Ok(Trust::PinnedAndCa { pok: key })
        );
        assert_eq!(
            decide(TlsPin::Verified { pok: key }, Insecure, bad),
            Err(Refusal::UnsignedPin("self-signed".into()))
        );
        for sec in [Secure, Insecure] {
            assert_eq!(decide(TlsPin::NotPinned, sec, ok), Ok(Trust::Ca));
            assert_eq!(
                decide(TlsPin::NotPinned, sec, bad),
                Err(Refusal::NotTrusted("self-signed".into()))
            );
        }
    }

    struct Pki {
        ca: rcgen::Certificate,
        ca_params: rcgen::CertificateParams,
        ca_key: rcgen::KeyPair,
    }

    impl Pki {
        fn new() -> Pki {
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let ca_key = rcgen::KeyPair::generate().unwrap();
            let ca = params.self_signed(&ca_key).unwrap();
            Pki {
                ca,
                ca_params: params,
                ca_key,
            }
        }

        fn leaf(&self, name: &str) -> CertificateDer<'static> {
            let key = rcgen::KeyPair::generate().unwrap();
            let params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
            let issuer = rcgen::Issuer::from_params(&self.ca_params, &self.ca_key);
            params.signed_by(&key, &issuer).unwrap().der().clone()
        }

        fn roots(&self) -> Arc<RootCertStore> {
            let mut roots = RootCertStore::empty();
            roots.add(self.ca.der().clone()).unwrap();
            Arc::new(roots)
        }
    }

    fn self_signed(name: &str) -> CertificateDer<'static> {
        rcgen::generate_simple_self_signed(vec![name.to_owned()])
            .unwrap()
            .cert
            .der()
            .clone()
    }

    fn check(
        record: &DxRecord,
        security: RecordSecurity,
        roots: Arc<RootCertStore>,
        cert: &CertificateDer<'_>,
    ) -> Result<Trust, Refusal> {
        let v = DxCertVerifier::new(record.clone(), security, roots).unwrap();
        let name = ServerName::try_from("dx.example.test").unwrap();
        let result = v.verify_server_cert(cert, &[], &name, &[], UnixTime::now());
        let verdict = v.verdict().expect("a verdict is kept");
        assert_eq!(result.is_ok(), verdict.is_ok());
        verdict
    }

    fn pinned(cert: &CertificateDer<'_>) -> DxRecord {
        DxRecord {
            poks: vec![pok().verifying_key()],
            tls: vec![tls_signature(&pok(), cert)],
            ..Default::default()
        }
    }

    #[test]
    fn the_verifier_applies_the_table_to_real_certificates() {
        let pki = Pki::new();
        let own = self_signed("dx.example.test");
        let ca_signed = pki.leaf("dx.example.test");
        let wrong_name = pki.leaf("other.example.test");
        let key = pok().verifying_key();
        use RecordSecurity::{Insecure, Secure};

        // Self-signed and pinned: fine under DNSSEC, not without it.
        assert_eq!(
            check(&pinned(&own), Secure, pki.roots(), &own),
            Ok(Trust::Pinned { pok: key })
        );
        assert!(matches!(
            check(&pinned(&own), Insecure, pki.roots(), &own),
            Err(Refusal::UnsignedPin(_))
        ));
        // A pin for another certificate: refused even though the CA vouches for this one.
        assert_eq!(
            check(&pinned(&own), Secure, pki.roots(), &ca_signed),
            Err(Refusal::PinMismatch)
        );
        // Pinned and CA-signed under an unsigned record.
        assert_eq!(
            check(&pinned(&ca_signed), Insecure, pki.roots(), &ca_signed),
            Ok(Trust::PinnedAndCa { pok: key })
        );
        // No pins: the CA and the host name decide.
        let unpinned = DxRecord {
            poks: vec![key],
            ..Default::default()
        };
        assert_eq!(
            check(&unpinned, Insecure, pki.roots(), &ca_signed),
            Ok(Trust::Ca)
        );
        assert!(matches!(
            check(&unpinned, Secure, pki.roots(), &wrong_name),
            Err(Refusal::NotTrusted(_))
        ));
        assert!(matches!(
            check(&unpinned, Secure, pki.roots(), &own),
            Err(Refusal::NotTrusted(_))
        ));
        // The Web roots alone do not know the test CA.
        let web = Arc::new(root_store(None).unwrap());
        assert!(matches!(
            check(&unpinned, Insecure, web, &ca_signed),
            Err(Refusal::NotTrusted(_))
        ));
    }

    #[test]
    fn ca_file_adds_roots_and_garbage_is_an_error() {
        let pki = Pki::new();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, pki.ca.pem()).unwrap();
        let roots = root_store(Some(&path)).unwrap();
        assert_eq!(roots.len(), webpki_roots::TLS_SERVER_ROOTS.len() + 1);
        std::fs::write(&path, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
        assert!(root_store(Some(&path)).is_err());
    }
}
