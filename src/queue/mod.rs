//! The queue policy, sans-I/O: retry schedule and expiry, delay warnings, what an attempt's
//! outcomes do to a message (the [`Scheduler`]), DSN generation (RFC 3464/3461), and ingress
//! back-pressure.
//!
//! Nothing here opens a socket, a file or the store, reads the clock or seeds an RNG: time comes
//! in as [`UnixTime`](crate::time::UnixTime), randomness from the caller, the store's records as
//! data; decisions go out as values ([`Decision`], [`Action`], DSN bytes). Which transport a
//! recipient takes is not the queue's business either: the loop that leases, routes, delivers and
//! feeds outcomes back is [`crate::runner`]. Every rule here is a table test with an explicit
//! `now`.
//!
//! ```
//! use dimegate::queue::{Decision, Jitter, Policy};
//! use dimegate::time::UnixTime;
//! use rand::SeedableRng;
//!
//! let policy = Policy { jitter: Jitter::NONE, ..Policy::default() };
//! let arrival = UnixTime(1_700_000_000);
//! let mut rng = rand::rngs::StdRng::seed_from_u64(1);
//! // The first attempt failed at arrival: retry a minute later.
//! assert_eq!(
//!     policy.next_attempt(arrival, 1, arrival, &mut rng),
//!     Decision::RetryAt(UnixTime(1_700_000_060)),
//! );
//! // Five days on, give up (and send the failure DSN).
//! assert_eq!(
//!     policy.next_attempt(arrival, 23, UnixTime(1_700_432_000), &mut rng),
//!     Decision::Expire,
//! );
//! ```
#![warn(missing_docs)]

mod dsn;
mod retry;
mod scheduler;

pub use dsn::{Dsn, DsnInput, RecipientReport, ReportOutcome, build_dsn};
pub use retry::{Decision, Jitter, RetrySchedule, ScheduleError, should_warn_delay};
pub use scheduler::{Action, QueuedMessage, Scheduler};

use crate::status::EnhancedStatus;
use std::time::Duration;

/// The queue's settings, typed and validated. `config.rs` fills it from `[queue]`; every field has
/// a default that suits one machine ([`Policy::default`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Waits between attempts (`retry = ["1m", "5m", ...]`).
    pub retry: RetrySchedule,
    /// Random spread of each wait (default ±10%).
    pub jitter: Jitter,
    /// Give up this long after arrival (`expire = "5d"`), like Postfix's `maximal_queue_lifetime`.
    pub expire: Duration,
    /// Tell the sender once that the message is late, this long after arrival (`delay_warning =
    /// "4h"`); `None` for `"off"`.
    pub delay_warning: Option<Duration>,
    /// How long a delivery worker owns a leased recipient. It must outlast the longest delivery:
    /// RFC 5321 §4.5.3.2's client timeouts add up to over 20 minutes for one slow transaction,
    /// and a lease that lapses mid-delivery means a duplicate.
    pub lease: Duration,
    /// Refuse new mail (452 4.3.1) with this many messages queued (`max_messages`).
    pub max_messages: u64,
    /// Refuse new mail (452 4.3.1) with less free disk than this (`min_free_disk`), in bytes.
    /// Above the store's own reserve, so SMTP says 452 before the store has to refuse an append.
    pub min_free_disk_bytes: u64,
    /// Return the whole message in a failure DSN (RET=FULL) only up to this size; above it the
    /// DSN carries the headers and says so, so a bounced 50 MB attachment is not mailed back.
    pub dsn_max_full_bytes: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            retry: RetrySchedule::default(),
            jitter: Jitter::default(),
            expire: Duration::from_secs(5 * 86_400),
            delay_warning: Some(Duration::from_secs(4 * 3600)),
            lease: Duration::from_secs(30 * 60),
            max_messages: 100_000,
            min_free_disk_bytes: 256 << 20,
            dsn_max_full_bytes: 1 << 20,
        }
    }
}

/// A [`Policy`] whose values contradict each other.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// Jitter above [`Jitter::MAX_PERCENT`].
    #[error("jitter of {percent}% is above the maximum of 50%")]
    JitterTooLarge {
        /// What was asked for.
        percent: u8,
    },
    /// `expire` shorter than the first retry step: the message would expire before any retry.
    #[error("expire ({expire:?}) is not longer than the first retry step ({first_retry:?})")]
    ExpireTooShort {
        /// The configured expiry.
        expire: Duration,
        /// The first retry step.
        first_retry: Duration,
    },
    /// A delay warning at or after expiry would never be sent.
    #[error("delay_warning ({delay_warning:?}) is not shorter than expire ({expire:?})")]
    WarningAfterExpiry {
        /// The configured warning delay.
        delay_warning: Duration,
        /// The configured expiry.
        expire: Duration,
    },
    /// A lease shorter than a second expires before a delivery can start.
    #[error("lease ({lease:?}) must be at least 1s")]
    LeaseTooShort {
        /// The configured lease.
        lease: Duration,
    },
}

