//! The durable queue: every accepted message's envelope, per-recipient state and body.
//!
//! The promise is Postfix's: a message whose [`Store::append`] returned `Ok` (and so got `250`) is
//! on stable storage and survives a crash, a kill -9 or a power cut. The store is a redb database
//! (one file) with private tables, and a directory of body files beside it:
//!
//! | table      | key                  | value                                              |
//! |------------|----------------------|----------------------------------------------------|
//! | `messages` | queue id (u64)       | version byte + binary record (`codec.rs`) + small body |
//! | `schedule` | (wake secs, queue id)| (); when a message next needs the scheduler       |
//! | `leases`   | queue id (u64)       | (); messages with a leased recipient               |
//! | `counts`   | state (u8)           | recipients in that state, kept by every write      |
//! | `meta`     | name (str)           | u64; `last_queue_id`, `counts_version`             |
//! | `bodies`   | queue id (u64)       | small bodies of records written by release 1 only  |
//! | `sealed_copies` | (queue id, recipient) | a wrapped copy, kept until its recipient settles (`sealed.rs`) |
//! | `dmtp_seen`, `dmtp_seen_by_time` | transfer hash; (time, queue id) | DMTP transfers accepted, for retries (`dedup.rs`) |
//! | `signets`  | name                 | the signet cache (`signets.rs`)                    |
//!
//! ## Layout, and why: what a queued message costs on disk
//!
//! redb keeps each table in a copy-on-write B-tree of 4 KiB pages. A leaf holds as many entries
//! as fit (a u64 key, a 4-byte offset and the value each), and a value larger than a page takes a
//! run of pages rounded up to a power of two. Measured with this redb (4.6), appending in key
//! order in batches, 100,000 values of 1,150 bytes took 1,426 bytes each: leaves are filled
//! (keys arrive in order, so a split leaves the old leaf full), and what is lost is the tail of
//! each page that cannot take one more entry, plus the branch pages and the schedule index. So
//! the cost of a message is set by how few and how large its values are:
//!
//! - **One value per message.** A small body (up to [`StoreOptions::inline_body_max`], 3.5 KiB)
//!   is the tail of its record's value, not a row of its own table: release 1 stored it in a
//!   `bodies` table, so a 1 KiB message was two values in two trees (a 1.1 KiB body takes a third
//!   of a leaf by itself, 1,365 bytes, and the JSON record another 512 in the other tree).
//!   Rewriting the record on a state change rewrites its page either way (copy on write), so
//!   carrying the body along costs no extra page writes.
//! - **A compact record.** The binary record of `codec.rs` is about 70 bytes for one recipient
//!   where the JSON of release 1 was about 440: varints, flag bits, each address once.
//! - **One index entry per message**, in `schedule` (16-byte keys, about 240 to a leaf), and a
//!   `leases` entry only while a recipient is in flight. The counts are six rows in all.
//!
//! A 1 KiB message (about 1,160 bytes as smtp-source sends it) is then one 1.2 KiB value, three
//! to a leaf: about 1,400 bytes with its share of index and branch pages, 1.2x what was
//! received. Values of 2 to 3.5 KiB fit one to a leaf and cost up to 2x; a file would cost the
//! same (a 4 KiB block each), so those sizes are where this layout is weakest.
//!
//! Below 4 GiB redb grows its file by doubling its length; the new space is a hole in a sparse
//! file until pages are written, so the file's length (`ls`, `du -b`) can be up to twice what it
//! holds while the blocks it occupies (`du`, what the file system gives up) follow the data.
//! The disk use that matters, and the one benches/queue-scale.sh compares with the bytes
//! queued, is the blocks allocated; it prints the length too.
//!
//! A body above the threshold is a file of `<name>.bodies/` (see `body.rs`): redb would put it in
//! a run of pages rounded up to a power of two (a 1 MiB body took 2 MiB) and never give the space
//! back to the file system, while a file costs at most one block beyond its bytes and is gone at
//! `unlink`. Chunking large bodies into redb rows was the other choice; it keeps one fsync per
//! batch, but the database file still only grows and a drained queue keeps its peak size, which
//! is the failure an operator notices. The file is written and fsync'd by the appending task (in
//! parallel with the others), the committer fsyncs the directory once per batch and then commits
//! the record naming the file, so "250 after fsync" covers both. Orphans of a crash between the
//! two are deleted at open; a file is unlinked only after the commit that removed its record.
//!
//! Records of release 1 (JSON, small bodies in `bodies`) are still read, and a queue that
//! release left opens and delivers (`tests/store_upgrade.rs`): a record is rewritten in the new
//! encoding at its next state change, its body staying where it was.
//!
//! ## Memory
//!
//! redb's page cache is bounded by [`StoreOptions::cache_bytes`] (redb's own default is 1 GiB,
//! which the process grew into). When the queue drains to empty the database file is compacted,
//! so the space of small bodies goes back to the file system too (large bodies' files go one by
//! one as their messages do). Delivery reads a large body from its file in chunks
//! ([`Store::body_handle`], [`crate::body`]), never whole; the few consumers that need it whole
//! (DSNs, DIME sealing) share a budget of [`crate::body::DEFAULT_WHOLE_BODY_BUDGET`] bytes
//! unless `queue.whole_body_budget` says otherwise ([`StoreOptions::whole_bodies`]). Nothing else here holds per-message state: queue gauges come
//! from the `counts` table and the first record ([`Store::stats`], O(log n)), and operations over
//! many messages ([`Store::retry_domain`]) walk the table in bounded chunks.
//!
//! Appends go through one committer thread that batches concurrent callers into one write
//! transaction and one fsync (group commit), so throughput grows with concurrency while each
//! caller still waits for its own fsync. The committer also enforces `max_messages`
//! ([`Store::append_limited`]) inside that transaction, so concurrent appends cannot overshoot.
//! Reads use redb's MVCC read transactions and never block on the committer.
//! [`StoreReader`] opens the same file read-only for the CLI and never writes to it.

