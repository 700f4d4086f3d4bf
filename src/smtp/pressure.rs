//! Back-pressure for ingress: the queue's size and the free disk under it, kept fresh by a
//! background task so that the SMTP sessions decide at MAIL FROM from two atomics, never from a
//! blocking call on an async worker. The store's own refusal when its disk reserve is reached
//! stays the last defence (`452 4.3.1` after the data, nothing lost).

use crate::queue::{Policy, Pressure, ingress_pressure};
use crate::store::Store;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// How often the background task counts the queue and asks the file system.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// The latest queue size and free disk, shared by every session.
#[derive(Debug)]
pub struct PressureGauge {
    policy: Policy,
    messages: AtomicU64,
    free_disk_bytes: AtomicU64,
}

impl PressureGauge {
    /// A gauge that sees no pressure until the first refresh.
    pub fn new(policy: Policy) -> PressureGauge {
        PressureGauge {
            policy,
            messages: AtomicU64::new(0),
            free_disk_bytes: AtomicU64::new(u64::MAX),
        }
    }

    /// Back-pressure now, from the latest values. Cheap: two atomic loads.
    pub fn current(&self) -> Option<Pressure> {
        ingress_pressure(
            self.messages.load(Ordering::Relaxed),
            self.free_disk_bytes.load(Ordering::Relaxed),
            &self.policy,
        )
    }

    /// Sets the measured values.
    pub fn set(&self, messages: u64, free_disk_bytes: u64) {
        self.messages.store(messages, Ordering::Relaxed);
        self.free_disk_bytes
            .store(free_disk_bytes, Ordering::Relaxed);
    }

    /// A message of `size` bytes was just stored: count it at once, so that a burst between two
    /// refreshes cannot overshoot `max_messages` by a second's worth of mail.
    pub fn note_stored(&self, size: u64) {
        self.messages.fetch_add(1, Ordering::Relaxed);
        let _ = self
            .free_disk_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |free| {
                Some(free.saturating_sub(size))
            });
    }
}

/// Measures the queue and the disk for a [`PressureGauge`].
#[derive(Clone)]
pub struct PressureProbe {
    /// The queue.
    pub store: Store,
    /// The directory the queue lives in.
    pub data_dir: PathBuf,
}

impl PressureProbe {
    /// Measures once, off the async workers, and stores the result in `gauge`.
    /// Cancel-safe: a dropped future leaves the gauge as it was.
    pub async fn refresh(&self, gauge: &PressureGauge) {
        let probe = self.clone();
        let measured = tokio::task::spawn_blocking(move || {
            let messages = probe.store.count();
            let free = free_disk_bytes(&probe.data_dir);
            (messages, free)
        })
        .await;
        match measured {
            Ok((Ok(messages), free)) => gauge.set(messages, free.unwrap_or(u64::MAX)),
            Ok((Err(e), _)) => warn!(error = %e, "back-pressure: cannot count the queue"),
            Err(e) => warn!(error = %e, "back-pressure: the measuring task failed"),
        }
    }

    /// Refreshes `gauge` every [`REFRESH_INTERVAL`] until `stop` is cancelled. Cancel-safe.
    pub async fn run(self, gauge: Arc<PressureGauge>, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(REFRESH_INTERVAL) => {}
            }
            self.refresh(&gauge).await;
        }
    }
}

/// Free bytes for unprivileged users on the filesystem holding `path`. Blocking.
fn free_disk_bytes(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a valid NUL-terminated path and `st` is written by statvfs before use.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled `st`.
    let st = unsafe { st.assume_init() };
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauge_decides_from_the_latest_values_and_counts_stored_mail_at_once() {
        let gauge = PressureGauge::new(Policy {
            max_messages: 2,
            min_free_disk_bytes: 1000,
            ..Policy::default()
        });
        assert_eq!(
            gauge.current(),
            None,
            "no pressure before the first refresh"
        );
        gauge.set(1, 5000);
        assert_eq!(gauge.current(), None);
        gauge.note_stored(100);
        assert_eq!(
            gauge.current(),
            Some(Pressure::QueueFull {
                messages: 2,
                max: 2
            })
        );
        gauge.set(0, 1500);
        gauge.note_stored(600);
        assert_eq!(
            gauge.current(),
            Some(Pressure::DiskLow {
                free_bytes: 900,
                min_bytes: 1000
            })
        );
        gauge.set(0, 10);
        gauge.note_stored(u64::MAX);
        assert!(matches!(
            gauge.current(),
            Some(Pressure::DiskLow { free_bytes: 0, .. })
        ));
    }

    #[test]
    fn statvfs_of_a_real_directory() {
        let free = free_disk_bytes(std::path::Path::new("/")).expect("statvfs /");
        assert!(free > 0);
        assert_eq!(
            free_disk_bytes(std::path::Path::new("/nonexistent/x")),
            None
        );
    }
}
