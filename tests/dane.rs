//! DANE end to end: TLSA records published in the signed Knot tree (TESTBED.md §3.7), looked up
//! and validated by the resolver, then enforced by `dane::client_config` in real TLS handshakes
//! (tokio-rustls on loopback, TLS 1.2 and TLS 1.3) against servers that present matching and
//! non-matching certificates.

mod common;

use dimegate::dane::{self, Tlsa};
use dimegate::resolve::{Resolver, ResolverSettings, Verdict};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, PublicKeyData};
use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use sha2::{Digest, Sha256, Sha512};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: KeyPair,
}

fn self_signed(name: &str) -> Identity {
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec![name.to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    Identity {
        chain: vec![cert.der().clone()],
        key,
    }
}

/// A CA and a leaf for `name` issued by it; the chain presented is [leaf, CA].
fn issued(name: &str) -> Identity {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "DANE test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec![name.to_owned()])
        .unwrap()
        .signed_by(&key, &Issuer::from_params(&ca_params, &ca_key))
        .unwrap();
    Identity {
        chain: vec![leaf.der().clone(), ca.der().clone()],
        key,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A TLS server on loopback that presents `identity`, answers one line with "pong" and exits.
async fn serve_once(
    identity: &Identity,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> std::net::SocketAddr {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            identity.chain.clone(),
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(identity.key.serialize_der())),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        if let Ok(mut tls) = acceptor.accept(tcp).await {
            let mut buf = [0u8; 5];
            if tls.read_exact(&mut buf).await.is_ok() {
                let _ = tls.write_all(b"pong\n").await;
                let _ = tls.shutdown().await;
            }
        }
    });
    addr
}

/// Looks up `_25._tcp.<host>`, insists on a secure set, and runs one handshake with the DANE
/// configuration against `server`. `Ok` holds the server's reply.
async fn handshake(
    resolver: &Resolver,
    host: &str,
    names: &[&str],
    server: std::net::SocketAddr,
) -> Result<String, std::io::Error> {
    let (records, verdict) = resolver
        .tlsa(25, host)
        .await
        .unwrap()
        .expect("TLSA records");
    assert_eq!(verdict, Verdict::Secure, "{host}");
    let config = dane::client_config(records, names).unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(server).await.unwrap();
    let sni = ServerName::try_from(host.to_owned()).unwrap();
    let mut tls = connector.connect(sni, tcp).await?;
    tls.write_all(b"ping\n").await?;
    let mut reply = String::new();
    tls.read_to_string(&mut reply).await?;
    Ok(reply)
}

/// The handshake failed because the DANE verifier refused the certificate, and why.
fn dane_refusal(result: Result<String, std::io::Error>, what: &str) -> Vec<dane::Mismatch> {
    let error = result.expect_err(what);
    let rustls_error = error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .unwrap_or_else(|| panic!("{what}: not a rustls error: {error}"));
    match rustls_error {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => other
            .0
            .downcast_ref::<dane::DaneMismatch>()
            .unwrap_or_else(|| panic!("{what}: {other:?}"))
            .reasons
            .iter()
            .map(|(_, reason)| reason.clone())
            .collect(),
        other => panic!("{what}: {other:?}"),
    }
}

#[tokio::test]
async fn dane_ee_and_ta_enforced_in_real_handshakes() {
    let ee = self_signed("mx.secure.test");
    let stranger = self_signed("mx.secure.test");
    let ta = issued("ta.secure.test");
    let ee_spki_sha256 = hex(&Sha256::digest(ee.key.subject_public_key_info()));
    let ee_full_sha512 = hex(&Sha512::digest(ee.chain[0].as_ref()));
    let ca_sha256 = hex(&Sha256::digest(ta.chain[1].as_ref()));
    let records = format!(
        "\
secure.test. _25._tcp.mx IN TLSA 3 1 1 {ee_spki_sha256}
secure.test. _25._tcp.full IN TLSA 3 0 2 {ee_full_sha512}
secure.test. _25._tcp.ta IN TLSA 2 0 1 {ca_sha256}
secure.test. _25._tcp.pkix IN TLSA 1 1 1 {ee_spki_sha256}
"
    );
    let tree = common::KnotTree::start(&records);
    let resolver = Resolver::new(&ResolverSettings {
        servers: vec![tree.addr],
        trust_anchor: Some(tree.trust_anchor()),
        ..ResolverSettings::default()
    })
    .unwrap();
    let tls12: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];
    let tls13: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

    // DANE-EE, SPKI SHA-256: the matching key is accepted over TLS 1.3 and TLS 1.2 (the
    // handshake signatures are checked by the provider on both paths)...
    for versions in [tls13, tls12] {
        let server = serve_once(&ee, versions).await;
        let reply = handshake(&resolver, "mx.secure.test", &["mx.secure.test"], server).await;
        assert_eq!(reply.unwrap(), "pong\n");
    }
    // ...and a certificate for the same name under another key is refused.
    let server = serve_once(&stranger, tls13).await;
    assert_eq!(
        dane_refusal(
            handshake(&resolver, "mx.secure.test", &["mx.secure.test"], server).await,
            "stranger key",
        ),
        [dane::Mismatch::LeafDiffers]
    );
    // DANE-EE, full certificate SHA-512: no name check (the certificate names mx.secure.test).
    let server = serve_once(&ee, tls13).await;
    let reply = handshake(&resolver, "full.secure.test", &["full.secure.test"], server).await;
    assert_eq!(reply.unwrap(), "pong\n");

    // DANE-TA, full CA certificate SHA-256: the leaf chains to it and names the host.
    let server = serve_once(&ta, tls12).await;
    let reply = handshake(&resolver, "ta.secure.test", &["ta.secure.test"], server).await;
    assert_eq!(reply.unwrap(), "pong\n");
    // Same chain, but neither reference identifier is in the certificate.
    let server = serve_once(&ta, tls13).await;
    assert_eq!(
        dane_refusal(
            handshake(&resolver, "ta.secure.test", &["mx.secure.test"], server).await,
            "TA name mismatch",
        ),
        [dane::Mismatch::NameMismatch {
            names: vec!["mx.secure.test".into()]
        }]
    );
    // The TA record does not authenticate a server that omits the CA from its chain.
    let leaf_only = Identity {
        chain: vec![ta.chain[0].clone()],
        key: KeyPair::try_from(ta.key.serialize_der()).unwrap(),
    };
    let server = serve_once(&leaf_only, tls13).await;
    assert_eq!(
        dane_refusal(
            handshake(&resolver, "ta.secure.test", &["ta.secure.test"], server).await,
            "TA not presented",
        ),
        [dane::Mismatch::AnchorNotInChain]
    );

    // PKIX-EE only: no usable record, so no DANE verifier can be built (RFC 7672 §2.2: TLS
    // without authentication is the caller's fallback, never cleartext).
    let (records, verdict) = resolver
        .tlsa(25, "pkix.secure.test")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(verdict, Verdict::Secure);
    assert_eq!(
        records,
        [Tlsa {
            usage: 1,
            selector: 1,
            matching: 1,
            data: Sha256::digest(ee.key.subject_public_key_info()).to_vec(),
        }]
    );
    assert!(matches!(
        dane::client_config(records, &["pkix.secure.test"]),
        Err(dane::DaneError::NoUsableRecords)
    ));
}
