//! The sending side of exactly-once over DMTP: each recipient's sealed D/MIME copy, kept from
//! before its first transfer until that recipient settles, so that every retry sends the same
//! bytes and the receiver can tell a retry from a new message (`dedup.rs`).
//!
//! Why keep the bytes rather than re-seal: sealing draws fresh keys and IVs, and its inputs
//! (the recipient's signet, the legacy sender's SPF/DKIM/DMARC results) can change between
//! attempts, so a second seal of one message is a different message on the wire. Deriving the
//! randomness from the queue id would fix the first but not the second.
//!
//! | table           | key                          | value            |
//! |-----------------|------------------------------|------------------|
//! | `sealed_copies` | (queue id, recipient index)  | the sealed bytes |
//!
//! A copy is written, with its fsync, before its first transfer ([`Store::keep_sealed`]: a
//! thread of its own batches concurrent callers into one transaction and one fsync, like the
//! committer does for appends), removed in the settle transaction that makes its recipient final
//! and with its message (`schedule.rs`), so a crash anywhere leaves either no copy (nothing was
//! sent yet) or the copy that was sent. Copies live in the database file, so they count in the
//! queue's disk use and the free-space reserve; a copy is about the message's size rounded up to
//! its padding bucket, and a large one costs what a large value costs in redb (see the module
//! documentation of `store`), given back when the drained queue is compacted.

use super::error::StoreError;
use super::{DbSlot, MESSAGES, Store};
use crate::envelope::QueueId;
use redb::{Durability, ReadableDatabase, ReadableTable, Table, TableDefinition};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::thread::JoinHandle;
use tokio::sync::oneshot;

pub(super) const SEALED: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("sealed_copies");

/// Requests per transaction at most.
const MAX_BATCH: usize = 256;

struct Request {
    queue_id: u64,
    copies: Vec<(usize, Vec<u8>)>,
    reply: oneshot::Sender<Result<(), Arc<StoreError>>>,
}

/// The writer thread of [`Store::keep_sealed`]; stops (after answering what is queued) when
/// dropped.
pub(super) struct Writer {
    requests: Option<mpsc::Sender<Request>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    pub(super) fn spawn(slot: Arc<DbSlot>) -> Result<Writer, StoreError> {
        let (requests, receiver) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("store-sealed".into())
            .spawn(move || run(receiver, &slot))?;
        Ok(Writer {
            requests: Some(requests),
            thread: Some(thread),
        })
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        drop(self.requests.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(receiver: Receiver<Request>, slot: &DbSlot) {
    while let Ok(first) = receiver.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(request) => batch.push(request),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        let result = slot.with_db(|db| {
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            {
                let messages = txn.open_table(MESSAGES)?;
                let mut sealed = txn.open_table(SEALED)?;
                for request in &batch {
                    // Deleted by the operator meanwhile: a copy would outlive its message.
                    if messages.get(request.queue_id)?.is_none() {
                        continue;
                    }
                    for (recipient, bytes) in &request.copies {
                        let recipient = u32::try_from(*recipient).unwrap_or(u32::MAX);
                        sealed.insert((request.queue_id, recipient), bytes.as_slice())?;
                    }
                }
            }
            // fsync before the first transfer: after a crash the retry sends these bytes.
            txn.commit()?;
            Ok(())
        });
        let result = result.map_err(Arc::new);
        for request in batch {
            let _ = request.reply.send(result.clone());
        }
    }
}

/// Removes the copy of one recipient, inside the caller's transaction.
pub(crate) fn forget(
    sealed: &mut Table<'_, (u64, u32), &'static [u8]>,
    queue_id: u64,
    recipient: usize,
) -> Result<(), StoreError> {
    let recipient = u32::try_from(recipient).unwrap_or(u32::MAX);
    sealed.remove((queue_id, recipient))?;
    Ok(())
}

/// Removes every copy of one message, inside the caller's transaction.
pub(crate) fn forget_message(
    sealed: &mut Table<'_, (u64, u32), &'static [u8]>,
    queue_id: u64,
) -> Result<(), StoreError> {
    sealed.retain_in((queue_id, 0)..=(queue_id, u32::MAX), |_, _| false)?;
    Ok(())
}

impl Store {
    /// The sealed copies kept for `queue_id`, by recipient index (empty if none).
    pub fn sealed_copies(&self, queue_id: QueueId) -> Result<Vec<(usize, Vec<u8>)>, StoreError> {
        self.inner.slot.with_db(|db| {
            let txn = db.begin_read()?;
            let sealed = match txn.open_table(SEALED) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(e.into()),
            };
            let mut copies = Vec::new();
            for entry in sealed.range((queue_id.0, 0)..=(queue_id.0, u32::MAX))? {
                let (key, value) = entry?;
                let recipient = usize::try_from(key.value().1).unwrap_or(usize::MAX);
                copies.push((recipient, value.value().to_vec()));
            }
            Ok(copies)
        })
    }

    /// Keeps `copies` (recipient index, sealed bytes) of `queue_id` durably: `Ok` means
    /// fsync'd, and the transfer may start. Concurrent callers share one transaction and fsync.
    /// A message that no longer exists keeps nothing.
    pub async fn keep_sealed(
        &self,
        queue_id: QueueId,
        copies: Vec<(usize, Vec<u8>)>,
    ) -> Result<(), Arc<StoreError>> {
        let closed = || Arc::new(StoreError::Unavailable);
        let requests = self.inner.sealed.requests.as_ref().ok_or_else(closed)?;
        let (reply, answer) = oneshot::channel();
        requests
            .send(Request {
                queue_id: queue_id.0,
                copies,
                reply,
            })
            .map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }
}
