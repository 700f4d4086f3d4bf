//! Reads of the store, shared by the writable [`Store`](super::Store) and the read-only
//! [`StoreReader`] the CLI opens on a stopped server's queue.
//!
//! [`StoreReader`] opens the database with redb's read-only open: it takes no writer lock, runs no
//! recovery, releases no lease and removes no orphan file, so looking at a queue never changes
//! what the next `dimegate serve` finds. A store that was not closed cleanly needs the recovery
//! only a writable open does; the read-only open refuses it with [`StoreError::NeedsRecovery`].

use super::body::BodyDir;
use super::error::StoreError;
use super::record::{ListFilter, MessageRecord, MessageSummary, StoredBody};
use super::schedule::STATE_KINDS;
use super::state::StateKind;
use super::{BODIES, COUNTS, COUNTS_VERSION, MESSAGES, META, decode, open_error};
use crate::envelope::QueueId;
use crate::time::UnixTime;
use redb::{
    Builder, DatabaseError, ReadOnlyDatabase, ReadableDatabase, ReadableTable,
    ReadableTableMetadata,
};
use std::io::Read;
use std::path::Path;

/// What the queue gauges show, read in O(log n) of the queue's size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueStats {
    /// Messages in the queue.
    pub messages: u64,
    /// Recipients in each state, every state listed (zero included).
    pub recipients: [(StateKind, u64); 6],
    /// Arrival of the oldest message, if any.
    pub oldest_arrival: Option<UnixTime>,
}

pub(super) fn list(
    db: &impl ReadableDatabase,
    filter: &ListFilter,
    limit: Option<usize>,
) -> Result<Vec<MessageSummary>, StoreError> {
    let now = UnixTime::now();
    let limit = limit.unwrap_or(usize::MAX);
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
}

pub(super) fn get(
    db: &impl ReadableDatabase,
    queue_id: QueueId,
) -> Result<Option<MessageRecord>, StoreError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(MESSAGES)?;
    let Some(value) = table.get(queue_id.0)? else {
        return Ok(None);
    };
    let record = decode(queue_id, value.value())?;
    Ok(Some(MessageRecord::from_stored(queue_id, record)))
}

/// Where a body is, as [`locate`] found it.
enum Located {
    /// Read from the record's own value (small, at most `inline_body_max`).
    Inline(Vec<u8>),
    /// A row of the legacy `bodies` table, read in the same snapshot as the record.
    Table(Vec<u8>),
    /// A file of the body directory.
    File,
}

/// Where the body of `queue_id` is: `None` without a record. A record that does not decode may
/// still have a body for the operator to rescue, a row of `bodies` or a file; a body inline in a
/// damaged record is not told apart from it, and the record's error is returned.
fn locate(
    db: &impl ReadableDatabase,
    bodies: &BodyDir,
    queue_id: QueueId,
) -> Result<Option<Located>, StoreError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(MESSAGES)?;
    let Some(value) = table.get(queue_id.0)? else {
        return Ok(None);
    };
    let place = decode(queue_id, value.value()).map(|r| r.body);
    let from_table = || -> Result<Option<Vec<u8>>, StoreError> {
        Ok(txn
            .open_table(BODIES)?
            .get(queue_id.0)?
            .map(|v| v.value().to_vec()))
    };
    Ok(Some(match place {
        Ok(StoredBody::Inline(b)) => Located::Inline(b),
        Ok(StoredBody::File) => Located::File,
        Ok(StoredBody::Table) => {
            Located::Table(from_table()?.ok_or(StoreError::MissingBody { queue_id })?)
        }
        Err(e) => match from_table()? {
            Some(b) => Located::Table(b),
            None if bodies.exists(queue_id.0) => Located::File,
            None => return Err(e),
        },
    }))
}

fn missing_body(queue_id: QueueId, e: std::io::Error) -> StoreError {
    if e.kind() == std::io::ErrorKind::NotFound {
        StoreError::MissingBody { queue_id }
    } else {
        StoreError::Io(e)
    }
}

pub(super) fn body(
    db: &impl ReadableDatabase,
    bodies: &BodyDir,
    queue_id: QueueId,
) -> Result<Option<Vec<u8>>, StoreError> {
    match locate(db, bodies, queue_id)? {
        None => Ok(None),
        Some(Located::Inline(b) | Located::Table(b)) => Ok(Some(b)),
        // The file is unlinked only after a commit removing its record, so a missing file here
        // means the message was removed meanwhile or is damaged.
        Some(Located::File) => match bodies.read(queue_id.0) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if get(db, queue_id)?.is_none() {
                    Ok(None)
                } else {
                    Err(StoreError::MissingBody { queue_id })
                }
            }
            Err(e) => Err(StoreError::Io(e)),
        },
    }
}

pub(super) fn body_reader(
    db: &impl ReadableDatabase,
    bodies: &BodyDir,
    queue_id: QueueId,
) -> Result<Option<Box<dyn Read + Send>>, StoreError> {
    match locate(db, bodies, queue_id)? {
        None => Ok(None),
        Some(Located::Inline(b) | Located::Table(b)) => Ok(Some(Box::new(std::io::Cursor::new(b)))),
        Some(Located::File) => {
            let file = bodies
                .open(queue_id.0)
                .map_err(|e| missing_body(queue_id, e))?;
            Ok(Some(Box::new(std::io::BufReader::new(file))))
        }
    }
}

