//! kill -9 at a random moment must not lose an acknowledged message, nor corrupt the store.
//!
//! The guarded failure: a message got `250` (its `append` returned `Ok`), the process died, and
//! after restart the message — or the store as a whole — is gone. The test re-executes its own
//! binary as a child (selected by an environment variable) that appends from several tasks as fast
//! as it can and prints each acknowledged queue id as soon as `append` returns; the parent kills it
//! with SIGKILL at a random moment, reopens the store and checks every acknowledged id is there with
//! its exact envelope and body. Several rounds run on the same file, so recovery from one crash is
//! also crashed into.

use dimegate::envelope::{Envelope, QueueId, Recipient};
use dimegate::store::{ListFilter, Outcome, StateKind, Store, StoreError, UnixTime};
use rand::Rng;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "DIMEGATE_STORE_CRASH_CHILD";
const ROUND_ENV: &str = "DIMEGATE_STORE_CRASH_ROUND";
const TEST_NAME: &str = "acknowledged_appends_survive_sigkill";
/// Rounds by default; `DIMEGATE_STORE_CRASH_ROUNDS` runs longer.
const ROUNDS: u32 = 8;
const TASKS: u32 = 16;

/// What a (round, task, seq) triple stores: derivable again by the parent.
fn message(round: u32, task: u32, seq: u32) -> (Envelope, Vec<u8>) {
    let rcpts = 1 + (seq % 3) as usize;
    let envelope = Envelope {
        sender: format!("r{round}-t{task}-s{seq}@crash.test"),
        recipients: (0..rcpts)
            .map(|i| Recipient {
                address: format!("rcpt{i}@dest{}.test", seq % 5),
                notify: None,
                orcpt: None,
            })
            .collect(),
        dsn_ret: None,
        dsn_envid: Some(format!("env-{round}-{task}-{seq}")),
        body_8bit: seq.is_multiple_of(2),
        smtputf8: false,
        helo: "crash.client".into(),
        client: SocketAddr::from(([198, 51, 100, 7], 40000 + (task as u16))),
        tls: None,
        auth_user: None,
        arrival_unix: 1_700_000_000 + u64::from(seq),
        require_tls: false,
    };
    // Sizes from a few bytes to ~48 KiB, so batches cross pages and the byte cap varies.
    let len = ((seq as usize * 7919 + task as usize * 104_729) % 48_000) + 3;
    let body = (0..len)
        .map(|i| (i as u32 ^ seq ^ (task << 8) ^ (round << 16)) as u8)
        .collect();
    (envelope, body)
}

