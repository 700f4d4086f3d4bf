//! The group-commit thread: the only writer of new messages.
//!
//! It waits for one request, drains whatever else is already queued (up to the batch caps), writes
//! them all in one redb transaction and commits it with `Durability::Immediate` (one fsync), then
//! answers every caller. A plain thread, not a tokio task, because the commit blocks in fsync.

use super::body::BodyDir;
use super::dedup::{DedupKey, PRUNE_MIN, SeenTables};
use super::error::{AppendError, StoreError};
use super::record::{StoredBody, StoredRecord};
use super::schedule::{Tables, write_record};
use super::{DbSlot, LAST_QUEUE_ID, MESSAGES, META, StoreOptions};
use crate::envelope::{Envelope, QueueId};
use redb::{Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;

pub(super) struct Request {
    /// Allocated by the appending task (a body file is named by it).
    pub(super) id: u64,
    pub(super) envelope: Envelope,
    pub(super) size: u64,
    pub(super) body: Body,
    /// Refuse if the queue already holds this many messages.
    pub(super) max_messages: Option<u64>,
    /// A DMTP transfer: store it only if this key was not stored before (`dedup.rs`).
    pub(super) dedup: Option<DedupKey>,
    pub(super) reply: oneshot::Sender<Result<Appended, AppendError>>,
}

/// How an append ended well.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Stored under this new queue id.
    Stored(QueueId),
    /// A DMTP transfer with these bytes was stored before, under this queue id; nothing new was
    /// written (the message may have been delivered since).
    Seen(QueueId),
}

impl Appended {
    /// The queue id the message is (or was) stored under: the txid to answer with.
    pub fn queue_id(self) -> QueueId {
        match self {
            Appended::Stored(id) | Appended::Seen(id) => id,
        }
    }
}

/// Where a request's body is on its way to the commit.
pub(super) enum Body {
    /// Small: written into the record's own value by the commit.
    Inline(Vec<u8>),
    /// Large: already in its file, fsync'd.
    File(PendingFile),
}

/// A body file not yet referred to by a committed record. Dropped unkept (the append failed, was
/// refused or abandoned), it removes the file; kept, it leaves the file to its record.
pub(super) struct PendingFile {
    bodies: BodyDir,
    id: u64,
    keep: bool,
}

