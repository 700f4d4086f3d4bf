use super::record::tests::envelope;
use super::*;
use crate::time::UnixTime;
use redb::ReadableTableMetadata;
use std::time::Duration;

fn open(dir: &tempfile::TempDir) -> Store {
    Store::open(&dir.path().join("queue.redb"), None).unwrap()
}

#[tokio::test]
async fn append_then_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let env = envelope("a@x.org", &["b@y.org", "c@z.org"], 1_700_000_000);
    // Bytes untouched: bare LF, NUL and 8-bit stay as they came.
    let body = b"Subject: hi\n\r\n\0\xff.\r\n".to_vec();
    let id = store.append(env.clone(), body.clone()).await.unwrap();

    let rec = store.get(id).unwrap().unwrap();
    assert_eq!(rec.envelope, env);
    assert_eq!(rec.size, body.len() as u64);
    assert_eq!(rec.recipients.len(), 2);
    assert!(
        rec.recipients
            .iter()
            .all(|r| r.state == RecipientState::Queued)
    );
    assert_eq!(store.body(id).unwrap(), Some(body));
    assert_eq!(store.count().unwrap(), 1);

    let list = store.list(&ListFilter::default(), None).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].queue_id, id);
    assert_eq!(list[0].recipients[1].address, "c@z.org");
    assert_eq!(list[0].recipients[1].state, StateKind::Queued);
    let json = serde_json::to_value(&list[0]).unwrap();
    assert_eq!(json["recipients"][0]["state"], "queued");

    assert!(store.delete(id).unwrap());
    assert!(!store.delete(id).unwrap());
    assert_eq!(store.get(id).unwrap(), None);
    assert_eq!(store.body(id).unwrap(), None);
    assert_eq!(store.count().unwrap(), 0);
}

#[tokio::test]
async fn concurrent_appends_get_distinct_ids_and_list_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let mut tasks = Vec::new();
    for i in 0..50u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let env = envelope(&format!("s{i}@x.org"), &["r@y.org"], i);
            let id = store.append(env, vec![b'x'; i as usize]).await.unwrap();
            (id, i)
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    for (id, i) in &ids {
        assert_eq!(store.get(*id).unwrap().unwrap().envelope.arrival_unix, *i);
        assert_eq!(store.body(*id).unwrap().unwrap().len(), *i as usize);
    }
    let listed: Vec<QueueId> = store
        .list(&ListFilter::default(), None)
        .unwrap()
        .iter()
        .map(|s| s.queue_id)
        .collect();
    let mut sorted: Vec<QueueId> = ids.iter().map(|(id, _)| *id).collect();
    sorted.sort();
    sorted.dedup();
    assert_eq!(listed, sorted);
    assert_eq!(
        store.list(&ListFilter::default(), Some(7)).unwrap().len(),
        7
    );
    let filter = ListFilter {
        sender: Some("S3@X.ORG".into()),
        ..ListFilter::default()
    };
    assert_eq!(store.list(&filter, None).unwrap().len(), 1);
}

#[tokio::test]
async fn ids_stay_unique_across_reopen_after_delete() {
    let dir = tempfile::tempdir().unwrap();
    let first = {
        let store = open(&dir);
        let id = store
            .append(envelope("a@x.org", &["b@y.org"], 1), vec![])
            .await
            .unwrap();
        store.delete(id).unwrap();
        id
    };
    let store = open(&dir);
    let second = store
        .append(envelope("a@x.org", &["b@y.org"], 1), vec![])
        .await
        .unwrap();
    assert!(second > first, "{second} after {first}");
}

