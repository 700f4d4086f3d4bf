//! TLS server configuration: load the configured certificate, or generate a self-signed one on
//! first start so that STARTTLS works out of the box.

use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A PEM file held nothing usable.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// rustls refused the certificate and key.
    #[error("certificate and key do not make a TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The self-signed certificate could not be generated.
    #[error("generating a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// The RSA key for the DMTP certificate could not be generated.
    #[error("generating an RSA key: {0}")]
    Rsa(String),
    /// DMTP needs an RSA certificate (DIME.md §10.1: ECDHE-RSA-AES256-GCM-SHA384 under TLS 1.2).
    #[error("{0}: the DMTP certificate's key is not an RSA key")]
    NotRsa(PathBuf),
}

/// Where a generated certificate and key live under the data directory.
pub fn generated_paths(data_dir: &Path) -> (PathBuf, PathBuf) {
    let dir = data_dir.join("tls");
    (dir.join("cert.pem"), dir.join("key.pem"))
}

/// Writes a self-signed certificate for `hostname` unless one is there already. Returns whether
/// it generated one.
pub fn ensure_self_signed(data_dir: &Path, hostname: &str) -> Result<bool, TlsError> {
    let (cert_path, key_path) = generated_paths(data_dir);
    if cert_path.exists() && key_path.exists() {
        return Ok(false);
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TlsError::Io { path, source }
    };
    let dir = data_dir.join("tls");
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let mut names = vec![hostname.to_owned()];
    if hostname != "localhost" {
        names.push("localhost".to_owned());
    }
    let ck = rcgen::generate_simple_self_signed(names)?;
    write_private(&key_path, ck.signing_key.serialize_pem().as_bytes()).map_err(io(&key_path))?;
    std::fs::write(&cert_path, ck.cert.pem()).map_err(io(&cert_path))?;
    Ok(true)
}

/// Where the generated DMTP certificate and key live under the data directory.
pub fn dmtp_generated_paths(data_dir: &Path) -> (PathBuf, PathBuf) {
    let dir = data_dir.join("dmtp-tls");
    (dir.join("cert.pem"), dir.join("key.pem"))
}

/// Writes a self-signed RSA certificate for the DMTP listener, valid for `names`, unless one is
/// there already. Returns whether it generated one.
///
/// RSA because DMTP peers speak TLS 1.2 with ECDHE-RSA-AES256-GCM-SHA384 only (DIME.md §10.1);
/// ring signs with RSA but cannot generate RSA keys, so the `rsa` crate makes the key (only
/// generation: its decryption timing issue, RUSTSEC-2023-0071, does not apply) and ring signs.
pub fn ensure_dmtp_certificate(data_dir: &Path, names: &[String]) -> Result<bool, TlsError> {
    use rsa::pkcs8::EncodePrivateKey;
    let (cert_path, key_path) = dmtp_generated_paths(data_dir);
    if cert_path.exists() && key_path.exists() {
        return Ok(false);
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TlsError::Io { path, source }
    };
    let dir = data_dir.join("dmtp-tls");
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let rsa_key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048)
        .map_err(|e| TlsError::Rsa(e.to_string()))?;
    let der = zeroize::Zeroizing::new(
        rsa_key
            .to_pkcs8_der()
            .map_err(|e| TlsError::Rsa(e.to_string()))?
            .as_bytes()
            .to_vec(),
    );
    let pkcs8 = rustls_pki_types::PrivatePkcs8KeyDer::from(der.as_slice());
    let key_pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_RSA_SHA256)?;
    let params = rcgen::CertificateParams::new(names.to_vec())?;
    let cert = params.self_signed(&key_pair)?;
    write_private(&key_path, key_pair.serialize_pem().as_bytes()).map_err(io(&key_path))?;
    std::fs::write(&cert_path, cert.pem()).map_err(io(&cert_path))?;
    Ok(true)
}

