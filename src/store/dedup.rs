//! The receiving side of exactly-once over DMTP: which sealed transfers this store has already
//! accepted, so that an origin's retry of one it never heard our `2xx` for is answered with the
//! first txid instead of being queued (and delivered) a second time.
//!
//! A retry is recognized by its bytes: the sending side seals each recipient's copy once and
//! keeps it until the recipient settles (`sealed.rs`), so every attempt of one transfer carries
//! identical bytes. The key is [`DedupKey::for_transfer`], SHA-256 over the origin domain and the
//! sealed message, truncated to 128 bits: the origin is part of it so that one origin can never
//! make us drop another's message, and within one origin a collision would need 2^64 work on
//! messages the origin signed itself.
//!
//! Two tables, written in the committer's transaction that stores the message (so "queued" and
//! "recorded as seen" are one fact, and two concurrent identical transfers cannot both be
//! queued):
//!
//! | table          | key                       | value                       |
//! |----------------|---------------------------|-----------------------------|
//! | `dmtp_seen`    | key (16 bytes)            | (queue id = txid, accepted at unix secs) |
//! | `dmtp_seen_by_time` | (accepted at, queue id) | key                      |
//!
//! An entry is kept for [`StoreOptions::dedup_retention`](super::StoreOptions) after it was
//! accepted (`[queue] expire` plus a day when serving: an origin running our defaults gives up
//! on a message after `expire`, so it never retries later) and pruned by the committer, oldest
//! first, in each commit that stores a DMTP transfer, a bounded number at a time (twice what the
//! commit added, at least [`PRUNE_MIN`]): pruning keeps pace with any accept rate and never makes
//! one commit long. The tables therefore hold at most accept rate x retention entries (they stop
//! shrinking when transfers stop arriving, and stop growing too). An origin that retries longer
//! than our retention may get a second copy queued: at-least-once, never a loss.
//!
//! Cost per accepted message: 64 bytes of keys and values (16 + 16 in each table) plus redb's
//! per-entry and page overhead: 200,000 entries took 97 bytes each of allocated disk (redb 4.6,
//! measured once when this was written; random keys leave `dmtp_seen`'s leaves part-filled). At
//! 10 DMTP messages a second and the 6-day default retention that is about 5.2 million entries,
//! some 500 MB; at one a second, 50 MB. It is written in the same transaction and fsync as the
//! message, so it costs no extra sync, and one SHA-256 pass over the sealed bytes. An entry
//! outlives the message it names: a retry after delivery still gets the original txid.

use super::error::StoreError;
use redb::{ReadableTable, Table, TableDefinition};
use sha2::{Digest, Sha256};

pub(super) const SEEN: TableDefinition<&[u8; 16], (u64, u64)> = TableDefinition::new("dmtp_seen");
pub(super) const SEEN_BY_TIME: TableDefinition<(u64, u64), &[u8; 16]> =
    TableDefinition::new("dmtp_seen_by_time");

/// Entries pruned per commit at least, whatever the commit added.
pub(super) const PRUNE_MIN: usize = 64;

/// What identifies one sealed DMTP transfer across retries; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DedupKey([u8; 16]);

impl DedupKey {
    /// The key of `sealed` (the D/MIME bytes as transferred) from `origin` (MAIL's domain,
    /// compared case-insensitively).
    pub fn for_transfer(origin: &str, sealed: &[u8]) -> DedupKey {
        let mut hash = Sha256::new();
        hash.update(b"dimegate dmtp transfer v1\0");
        hash.update(origin.to_ascii_lowercase().as_bytes());
        hash.update([0]);
        hash.update(sealed);
        let digest = hash.finalize();
        let mut key = [0u8; 16];
        key.copy_from_slice(&digest[..16]);
        DedupKey(key)
    }

    #[cfg(test)]
    pub(super) fn from_bytes(bytes: [u8; 16]) -> DedupKey {
        DedupKey(bytes)
    }
}

/// The two tables, open in one write transaction.
pub(super) struct SeenTables<'txn> {
    seen: Table<'txn, &'static [u8; 16], (u64, u64)>,
    by_time: Table<'txn, (u64, u64), &'static [u8; 16]>,
}

impl<'txn> SeenTables<'txn> {
    pub(super) fn open(txn: &'txn redb::WriteTransaction) -> Result<SeenTables<'txn>, StoreError> {
        Ok(SeenTables {
            seen: txn.open_table(SEEN)?,
            by_time: txn.open_table(SEEN_BY_TIME)?,
        })
    }

    /// The queue id a transfer with `key` was stored under, if it was.
    pub(super) fn get(&self, key: &DedupKey) -> Result<Option<u64>, StoreError> {
        Ok(self.seen.get(&key.0)?.map(|v| v.value().0))
    }

    /// Records that `key` was stored as `queue_id` at `now` (unix seconds).
    pub(super) fn insert(
        &mut self,
        key: &DedupKey,
        queue_id: u64,
        now: u64,
    ) -> Result<(), StoreError> {
        self.seen.insert(&key.0, (queue_id, now))?;
        self.by_time.insert((now, queue_id), &key.0)?;
        Ok(())
    }

    /// Removes up to `max` entries accepted before `before` (unix seconds), oldest first, and
    /// returns how many it removed.
    pub(super) fn prune(&mut self, before: u64, max: usize) -> Result<usize, StoreError> {
        let mut removed = 0;
        while removed < max {
            let Some(entry) = self.by_time.first()? else {
                break;
            };
            let ((at, queue_id), key) = (entry.0.value(), *entry.1.value());
            drop(entry);
            if at >= before {
                break;
            }
            self.by_time.remove((at, queue_id))?;
            // The same key accepted again later (after an earlier prune) has a newer entry.
            let current = self.seen.get(&key)?.map(|v| v.value());
            if current == Some((queue_id, at)) {
                self.seen.remove(&key)?;
            }
            removed += 1;
        }
        Ok(removed)
    }
}

/// Entries in the table, for tests and the store's own checks.
#[cfg(test)]
pub(super) fn len(db: &redb::Database) -> Result<u64, StoreError> {
    use redb::{ReadableDatabase, ReadableTableMetadata};
    let txn = db.begin_read()?;
    let seen = match txn.open_table(SEEN) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    Ok(seen.len()?)
}
