//! Errors of the store, and the one question callers ask of them: is the disk full?

use super::record::DecodeError;
use crate::envelope::QueueId;
use std::path::PathBuf;
use std::sync::Arc;

/// What can go wrong opening or reading the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Another process (normally the running server) has the store open. The CLI asks the server
    /// over HTTP instead.
    #[error("queue store {path} is in use by another process")]
    Locked {
        /// The database file.
        path: PathBuf,
    },
    /// The database file could not be created or opened.
    #[error("cannot open queue store {path}: {source}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// What redb said.
        #[source]
        source: redb::DatabaseError,
    },
    /// A redb operation failed.
    #[error("queue store: {0}")]
    Database(#[from] redb::Error),
    /// A record that cannot be read back: an error to report, never a panic.
    #[error("queue record {queue_id} is corrupt: {reason}")]
    Corrupt {
        /// The record.
        queue_id: QueueId,
        /// Why it does not decode.
        reason: DecodeError,
    },
    /// A state change the recipient's current state does not allow.
    #[error("queue store: {0}")]
    Transition(#[from] super::state::TransitionError),
    /// A lease or request named a recipient index the message does not have.
    #[error("message {queue_id} has no recipient #{recipient}")]
    NoSuchRecipient {
        /// The message.
        queue_id: QueueId,
        /// The index asked for.
        recipient: usize,
    },
    /// No message with this queue id.
    #[error("no message {queue_id}")]
    NoSuchMessage {
        /// The queue id asked for.
        queue_id: QueueId,
    },
    /// A message's record says where its body is, and the body is not there.
    #[error("body of queue message {queue_id} is missing")]
    MissingBody {
        /// The message.
        queue_id: QueueId,
    },
    /// A body file is not as long as the message its record describes: it is never sent as
    /// if it were whole.
    #[error("body of queue message {queue_id} is {found} bytes, its record says {recorded}")]
    BodyLength {
        /// The message.
        queue_id: QueueId,
        /// The size in its record.
        recorded: u64,
        /// The length of its file.
        found: u64,
    },
    /// A read-only open found a store that was not closed cleanly: only a writable open (the
    /// next `dimegate serve`) recovers it, and a read-only look must not write.
    #[error("queue store {path} was not closed cleanly; `dimegate serve` recovers it at start")]
    NeedsRecovery {
        /// The database file.
        path: PathBuf,
    },
    /// A previous I/O failure closed the database and reopening it failed; the next append retries.
    #[error("queue store is unavailable after an I/O error")]
    Unavailable,
    /// A file-system operation around the database failed.
    #[error("queue store I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl StoreError {
    /// The OS error behind this error, if it is one.
    pub fn io_error(&self) -> Option<&std::io::Error> {
        match self {
            StoreError::Io(e) => Some(e),
            StoreError::Database(redb::Error::Io(e)) => Some(e),
            StoreError::Open {
                source: redb::DatabaseError::Storage(redb::StorageError::Io(e)),
                ..
            } => Some(e),
            _ => None,
        }
    }

    /// ENOSPC or EDQUOT: the file system is out of space (or quota) for the store.
    pub fn is_disk_full(&self) -> bool {
        self.io_error().is_some_and(is_disk_full)
    }

    /// redb latches an I/O failure: every later operation fails until the database is reopened.
    pub(crate) fn needs_reopen(&self) -> bool {
        matches!(
            self,
            StoreError::Database(redb::Error::PreviousIo | redb::Error::Io(_))
        )
    }
}

/// Whether an OS error means "no space left" (or over quota).
pub(crate) fn is_disk_full(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull
        || e.kind() == std::io::ErrorKind::QuotaExceeded
        || matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

// Every redb operation error converts into redb::Error; one From per type keeps `?` working.
macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Database(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// Why an append was not acknowledged. Whatever the variant, the message is not guaranteed to be
/// stored: the SMTP session must not answer 250.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AppendError {
    /// Out of disk space or quota, or below the configured free-space reserve. SMTP: `452 4.3.1`.
    #[error("queue store is full")]
    Full,
    /// The queue holds `max` messages already (`queue.max_messages`). SMTP: `452 4.3.1`.
    #[error("queue holds its maximum of {max} messages")]
    TooManyMessages {
        /// The limit.
        max: u64,
    },
    /// The batch's transaction or fsync failed. Shared by every caller of that batch, hence `Arc`.
    #[error("queue store write failed: {0}")]
    Io(Arc<StoreError>),
    /// The store is shutting down (its committer has stopped). SMTP: `421 4.3.2`.
    #[error("queue store is closed")]
    Closed,
}

impl AppendError {
    /// Whether the cause is lack of space: answer `452 4.3.1` and let the sender retry later.
    pub fn is_full(&self) -> bool {
        matches!(
            self,
            AppendError::Full | AppendError::TooManyMessages { .. }
        )
    }
}

impl From<StoreError> for AppendError {
    fn from(e: StoreError) -> Self {
        if e.is_disk_full() {
            AppendError::Full
        } else {
            AppendError::Io(Arc::new(e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enospc_and_edquot_map_to_full() {
        let rows = [
            (libc::ENOSPC, true),
            (libc::EDQUOT, true),
            (libc::EIO, false),
            (libc::EACCES, false),
        ];
        for (errno, full) in rows {
            let io = || std::io::Error::from_raw_os_error(errno);
            let via_commit: StoreError =
                redb::CommitError::Storage(redb::StorageError::Io(io())).into();
            let via_table: StoreError =
                redb::TableError::Storage(redb::StorageError::Io(io())).into();
            for e in [via_commit, via_table, StoreError::Io(io())] {
                assert_eq!(e.is_disk_full(), full, "errno {errno}: {e}");
                assert_eq!(AppendError::from(e).is_full(), full, "errno {errno}");
            }
        }
        let previous: StoreError = redb::StorageError::PreviousIo.into();
        assert!(!previous.is_disk_full());
        assert!(previous.needs_reopen());
    }
}
