//! The durable half of the signet cache (DESIGN.md: the store owns it): validated signets of
//! other organizations and their users, by name, with the time they were last confirmed, so a
//! restart does not ask every DX again. The policy (what is fresh, what is re-checked with
//! `VRFY`, what has expired) is [`crate::discovery::cache`]'s; this is only the table.
//!
//! | table     | key                          | value                                           |
//! |-----------|------------------------------|-------------------------------------------------|
//! | `signets` | name (`domain` or `user@dom`) | version byte 1, confirmed-at Unix seconds (u64 BE), the signet's bytes |
//!
//! Only positive entries are kept. A failed look-up's backoff stays in memory: failures are
//! mostly passing (a DX down, DNS timing out), the backoff is short (30 s to 1 h), and a restart
//! is often how an operator says "try again now"; a persisted negative entry would refuse that.
//! A failure that is permanent (no `_dx` record) costs one DNS query to learn again.
//!
//! The entries are a cache: one that does not decode is skipped (and overwritten by the next
//! look-up), never an error that stops the gateway.

use super::{Store, StoreError};
use redb::{Durability, ReadableDatabase, ReadableTable, TableDefinition};

const SIGNETS: TableDefinition<&str, &[u8]> = TableDefinition::new("signets");
const VERSION: u8 = 1;

/// A cached signet as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSignet {
    /// The name it was looked up by, lower-case.
    pub name: String,
    /// The signet object, binary (validated when it was stored).
    pub signet: Vec<u8>,
    /// When it was last fetched or confirmed by `VRFY`, Unix seconds.
    pub confirmed_unix: u64,
}

fn encode(signet: &[u8], confirmed_unix: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + signet.len());
    out.push(VERSION);
    out.extend_from_slice(&confirmed_unix.to_be_bytes());
    out.extend_from_slice(signet);
    out
}

fn decode(name: &str, bytes: &[u8]) -> Option<StoredSignet> {
    let (&version, rest) = bytes.split_first()?;
    if version != VERSION || rest.len() < 8 {
        return None;
    }
    let (time, signet) = rest.split_at(8);
    Some(StoredSignet {
        name: name.to_owned(),
        signet: signet.to_vec(),
        confirmed_unix: u64::from_be_bytes(time.try_into().ok()?),
    })
}

impl Store {
    /// Stores (or replaces) the cached signet of `name`. Blocking: call it from
    /// `spawn_blocking` in async code. Durable when it returns, though nothing is lost but a
    /// network look-up if it were not.
    pub fn put_signet(
        &self,
        name: &str,
        signet: &[u8],
        confirmed_unix: u64,
    ) -> Result<(), StoreError> {
        let value = encode(signet, confirmed_unix);
        self.inner.slot.with_db(|db| {
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            txn.open_table(SIGNETS)?.insert(name, value.as_slice())?;
            txn.commit()?;
            Ok(())
        })
    }

    /// Forgets the cached signet of `name` (its DX no longer vouches for it, or it expired).
    /// Blocking, like [`Store::put_signet`].
    pub fn remove_signet(&self, name: &str) -> Result<(), StoreError> {
        self.inner.slot.with_db(|db| {
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            txn.open_table(SIGNETS)?.remove(name)?;
            txn.commit()?;
            Ok(())
        })
    }

    /// Up to `max` cached signets, in name order, to warm the in-memory cache at start.
    pub fn signets(&self, max: usize) -> Result<Vec<StoredSignet>, StoreError> {
        self.inner.slot.with_db(|db| {
            let txn = db.begin_read()?;
            let table = match txn.open_table(SIGNETS) {
                Ok(t) => t,
                // Nothing cached yet: the table is created by the first write.
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(e.into()),
            };
            let mut out = Vec::new();
            for entry in table.iter()? {
                if out.len() >= max {
                    break;
                }
                let (name, value) = entry?;
                match decode(name.value(), value.value()) {
                    Some(s) => out.push(s),
                    None => {
                        tracing::warn!(name = name.value(), "skipping an undecodable cached signet")
                    }
                }
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signets_survive_a_reopen_and_can_be_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.redb");
        {
            let store = Store::open(&path, None).unwrap();
            assert!(store.signets(10).unwrap().is_empty());
            store.put_signet("b.test", b"org", 100).unwrap();
            store.put_signet("a@b.test", b"user", 200).unwrap();
            store.put_signet("b.test", b"org2", 300).unwrap();
        }
        let store = Store::open(&path, None).unwrap();
        let got = store.signets(10).unwrap();
        assert_eq!(
            got,
            vec![
                StoredSignet {
                    name: "a@b.test".into(),
                    signet: b"user".to_vec(),
                    confirmed_unix: 200
                },
                StoredSignet {
                    name: "b.test".into(),
                    signet: b"org2".to_vec(),
                    confirmed_unix: 300
                },
            ]
        );
        assert_eq!(store.signets(1).unwrap().len(), 1, "bounded");
        store.remove_signet("b.test").unwrap();
        assert_eq!(store.signets(10).unwrap().len(), 1);
    }

    #[test]
    fn undecodable_entries_are_skipped() {
        assert_eq!(decode("x", b""), None);
        assert_eq!(decode("x", &[2, 0, 0, 0, 0, 0, 0, 0, 1]), None);
        assert_eq!(decode("x", &[1, 0, 0]), None);
        assert_eq!(
            decode("x", &encode(b"s", 7)).map(|s| (s.signet, s.confirmed_unix)),
            Some((b"s".to_vec(), 7))
        );
    }
}
