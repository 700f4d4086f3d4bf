//! SMTP ingress against real clients: swaks, Python's smtplib, Postfix's smtp-source, a real
//! Postfix relaying into dimegate, openssl s_client; and the durability promise under kill -9.

mod common;

use common::*;
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn ids_in_queue(gw: &Gateway) -> HashSet<String> {
    gw.queue_json()
        .iter()
        .map(|m| m["queue_id"].as_str().expect("queue_id").to_owned())
        .collect()
}

#[test]
fn swaks_message_to_served_domain_is_queued_and_listed() {
    let gw = Gateway::start("");
    let (ok, t) = swaks(
        gw.smtp,
        &[
            "--from",
            "alice@client.test",
            "--to",
            "bob@example.test",
            "--header",
            "Subject: hello",
        ],
    );
    assert!(ok, "{t}");
    let ids = queued_ids(&t);
    assert_eq!(ids.len(), 1, "{t}");
    // While the server runs, `queue list` goes through the admin API.
    let list = gw.queue_json();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["queue_id"], ids[0].as_str());
    assert_eq!(list[0]["sender"], "alice@client.test");
    assert_eq!(list[0]["recipients"][0]["address"], "bob@example.test");
    // Queued, or already tried and deferred: no [backend] is configured here.
    let state = list[0]["recipients"][0]["state"].as_str().unwrap();
    assert!(["queued", "leased", "deferred"].contains(&state), "{state}");
    let show = gw.queue(&["show", &ids[0]]);
    assert!(show.status.success());
    assert!(String::from_utf8_lossy(&show.stdout).contains("alice@client.test"));
    assert!(
        gw.log_text().contains(&ids[0]),
        "the log names the queue id"
    );
}

#[test]
fn queue_commands_work_with_the_server_stopped_too() {
    let mut gw = Gateway::start("");
    let (ok, t) = swaks(gw.smtp, &["--to", "a@example.test"]);
    assert!(ok, "{t}");
    let (ok, t2) = swaks(gw.smtp, &["--to", "b@example.test"]);
    assert!(ok, "{t2}");
    assert!(gw.stop().success());
    let ids: Vec<String> = queued_ids(&t).into_iter().chain(queued_ids(&t2)).collect();
    assert_eq!(ids_in_queue(&gw), ids.iter().cloned().collect());
    let limited = gw.queue(&["list", "--json", "--limit", "1"]);
    let v: Vec<serde_json::Value> = serde_json::from_slice(&limited.stdout).unwrap();
    assert_eq!(v.len(), 1);
    let del = gw.queue(&["delete", &ids[0]]);
    assert!(
        del.status.success(),
        "{}",
        String::from_utf8_lossy(&del.stderr)
    );
    assert_eq!(ids_in_queue(&gw), HashSet::from([ids[1].clone()]));
    let again = gw.queue(&["delete", &ids[0]]);
    assert_eq!(again.status.code(), Some(1));
    let human = gw.queue(&["list"]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.contains(&ids[1]) && text.contains("b@example.test"),
        "{text}"
    );
}

#[test]
fn relay_to_foreign_domain_is_refused_without_auth() {
    let gw = Gateway::start("");
    let (ok, t) = swaks(gw.smtp, &["--to", "victim@elsewhere.example"]);
    assert!(!ok);
    assert!(t.contains("554 5.7.1"), "{t}");
    assert!(gw.queue_json().is_empty());
}

#[test]
fn relay_network_may_relay() {
    let gw = Gateway::start("[relay]\nnetworks = [\"127.0.0.0/8\"]");
    let (ok, t) = swaks(gw.smtp, &["--to", "someone@elsewhere.example"]);
    assert!(ok, "{t}");
}

