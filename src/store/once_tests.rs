//! The two tables of exactly-once over DMTP: the receiver's record of accepted transfers
//! (`dedup.rs`) and the sender's sealed copies (`sealed.rs`).

use super::dedup::{self, DedupKey, SeenTables};
use super::record::tests::envelope;
use super::*;
use crate::time::UnixTime;
use std::time::Duration;

fn path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("queue.redb")
}

fn open(dir: &tempfile::TempDir) -> Store {
    Store::open(&path(dir), None).unwrap()
}

fn seen_entries(store: &Store) -> u64 {
    store.inner.slot.with_db(dedup::len).unwrap()
}

fn transfer(n: u8) -> (Envelope, Vec<u8>, DedupKey) {
    let sealed = vec![n; 64];
    let key = DedupKey::for_transfer("secure.test", &sealed);
    (envelope("", &["bob@other.test"], 1), sealed, key)
}

#[tokio::test]
async fn a_transfer_seen_before_gets_its_first_queue_id_and_is_not_stored_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let (env, body, key) = transfer(1);
    let first = store
        .append_dmtp(env.clone(), body.clone(), 100, key)
        .await
        .unwrap();
    let Appended::Stored(q1) = first else {
        panic!("the first transfer is stored: {first:?}")
    };
    let again = store
        .append_dmtp(env.clone(), body.clone(), 100, key)
        .await
        .unwrap();
    assert_eq!(again, Appended::Seen(q1));
    assert_eq!(store.count().unwrap(), 1);
    // Other bytes, or the same bytes from another origin, are another transfer.
    let (env2, body2, key2) = transfer(2);
    assert!(matches!(
        store.append_dmtp(env2, body2, 100, key2).await.unwrap(),
        Appended::Stored(q) if q != q1
    ));
    let other_origin = DedupKey::for_transfer("elsewhere.test", &body);
    assert_ne!(other_origin, key);
    // Case does not make a domain another origin.
    assert_eq!(DedupKey::for_transfer("SECURE.test", &body), key);
    assert_eq!(store.count().unwrap(), 2);

    // The record outlives the message (delivered and removed) and a restart.
    assert!(store.delete(q1).unwrap());
    drop(store);
    let store = open(&dir);
    assert_eq!(
        store.append_dmtp(env, body, 100, key).await.unwrap(),
        Appended::Seen(q1)
    );
    assert_eq!(store.count().unwrap(), 1);
    assert_eq!(seen_entries(&store), 2);
}

#[tokio::test]
async fn identical_transfers_at_once_are_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let (env, body, key) = transfer(7);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (store, env, body) = (store.clone(), env.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            store.append_dmtp(env, body, 100, key).await.unwrap()
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    let stored: Vec<QueueId> = answers
        .iter()
        .filter_map(|a| match a {
            Appended::Stored(q) => Some(*q),
            Appended::Seen(_) => None,
        })
        .collect();
    assert_eq!(stored.len(), 1, "{answers:?}");
    assert!(
        answers.iter().all(|a| a.queue_id() == stored[0]),
        "{answers:?}"
    );
    assert_eq!(store.count().unwrap(), 1);
    assert_eq!(seen_entries(&store), 1);
}

#[tokio::test]
async fn a_refused_transfer_is_not_remembered() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let (env, body, key) = transfer(3);
    // The queue is full: refused, and not recorded as seen (the same transaction decides both).
    let refused = store
        .append_dmtp(env.clone(), body.clone(), 0, key)
        .await
        .unwrap_err();
    assert!(matches!(refused, AppendError::TooManyMessages { max: 0 }));
    assert_eq!(seen_entries(&store), 0);
    // With room, the origin's retry is stored.
    assert!(matches!(
        store.append_dmtp(env, body, 10, key).await.unwrap(),
        Appended::Stored(_)
    ));
    assert_eq!(store.count().unwrap(), 1);
}

#[tokio::test]
async fn large_retried_transfers_leave_no_body_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let sealed = vec![9u8; DEFAULT_INLINE_BODY_MAX * 2];
    let key = DedupKey::for_transfer("secure.test", &sealed);
    let env = envelope("", &["bob@other.test"], 1);
    let first = store
        .append_dmtp(env.clone(), sealed.clone(), 10, key)
        .await
        .unwrap();
    let again = store.append_dmtp(env, sealed, 10, key).await.unwrap();
    assert_eq!(again, Appended::Seen(first.queue_id()));
    let files = std::fs::read_dir(path(&dir).with_extension("bodies"))
        .unwrap()
        .count();
    assert_eq!(files, 1, "only the stored message's body file");
}

#[test]
fn pruning_removes_the_oldest_entries_a_bounded_number_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let db = redb::Database::create(path(&dir)).unwrap();
    let key = |n: u32| DedupKey::from_bytes([n as u8; 16]);
    let txn = db.begin_write().unwrap();
    {
        let mut seen = SeenTables::open(&txn).unwrap();
        for n in 0..100u32 {
            seen.insert(&key(n), u64::from(n), 1_000 + u64::from(n))
                .unwrap();
        }
        // Key 0 accepted again later (after an earlier prune, say): its newer entry stays.
        seen.insert(&key(0), 500, 5_000).unwrap();

        // At most `max` per call, oldest first, and none at or after `before`.
        assert_eq!(seen.prune(1_050, 10).unwrap(), 10);
        assert_eq!(seen.get(&key(9)).unwrap(), None);
        assert_eq!(seen.get(&key(10)).unwrap(), Some(10));
        assert_eq!(
            seen.get(&key(0)).unwrap(),
            Some(500),
            "the newer entry of key 0"
        );
        assert_eq!(seen.prune(1_050, 1_000).unwrap(), 40);
        assert_eq!(seen.get(&key(49)).unwrap(), None);
        assert_eq!(seen.get(&key(50)).unwrap(), Some(50));
        assert_eq!(seen.prune(1_050, 1_000).unwrap(), 0);
        assert_eq!(seen.prune(u64::MAX, 1_000).unwrap(), 51);
        assert_eq!(seen.get(&key(0)).unwrap(), None);
    }
    txn.commit().unwrap();
    assert_eq!(dedup::len(&db).unwrap(), 0);
}

