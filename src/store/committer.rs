//! The group-commit thread: the only writer of new messages.
//!
//! It waits for one request, drains whatever else is already queued (up to the batch caps), writes
//! them all in one redb transaction and commits it with `Durability::Immediate` (one fsync), then
//! answers every caller. A plain thread, not a tokio task, because the commit blocks in fsync.

use super::error::{AppendError, StoreError};
use super::record::StoredRecord;
use super::schedule::{Tables, write_record};
use super::{BODIES, DbSlot, LAST_QUEUE_ID, META, StoreOptions};
use crate::envelope::{Envelope, QueueId};
use redb::Durability;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;

pub(super) struct Request {
    pub(super) envelope: Envelope,
    pub(super) body: Vec<u8>,
    pub(super) reply: oneshot::Sender<Result<QueueId, AppendError>>,
}

/// Bits of a queue id below the microsecond timestamp. 52 bits of microseconds last until 2112.
const COUNTER_BITS: u32 = 12;

/// The next queue id: arrival microseconds in the high bits, and strictly above every id handed
/// out before (`last`), so ids are unique even when the clock steps back or many arrive in one
/// microsecond (the counter then borrows from the next microsecond).
pub(super) fn next_queue_id(last: u64, now_micros: u64) -> u64 {
    let from_clock = now_micros.saturating_mul(1 << COUNTER_BITS);
    from_clock.max(last.saturating_add(1))
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub(super) fn spawn(
    receiver: Receiver<Request>,
    slot: Arc<DbSlot>,
    options: StoreOptions,
    last_id: u64,
) -> Result<JoinHandle<()>, StoreError> {
    let handle = std::thread::Builder::new()
        .name("store-committer".into())
        .spawn(move || run(receiver, slot, options, last_id))?;
    Ok(handle)
}

fn run(receiver: Receiver<Request>, slot: Arc<DbSlot>, options: StoreOptions, mut last_id: u64) {
    while let Ok(first) = receiver.recv() {
        let mut bytes = first.body.len();
        let mut batch = vec![first];
        while batch.len() < options.max_batch_messages && bytes < options.max_batch_bytes {
            match receiver.try_recv() {
                Ok(request) => {
                    bytes += request.body.len();
                    batch.push(request);
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        // A caller that gave up (its session closed) will never say 250; storing its message
        // would only make a duplicate.
        batch.retain(|r| !r.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let bytes = batch.iter().map(|r| r.body.len()).sum();

        let result = commit_batch(&slot, &options, &mut last_id, &batch, bytes);
        match result {
            Ok(ids) => {
                for (request, id) in batch.into_iter().zip(ids) {
                    let _ = request.reply.send(Ok(id));
                }
            }
            Err(error) => {
                tracing::warn!(error = %error, messages = batch.len(), "queue store commit failed");
                for request in batch {
                    let _ = request.reply.send(Err(error.clone()));
                }
            }
        }
    }
}

fn commit_batch(
    slot: &DbSlot,
    options: &StoreOptions,
    last_id: &mut u64,
    batch: &[Request],
    bytes: usize,
) -> Result<Vec<QueueId>, AppendError> {
    // redb refuses every call after an I/O error until the database is reopened; a reopen that
    // failed before (disk still full) is retried here, which is what lets the store work again
    // once space returns.
    slot.reopen_if_failed().map_err(AppendError::from)?;
    if options.min_free_bytes > 0 {
        // An unreadable free-space figure is not a reason to refuse mail; ENOSPC still catches it.
        if let Ok(free) = free_bytes(&slot.path)
            && free < options.min_free_bytes.saturating_add(bytes as u64)
        {
            return Err(AppendError::Full);
        }
    }

    let ids: Vec<QueueId> = batch
        .iter()
        .map(|_| {
            *last_id = next_queue_id(*last_id, now_micros());
            QueueId(*last_id)
        })
        .collect();
    let started = Instant::now();
    let result = slot.with_db(|db| {
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        {
            let mut tables = Tables::open(&txn)?;
            let mut bodies = txn.open_table(BODIES)?;
            let mut meta = txn.open_table(META)?;
            for (request, id) in batch.iter().zip(&ids) {
                let size = request.body.len() as u64;
                let record = StoredRecord::new(request.envelope.clone(), size);
                write_record(&mut tables, id.0, None, &record)?;
                bodies.insert(id.0, request.body.as_slice())?;
            }
            meta.insert(LAST_QUEUE_ID, *last_id)?;
        }
        // fsync before 250: once this returns the senders may drop their copies.
        txn.commit()?;
        Ok(())
    });
    if let Some(histogram) = &options.commit_latency {
        histogram.observe(started.elapsed().as_secs_f64());
    }
    // with_db has already reopened the database if the failure was an I/O error.
    result.map(|()| ids).map_err(AppendError::from)
}

/// Bytes available to an unprivileged writer on the file system holding `path`.
fn free_bytes(path: &std::path::Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    let c_path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: c_path is a valid NUL-terminated string and stat points to writable memory of the
    // right type; statvfs initializes it when it returns 0.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled the struct.
    let stat = unsafe { stat.assume_init() };
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_ids_increase_whatever_the_clock_does() {
        let t = 1_700_000_000_000_000u64;
        let rows = [
            // (last, now_micros, expected)
            (0, t, t << COUNTER_BITS),
            // Same microsecond: the counter bits count up.
            (t << COUNTER_BITS, t, (t << COUNTER_BITS) + 1),
            // Clock stepped back an hour: still above the last id.
            (
                t << COUNTER_BITS,
                t - 3_600_000_000,
                (t << COUNTER_BITS) + 1,
            ),
            // Clock moved on: the counter starts again from zero.
            ((t << COUNTER_BITS) + 5, t + 1, (t + 1) << COUNTER_BITS),
        ];
        for (last, now, want) in rows {
            assert_eq!(next_queue_id(last, now), want, "last {last:x} now {now}");
        }
        // The microsecond timestamp is recoverable from the high bits.
        assert_eq!(next_queue_id(0, t) >> COUNTER_BITS, t);
    }

    #[test]
    fn free_bytes_reads_the_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(&dir.path().join("queue.redb")).unwrap();
        assert!(free > 0);
    }
}
