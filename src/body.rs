//! A queued message's bytes as the transports read them: [`Body`] is either the bytes themselves
//! (a small body, kept inline in its record) or an open body file that is read in chunks of
//! [`CHUNK`] bytes, so that a 25 MiB message on its way out costs a chunk of memory, not 25 MiB.
//!
//! Some consumers need the whole message at once (DKIM and sealing for DIME, a DSN returning the
//! message). They call [`Body::read_all`], which draws on a [`WholeBodies`] budget shared by the
//! whole process: the bytes of large bodies held whole at any moment are at most the budget, or
//! the one body being read when a single body is larger than the budget (it then waits for
//! every other whole read to end). Bodies are bounded at ingress by the configured maximum
//! message size, so what a full queue costs in memory is bounded by configuration, not by how
//! many large messages are due at once. `serve` sizes the budget from `[queue] whole_body_budget`
//! (at least 1 MiB; [`DEFAULT_WHOLE_BODY_BUDGET`] unless set).

use std::borrow::Cow;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How many bytes of a body file are read (and sent) at a time.
pub const CHUNK: usize = 64 * 1024;

/// The default [`WholeBodies`] budget (`[queue] whole_body_budget`): room for one message at the
/// default maximum size, and small ones beside it.
pub const DEFAULT_WHOLE_BODY_BUDGET: usize = 32 << 20;

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The body file could not be read (or is shorter than its recorded length).
    #[error("reading the queued body: {0}")]
    Io(#[from] std::io::Error),
    /// The blocking read was cancelled (the runtime is shutting down).
    #[error("reading the queued body: the read task was cancelled")]
    Cancelled,
}

/// The process-wide budget for bodies held whole in memory (see the module docs). Permits are
/// KiB.
#[derive(Debug, Clone)]
pub struct WholeBodies {
    permits: Arc<Semaphore>,
    total: u32,
}

impl WholeBodies {
    /// A budget of `bytes` (at least 1 KiB).
    pub fn new(bytes: usize) -> WholeBodies {
        let total = u32::try_from(bytes / 1024).unwrap_or(u32::MAX).max(1);
        WholeBodies {
            permits: Arc::new(Semaphore::new(total as usize)),
            total,
        }
    }

    /// The budget in bytes.
    pub fn bytes(&self) -> u64 {
        u64::from(self.total) * 1024
    }

    /// Waits until `len` bytes fit in the budget; a body larger than the budget takes all of it.
    async fn reserve(&self, len: u64) -> Result<OwnedSemaphorePermit, BodyError> {
        let kib = u32::try_from(len.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, self.total);
        Arc::clone(&self.permits)
            .acquire_many_owned(kib)
            .await
            .map_err(|_| BodyError::Cancelled)
    }
}

/// A body file opened for reading, with its length when it was opened. Reads are positional,
/// so every attempt (another MX, another transaction) reads from the start without reopening.
#[derive(Debug, Clone)]
pub struct BodyFile {
    file: Arc<File>,
    len: u64,
    budget: WholeBodies,
}

impl BodyFile {
    /// `file`, `len` bytes long, whose whole reads draw on `budget`.
    pub fn new(file: File, len: u64, budget: WholeBodies) -> BodyFile {
        BodyFile {
            file: Arc::new(file),
            len,
            budget,
        }
    }

    /// `len` bytes from `offset`, on the blocking pool.
    async fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, BodyError> {
        let file = Arc::clone(&self.file);
        tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; len];
            file.read_exact_at(&mut buf, offset)?;
            Ok(buf)
        })
        .await
        .map_err(|_| BodyError::Cancelled)?
    }
}

/// One queued message's bytes, as received.
#[derive(Debug, Clone)]
pub enum Body {
    /// In memory: small bodies, and messages made here (DSNs, converted copies).
    Inline(Vec<u8>),
    /// A body file, read in chunks.
    File(BodyFile),
}

impl From<Vec<u8>> for Body {
    fn from(bytes: Vec<u8>) -> Body {
        Body::Inline(bytes)
    }
}

impl Body {
    /// Its length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Body::Inline(b) => b.len() as u64,
            Body::File(f) => f.len,
        }
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A borrowed view for reading it in chunks.
    pub fn as_ref(&self) -> BodyRef<'_> {
        match self {
            Body::Inline(b) => BodyRef::Bytes(b),
            Body::File(f) => BodyRef::File(f),
        }
    }

    /// The whole body in memory, for consumers that cannot stream (see the module docs): waits
    /// for room in the [`WholeBodies`] budget, which the result holds until it is dropped.
    pub async fn read_all(&self) -> Result<WholeBody<'_>, BodyError> {
        match self {
            Body::Inline(b) => Ok(WholeBody {
                bytes: Cow::Borrowed(b),
                _permit: None,
            }),
            Body::File(f) => {
                let permit = f.budget.reserve(f.len).await?;
                let len = usize::try_from(f.len)
                    .map_err(|_| std::io::Error::from(std::io::ErrorKind::OutOfMemory))?;
                let bytes = f.read_at(0, len).await?;
                Ok(WholeBody {
                    bytes: Cow::Owned(bytes),
                    _permit: Some(permit),
                })
            }
        }
    }
}

