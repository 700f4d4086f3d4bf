//! The durable queue: every accepted message's envelope, per-recipient state and body.
//!
//! The promise is Postfix's: a message whose [`Store::append`] returned `Ok` (and so got `250`) is
//! on stable storage and survives a crash, a kill -9 or a power cut. The store is a redb database
//! (one file) with five private tables:
//!
//! | table      | key                  | value                                          |
//! |------------|----------------------|------------------------------------------------|
//! | `messages` | queue id (u64)       | version byte + JSON of envelope, states, size  |
//! | `bodies`   | queue id (u64)       | the message bytes exactly as received          |
//! | `meta`     | name (str)           | u64; `last_queue_id`                           |
//! | `schedule` | (wake secs, queue id)| (); when a message next needs the scheduler   |
//! | `leases`   | queue id (u64)       | (); messages with a leased recipient           |
//!
//! Appends go through one committer thread that batches concurrent callers into one write
//! transaction and one fsync (group commit), so throughput grows with concurrency while each
//! caller still waits for its own fsync. Reads use redb's MVCC read transactions and never block
//! on the committer.

mod committer;
mod error;
mod record;
mod schedule;
mod state;

pub use error::{AppendError, StoreError};
pub use record::{DecodeError, ListFilter, MessageRecord, MessageSummary, RecipientSummary};
pub use schedule::{AdminAction, Lease, Outcome, Settlement};
pub use state::{BadStateKind, RecipientState, RecipientStatus, StateKind, TransitionError};

use crate::envelope::{Envelope, QueueId};
use crate::time::UnixTime;
use prometheus_client::metrics::histogram::Histogram;
use record::StoredRecord;
use redb::{
    Database, DatabaseError, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition,
};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock, mpsc};
use std::thread::JoinHandle;

const MESSAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("messages");
const BODIES: TableDefinition<u64, &[u8]> = TableDefinition::new("bodies");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const SCHEDULE: TableDefinition<(u64, u64), ()> = TableDefinition::new("schedule");
const LEASES: TableDefinition<u64, ()> = TableDefinition::new("leases");
const LAST_QUEUE_ID: &str = "last_queue_id";

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
    /// Observes the duration of each group commit, in seconds.
    pub commit_latency: Option<Histogram>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_batch_messages: 256,
            max_batch_bytes: 32 << 20,
            min_free_bytes: 32 << 20,
            commit_latency: None,
        }
    }
}

/// The durable queue. Cheap to clone; all clones share one database and one committer thread,
/// which stops when the last clone is dropped.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    slot: Arc<DbSlot>,
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

/// The open database, replaceable: redb latches an I/O error (every later call fails with
/// `PreviousIo`), so after ENOSPC the committer closes and reopens it to keep working once space
/// returns. Readers hold the read lock for the length of one operation.
struct DbSlot {
    path: PathBuf,
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
        let db = open_database(&self.path)?;
        *guard = Some(db);
        self.failed.store(false, Ordering::Release);
        Ok(())
    }
}

