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
    /// `REQUIRETLS` was given on MAIL FROM (RFC 8689): every onward hop must use verified TLS
    /// and take REQUIRETLS, or the message bounces. Absent in records written before it existed.
    #[serde(default)]
    pub require_tls: bool,
    /// Set when the message arrived over DMTP: the body is then a D/MIME message, not RFC 5322.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dime: Option<Box<DimeArrival>>,
}

/// How a D/MIME message arrived over DMTP, as the destination saw it (DIME.md §7.7).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DimeArrival {
    /// The origin organization (`MAIL FROM`), whose signatures verified.
    pub origin: String,
    /// The crypto fingerprint of the origin's org signet.
    pub origin_fingerprint: String,
    /// The crypto fingerprint of the recipient's signet named in the destination chunk. For a
    /// message of our own to pass on over DMTP (`origin` is a served domain: a submission, or
    /// a sealed DSN), the destination org signet's, which the origin chunk names.
    pub recipient_fingerprint: String,
}

impl Envelope {
    /// The envelope of a message made here (a DSN, a TLS report, a returned report): from
    /// `sender` to `recipient` alone, named by `helo` (our host name), arrived `arrival_unix`;
    /// 7-bit, no DSN parameters, no TLS or AUTH, no REQUIRETLS. The loopback "client" marks it
    /// as local in logs. Callers set what differs.
    pub fn local(sender: String, recipient: String, helo: String, arrival_unix: u64) -> Envelope {
        Envelope {
            sender,
            recipients: vec![Recipient {
                address: recipient,
                notify: None,
                orcpt: None,
            }],
            dsn_ret: None,
            dsn_envid: None,
            body_8bit: false,
            smtputf8: false,
            helo,
            client: SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0)),
            tls: None,
            auth_user: None,
            arrival_unix,
            require_tls: false,
            dime: None,
        }
    }
}

#[cfg(test)]
impl Envelope {
    /// A plain envelope for unit tests: no DSN parameters, 7-bit, no TLS or AUTH, from
    /// `client.example` at 192.0.2.1:25000. Tests override what they care about.
    pub(crate) fn for_test(sender: &str, recipients: &[&str], arrival_unix: u64) -> Envelope {
        Envelope {
            sender: sender.into(),
            recipients: recipients
                .iter()
                .map(|a| Recipient {
                    address: (*a).into(),
                    notify: None,
                    orcpt: None,
                })
                .collect(),
            dsn_ret: None,
            dsn_envid: None,
            body_8bit: false,
            smtputf8: false,
            helo: "client.example".into(),
            client: SocketAddr::from(([192, 0, 2, 1], 25000)),
            tls: None,
            auth_user: None,
            arrival_unix,
            require_tls: false,
            dime: None,
        }
    }
}

/// The name of one queued message everywhere: SMTP replies, logs, the admin API and the CLI.
///
/// Sixteen upper-case hex digits: the arrival time in microseconds in the high bits, so ids sort by
/// arrival, and a per-process counter in the low bits, so ids made in the same microsecond differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueueId(pub u64);

// Serialized as its text form, so that JSON output and the admin API show the same id as the
// SMTP reply and the logs.
impl Serialize for QueueId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for QueueId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for QueueId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016X}", self.0)
    }
}

/// A string that is not a queue id.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a queue id (16 hex digits): {0:?}")]
pub struct BadQueueId(pub String);

impl std::str::FromStr for QueueId {
    type Err = BadQueueId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // from_str_radix alone would accept a leading '+'.
        if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(BadQueueId(s.to_owned()));
        }
        u64::from_str_radix(s, 16)
            .map(QueueId)
            .map_err(|_| BadQueueId(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_id_round_trips_through_text() {
        let id = QueueId(0x0123_4567_89AB_CDEF);
        assert_eq!(id.to_string(), "0123456789ABCDEF");
        assert_eq!("0123456789abcdef".parse::<QueueId>(), Ok(id));
        assert!("0123".parse::<QueueId>().is_err());
        assert!("0123456789ABCDEG".parse::<QueueId>().is_err());
        assert!("+123456789ABCDEF".parse::<QueueId>().is_err());
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"0123456789ABCDEF\"");
        assert_eq!(serde_json::from_str::<QueueId>(&json).unwrap(), id);
    }
}
