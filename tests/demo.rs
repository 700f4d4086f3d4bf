//! `dimegate demo` as a new user runs it: no configuration, no DIME_* or DIMEGATE_* settings,
//! an empty PATH (nothing installed is needed), a fresh working and temporary directory. It
//! must exit 0, print each hop's view, leave nothing behind, and stop its gateways on Ctrl-C.

mod common;

use common::{bin, tempdir};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn fresh(home: &Path) -> Command {
    let empty = home.join("empty-path");
    let tmp = home.join("tmp");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::create_dir_all(&tmp).unwrap();
    let mut cmd = Command::new(bin());
    cmd.env_clear()
        .env("HOME", home)
        .env("PATH", &empty)
        .env("TMPDIR", &tmp)
        .current_dir(home)
        .stdin(Stdio::null());
    cmd
}

/// Processes whose command line mentions `needle` (the demo's gateways name their config).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline"))
            && String::from_utf8_lossy(&cmdline).contains(needle)
        {
            found.push(String::from_utf8_lossy(&cmdline).replace('\0', " "));
        }
    }
    found
}

#[test]
fn demo_shows_every_hop_and_cleans_up() {
    let home = tempdir();
    let out = fresh(home.path()).arg("demo").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{stderr}",
        out.status
    );
    for section in [
        "== A (north.test) SMTP envelope",
        "MAIL FROM:<alice@north.test>",
        "RCPT TO:<bob@south.test>  route: wrap",
        "== DMTP envelope",
        "origin north.test -> destination south.test  sealed size",
        "(a padding bucket)",
        "== B (south.test) destination view",
        "mailbox bob@south.test  origin north.test  origin fingerprint ",
        "== Recipient view",
        "author alice@north.test  origin north.test  signatures: Pass",
        "Authentication-Results: mx.south.test; dime=pass",
        "== Wire between A and B (the tap)",
        "none of the mail's local parts, names, subject or body text appear",
        "== The mail as delivered",
        "  | Subject: Tea on Thursday?",
        "  | the spare key is under the blue flowerpot.",
        "ok: the delivered mail carries every header line and the body of the sent one",
    ] {
        assert!(
            stdout.contains(section),
            "{section:?} missing from\n{stdout}"
        );
    }
    // TLS on every connection of the tap.
    let connections: Vec<&str> = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("connection "))
        .collect();
    assert!(!connections.is_empty(), "{stdout}");
    assert!(
        connections.iter().all(|l| l.contains(", TLS 1.")),
        "{stdout}"
    );
    // The temporary directory is gone, and so are the gateways.
    let left: Vec<_> = std::fs::read_dir(home.path().join("tmp"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    let root = stdout
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("dimegate demo: "))
        .expect("first line names the directory");
    assert!(processes_mentioning(root).is_empty());
}

#[test]
fn demo_keeps_its_mailbox_under_dir_and_stops_on_ctrl_c() {
    let home = tempdir();
    let dir = home.path().join("kept");
    let out = fresh(home.path())
        .arg("demo")
        .arg("--dir")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mails: Vec<_> = std::fs::read_dir(dir.join("mailbox/new"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(mails.len(), 1);
    let mail = std::fs::read_to_string(mails[0].path()).unwrap();
    assert!(mail.contains("\r\nSubject: Tea on Thursday?\r\n"), "{mail}");
    assert!(dir.join("north/gateway.log.json").exists());

    // Interrupted once both gateways run: they are stopped, the exit says so.
    let again = home.path().join("interrupted");
    let demo = fresh(home.path())
        .arg("demo")
        .arg("--dir")
        .arg(&again)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let needle = again.to_string_lossy().into_owned();
    let started = Instant::now();
    while processes_mentioning(&format!("{needle}/south/dimegate.toml")).is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "gateways never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = i32::try_from(demo.id()).unwrap();
    // SAFETY: our own child, not yet waited for.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let out = demo.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("demo failed: interrupted; gateways stopped"),
        "{stderr}"
    );
    let left = processes_mentioning(&format!("{needle}/"));
    assert!(left.is_empty(), "still running: {left:?}");
}
