//! Per-recipient delivery state and its transitions.
//!
//! A recipient's state changes only through the methods of [`RecipientStatus`], which consume the
//! old status and refuse a transition the current state does not have, so the scheduler and the
//! admin operations cannot put a recipient where it cannot be (say, delivered without a lease).
//! Time enters as an argument (sans-I/O): nothing here reads a clock.

use crate::time::UnixTime;
use serde::{Deserialize, Serialize};

/// Where one recipient of a queued message stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RecipientState {
    /// Waiting for its first attempt, or made due again (admin retry, released hold or lease).
    Queued,
    /// A delivery worker owns it until `until`; after that (or after a restart) it is queued again.
    Leased {
        /// When the lease lapses.
        until: UnixTime,
    },
    /// An attempt failed temporarily; the next one is due at `next_at`.
    Deferred {
        /// When the next attempt is due.
        next_at: UnixTime,
    },
    /// Put aside by the operator or by policy; no attempts until released.
    Held,
    /// Accepted by the next hop. Final.
    Delivered {
        /// When the next hop accepted it.
        at: UnixTime,
    },
    /// Permanently failed (5xx, expired, or bounced by the operator); a DSN is owed. Final.
    Failed {
        /// When it failed.
        at: UnixTime,
        /// The reply or reason given in the DSN.
        reply: String,
    },
}

/// The name of a [`RecipientState`] without its data: for filters, metrics and the CLI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateKind {
    /// [`RecipientState::Queued`].
    Queued,
    /// [`RecipientState::Leased`].
    Leased,
    /// [`RecipientState::Deferred`].
    Deferred,
    /// [`RecipientState::Held`].
    Held,
    /// [`RecipientState::Delivered`].
    Delivered,
    /// [`RecipientState::Failed`].
    Failed,
}

impl std::fmt::Display for StateKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StateKind::Queued => "queued",
            StateKind::Leased => "leased",
            StateKind::Deferred => "deferred",
            StateKind::Held => "held",
            StateKind::Delivered => "delivered",
            StateKind::Failed => "failed",
        })
    }
}

/// A state name that is not one of [`StateKind`]'s.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a recipient state (queued, leased, deferred, held, delivered, failed): {0:?}")]
pub struct BadStateKind(pub String);

impl std::str::FromStr for StateKind {
    type Err = BadStateKind;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "queued" => StateKind::Queued,
            "leased" => StateKind::Leased,
            "deferred" => StateKind::Deferred,
            "held" => StateKind::Held,
            "delivered" => StateKind::Delivered,
            "failed" => StateKind::Failed,
            _ => return Err(BadStateKind(s.to_owned())),
        })
    }
}

impl RecipientState {
    /// The state's name.
    pub fn kind(&self) -> StateKind {
        match self {
            RecipientState::Queued => StateKind::Queued,
            RecipientState::Leased { .. } => StateKind::Leased,
            RecipientState::Deferred { .. } => StateKind::Deferred,
            RecipientState::Held => StateKind::Held,
            RecipientState::Delivered { .. } => StateKind::Delivered,
            RecipientState::Failed { .. } => StateKind::Failed,
        }
    }

    /// Delivered or failed: nothing more will happen to this recipient.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            RecipientState::Delivered { .. } | RecipientState::Failed { .. }
        )
    }
}

/// A transition the current state does not have.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("cannot {action} a recipient that is {from}")]
pub struct TransitionError {
    /// The state the recipient was in.
    pub from: StateKind,
    /// The refused transition.
    pub action: &'static str,
}

/// One recipient of a queued message and its delivery history.
///
/// `attempts` and `last_error` live beside the state, not inside `Deferred`, because they must
/// survive the trip Deferred -> Leased -> Deferred (and a hold) that the scheduler makes on every
/// retry; the state carries only what belongs to the phase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientStatus {
    /// The forward path, as in the envelope.
    pub address: String,
    /// Where it stands.
    pub state: RecipientState,
    /// Delivery attempts that ended (deferred or failed); a lease that lapsed is not counted.
    pub attempts: u32,
    /// The last temporary or permanent error, for the operator and the delay DSN.
    pub last_error: Option<String>,
}

impl RecipientStatus {
    /// A freshly accepted recipient.
    pub fn new(address: impl Into<String>) -> RecipientStatus {
        RecipientStatus {
            address: address.into(),
            state: RecipientState::Queued,
            attempts: 0,
            last_error: None,
        }
    }

    /// When the next attempt is due, if one is planned: now for Queued, `next_at` for Deferred.
    pub fn next_attempt(&self, now: UnixTime) -> Option<UnixTime> {
        match self.state {
            RecipientState::Queued => Some(now),
            RecipientState::Deferred { next_at } => Some(next_at),
            _ => None,
        }
    }

