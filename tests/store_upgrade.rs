//! A queue written by the previous release (record version 1: JSON records, small bodies in the
//! `bodies` table, a large body in a file) opens in this release and delivers every message, with
//! its body byte for byte, to a real smtp-sink.
//!
//! `tests/fixtures/queue-v1/` was made by the previous release's binary: three messages sent
//! over SMTP with the backend down (two recipients with a small body, one 20 KiB body kept as a
//! file, one null-sender message), all deferred once, then SIGTERM. `small.eml` and `big.eml` are
//! the bodies that were sent.

mod common;

use common::{Gateway, Sink, free_port, wait_until};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// As smtp-sink dumps it: lines end in LF, and the dump in one more.
fn as_dumped(message: &[u8]) -> String {
    String::from_utf8(message.to_vec())
        .unwrap()
        .replace("\r\n", "\n")
        + "\n"
}

#[test]
fn a_queue_written_by_the_previous_release_opens_and_delivers() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/queue-v1");
    let data = common::tempdir();
    let data_dir = data.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    std::fs::copy(fixture.join("queue.redb"), data_dir.join("queue.redb")).unwrap();
    copy_dir(
        &fixture.join("queue.bodies"),
        &data_dir.join("queue.bodies"),
    );

    let sink_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let sink = Sink::start_at(sink_addr, &[]);
    let gw = Gateway::start(&format!(
        "data_dir = {data_dir:?}\n[backend]\naddress = \"{sink_addr}\"\n\
         [queue]\nretry = [\"1s\"]\njitter_percent = 0\npoll_interval = \"100ms\"\n"
    ));
    // The records were deferred to a time now past: they are due at once.
    wait_until(
        Duration::from_secs(20),
        || gw.queue_json().is_empty(),
        || format!("queue {:#?}\nlog:\n{}", gw.queue_json(), gw.log_text()),
    );
    let dumps = sink.messages();
    let small = as_dumped(&std::fs::read(fixture.join("small.eml")).unwrap());
    let big = as_dumped(&std::fs::read(fixture.join("big.eml")).unwrap());
    let with = |needle: &str| dumps.iter().filter(|d| d.contains(needle)).count();
    // Two recipients of the small message (one transaction or two), each exactly once.
    let small_rcpts: usize = dumps
        .iter()
        .filter(|d| d.ends_with(&small))
        .map(|d| d.matches("X-Rcpt-Args:").count())
        .sum();
    assert_eq!(small_rcpts, 2, "{} dumps", dumps.len());
    assert_eq!(dumps.iter().filter(|d| d.ends_with(&big)).count(), 1);
    assert_eq!(with("Subject: bounce-ish v1\n"), 1);
    assert_eq!(with("X-Mail-Args: <>"), 1);
}