fn hash(password: &str) -> String {
    let mut child = Command::new(bin())
        .arg("passwd")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn starttls_then_auth_allows_relay_and_is_recorded() {
    let users = format!(
        "[[user]]\nname = \"alice\"\npassword_hash = \"{}\"",
        hash("s3cret")
    );
    let gw = Gateway::start(&users);

    // AUTH is not offered, and refused, in clear text.
    let (ok, t) = swaks(
        gw.smtp,
        &[
            "--to",
            "x@elsewhere.example",
            "--auth",
            "PLAIN",
            "--auth-user",
            "alice",
            "--auth-password",
            "s3cret",
        ],
    );
    assert!(!ok, "{t}");
    assert!(!t.contains("250-AUTH"), "AUTH advertised without TLS:\n{t}");

    // Wrong password under TLS.
    let (ok, t) = swaks(
        gw.smtp,
        &[
            "--tls",
            "--to",
            "x@elsewhere.example",
            "--auth",
            "PLAIN",
            "--auth-user",
            "alice",
            "--auth-password",
            "wrong",
        ],
    );
    assert!(!ok);
    assert!(t.contains("535 5.7.8"), "{t}");

    for mech in ["PLAIN", "LOGIN"] {
        let (ok, t) = swaks(
            gw.smtp,
            &[
                "--tls",
                "--to",
                "x@elsewhere.example",
                "--auth",
                mech,
                "--auth-user",
                "alice",
                "--auth-password",
                "s3cret",
            ],
        );
        assert!(ok, "{t}");
        assert!(t.contains("TLS started"), "{t}");
        assert!(t.contains("235 2.7.0"), "{t}");
        let id = &queued_ids(&t)[0];
        let show = gw.queue(&["show", id, "--json"]);
        let rec: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
        assert_eq!(rec["envelope"]["auth_user"], "alice");
        let tls = rec["envelope"]["tls"].as_str().expect("tls recorded");
        assert!(tls.contains("TLS"), "{tls}");
    }
}

#[test]
fn implicit_tls_listener_speaks_smtp_inside_tls() {
    let gw = Gateway::start("");
    let mut child = Command::new(tool("openssl"))
        .args(["s_client", "-quiet", "-connect", &gw.tls_smtp.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let greeting = lines.next().unwrap().unwrap();
    assert!(greeting.starts_with("220 "), "{greeting}");
    stdin.write_all(b"EHLO client.test\r\n").unwrap();
    let mut ehlo = Vec::new();
    loop {
        let l = lines.next().unwrap().unwrap();
        let last = l.as_bytes().get(3) == Some(&b' ');
        ehlo.push(l);
        if last {
            break;
        }
    }
    assert!(ehlo.iter().all(|l| l.starts_with("250")), "{ehlo:?}");
    assert!(
        !ehlo.iter().any(|l| l.contains("STARTTLS")),
        "STARTTLS offered inside TLS: {ehlo:?}"
    );
    stdin.write_all(b"QUIT\r\n").unwrap();
    let bye = lines.next().unwrap().unwrap();
    assert!(bye.starts_with("221"), "{bye}");
    let _ = child.wait();
}

#[test]
fn oversized_message_is_refused_with_552_and_not_stored() {
    let gw = Gateway::start("");
    let big = gw.dir.path().join("big.txt");
    std::fs::write(
        &big,
        "y".repeat(76)
            .repeat(16_000)
            .as_bytes()
            .chunks(76)
            .map(|c| format!("{}\r\n", String::from_utf8_lossy(c)))
            .collect::<String>(),
    )
    .unwrap();
    let (ok, t) = swaks(
        gw.smtp,
        &["--to", "bob@example.test", "--body", big.to_str().unwrap()],
    );
    assert!(!ok);
    assert!(
        t.contains("552 5.3.4"),
        "{}",
        &t[t.len().saturating_sub(2000)..]
    );
    assert!(gw.queue_json().is_empty());
    // Declared too big up front: refused at MAIL FROM.
    let mut s = TcpStream::connect(gw.smtp).unwrap();
    let mut buf = [0u8; 4096];
    let _ = s.read(&mut buf).unwrap();
    s.write_all(b"EHLO c.test\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let _ = s.read(&mut buf).unwrap();
    s.write_all(b"MAIL FROM:<a@c.test> SIZE=99999999\r\n")
        .unwrap();
    let n = s.read(&mut buf).unwrap();
    assert!(
        buf[..n].starts_with(b"552 5.3.4"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
}

#[test]
fn python_smtplib_messages_are_all_queued() {
    let gw = Gateway::start("");
    let out = Command::new("python3")
        .arg(script("smtp_flood.py"))
        .args(["127.0.0.1", &gw.smtp.port().to_string(), "4", "25"])
        .output()
        .unwrap();
    let acked: HashSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("ACK ").map(str::to_owned))
        .collect();
    assert_eq!(
        acked.len(),
        100,
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(ids_in_queue(&gw), acked);
}

#[test]
fn smtp_source_20_sessions_1000_messages_all_in_queue() {
    let gw = Gateway::start("");
    let out = Command::new(tool("smtp-source"))
        .args([
            "-s",
            "20",
            "-m",
            "1000",
            "-l",
            "1024",
            "-d",
            "-f",
            "a@client.test",
            "-t",
            "b@example.test",
        ])
        .arg(gw.smtp.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = gw.queue_json();
    assert_eq!(list.len(), 1000);
    assert!(
        list.iter()
            .all(|m| m["recipients"][0]["address"] == "b@example.test")
    );
    let m = gw.metrics();
    assert_eq!(
        metric(&m, "dimegate_smtp_messages_accepted_total"),
        Some(1000.0),
        "{m}"
    );
}

#[test]
fn postfix_relays_into_dimegate_over_starttls() {
    let gw = Gateway::start("");
    let tb = tempdir();
    let pf = tb.path().join("pf-relay");
    let pf_port = free_port();
    let mk = Command::new("sh")
        .arg(testbed().join("mk-postfix.sh"))
        .arg(&pf)
        .arg(pf_port.to_string())
        .arg(format!("[127.0.0.1]:{}", gw.smtp.port()))
        .output()
        .unwrap();
    assert!(
        mk.status.success(),
        "mk-postfix: {}",
        String::from_utf8_lossy(&mk.stderr)
    );
    let etc = pf.join("etc");
    let start = Command::new(tool("postfix"))
        .arg("-c")
        .arg(&etc)
        .arg("start")
        .output()
        .unwrap();
    assert!(
        start.status.success(),
        "postfix start: {}",
        String::from_utf8_lossy(&start.stderr)
    );
    struct Stop(std::path::PathBuf);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = Command::new("/usr/sbin/postfix")
                .arg("-c")
                .arg(&self.0)
                .arg("stop")
                .output();
        }
    }
    let _stop = Stop(etc);

    let pf_addr = format!("127.0.0.1:{pf_port}").parse().unwrap();
    // Postfix needs a moment to bind.
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(pf_addr).is_err() {
        assert!(Instant::now() < deadline, "postfix did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    for i in 0..5 {
        let (ok, t) = swaks(
            pf_addr,
            &[
                "--from",
                "alice@client.test",
                "--to",
                &format!("u{i}@example.test"),
            ],
        );
        assert!(ok, "{t}");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list = gw.queue_json();
        if list.len() == 5 {
            let id = list[0]["queue_id"].as_str().unwrap();
            let rec: serde_json::Value =
                serde_json::from_slice(&gw.queue(&["show", id, "--json"]).stdout).unwrap();
            assert!(
                rec["envelope"]["tls"].as_str().is_some(),
                "Postfix used STARTTLS: {rec}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "postfix did not relay; maillog:\n{}",
            std::fs::read_to_string(pf.join("maillog")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let maillog = std::fs::read_to_string(pf.join("maillog")).unwrap_or_default();
    assert_eq!(maillog.matches("status=sent").count(), 5, "{maillog}");
}

#[test]
fn kill_9_under_load_loses_no_acknowledged_message() {
    let mut gw = Gateway::start("");
    let mut all_acked = HashSet::new();
    for round in 0..3 {
        let mut flood = Command::new("python3")
            .arg(script("smtp_flood.py"))
            .args(["127.0.0.1", &gw.smtp.port().to_string(), "8", "2000"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = flood.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(id) = line.strip_prefix("ACK ") {
                    let _ = tx.send(id.to_owned());
                }
            }
        });
        // Let a few hundred messages through, then pull the plug mid-stream.
        let target = 200 + 150 * round;
        let mut acked = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while acked.len() < target && Instant::now() < deadline {
            if let Ok(id) = rx.recv_timeout(Duration::from_millis(100)) {
                acked.push(id);
            }
        }
        gw.kill9();
        let _ = flood.wait();
        reader.join().unwrap();
        // Acknowledgements that were on their way when the process died count too.
        acked.extend(rx.try_iter());
        assert!(
            acked.len() >= target,
            "round {round}: only {} acknowledged in 60 s",
            acked.len()
        );
        all_acked.extend(acked);
        gw.spawn();
        let present = ids_in_queue(&gw);
        let missing: Vec<_> = all_acked.difference(&present).collect();
        assert!(
            missing.is_empty(),
            "round {round}: {} acknowledged messages lost: {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        eprintln!(
            "round {round}: {} acknowledged so far, {} in queue",
            all_acked.len(),
            present.len()
        );
    }
}

#[test]
fn invalid_configuration_exits_2_with_the_key_path_before_listening() {
    let dir = tempdir();
    let port = free_port();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        format!("[smtp]\nlisten = \"127.0.0.1:{port}\"\nmax_message_size = \"lots\"\n"),
    )
    .unwrap();
    let check = Command::new(bin())
        .args(["config", "check"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(2));
    let err = String::from_utf8_lossy(&check.stderr);
    assert!(err.contains("smtp.max_message_size"), "{err}");
    let serve = Command::new(bin())
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(serve.status.code(), Some(2));
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    std::fs::write(&cfg, "[smtp]\nlisten = \"127.0.0.1:2525\"\n").unwrap();
    let ok = Command::new(bin())
        .args(["config", "check"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

#[test]
fn metrics_are_valid_for_promtool_and_count_what_happened() {
    let gw = Gateway::start("");
    let (ok, t) = swaks(gw.smtp, &["--to", "bob@example.test"]);
    assert!(ok, "{t}");
    let _ = swaks(gw.smtp, &["--to", "bob@elsewhere.example"]);
    let text = gw.metrics();
    promtool_check(&text);
    assert_eq!(
        metric(&text, "dimegate_smtp_messages_accepted_total"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "dimegate_smtp_rejections_total{code=\"554\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "dimegate_queue_messages"),
        Some(1.0),
        "{text}"
    );
    assert!(
        metric(&text, "dimegate_store_commit_seconds_count").unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    assert_eq!(http_get(gw.admin, "/healthz").unwrap().0, 200);
}

#[test]
fn connection_cap_per_ip_answers_421() {
    let dir_cfg = "[smtp]\nlisten = \"127.0.0.1:PORT\"\nmax_connections_per_ip = 2\n[[domain]]\nname = \"example.test\"";
    let port = free_port();
    let gw = Gateway::start(&dir_cfg.replace("PORT", &port.to_string()));
    let addr = ("127.0.0.1", port);
    let mut held = Vec::new();
    let mut buf = [0u8; 512];
    for _ in 0..2 {
        let mut s = TcpStream::connect(addr).unwrap();
        let n = s.read(&mut buf).unwrap();
        assert!(buf[..n].starts_with(b"220 "));
        held.push(s);
    }
    let mut third = TcpStream::connect(addr).unwrap();
    let n = third.read(&mut buf).unwrap();
    assert!(
        buf[..n].starts_with(b"421 4.7.0"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    drop(held);
    // The slots free up again.
    std::thread::sleep(Duration::from_millis(200));
    let mut again = TcpStream::connect(addr).unwrap();
    let n = again.read(&mut buf).unwrap();
    assert!(
        buf[..n].starts_with(b"220 "),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    drop(gw);
}

#[test]
fn back_pressure_answers_452_when_the_queue_is_full() {
    let gw = Gateway::start("[queue]\nmax_messages = 2");
    for i in 0..2 {
        let (ok, t) = swaks(gw.smtp, &["--to", &format!("u{i}@example.test")]);
        assert!(ok, "{t}");
    }
    let (ok, t) = swaks(gw.smtp, &["--to", "u3@example.test"]);
    assert!(!ok);
    assert!(t.contains("452 4.3.1"), "{t}");
    assert_eq!(gw.queue_json().len(), 2);
}

/// A tmpfs mounted for one test, unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn disk_full_answers_452_and_keeps_every_acknowledged_message() {
    let mnt = tempdir();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=40m", "tmpfs"])
        .arg(mnt.path())
        .status()
        .is_ok_and(|s| s.success());
    // CI runs as root, where mounting works; elsewhere say why this test cannot run.
    if !ok && std::env::var_os("CI").is_none() {
        eprintln!(
            "SKIPPED disk_full_answers_452_and_keeps_every_acknowledged_message: mount -t tmpfs refused (needs root)"
        );
        return;
    }
    assert!(ok, "mount -t tmpfs failed");
    let _umount = Tmpfs(mnt.path().to_path_buf());
    // The back-pressure threshold is set below the store's own reserve (32 MiB), so the refusal
    // comes from the store running out of room: the path a full disk takes.
    let data = mnt.path().join("data");
    let gw = Gateway::start(&format!(
        "data_dir = {data:?}\n[queue]\nmin_free_disk = \"1MiB\""
    ));
    let body = gw.dir.path().join("body.txt");
    std::fs::write(
        &body,
        "z".repeat(998)
            .repeat(100)
            .as_bytes()
            .chunks(998)
            .map(|c| format!("{}\r\n", String::from_utf8_lossy(c)))
            .collect::<String>(),
    )
    .unwrap();
    let mut acked = HashSet::new();
    let mut refused = None;
    for i in 0..200 {
        let (ok, t) = swaks(
            gw.smtp,
            &[
                "--to",
                &format!("u{i}@example.test"),
                "--body",
                body.to_str().unwrap(),
            ],
        );
        if ok {
            acked.extend(queued_ids(&t));
        } else {
            refused = Some(t);
            break;
        }
    }
    let t = refused.expect("the 40 MiB file system never filled up");
    assert!(
        t.contains("452 4.3.1"),
        "{}",
        &t[t.len().saturating_sub(1500)..]
    );
    assert!(!acked.is_empty());
    assert_eq!(
        http_get(gw.admin, "/healthz").unwrap().0,
        200,
        "still running"
    );
    let present = ids_in_queue(&gw);
    assert!(
        acked.is_subset(&present),
        "acknowledged messages missing after disk full"
    );
}

#[test]
fn idle_client_is_dropped_with_421_and_repeated_errors_end_the_session() {
    let port = free_port();
    let gw = Gateway::start(&format!(
        "[smtp]\nlisten = \"127.0.0.1:{port}\"\nidle_timeout = \"2s\"\nmax_errors = 3\n[[domain]]\nname = \"example.test\""
    ));
    let mut buf = [0u8; 1024];
    let mut idle = TcpStream::connect(("127.0.0.1", port)).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let n = idle.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"220 "));
    let started = Instant::now();
    let n = idle.read(&mut buf).unwrap();
    assert!(
        buf[..n].starts_with(b"421 4.4.2"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert!(started.elapsed() >= Duration::from_millis(1500));

    let mut noisy = TcpStream::connect(("127.0.0.1", port)).unwrap();
    noisy
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = noisy.read(&mut buf).unwrap();
    noisy.write_all(b"FOO\r\nBAR\r\nBAZ\r\n").unwrap();
    let mut transcript = Vec::new();
    let _ = noisy.read_to_end(&mut transcript);
    let text = String::from_utf8_lossy(&transcript);
    assert!(text.contains("421 4.7.0"), "{text}");
    let m = gw.metrics();
    assert_eq!(
        metric(&m, "dimegate_smtp_sessions_total{outcome=\"timeout\"}"),
        Some(1.0),
        "{m}"
    );
}

#[test]
fn sigterm_stops_cleanly_and_restart_keeps_the_queue() {
    let mut gw = Gateway::start("");
    let (ok, t) = swaks(gw.smtp, &["--to", "bob@example.test"]);
    assert!(ok, "{t}");
    assert!(gw.stop().success(), "{}", gw.log_text());
    gw.spawn();
    assert_eq!(ids_in_queue(&gw), queued_ids(&t).into_iter().collect());
}

#[test]
fn runs_on_embedded_defaults_without_a_configuration_file() {
    let dir = tempdir();
    // The defaults listen on 127.0.0.1:2525 and :9725; this test owns those ports.
    let mut child = Command::new(bin())
        .arg("serve")
        .current_dir(dir.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while http_get("127.0.0.1:9725".parse().unwrap(), "/readyz")
        .map(|r| r.0)
        .ok()
        != Some(200)
    {
        if let Some(s) = child.try_wait().unwrap() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("serve exited {s}: {err}");
        }
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }
    let (ok, t) = swaks(
        "127.0.0.1:2525".parse().unwrap(),
        &["--tls", "--to", "postmaster@localhost"],
    );
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(ok, "{t}\n{log}");
    assert!(dir.path().join("dimegate-data/queue.redb").exists());
    assert!(dir.path().join("dimegate-data/tls/cert.pem").exists());
    assert!(
        log.contains("127.0.0.1:2525") && log.contains("localhost"),
        "{log}"
    );
}

// ---- issue 7 (back-pressure, timers, configuration bounds) and issue 11 (edge cases, rate
// limits, REQUIRETLS, shutdown), each against the binary with Python's smtplib ----

/// Runs `tests/scripts/smtp_edge.py` and returns its "KEY value" lines in order.
fn edge(addr: std::net::SocketAddr, scenario: &str, args: &[&str]) -> Vec<(String, String)> {
    let out = Command::new("python3")
        .arg(script("smtp_edge.py"))
        .args(["127.0.0.1", &addr.port().to_string(), scenario])
        .args(args)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "smtp_edge.py {scenario} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let (k, v) = l.split_once(' ').unwrap_or((l, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

fn value<'a>(lines: &'a [(String, String)], key: &str) -> &'a str {
    lines
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {key} in {lines:?}"))
}

/// The smtp section `Gateway::start` writes, for tests that need keys of their own in it.
fn smtp_section(port: u16, extra: &str) -> String {
    format!(
        "[smtp]\nlisten = \"127.0.0.1:{port}\"\nhostname = \"mx.example.test\"\n{extra}\n\
         [[domain]]\nname = \"example.test\""
    )
}

#[test]
fn notify_never_combined_is_501_and_binarymime_is_555() {
    let gw = Gateway::start("");
    let lines = edge(gw.smtp, "params", &[]);
    assert_eq!(value(&lines, "EHLO_BINARYMIME"), "False");
    assert_eq!(value(&lines, "EHLO_CHUNKING"), "True");
    assert_eq!(value(&lines, "MAIL_BINARYMIME"), "555");
    assert_eq!(value(&lines, "MAIL"), "250");
    assert_eq!(value(&lines, "RCPT_NEVER_SUCCESS"), "501");
    assert_eq!(value(&lines, "RCPT_DELAY_NEVER"), "501");
    assert_eq!(value(&lines, "RCPT_NEVER"), "250");
    assert_eq!(value(&lines, "NOOP"), "250");
}

#[test]
fn excess_recipients_get_452_and_the_client_delivers_them_in_a_second_transaction() {
    // Issue 11: 150 recipients against 100 ended in 421 after ten 452s. Here 75 against the
    // gateway's max_recipients = 50, with the default max_errors = 10.
    let gw = Gateway::start("");
    let lines = edge(gw.smtp, "excess", &["75"]);
    assert_eq!(value(&lines, "ACCEPTED1"), "50", "{lines:?}");
    assert_eq!(value(&lines, "REFUSED452_1"), "25");
    assert_eq!(value(&lines, "DATA1"), "250");
    assert_eq!(value(&lines, "ACCEPTED2"), "25");
    assert_eq!(value(&lines, "DATA2"), "250");
    assert_eq!(value(&lines, "NOOP"), "250", "the session survived");
    assert!(!lines.iter().any(|(k, _)| k == "UNEXPECTED"), "{lines:?}");
    let list = gw.queue_json();
    let mut counts: Vec<usize> = list
        .iter()
        .map(|m| m["recipients"].as_array().unwrap().len())
        .collect();
    counts.sort();
    assert_eq!(counts, [25, 50]);
    let m = gw.metrics();
    assert_eq!(
        metric(
            &m,
            "dimegate_smtp_sessions_total{outcome=\"too_many_errors\"}"
        ),
        None,
        "{m}"
    );
}

#[test]
fn requiretls_is_offered_and_accepted_only_inside_tls_and_recorded() {
    let gw = Gateway::start("");
    let lines = edge(gw.smtp, "requiretls", &[]);
    assert_eq!(value(&lines, "PLAIN_EHLO_REQUIRETLS"), "False");
    assert_eq!(value(&lines, "PLAIN_MAIL_REQUIRETLS"), "555");
    assert_eq!(value(&lines, "TLS_EHLO_REQUIRETLS"), "True");
    assert_eq!(value(&lines, "TLS_MAIL_REQUIRETLS"), "250");
    assert_eq!(value(&lines, "DATA"), "250");
    let id = value(&lines, "ACK");
    let show = gw.queue(&["show", id, "--json"]);
    let rec: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(rec["envelope"]["require_tls"], true, "{rec}");
    // A message without it says so too.
    let (ok, t) = swaks(gw.smtp, &["--tls", "--to", "bob@example.test"]);
    assert!(ok, "{t}");
    let rec: serde_json::Value =
        serde_json::from_slice(&gw.queue(&["show", &queued_ids(&t)[0], "--json"]).stdout).unwrap();
    assert_eq!(rec["envelope"]["require_tls"], false, "{rec}");
}

#[test]
fn too_many_errors_is_counted_from_the_typed_close_reason() {
    let port = free_port();
    let gw = Gateway::start(&smtp_section(port, "max_errors = 3"));
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let lines = edge(addr, "errors", &["10"]);
    let replies: Vec<&str> = lines
        .iter()
        .filter(|(k, _)| k == "REPLY")
        .map(|(_, v)| v.as_str())
        .collect();
    // Three errors, then the 421 (read as the answer to the next command, or lost to the close).
    assert!(
        replies[..3].iter().all(|r| r.starts_with("500 ")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|(k, v)| k == "DISCONNECTED" || v.starts_with("421 4.7.0")),
        "{lines:?}"
    );
    assert!(replies.len() <= 4, "{lines:?}");
    wait_until(
        Duration::from_secs(10),
        || {
            metric(
                &gw.metrics(),
                "dimegate_smtp_sessions_total{outcome=\"too_many_errors\"}",
            ) == Some(1.0)
        },
        || gw.metrics(),
    );
}

#[test]
fn back_pressure_is_answered_at_mail_from() {
    let gw = Gateway::start("[queue]\nmax_messages = 1");
    let (ok, t) = swaks(gw.smtp, &["--to", "u0@example.test"]);
    assert!(ok, "{t}");
    // Counted at once when stored, not a refresh later: the next MAIL FROM is refused.
    let lines = edge(gw.smtp, "pressure", &[]);
    assert_eq!(value(&lines, "MAIL"), "452");
    let (ok, t) = swaks(gw.smtp, &["--to", "u1@example.test"]);
    assert!(!ok);
    let mail_reply = t
        .lines()
        .skip_while(|l| !l.contains("MAIL FROM"))
        .nth(1)
        .unwrap_or_default();
    assert!(mail_reply.contains("452 4.3.1"), "{t}");
    // Deleting the message frees the queue once the background task has counted again.
    let id = gw.queue_json()[0]["queue_id"].as_str().unwrap().to_owned();
    assert!(gw.queue(&["delete", &id]).status.success());
    wait_until(
        Duration::from_secs(10),
        || value(&edge(gw.smtp, "pressure", &[]), "MAIL") == "250",
        || "MAIL FROM still refused after the queue emptied".to_owned(),
    );
}

#[test]
fn connection_rate_per_client_answers_421_and_is_counted() {
    let port = free_port();
    let gw = Gateway::start(&smtp_section(
        port,
        "connection_rate_per_ip = 2\nrate_limit_exempt = []",
    ));
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let lines = edge(addr, "connect", &["10"]);
    let greetings: Vec<&str> = lines.iter().map(|(_, v)| v.as_str()).collect();
    assert_eq!(&greetings[..2], ["220", "220"], "the burst is allowed");
    let refused = greetings
        .iter()
        .filter(|g| g.starts_with("421 4.7.0"))
        .count();
    assert!(refused >= 1, "{greetings:?}");
    let m = gw.metrics();
    assert_eq!(
        metric(&m, "dimegate_smtp_rate_limited_total{limit=\"connection\"}"),
        Some(refused as f64),
        "{m}"
    );
    assert_eq!(
        metric(&m, "dimegate_smtp_sessions_total{outcome=\"refused_rate\"}"),
        Some(refused as f64),
        "{m}"
    );
    promtool_check(&m);
    // Loopback is exempt by default: the other tests' floods are not limited.
    let gw2 = Gateway::start("");
    let lines = edge(gw2.smtp, "connect", &["30"]);
    assert!(lines.iter().all(|(_, v)| v == "220"), "{lines:?}");
}

#[test]
fn auth_failures_back_off_with_454_even_for_the_right_password() {
    let port = free_port();
    let users = format!(
        "[[user]]\nname = \"alice\"\npassword_hash = \"{}\"\n",
        hash("s3cret")
    );
    let gw = Gateway::start(&format!(
        "{users}{}",
        smtp_section(
            port,
            "auth_failures_per_ip = 2\nauth_backoff = \"1m\"\nrate_limit_exempt = []"
        )
    ));
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let attempt =
        |password: &str| value(&edge(addr, "auth", &["alice", password]), "AUTH").to_owned();
    assert_eq!(attempt("s3cret"), "235");
    for _ in 0..3 {
        assert!(attempt("wrong").starts_with("535"));
    }
    // The third failure started the back-off: the right password is not even checked.
    let throttled = attempt("s3cret");
    assert!(throttled.starts_with("454 4.7.0"), "{throttled}");
    let m = gw.metrics();
    assert_eq!(
        metric(&m, "dimegate_smtp_rate_limited_total{limit=\"auth\"}"),
        Some(1.0),
        "{m}"
    );
}

#[test]
fn sigterm_with_clients_dribbling_inside_data_ends_within_the_grace_with_421_to_each() {
    // Issue 11: the grace restarted with every byte, so exit took 15 s and these clients got
    // no 421. With a 2 s grace the process must be gone long before the old 15 s.
    let port = free_port();
    let mut gw = Gateway::start(&smtp_section(port, "shutdown_grace = \"2s\""));
    let addr = format!("127.0.0.1:{port}");
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut child = Command::new("python3")
            .arg(script("smtp_edge.py"))
            .args(["127.0.0.1", &port.to_string(), "dribble"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "IN_DATA 354", "{line}");
        clients.push((child, out));
    }
    // One more client, idle between commands: 421 at once.
    let mut idle = TcpStream::connect(&addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = [0u8; 512];
    let _ = idle.read(&mut buf).unwrap();
    let started = Instant::now();
    let status = gw.stop();
    let took = started.elapsed();
    assert!(status.success(), "{}", gw.log_text());
    assert!(
        took < Duration::from_secs(8),
        "shutdown took {took:?} with a 2 s grace; log:\n{}",
        gw.log_text()
    );
    let n = idle.read(&mut buf).unwrap();
    assert!(
        buf[..n].starts_with(b"421 4.3.0"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    for (mut child, mut out) in clients {
        let mut rest = String::new();
        out.read_to_string(&mut rest).unwrap();
        let _ = child.wait();
        assert!(rest.contains("ANSWER 421 4.3.0"), "{rest}");
    }
    assert!(gw.queue_json().is_empty(), "no message was acknowledged");
}

#[test]
fn config_check_refuses_out_of_range_values_and_names_the_key() {
    let dir = tempdir();
    let cfg = dir.path().join("c.toml");
    let check = |text: &str| {
        std::fs::write(&cfg, text).unwrap();
        let out = Command::new(bin())
            .args(["config", "check"])
            .arg(&cfg)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Issue 7: this passed `config check`, then panicked at the first connection.
    for (text, key) in [
        (
            "[smtp]\nidle_timeout = 9223372036854775807\n",
            "smtp.idle_timeout",
        ),
        (
            "[smtp]\nsession_timeout = 9223372036854775807\n",
            "smtp.session_timeout",
        ),
        (
            "[delivery]\ndata_timeout = \"100000d\"\n",
            "delivery.data_timeout",
        ),
        (
            "[smtp]\nmax_message_size = \"64GiB\"\n",
            "smtp.max_message_size",
        ),
        (
            "[queue]\nexpire = \"10m\"\ndelay_warning = \"4h\"\n",
            "queue.delay_warning",
        ),
    ] {
        let (code, err) = check(text);
        assert_eq!(code, Some(2), "{text:?}: {err}");
        assert!(err.contains(key), "{text:?}: {err}");
    }
    let (code, err) = check("[smtp]\nlisten = \"127.0.0.1:2525\"\nhostname = \n");
    assert_eq!(code, Some(2));
    assert!(err.contains("line 3, column 12"), "{err}");
    // Issue 11: expire alone is fine; the default warning gives way.
    let (code, err) = check("[queue]\nexpire = \"10m\"\n");
    assert_eq!(code, Some(0), "{err}");
}