#[tokio::test]
async fn corrupt_record_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let id = store
        .append(envelope("a@x.org", &["b@y.org"], 1), b"body".to_vec())
        .await
        .unwrap();
    store
        .inner
        .slot
        .with_db(|db| {
            let txn = db.begin_write()?;
            txn.open_table(MESSAGES)?
                .insert(id.0, &b"\x01{not json"[..])?;
            txn.commit()?;
            Ok(())
        })
        .unwrap();
    assert!(matches!(
        store.get(id),
        Err(StoreError::Corrupt { queue_id, .. }) if queue_id == id
    ));
    assert!(matches!(
        store.list(&ListFilter::default(), None),
        Err(StoreError::Corrupt { .. })
    ));
    // The body was inline in the damaged record: an error, not a guess.
    assert!(matches!(store.body(id), Err(StoreError::Corrupt { .. })));
    // A body kept apart (a file, or a row of a release-1 `bodies` table) is still there for the
    // operator to rescue.
    let big = store
        .append(envelope("a@x.org", &["b@y.org"], 1), vec![b'b'; 9000])
        .await
        .unwrap();
    store
        .inner
        .slot
        .with_db(|db| {
            let txn = db.begin_write()?;
            let mut messages = txn.open_table(MESSAGES)?;
            messages.insert(big.0, &b"\x01{not json"[..])?;
            messages.insert(big.0 + 1000, &b"\x07"[..])?;
            txn.open_table(BODIES)?
                .insert(big.0 + 1000, &b"old body"[..])?;
            drop(messages);
            txn.commit()?;
            Ok(())
        })
        .unwrap();
    assert_eq!(store.body(big).unwrap(), Some(vec![b'b'; 9000]));
    assert_eq!(
        store.body(QueueId(big.0 + 1000)).unwrap(),
        Some(b"old body".to_vec())
    );
}

#[tokio::test]
async fn below_the_free_space_reserve_appends_are_full() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(
        &dir.path().join("queue.redb"),
        StoreOptions {
            min_free_bytes: u64::MAX / 2,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    let err = store
        .append(envelope("a@x.org", &["b@y.org"], 1), vec![])
        .await
        .unwrap_err();
    assert!(err.is_full(), "{err}");
    assert_eq!(store.count().unwrap(), 0);
}

#[tokio::test]
async fn commit_latency_is_observed() {
    let dir = tempfile::tempdir().unwrap();
    let histogram = Histogram::new([0.001, 0.01, 0.1, 1.0]);
    let store = Store::open(&dir.path().join("q.redb"), Some(histogram.clone())).unwrap();
    store
        .append(envelope("a@x.org", &["b@y.org"], 1), vec![])
        .await
        .unwrap();
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register("commit_latency", "test", histogram);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(text.contains("commit_latency_count 1"), "{text}");
}

#[test]
fn a_second_open_of_the_same_file_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let _store = open(&dir);
    match Store::open(&dir.path().join("queue.redb"), None) {
        Err(StoreError::Locked { .. }) => {}
        Err(e) => panic!("want Locked, got {e}"),
        Ok(_) => panic!("want Locked, got a second store"),
    }
}

#[tokio::test]
async fn dropping_the_store_stops_the_committer_and_keeps_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let store = open(&dir);
        store
            .append(envelope("a@x.org", &["b@y.org"], 1), b"x".to_vec())
            .await
            .unwrap()
    };
    // The file lock is released, so it opens again.
    let store = open(&dir);
    assert_eq!(store.body(id).unwrap(), Some(b"x".to_vec()));
}

const MIN: Duration = Duration::from_secs(60);