pub(super) fn body_handle(
    db: &impl ReadableDatabase,
    bodies: &BodyDir,
    budget: &crate::body::WholeBodies,
    queue_id: QueueId,
) -> Result<Option<crate::body::Body>, StoreError> {
    use crate::body::{Body, BodyFile};
    match locate(db, bodies, queue_id)? {
        None => Ok(None),
        Some(Located::Inline(b) | Located::Table(b)) => Ok(Some(Body::Inline(b))),
        Some(Located::File) => match bodies.open(queue_id.0) {
            Ok(file) => {
                let found = file.metadata()?.len();
                // A body file cut short (a damaged disk, an operator's mistake) must not go out
                // as a shorter message.
                let Some(record) = get(db, queue_id)? else {
                    return Ok(None);
                };
                if found != record.size {
                    return Err(StoreError::BodyLength {
                        queue_id,
                        recorded: record.size,
                        found,
                    });
                }
                Ok(Some(Body::File(BodyFile::new(file, found, budget.clone()))))
            }
            // As in `body`: removed meanwhile, or damaged.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if get(db, queue_id)?.is_none() {
                    Ok(None)
                } else {
                    Err(StoreError::MissingBody { queue_id })
                }
            }
            Err(e) => Err(StoreError::Io(e)),
        },
    }
}

pub(super) fn count(db: &impl ReadableDatabase) -> Result<u64, StoreError> {
    let txn = db.begin_read()?;
    Ok(txn.open_table(MESSAGES)?.len()?)
}

pub(super) fn stats(db: &impl ReadableDatabase) -> Result<QueueStats, StoreError> {
    let txn = db.begin_read()?;
    let messages = txn.open_table(MESSAGES)?;
    let counted = txn
        .open_table(META)?
        .get(COUNTS_VERSION)?
        .is_some_and(|v| v.value() >= 1);
    let mut recipients = STATE_KINDS.map(|k| (k, 0u64));
    if counted {
        let counts = txn.open_table(COUNTS)?;
        for (i, slot) in recipients.iter_mut().enumerate() {
            slot.1 = counts.get(i as u8)?.map(|v| v.value()).unwrap_or(0);
        }
    } else {
        // Only a read-only look at a store last written by an older release gets here.
        for entry in messages.iter()? {
            let (key, value) = entry?;
            if let Ok(record) = decode(QueueId(key.value()), value.value()) {
                for r in &record.recipients {
                    recipients[super::schedule::kind_index(r.state.kind())].1 += 1;
                }
            }
        }
    }
    // Queue ids grow with arrival time, so the first record is the oldest message.
    let oldest_arrival = match messages.first()? {
        Some((key, value)) => decode(QueueId(key.value()), value.value())
            .ok()
            .map(|r| UnixTime(r.envelope.arrival_unix)),
        None => None,
    };
    Ok(QueueStats {
        messages: messages.len()?,
        recipients,
        oldest_arrival,
    })
}

/// A read-only view of a store no process is running: for `dimegate queue list` and `show`.
pub struct StoreReader {
    db: ReadOnlyDatabase,
    bodies: BodyDir,
}

impl StoreReader {
    /// Opens the store at `path` read-only. [`StoreError::Locked`] when a server has it open,
    /// [`StoreError::NeedsRecovery`] when it was not closed cleanly.
    pub fn open(path: &Path) -> Result<StoreReader, StoreError> {
        let db = Builder::new()
            // A look at the queue needs little cache; the open must not cost what the server's does.
            .set_cache_size(4 << 20)
            .open_read_only(path)
            .map_err(|e| match e {
                DatabaseError::RepairAborted => StoreError::NeedsRecovery {
                    path: path.to_owned(),
                },
                e => open_error(path, e),
            })?;
        Ok(StoreReader {
            db,
            bodies: BodyDir::for_database(path),
        })
    }

    /// As [`Store::list`](super::Store::list).
    pub fn list(
        &self,
        filter: &ListFilter,
        limit: Option<usize>,
    ) -> Result<Vec<MessageSummary>, StoreError> {
        list(&self.db, filter, limit)
    }

    /// As [`Store::get`](super::Store::get).
    pub fn get(&self, queue_id: QueueId) -> Result<Option<MessageRecord>, StoreError> {
        get(&self.db, queue_id)
    }

    /// As [`Store::body`](super::Store::body).
    pub fn body(&self, queue_id: QueueId) -> Result<Option<Vec<u8>>, StoreError> {
        body(&self.db, &self.bodies, queue_id)
    }

    /// As [`Store::count`](super::Store::count).
    pub fn count(&self) -> Result<u64, StoreError> {
        count(&self.db)
    }

    /// As [`Store::stats`](super::Store::stats).
    pub fn stats(&self) -> Result<QueueStats, StoreError> {
        stats(&self.db)
    }
}