mod body;
mod codec;
mod committer;
mod dedup;
mod error;
mod reader;
mod record;
mod schedule;
mod sealed;
mod signets;
mod state;
mod stream;

pub use committer::Appended;
pub use dedup::DedupKey;
pub use error::{AppendError, StoreError};
pub use reader::{QueueStats, StoreReader};
pub use record::{DecodeError, ListFilter, MessageRecord, MessageSummary, RecipientSummary};
pub use schedule::{AdminAction, Lease, Outcome, Settlement};
pub use signets::StoredSignet;
pub use state::{BadStateKind, RecipientState, RecipientStatus, StateKind, TransitionError};
pub use stream::BodyWriter;

use crate::envelope::{Envelope, QueueId};
use body::BodyDir;
use prometheus_client::metrics::histogram::Histogram;
use record::StoredRecord;
use redb::{
    Builder, Database, DatabaseError, Durability, ReadableDatabase, ReadableTable, TableDefinition,
};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, mpsc};
use std::thread::JoinHandle;

const MESSAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("messages");
const BODIES: TableDefinition<u64, &[u8]> = TableDefinition::new("bodies");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const SCHEDULE: TableDefinition<(u64, u64), ()> = TableDefinition::new("schedule");
const LEASES: TableDefinition<u64, ()> = TableDefinition::new("leases");
const COUNTS: TableDefinition<u8, u64> = TableDefinition::new("counts");
const LAST_QUEUE_ID: &str = "last_queue_id";
/// Present (1) once the `counts` table is kept by every write; absent in older stores.
const COUNTS_VERSION: &str = "counts_version";
/// Messages per write transaction in [`Store::retry_domain`]: bounds its memory and how long
/// it keeps appends waiting. With 4096, a retry over 1,000,000 queued 1 KiB messages took 54 s
/// (about 220 ms a chunk) and a single client's messages waited a median 252 ms (at most 517 ms)
/// for their `250` meanwhile; a quarter of the chunk holds the write lock a quarter as long, for
/// more fsyncs in all (100,000 messages took 3.4 s with 1024). With 1024 at 1,000,000 queued
/// (benches/queue-scale.sh, 2 cores under other load): the retry took 60 s and one client's
/// messages waited a median 50 ms, p99 178 ms, at most 295 ms (15 ms, 91 ms and 205 ms with the
/// queue idle in the same run).
const RETRY_CHUNK: usize = 1024;