#[tokio::test]
async fn leases_are_exclusive_and_outcomes_move_recipients() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let now = UnixTime(2_000_000_000);
    let a = store
        .append(envelope("s@x.org", &["a@y.org", "b@z.org"], 1), vec![])
        .await
        .unwrap();
    let b = store
        .append(envelope("s@x.org", &["c@y.org"], 2), vec![])
        .await
        .unwrap();

    let leases = store.lease_due(now, 10 * MIN, 2).unwrap();
    assert_eq!(
        leases
            .iter()
            .map(|l| (l.queue_id, l.recipient))
            .collect::<Vec<_>>(),
        [(a, 0), (a, 1)],
        "FIFO, capped at max"
    );
    let more = store.lease_due(now, 10 * MIN, 10).unwrap();
    assert_eq!(more.len(), 1, "only the unleased recipient of b");
    assert_eq!((more[0].queue_id, more[0].recipient), (b, 0));
    assert!(store.lease_due(now, 10 * MIN, 10).unwrap().is_empty());

    let rec = store.complete(&leases[0], now, Outcome::Delivered).unwrap();
    assert_eq!(
        rec.unwrap().recipients[0].state,
        RecipientState::Delivered { at: now }
    );
    let next_at = now.plus(5 * MIN);
    store
        .complete(
            &leases[1],
            now,
            Outcome::Deferred {
                next_at,
                error: "451 4.4.1 try later".into(),
            },
        )
        .unwrap();
    // Completing twice is refused: the recipient is no longer leased.
    assert!(matches!(
        store.complete(&leases[0], now, Outcome::Delivered),
        Err(StoreError::Transition(_))
    ));
    let bad = Lease {
        recipient: 9,
        ..leases[0].clone()
    };
    assert!(matches!(
        store.complete(&bad, now, Outcome::Delivered),
        Err(StoreError::NoSuchRecipient { recipient: 9, .. })
    ));

    // The deferred recipient is due at next_at, not before; b's lease lapses at now + 10 min.
    assert!(
        store
            .lease_due(now.plus(MIN), 10 * MIN, 10)
            .unwrap()
            .is_empty()
    );
    let again = store.lease_due(next_at, 10 * MIN, 10).unwrap();
    assert_eq!((again[0].queue_id, again[0].recipient), (a, 1));
    assert_eq!(again[0].attempts, 1);
    let lapsed = store.lease_due(now.plus(10 * MIN), 10 * MIN, 10).unwrap();
    assert_eq!((lapsed[0].queue_id, lapsed[0].recipient), (b, 0));
    // The first lease of b is stale now: its completion must not override the new one.
    assert!(matches!(
        store.complete(&more[0], now, Outcome::Delivered),
        Err(StoreError::Transition(_))
    ));
    store
        .complete(
            &lapsed[0],
            now,
            Outcome::Failed {
                reply: "550 5.1.1 no such user".into(),
            },
        )
        .unwrap();
    let summary = store.list(&ListFilter::default(), None).unwrap();
    assert_eq!(summary[1].recipients[0].state, StateKind::Failed);
    assert_eq!(summary[1].recipients[0].attempts, 1);
}

#[tokio::test]
async fn a_restart_releases_leases_of_the_dead_process() {
    let dir = tempfile::tempdir().unwrap();
    let now = UnixTime(2_000_000_000);
    let id = {
        let store = open(&dir);
        let id = store
            .append(envelope("s@x.org", &["a@y.org"], 1), vec![])
            .await
            .unwrap();
        assert_eq!(store.lease_due(now, 60 * MIN, 10).unwrap().len(), 1);
        id
    };
    let store = open(&dir);
    let rec = store.get(id).unwrap().unwrap();
    assert_eq!(rec.recipients[0].state, RecipientState::Queued);
    let leases = store.lease_due(now, 60 * MIN, 10).unwrap();
    assert_eq!(
        leases.len(),
        1,
        "due again without waiting for the lease to lapse"
    );
}

#[tokio::test]
async fn admin_actions_and_delete_keep_the_schedule_in_step() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let now = UnixTime(2_000_000_000);
    let id = store
        .append(envelope("s@x.org", &["a@y.org", "b@y.org"], 1), vec![])
        .await
        .unwrap();
    let held = store.apply(id, &AdminAction::Hold, now).unwrap().unwrap();
    assert!(
        held.recipients
            .iter()
            .all(|r| r.state == RecipientState::Held)
    );
    assert!(
        store.lease_due(now, MIN, 10).unwrap().is_empty(),
        "held is not due"
    );
    let filter = ListFilter {
        state: Some(StateKind::Held),
        ..ListFilter::default()
    };
    assert_eq!(store.list(&filter, None).unwrap().len(), 1);

    store.apply(id, &AdminAction::Release, now).unwrap();
    let lease = store.lease_due(now, MIN, 1).unwrap();
    assert_eq!(lease.len(), 1);
    // Bounce fails the recipient that is not in flight and leaves the leased one alone.
    let bounced = store
        .apply(
            id,
            &AdminAction::Bounce {
                reason: "bounced by operator".into(),
            },
            now,
        )
        .unwrap()
        .unwrap();
    assert_eq!(bounced.recipients[0].state.kind(), StateKind::Leased);
    assert_eq!(bounced.recipients[1].state.kind(), StateKind::Failed);
    assert_eq!(
        store.apply(QueueId(1), &AdminAction::Retry, now).unwrap(),
        None
    );

    assert!(store.delete(id).unwrap());
    assert!(
        store
            .lease_due(now.plus(60 * MIN), MIN, 10)
            .unwrap()
            .is_empty()
    );
    store
        .inner
        .slot
        .with_db(|db| {
            let txn = db.begin_read()?;
            assert_eq!(txn.open_table(SCHEDULE)?.len()?, 0);
            assert_eq!(txn.open_table(LEASES)?.len()?, 0);
            Ok(())
        })
        .unwrap();
}