/// The rustls configuration of the DMTP listener: TLS 1.3, and TLS 1.2 with
/// ECDHE-RSA-AES256-GCM-SHA384 (the suite libdime and magma peers use) among the safe defaults.
/// The certificate must have an RSA key, so that suite can be negotiated.
pub fn dmtp_server_config(
    cert_path: &Path,
    key_path: &Path,
) -> Result<Arc<ServerConfig>, TlsError> {
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| TlsError::Pem {
        path: key_path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let is_rsa = match &key {
        PrivateKeyDer::Pkcs1(_) => true,
        PrivateKeyDer::Pkcs8(k) => {
            rcgen::KeyPair::from_pkcs8_der_and_sign_algo(k, &rcgen::PKCS_RSA_SHA256).is_ok()
        }
        _ => false,
    };
    if !is_rsa {
        return Err(TlsError::NotRsa(key_path.to_path_buf()));
    }
    server_config(cert_path, key_path).map(|(config, _)| config)
}

/// Writes a file readable by its owner only (private keys).
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Reads a certificate chain and its key from PEM files into what rustls serves.
fn load_certified_key(
    cert_path: &Path,
    key_path: &Path,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| TlsError::Pem {
            path: cert_path.to_path_buf(),
            reason: e.to_string(),
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            path: cert_path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: cert_path.to_path_buf(),
            reason: "no CERTIFICATE block".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| TlsError::Pem {
        path: key_path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(Arc::new(CertifiedKey::from_der(certs, key, provider)?))
}

/// The certificate the SMTP listeners serve, replaceable while they run: `reload` reads the
/// files again (SIGHUP, systemd's `ExecReload`), and new handshakes get the new certificate.
/// A reload that fails leaves the current certificate in place.
#[derive(Debug)]
pub struct ServerCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<rustls::crypto::CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ServerCert {
    /// Reads the certificate and key files again.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = load_certified_key(&self.cert_path, &self.key_path, &self.provider)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }

    /// The certificate chain and key served now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The certificate file.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// Builds the rustls server configuration from PEM files, with the certificate behind a
/// [`ServerCert`] so that it can be reloaded.
pub fn server_config(
    cert_path: &Path,
    key_path: &Path,
) -> Result<(Arc<ServerConfig>, Arc<ServerCert>), TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cert = Arc::new(ServerCert {
        cert_path: cert_path.to_path_buf(),
        key_path: key_path.to_path_buf(),
        current: RwLock::new(load_certified_key(cert_path, key_path, &provider)?),
        provider: Arc::clone(&provider),
    });
    let resolver: Arc<dyn ResolvesServerCert> = cert.clone();
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    Ok((Arc::new(config), cert))
}

/// The notAfter time (Unix seconds) of the first certificate in a PEM file, for the expiry
/// metric. `None` when the file cannot be read or parsed: the server still starts (rustls has
/// accepted the chain), only the metric is missing.
pub fn certificate_expiry(cert_path: &Path) -> Option<i64> {
    let pem = std::fs::read(cert_path).ok()?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).ok()?;
    let cert = pem.parse_x509().ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// The handshake-signature half of a rustls `ServerCertVerifier`, for verifiers that decide only
/// whether to trust a certificate: signatures are checked by the ring provider in `self.provider`
/// (an `Arc<CryptoProvider>` field), as rustls' own verifiers do. One copy for every verifier
/// (opportunistic SMTP, DANE, DMTP), so none of them can get this part wrong on its own.
macro_rules! handshake_signatures_by_provider {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
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
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
}
pub(crate) use handshake_signatures_by_provider;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_expiry_is_read_from_the_pem() {
        let dir = tempfile::tempdir().unwrap();
        assert!(ensure_self_signed(dir.path(), "mx.example.org").unwrap());
        let (c, _) = generated_paths(dir.path());
        let not_after = certificate_expiry(&c).expect("an expiry");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        // rcgen's default validity runs far into the future.
        assert!(not_after > now, "{not_after} <= {now}");
        let junk = dir.path().join("junk.pem");
        std::fs::write(
            &junk,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        assert_eq!(certificate_expiry(&junk), None);
        assert_eq!(certificate_expiry(&dir.path().join("absent.pem")), None);
    }

    #[test]
    fn generated_certificate_loads_and_key_is_private() {
        let dir = tempfile::tempdir().unwrap();
        assert!(ensure_self_signed(dir.path(), "mx.example.org").unwrap());
        assert!(!ensure_self_signed(dir.path(), "mx.example.org").unwrap());
        let (c, k) = generated_paths(dir.path());
        let (_, cert) = server_config(&c, &k).unwrap();
        let before = cert.current().cert[0].clone();
        // A new certificate on disk is served after a reload, and a broken one is refused
        // while the old one stays.
        std::fs::remove_file(&c).unwrap();
        assert!(ensure_self_signed(dir.path(), "mx.example.org").unwrap());
        cert.reload().unwrap();
        let after = cert.current().cert[0].clone();
        assert_ne!(before, after);
        std::fs::write(&c, "garbage").unwrap();
        assert!(cert.reload().is_err());
        assert_eq!(cert.current().cert[0], after);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&k).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn dmtp_certificate_is_rsa_and_offers_the_dmtp_suite() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["dx.example.org".to_owned()];
        assert!(ensure_dmtp_certificate(dir.path(), &names).unwrap());
        assert!(!ensure_dmtp_certificate(dir.path(), &names).unwrap());
        let (c, k) = dmtp_generated_paths(dir.path());
        let config = dmtp_server_config(&c, &k).unwrap();
        assert!(
            config
                .crypto_provider()
                .cipher_suites
                .iter()
                .any(|s| s.suite() == rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384)
        );
        // The STARTTLS certificate (ECDSA) is refused for DMTP.
        assert!(ensure_self_signed(dir.path(), "mx.example.org").unwrap());
        let (c, k) = generated_paths(dir.path());
        assert!(matches!(
            dmtp_server_config(&c, &k),
            Err(TlsError::NotRsa(_))
        ));
    }

    #[test]
    fn garbage_pem_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.pem");
        std::fs::write(&p, "not pem").unwrap();
        assert!(server_config(&p, &p).is_err());
    }
}