impl PendingFile {
    pub(super) fn new(bodies: BodyDir, id: u64) -> PendingFile {
        PendingFile {
            bodies,
            id,
            keep: false,
        }
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if !self.keep {
            self.bodies.remove(self.id);
        }
    }
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

pub(super) fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub(super) fn spawn(
    receiver: Receiver<Request>,
    slot: Arc<DbSlot>,
    options: StoreOptions,
) -> Result<JoinHandle<()>, StoreError> {
    let handle = std::thread::Builder::new()
        .name("store-committer".into())
        .spawn(move || run(receiver, slot, options))?;
    Ok(handle)
}

fn inline_len(r: &Request) -> usize {
    match &r.body {
        Body::Inline(b) => b.len(),
        Body::File(_) => 0,
    }
}

fn run(receiver: Receiver<Request>, slot: Arc<DbSlot>, options: StoreOptions) {
    while let Ok(first) = receiver.recv() {
        // A file body is on disk already; only inline bytes make the transaction big.
        let mut bytes = inline_len(&first);
        let mut batch = vec![first];
        while batch.len() < options.max_batch_messages && bytes < options.max_batch_bytes {
            match receiver.try_recv() {
                Ok(request) => {
                    bytes += inline_len(&request);
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
        let bytes = batch.iter().map(inline_len).sum();

        match commit_batch(&slot, &options, &mut batch, bytes) {
            Ok(answers) => {
                for (request, answer) in batch.into_iter().zip(answers) {
                    // A refused request's file goes before its answer, so a caller that sees
                    // the refusal never sees the file.
                    let Request { reply, body, .. } = request;
                    drop(body);
                    let _ = reply.send(answer);
                }
            }
            Err(error) => {
                tracing::warn!(error = %error, messages = batch.len(), "queue store commit failed");
                keep_files_if_committed(&slot, &mut batch);
                for request in batch {
                    let _ = request.reply.send(Err(error.clone()));
                }
            }
        }
    }
}

/// After a failed commit: a commit error does not always mean nothing was written (an fsync can
/// fail after the data reached the disk), and a stored record must keep its body file. Any file
/// whose record can be read back, or whose fate cannot be told, is kept; the open after the next
/// restart removes it if no record refers to it.
fn keep_files_if_committed(slot: &DbSlot, batch: &mut [Request]) {
    let ids: Vec<u64> = batch
        .iter()
        .filter(|r| matches!(r.body, Body::File(_)))
        .map(|r| r.id)
        .collect();
    if ids.is_empty() {
        return;
    }
    let present = slot.with_db(|db| {
        let txn = db.begin_read()?;
        let messages = txn.open_table(MESSAGES)?;
        ids.iter()
            .map(|&id| Ok(messages.get(id)?.is_some()))
            .collect::<Result<Vec<bool>, StoreError>>()
    });
    let mut present = present.ok().map(|p| p.into_iter());
    for request in batch.iter_mut() {
        if let Body::File(file) = &mut request.body {
            let stored = present.as_mut().map_or(Some(true), |p| p.next());
            file.keep = stored.unwrap_or(true);
        }
    }
}

/// Commits the batch: one answer per request (refused ones by `max_messages`), or one error for
/// the whole batch.
fn commit_batch(
    slot: &DbSlot,
    options: &StoreOptions,
    batch: &mut [Request],
    bytes: usize,
) -> Result<Vec<Result<Appended, AppendError>>, AppendError> {
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
    // The files' contents are fsync'd; their names become durable here, before any record
    // naming them can be.
    if batch.iter().any(|r| matches!(r.body, Body::File(_))) {
        slot.bodies
            .sync_dir()
            .map_err(|e| AppendError::from(StoreError::Io(e)))?;
    }

    let started = Instant::now();
    let result = slot.with_db(|db| {
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        let answers = {
            let mut tables = Tables::open(&txn)?;
            let mut meta = txn.open_table(META)?;
            // Exact: the committer is the only writer of new records, and this transaction
            // holds the write lock, so nothing can add a message between count and insert.
            let mut queued = tables.messages.len()?;
            let mut last = meta.get(LAST_QUEUE_ID)?.map(|v| v.value()).unwrap_or(0);
            let mut answers = Vec::with_capacity(batch.len());
            // Opened only for a batch with a DMTP transfer in it.
            let mut seen = match batch.iter().any(|r| r.dedup.is_some()) {
                true => Some(SeenTables::open(&txn)?),
                false => None,
            };
            let now = now_micros() / 1_000_000;
            let mut recorded = 0;
            for request in batch.iter_mut() {
                if let (Some(key), Some(seen)) = (&request.dedup, &seen)
                    && let Some(first) = seen.get(key)?
                {
                    // A retry of a transfer we accepted: the origin never heard our 2xx.
                    answers.push(Ok(Appended::Seen(QueueId(first))));
                    continue;
                }
                if let Some(max) = request.max_messages
                    && queued >= max
                {
                    answers.push(Err(AppendError::TooManyMessages { max }));
                    continue;
                }
                // The transaction runs once: an inline body is moved into its record, not copied.
                let body = match &mut request.body {
                    Body::Inline(b) => StoredBody::Inline(std::mem::take(b)),
                    Body::File(_) => StoredBody::File,
                };
                let envelope = request.envelope.clone();
                let record = StoredRecord::new(envelope, request.size, body);
                write_record(&mut tables, request.id, None, &record)?;
                if let (Some(key), Some(seen)) = (&request.dedup, &mut seen) {
                    // Same transaction as the record: seen exactly when stored.
                    seen.insert(key, request.id, now)?;
                    recorded += 1;
                }
                queued += 1;
                last = last.max(request.id);
                answers.push(Ok(Appended::Stored(QueueId(request.id))));
            }
            if let Some(seen) = &mut seen {
                let before = now.saturating_sub(options.dedup_retention.as_secs());
                seen.prune(before, PRUNE_MIN.max(2 * recorded))?;
            }
            meta.insert(LAST_QUEUE_ID, last)?;
            answers
        };
        // fsync before 250: once this returns the senders may drop their copies.
        txn.commit()?;
        Ok(answers)
    });
    if let Some(histogram) = &options.commit_latency {
        histogram.observe(started.elapsed().as_secs_f64());
    }
    // with_db has already reopened the database if the failure was an I/O error.
    let answers = result.map_err(AppendError::from)?;
    for (request, answer) in batch.iter_mut().zip(&answers) {
        if let (Body::File(file), Ok(Appended::Stored(_))) = (&mut request.body, answer) {
            file.keep = true;
        }
    }
    Ok(answers)
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