/// Tuning of a [`Store`]; [`StoreOptions::default`] suits one machine.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// At most this many messages in one transaction.
    pub max_batch_messages: usize,
    /// Stop adding messages to a batch once its bodies reach this many bytes.
    pub max_batch_bytes: usize,
    /// Refuse appends ([`AppendError::Full`]) when the file system has less than this free (plus
    /// the batch). The reserve lets deletes and state changes, which redb writes copy-on-write,
    /// still succeed when the queue is full; 0 disables the check and relies on ENOSPC alone.
    pub min_free_bytes: u64,
    /// redb's page cache, in bytes: the store's share of the process's memory, whatever the
    /// queue's size. Configured as `queue.store_cache`.
    pub cache_bytes: usize,
    /// Bodies up to this many bytes are kept in the database; larger ones in body files.
    pub inline_body_max: usize,
    /// Observes the duration of each group commit, in seconds.
    pub commit_latency: Option<Histogram>,
    /// The budget that whole reads of body files ([`crate::body::Body::read_all`]) draw on.
    pub whole_bodies: crate::body::WholeBodies,
    /// How long an accepted DMTP transfer is remembered ([`Store::append_dmtp`]): at least as
    /// long as an origin may retry it. `serve` sets `[queue] expire` plus a day.
    pub dedup_retention: std::time::Duration,
}

/// The default of [`StoreOptions::inline_body_max`]: with its record (about 80 bytes for one
/// recipient) such a body still fits one 4 KiB redb page; a value larger than a page would take a
/// run of pages rounded up to a power of two (8 KiB for 4.1 KiB).
pub const DEFAULT_INLINE_BODY_MAX: usize = 3584;

/// The default of [`StoreOptions::cache_bytes`]: with 1,000,000 small messages queued the whole
/// process stays well under 128 MiB (benches/queue-scale.sh measures it).
pub const DEFAULT_CACHE_BYTES: usize = 32 << 20;

/// The default of [`StoreOptions::dedup_retention`]: the default `[queue] expire` (5 days) and a
/// day's margin.
pub const DEFAULT_DEDUP_RETENTION: std::time::Duration = std::time::Duration::from_secs(6 * 86_400);

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_batch_messages: 256,
            max_batch_bytes: 32 << 20,
            min_free_bytes: 32 << 20,
            cache_bytes: DEFAULT_CACHE_BYTES,
            inline_body_max: DEFAULT_INLINE_BODY_MAX,
            commit_latency: None,
            whole_bodies: crate::body::WholeBodies::new(crate::body::DEFAULT_WHOLE_BODY_BUDGET),
            dedup_retention: DEFAULT_DEDUP_RETENTION,
        }
    }
}

/// The durable queue. Cheap to clone; all clones share one database and one committer thread,
/// which stops when the last clone is dropped.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.slot.path)
            .finish_non_exhaustive()
    }
}

struct Inner {
    slot: Arc<DbSlot>,
    ids: Arc<Ids>,
    inline_body_max: usize,
    whole_bodies: crate::body::WholeBodies,
    /// The group-commit thread of [`Store::keep_sealed`].
    sealed: sealed::Writer,
    // Option only so that Drop can close the channel before joining the committer.
    requests: Option<mpsc::Sender<committer::Request>>,
    committer: Option<JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        drop(self.requests.take());
        if let Some(handle) = self.committer.take() {
            // The committer answers what is queued, then sees the closed channel and returns.
            let _ = handle.join();
        }
    }
}

/// Hands out queue ids. Appending tasks take theirs before writing a body file (the file is
/// named by it), so ids are allocated outside the committer.
pub(crate) struct Ids {
    last: AtomicU64,
}

impl Ids {
    fn next(&self) -> u64 {
        let mut last = self.last.load(Ordering::Acquire);
        loop {
            let id = committer::next_queue_id(last, committer::now_micros());
            match self
                .last
                .compare_exchange_weak(last, id, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return id,
                Err(current) => last = current,
            }
        }
    }
}

/// The open database, replaceable: redb latches an I/O error (every later call fails with
/// `PreviousIo`), so after ENOSPC the committer closes and reopens it to keep working once space
/// returns. Readers hold the read lock for the length of one operation.
struct DbSlot {
    path: PathBuf,
    cache_bytes: usize,
    bodies: BodyDir,
    db: RwLock<Option<Database>>,
    failed: AtomicBool,
}

impl DbSlot {
    /// Runs `f` on the open database. An I/O failure marks the handle failed and reopens it
    /// right away, so reads and admin changes recover without waiting for the next append.
    fn with_db<R>(
        &self,
        f: impl FnOnce(&Database) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        if self.failed.load(Ordering::Acquire) {
            // Best effort: if it fails, the read below reports Unavailable.
            let _ = self.reopen_if_failed();
        }
        let result = {
            let guard = self.db.read().unwrap_or_else(PoisonError::into_inner);
            let db = guard.as_ref().ok_or(StoreError::Unavailable)?;
            f(db)
        };
        if let Err(e) = &result
            && e.needs_reopen()
        {
            self.failed.store(true, Ordering::Release);
            if let Err(reopen) = self.reopen_if_failed() {
                tracing::warn!(error = %reopen, "reopening the queue store failed");
            }
        }
        result
    }

