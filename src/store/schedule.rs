//! What the queue scheduler and the admin operations change: leases, attempt outcomes, hold,
//! release, retry, bounce.
//!
//! Two private index tables keep the scheduler from scanning the whole queue:
//! `schedule` holds `(wake, queue id)` for every message with a recipient that will need work —
//! wake is 0 for a Queued recipient (due now, FIFO by id), `next_at` for Deferred and `until` for
//! Leased (so a lapsed lease is found like a due retry) — and `leases` holds the ids of messages
//! with a leased recipient, so that a restart releases them without a scan. Every record write
//! goes through [`write_record`], which keeps both in step with the record in one transaction.

use super::error::StoreError;
use super::record::{MessageRecord, StoredRecord};
use super::state::{RecipientState, RecipientStatus, StateKind, TransitionError};
use super::{COUNTS, LEASES, MESSAGES, RETRY_CHUNK, SCHEDULE, Store, decode};
use crate::envelope::QueueId;
use crate::time::UnixTime;
use redb::{Database, Durability, ReadableTable, Table, WriteTransaction};
use serde::Serialize;
use std::time::Duration;

/// One recipient handed to a delivery worker until `until`. Nobody else gets it meanwhile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lease {
    /// The message.
    pub queue_id: QueueId,
    /// Index of the recipient in the envelope.
    pub recipient: usize,
    /// Its address.
    pub address: String,
    /// When the lease lapses and the recipient is due again.
    pub until: UnixTime,
    /// Attempts that ended before this one.
    pub attempts: u32,
}

/// How a leased attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The next hop accepted it.
    Delivered,
    /// Temporary failure: try again at `next_at`.
    Deferred {
        /// When the next attempt is due.
        next_at: UnixTime,
        /// The reply or error, kept for the operator and the delay DSN.
        error: String,
    },
    /// Permanent failure: a DSN is owed.
    Failed {
        /// The reply given in the DSN.
        reply: String,
    },
}

/// An operator's action on every recipient of a message for which it is a valid transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminAction {
    /// Due now (Queued or Deferred recipients).
    Retry,
    /// No attempts until released (Queued or Deferred recipients).
    Hold,
    /// Held recipients become due.
    Release,
    /// Fail every recipient not yet final or in flight, with this reason in the DSN.
    Bounce {
        /// The reason.
        reason: String,
    },
}

/// When a message next needs the scheduler, or `None` if no recipient will (all held or final).
pub(crate) fn wake_of(record: &StoredRecord) -> Option<u64> {
    record
        .recipients
        .iter()
        .filter_map(|r| match r.state {
            RecipientState::Queued => Some(0),
            RecipientState::Deferred { next_at } => Some(next_at.0),
            RecipientState::Leased { until } => Some(until.0),
            _ => None,
        })
        .min()
}

fn has_lease(record: &StoredRecord) -> bool {
    record
        .recipients
        .iter()
        .any(|r| matches!(r.state, RecipientState::Leased { .. }))
}

pub(crate) struct Tables<'txn> {
    pub(crate) messages: Table<'txn, u64, &'static [u8]>,
    pub(crate) schedule: Table<'txn, (u64, u64), ()>,
    pub(crate) leases: Table<'txn, u64, ()>,
    pub(crate) counts: Table<'txn, u8, u64>,
    /// Sealed DMTP copies (`sealed.rs`), removed here when their recipient or message goes.
    pub(crate) sealed: Table<'txn, (u64, u32), &'static [u8]>,
}