/// Concurrent appends share commits: 100 callers, far fewer fsyncs. On a current-thread runtime
/// all 100 requests are queued before the first answer can be awaited, so at most the first
/// request commits alone.
#[tokio::test(flavor = "current_thread")]
async fn concurrent_appends_are_group_committed() {
    let dir = tempfile::tempdir().unwrap();
    let histogram = Histogram::new([0.001, 0.01, 0.1, 1.0]);
    let store = Store::open(&dir.path().join("q.redb"), Some(histogram.clone())).unwrap();
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .append(envelope("a@x.org", &["b@y.org"], i), vec![0; 100])
                    .await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register("commit_latency", "test", histogram);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let commits: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("commit_latency_count "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap();
    assert!(commits <= 5, "100 appends took {commits} commits");
    assert_eq!(store.count().unwrap(), 100);
}

#[test]
fn store_is_clone_send_sync() {
    fn shareable<T: Clone + Send + Sync + 'static>() {}
    shareable::<Store>();
    fn error_is_shareable<T: std::error::Error + Send + Sync + 'static>() {}
    error_is_shareable::<StoreError>();
    error_is_shareable::<AppendError>();
}

#[test]
fn a_file_that_is_not_a_store_is_an_open_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.redb");
    std::fs::write(&path, vec![0x5a; 10_000]).unwrap();
    match Store::open(&path, None) {
        Err(StoreError::Open { .. }) => {}
        Err(e) => panic!("want Open, got {e}"),
        Ok(_) => panic!("opened garbage"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_run_while_the_committer_writes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let reader = {
        let store = store.clone();
        std::thread::spawn(move || {
            let mut last = 0;
            while last < 200 {
                let count = store.count().unwrap();
                assert!(count >= last, "count went back: {count} < {last}");
                let listed = store.list(&ListFilter::default(), None).unwrap();
                // A snapshot never shows a message without its body.
                for m in &listed {
                    assert!(store.body(m.queue_id).unwrap().is_some());
                }
                last = count;
            }
        })
    };
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .append(envelope("a@x.org", &["b@y.org"], i), vec![1; 1000])
                    .await
                    .unwrap()
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    reader.join().unwrap();
}

#[tokio::test]
async fn settle_records_outcomes_and_removals_in_one_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let now = UnixTime(2_000_000_000);
    let a = store
        .append(envelope("s@x.org", &["a@y.org", "b@z.org"], 1), vec![1])
        .await
        .unwrap();
    let b = store
        .append(envelope("s@x.org", &["c@y.org"], 2), vec![2])
        .await
        .unwrap();
    let leases = store.lease_due(now, 10 * MIN, 10).unwrap();
    assert_eq!(leases.len(), 3);
    let stale = Lease {
        until: now.plus(MIN),
        ..leases[1].clone()
    };
    let answers = store
        .settle(
            now,
            &[
                Settlement::Complete {
                    lease: leases[0].clone(),
                    outcome: Outcome::Delivered,
                },
                Settlement::Complete {
                    lease: stale,
                    outcome: Outcome::Delivered,
                },
                Settlement::Complete {
                    lease: leases[2].clone(),
                    outcome: Outcome::Delivered,
                },
                Settlement::MarkDelayWarned { queue_id: a },
                Settlement::Remove { queue_id: b },
            ],
        )
        .unwrap();
    assert!(answers[0].is_ok());
    assert!(
        matches!(answers[1], Err(StoreError::Transition(_))),
        "a stale lease is refused alone: {:?}",
        answers[1]
    );
    assert!(answers[2].is_ok() && answers[3].is_ok() && answers[4].is_ok());
    let rec = store.get(a).unwrap().unwrap();
    assert_eq!(
        rec.recipients[0].state,
        RecipientState::Delivered { at: now }
    );
    assert!(matches!(
        rec.recipients[1].state,
        RecipientState::Leased { .. }
    ));
    assert!(rec.delay_warned);
    assert!(store.get(b).unwrap().is_none());
    assert!(store.body(b).unwrap().is_none());
    assert_eq!(store.count().unwrap(), 1);
}

#[tokio::test]
async fn retry_for_a_domain_leaves_other_recipients_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let now = UnixTime(2_000_000_000);
    let id = store
        .append(envelope("s@x.org", &["a@y.org", "b@Z.org"], 1), vec![])
        .await
        .unwrap();
    let later = now.plus(60 * MIN);
    for lease in store.lease_due(now, 10 * MIN, 10).unwrap() {
        store
            .complete(
                &lease,
                now,
                Outcome::Deferred {
                    next_at: later,
                    error: "451 try later".into(),
                },
            )
            .unwrap();
    }
    store
        .apply_to_domain(id, &AdminAction::Retry, now, Some("z.org"))
        .unwrap();
    let due = store.lease_due(now, 10 * MIN, 10).unwrap();
    assert_eq!(
        due.iter().map(|l| l.address.as_str()).collect::<Vec<_>>(),
        ["b@Z.org"],
        "only the flushed domain is due now"
    );
}

