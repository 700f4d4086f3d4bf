//! The queue record of one message, its on-disk encoding, and the views the admin API prints.
//!
//! On disk a record is one version byte followed by the encoding of that version. Version 2 (what
//! this release writes) is the compact binary of `codec.rs`, with a small body in the same value;
//! version 1, one byte then JSON, is what earlier releases wrote and is still read, so a queue
//! left by the previous release opens and delivers (a v1 record becomes v2 at its next write; its
//! body stays where v1 put it). The version byte also makes an old dimegate refuse a newer
//! record rather than misread it.

use super::codec;
use super::state::{RecipientStatus, StateKind};
use crate::envelope::{Envelope, QueueId};
use crate::time::UnixTime;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::Duration;

/// JSON, written by releases before the binary encoding.
const RECORD_V1_JSON: u8 = 1;
/// The binary encoding of `codec.rs`; what this release writes.
const RECORD_VERSION: u8 = 2;

/// Where a message's body is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StoredBody {
    /// In the record's own value, after the record (small bodies, this release).
    Inline(Vec<u8>),
    /// A row of the `bodies` table (small bodies written by version-1 releases).
    Table,
    /// A file of the body directory.
    File,
}

/// What the messages table holds for one queue id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredRecord {
    pub(crate) envelope: Envelope,
    /// One per `envelope.recipients`, same order.
    pub(crate) recipients: Vec<RecipientStatus>,
    /// Body length in bytes, so listing needs no body read.
    pub(crate) size: u64,
    /// The delay DSN went out, so it is not sent again after every later retry or a restart.
    pub(crate) delay_warned: bool,
    /// Where the body is.
    pub(crate) body: StoredBody,
}

/// A version-1 (JSON) record, as earlier releases wrote it.
#[derive(Deserialize)]
struct V1Record {
    envelope: Envelope,
    recipients: Vec<RecipientStatus>,
    size: u64,
    #[serde(default)]
    delay_warned: bool,
    /// Absent (false) in records written before body files existed, and for small bodies.
    #[serde(default)]
    body_in_file: bool,
}

/// Why a stored record could not be read back.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The value is empty: not even a version byte.
    #[error("empty record")]
    Empty,
    /// Written by a newer (or unknown) release.
    #[error("unknown record version {0}")]
    UnknownVersion(u8),
    /// The bytes do not decode as a record.
    #[error("malformed record: {0}")]
    Malformed(String),
    /// The record parses but its recipient list does not match its envelope.
    #[error("record has {states} recipient states for {recipients} envelope recipients")]
    RecipientMismatch {
        /// Recipients in the envelope.
        recipients: usize,
        /// Recipient states stored.
        states: usize,
    },
}

impl StoredRecord {
    pub(crate) fn new(envelope: Envelope, size: u64, body: StoredBody) -> StoredRecord {
        let recipients = envelope
            .recipients
            .iter()
            .map(|r| RecipientStatus::new(r.address.clone()))
            .collect();
        StoredRecord {
            envelope,
            recipients,
            size,
            delay_warned: false,
            body,
        }
    }

    /// Whether the body is a file of the body directory.
    pub(crate) fn body_in_file(&self) -> bool {
        self.body == StoredBody::File
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let inline = match &self.body {
            StoredBody::Inline(b) => b.len(),
            _ => 0,
        };
        let mut out = Vec::with_capacity(128 + inline);
        out.push(RECORD_VERSION);
        codec::encode(self, &mut out);
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<StoredRecord, DecodeError> {
        let (&version, rest) = bytes.split_first().ok_or(DecodeError::Empty)?;
        let record = match version {
            RECORD_VERSION => codec::decode(rest)?,
            RECORD_V1_JSON => {
                let v1: V1Record = serde_json::from_slice(rest)
                    .map_err(|e| DecodeError::Malformed(e.to_string()))?;
                StoredRecord {
                    envelope: v1.envelope,
                    recipients: v1.recipients,
                    size: v1.size,
                    delay_warned: v1.delay_warned,
                    body: if v1.body_in_file {
                        StoredBody::File
                    } else {
                        StoredBody::Table
                    },
                }
            }
            other => return Err(DecodeError::UnknownVersion(other)),
        };
        if record.recipients.len() != record.envelope.recipients.len() {
            return Err(DecodeError::RecipientMismatch {
                recipients: record.envelope.recipients.len(),
                states: record.recipients.len(),
            });
        }
        Ok(record)
    }
}

/// One queued message with everything the store knows about it but the body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRecord {
    /// Its queue id.
    pub queue_id: QueueId,
    /// The envelope as accepted.
    pub envelope: Envelope,
    /// Body length in bytes.
    pub size: u64,
    /// Per recipient, in envelope order.
    pub recipients: Vec<RecipientStatus>,
    /// Whether the delay DSN for this message was sent.
    #[serde(default)]
    pub delay_warned: bool,
}