    /// If the handle failed (or a reopen failed before), closes it and opens the file again;
    /// redb recovers the file to its last commit. Holding the write lock means no read is running.
    fn reopen_if_failed(&self) -> Result<(), StoreError> {
        // Fast path for every commit: no exclusive lock unless something failed. The flag stays
        // set until a reopen succeeds, so a missing handle always has it set.
        if !self.failed.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut guard = self.db.write().unwrap_or_else(PoisonError::into_inner);
        if guard.is_some() && !self.failed.load(Ordering::Acquire) {
            return Ok(());
        }
        if let Some(old) = guard.take() {
            // Closing a database that saw an I/O error reports that error again; it is known.
            let _ = old.close();
        }
        self.failed.store(true, Ordering::Release);
        let db = open_database(&self.path, self.cache_bytes)?;
        *guard = Some(db);
        self.failed.store(false, Ordering::Release);
        Ok(())
    }
}

/// A drained queue whose database file is larger than this is compacted.
const COMPACT_ABOVE_BYTES: u64 = 4 << 20;

impl DbSlot {
    /// Gives the database file's space back once the queue is empty: redb reuses freed pages
    /// but never shrinks its file, so a burst would otherwise keep its peak size on disk for
    /// good. Compacting an empty database is quick; it runs under the write lock, so no read or
    /// commit is in flight meanwhile. Best effort: a failure only leaves the file as it was.
    fn compact_if_drained(&self) {
        let large = std::fs::metadata(&self.path).is_ok_and(|m| m.len() > COMPACT_ABOVE_BYTES);
        if !large || !matches!(self.with_db(reader::count), Ok(0)) {
            return;
        }
        let mut guard = self.db.write().unwrap_or_else(PoisonError::into_inner);
        let Some(db) = guard.as_mut() else { return };
        // Checked again under the lock: an append may have landed meanwhile (compacting a
        // non-empty queue is still correct, only slower).
        if !matches!(reader::count(db), Ok(0)) {
            return;
        }
        match db.compact() {
            Ok(_) => tracing::info!(
                bytes = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0),
                "queue drained: database file compacted"
            ),
            Err(e) => tracing::warn!(error = %e, "compacting the drained queue failed"),
        }
    }
}

pub(crate) fn open_error(path: &Path, source: DatabaseError) -> StoreError {
    match source {
        DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => {
            StoreError::Locked {
                path: path.to_owned(),
            }
        }
        source => StoreError::Open {
            path: path.to_owned(),
            source,
        },
    }
}

fn open_database(path: &Path, cache_bytes: usize) -> Result<Database, StoreError> {
    Builder::new()
        .set_cache_size(cache_bytes)
        .create(path)
        .map_err(|source| open_error(path, source))
}

impl Store {
    /// Opens (or creates) the store at `path`, a file, with default options.
    ///
    /// Fails with [`StoreError::Locked`] when another process has it open.
    pub fn open(path: &Path, commit_latency: Option<Histogram>) -> Result<Store, StoreError> {
        Store::open_with(
            path,
            StoreOptions {
                commit_latency,
                ..StoreOptions::default()
            },
        )
    }