fn bodies_dir(dir: &tempfile::TempDir) -> std::path::PathBuf {
    dir.path().join("queue.bodies")
}

fn body_files(dir: &tempfile::TempDir) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(bodies_dir(dir))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn big_body(n: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8) ^ n).collect()
}

#[tokio::test]
async fn large_bodies_are_files_that_go_when_the_message_goes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let small = store
        .append(envelope("s@x.org", &["a@y.org"], 1), vec![b'x'; 3584])
        .await
        .unwrap();
    let big = big_body(1, 300_000);
    let a = store
        .append(envelope("s@x.org", &["a@y.org"], 2), big.clone())
        .await
        .unwrap();
    let b = store
        .append(envelope("s@x.org", &["a@y.org"], 3), big_body(2, 3585))
        .await
        .unwrap();
    // Only the bodies above inline_body_max are files, named by queue id.
    assert_eq!(
        body_files(&dir),
        [format!("{:016x}", a.0), format!("{:016x}", b.0)]
    );
    assert_eq!(store.get(a).unwrap().unwrap().size, 300_000);
    assert_eq!(store.body(a).unwrap().as_deref(), Some(&big[..]));
    assert_eq!(store.body(small).unwrap().unwrap().len(), 3584);
    let mut streamed = Vec::new();
    std::io::Read::read_to_end(&mut store.body_reader(a).unwrap().unwrap(), &mut streamed).unwrap();
    assert_eq!(streamed, big);
    assert!(store.body_reader(QueueId(1)).unwrap().is_none());

    // Deleted: the file is gone. Settled away: the file is gone.
    assert!(store.delete(a).unwrap());
    assert_eq!(body_files(&dir), [format!("{:016x}", b.0)]);
    assert_eq!(store.body(a).unwrap(), None);
    let answers = store
        .settle(UnixTime::now(), &[Settlement::Remove { queue_id: b }])
        .unwrap();
    assert!(answers[0].is_ok());
    assert!(body_files(&dir).is_empty());
    assert_eq!(store.count().unwrap(), 1);

    // A record whose file vanished is an error to report, not a panic or an empty body.
    let c = store
        .append(envelope("s@x.org", &["a@y.org"], 4), big_body(3, 10_000))
        .await
        .unwrap();
    std::fs::remove_file(bodies_dir(&dir).join(format!("{:016x}", c.0))).unwrap();
    assert!(matches!(
        store.body(c),
        Err(StoreError::MissingBody { queue_id }) if queue_id == c
    ));
}

#[tokio::test]
async fn orphan_body_files_are_removed_at_open_and_live_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let live = {
        let store = open(&dir);
        store
            .append(envelope("s@x.org", &["a@y.org"], 1), big_body(1, 20_000))
            .await
            .unwrap()
    };
    // What a crash between the file's fsync and the commit leaves: a file no record names.
    let orphan = bodies_dir(&dir).join(format!("{:016x}", live.0 + 1));
    std::fs::write(&orphan, b"half a message").unwrap();
    let operator_file = bodies_dir(&dir).join("notes.txt");
    std::fs::write(&operator_file, b"mine").unwrap();
    let store = open(&dir);
    assert!(!orphan.exists());
    assert!(operator_file.exists());
    assert_eq!(store.body(live).unwrap(), Some(big_body(1, 20_000)));
    // Ids stay above the orphan's, which may be reused only because its file is gone.
    let next = store
        .append(envelope("s@x.org", &["a@y.org"], 2), big_body(2, 20_000))
        .await
        .unwrap();
    assert!(next > live);
    assert_eq!(store.body(next).unwrap(), Some(big_body(2, 20_000)));
}