/// One line of `queue list`: a message and where each recipient stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageSummary {
    /// Its queue id.
    pub queue_id: QueueId,
    /// The reverse path; empty for `<>`.
    pub sender: String,
    /// Arrival, seconds since the Unix epoch.
    pub arrival: UnixTime,
    /// Body length in bytes.
    pub size: u64,
    /// The SMTP client it came from.
    pub client: SocketAddr,
    /// Per recipient, in envelope order.
    pub recipients: Vec<RecipientSummary>,
}

/// One recipient in a [`MessageSummary`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientSummary {
    /// The forward path.
    pub address: String,
    /// Where it stands.
    pub state: StateKind,
    /// Attempts that ended.
    pub attempts: u32,
    /// When the next attempt is due (Queued: now; Deferred: its time; otherwise none).
    pub next_attempt: Option<UnixTime>,
    /// The last error, if any.
    pub last_error: Option<String>,
}

impl MessageRecord {
    pub(crate) fn from_stored(queue_id: QueueId, r: StoredRecord) -> MessageRecord {
        MessageRecord {
            queue_id,
            envelope: r.envelope,
            size: r.size,
            recipients: r.recipients,
            delay_warned: r.delay_warned,
        }
    }

    /// The list view of this record, with `now` standing in for "due now".
    pub fn summary(&self, now: UnixTime) -> MessageSummary {
        MessageSummary {
            queue_id: self.queue_id,
            sender: self.envelope.sender.clone(),
            arrival: UnixTime(self.envelope.arrival_unix),
            size: self.size,
            client: self.envelope.client,
            recipients: self
                .recipients
                .iter()
                .map(|r| RecipientSummary {
                    address: r.address.clone(),
                    state: r.state.kind(),
                    attempts: r.attempts,
                    next_attempt: r.next_attempt(now),
                    last_error: r.last_error.clone(),
                })
                .collect(),
        }
    }
}

/// Which messages `Store::list` returns. Empty (the default) matches all. Conditions combine with
/// AND; the recipient conditions hold when one recipient meets both.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// The reverse path, compared without regard to ASCII case; `""` selects bounces (`<>`).
    pub sender: Option<String>,
    /// The domain of at least one recipient (case-insensitive, after the last `@`).
    pub recipient_domain: Option<String>,
    /// At least one recipient in this state.
    pub state: Option<StateKind>,
    /// Arrived at least this long ago.
    pub min_age: Option<Duration>,
}

