//! Message bodies too large to sit well in redb, kept as one file per message.
//!
//! redb stores a value larger than a page in a run of pages rounded up to a power of two, and the
//! database file only grows: a 1 MiB body took a 2 MiB region and the space stayed in the file
//! after delivery. A plain file costs at most one file-system block beyond its bytes and gives its
//! space back at `unlink`. Small bodies stay in redb, where they share leaf pages and their write
//! rides on the batch's one fsync; see the module docs of `store` for the threshold.
//!
//! Durability order, which is what keeps "250 only after fsync": the file is written and fsync'd
//! by the appending caller, the committer fsyncs the directory once per batch (so the new names
//! are durable), and only then commits the record that refers to the file. A crash in between
//! leaves a file no record names: [`BodyDir::remove_orphans`] deletes those at open. A file is
//! unlinked only after the commit that removed its record, so a crash never leaves a record
//! without its body.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The directory of body files, named by queue id in 16 hex digits.
#[derive(Debug, Clone)]
pub(crate) struct BodyDir {
    dir: PathBuf,
}

impl BodyDir {
    /// The body directory of the database at `db_path`: `queue.redb` -> `queue.bodies`.
    pub(crate) fn for_database(db_path: &Path) -> BodyDir {
        BodyDir {
            dir: db_path.with_extension("bodies"),
        }
    }

    pub(crate) fn create(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)
    }

    fn path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:016x}"))
    }

    /// Creates the (empty) file of `id`, for a body written in pieces; see `stream.rs`.
    pub(crate) fn create_file(&self, id: u64) -> std::io::Result<File> {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(self.path(id))
    }

    /// Writes `body` as the file of `id` and fsyncs it. The name is not durable until
    /// [`BodyDir::sync_dir`]. On failure nothing is left behind (best effort).
    pub(crate) fn write(&self, id: u64, body: &[u8]) -> std::io::Result<()> {
        let path = self.path(id);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        let result = file.write_all(body).and_then(|()| file.sync_all());
        if result.is_err() {
            // Ours (create_new): a partial file after ENOSPC would only hold space.
            let _ = std::fs::remove_file(&path);
        }
        result
    }

    /// Makes the names of files written since the last call durable.
    pub(crate) fn sync_dir(&self) -> std::io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }

    /// The whole body of `id`, read into one buffer of exactly its size.
    pub(crate) fn read(&self, id: u64) -> std::io::Result<Vec<u8>> {
        let mut file = File::open(self.path(id))?;
        let size = file.metadata()?.len();
        let mut out = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        file.read_to_end(&mut out)?;
        Ok(out)
    }

    /// Whether `id` has a file.
    pub(crate) fn exists(&self, id: u64) -> bool {
        self.path(id).exists()
    }

    /// A reader over the body of `id`, for callers that stream it.
    pub(crate) fn open(&self, id: u64) -> std::io::Result<File> {
        File::open(self.path(id))
    }

    /// Unlinks the file of `id`; a missing file is not an error. No directory fsync: a name that
    /// comes back after a crash belongs to no record and is removed at the next open.
    pub(crate) fn remove(&self, id: u64) {
        if let Err(e) = std::fs::remove_file(self.path(id))
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(queue_id = %crate::envelope::QueueId(id), error = %e, "cannot remove body file");
        }
    }

    /// Every file in the directory: its queue id, or `None` for a name that is not one.
    fn entries(&self) -> std::io::Result<Vec<(PathBuf, Option<u64>)>> {
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let id = name
                .to_str()
                .filter(|n| n.len() == 16)
                .and_then(|n| u64::from_str_radix(n, 16).ok());
            out.push((entry.path(), id));
        }
        Ok(out)
    }

    /// Deletes every body file whose id `is_live` does not confirm: left by a crash between the
    /// file write and its commit, or by an unlink the crash undid. Names that are not queue ids
    /// are left alone (an operator's file). Returns how many were removed.
    pub(crate) fn remove_orphans(
        &self,
        mut is_live: impl FnMut(u64) -> Result<bool, super::StoreError>,
    ) -> Result<usize, super::StoreError> {
        let mut removed = 0;
        for (path, id) in self.entries()? {
            let Some(id) = id else { continue };
            if !is_live(id)? {
                std::fs::remove_file(&path)?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_read_remove_and_orphans() {
        let dir = tempfile::tempdir().unwrap();
        let bodies = BodyDir::for_database(&dir.path().join("queue.redb"));
        assert_eq!(bodies.dir, dir.path().join("queue.bodies"));
        bodies.create().unwrap();
        bodies.write(7, b"seven").unwrap();
        bodies.write(8, b"eight").unwrap();
        bodies.sync_dir().unwrap();
        // An id is written once: a second write is refused, not an overwrite.
        assert!(bodies.write(7, b"again").is_err());
        assert_eq!(bodies.read(7).unwrap(), b"seven");
        std::fs::write(bodies.dir.join("README"), b"not a body").unwrap();
        let removed = bodies.remove_orphans(|id| Ok(id == 7)).unwrap();
        assert_eq!(removed, 1);
        assert!(bodies.read(8).is_err());
        assert!(bodies.dir.join("README").exists());
        bodies.remove(7);
        bodies.remove(7);
        assert!(bodies.read(7).is_err());
    }
}