#[tokio::test]
async fn max_messages_holds_exactly_under_concurrent_appends() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    // DSNs are owed whatever the size of the queue: plain append ignores the limit.
    for i in 0..3 {
        store
            .append(envelope("", &["a@y.org"], i), vec![])
            .await
            .unwrap();
    }
    let mut tasks = Vec::new();
    for i in 0..400u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            // Mixed sizes, so file and inline bodies race for the same places.
            let body = vec![b'x'; if i % 4 == 0 { 9000 } else { 100 }];
            store
                .append_limited(envelope("s@x.org", &["a@y.org"], i), body, 100)
                .await
        }));
    }
    let (mut ok, mut refused) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(AppendError::TooManyMessages { max: 100 }) => refused += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!((ok, refused), (97, 303));
    assert_eq!(store.count().unwrap(), 100);
    assert!(AppendError::TooManyMessages { max: 1 }.is_full());
    // Refused large bodies left no files behind.
    let stored_files = store
        .list(&ListFilter::default(), None)
        .unwrap()
        .iter()
        .filter(|m| m.size == 9000)
        .count();
    assert_eq!(body_files(&dir).len(), stored_files);
}

/// The recipient counts by state, by a pass over every record: what stats must equal.
fn scanned(store: &Store) -> [(StateKind, u64); 6] {
    let mut out = schedule::STATE_KINDS.map(|k| (k, 0u64));
    for m in store.list(&ListFilter::default(), None).unwrap() {
        for r in m.recipients {
            out[schedule::kind_index(r.state)].1 += 1;
        }
    }
    out
}

#[tokio::test]
async fn stats_follow_every_kind_of_write() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let now = UnixTime(2_000_000_000);
    let empty = store.stats().unwrap();
    assert_eq!((empty.messages, empty.oldest_arrival), (0, None));
    let check = |store: &Store, step: &str| {
        let stats = store.stats().unwrap();
        assert_eq!(stats.recipients, scanned(store), "after {step}");
        assert_eq!(stats.messages, store.count().unwrap(), "after {step}");
    };
    let mut ids = Vec::new();
    for i in 0..6u64 {
        let rcpts: Vec<String> = (0..=i % 3).map(|r| format!("r{r}@d{i}.org")).collect();
        let rcpts: Vec<&str> = rcpts.iter().map(String::as_str).collect();
        ids.push(
            store
                .append(envelope("s@x.org", &rcpts, 1000 + i), vec![1; 10])
                .await
                .unwrap(),
        );
    }
    check(&store, "appends");
    assert_eq!(store.stats().unwrap().oldest_arrival, Some(UnixTime(1000)));
    let leases = store.lease_due(now, 10 * MIN, 5).unwrap();
    check(&store, "lease_due");
    let mut items = Vec::new();
    for (n, lease) in leases.into_iter().enumerate() {
        let outcome = match n % 3 {
            0 => Outcome::Delivered,
            1 => Outcome::Deferred {
                next_at: now.plus(MIN),
                error: "451".into(),
            },
            _ => Outcome::Failed {
                reply: "550".into(),
            },
        };
        items.push(Settlement::Complete { lease, outcome });
    }
    items.push(Settlement::Remove { queue_id: ids[5] });
    store.settle(now, &items).unwrap();
    check(&store, "settle");
    store.apply(ids[4], &AdminAction::Hold, now).unwrap();
    check(&store, "hold");
    store.retry_domain(None).unwrap();
    check(&store, "retry_domain");
    store.delete(ids[0]).unwrap();
    check(&store, "delete");
    assert_eq!(store.stats().unwrap().oldest_arrival, Some(UnixTime(1001)));
    let l = store.lease_due(now, 10 * MIN, 100).unwrap();
    assert!(!l.is_empty());
    drop(store);
    // The restart releases the leases through the same bookkeeping.
    let store = open(&dir);
    check(&store, "restart");
    assert_eq!(store.stats().unwrap().recipients[1], (StateKind::Leased, 0));
}