#[tokio::test]
async fn the_committer_prunes_entries_older_than_the_retention() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(
        &path(&dir),
        StoreOptions {
            dedup_retention: Duration::from_secs(1),
            ..StoreOptions::default()
        },
    )
    .unwrap();
    let (env, body, key) = transfer(4);
    let first = store
        .append_dmtp(env.clone(), body.clone(), 100, key)
        .await
        .unwrap();
    assert_eq!(seen_entries(&store), 1);
    // Within the retention: still a retry.
    assert_eq!(
        store
            .append_dmtp(env.clone(), body.clone(), 100, key)
            .await
            .unwrap(),
        Appended::Seen(first.queue_id())
    );
    // Entries are kept in whole seconds: past the retention a commit that stores a transfer
    // prunes the old one, and the same bytes are then a new message.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let (env2, body2, key2) = transfer(5);
    store.append_dmtp(env2, body2, 100, key2).await.unwrap();
    assert_eq!(
        seen_entries(&store),
        1,
        "the old entry went, the new one is there"
    );
    assert!(matches!(
        store.append_dmtp(env, body, 100, key).await.unwrap(),
        Appended::Stored(q) if q != first.queue_id()
    ));
}

const MIN: Duration = Duration::from_secs(60);

#[tokio::test]
async fn sealed_copies_are_kept_until_their_recipient_settles() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let now = UnixTime(2_000_000_000);
    let id = store
        .append(
            envelope("a@secure.test", &["b@x.test", "c@x.test"], 1),
            vec![1],
        )
        .await
        .unwrap();
    assert_eq!(store.sealed_copies(id).unwrap(), vec![]);
    store
        .keep_sealed(
            id,
            vec![(0, b"sealed-b".to_vec()), (1, b"sealed-c".to_vec())],
        )
        .await
        .unwrap();
    // Durable: a restart (after a kill -9, the leases released) finds them.
    drop(store);
    let store = open(&dir);
    assert_eq!(
        store.sealed_copies(id).unwrap(),
        vec![(0, b"sealed-b".to_vec()), (1, b"sealed-c".to_vec())]
    );
    let leases = store.lease_due(now, 10 * MIN, 10).unwrap();
    assert_eq!(leases.len(), 2);
    store
        .settle(
            now,
            &[
                Settlement::Complete {
                    lease: leases[0].clone(),
                    outcome: Outcome::Delivered,
                },
                Settlement::Complete {
                    lease: leases[1].clone(),
                    outcome: Outcome::Deferred {
                        next_at: now.plus(MIN),
                        error: "451 later".into(),
                    },
                },
            ],
        )
        .unwrap();
    // The delivered recipient's copy is gone; the deferred one's is kept for its retry.
    assert_eq!(
        store.sealed_copies(id).unwrap(),
        vec![(1, b"sealed-c".to_vec())]
    );
    let later = now.plus(2 * MIN);
    let leases = store.lease_due(later, 10 * MIN, 10).unwrap();
    store
        .settle(
            later,
            &[
                Settlement::Complete {
                    lease: leases[0].clone(),
                    outcome: Outcome::Failed {
                        reply: "550 no".into(),
                    },
                },
                Settlement::Remove { queue_id: id },
            ],
        )
        .unwrap();
    assert_eq!(store.sealed_copies(id).unwrap(), vec![]);
    assert!(store.get(id).unwrap().is_none());
}

#[tokio::test]
async fn sealed_copies_go_with_their_message_and_are_not_kept_for_a_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let id = store
        .append(envelope("a@secure.test", &["b@x.test"], 1), vec![1])
        .await
        .unwrap();
    let other = store
        .append(envelope("a@secure.test", &["c@x.test"], 1), vec![2])
        .await
        .unwrap();
    store
        .keep_sealed(id, vec![(0, b"one".to_vec())])
        .await
        .unwrap();
    store
        .keep_sealed(other, vec![(0, b"two".to_vec())])
        .await
        .unwrap();
    // The operator deletes a message: its copies go in the same transaction, others stay.
    assert!(store.delete(id).unwrap());
    assert_eq!(store.sealed_copies(id).unwrap(), vec![]);
    assert_eq!(
        store.sealed_copies(other).unwrap(),
        vec![(0, b"two".to_vec())]
    );
    // A copy for a message deleted meanwhile would outlive it: not kept.
    store
        .keep_sealed(id, vec![(0, b"late".to_vec())])
        .await
        .unwrap();
    assert_eq!(store.sealed_copies(id).unwrap(), vec![]);
}

#[tokio::test]
async fn concurrent_sealed_copies_are_all_kept() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let mut ids = Vec::new();
    for i in 0..32u8 {
        let id = store
            .append(envelope("a@secure.test", &["b@x.test"], 1), vec![i])
            .await
            .unwrap();
        ids.push(id);
    }
    let mut tasks = Vec::new();
    for (i, id) in ids.iter().copied().enumerate() {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.keep_sealed(id, vec![(0, vec![i as u8; 100])]).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            store.sealed_copies(*id).unwrap(),
            vec![(0, vec![i as u8; 100])]
        );
    }
}