/// A body read whole by [`Body::read_all`]; it holds its share of the budget while alive.
#[derive(Debug)]
pub struct WholeBody<'a> {
    bytes: Cow<'a, [u8]>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl std::ops::Deref for WholeBody<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

/// A body to read in chunks: bytes in memory (a [`Body::Inline`], or a caller's slice) or a file.
#[derive(Debug, Clone, Copy)]
pub enum BodyRef<'a> {
    /// In memory.
    Bytes(&'a [u8]),
    /// A body file.
    File(&'a BodyFile),
}

impl<'a> BodyRef<'a> {
    /// Its length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            BodyRef::Bytes(b) => b.len() as u64,
            BodyRef::File(f) => f.len,
        }
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A reader from the start.
    pub fn chunks(self) -> Chunks<'a> {
        Chunks {
            body: self,
            offset: 0,
        }
    }
}

/// Reads a [`BodyRef`] from start to end, at most [`CHUNK`] bytes at a time.
#[derive(Debug)]
pub struct Chunks<'a> {
    body: BodyRef<'a>,
    offset: u64,
}

impl<'a> Chunks<'a> {
    /// The next piece, `None` at the end. A file shorter than its length is an error, so a
    /// truncated body is never sent as if it were whole.
    pub async fn next(&mut self) -> Option<Result<Cow<'a, [u8]>, BodyError>> {
        let left = self.body.len().saturating_sub(self.offset);
        if left == 0 {
            return None;
        }
        let n = usize::try_from(left).unwrap_or(CHUNK).min(CHUNK);
        let start = self.offset;
        self.offset += n as u64;
        Some(match self.body {
            BodyRef::Bytes(b) => {
                // `start + n <= b.len()` by construction.
                let start = start as usize;
                Ok(Cow::Borrowed(&b[start..start + n]))
            }
            BodyRef::File(f) => f.read_at(start, n).await.map(Cow::Owned),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_body(bytes: &[u8], budget: &WholeBodies) -> (tempfile::NamedTempFile, Body) {
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        tmp.write_all(bytes).unwrap();
        let file = File::open(tmp.path()).unwrap();
        let body = Body::File(BodyFile::new(file, bytes.len() as u64, budget.clone()));
        (tmp, body)
    }

    async fn collect(body: BodyRef<'_>) -> Result<Vec<u8>, BodyError> {
        let mut chunks = body.chunks();
        let mut out = Vec::new();
        while let Some(piece) = chunks.next().await {
            let piece = piece?;
            assert!(!piece.is_empty() && piece.len() <= CHUNK);
            out.extend_from_slice(&piece);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn chunks_of_bytes_and_files_give_back_the_body() {
        let budget = WholeBodies::new(1 << 20);
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17] {
            let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let inline = Body::from(bytes.clone());
            assert_eq!(collect(inline.as_ref()).await.unwrap(), bytes, "{len}");
            let (_tmp, file) = file_body(&bytes, &budget);
            assert_eq!(file.len(), len as u64);
            assert_eq!(collect(file.as_ref()).await.unwrap(), bytes, "{len}");
            // A second pass reads from the start again (another MX, another transaction).
            assert_eq!(collect(file.as_ref()).await.unwrap(), bytes, "{len}");
            assert_eq!(&*file.read_all().await.unwrap(), &bytes[..], "{len}");
        }
    }

    #[tokio::test]
    async fn a_truncated_file_is_an_error_not_a_short_body() {
        let budget = WholeBodies::new(1 << 20);
        let bytes = vec![b'x'; CHUNK + 10];
        let (tmp, body) = file_body(&bytes, &budget);
        std::fs::OpenOptions::new()
            .write(true)
            .open(tmp.path())
            .unwrap()
            .set_len(100)
            .unwrap();
        assert!(collect(body.as_ref()).await.is_err());
        assert!(body.read_all().await.is_err());
    }

    #[tokio::test]
    async fn whole_reads_wait_for_the_budget() {
        // A 2 KiB budget: a 2 KiB body takes all of it, a 5 KiB body too (it is larger).
        let budget = WholeBodies::new(2048);
        let (_a, two) = file_body(&[1u8; 2048], &budget);
        let (_b, five) = file_body(&[2u8; 5 * 1024], &budget);
        let held = two.read_all().await.unwrap();
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), five.read_all());
        assert!(waiting.await.is_err(), "the budget is taken");
        // Inline bodies are already in memory and never wait.
        assert_eq!(
            &*Body::from(b"hi".to_vec()).read_all().await.unwrap(),
            b"hi"
        );
        drop(held);
        let whole = five.read_all().await.unwrap();
        assert_eq!(whole.len(), 5 * 1024);
    }
}