#[tokio::test]
async fn a_store_without_counts_is_recounted_once_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    for i in 0..5 {
        store
            .append(envelope("s@x.org", &["a@y.org", "b@y.org"], i), vec![])
            .await
            .unwrap();
    }
    store.lease_due(UnixTime(2_000_000_000), MIN, 3).unwrap();
    // What a store written by the previous release looks like: no counts at all.
    store
        .inner
        .slot
        .with_db(|db| {
            let txn = db.begin_write()?;
            txn.delete_table(COUNTS).map_err(redb::Error::from)?;
            txn.open_table(META)?.remove(COUNTS_VERSION)?;
            txn.commit()?;
            Ok(())
        })
        .unwrap();
    drop(store);
    // Read-only, the old store's stats come from a scan.
    let reader = StoreReader::open(&dir.path().join("queue.redb")).unwrap();
    let read_only = reader.stats().unwrap();
    drop(reader);
    let store = open(&dir);
    let stats = store.stats().unwrap();
    assert_eq!(stats.recipients, scanned(&store));
    assert_eq!(stats.recipients[0], (StateKind::Queued, 10));
    // Before the writable open released them, three recipients were leased.
    assert_eq!(read_only.recipients[0], (StateKind::Queued, 7));
    assert_eq!(read_only.recipients[1], (StateKind::Leased, 3));
}

fn snapshot(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in walk(dir) {
        let bytes = std::fs::read(&entry).unwrap();
        out.push((entry, bytes));
    }
    out.sort();
    out
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test]
async fn the_reader_never_writes_and_sees_leases_as_left() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.redb");
    let (id, big) = {
        let store = open(&dir);
        let id = store
            .append(envelope("s@x.org", &["a@y.org"], 1), vec![7; 10])
            .await
            .unwrap();
        let big = store
            .append(envelope("s@x.org", &["b@y.org"], 2), big_body(9, 50_000))
            .await
            .unwrap();
        store
            .lease_due(UnixTime(2_000_000_000), 10 * MIN, 1)
            .unwrap();
        // While the server holds the store, a reader is refused (the CLI then asks the server).
        assert!(matches!(
            StoreReader::open(&path),
            Err(StoreError::Locked { .. })
        ));
        (id, big)
    };
    // An orphan a writable open would delete: the reader must leave it too.
    std::fs::write(bodies_dir(&dir).join(format!("{:016x}", big.0 + 5)), b"x").unwrap();
    let before = snapshot(dir.path());
    {
        let reader = StoreReader::open(&path).unwrap();
        let list = reader.list(&ListFilter::default(), None).unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].recipients[0].state, StateKind::Leased);
        assert_eq!(reader.get(id).unwrap().unwrap().queue_id, id);
        assert_eq!(reader.body(big).unwrap(), Some(big_body(9, 50_000)));
        assert_eq!(reader.count().unwrap(), 2);
        assert_eq!(
            reader.stats().unwrap().recipients[1],
            (StateKind::Leased, 1)
        );
        // Two readers at once are fine; neither takes the writer's place.
        let second = StoreReader::open(&path).unwrap();
        assert_eq!(second.count().unwrap(), 2);
    }
    assert_eq!(
        snapshot(dir.path()),
        before,
        "a read-only look changed files"
    );
    // The next writable open is the one that releases the lease.
    let store = open(&dir);
    assert_eq!(
        store.get(id).unwrap().unwrap().recipients[0].state,
        RecipientState::Queued
    );
}