impl<'txn> Tables<'txn> {
    pub(crate) fn open(txn: &'txn WriteTransaction) -> Result<Tables<'txn>, StoreError> {
        Ok(Tables {
            messages: txn.open_table(MESSAGES)?,
            schedule: txn.open_table(SCHEDULE)?,
            leases: txn.open_table(LEASES)?,
            counts: txn.open_table(COUNTS)?,
            sealed: txn.open_table(super::sealed::SEALED)?,
        })
    }

    /// Moves the recipient counts by state from what `old` had to what `new` has.
    fn count(
        &mut self,
        old: Option<&StoredRecord>,
        new: Option<&StoredRecord>,
    ) -> Result<(), StoreError> {
        let mut delta = [0i64; STATE_KINDS.len()];
        for r in old.iter().flat_map(|o| &o.recipients) {
            delta[kind_index(r.state.kind())] -= 1;
        }
        for r in new.iter().flat_map(|n| &n.recipients) {
            delta[kind_index(r.state.kind())] += 1;
        }
        for (i, d) in delta.into_iter().enumerate() {
            if d == 0 {
                continue;
            }
            let key = i as u8;
            let current = self.counts.get(key)?.map(|v| v.value()).unwrap_or(0);
            let next = current.saturating_add_signed(d);
            self.counts.insert(key, next)?;
        }
        Ok(())
    }
}

/// The states in the order of their keys in the `counts` table.
pub(crate) const STATE_KINDS: [StateKind; 6] = [
    StateKind::Queued,
    StateKind::Leased,
    StateKind::Deferred,
    StateKind::Held,
    StateKind::Delivered,
    StateKind::Failed,
];

pub(crate) fn kind_index(kind: StateKind) -> usize {
    match kind {
        StateKind::Queued => 0,
        StateKind::Leased => 1,
        StateKind::Deferred => 2,
        StateKind::Held => 3,
        StateKind::Delivered => 4,
        StateKind::Failed => 5,
    }
}

/// Recounts recipients by state with one pass over every record: for a store written before the
/// counts table existed. Runs once, at the first writable open that finds no counts.
pub(crate) fn recount(t: &mut Tables<'_>) -> Result<(), StoreError> {
    let mut totals = [0u64; STATE_KINDS.len()];
    for entry in t.messages.iter()? {
        let (_, value) = entry?;
        // A corrupt record counts as nothing; it is reported where it is read.
        if let Ok(record) = StoredRecord::decode(value.value()) {
            for r in &record.recipients {
                totals[kind_index(r.state.kind())] += 1;
            }
        }
    }
    for (i, n) in totals.into_iter().enumerate() {
        t.counts.insert(i as u8, n)?;
    }
    Ok(())
}

/// Writes `new` for `id` and moves its index entries from where `old` had them.
pub(crate) fn write_record(
    t: &mut Tables<'_>,
    id: u64,
    old: Option<&StoredRecord>,
    new: &StoredRecord,
) -> Result<(), StoreError> {
    if let Some(wake) = old.and_then(wake_of) {
        t.schedule.remove((wake, id))?;
    }
    if let Some(wake) = wake_of(new) {
        t.schedule.insert((wake, id), ())?;
    }
    if has_lease(new) {
        t.leases.insert(id, ())?;
    } else if old.is_some_and(has_lease) {
        t.leases.remove(id)?;
    }
    t.messages.insert(id, new.encode().as_slice())?;
    t.count(old, Some(new))?;
    Ok(())
}

/// Removes message `id` with its inline body, index entries and counts. Returns whether there
/// was one, and whether its body is a file (for the caller to unlink after the commit).
pub(crate) fn remove_message(
    t: &mut Tables<'_>,
    bodies: &mut Table<'_, u64, &'static [u8]>,
    id: u64,
) -> Result<(bool, bool), StoreError> {
    let old = t.messages.remove(id)?.map(|v| v.value().to_vec());
    bodies.remove(id)?;
    super::sealed::forget_message(&mut t.sealed, id)?;
    let Some(old) = old else {
        return Ok((false, false));
    };
    match StoredRecord::decode(&old) {
        Ok(old) => {
            unindex(t, id, &old)?;
            Ok((true, old.body_in_file()))
        }
        // A corrupt record has no readable index keys; lease_due drops its dangling schedule
        // entry when it meets it. Its body file, if any, goes at the next open (an orphan).
        Err(_) => Ok((true, false)),
    }
}

/// Removes the index entries and counts of a record being deleted.
pub(crate) fn unindex(t: &mut Tables<'_>, id: u64, old: &StoredRecord) -> Result<(), StoreError> {
    if let Some(wake) = wake_of(old) {
        t.schedule.remove((wake, id))?;
    }
    t.leases.remove(id)?;
    t.count(Some(old), None)?;
    Ok(())
}

fn load(t: &Tables<'_>, id: u64) -> Result<Option<StoredRecord>, StoreError> {
    match t.messages.get(id)? {
        Some(v) => decode(QueueId(id), v.value()).map(Some),
        None => Ok(None),
    }
}

/// One write transaction with fsync; state changes are durable when the call returns, so a
/// delivered recipient is not delivered again after a crash.
fn in_write_txn<R>(
    db: &Database,
    f: impl FnOnce(&mut Tables<'_>) -> Result<R, StoreError>,
) -> Result<R, StoreError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    let result = {
        let mut tables = Tables::open(&txn)?;
        f(&mut tables)?
    };
    txn.commit()?;
    Ok(result)
}

/// Releases every lease: called at open, when no worker of this process can hold one, so a
/// delivery the crash interrupted is retried. Runs before the store is shared.
pub(crate) fn release_all_leases(db: &Database) -> Result<usize, StoreError> {
    in_write_txn(db, |t| {
        let ids: Vec<u64> = t
            .leases
            .iter()?
            .map(|e| e.map(|(k, _)| k.value()))
            .collect::<Result<_, _>>()?;
        let mut released = 0;
        for id in ids {
            t.leases.remove(id)?;
            let Some(old) = load(t, id)? else { continue };
            let mut new = old.clone();
            for r in &mut new.recipients {
                if matches!(r.state, RecipientState::Leased { .. }) {
                    *r = r.clone().release_lease().map_err(StoreError::Transition)?;
                    released += 1;
                }
            }
            write_record(t, id, Some(&old), &new)?;
        }
        Ok(released)
    })
}

impl Store {
    /// Leases up to `max` due recipients (Queued, Deferred whose time has come, or Leased whose
    /// lease lapsed) for `lease_for`, earliest first. A recipient is never leased twice at once.
    pub fn lease_due(
        &self,
        now: UnixTime,
        lease_for: Duration,
        max: usize,
    ) -> Result<Vec<Lease>, StoreError> {
        let until = now.plus(lease_for);
        self.inner.slot.with_db(|db| {
            in_write_txn(db, |t| {
                // Each indexed message has at least one recipient to lease, so `max` keys suffice.
                let keys: Vec<(u64, u64)> = t
                    .schedule
                    .range((0, 0)..=(now.0, u64::MAX))?
                    .take(max)
                    .map(|e| e.map(|(k, _)| k.value()))
                    .collect::<Result<_, _>>()?;
                let mut leases = Vec::new();
                for (wake, id) in keys {
                    if leases.len() >= max {
                        break;
                    }
                    let old = match load(t, id) {
                        Ok(Some(old)) => old,
                        Ok(None) => {
                            // Left behind by a delete that could not decode its record.
                            t.schedule.remove((wake, id))?;
                            continue;
                        }
                        Err(e @ StoreError::Corrupt { .. }) => {
                            // Undeliverable; out of the schedule so it cannot stall the queue.
                            // The record stays for the operator (`queue show` reports it).
                            tracing::error!(queue_id = %QueueId(id), error = %e, "unschedulable");
                            t.schedule.remove((wake, id))?;
                            continue;
                        }
                        Err(e) => return Err(e),
                    };
                    let mut new = old.clone();
                    for (index, r) in new.recipients.iter_mut().enumerate() {
                        if leases.len() >= max {
                            break;
                        }
                        let current = r.clone();
                        let current = match current.state {
                            RecipientState::Leased { until: lapsed } if lapsed <= now => {
                                current.release_lease().map_err(StoreError::Transition)?
                            }
                            _ => current,
                        };
                        if current.is_due(now) {
                            *r = current.lease(now, until).map_err(StoreError::Transition)?;
                            leases.push(Lease {
                                queue_id: QueueId(id),
                                recipient: index,
                                address: r.address.clone(),
                                until,
                                attempts: r.attempts,
                            });
                        } else {
                            *r = current;
                        }
                    }
                    write_record(t, id, Some(&old), &new)?;
                }
                Ok(leases)
            })
        })
    }

