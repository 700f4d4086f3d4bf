//! What the running server has read of the hosted users' directories, so that wrapping or
//! opening a message does not read, decode and parse a user's files (and derive the public half
//! of their key) once per message.
//!
//! `dimegate users ...` changes the files from another process while the server runs, so an
//! entry is only as good as the directory it came from: each use compares the directory's
//! identity and modification time with what they were when it was read (one `stat`). Every
//! change the key store makes creates or renames a name in the user's directory, or moves the
//! directory away, so it shows there. A directory modified within the last
//! [`SETTLE`] is not remembered at all: timestamps have the kernel clock's tick as granularity, so a
//! second change inside the same tick as the read would otherwise go unseen.
//!
//! Private keys stay in memory while they are cached, as [`PrivateKey`] values (zeroized when
//! dropped: on eviction, on a change of the directory, at exit). At most [`ENTRIES`] users are
//! kept; past that the cache starts again empty.

use super::HostedUser;
use crate::dime::PrivateKey;
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Users remembered at once.
pub(super) const ENTRIES: usize = 4096;

/// How long a directory must have been unchanged before what was read of it is remembered.
const SETTLE: Duration = Duration::from_secs(2);

/// A directory's identity and modification time: any change the key store makes moves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stamp {
    dev: u64,
    ino: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl Stamp {
    /// The directory's stamp, `None` if it cannot be read (no such user: the caller's own read
    /// says which error) or changed too recently to be trusted.
    pub(super) fn of(dir: &Path) -> Option<Stamp> {
        let m = std::fs::metadata(dir).ok()?;
        let modified = m.modified().ok()?;
        let settled = SystemTime::now()
            .duration_since(modified)
            .is_ok_and(|age| age >= SETTLE);
        settled.then(|| Stamp {
            dev: m.dev(),
            ino: m.ino(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
        })
    }
}

#[derive(Debug)]
struct Entry {
    stamp: Stamp,
    user: Option<HostedUser>,
    keys: HashMap<u32, PrivateKey>,
}

/// Users and keys by normalised address, shared by the clones of a key store.
#[derive(Debug, Clone, Default)]
pub(super) struct UserCache(Arc<Mutex<HashMap<String, Entry>>>);

impl UserCache {
    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The entry for `address` if it was read under `stamp`; a stale one is dropped.
    fn with<T>(
        &self,
        address: &str,
        stamp: Stamp,
        f: impl FnOnce(&mut Entry) -> Option<T>,
    ) -> Option<T> {
        let mut entries = self.entries();
        match entries.get_mut(address) {
            Some(e) if e.stamp == stamp => f(e),
            Some(_) => {
                entries.remove(address);
                None
            }
            None => None,
        }
    }

    fn entry(&self, address: &str, stamp: Stamp, f: impl FnOnce(&mut Entry)) {
        let mut entries = self.entries();
        if entries.len() >= ENTRIES && !entries.contains_key(address) {
            entries.clear();
        }
        let e = entries.entry(address.to_owned()).or_insert_with(|| Entry {
            stamp,
            user: None,
            keys: HashMap::new(),
        });
        if e.stamp != stamp {
            *e = Entry {
                stamp,
                user: None,
                keys: HashMap::new(),
            };
        }
        f(e);
    }

    pub(super) fn user(&self, address: &str, stamp: Stamp) -> Option<HostedUser> {
        self.with(address, stamp, |e| e.user.clone())
    }

    pub(super) fn keep_user(&self, address: &str, stamp: Stamp, user: &HostedUser) {
        self.entry(address, stamp, |e| e.user = Some(user.clone()));
    }

    pub(super) fn key(&self, address: &str, stamp: Stamp, generation: u32) -> Option<PrivateKey> {
        self.with(address, stamp, |e| e.keys.get(&generation).cloned())
    }

    pub(super) fn keep_key(&self, address: &str, stamp: Stamp, generation: u32, key: &PrivateKey) {
        self.entry(address, stamp, |e| {
            e.keys.insert(generation, key.clone());
        });
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries().len()
    }
}