    /// Opens (or creates) the store at `path` with `options`.
    pub fn open_with(path: &Path, options: StoreOptions) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)?;
        }
        let db = open_database(path, options.cache_bytes)?;
        let bodies = BodyDir::for_database(path);
        bodies.create()?;
        let last_id = init_tables(&db)?;
        // No worker of this process holds a lease yet: any recorded one belongs to a process that
        // died mid-delivery, and its recipients are due again.
        let released = schedule::release_all_leases(&db)?;
        if released > 0 {
            tracing::info!(released, "released leases left by the previous run");
        }
        let orphans = {
            let txn = db.begin_read()?;
            let messages = txn.open_table(MESSAGES)?;
            bodies.remove_orphans(|id| Ok(messages.get(id)?.is_some()))?
        };
        if orphans > 0 {
            tracing::info!(orphans, "removed body files no record refers to");
        }
        let slot = Arc::new(DbSlot {
            path: path.to_owned(),
            cache_bytes: options.cache_bytes,
            bodies,
            db: RwLock::new(Some(db)),
            failed: AtomicBool::new(false),
        });
        let ids = Arc::new(Ids {
            last: AtomicU64::new(last_id),
        });
        let inline_body_max = options.inline_body_max;
        let whole_bodies = options.whole_bodies.clone();
        let (requests, receiver) = mpsc::channel();
        let committer = committer::spawn(receiver, slot.clone(), options)?;
        let sealed = sealed::Writer::spawn(slot.clone())?;
        Ok(Store {
            inner: Arc::new(Inner {
                slot,
                ids,
                inline_body_max,
                whole_bodies,
                sealed,
                requests: Some(requests),
                committer: Some(committer),
            }),
        })
    }

    /// Durably stores `envelope` and `body` (bytes untouched) and returns the new queue id. `Ok`
    /// means fsynced: the caller may answer `250`. Every recipient starts `Queued`. No limit on
    /// the queue's size: for messages the gateway owes (DSNs); SMTP ingress uses
    /// [`Store::append_limited`].
    ///
    /// The body is moved, never copied: a large one is written to its file from this buffer and
    /// the buffer is freed before the commit; a small one is copied once into the database page.
    ///
    /// Concurrent calls are batched into one transaction and one fsync; if that commit fails,
    /// every caller in the batch gets the error.
    ///
    /// Cancel-safe in the sense that matters: if the future is dropped after the request was
    /// handed to the committer, the message may still be stored (a duplicate at worst, never a
    /// loss, because the caller never said 250).
    pub async fn append(&self, envelope: Envelope, body: Vec<u8>) -> Result<QueueId, AppendError> {
        self.submit(envelope, body, None, None)
            .await
            .map(Appended::queue_id)
    }

    /// [`Store::append`], refused with [`AppendError::TooManyMessages`] when the queue already
    /// holds `max_messages`. The check is made by the committer inside the transaction that
    /// stores the message, so concurrent appends never take the queue past the limit.
    pub async fn append_limited(
        &self,
        envelope: Envelope,
        body: Vec<u8>,
        max_messages: u64,
    ) -> Result<QueueId, AppendError> {
        self.submit(envelope, body, Some(max_messages), None)
            .await
            .map(Appended::queue_id)
    }

    /// [`Store::append_limited`] for a DMTP transfer: if a transfer with the same `key`
    /// ([`DedupKey::for_transfer`]) was stored within the retention, nothing is written and the
    /// answer is [`Appended::Seen`] with the first queue id (the origin's retry of a transfer
    /// whose `2xx` it never heard); otherwise the message is stored and the key recorded in the
    /// same transaction and fsync. See `dedup.rs`.
    pub async fn append_dmtp(
        &self,
        envelope: Envelope,
        body: Vec<u8>,
        max_messages: u64,
        key: DedupKey,
    ) -> Result<Appended, AppendError> {
        self.submit(envelope, body, Some(max_messages), Some(key))
            .await
    }

    async fn submit(
        &self,
        envelope: Envelope,
        body: Vec<u8>,
        max_messages: Option<u64>,
        dedup: Option<DedupKey>,
    ) -> Result<Appended, AppendError> {
        if self.inner.requests.is_none() {
            return Err(AppendError::Closed);
        }
        let id = self.inner.ids.next();
        let size = body.len() as u64;
        let body = if body.len() > self.inner.inline_body_max {
            let bodies = self.inner.slot.bodies.clone();
            // fsync blocks: off the runtime. If this future is dropped meanwhile, the pending
            // file is dropped with the task's result and removed.
            let written = tokio::task::spawn_blocking(move || {
                bodies.write(id, &body)?;
                Ok::<_, std::io::Error>(committer::PendingFile::new(bodies, id))
            })
            .await
            .map_err(|_| AppendError::Closed)?;
            committer::Body::File(written.map_err(StoreError::Io)?)
        } else {
            committer::Body::Inline(body)
        };
        self.submit_request(id, envelope, size, body, max_messages, dedup)
            .await
    }

    /// Hands one message, its body in place, to the committer and waits for the commit.
    async fn submit_request(
        &self,
        id: u64,
        envelope: Envelope,
        size: u64,
        body: committer::Body,
        max_messages: Option<u64>,
        dedup: Option<DedupKey>,
    ) -> Result<Appended, AppendError> {
        let requests = self.inner.requests.as_ref().ok_or(AppendError::Closed)?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        requests
            .send(committer::Request {
                id,
                envelope,
                size,
                body,
                max_messages,
                dedup,
                reply,
            })
            .map_err(|_| AppendError::Closed)?;
        answer.await.map_err(|_| AppendError::Closed)?
    }

    /// Messages matching `filter`, in queue-id (arrival) order, at most `limit` (all if `None`).
    /// Reads a snapshot; does not read bodies.
    pub fn list(
        &self,
        filter: &ListFilter,
        limit: Option<usize>,
    ) -> Result<Vec<MessageSummary>, StoreError> {
        self.inner
            .slot
            .with_db(|db| reader::list(db, filter, limit))
    }

    /// The envelope and recipient states of one message.
    pub fn get(&self, queue_id: QueueId) -> Result<Option<MessageRecord>, StoreError> {
        self.inner.slot.with_db(|db| reader::get(db, queue_id))
    }

    /// The body of one message, as received, in one buffer of its size.
    pub fn body(&self, queue_id: QueueId) -> Result<Option<Vec<u8>>, StoreError> {
        let bodies = &self.inner.slot.bodies;
        self.inner
            .slot
            .with_db(|db| reader::body(db, bodies, queue_id))
    }

    /// The body of one message as a reader, for a consumer that streams it: a large body is
    /// read from its file as the reader is, never whole.
    pub fn body_reader(
        &self,
        queue_id: QueueId,
    ) -> Result<Option<Box<dyn std::io::Read + Send>>, StoreError> {
        let bodies = &self.inner.slot.bodies;
        self.inner
            .slot
            .with_db(|db| reader::body_reader(db, bodies, queue_id))
    }

    /// The body of one message for delivery: a small one in memory, a large one as its open
    /// file, read in chunks as it is sent (see [`crate::body`]). `None` without a record.
    pub fn body_handle(&self, queue_id: QueueId) -> Result<Option<crate::body::Body>, StoreError> {
        let bodies = &self.inner.slot.bodies;
        let budget = &self.inner.whole_bodies;
        self.inner
            .slot
            .with_db(|db| reader::body_handle(db, bodies, budget, queue_id))
    }

    /// Removes a message and its body; `false` if there was none. Durable when it returns.
    pub fn delete(&self, queue_id: QueueId) -> Result<bool, StoreError> {
        let (existed, in_file) = self.inner.slot.with_db(|db| {
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            let removed = {
                let mut tables = schedule::Tables::open(&txn)?;
                let mut bodies = txn.open_table(BODIES)?;
                schedule::remove_message(&mut tables, &mut bodies, queue_id.0)?
            };
            // fsync: a deleted message must not come back after a crash and be delivered twice.
            txn.commit()?;
            Ok(removed)
        })?;
        if in_file {
            self.inner.slot.bodies.remove(queue_id.0);
        }
        if existed {
            self.inner.slot.compact_if_drained();
        }
        Ok(existed)
    }

    /// The number of messages in the queue.
    pub fn count(&self) -> Result<u64, StoreError> {
        self.inner.slot.with_db(reader::count)
    }

    /// Messages, recipients by state and the oldest arrival, for the queue gauges. O(log n) in
    /// the queue's size: read from the counts the writes keep, not from the records.
    pub fn stats(&self) -> Result<QueueStats, StoreError> {
        self.inner.slot.with_db(reader::stats)
    }
}

fn decode(queue_id: QueueId, bytes: &[u8]) -> Result<StoredRecord, StoreError> {
    StoredRecord::decode(bytes).map_err(|reason| StoreError::Corrupt { queue_id, reason })
}

/// Creates the tables if missing, counts recipients by state in a store that predates the
/// counts, and returns the highest queue id ever handed out, so ids stay unique across restarts
/// even if the clock went back or the newest messages were deleted.
fn init_tables(db: &Database) -> Result<u64, StoreError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    let last = {
        let mut tables = schedule::Tables::open(&txn)?;
        txn.open_table(BODIES)?;
        let mut meta = txn.open_table(META)?;
        if meta.get(COUNTS_VERSION)?.is_none() {
            schedule::recount(&mut tables)?;
            meta.insert(COUNTS_VERSION, 1)?;
        }
        let newest = tables.messages.last()?.map(|(k, _)| k.value()).unwrap_or(0);
        let recorded = meta.get(LAST_QUEUE_ID)?.map(|v| v.value()).unwrap_or(0);
        newest.max(recorded)
    };
    txn.commit()?;
    Ok(last)
}

#[cfg(test)]
mod once_tests;
#[cfg(test)]
mod tests;
