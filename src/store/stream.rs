//! Appending a message whose body arrives in pieces: [`BodyWriter`] writes each piece to the
//! message's body file as it comes, so a large message is never whole in memory on its way in.
//!
//! The durability order is the one of `body.rs`: the file is fsync'd when the last piece is
//! written ([`Store::append_streamed`]), the committer fsyncs the directory, and only then commits
//! the record naming the file. A writer dropped before that (the message was refused, the client
//! went away) removes its file.

use super::Store;
use super::committer::{Body, PendingFile};
use super::error::{AppendError, StoreError};
use crate::envelope::{Envelope, QueueId};
use std::fs::File;
use std::io::Write;

/// The body file of one message being received. Writes run on tokio's blocking pool.
pub struct BodyWriter {
    id: u64,
    /// `None` only while a write is in flight on the blocking pool.
    file: Option<File>,
    /// Removes the file unless the record naming it is committed.
    pending: PendingFile,
    written: u64,
}

impl std::fmt::Debug for BodyWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyWriter")
            .field("id", &self.id)
            .field("written", &self.written)
            .finish()
    }
}

impl BodyWriter {
    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Appends `bytes` to the file (not yet fsync'd).
    pub async fn write(&mut self, bytes: Vec<u8>) -> Result<(), StoreError> {
        self.run(move |file| file.write_all(&bytes).map(|()| bytes.len()))
            .await
    }

    /// Runs `f` on the file on the blocking pool; it returns how many bytes it wrote.
    async fn run(
        &mut self,
        f: impl FnOnce(&mut File) -> std::io::Result<usize> + Send + 'static,
    ) -> Result<(), StoreError> {
        // A write that failed or was cancelled leaves no file handle: the writer is spent.
        let mut file = self.file.take().ok_or(StoreError::Unavailable)?;
        let (file, result) = tokio::task::spawn_blocking(move || {
            let r = f(&mut file);
            (file, r)
        })
        .await
        .map_err(|_| StoreError::Unavailable)?;
        let n = result?;
        self.file = Some(file);
        self.written += n as u64;
        Ok(())
    }
}

impl Store {
    /// A writer for the body of a message about to arrive in pieces; its queue id is taken now.
    pub fn body_writer(&self) -> Result<BodyWriter, StoreError> {
        let id = self.inner.ids.next();
        let bodies = self.inner.slot.bodies.clone();
        let file = bodies.create_file(id)?;
        Ok(BodyWriter {
            id,
            file: Some(file),
            pending: PendingFile::new(bodies, id),
            written: 0,
        })
    }

    /// [`Store::append_limited`] for a body written with `writer`, `tail` being its last piece:
    /// writes the tail, fsyncs the file, then commits the record. `Ok` means both are durable.
    pub async fn append_streamed(
        &self,
        envelope: Envelope,
        mut writer: BodyWriter,
        tail: Vec<u8>,
        max_messages: u64,
    ) -> Result<QueueId, AppendError> {
        writer
            .run(move |file| {
                file.write_all(&tail)?;
                file.sync_all()?;
                Ok(tail.len())
            })
            .await?;
        let BodyWriter {
            id,
            pending,
            written,
            ..
        } = writer;
        self.submit_request(
            id,
            envelope,
            written,
            Body::File(pending),
            Some(max_messages),
            None,
        )
        .await
        .map(super::Appended::queue_id)
    }
}