impl Policy {
    /// Checks the values against each other; `config check` reports the error with its path.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let first_retry = self.retry.delay_after(1);
        if self.expire <= first_retry {
            return Err(PolicyError::ExpireTooShort {
                expire: self.expire,
                first_retry,
            });
        }
        if let Some(delay_warning) = self.delay_warning
            && delay_warning >= self.expire
        {
            return Err(PolicyError::WarningAfterExpiry {
                delay_warning,
                expire: self.expire,
            });
        }
        if self.lease < Duration::from_secs(1) {
            return Err(PolicyError::LeaseTooShort { lease: self.lease });
        }
        Ok(())
    }
}

/// Why ingress should refuse new mail for now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pressure {
    /// The queue holds [`Policy::max_messages`] or more.
    QueueFull {
        /// Messages queued.
        messages: u64,
        /// The limit.
        max: u64,
    },
    /// The disk under the queue is below [`Policy::min_free_disk_bytes`].
    DiskLow {
        /// Bytes free.
        free_bytes: u64,
        /// The limit.
        min_bytes: u64,
    },
}

impl Pressure {
    /// The SMTP reply code: 452, "insufficient system storage" (RFC 5321 §4.2.3). Temporary, so
    /// the client keeps the message and tries later: nothing is lost, only delayed.
    pub const REPLY_CODE: u16 = 452;

    /// The enhanced status: 4.3.1, "mail system full" (RFC 3463 §3.4).
    pub const STATUS: EnhancedStatus = EnhancedStatus {
        class: 4,
        subject: 3,
        detail: 1,
    };

    /// The reply text after code and status; says which limit without giving numbers away.
    pub fn text(&self) -> &'static str {
        match self {
            Pressure::QueueFull { .. } => "Queue full, try again later",
            Pressure::DiskLow { .. } => "Insufficient system storage, try again later",
        }
    }

    /// The whole reply line without CRLF: `452 4.3.1 ...`.
    pub fn reply(&self) -> String {
        format!("{} {} {}", Self::REPLY_CODE, Self::STATUS, self.text())
    }
}

/// Whether ingress should answer new transactions with 452 4.3.1 now.
///
/// The SMTP session asks before MAIL FROM (and the DMTP session likewise), so a full queue turns
/// clients away before they send data instead of after.
pub fn ingress_pressure(
    queue_messages: u64,
    free_disk_bytes: u64,
    policy: &Policy,
) -> Option<Pressure> {
    if free_disk_bytes < policy.min_free_disk_bytes {
        // The disk first: it is the harder limit, and the one that could cost a message.
        return Some(Pressure::DiskLow {
            free_bytes: free_disk_bytes,
            min_bytes: policy.min_free_disk_bytes,
        });
    }
    if queue_messages >= policy.max_messages {
        return Some(Pressure::QueueFull {
            messages: queue_messages,
            max: policy.max_messages,
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy_is_valid_and_as_documented() {
        let p = Policy::default();
        assert_eq!(p.validate(), Ok(()));
        assert_eq!(p.expire, Duration::from_secs(432_000));
        assert_eq!(p.delay_warning, Some(Duration::from_secs(14_400)));
        assert_eq!(p.jitter.as_percent(), 10);
        assert_eq!(p.retry.steps().len(), 8);
    }

    #[test]
    fn policy_validation_table() {
        let s = Duration::from_secs;
        let rows: Vec<(Policy, Result<(), PolicyError>)> = vec![
            (
                Policy {
                    expire: s(60),
                    ..Policy::default()
                },
                Err(PolicyError::ExpireTooShort {
                    expire: s(60),
                    first_retry: s(60),
                }),
            ),
            (
                Policy {
                    delay_warning: Some(s(5 * 86_400)),
                    ..Policy::default()
                },
                Err(PolicyError::WarningAfterExpiry {
                    delay_warning: s(5 * 86_400),
                    expire: s(5 * 86_400),
                }),
            ),
            (
                Policy {
                    delay_warning: None,
                    ..Policy::default()
                },
                Ok(()),
            ),
            (
                Policy {
                    lease: Duration::from_millis(10),
                    ..Policy::default()
                },
                Err(PolicyError::LeaseTooShort {
                    lease: Duration::from_millis(10),
                }),
            ),
        ];
        for (policy, want) in rows {
            assert_eq!(policy.validate(), want);
        }
    }

    #[test]
    fn ingress_pressure_table() {
        let p = Policy {
            max_messages: 10,
            min_free_disk_bytes: 1000,
            ..Policy::default()
        };
        // (messages, free bytes, expected)
        let rows = [
            (0, 1_000_000, None),
            (9, 1000, None),
            (
                10,
                1000,
                Some(Pressure::QueueFull {
                    messages: 10,
                    max: 10,
                }),
            ),
            (
                0,
                999,
                Some(Pressure::DiskLow {
                    free_bytes: 999,
                    min_bytes: 1000,
                }),
            ),
            (
                50,
                0,
                Some(Pressure::DiskLow {
                    free_bytes: 0,
                    min_bytes: 1000,
                }),
            ),
        ];
        for (messages, free, want) in rows {
            assert_eq!(
                ingress_pressure(messages, free, &p),
                want,
                "{messages} {free}"
            );
        }
        let full = Pressure::QueueFull {
            messages: 10,
            max: 10,
        };
        assert_eq!(full.reply(), "452 4.3.1 Queue full, try again later");
    }
}