fn child(path: &Path) {
    let round: u32 = std::env::var(ROUND_ENV)
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    let store = Store::open(path, None).expect("child opens the store");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let mut tasks = Vec::new();
        for task in 0..TASKS {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for seq in 0.. {
                    let (envelope, body) = message(round, task, seq);
                    match store.append(envelope, body).await {
                        Ok(id) => {
                            // One write per line, flushed: the parent must see every ack that
                            // happened before the kill.
                            let line = format!("ACK {id} {round} {task} {seq}\n");
                            let mut out = std::io::stdout().lock();
                            let _ = out.write_all(line.as_bytes());
                            let _ = out.flush();
                        }
                        Err(e) => {
                            eprintln!("append failed: {e}");
                            return;
                        }
                    }
                }
            }));
        }
        // A scheduler at work too, so the kill also lands in lease and completion transactions.
        let scheduler = store.clone();
        tokio::task::spawn_blocking(move || {
            let mut n = 0u64;
            loop {
                let now = UnixTime::now();
                let leases = match scheduler.lease_due(now, Duration::from_secs(600), 20) {
                    Ok(l) => l,
                    Err(e) => {
                        eprintln!("lease_due failed: {e}");
                        return;
                    }
                };
                for lease in leases {
                    n += 1;
                    // Every third lease is left to be released by the restart.
                    let outcome = match n % 3 {
                        0 => continue,
                        1 => Outcome::Delivered,
                        _ => Outcome::Deferred {
                            next_at: now,
                            error: "451 4.4.1 crash test".into(),
                        },
                    };
                    if let Err(e) = scheduler.complete(&lease, now, outcome) {
                        eprintln!("complete failed: {e}");
                        return;
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        // Never reached in the test (the parent kills first); a bound in case the parent died.
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    std::process::exit(0);
}

struct Ack {
    queue_id: QueueId,
    round: u32,
    task: u32,
    seq: u32,
}

fn parse_ack(line: &str) -> Option<Ack> {
    let mut words = line.strip_prefix("ACK ")?.split_whitespace();
    Some(Ack {
        queue_id: words.next()?.parse().ok()?,
        round: words.next()?.parse().ok()?,
        task: words.next()?.parse().ok()?,
        seq: words.next()?.parse().ok()?,
    })
}

fn run_round(path: &Path, round: u32) -> Vec<Ack> {
    let mut child = Command::new(std::env::current_exe().expect("own test binary"))
        .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, path)
        .env(ROUND_ENV, round.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("child stdout");
    let acks = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let acks = acks.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    // A line without its newline was cut by the kill; it was never complete.
                    Ok(_) if line.last() != Some(&b'\n') => break,
                    Ok(_) => {
                        if let Some(ack) = parse_ack(&String::from_utf8_lossy(&line)) {
                            acks.lock().unwrap().push(ack);
                        }
                    }
                }
            }
        })
    };

    // Wait for the first ack, so every round kills a child that is committing.
    let started = Instant::now();
    while acks.lock().unwrap().is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "child acknowledged nothing within 30 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    if round == 0 {
        // While the server runs, a second process (the CLI) must get a distinct Locked error.
        match Store::open(path, None) {
            Err(StoreError::Locked { .. }) => {}
            Err(e) => panic!("want Locked while the child runs, got {e}"),
            Ok(_) => panic!("opened a store another process has open"),
        }
    }
    let delay = rand::thread_rng().gen_range(20..400);
    std::thread::sleep(Duration::from_millis(delay));
    child.kill().expect("SIGKILL the child");
    let status = child.wait().expect("wait child");
    assert!(!status.success(), "child should have died by SIGKILL");
    reader.join().expect("reader thread");
    std::mem::take(&mut *acks.lock().unwrap())
}

#[test]
fn acknowledged_appends_survive_sigkill() {
    if let Some(path) = std::env::var_os(CHILD_ENV) {
        child(&PathBuf::from(path));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.redb");
    let mut total_acked = 0usize;
    let rounds = std::env::var("DIMEGATE_STORE_CRASH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(ROUNDS);
    for round in 0..rounds {
        let acks = run_round(&path, round);
        total_acked += acks.len();

        // redb's own integrity check on the file the kill left (it repairs an unclean stop).
        {
            let mut db = redb::Database::open(&path).expect("redb opens after kill -9");
            assert!(db.check_integrity().expect("integrity check runs"));
        }

        let store = Store::open(&path, None).expect("store opens cleanly after kill -9");
        for ack in &acks {
            let (envelope, body) = message(ack.round, ack.task, ack.seq);
            let record = store
                .get(ack.queue_id)
                .expect("get")
                .unwrap_or_else(|| panic!("acknowledged {} lost in round {round}", ack.queue_id));
            assert_eq!(record.envelope, envelope, "envelope of {}", ack.queue_id);
            assert_eq!(record.size, body.len() as u64);
            let stored = store
                .body(ack.queue_id)
                .expect("body")
                .expect("body present");
            assert!(stored == body, "body of {} differs", ack.queue_id);
        }
        // Every record decodes (no half-written batch is visible).
        let all = store.list(&ListFilter::default(), None).expect("list all");
        assert_eq!(all.len() as u64, store.count().unwrap());
        assert!(all.len() >= total_acked, "fewer records than acks");
        // The restart released every lease, and the schedule index agrees with the records:
        // leasing everything due in the far future finds exactly the open recipients.
        let open: usize = all
            .iter()
            .flat_map(|m| &m.recipients)
            .inspect(|r| assert_ne!(r.state, StateKind::Leased, "lease survived a restart"))
            .filter(|r| matches!(r.state, StateKind::Queued | StateKind::Deferred))
            .count();
        let leased = store
            .lease_due(UnixTime(u64::MAX / 2), Duration::from_secs(1), usize::MAX)
            .expect("lease after restart");
        assert_eq!(
            leased.len(),
            open,
            "schedule index out of step with records"
        );
        eprintln!(
            "round {round}: {} acknowledged this round, {} acknowledged in all, {} stored",
            acks.len(),
            total_acked,
            all.len()
        );
    }
    assert!(total_acked > 0);
}