#[tokio::test]
async fn retry_domain_walks_more_than_one_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let now = UnixTime(2_000_000_000);
    let total = RETRY_CHUNK + 100;
    let mut tasks = Vec::new();
    for t in 0..64usize {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in (t..total).step_by(64) {
                let rcpt = if i % 2 == 0 {
                    "a@even.org"
                } else {
                    "a@odd.org"
                };
                store
                    .append(envelope("s@x.org", &[rcpt], i as u64), vec![])
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Defer them all into the future.
    loop {
        let leases = store.lease_due(now, 10 * MIN, 1000).unwrap();
        if leases.is_empty() {
            break;
        }
        let items: Vec<Settlement> = leases
            .into_iter()
            .map(|lease| Settlement::Complete {
                lease,
                outcome: Outcome::Deferred {
                    next_at: now.plus(60 * MIN),
                    error: "451".into(),
                },
            })
            .collect();
        store.settle(now, &items).unwrap();
    }
    let mut progress = Vec::new();
    assert_eq!(
        store
            .retry_domain_with(Some("EVEN.org"), |n| progress.push(n))
            .unwrap(),
        total as u64 / 2
    );
    // One report after the first (full) chunk, with the even ones of it; none after the last.
    assert_eq!(progress.len(), 1, "{progress:?}");
    assert!(
        progress[0] > 0 && progress[0] < total as u64 / 2,
        "{progress:?}"
    );
    let stats = store.stats().unwrap();
    assert_eq!(stats.recipients[0], (StateKind::Queued, total as u64 / 2));
    assert_eq!(stats.recipients[2], (StateKind::Deferred, total as u64 / 2));
    let due = store.lease_due(now, 10 * MIN, total).unwrap();
    assert_eq!(due.len(), total / 2);
    assert!(due.iter().all(|l| l.address == "a@even.org"));
}

#[tokio::test]
async fn a_drained_queue_gives_its_database_space_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let path = dir.path().join("queue.redb");
    let mut tasks = Vec::new();
    for t in 0..64u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..64u64 {
                let env = envelope("s@x.org", &["a@y.org"], t * 64 + i);
                ids.push(store.append(env, vec![b'x'; 2000]).await.unwrap());
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.extend(t.await.unwrap());
    }
    let full = std::fs::metadata(&path).unwrap().len();
    assert!(
        full > COMPACT_ABOVE_BYTES,
        "{full} bytes is too small to test"
    );
    let (last, rest) = ids.split_last().unwrap();
    let items: Vec<Settlement> = rest
        .iter()
        .map(|&queue_id| Settlement::Remove { queue_id })
        .collect();
    store.settle(UnixTime::now(), &items).unwrap();
    // One message left: no compaction yet.
    assert_eq!(std::fs::metadata(&path).unwrap().len(), full);
    assert!(store.delete(*last).unwrap());
    let drained = std::fs::metadata(&path).unwrap().len();
    assert!(
        drained < full / 4,
        "{drained} bytes after the drain, {full} full"
    );
    // Still a working store.
    let id = store
        .append(envelope("s@x.org", &["a@y.org"], 1), vec![1; 10])
        .await
        .unwrap();
    assert_eq!(store.body(id).unwrap(), Some(vec![1; 10]));
}

#[tokio::test]
async fn streamed_bodies_are_written_in_pieces_and_abandoned_ones_leave_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let body = big_body(3, 600_000);
    let mut writer = store.body_writer().unwrap();
    for piece in body[..590_000].chunks(100_000) {
        writer.write(piece.to_vec()).await.unwrap();
    }
    assert_eq!(writer.written(), 590_000);
    // Not yet a message: the file exists, no record does.
    assert_eq!(body_files(&dir).len(), 1);
    assert_eq!(store.count().unwrap(), 0);
    let id = store
        .append_streamed(
            envelope("s@x.org", &["a@y.org"], 1),
            writer,
            body[590_000..].to_vec(),
            10,
        )
        .await
        .unwrap();
    assert_eq!(body_files(&dir), [format!("{:016x}", id.0)]);
    assert_eq!(store.get(id).unwrap().unwrap().size, 600_000);
    assert_eq!(store.body(id).unwrap(), Some(body.clone()));

    // Refused by max_messages: the file goes with the refusal.
    let mut refused = store.body_writer().unwrap();
    refused.write(vec![b'r'; 10_000]).await.unwrap();
    let err = store
        .append_streamed(envelope("s@x.org", &["a@y.org"], 2), refused, vec![], 1)
        .await
        .unwrap_err();
    assert!(
        matches!(err, AppendError::TooManyMessages { max: 1 }),
        "{err}"
    );
    // Abandoned mid-message (the client went away): dropping the writer removes its file.
    let mut abandoned = store.body_writer().unwrap();
    abandoned.write(vec![b'a'; 10_000]).await.unwrap();
    drop(abandoned);
    assert_eq!(body_files(&dir), [format!("{:016x}", id.0)]);
    // Ids of streamed messages stay unique and above the abandoned ones.
    let next = store
        .append(envelope("s@x.org", &["a@y.org"], 3), vec![b'z'; 10])
        .await
        .unwrap();
    assert!(next > id);
}
