//! The queue record of one message, its on-disk encoding, and the views the admin API prints.
//!
//! On disk a record is one version byte followed by JSON. JSON because the record is small next to
//! the body and an operator can read it with redb tooling; the version byte because the scheduler
//! and later releases will change the record, and an old dimegate must refuse a newer record
//! rather than misread it.

use super::state::{RecipientStatus, StateKind};
use crate::envelope::{Envelope, QueueId};
use crate::time::UnixTime;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::Duration;

/// The current record encoding.
const RECORD_VERSION: u8 = 1;

/// What the messages table holds for one queue id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredRecord {
    pub(crate) envelope: Envelope,
    /// One per `envelope.recipients`, same order.
    pub(crate) recipients: Vec<RecipientStatus>,
    /// Body length in bytes, so listing needs no body read.
    pub(crate) size: u64,
    /// The delay DSN went out, so it is not sent again after every later retry or a restart.
    #[serde(default)]
    pub(crate) delay_warned: bool,
    /// The body is a file of the body directory, not a row of the `bodies` table. Absent (false)
    /// in records written before body files existed, and for small bodies.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) body_in_file: bool,
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
    /// The JSON does not parse as a record.
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
    pub(crate) fn new(envelope: Envelope, size: u64, body_in_file: bool) -> StoredRecord {
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
            body_in_file,
        }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = vec![RECORD_VERSION];
        // Serializing plain structs of strings and integers into a Vec cannot fail.
        if let Err(e) = serde_json::to_writer(&mut out, self) {
            unreachable!("serializing a queue record failed: {e}");
        }
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<StoredRecord, DecodeError> {
        let (&version, json) = bytes.split_first().ok_or(DecodeError::Empty)?;
        if version != RECORD_VERSION {
            return Err(DecodeError::UnknownVersion(version));
        }
        let record: StoredRecord =
            serde_json::from_slice(json).map_err(|e| DecodeError::Malformed(e.to_string()))?;
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

    #[test]
    fn record_round_trips_and_refuses_bad_bytes() {
        let r = StoredRecord::new(envelope("a@x.org", &["b@y.org", "c@z.org"], 7), 123, false);
        // Old records (no body_in_file) still read; a file body round-trips.
        let filed = StoredRecord::new(envelope("a@x.org", &["b@y.org"], 7), 9, true);
        assert_eq!(StoredRecord::decode(&filed.encode()), Ok(filed.clone()));
        assert!(!String::from_utf8_lossy(&r.encode()).contains("body_in_file"));
        let bytes = r.encode();
        assert_eq!(bytes[0], RECORD_VERSION);
        assert_eq!(StoredRecord::decode(&bytes), Ok(r.clone()));
        assert_eq!(StoredRecord::decode(&[]), Err(DecodeError::Empty));
        let mut newer = bytes.clone();
        newer[0] = 2;
        assert_eq!(
            StoredRecord::decode(&newer),
            Err(DecodeError::UnknownVersion(2))
        );
        assert!(matches!(
            StoredRecord::decode(&bytes[..bytes.len() - 1]),
            Err(DecodeError::Malformed(_))
        ));
        let mut short = r.clone();
        short.recipients.pop();
        assert_eq!(
            StoredRecord::decode(&short.encode()),
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
                false,
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
