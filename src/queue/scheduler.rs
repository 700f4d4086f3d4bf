//! The scheduler's decisions, sans-I/O in mini-redis's shape: the glue hands in the store's
//! records and the time, gets back [`Action`]s and the next wake-up, performs the actions against
//! the store and delivery, sleeps until the wake-up (or until a new message arrives) and asks
//! again.
//!
//! ```text
//! loop {
//!     let records = store.list(..)?;                 // data, not a handle
//!     for action in scheduler.due(&messages, now, budget) { perform(action) }
//!     sleep_until(scheduler.next_wakeup(&messages, now)) or new-mail notification;
//! }
//! delivery finished -> for action in scheduler.handle_outcomes(&message, &results, now, rng) { .. }
//! ```
//!
//! # Contract with the glue
//!
//! The actions of one call are one unit, in order: state changes, then `SendDsn` (build the DSN
//! with [`super::build_dsn`] from the message body and append it to the store), then `Remove`.
//! Applied in one store transaction, a crash leaves all or nothing. If the glue cannot make them
//! atomic, it must at least apply them in order: a message whose recipients are all final but
//! which is still queued is treated by [`Scheduler::due`] as a leftover of a crash and reported
//! again before removal, so the worst case is a duplicate DSN, never a missing one.

use super::dsn::{Diagnosis, EnhancedStatus, RecipientReport, ReportOutcome};
use super::route::RouteError;
use super::{Decision, Policy, should_warn_delay};
use crate::envelope::QueueId;
use crate::store::{MessageRecord, RecipientState, RecipientStatus, UnixTime};
use rand::Rng;

/// One queued message as the scheduler sees it: the store's record plus what the store does not
/// keep yet (see the module's report: a per-message "delay warning sent" flag).
#[derive(Debug, Clone, Copy)]
pub struct QueuedMessage<'a> {
    /// The store's record: envelope and per-recipient states.
    pub record: &'a MessageRecord,
    /// Whether the delay warning for this message went out already.
    pub delay_warned: bool,
}

/// How one delivery attempt for one recipient ended, as `deliver` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// The next hop took responsibility (2xx after DATA) and its acceptance is the final
    /// delivery (LMTP without DSN): NOTIFY=SUCCESS gets `Action: delivered`.
    Delivered(Diagnosis),
    /// An SMTP next hop without the DSN extension took responsibility: NOTIFY=SUCCESS gets
    /// `Action: relayed` (RFC 3461 §5.2.3).
    Relayed(Diagnosis),
    /// A next hop with the DSN extension took responsibility, NOTIFY passed on: it reports
    /// success itself (RFC 3461 §5.2.2), so no success DSN from here.
    PassedOn(Diagnosis),
    /// A temporary failure (4xx, no connection, DNS SERVFAIL): try again later.
    Deferred(Diagnosis),
    /// A permanent failure (5xx, no such domain, unroutable): give up now.
    Failed(Diagnosis),
}

impl DeliveryOutcome {
    /// A recipient [`super::route`] could not route: a permanent failure with 5.1.3.
    pub fn unroutable(error: &RouteError) -> DeliveryOutcome {
        DeliveryOutcome::Failed(Diagnosis {
            local_reason: Some(error.to_string()),
            status: Some(EnhancedStatus::BAD_ADDRESS),
            ..Diagnosis::default()
        })
    }
}

