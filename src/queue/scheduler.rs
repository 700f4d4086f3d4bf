//! The scheduler's decisions after an attempt, sans-I/O: the glue hands in the store's record of
//! a message, the outcome of each attempted recipient and the time, and gets back [`Action`]s
//! (store transitions, a DSN to queue, removal) to perform.
//!
//! *Which* recipients are due, and when the next one will be, is not decided here: the store
//! answers that from its durable `schedule` index (`Store::lease_due`), which leases in the same
//! transaction that finds, and releases leases left by a crash when it opens. An in-memory
//! second answer (the scheduler once had `due`, `next_wakeup` and `recover` over listed records)
//! would have to list every queued message to agree with it, and production never ran it, so it
//! is gone: one implementation of "what is due", the one that runs.
//!
//! # Contract with the glue
//!
//! The actions of one call are one unit, in order: `SendDsn` first (build the DSN with
//! [`super::build_dsn`] from the message body and append it, durably, to the store), then the
//! state changes and `Remove` in one store transaction. A crash before that transaction leaves
//! the recipients leased; the store releases them at start and the attempt is repeated, so the
//! worst case is a duplicate delivery or DSN, never a missing one.

use super::dsn::{RecipientReport, ReportOutcome};
use super::{Decision, Policy, should_warn_delay};
use crate::envelope::QueueId;
use crate::status::{DeliveryOutcome, Diagnosis, DiagnosticCode, DiagnosticType, EnhancedStatus};
use crate::store::{MessageRecord, RecipientState, RecipientStatus};
use crate::time::UnixTime;
use rand::Rng;

/// One queued message as the scheduler sees it: the store's record and whether its delay warning
/// went out (the glue passes the record's `delay_warned`; tests vary it on its own).
#[derive(Debug, Clone, Copy)]
pub struct QueuedMessage<'a> {
    /// The store's record: envelope and per-recipient states.
    pub record: &'a MessageRecord,
    /// Whether the delay warning for this message went out already.
    pub delay_warned: bool,
}

/// What the glue should do, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
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
    /// Remember that the delay warning for this message went out (store `MarkDelayWarned`).
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
                                    .as_ref()
                                    .and_then(DiagnosticCode::status)
                                    .is_none()
                            {
                                diagnosis.status = Some(EnhancedStatus::EXPIRED);
                            }
                            // RFC 8689 §5: a message that never found a REQUIRETLS path bounces
                            // with 5.7.30 ("REQUIRETLS support required").
                            if diagnosis.status == Some(EnhancedStatus::new(4, 7, 30)) {
                                diagnosis.status = Some(EnhancedStatus::new(5, 7, 30));
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
        .as_ref()
        .map(|r| r.text.as_str())
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
            // The store keeps the reply's text, not its protocol; replies that start with a
            // three-digit code are SMTP's (a transport with another diagnostic type must store
            // it before its replies can be told apart here).
            reply: Some(DiagnosticCode::new(DiagnosticType::Smtp, rest)),
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