impl ListFilter {
    /// Whether `record` is selected at `now`.
    pub fn matches(&self, record: &MessageRecord, now: UnixTime) -> bool {
        if let Some(sender) = &self.sender
            && !record.envelope.sender.eq_ignore_ascii_case(sender)
        {
            return false;
        }
        if let Some(min_age) = self.min_age
            && record.envelope.arrival_unix > now.minus(min_age).0
        {
            return false;
        }
        if self.recipient_domain.is_none() && self.state.is_none() {
            return true;
        }
        record.recipients.iter().any(|r| {
            let domain_ok = self.recipient_domain.as_ref().is_none_or(|want| {
                r.address
                    .rsplit_once('@')
                    .is_some_and(|(_, d)| d.eq_ignore_ascii_case(want))
            });
            let state_ok = self.state.is_none_or(|want| r.state.kind() == want);
            domain_ok && state_ok
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::state::RecipientState;

    pub(crate) fn envelope(sender: &str, rcpts: &[&str], arrival_unix: u64) -> Envelope {
        Envelope::for_test(sender, rcpts, arrival_unix)
    }

    /// An envelope with every optional field set, so the encoding of each one is exercised.
    fn full_envelope() -> Envelope {
        use crate::envelope::{DimeArrival, DsnReturn, Notify};
        let mut e = envelope(
            "Ünï@x.org",
            &["b@y.org", "c@z.org", "d@w.org"],
            1_799_000_000,
        );
        e.client = "[2001:db8::7]:2525".parse().unwrap();
        e.dsn_ret = Some(DsnReturn::Headers);
        e.dsn_envid = Some("QQ+2B314".into());
        e.body_8bit = true;
        e.smtputf8 = true;
        e.require_tls = true;
        e.tls = Some("TLSv1.3 TLS13_AES_256_GCM_SHA384".into());
        e.auth_user = Some("alice".into());
        e.recipients[0].notify = Some(Notify {
            never: false,
            success: true,
            failure: true,
            delay: false,
        });
        e.recipients[1].notify = Some(Notify {
            never: true,
            ..Notify::default()
        });
        e.recipients[1].orcpt = Some("rfc822;c@z.org".into());
        e.dime = Some(Box::new(DimeArrival {
            origin: "origin.test".into(),
            origin_fingerprint: "AAAA".into(),
            recipient_fingerprint: "BBBB".into(),
        }));
        e
    }

    #[test]
    fn binary_record_round_trips_every_field_and_state() {
        let states = [
            RecipientState::Queued,
            RecipientState::Leased {
                until: UnixTime(u64::MAX),
            },
            RecipientState::Deferred {
                next_at: UnixTime(1_799_000_600),
            },
            RecipientState::Held,
            RecipientState::Delivered { at: UnixTime(0) },
            RecipientState::Failed {
                at: UnixTime(127),
                reply: "550 5.1.1 no such user".into(),
            },
        ];
        for (i, state) in states.into_iter().enumerate() {
            for body in [
                StoredBody::Inline(b"Subject: x\r\n\r\n\0\xff".to_vec()),
                StoredBody::Inline(Vec::new()),
                StoredBody::File,
                StoredBody::Table,
            ] {
                let size = match &body {
                    StoredBody::Inline(b) => b.len() as u64,
                    _ => 1 << 40,
                };
                let mut r = StoredRecord::new(full_envelope(), size, body);
                r.delay_warned = i % 2 == 0;
                r.recipients[1].state = state.clone();
                r.recipients[1].attempts = 300;
                r.recipients[1].last_error = Some("451 later".into());
                r.recipients[2].address = "changed@w.org".into();
                let bytes = r.encode();
                assert_eq!(bytes[0], RECORD_VERSION);
                assert_eq!(StoredRecord::decode(&bytes), Ok(r.clone()), "state {i}");
                // Every truncation is refused, never misread.
                for cut in 0..bytes.len() {
                    assert!(StoredRecord::decode(&bytes[..cut]).is_err(), "cut {cut}");
                }
            }
        }
    }

    #[test]
    fn binary_record_is_small() {
        let r = StoredRecord::new(
            envelope("a@client.test", &["b@example.test"], 1_799_000_000),
            1100,
            StoredBody::File,
        );
        // The JSON of version 1 took about 440 bytes for this.
        assert!(r.encode().len() < 80, "{} bytes", r.encode().len());
    }

    #[test]
    fn damaged_binary_records_are_errors_not_panics() {
        let r = StoredRecord::new(full_envelope(), 3, StoredBody::Inline(b"abc".to_vec()));
        let bytes = r.encode();
        // Flip each byte through a few values: decode must return, whatever it returns.
        for i in 1..bytes.len() {
            for x in [0x00, 0x01, 0x7f, 0x80, 0xff] {
                let mut b = bytes.clone();
                b[i] = x;
                let _ = StoredRecord::decode(&b);
            }
        }
        let mut huge_count = vec![
            RECORD_VERSION,
            0,
            1,
            0,
            0,
            0,
            0,
            4,
            1,
            2,
            3,
            4,
            0,
            25,
            0,
            0,
            0,
            0,
        ];
        huge_count.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(matches!(
            StoredRecord::decode(&huge_count),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn version_1_json_records_still_read() {
        let env = full_envelope();
        let statuses: Vec<RecipientStatus> = env
            .recipients
            .iter()
            .map(|r| RecipientStatus::new(r.address.clone()))
            .collect();
        for (in_file, body) in [(true, StoredBody::File), (false, StoredBody::Table)] {
            let mut json = serde_json::json!({
                "envelope": env, "recipients": statuses, "size": 9, "delay_warned": true,
            });
            if in_file {
                json["body_in_file"] = true.into();
            }
            let mut bytes = vec![RECORD_V1_JSON];
            bytes.extend_from_slice(json.to_string().as_bytes());
            let r = StoredRecord::decode(&bytes).unwrap();
            assert_eq!(r.envelope, env);
            assert_eq!(r.recipients, statuses);
            assert_eq!((r.size, r.delay_warned, r.body), (9, true, body));
            assert!(matches!(
                StoredRecord::decode(&bytes[..bytes.len() - 1]),
                Err(DecodeError::Malformed(_))
            ));
        }
    }

    #[test]
    fn record_refuses_bad_bytes() {
        let r = StoredRecord::new(
            envelope("a@x.org", &["b@y.org", "c@z.org"], 7),
            0,
            StoredBody::File,
        );
        let bytes = r.encode();
        assert_eq!(StoredRecord::decode(&[]), Err(DecodeError::Empty));
        let mut newer = bytes.clone();
        newer[0] = 3;
        assert_eq!(
            StoredRecord::decode(&newer),
            Err(DecodeError::UnknownVersion(3))
        );
        // Binary records share one count; a v1 record can disagree with itself.
        let json = serde_json::json!({
            "envelope": r.envelope, "recipients": [r.recipients[0]], "size": 0,
        });
        let mut v1 = vec![RECORD_V1_JSON];
        v1.extend_from_slice(json.to_string().as_bytes());
        assert_eq!(
            StoredRecord::decode(&v1),
            Err(DecodeError::RecipientMismatch {
                recipients: 2,
                states: 1
            })
        );
    }

    #[test]
    fn filter_table() {
        let now = UnixTime(10_000);
        let mut rec = MessageRecord::from_stored(
            QueueId(1),
            StoredRecord::new(
                envelope("Alice@X.org", &["b@y.org", "c@Z.org"], 10_000 - 3600),
                10,
                StoredBody::File,
            ),
        );
        rec.recipients[1].state = RecipientState::Held;
        let hour = Duration::from_secs(3600);
        let f = |sender: Option<&str>,
                 domain: Option<&str>,
                 state: Option<StateKind>,
                 min_age: Option<Duration>| ListFilter {
            sender: sender.map(Into::into),
            recipient_domain: domain.map(Into::into),
            state,
            min_age,
        };
        let rows = [
            (ListFilter::default(), true),
            (f(Some("alice@x.org"), None, None, None), true),
            (f(Some("bob@x.org"), None, None, None), false),
            (f(Some(""), None, None, None), false),
            (f(None, Some("z.org"), None, None), true),
            (f(None, Some("w.org"), None, None), false),
            (f(None, None, Some(StateKind::Held), None), true),
            (f(None, None, Some(StateKind::Deferred), None), false),
            // Both recipient conditions must hold for the same recipient.
            (f(None, Some("y.org"), Some(StateKind::Held), None), false),
            (f(None, Some("z.org"), Some(StateKind::Held), None), true),
            (f(None, None, None, Some(hour)), true),
            (f(None, None, None, Some(hour * 2)), false),
        ];
        for (i, (filter, want)) in rows.iter().enumerate() {
            assert_eq!(filter.matches(&rec, now), *want, "row {i}: {filter:?}");
        }
    }
}