    /// Records how the attempt for `lease` ended. `Ok(None)` if the message is gone (deleted by
    /// the operator meanwhile). Refuses with [`StoreError::Transition`] if the recipient is no
    /// longer leased (its lease lapsed and it was released or re-leased).
    pub fn complete(
        &self,
        lease: &Lease,
        now: UnixTime,
        outcome: Outcome,
    ) -> Result<Option<MessageRecord>, StoreError> {
        self.update(lease.queue_id, Some(lease.recipient), |index, r| {
            if index != lease.recipient {
                return Ok(r);
            }
            match r.state {
                // A lapsed and re-leased recipient belongs to the newer lease.
                RecipientState::Leased { until } if until != lease.until => Err(TransitionError {
                    from: r.state.kind(),
                    action: "complete a stale lease of",
                }),
                _ => match outcome.clone() {
                    Outcome::Delivered => r.delivered(now),
                    Outcome::Deferred { next_at, error } => r.defer(next_at, error),
                    Outcome::Failed { reply } => r.fail(now, reply),
                },
            }
        })
    }

    /// Settles many finished attempts in one durable transaction (one fsync for all of them, as
    /// the committer does for appends): recipient outcomes first, then removals of messages
    /// whose every recipient is final. Each item gets its own answer; a stale lease or a message
    /// deleted meanwhile does not spoil the others.
    pub fn settle(
        &self,
        now: UnixTime,
        items: &[Settlement],
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let (answers, files) = self.inner.slot.with_db(|db| {
            let mut txn = db.begin_write()?;
            // fsync: a delivered recipient must not be delivered again after a crash, and a
            // removed message must not come back.
            txn.set_durability(Durability::Immediate)?;
            let mut files = Vec::new();
            let answers = {
                let mut t = Tables::open(&txn)?;
                let mut bodies = txn.open_table(super::BODIES)?;
                let mut answers = Vec::with_capacity(items.len());
                for item in items {
                    answers.push(settle_one(&mut t, &mut bodies, &mut files, now, item)?);
                }
                answers
            };
            txn.commit()?;
            Ok((answers, files))
        })?;
        // Only now that no committed record refers to them.
        let removed = items.iter().any(|i| matches!(i, Settlement::Remove { .. }));
        for id in files {
            self.inner.slot.bodies.remove(id);
        }
        if removed {
            self.inner.slot.compact_if_drained();
        }
        Ok(answers)
    }