/// What the glue should do, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A lease lapsed (its worker died or hung): store `release_lease`, making it due again.
    /// Not an attempt, so it does not count towards the schedule.
    ReleaseLease {
        /// The message.
        queue_id: QueueId,
        /// Index of the recipient.
        recipient: usize,
    },
    /// Lease these recipients until `until` (store `lease`), group them by route and deliver.
    Lease {
        /// The message.
        queue_id: QueueId,
        /// Indices of the recipients, in envelope order.
        recipients: Vec<usize>,
        /// When the lease lapses.
        until: UnixTime,
    },
    /// The attempt succeeded: store `delivered`.
    Delivered {
        /// The message.
        queue_id: QueueId,
        /// Index of the recipient.
        recipient: usize,
        /// When.
        at: UnixTime,
    },
    /// A temporary failure with time to spare: store `defer`.
    Defer {
        /// The message.
        queue_id: QueueId,
        /// Index of the recipient.
        recipient: usize,
        /// When to try again.
        next_at: UnixTime,
        /// The error, for the operator and a later delay DSN.
        error: String,
    },
    /// Give up on the recipient: store `fail` (if leased) or `bounce` (if not). Followed by a
    /// `SendDsn` naming it unless its NOTIFY declines failures or the sender is `<>`.
    Fail {
        /// The message.
        queue_id: QueueId,
        /// Index of the recipient.
        recipient: usize,
        /// Why, for the store and the log.
        reason: String,
    },
    /// Build a DSN from these reports and the message's body ([`super::build_dsn`]) and queue it.
    /// Only emitted when the DSN is owed: the reports are already filtered by NOTIFY.
    SendDsn {
        /// The message reported on.
        queue_id: QueueId,
        /// Its recipients and what happened to them.
        reports: Vec<RecipientReport>,
    },
    /// Remember that the delay warning for this message went out (store support needed).
    MarkDelayWarned {
        /// The message.
        queue_id: QueueId,
    },
    /// Every recipient is final and reported on: delete the message and its body.
    Remove {
        /// The message.
        queue_id: QueueId,
    },
}

/// The scheduling rules for one [`Policy`].
#[derive(Debug, Clone)]
pub struct Scheduler {
    policy: Policy,
}