    /// Whether a worker may lease it at `now`.
    pub fn is_due(&self, now: UnixTime) -> bool {
        match self.state {
            RecipientState::Queued => true,
            RecipientState::Deferred { next_at } => next_at <= now,
            _ => false,
        }
    }

    fn refuse(self, action: &'static str) -> TransitionError {
        TransitionError {
            from: self.state.kind(),
            action,
        }
    }

    /// Queued or due Deferred -> Leased until `until`.
    pub fn lease(self, now: UnixTime, until: UnixTime) -> Result<Self, TransitionError> {
        if !self.is_due(now) {
            return Err(self.refuse("lease"));
        }
        Ok(RecipientStatus {
            state: RecipientState::Leased { until },
            ..self
        })
    }

    /// Leased -> Delivered.
    pub fn delivered(self, now: UnixTime) -> Result<Self, TransitionError> {
        match self.state {
            RecipientState::Leased { .. } => Ok(RecipientStatus {
                state: RecipientState::Delivered { at: now },
                attempts: self.attempts.saturating_add(1),
                ..self
            }),
            _ => Err(self.refuse("mark delivered")),
        }
    }

    /// Leased -> Deferred (a temporary failure): counts the attempt and keeps the error.
    pub fn defer(self, next_at: UnixTime, error: String) -> Result<Self, TransitionError> {
        match self.state {
            RecipientState::Leased { .. } => Ok(RecipientStatus {
                state: RecipientState::Deferred { next_at },
                attempts: self.attempts.saturating_add(1),
                last_error: Some(error),
                ..self
            }),
            _ => Err(self.refuse("defer")),
        }
    }

    /// Leased -> Failed (a permanent failure or expiry found during an attempt).
    pub fn fail(self, now: UnixTime, reply: String) -> Result<Self, TransitionError> {
        match self.state {
            RecipientState::Leased { .. } => Ok(RecipientStatus {
                state: RecipientState::Failed {
                    at: now,
                    reply: reply.clone(),
                },
                attempts: self.attempts.saturating_add(1),
                last_error: Some(reply),
                ..self
            }),
            _ => Err(self.refuse("fail")),
        }
    }

    /// Leased -> Queued: the lease lapsed or the process restarted mid-delivery. Not an attempt.
    pub fn release_lease(self) -> Result<Self, TransitionError> {
        match self.state {
            RecipientState::Leased { .. } => Ok(RecipientStatus {
                state: RecipientState::Queued,
                ..self
            }),
            _ => Err(self.refuse("release the lease of")),
        }
    }

    /// Queued or Deferred -> Held (admin `hold`). A leased recipient is in flight and cannot be held.
    pub fn hold(self) -> Result<Self, TransitionError> {
        match self.state {
            RecipientState::Queued | RecipientState::Deferred { .. } | RecipientState::Held => {
                Ok(RecipientStatus {
                    state: RecipientState::Held,
                    ..self
                })
            }
            _ => Err(self.refuse("hold")),
        }
    }

    /// Held -> Queued (admin `release`).
    pub fn release(self) -> Result<Self, TransitionError> {
        match self.state {
            RecipientState::Held => Ok(RecipientStatus {
                state: RecipientState::Queued,
                ..self
            }),
            _ => Err(self.refuse("release")),
        }
    }

    /// Deferred or Queued -> Queued (admin `retry`: due now).
    pub fn retry(self) -> Result<Self, TransitionError> {
        match self.state {
            RecipientState::Queued | RecipientState::Deferred { .. } => Ok(RecipientStatus {
                state: RecipientState::Queued,
                ..self
            }),
            _ => Err(self.refuse("retry")),
        }
    }