    /// Makes every Queued or Deferred recipient in `domain` (case-insensitive; every recipient
    /// if `None`) due now, and returns how many messages have a recipient there. Walks the queue in chunks of a few
    /// thousand messages, one durable transaction each, so memory stays bounded and appends
    /// wait at most one chunk; a message that arrives meanwhile may or may not be included.
    pub fn retry_domain(&self, domain: Option<&str>) -> Result<u64, StoreError> {
        self.retry_domain_with(domain, |_| {})
    }

    /// [`Store::retry_domain`], calling `progress` after each chunk's commit with the messages
    /// matched so far: the admin API streams it, so that a run over a million messages keeps
    /// its caller informed instead of outliving its timeout. Between chunks the write lock is
    /// left free for a moment, so a waiting group commit (an SMTP client waiting for its `250`)
    /// goes first; appends wait at most one chunk.
    pub fn retry_domain_with(
        &self,
        domain: Option<&str>,
        mut progress: impl FnMut(u64),
    ) -> Result<u64, StoreError> {
        let in_domain = |address: &str| {
            domain.is_none_or(|domain| {
                address
                    .rsplit_once('@')
                    .is_some_and(|(_, d)| d.eq_ignore_ascii_case(domain))
            })
        };
        let mut from = 0u64;
        let mut matched = 0u64;
        loop {
            let (done, next, n) = self.inner.slot.with_db(|db| {
                in_write_txn(db, |t| {
                    let mut chunk = Vec::with_capacity(RETRY_CHUNK);
                    for entry in t.messages.range(from..)?.take(RETRY_CHUNK) {
                        let (key, value) = entry?;
                        chunk.push((key.value(), value.value().to_vec()));
                    }
                    let done = chunk.len() < RETRY_CHUNK;
                    let next = chunk.last().map_or(from, |(id, _)| id.saturating_add(1));
                    let mut n = 0;
                    for (id, bytes) in chunk {
                        // Corrupt records are reported by list and show, not here.
                        let Ok(old) = StoredRecord::decode(&bytes) else {
                            continue;
                        };
                        if !old.recipients.iter().any(|r| in_domain(&r.address)) {
                            continue;
                        }
                        n += 1;
                        let mut new = old.clone();
                        for r in &mut new.recipients {
                            if in_domain(&r.address)
                                && let Ok(retried) = r.clone().retry()
                            {
                                *r = retried;
                            }
                        }
                        if new != old {
                            write_record(t, id, Some(&old), &new)?;
                        }
                    }
                    Ok((done, next, n))
                })
            })?;
            matched += n;
            if done || next == u64::MAX {
                return Ok(matched);
            }
            progress(matched);
            from = next;
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }

    /// Applies an operator's action to every recipient of `queue_id` for which it is a valid
    /// transition; others are left as they are. `Ok(None)` if there is no such message.
    pub fn apply(
        &self,
        queue_id: QueueId,
        action: &AdminAction,
        now: UnixTime,
    ) -> Result<Option<MessageRecord>, StoreError> {
        self.apply_to_domain(queue_id, action, now, None)
    }

    /// [`Store::apply`] limited to the recipients in `domain` (case-insensitive) when given:
    /// flushing one destination must not hurry the message's other recipients.
    pub fn apply_to_domain(
        &self,
        queue_id: QueueId,
        action: &AdminAction,
        now: UnixTime,
        domain: Option<&str>,
    ) -> Result<Option<MessageRecord>, StoreError> {
        self.update(queue_id, None, |_, r| {
            if let Some(domain) = domain {
                let in_domain = r
                    .address
                    .rsplit_once('@')
                    .is_some_and(|(_, d)| d.eq_ignore_ascii_case(domain));
                if !in_domain {
                    return Ok(r);
                }
            }
            let step = match action {
                AdminAction::Retry => r.clone().retry(),
                AdminAction::Hold => r.clone().hold(),
                AdminAction::Release => r.clone().release(),
                AdminAction::Bounce { reason } => r.clone().bounce(now, reason.clone()),
            };
            Ok(step.unwrap_or(r))
        })
    }

    /// Rewrites the recipients of one message through `f` in one durable transaction.
    fn update(
        &self,
        queue_id: QueueId,
        required_recipient: Option<usize>,
        f: impl Fn(usize, RecipientStatus) -> Result<RecipientStatus, TransitionError>,
    ) -> Result<Option<MessageRecord>, StoreError> {
        self.inner.slot.with_db(|db| {
            in_write_txn(db, |t| {
                let Some(old) = load(t, queue_id.0)? else {
                    return Ok(None);
                };
                if let Some(recipient) = required_recipient
                    && recipient >= old.recipients.len()
                {
                    return Err(StoreError::NoSuchRecipient {
                        queue_id,
                        recipient,
                    });
                }
                let mut new = old.clone();
                for (index, r) in new.recipients.iter_mut().enumerate() {
                    *r = f(index, r.clone()).map_err(StoreError::Transition)?;
                }
                if new != old {
                    write_record(t, queue_id.0, Some(&old), &new)?;
                }
                Ok(Some(MessageRecord::from_stored(queue_id, new)))
            })
        })
    }
}

/// One finished piece of work for [`Store::settle`].
#[derive(Debug, Clone)]
pub enum Settlement {
    /// How the attempt under `lease` ended.
    Complete {
        /// The lease the attempt ran under.
        lease: Lease,
        /// Its outcome.
        outcome: Outcome,
    },
    /// The delay DSN for this message is queued: do not send another.
    MarkDelayWarned {
        /// The message.
        queue_id: QueueId,
    },
    /// Every recipient is final (and any DSN is queued): delete the message and its body.
    Remove {
        /// The message.
        queue_id: QueueId,
    },
}

/// Applies one settlement inside the caller's transaction. The outer error is the database's
/// (it aborts the batch); the inner one is this item's alone.
fn settle_one(
    t: &mut Tables<'_>,
    bodies: &mut Table<'_, u64, &'static [u8]>,
    files: &mut Vec<u64>,
    now: UnixTime,
    item: &Settlement,
) -> Result<Result<(), StoreError>, StoreError> {
    match item {
        Settlement::Complete { lease, outcome } => {
            let id = lease.queue_id.0;
            let old = match load(t, id) {
                Ok(Some(old)) => old,
                Ok(None) => return Ok(Ok(())),
                Err(e @ StoreError::Corrupt { .. }) => return Ok(Err(e)),
                Err(e) => return Err(e),
            };
            let Some(current) = old.recipients.get(lease.recipient).cloned() else {
                return Ok(Err(StoreError::NoSuchRecipient {
                    queue_id: lease.queue_id,
                    recipient: lease.recipient,
                }));
            };
            let next = match current.state {
                // A lapsed and re-leased recipient belongs to the newer lease.
                RecipientState::Leased { until } if until != lease.until => Err(TransitionError {
                    from: current.state.kind(),
                    action: "complete a stale lease of",
                }),
                _ => match outcome.clone() {
                    Outcome::Delivered => current.delivered(now),
                    Outcome::Deferred { next_at, error } => current.defer(next_at, error),
                    Outcome::Failed { reply } => current.fail(now, reply),
                },
            };
            match next {
                Ok(next) => {
                    if next.state.is_final() {
                        // Its copy will not be sent again.
                        super::sealed::forget(&mut t.sealed, id, lease.recipient)?;
                    }
                    let mut new = old.clone();
                    new.recipients[lease.recipient] = next;
                    write_record(t, id, Some(&old), &new)?;
                    Ok(Ok(()))
                }
                Err(e) => Ok(Err(StoreError::Transition(e))),
            }
        }
        Settlement::MarkDelayWarned { queue_id } => {
            if let Ok(Some(old)) = load(t, queue_id.0) {
                let mut new = old.clone();
                new.delay_warned = true;
                write_record(t, queue_id.0, Some(&old), &new)?;
            }
            Ok(Ok(()))
        }
        Settlement::Remove { queue_id } => {
            let (_, in_file) = remove_message(t, bodies, queue_id.0)?;
            if in_file {
                files.push(queue_id.0);
            }
            Ok(Ok(()))
        }
    }
}