impl Scheduler {
    /// A scheduler with `policy`.
    pub fn new(policy: Policy) -> Scheduler {
        Scheduler { policy }
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// When a lease taken at `now` lapses.
    pub fn lease_until(&self, now: UnixTime) -> UnixTime {
        now.plus(self.policy.lease)
    }

    /// At start-up: every lease in the store belongs to a process that is gone, so release them
    /// all now rather than wait out their `until` (the deliveries they covered may or may not have
    /// happened; retrying risks a duplicate, waiting risks nothing but delay, and the lease could
    /// be half an hour).
    pub fn recover(&self, messages: &[QueuedMessage<'_>]) -> Vec<Action> {
        let mut actions = Vec::new();
        for m in messages {
            for (recipient, status) in m.record.recipients.iter().enumerate() {
                if matches!(status.state, RecipientState::Leased { .. }) {
                    actions.push(Action::ReleaseLease {
                        queue_id: m.record.queue_id,
                        recipient,
                    });
                }
            }
        }
        actions
    }

    /// What is due at `now`: lapsed leases to release, due recipients to lease (at most
    /// `max_leases` recipients in all, in the order given, which is arrival order from the
    /// store), delay warnings owed, and left-over finished messages to report and remove.
    ///
    /// A recipient past expiry that is due still gets its attempt: giving up without trying
    /// (say, after the gateway was down for a week) would bounce mail that might now go through.
    /// If that attempt fails temporarily, [`Scheduler::handle_outcomes`] expires it.
    pub fn due(
        &self,
        messages: &[QueuedMessage<'_>],
        now: UnixTime,
        max_leases: usize,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        let mut budget = max_leases;
        for m in messages {
            let record = m.record;
            let queue_id = record.queue_id;
            if record.recipients.iter().all(|s| s.state.is_final()) {
                self.leftover(record, &mut actions);
                continue;
            }
            let mut leased = Vec::new();
            for (recipient, status) in record.recipients.iter().enumerate() {
                let lapsed =
                    matches!(status.state, RecipientState::Leased { until } if until <= now);
                if lapsed {
                    actions.push(Action::ReleaseLease {
                        queue_id,
                        recipient,
                    });
                }
                if (lapsed || status.is_due(now)) && budget > 0 {
                    leased.push(recipient);
                    budget -= 1;
                }
            }
            // The warning before the lease: it reports the state as it was, with the last error.
            let arrival = UnixTime(record.envelope.arrival_unix);
            if should_warn_delay(arrival, now, m.delay_warned, &self.policy) {
                let until = self.policy.expires_at(arrival);
                let reports = record
                    .recipients
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| !s.state.is_final())
                    .map(|(recipient, s)| RecipientReport {
                        recipient,
                        outcome: ReportOutcome::Delayed {
                            diagnosis: diagnosis_from_store(s),
                            will_retry_until: until,
                        },
                        last_attempt: None,
                    })
                    .collect();
                actions.extend(send_dsn(record, reports));
                actions.push(Action::MarkDelayWarned { queue_id });
            }
            if !leased.is_empty() {
                actions.push(Action::Lease {
                    queue_id,
                    recipients: leased,
                    until: self.lease_until(now),
                });
            }
        }
        actions
    }

    /// When [`Scheduler::due`] next has something to do, given the same messages; `now` if
    /// something is due already, `None` if nothing is pending (sleep until new mail). When `due`
    /// left recipients unleased for lack of budget, this is `now` too: the glue then waits for a
    /// delivery worker to come free rather than for this time.
    pub fn next_wakeup(&self, messages: &[QueuedMessage<'_>], now: UnixTime) -> Option<UnixTime> {
        let mut earliest: Option<UnixTime> = None;
        let mut consider = |t: UnixTime| {
            let t = t.max(now);
            earliest = Some(earliest.map_or(t, |e| e.min(t)));
        };
        for m in messages {
            let record = m.record;
            if record.recipients.iter().all(|s| s.state.is_final()) {
                consider(now);
                continue;
            }
            for status in &record.recipients {
                match status.state {
                    RecipientState::Queued => consider(now),
                    RecipientState::Deferred { next_at } => consider(next_at),
                    RecipientState::Leased { until } => consider(until),
                    RecipientState::Held
                    | RecipientState::Delivered { .. }
                    | RecipientState::Failed { .. } => {}
                }
            }
            if !m.delay_warned
                && let Some(at) = self
                    .policy
                    .delay_warning_at(UnixTime(record.envelope.arrival_unix))
            {
                // Only while it can still fire: a warning time in the past that did not fire
                // (the message expired) must not keep the loop spinning at `now`.
                if should_warn_delay(
                    UnixTime(record.envelope.arrival_unix),
                    at.max(now),
                    false,
                    &self.policy,
                ) {
                    consider(at);
                }
            }
        }
        earliest
    }

    /// What to do after delivery attempts for recipients of `message` ended at `now`: one
    /// `(recipient index, outcome)` per attempted recipient. Failures and successes are reported
    /// in one DSN for the whole batch (NOTIFY decides who appears in it).
    ///
    /// An outcome for a recipient that is not leased any more (its lease lapsed and it was
    /// released) is ignored: the store would refuse the transition, and the recipient will be
    /// tried again, so a late success costs a duplicate, never a loss.
    pub fn handle_outcomes<R: Rng + ?Sized>(
        &self,
        message: &QueuedMessage<'_>,
        outcomes: &[(usize, DeliveryOutcome)],
        now: UnixTime,
        rng: &mut R,
    ) -> Vec<Action> {
        let record = message.record;
        let queue_id = record.queue_id;
        let arrival = UnixTime(record.envelope.arrival_unix);
        let mut finished: Vec<bool> = record
            .recipients
            .iter()
            .map(|s| s.state.is_final())
            .collect();
        let mut actions = Vec::new();
        let mut reports = Vec::new();
        let mut deferred_now: Vec<(usize, Diagnosis)> = Vec::new();
        for (recipient, outcome) in outcomes {
            let recipient = *recipient;
            let Some(status) = record.recipients.get(recipient) else {
                continue;
            };
            if !matches!(status.state, RecipientState::Leased { .. }) {
                continue;
            }
            match outcome {
                DeliveryOutcome::Delivered(diagnosis)
                | DeliveryOutcome::Relayed(diagnosis)
                | DeliveryOutcome::PassedOn(diagnosis) => {
                    actions.push(Action::Delivered {
                        queue_id,
                        recipient,
                        at: now,
                    });
                    let report = match outcome {
                        DeliveryOutcome::Delivered(_) => {
                            Some(ReportOutcome::Delivered(diagnosis.clone()))
                        }
                        DeliveryOutcome::Relayed(_) => {
                            Some(ReportOutcome::Relayed(diagnosis.clone()))
                        }
                        _ => None,
                    };
                    if let Some(outcome) = report {
                        reports.push(RecipientReport {
                            recipient,
                            outcome,
                            last_attempt: Some(now),
                        });
                    }
                    finished[recipient] = true;
                }
                DeliveryOutcome::Deferred(diagnosis) => {
                    let attempts = status.attempts.saturating_add(1);
                    match self.policy.next_attempt(arrival, attempts, now, rng) {
                        Decision::RetryAt(next_at) => {
                            actions.push(Action::Defer {
                                queue_id,
                                recipient,
                                next_at,
                                error: describe(diagnosis),
                            });
                            deferred_now.push((recipient, diagnosis.clone()));
                        }
                        Decision::Expire => {
                            let mut diagnosis = diagnosis.clone();
                            if diagnosis.status.is_none()
                                && diagnosis
                                    .reply
                                    .as_deref()
                                    .and_then(EnhancedStatus::from_reply)
                                    .is_none()
                            {
                                diagnosis.status = Some(EnhancedStatus::EXPIRED);
                            }
                            let days = self.policy.expire.as_secs() / 86_400;
                            let reason = format!(
                                "gave up after {} in the queue; last error: {}",
                                if days >= 1 {
                                    format!("{days} day(s)")
                                } else {
                                    format!("{}s", self.policy.expire.as_secs())
                                },
                                describe(&diagnosis)
                            );
                            if diagnosis.reply.is_none() {
                                diagnosis.local_reason = Some(reason.clone());
                            }
                            actions.push(Action::Fail {
                                queue_id,
                                recipient,
                                reason,
                            });
                            reports.push(RecipientReport {
                                recipient,
                                outcome: ReportOutcome::Failed(diagnosis),
                                last_attempt: Some(now),
                            });
                            finished[recipient] = true;
                        }
                    }
                }
                DeliveryOutcome::Failed(diagnosis) => {
                    actions.push(Action::Fail {
                        queue_id,
                        recipient,
                        reason: describe(diagnosis),
                    });
                    reports.push(RecipientReport {
                        recipient,
                        outcome: ReportOutcome::Failed(diagnosis.clone()),
                        last_attempt: Some(now),
                    });
                    finished[recipient] = true;
                }
            }
        }
        actions.extend(send_dsn(record, reports));
        // The delay warning, when an attempt has just been deferred past `delay_warning`: the
        // runner only sees a message when its recipients are due, so this is where the warning
        // goes out (at most one retry step late, as Postfix's delay_warning_time). It names every
        // recipient still waiting, with this attempt's error for those tried just now.
        if !message.delay_warned
            && !deferred_now.is_empty()
            && should_warn_delay(arrival, now, false, &self.policy)
        {
            let until = self.policy.expires_at(arrival);
            let warnings = record
                .recipients
                .iter()
                .enumerate()
                .filter(|(recipient, _)| !finished[*recipient])
                .map(|(recipient, status)| {
                    let now_tried = deferred_now.iter().find(|(r, _)| *r == recipient);
                    RecipientReport {
                        recipient,
                        outcome: ReportOutcome::Delayed {
                            diagnosis: now_tried
                                .map(|(_, d)| d.clone())
                                .unwrap_or_else(|| diagnosis_from_store(status)),
                            will_retry_until: until,
                        },
                        last_attempt: now_tried.map(|_| now),
                    }
                })
                .collect();
            actions.extend(send_dsn(record, warnings));
            actions.push(Action::MarkDelayWarned { queue_id });
        }
        if !finished.is_empty() && finished.iter().all(|&f| f) {
            actions.push(Action::Remove { queue_id });
        }
        actions
    }

    /// The operator bounces recipients (admin `bounce`): each one that is waiting (queued,
    /// deferred or held) fails with `reason` and is reported; leased ones are in flight and left
    /// alone (bounce them after the attempt), final ones are skipped.
    pub fn bounce(
        &self,
        message: &QueuedMessage<'_>,
        recipients: &[usize],
        reason: &str,
    ) -> Vec<Action> {
        let record = message.record;
        let queue_id = record.queue_id;
        let mut finished: Vec<bool> = record
            .recipients
            .iter()
            .map(|s| s.state.is_final())
            .collect();
        let mut actions = Vec::new();
        let mut reports = Vec::new();
        for &recipient in recipients {
            let Some(status) = record.recipients.get(recipient) else {
                continue;
            };
            if status.state.is_final() || matches!(status.state, RecipientState::Leased { .. }) {
                continue;
            }
            if finished[recipient] {
                continue;
            }
            finished[recipient] = true;
            actions.push(Action::Fail {
                queue_id,
                recipient,
                reason: reason.to_owned(),
            });
            reports.push(RecipientReport {
                recipient,
                outcome: ReportOutcome::Failed(Diagnosis {
                    local_reason: Some(reason.to_owned()),
                    // RFC 3463 §3.8: 5.7.1, delivery not authorized (by the operator's policy).
                    status: Some(EnhancedStatus::new(5, 7, 1)),
                    ..Diagnosis::default()
                }),
                last_attempt: None,
            });
        }
        let bounced_any = !reports.is_empty();
        actions.extend(send_dsn(record, reports));
        if bounced_any && finished.iter().all(|&f| f) {
            actions.push(Action::Remove { queue_id });
        }
        actions
    }

    /// A finished message still in the store: the glue crashed between finishing it and removing
    /// it (or someone failed recipients behind the scheduler's back). Report its recipients again
    /// (NOTIFY decides who) before removing it, because we cannot tell whether the DSN went out.
    fn leftover(&self, record: &MessageRecord, actions: &mut Vec<Action>) {
        let reports: Vec<RecipientReport> = record
            .recipients
            .iter()
            .enumerate()
            .filter_map(|(recipient, s)| {
                let outcome = match &s.state {
                    RecipientState::Failed { .. } => ReportOutcome::Failed(diagnosis_from_store(s)),
                    RecipientState::Delivered { .. } => {
                        ReportOutcome::Delivered(Diagnosis::default())
                    }
                    _ => return None,
                };
                let last_attempt = match s.state {
                    RecipientState::Failed { at, .. } | RecipientState::Delivered { at } => {
                        Some(at)
                    }
                    _ => None,
                };
                Some(RecipientReport {
                    recipient,
                    outcome,
                    last_attempt,
                })
            })
            .collect();
        actions.extend(send_dsn(record, reports));
        actions.push(Action::Remove {
            queue_id: record.queue_id,
        });
    }
}

/// `SendDsn` with the reports a DSN will carry, or nothing when [`super::build_dsn`] would
/// return `None` anyway (null sender, or NOTIFY declines every event), so the glue is not asked
/// to read a body for nothing.
fn send_dsn(record: &MessageRecord, reports: Vec<RecipientReport>) -> Option<Action> {
    if record.envelope.sender.is_empty() {
        return None;
    }
    let reports: Vec<RecipientReport> = reports
        .into_iter()
        .filter(|r| {
            record
                .envelope
                .recipients
                .get(r.recipient)
                .is_some_and(|rcpt| r.outcome.wanted_by(rcpt.notify))
        })
        .collect();
    (!reports.is_empty()).then_some(Action::SendDsn {
        queue_id: record.queue_id,
        reports,
    })
}

/// The error text the store keeps: the remote reply on one line, else the local reason.
fn describe(d: &Diagnosis) -> String {
    let text = d
        .reply
        .as_deref()
        .or(d.local_reason.as_deref())
        .unwrap_or("unknown error");
    let text = text.lines().map(str::trim).collect::<Vec<_>>().join(" ");
    match &d.remote_mta {
        Some(host) if d.reply.is_some() => format!("{host} said: {text}"),
        _ => text,
    }
}

/// A [`Diagnosis`] rebuilt from what the store keeps (the text of `describe`): a reply if it
/// has one, else a local reason. The store does not keep the remote host separately.
fn diagnosis_from_store(status: &RecipientStatus) -> Diagnosis {
    let text = match &status.state {
        RecipientState::Failed { reply, .. } => Some(reply.as_str()),
        _ => status.last_error.as_deref(),
    };
    let Some(text) = text else {
        return Diagnosis::default();
    };
    // `describe` wrote "host said: reply"; split it back.
    let (host, rest) = match text.split_once(" said: ") {
        Some((host, rest)) if !host.contains(' ') => (Some(host.to_owned()), rest),
        _ => (None, text),
    };
    let looks_like_reply = rest.len() >= 4
        && rest.as_bytes()[..3].iter().all(u8::is_ascii_digit)
        && matches!(rest.as_bytes()[3], b' ' | b'-');
    if looks_like_reply {
        Diagnosis {
            remote_mta: host,
            reply: Some(rest.to_owned()),
            ..Diagnosis::default()
        }
    } else {
        Diagnosis {
            local_reason: Some(text.to_owned()),
            ..Diagnosis::default()
        }
    }
}

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;
