use super::record::tests::envelope;
use super::*;

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