    /// Any state but final or leased -> Failed (admin `bounce`, or expiry found by the scheduler).
    pub fn bounce(self, now: UnixTime, reason: String) -> Result<Self, TransitionError> {
        match self.state {
            RecipientState::Queued | RecipientState::Deferred { .. } | RecipientState::Held => {
                Ok(RecipientStatus {
                    state: RecipientState::Failed {
                        at: now,
                        reply: reason,
                    },
                    ..self
                })
            }
            _ => Err(self.refuse("bounce")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const NOW: UnixTime = UnixTime(1_000_000);

    fn in_state(state: RecipientState) -> RecipientStatus {
        RecipientStatus {
            address: "a@example.org".into(),
            state,
            attempts: 2,
            last_error: Some("451 earlier".into()),
        }
    }

    fn all_states() -> Vec<RecipientState> {
        vec![
            RecipientState::Queued,
            RecipientState::Leased {
                until: NOW.plus(Duration::from_secs(60)),
            },
            RecipientState::Deferred {
                next_at: NOW.minus(Duration::from_secs(1)),
            },
            RecipientState::Deferred {
                next_at: NOW.plus(Duration::from_secs(60)),
            },
            RecipientState::Held,
            RecipientState::Delivered { at: NOW },
            RecipientState::Failed {
                at: NOW,
                reply: "550 no".into(),
            },
        ]
    }

    type Step = fn(RecipientStatus) -> Result<RecipientStatus, TransitionError>;

    /// Every transition from every state: the resulting kind, or None where it is refused.
    #[test]
    fn transition_table() {
        let steps: [(&str, Step); 9] = [
            ("lease", |s| {
                s.lease(NOW, NOW.plus(Duration::from_secs(600)))
            }),
            ("delivered", |s| s.delivered(NOW)),
            ("defer", |s| {
                s.defer(NOW.plus(Duration::from_secs(300)), "451 busy".into())
            }),
            ("fail", |s| s.fail(NOW, "550 unknown user".into())),
            ("release_lease", |s| s.release_lease()),
            ("hold", |s| s.hold()),
            ("release", |s| s.release()),
            ("retry", |s| s.retry()),
            ("bounce", |s| s.bounce(NOW, "bounced by operator".into())),
        ];
        use StateKind::*;
        // Rows: Queued, Leased, Deferred(due), Deferred(not due), Held, Delivered, Failed.
        // Columns: the steps above, in order.
        let expected: [[Option<StateKind>; 9]; 7] = [
            [
                Some(Leased),
                None,
                None,
                None,
                None,
                Some(Held),
                None,
                Some(Queued),
                Some(Failed),
            ],
            [
                None,
                Some(Delivered),
                Some(Deferred),
                Some(Failed),
                Some(Queued),
                None,
                None,
                None,
                None,
            ],
            [
                Some(Leased),
                None,
                None,
                None,
                None,
                Some(Held),
                None,
                Some(Queued),
                Some(Failed),
            ],
            [
                None,
                None,
                None,
                None,
                None,
                Some(Held),
                None,
                Some(Queued),
                Some(Failed),
            ],
            [
                None,
                None,
                None,
                None,
                None,
                Some(Held),
                Some(Queued),
                None,
                Some(Failed),
            ],
            [None; 9],
            [None; 9],
        ];
        for (row, state) in all_states().into_iter().enumerate() {
            for (col, (name, step)) in steps.iter().enumerate() {
                let from = state.kind();
                let got = step(in_state(state.clone()));
                match (expected[row][col], got) {
                    (Some(kind), Ok(next)) => {
                        assert_eq!(next.state.kind(), kind, "{name} from row {row}")
                    }
                    (None, Err(e)) => assert_eq!(e.from, from, "{name} from row {row}"),
                    (want, got) => panic!("{name} from row {row}: want {want:?}, got {got:?}"),
                }
            }
        }
    }

    #[test]
    fn attempts_and_error_survive_a_retry_cycle() {
        let s = RecipientStatus::new("b@example.net");
        let s = s.lease(NOW, NOW.plus(Duration::from_secs(600))).unwrap();
        let s = s
            .defer(
                NOW.plus(Duration::from_secs(60)),
                "451 4.4.1 timeout".into(),
            )
            .unwrap();
        assert_eq!(s.attempts, 1);
        assert!(!s.is_due(NOW));
        let later = NOW.plus(Duration::from_secs(61));
        let s = s
            .lease(later, later.plus(Duration::from_secs(600)))
            .unwrap();
        assert_eq!(s.attempts, 1);
        assert_eq!(s.last_error.as_deref(), Some("451 4.4.1 timeout"));
        // A crash mid-delivery releases the lease without counting an attempt.
        let s = s.release_lease().unwrap();
        assert_eq!((s.state.kind(), s.attempts), (StateKind::Queued, 1));
        let s = s.lease(later, later).unwrap().delivered(later).unwrap();
        assert_eq!(s.attempts, 2);
        assert!(s.state.is_final());
    }

    #[test]
    fn state_serializes_with_a_kind_tag() {
        let s = in_state(RecipientState::Deferred {
            next_at: UnixTime(42),
        });
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["state"]["kind"], "deferred");
        assert_eq!(json["state"]["next_at"], 42);
        let back: RecipientStatus = serde_json::from_value(json).unwrap();
        assert_eq!(back, s);
        assert_eq!("Deferred".parse::<StateKind>(), Ok(StateKind::Deferred));
        assert!("gone".parse::<StateKind>().is_err());
    }
}
