//! The SMTP envelope of one accepted message: what the session learned and the store keeps.
//!
//! Owned by no single module: `smtp` builds it, `store` persists it, `queue` and `deliver` read it.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// DSN `RET=` (RFC 3461 §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DsnReturn {
    /// `RET=FULL`: return the whole message in a failure DSN.
    Full,
    /// `RET=HDRS`: return only the headers.
    Headers,
}

/// DSN `NOTIFY=` (RFC 3461 §4.1) for one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Notify {
    /// `NOTIFY=NEVER`.
    pub never: bool,
    /// `SUCCESS` was asked for.
    pub success: bool,
    /// `FAILURE` was asked for.
    pub failure: bool,
    /// `DELAY` was asked for.
    pub delay: bool,
}

/// One `RCPT TO` as accepted by the session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    /// The forward path, without angle brackets.
    pub address: String,
    /// `NOTIFY=`, absent when the client gave none (then the default: failure and delay).
    pub notify: Option<Notify>,
    /// `ORCPT=` as given (`addr-type;xtext`), kept verbatim for the DSN.
    pub orcpt: Option<String>,
}

/// The envelope of a message accepted over SMTP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The reverse path without angle brackets; empty for the null sender `<>`.
    pub sender: String,
    /// Accepted recipients, in the order given.
    pub recipients: Vec<Recipient>,
    /// `RET=`.
    pub dsn_ret: Option<DsnReturn>,
    /// `ENVID=`, xtext as given.
    pub dsn_envid: Option<String>,
    /// `BODY=8BITMIME` or `BINARYMIME` was declared (or BDAT was used).
    pub body_8bit: bool,
    /// `SMTPUTF8` was given on MAIL FROM.
    pub smtputf8: bool,
    /// The name the client gave in HELO/EHLO.
    pub helo: String,
    /// The client's address.
    pub client: SocketAddr,
    /// The TLS protocol and cipher when the session was encrypted, for the `Received:` header.
    pub tls: Option<String>,
    /// The authenticated user, if any.
    pub auth_user: Option<String>,
    /// Arrival time, seconds since the Unix epoch.
    pub arrival_unix: u64,
}
