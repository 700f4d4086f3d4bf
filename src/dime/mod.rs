//! Sans-I/O DIME (DIME.md): binary objects and armor, private key files, signets and their
//! validation and fingerprints, and `_dx` management records. Nothing here touches files,
//! sockets or clocks; key generation takes the caller's RNG.
//!
//! Entry points for other modules:
//! * [`PrivateKey::parse`] / [`PrivateKey::parse_any`] (key files 1952/2013, D1 and D2/D3):
//!   [`PrivateKey::signing_key`] (Ed25519), [`PrivateKey::encryption_secret`] (secp256k1),
//!   [`PrivateKey::encryption_public`].
//! * [`Signet::parse`] / [`Signet::parse_any`] (binary or armored, D1/D2/D3):
//!   [`Signet::signing_key`], [`Signet::encryption_key`], [`Signet::crypto_fingerprint`],
//!   [`Signet::validate`].
//! * [`DxRecord`] for `_dx` TXT records and [`tls_signature`] for their certificate pins.
//! * [`message`] for D/MIME messages: [`message::seal`], [`message::sign_as_origin`],
//!   [`message::open`] / [`message::inspect`] as any of the four actors.
//! * [`armor`] for the text forms, [`object`] for framing (including the `u32` message frame).
//!
//! ```
//! use dimegate::dime::{Level, PrivateKey, Signet};
//! const V: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/dime-vectors/d2-magma-dime/");
//! let key = PrivateKey::parse(&std::fs::read(format!("{V}org-key.bin")).unwrap()).unwrap();
//! let org = Signet::parse(&std::fs::read(format!("{V}org-signet.bin")).unwrap()).unwrap();
//! assert_eq!(&key.verifying_key(), org.signing_key());
//! assert_eq!(key.encryption_public(), *org.encryption_key());
//! assert_eq!(org.validate(None).unwrap().level, Level::Id);
//! assert!(org.crypto_fingerprint().to_string().starts_with("EQBttXLIOm5w"));
//! ```

pub mod armor;
pub(crate) mod codec;
mod error;
mod fingerprint;
mod keys;
pub mod message;
pub mod object;
#[cfg(test)]
mod proptests;
mod record;
mod signet;

pub use error::Error;
pub use fingerprint::Fingerprint;
pub use keys::{KeyKind, PrivateKey};
pub use object::{Dialect, Field, Magic};
pub use record::{DX_PREFIX, DxRecord, Policy, Subdomain, TlsPin, tls_signature};
pub use signet::{
    Custody, Level, Limit, Signet, SignetKind, Sok, Validation, field_name, permission,
};
