//! A full disk must refuse new mail with `AppendError::Full` (452 4.3.1), lose nothing already
//! acknowledged, never panic, and recover by itself once space returns.
//!
//! Needs a small file system: the test mounts a 4 MiB tmpfs, which needs root (or CAP_SYS_ADMIN).
//! Where mounting is refused the test says why and returns; the ENOSPC/EDQUOT -> Full mapping is
//! also covered by the unit tests in `src/store/error.rs`.

use dimegate::envelope::{Envelope, QueueId, Recipient};
use dimegate::store::{AppendError, Store, StoreOptions, UnixTime};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

struct Mount(PathBuf);

impl Mount {
    fn tmpfs(dir: &Path, size: &str) -> Result<Mount, String> {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs refused: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Mount(dir.to_owned()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn envelope(n: u64) -> Envelope {
    Envelope {
        sender: format!("s{n}@full.test"),
        recipients: vec![Recipient {
            address: "r@dest.test".into(),
            notify: None,
            orcpt: None,
        }],
        dsn_ret: None,
        dsn_envid: None,
        body_8bit: false,
        smtputf8: false,
        helo: "client".into(),
        client: SocketAddr::from(([192, 0, 2, 9], 2525)),
        tls: None,
        auth_user: None,
        arrival_unix: n,
        require_tls: false,
    }
}

fn body(n: u64) -> Vec<u8> {
    (0..64 * 1024).map(|i| (i as u64 ^ n) as u8).collect()
}

#[tokio::test]
async fn enospc_is_full_and_the_store_recovers_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let _mount = match Mount::tmpfs(dir.path(), "4m") {
        Ok(m) => m,
        // CI runs as root, where mounting works: there a refusal is a failure, not a skip.
        Err(why) if std::env::var_os("CI").is_some() => panic!("cannot mount a tmpfs in CI: {why}"),
        Err(why) => {
            eprintln!("SKIPPED enospc_is_full_and_the_store_recovers_when_space_returns: {why}");
            return;
        }
    };
    // Ballast to delete later: "space returns".
    let ballast = dir.path().join("ballast");
    std::fs::write(&ballast, vec![0u8; 1024 * 1024]).unwrap();

    let path = dir.path().join("queue.redb");
    // No reserve: this test is about the real ENOSPC path inside redb's commit.
    let options = StoreOptions {
        min_free_bytes: 0,
        ..StoreOptions::default()
    };
    let store = Store::open_with(&path, options.clone()).unwrap();
    let mut acked: Vec<(QueueId, u64)> = Vec::new();
    let mut n = 0;
    let full = loop {
        n += 1;
        assert!(n < 1000, "4 MiB never filled up");
        match store.append(envelope(n), body(n)).await {
            Ok(id) => acked.push((id, n)),
            Err(e) => break e,
        }
    };
    assert!(full.is_full(), "want Full, got {full:?}");
    eprintln!(
        "disk full after {} acknowledged 64 KiB appends: {full}",
        acked.len()
    );
    // Still full: refused again, no panic.
    let again = store.append(envelope(0), body(0)).await.unwrap_err();
    assert!(matches!(again, AppendError::Full), "{again:?}");

    // Reads work while full and see every acknowledged message.
    assert_eq!(store.count().unwrap(), acked.len() as u64);
    for (id, n) in &acked {
        assert_eq!(store.body(*id).unwrap().as_deref(), Some(&body(*n)[..]));
    }

    // A delete while full may fail for want of space (redb writes copy-on-write); either way it
    // is an answer, not a panic, and the store stays usable.
    let (victim, _) = acked[0];
    match store.delete(victim) {
        Ok(existed) => {
            assert!(existed);
            acked.remove(0);
            eprintln!("delete while full: ok");
        }
        Err(e) => eprintln!("delete while full refused: {e}"),
    }
    assert_eq!(store.count().unwrap(), acked.len() as u64);

    // Space returns: appends work again without a restart.
    std::fs::remove_file(&ballast).unwrap();
    let id = store
        .append(envelope(9999), body(9999))
        .await
        .expect("append after space returned");
    acked.push((id, 9999));
    let leases = store
        .lease_due(UnixTime(u64::MAX / 2), Duration::from_secs(60), 1)
        .expect("scheduler writes work again");
    assert_eq!(leases.len(), 1);

    // And everything acknowledged survives a reopen.
    drop(store);
    let store = Store::open_with(&path, options).unwrap();
    for (id, n) in &acked {
        let record = store
            .get(*id)
            .unwrap()
            .expect("acknowledged message present");
        assert_eq!(record.envelope, envelope(*n));
        assert_eq!(store.body(*id).unwrap().as_deref(), Some(&body(*n)[..]));
    }
}