fn open_database(path: &Path) -> Result<Database, StoreError> {
    let db = Database::create(path).map_err(|source| match source {
        DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => {
            StoreError::Locked {
                path: path.to_owned(),
            }
        }
        source => StoreError::Open {
            path: path.to_owned(),
            source,
        },
    })?;
    Ok(db)
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
        let db = open_database(path)?;
        let last_id = init_tables(&db)?;
        // No worker of this process holds a lease yet: any recorded one belongs to a process that
        // died mid-delivery, and its recipients are due again.
        let released = schedule::release_all_leases(&db)?;
        if released > 0 {
            tracing::info!(released, "released leases left by the previous run");
        }
        let slot = Arc::new(DbSlot {
            path: path.to_owned(),
            db: RwLock::new(Some(db)),
            failed: AtomicBool::new(false),
        });
        let (requests, receiver) = mpsc::channel();
        let committer = committer::spawn(receiver, slot.clone(), options, last_id)?;
        Ok(Store {
            inner: Arc::new(Inner {
                slot,
                requests: Some(requests),
                committer: Some(committer),
            }),
        })
    }

    /// Durably stores `envelope` and `body` (bytes untouched) and returns the new queue id. `Ok`
    /// means fsynced: the caller may answer `250`. Every recipient starts `Queued`.
    ///
    /// Concurrent calls are batched into one transaction and one fsync; if that commit fails,
    /// every caller in the batch gets the error.
    ///
    /// Cancel-safe in the sense that matters: if the future is dropped after the request was
    /// handed to the committer, the message may still be stored (a duplicate at worst, never a
    /// loss, because the caller never said 250).
    pub async fn append(&self, envelope: Envelope, body: Vec<u8>) -> Result<QueueId, AppendError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let requests = self.inner.requests.as_ref().ok_or(AppendError::Closed)?;
        requests
            .send(committer::Request {
                envelope,
                body,
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
        let now = UnixTime::now();
        let limit = limit.unwrap_or(usize::MAX);
        self.inner.slot.with_db(|db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(MESSAGES)?;
            let mut out = Vec::new();
            for entry in table.iter()? {
                if out.len() >= limit {
                    break;
                }
                let (key, value) = entry?;
                let queue_id = QueueId(key.value());
                let record = decode(queue_id, value.value())?;
                let record = MessageRecord::from_stored(queue_id, record);
                if filter.matches(&record, now) {
                    out.push(record.summary(now));
                }
            }
            Ok(out)
        })
    }

    /// The envelope and recipient states of one message.
    pub fn get(&self, queue_id: QueueId) -> Result<Option<MessageRecord>, StoreError> {
        self.inner.slot.with_db(|db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(MESSAGES)?;
            let Some(value) = table.get(queue_id.0)? else {
                return Ok(None);
            };
            let record = decode(queue_id, value.value())?;
            Ok(Some(MessageRecord::from_stored(queue_id, record)))
        })
    }

    /// The body of one message, as received.
    pub fn body(&self, queue_id: QueueId) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.slot.with_db(|db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(BODIES)?;
            Ok(table.get(queue_id.0)?.map(|v| v.value().to_vec()))
        })
    }

    /// Removes a message and its body; `false` if there was none. Durable when it returns.
    pub fn delete(&self, queue_id: QueueId) -> Result<bool, StoreError> {
        self.inner.slot.with_db(|db| {
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            let existed = {
                let mut tables = schedule::Tables::open(&txn)?;
                let mut bodies = txn.open_table(BODIES)?;
                let old = tables
                    .messages
                    .remove(queue_id.0)?
                    .map(|v| v.value().to_vec());
                bodies.remove(queue_id.0)?;
                // A corrupt record has no readable index keys; lease_due drops its dangling
                // schedule entry when it meets it.
                if let Some(Ok(old)) = old.as_deref().map(StoredRecord::decode) {
                    schedule::unindex(&mut tables, queue_id.0, &old)?;
                }
                old.is_some()
            };
            // fsync: a deleted message must not come back after a crash and be delivered twice.
            txn.commit()?;
            Ok(existed)
        })
    }

    /// The number of messages in the queue.
    pub fn count(&self) -> Result<u64, StoreError> {
        self.inner.slot.with_db(|db| {
            let txn = db.begin_read()?;
            Ok(txn.open_table(MESSAGES)?.len()?)
        })
    }
}

fn decode(queue_id: QueueId, bytes: &[u8]) -> Result<StoredRecord, StoreError> {
    StoredRecord::decode(bytes).map_err(|reason| StoreError::Corrupt { queue_id, reason })
}

/// Creates the tables if missing and returns the highest queue id ever handed out, so ids stay
/// unique across restarts even if the clock went back or the newest messages were deleted.
fn init_tables(db: &Database) -> Result<u64, StoreError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    let last = {
        let messages = txn.open_table(MESSAGES)?;
        txn.open_table(BODIES)?;
        txn.open_table(SCHEDULE)?;
        txn.open_table(LEASES)?;
        let meta = txn.open_table(META)?;
        let newest = messages.last()?.map(|(k, _)| k.value()).unwrap_or(0);
        let recorded = meta.get(LAST_QUEUE_ID)?.map(|v| v.value()).unwrap_or(0);
        newest.max(recorded)
    };
    txn.commit()?;
    Ok(last)
}

#[cfg(test)]
mod tests;
