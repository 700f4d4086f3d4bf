use super::record::tests::envelope;
use super::*;
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
    // The body is still there for the operator to rescue.
    assert_eq!(store.body(id).unwrap(), Some(b"body".to_vec()));
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
