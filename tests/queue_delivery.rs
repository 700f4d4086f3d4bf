//! The queue and delivery against the real binary and real peers: Postfix's smtp-sink (healthy,
//! failing, down), a real Postfix as the backend MTA, Knot serving MX records, kill -9 during a
//! flood, the admin verbs and the metrics they leave behind.

mod common;

use common::{
    Gateway, Knot, Postfix, Sink, dumped_message, free_port, metric, promtool_check, queued_ids,
    require_tool, script, smtp_send, test_zone, tool, wait_until,
};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A gateway whose served domains (example.test, localhost) go to `backend`, with a
/// second-scale retry schedule. `more` adds whole sections (`[relay]`, `[delivery]`, `[dns]`).
fn gateway(backend: SocketAddr, retry: &str, expire: &str, more: &str) -> Gateway {
    Gateway::start(&format!(
        "[backend]\naddress = \"{backend}\"\n\
         [queue]\nretry = {retry}\njitter_percent = 0\nexpire = \"{expire}\"\n\
         delay_warning = \"off\"\npoll_interval = \"100ms\"\n\
         [delivery]\nconnect_timeout = \"2s\"\ncommand_timeout = \"10s\"\n{more}"
    ))
}

/// A loopback address with nothing listening (connection refused), free for a sink later.
fn closed_addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn message(subject: &str, body: &str) -> String {
    format!(
        "From: Alice <alice@example.test>\r\nTo: bob@example.test\r\nSubject: {subject}\r\n\
         Message-ID: <{subject}@client.test>\r\n\r\n{body}"
    )
}

/// Sends one message and returns its queue id.
fn send(gw: &Gateway, from: &str, rcpts: &[&str], data: &str) -> String {
    let reply = smtp_send(gw.smtp, from, rcpts, data)
        .unwrap_or_else(|e| panic!("gateway refused the message: {e}\nlog:\n{}", gw.log_text()));
    queued_ids(&reply)
        .pop()
        .unwrap_or_else(|| panic!("no queue id in {reply:?}"))
}

fn wait_queue_empty(gw: &Gateway, timeout: Duration) {
    wait_until(
        timeout,
        || gw.queue_json().is_empty(),
        || {
            format!(
                "queue not empty: {:#?}\nlog:\n{}",
                gw.queue_json(),
                gw.log_text()
            )
        },
    );
}

fn wait_dumps(sink: &Sink, count: usize, timeout: Duration, gw: &Gateway) {
    wait_until(
        timeout,
        || sink.messages().len() >= count,
        || {
            format!(
                "{} of {count} transactions at the sink; queue {:#?}\nlog:\n{}",
                sink.messages().len(),
                gw.queue_json(),
                gw.log_text()
            )
        },
    );
}

/// The recipient entries of queued message `id` in `queue list --json`.
fn recipients(gw: &Gateway, id: &str) -> Vec<serde_json::Value> {
    gw.queue_json()
        .into_iter()
        .find(|m| m["queue_id"] == id)
        .map(|m| m["recipients"].as_array().cloned().unwrap_or_default())
        .unwrap_or_default()
}

/// `dimegate queue ARGS` must succeed.
fn admin(gw: &Gateway, args: &[&str]) -> String {
    let out = gw.queue(args);
    assert!(
        out.status.success(),
        "queue {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A DSN parsed by Python's `email` package: the top-level type and parameters, the part types,
/// the header blocks of the message/delivery-status part.
fn parse_dsn(message: &str) -> serde_json::Value {
    require_tool("python3", "python3");
    let program = r#"
import email, email.policy, json, sys
m = email.message_from_bytes(sys.stdin.buffer.read(), policy=email.policy.default)
out = {"type": m.get_content_type(), "report_type": m.get_param("report-type"),
       "from": str(m["From"]), "to": str(m["To"]), "subject": str(m["Subject"]),
       "auto_submitted": str(m["Auto-Submitted"]), "defects": len(m.defects),
       "parts": [p.get_content_type() for p in m.iter_parts()], "blocks": [], "text": ""}
for p in m.iter_parts():
    if p.get_content_type() == "message/delivery-status":
        out["blocks"] = [{k: str(v) for k, v in b.items()} for b in p.get_payload()]
    elif p.get_content_type() == "text/plain":
        out["text"] = p.get_content()
print(json.dumps(out))
"#;
    let mut child = Command::new("python3")
        .args(["-c", program])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(message.replace('\n', "\r\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("python printed JSON")
}

/// The checks every failure DSN must pass; returns the per-recipient block.
/// `class` is the status class: "5." for a permanent failure, "4." for an expired one (the last
/// temporary status is kept, as Postfix does).
fn assert_failure_dsn(dsn: &serde_json::Value, rcpt: &str, class: &str) -> serde_json::Value {
    assert_eq!(dsn["type"], "multipart/report", "{dsn:#}");
    assert_eq!(dsn["report_type"], "delivery-status", "{dsn:#}");
    assert_eq!(dsn["defects"], 0, "{dsn:#}");
    let parts: Vec<&str> = dsn["parts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p.as_str())
        .collect();
    assert_eq!(parts.first(), Some(&"text/plain"), "{dsn:#}");
    assert!(parts.contains(&"message/delivery-status"), "{dsn:#}");
    let blocks = dsn["blocks"].as_array().expect("blocks");
    assert!(
        blocks.len() >= 2,
        "per-message and per-recipient blocks: {dsn:#}"
    );
    assert!(
        blocks[0]["Reporting-MTA"]
            .as_str()
            .is_some_and(|v| v.contains("mx.example.test")),
        "{dsn:#}"
    );
    let block = blocks[1..]
        .iter()
        .find(|b| {
            b["Final-Recipient"]
                .as_str()
                .is_some_and(|v| v.contains(rcpt))
        })
        .unwrap_or_else(|| panic!("no block for {rcpt}: {dsn:#}"))
        .clone();
    assert_eq!(block["Action"], "failed", "{dsn:#}");
    assert!(
        block["Status"]
            .as_str()
            .is_some_and(|s| s.starts_with(class)),
        "{dsn:#}"
    );
    block
}

// ---------------------------------------------------------------------------------------------
// 1. Healthy sink: exactly once, Received prepended, body unchanged.

#[test]
fn smtp_source_messages_reach_the_sink_exactly_once_with_received_prepended() {
    let sink = Sink::start(&[]);
    let gw = gateway(sink.addr, r#"["2s", "3s"]"#, "1h", "");
    const N: usize = 200;
    let status = Command::new(tool("smtp-source"))
        .args(["-s", "5", "-d", "-l", "1024", "-m", &N.to_string()])
        .args(["-f", "alice@client.test", "-t", "bob@example.test"])
        .arg(gw.smtp.to_string())
        .stdout(Stdio::null())
        .status()
        .expect("run smtp-source");
    assert!(status.success(), "smtp-source failed");
    // One message whose exact bytes we know, with a line that needs dot-stuffing.
    let body = "line one\r\n.leading dot\r\n\r\nlast line\r\n";
    let id = send(
        &gw,
        "alice@example.test",
        &["carol@example.test"],
        &message("exact", body),
    );

    wait_queue_empty(&gw, Duration::from_secs(30));
    wait_dumps(&sink, N + 1, Duration::from_secs(5), &gw);
    std::thread::sleep(Duration::from_millis(500));
    let dumps = sink.messages();
    assert_eq!(dumps.len(), N + 1, "every message exactly once");
    let from_source = dumps
        .iter()
        .filter(|d| d.contains("X-Mail-Args: <alice@client.test>"))
        .count();
    assert_eq!(from_source, N);
    for dump in &dumps {
        let msg = dumped_message(dump);
        assert!(
            msg.starts_with("Received: from client.test ([127.0.0.1])")
                || msg.starts_with("Received: from "),
            "{dump}"
        );
        assert!(
            msg.lines()
                .take(4)
                .any(|l| l.contains("by mx.example.test (dimegate) with ESMTP id")),
            "dimegate's Received header first: {dump}"
        );
    }
    let exact = dumps
        .iter()
        .find(|d| d.contains("X-Rcpt-Args: <carol@example.test>"))
        .expect("the exact message");
    let msg = dumped_message(exact);
    assert!(
        msg.lines().nth(1).unwrap().starts_with('\t'),
        "folded Received: {msg}"
    );
    assert!(msg.contains(&format!("id {id};")), "{msg}");
    // The Received header ends at the first line that does not start with a tab.
    let rest: String = msg
        .lines()
        .skip(1)
        .skip_while(|l| l.starts_with('\t'))
        .map(|l| format!("{l}\n"))
        .collect();
    let expected = message("exact", body).replace("\r\n", "\n");
    assert_eq!(rest.trim_end_matches('\n'), expected.trim_end_matches('\n'));

    let metrics = gw.metrics();
    assert_eq!(
        metric(
            &metrics,
            "dimegate_deliveries_total{route=\"backend\",outcome=\"delivered\"}"
        ),
        Some((N + 1) as f64),
        "{metrics}"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Fault injection.

#[test]
fn soft_failures_are_retried_on_schedule_and_delivered_once_the_sink_is_healthy() {
    let failing = Sink::start(&["-r", "RCPT"]);
    let addr = failing.addr;
    let gw = gateway(addr, r#"["2s", "3s"]"#, "1h", "");
    let id = send(
        &gw,
        "alice@example.test",
        &["bob@example.test"],
        &message("soft", "hello\r\n"),
    );
    let arrival = gw.queue_json()[0]["arrival"].as_u64().expect("arrival");
    // Watch the attempts counter: each increment is one finished attempt, with the time of
    // the next one (whole seconds).
    let mut seen: Vec<(u64, Instant, u64)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while seen.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "attempts: {seen:?}\n{}",
            gw.log_text()
        );
        if let Some(r) = recipients(&gw, &id).first() {
            let attempts = r["attempts"].as_u64().unwrap_or(0);
            if attempts > seen.last().map_or(0, |s| s.0) {
                assert_eq!(r["state"], "deferred", "{r:#}");
                let err = r["last_error"].as_str().unwrap_or_default();
                assert!(err.contains("450"), "remote reply kept: {r:#}");
                let next = r["next_attempt"].as_u64().expect("next attempt time");
                seen.push((attempts, Instant::now(), next));
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // The schedule in whole seconds: the first attempt at arrival (within a second), then 2 s,
    // then 3 s, and the last step repeats. Each attempt starts within a second of its time.
    let steps = [
        seen[0].2 - arrival,
        seen[1].2 - seen[0].2,
        seen[2].2 - seen[1].2,
    ];
    eprintln!("retry steps (s): {steps:?}");
    assert!(
        (2..=3).contains(&steps[0]),
        "first retry 2 s later: {seen:?}"
    );
    assert!((3..=4).contains(&steps[1]), "then 3 s: {seen:?}");
    assert!((3..=4).contains(&steps[2]), "then 3 s again: {seen:?}");
    // Wall clock, loosely (the polling adds its own delay).
    let gap1 = seen[1].1 - seen[0].1;
    let gap2 = seen[2].1 - seen[1].1;
    eprintln!("retry gaps: {gap1:?}, {gap2:?}");
    assert!(
        gap1 >= Duration::from_millis(500) && gap1 <= Duration::from_millis(4500),
        "first retry after ~2s: {gap1:?}"
    );
    assert!(
        gap2 >= Duration::from_millis(1500) && gap2 <= Duration::from_millis(5500),
        "second retry after ~3s: {gap2:?}"
    );
    assert!(
        failing.messages().is_empty(),
        "nothing accepted by the failing sink: {:#?}",
        failing.messages()
    );
    drop(failing);

    let healthy = Sink::start_at(addr, &[]);
    wait_dumps(&healthy, 1, Duration::from_secs(10), &gw);
    wait_queue_empty(&gw, Duration::from_secs(5));
    let dumps = healthy.messages();
    assert_eq!(dumps.len(), 1);
    assert!(dumps[0].contains("Subject: soft"));
    let metrics = gw.metrics();
    assert!(
        metric(
            &metrics,
            "dimegate_deliveries_total{route=\"backend\",outcome=\"deferred\"}"
        )
        .is_some_and(|v| v >= 3.0),
        "{metrics}"
    );
}

/// Hard failures at RCPT and at end of data: the recipient goes through the smarthost (the
/// failing sink); the DSN to alice@example.test (served) goes to the backend sink.
#[test]
fn hard_failure_sends_a_failure_dsn_to_the_sender() {
    for (flag, stage) in [("RCPT", "RCPT"), (".", "end of data")] {
        let backend = Sink::start(&[]);
        let failing = Sink::start(&["-f", flag]);
        let gw = gateway(
            backend.addr,
            r#"["2s", "3s"]"#,
            "1h",
            &format!(
                "[relay]\nnetworks = [\"127.0.0.0/8\"]\nsmarthost = \"{}\"\n",
                failing.addr
            ),
        );
        let id = send(
            &gw,
            "alice@example.test",
            &["bob@remote.test"],
            &message("hard", "this will bounce\r\n"),
        );
        wait_dumps(&backend, 1, Duration::from_secs(15), &gw);
        wait_queue_empty(&gw, Duration::from_secs(5));
        let dumps = backend.messages();
        assert_eq!(dumps.len(), 1, "one DSN");
        let dump = &dumps[0];
        assert!(
            dump.contains("X-Mail-Args: <>"),
            "DSN from the null sender: {dump}"
        );
        assert!(dump.contains("X-Rcpt-Args: <alice@example.test>"), "{dump}");
        let dsn = parse_dsn(dumped_message(dump));
        let block = assert_failure_dsn(&dsn, "bob@remote.test", "5.");
        let diagnostic = block["Diagnostic-Code"].as_str().unwrap_or_default();
        assert!(
            diagnostic.starts_with("smtp;") && diagnostic.contains("5"),
            "{stage}: the remote's reply in Diagnostic-Code: {dsn:#}"
        );
        // smtp-sink's hard error text.
        assert!(
            diagnostic.contains("Error: command failed") || diagnostic.contains("5.0.0"),
            "{stage}: {dsn:#}"
        );
        assert!(dsn["to"].as_str().unwrap().contains("alice@example.test"));
        assert!(
            dumped_message(dump).contains(&id) || dsn["text"].as_str().unwrap().contains(&id),
            "the DSN names the queue id {id}"
        );

        // 8. Metrics after a failure and a DSN delivery.
        let metrics = gw.metrics();
        promtool_check(&metrics);
        assert_eq!(
            metric(
                &metrics,
                "dimegate_deliveries_total{route=\"smarthost\",outcome=\"failed\"}"
            ),
            Some(1.0),
            "{metrics}"
        );
        assert_eq!(
            metric(
                &metrics,
                "dimegate_deliveries_total{route=\"backend\",outcome=\"delivered\"}"
            ),
            Some(1.0),
            "the DSN: {metrics}"
        );
        assert_eq!(
            metric(&metrics, "dimegate_dsns_total{kind=\"failure\"}"),
            Some(1.0),
            "{metrics}"
        );
        for state in ["queued", "deferred", "held", "leased"] {
            let v = metric(
                &metrics,
                &format!("dimegate_queue_recipients{{state=\"{state}\"}}"),
            );
            assert!(v.is_none_or(|v| v == 0.0), "{state}: {metrics}");
        }
        assert!(
            metrics.contains("dimegate_queue_recipients"),
            "queue depth gauge present: {metrics}"
        );
    }
}

#[test]
fn a_failing_null_sender_message_produces_no_dsn() {
    let backend = Sink::start(&[]);
    let failing = Sink::start(&["-f", "RCPT"]);
    let gw = gateway(
        backend.addr,
        r#"["2s", "3s"]"#,
        "1h",
        &format!(
            "[relay]\nnetworks = [\"127.0.0.0/8\"]\nsmarthost = \"{}\"\n",
            failing.addr
        ),
    );
    send(
        &gw,
        "",
        &["bob@remote.test"],
        &message("nullsender", "x\r\n"),
    );
    wait_queue_empty(&gw, Duration::from_secs(15));
    std::thread::sleep(Duration::from_secs(1));
    assert!(backend.messages().is_empty(), "no DSN for a DSN");
    let metrics = gw.metrics();
    assert_eq!(
        metric(
            &metrics,
            "dimegate_deliveries_total{route=\"smarthost\",outcome=\"failed\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        metric(&metrics, "dimegate_dsns_total{kind=\"failure\"}").is_none_or(|v| v == 0.0),
        "{metrics}"
    );
}

#[test]
fn a_recipient_deferred_until_expiry_ends_in_a_failure_dsn() {
    let backend = Sink::start(&[]);
    let failing = Sink::start(&["-r", "RCPT"]);
    let gw = gateway(
        backend.addr,
        r#"["2s", "3s"]"#,
        "6s",
        &format!(
            "[relay]\nnetworks = [\"127.0.0.0/8\"]\nsmarthost = \"{}\"\n",
            failing.addr
        ),
    );
    let started = Instant::now();
    send(
        &gw,
        "alice@example.test",
        &["bob@remote.test"],
        &message("expiring", "x\r\n"),
    );
    wait_dumps(&backend, 1, Duration::from_secs(20), &gw);
    let took = started.elapsed();
    eprintln!("expired and bounced after {took:?}");
    // expire = 6s counted from the arrival second, so at least 5 s of wall time.
    assert!(
        took >= Duration::from_millis(4900),
        "not before expire: {took:?}"
    );
    wait_queue_empty(&gw, Duration::from_secs(5));
    let dsn = parse_dsn(dumped_message(&backend.messages()[0]));
    let block = assert_failure_dsn(&dsn, "bob@remote.test", "4.");
    // The last remote reply was a 450: the DSN must still say why it gave up.
    let diag = block["Diagnostic-Code"].as_str().unwrap_or_default();
    let text = dsn["text"].as_str().unwrap_or_default();
    assert!(
        diag.contains("450") || text.contains("450") || text.to_lowercase().contains("expire"),
        "the DSN says why: {dsn:#}"
    );
    assert!(
        failing.count_in_log("RCPT") >= 3,
        "attempted on the schedule before expiring"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. A backend that is down, then up.

#[test]
fn messages_wait_for_a_backend_that_is_down_and_are_all_delivered_when_it_is_up() {
    let addr = closed_addr();
    let gw = gateway(addr, r#"["2s", "3s"]"#, "1h", "");
    const N: usize = 20;
    let ids: Vec<String> = (0..N)
        .map(|i| {
            send(
                &gw,
                "alice@example.test",
                &["bob@example.test"],
                &message(&format!("down{i}"), "x\r\n"),
            )
        })
        .collect();
    wait_until(
        Duration::from_secs(10),
        || {
            let q = gw.queue_json();
            q.len() == N
                && q.iter().all(|m| {
                    m["recipients"][0]["state"] == "deferred"
                        && m["recipients"][0]["attempts"].as_u64() >= Some(1)
                })
        },
        || format!("{:#?}", gw.queue_json()),
    );
    let metrics = gw.metrics();
    assert_eq!(
        metric(&metrics, "dimegate_queue_recipients{state=\"deferred\"}"),
        Some(N as f64),
        "{metrics}"
    );
    assert!(
        metric(
            &metrics,
            "dimegate_deliveries_total{route=\"backend\",outcome=\"deferred\"}"
        )
        .is_some_and(|v| v >= N as f64),
        "{metrics}"
    );
    std::thread::sleep(Duration::from_secs(2));
    let sink = Sink::start_at(addr, &[]);
    let up = Instant::now();
    wait_dumps(&sink, N, Duration::from_secs(15), &gw);
    eprintln!(
        "all {N} delivered {:?} after the sink came up",
        up.elapsed()
    );
    wait_queue_empty(&gw, Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(500));
    let dumps = sink.messages();
    assert_eq!(dumps.len(), N, "each exactly once");
    for i in 0..N {
        let subject = format!("Subject: down{i}\n");
        assert_eq!(
            dumps.iter().filter(|d| d.contains(&subject)).count(),
            1,
            "{subject}"
        );
    }
    for id in ids {
        assert!(dumps.iter().any(|d| d.contains(&format!("id {id};"))));
    }
}

// ---------------------------------------------------------------------------------------------
// 4. A real Postfix behind the gateway.

#[test]
fn a_real_postfix_backend_receives_every_message_into_its_maildir() {
    let postfix = Postfix::start_with_tls();
    let gw = gateway(postfix.addr, r#"["2s", "3s"]"#, "1h", "");
    const N: usize = 10;
    for i in 0..N {
        send(
            &gw,
            "alice@example.test",
            &["bob@example.test"],
            &message(&format!("pf{i}"), "to postfix\r\n"),
        );
    }
    wait_queue_empty(&gw, Duration::from_secs(30));
    let messages = postfix.wait_for_messages(N);
    std::thread::sleep(Duration::from_secs(1));
    let messages_again = postfix.wait_for_messages(N);
    assert_eq!(
        messages_again.len(),
        N,
        "exactly {N} in the Maildir; maillog:\n{}",
        postfix.maillog()
    );
    for i in 0..N {
        let subject = format!("Subject: pf{i}\n");
        let found: Vec<String> = messages
            .iter()
            .map(|m| String::from_utf8_lossy(m).into_owned())
            .filter(|m| m.contains(&subject))
            .collect();
        assert_eq!(found.len(), 1, "{subject}");
        let m = &found[0];
        assert!(m.starts_with("Return-Path: <alice@example.test>"), "{m}");
        assert!(m.contains("Delivered-To: bob@example.test"), "{m}");
        assert!(
            m.contains("by mx.example.test (dimegate) with ESMTP"),
            "{m}"
        );
        // Postfix's Received names dimegate's EHLO and says the hop used TLS.
        assert!(m.contains("from mx.example.test"), "{m}");
        assert!(m.contains("to postfix\n"), "{m}");
    }
    let log = postfix.maillog();
    assert_eq!(
        log.matches("status=sent").count(),
        N,
        "each delivered once into the Maildir: {log}"
    );
    // dimegate used the STARTTLS Postfix offered (opportunistic, self-signed certificate).
    assert!(
        log.contains("TLS connection established from"),
        "the hop was encrypted: {log}"
    );
}

// ---------------------------------------------------------------------------------------------
// 5. kill -9 during a flood.

#[test]
fn kill_9_during_a_flood_loses_no_acknowledged_message() {
    require_tool("python3", "python3");
    let sink = Sink::start(&[]);
    let mut gw = gateway(sink.addr, r#"["1s", "2s"]"#, "1h", "");
    let mut acked: Vec<String> = Vec::new();
    const KILLS: usize = 4;
    for round in 0..KILLS {
        let mut flood = Command::new("python3")
            .arg(script("smtp_flood.py"))
            .arg(gw.smtp.ip().to_string())
            .arg(gw.smtp.port().to_string())
            .args(["4", "400", "--msgid", &format!("r{round}")])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run smtp_flood.py");
        // The kill comes once the flood is under way (a count of acknowledgements, not a fixed
        // sleep, which a loaded machine can outlast before the first 250), at a point that
        // moves from round to round.
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = flood.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(id) = line
                    .strip_prefix("ACK ")
                    .and_then(|l| l.split_whitespace().nth(1))
                {
                    let _ = tx.send(id.to_owned());
                }
            }
        });
        let before = acked.len();
        let deadline = Instant::now() + Duration::from_secs(30);
        while acked.len() - before < 20 + 10 * round && Instant::now() < deadline {
            if let Ok(id) = rx.recv_timeout(Duration::from_millis(100)) {
                acked.push(id);
            }
        }
        gw.kill9();
        flood.wait().unwrap();
        reader.join().unwrap();
        acked.extend(rx.try_iter());
        eprintln!(
            "round {round}: {} acknowledged before kill -9",
            acked.len() - before
        );
        gw.spawn();
    }
    assert!(acked.len() > 50, "the flood got going: {}", acked.len());
    wait_queue_empty(&gw, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(500));

    let mut delivered: HashMap<String, usize> = HashMap::new();
    for dump in sink.messages() {
        if let Some(line) = dump.lines().find(|l| l.starts_with("Message-ID: <")) {
            let id = line
                .trim_start_matches("Message-ID: <")
                .trim_end_matches('>')
                .to_owned();
            *delivered.entry(id).or_default() += 1;
        }
    }
    let lost: Vec<&String> = acked
        .iter()
        .filter(|id| !delivered.contains_key(*id))
        .collect();
    let duplicates: usize = delivered.values().map(|n| n - 1).sum();
    eprintln!(
        "crash test: {} acknowledged, {} distinct delivered, {duplicates} duplicate deliveries, {} lost, {KILLS} kills",
        acked.len(),
        delivered.len(),
        lost.len()
    );
    assert!(
        lost.is_empty(),
        "acknowledged but never delivered: {lost:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 6. MX resolution through Knot.

#[test]
fn mx_lookup_through_knot_delivers_and_a_null_mx_bounces() {
    let mut zone = test_zone();
    zone.push_str("dest     IN MX   10 mx1\n");
    let knot = Knot::start("example.test", &zone);
    let mx_sink = Sink::start(&[]);
    let backend = Sink::start(&[]);
    let gw = gateway(
        backend.addr,
        r#"["2s", "3s"]"#,
        "1h",
        &format!(
            "mx_port = {}\n[relay]\nnetworks = [\"127.0.0.0/8\"]\n\
             [dns]\nservers = [\"{}\"]\ntimeout = \"2s\"\n",
            mx_sink.addr.port(),
            knot.addr
        ),
    );
    send(
        &gw,
        "alice@example.test",
        &["bob@dest.example.test"],
        &message("viamx", "x\r\n"),
    );
    wait_dumps(&mx_sink, 1, Duration::from_secs(15), &gw);
    let dump = &mx_sink.messages()[0];
    assert!(
        dump.contains("X-Rcpt-Args: <bob@dest.example.test>"),
        "{dump}"
    );

    send(
        &gw,
        "alice@example.test",
        &["bob@nullmx.example.test"],
        &message("nullmx", "x\r\n"),
    );
    wait_dumps(&backend, 1, Duration::from_secs(15), &gw);
    wait_queue_empty(&gw, Duration::from_secs(5));
    let dsn = parse_dsn(dumped_message(&backend.messages()[0]));
    let block = assert_failure_dsn(&dsn, "bob@nullmx.example.test", "5.");
    assert_eq!(block["Status"], "5.1.10", "RFC 7505 null MX: {dsn:#}");
    assert_eq!(mx_sink.messages().len(), 1, "nothing else went to the MX");
    let metrics = gw.metrics();
    assert_eq!(
        metric(
            &metrics,
            "dimegate_deliveries_total{route=\"mx\",outcome=\"delivered\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "dimegate_deliveries_total{route=\"mx\",outcome=\"failed\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
}

// ---------------------------------------------------------------------------------------------
// 7. Admin verbs.

#[test]
fn hold_release_retry_and_bounce_through_the_cli() {
    let addr = closed_addr();
    // An hour between attempts: only the operator makes them happen sooner.
    let gw = gateway(addr, r#"["1h"]"#, "1d", "");
    let ids: Vec<String> = ["held", "b", "c", "bounced"]
        .iter()
        .map(|s| {
            send(
                &gw,
                "alice@example.test",
                &["bob@example.test"],
                &message(s, "x\r\n"),
            )
        })
        .collect();
    let (held, bounced) = (&ids[0], &ids[3]);
    wait_until(
        Duration::from_secs(10),
        || {
            let q = gw.queue_json();
            q.len() == 4
                && q.iter()
                    .all(|m| m["recipients"][0]["attempts"].as_u64() >= Some(1))
        },
        || format!("{:#?}", gw.queue_json()),
    );
    // queue list --json: next attempt and last error of deferred recipients.
    for m in gw.queue_json() {
        let r = &m["recipients"][0];
        assert_eq!(r["state"], "deferred", "{m:#}");
        let next = r["next_attempt"].as_u64().expect("next_attempt");
        assert!(
            (now() + 3500..=now() + 3601).contains(&next),
            "an hour from now: {m:#}"
        );
        assert!(
            r["last_error"].as_str().is_some_and(|e| !e.is_empty()),
            "{m:#}"
        );
    }

    admin(&gw, &["hold", held]);
    assert_eq!(recipients(&gw, held)[0]["state"], "held");
    admin(&gw, &["bounce", bounced]);
    let q = gw.queue_json();
    assert!(
        !q.iter().any(|m| m["queue_id"] == bounced.as_str()),
        "bounced message removed: {q:#?}"
    );
    let dsn_id = q
        .iter()
        .find(|m| m["sender"] == "")
        .map(|m| m["queue_id"].as_str().unwrap().to_owned())
        .unwrap_or_else(|| panic!("a DSN from <> queued: {q:#?}"));
    assert_eq!(recipients(&gw, &dsn_id)[0]["address"], "alice@example.test");

    let sink = Sink::start_at(addr, &[]);
    std::thread::sleep(Duration::from_secs(2));
    // The DSN was queued after the backend went... it was never tried? It was: queued messages
    // are attempted at once and deferred for an hour like the others.
    assert!(
        sink.messages().is_empty(),
        "nothing is due for an hour: {:#?}",
        sink.messages()
    );

    admin(&gw, &["retry", "--domain", "example.test"]);
    wait_dumps(&sink, 3, Duration::from_secs(10), &gw);
    std::thread::sleep(Duration::from_secs(1));
    let dumps = sink.messages();
    assert_eq!(dumps.len(), 3, "b, c and the DSN; not the held one");
    assert!(!dumps.iter().any(|d| d.contains("Subject: held\n")));
    let dsn_dump = dumps
        .iter()
        .find(|d| d.contains("X-Mail-Args: <>"))
        .expect("the bounce DSN delivered");
    let dsn = parse_dsn(dumped_message(dsn_dump));
    assert_failure_dsn(&dsn, "bob@example.test", "5.");
    assert_eq!(recipients(&gw, held)[0]["state"], "held");

    admin(&gw, &["release", held]);
    wait_dumps(&sink, 4, Duration::from_secs(10), &gw);
    wait_queue_empty(&gw, Duration::from_secs(5));
    assert!(
        sink.messages()
            .iter()
            .any(|d| d.contains("Subject: held\n"))
    );

    let metrics = gw.metrics();
    promtool_check(&metrics);
    assert_eq!(
        metric(&metrics, "dimegate_dsns_total{kind=\"failure\"}"),
        Some(1.0),
        "{metrics}"
    );
}

// ---------------------------------------------------------------------------------------------
// More shapes of the same promises.

/// One message, two routes: the backend takes its recipient at once; the smarthost defers the
/// other. Retrying the deferred one must not send the backend's copy again.
#[test]
fn a_deferred_recipient_is_retried_without_redelivering_the_delivered_one() {
    let backend = Sink::start(&[]);
    let failing = Sink::start(&["-r", "RCPT"]);
    let relay_addr = failing.addr;
    let gw = gateway(
        backend.addr,
        r#"["1s", "2s"]"#,
        "1h",
        &format!("[relay]\nnetworks = [\"127.0.0.0/8\"]\nsmarthost = \"{relay_addr}\"\n"),
    );
    let id = send(
        &gw,
        "alice@example.test",
        &["bob@example.test", "carol@remote.test"],
        &message("split", "x\r\n"),
    );
    wait_dumps(&backend, 1, Duration::from_secs(10), &gw);
    wait_until(
        Duration::from_secs(15),
        || {
            recipients(&gw, &id)
                .get(1)
                .is_some_and(|r| r["attempts"].as_u64() >= Some(3))
        },
        || format!("{:#?}", gw.queue_json()),
    );
    let rs = recipients(&gw, &id);
    assert_eq!(rs[0]["state"], "delivered", "{rs:#?}");
    assert_eq!(rs[1]["state"], "deferred", "{rs:#?}");
    drop(failing);
    let relay = Sink::start_at(relay_addr, &[]);
    wait_dumps(&relay, 1, Duration::from_secs(10), &gw);
    wait_queue_empty(&gw, Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(500));
    let b = backend.messages();
    assert_eq!(b.len(), 1, "the backend's copy once: {b:#?}");
    assert!(b[0].contains("X-Rcpt-Args: <bob@example.test>"));
    assert!(!b[0].contains("carol"), "{}", b[0]);
    let r = relay.messages();
    assert_eq!(r.len(), 1);
    assert!(r[0].contains("X-Rcpt-Args: <carol@remote.test>"));
    assert!(!r[0].contains("X-Rcpt-Args: <bob@"), "{}", r[0]);
}

/// `[backend] lmtp = true` against smtp-sink -L: several recipients in one transaction, each
/// with its own reply, each delivered once.
#[test]
fn lmtp_backend_gets_every_recipient_once() {
    let sink = Sink::start(&["-L"]);
    let gw = Gateway::start(&format!(
        "[backend]\naddress = \"{}\"\nlmtp = true\n[queue]\nretry = [\"2s\"]\njitter_percent = 0\npoll_interval = \"100ms\"\n",
        sink.addr
    ));
    let rcpts = ["a@example.test", "b@example.test", "c@localhost"];
    for i in 0..5 {
        send(
            &gw,
            "alice@example.test",
            &rcpts,
            &message(&format!("lmtp{i}"), "x\r\n"),
        );
    }
    wait_queue_empty(&gw, Duration::from_secs(15));
    std::thread::sleep(Duration::from_millis(500));
    let dumps = sink.messages();
    assert_eq!(dumps.len(), 5, "one transaction per message");
    for dump in &dumps {
        assert!(
            dump.contains("X-Client-Proto: LMTP") || dump.contains("LHLO"),
            "{dump}"
        );
        for rcpt in rcpts {
            assert_eq!(
                dump.matches(&format!("X-Rcpt-Args: <{rcpt}>")).count(),
                1,
                "{dump}"
            );
        }
    }
    let metrics = gw.metrics();
    assert_eq!(
        metric(
            &metrics,
            "dimegate_deliveries_total{route=\"backend\",outcome=\"delivered\"}"
        ),
        Some(15.0),
        "{metrics}"
    );
}

/// A recipient deferred past `delay_warning` gets one delay DSN (Action: delayed, 4.x.x), and
/// stays queued.
#[test]
fn a_long_deferral_sends_one_delay_warning() {
    let backend = Sink::start(&[]);
    let failing = Sink::start(&["-r", "RCPT"]);
    let gw = Gateway::start(&format!(
        "[backend]\naddress = \"{}\"\n\
         [queue]\nretry = [\"1s\"]\njitter_percent = 0\nexpire = \"1h\"\n\
         delay_warning = \"2s\"\npoll_interval = \"100ms\"\n\
         [relay]\nnetworks = [\"127.0.0.0/8\"]\nsmarthost = \"{}\"\n",
        backend.addr, failing.addr
    ));
    let id = send(
        &gw,
        "alice@example.test",
        &["carol@remote.test"],
        &message("delayed", "x\r\n"),
    );
    // Generous limits: a loaded machine stretches the one-second schedule.
    wait_dumps(&backend, 1, Duration::from_secs(40), &gw);
    // Several more attempts: still one warning.
    wait_until(
        Duration::from_secs(40),
        || {
            recipients(&gw, &id)
                .first()
                .is_some_and(|r| r["attempts"].as_u64() >= Some(5))
        },
        || format!("{:#?}", gw.queue_json()),
    );
    let dumps = backend.messages();
    assert_eq!(dumps.len(), 1, "one delay warning");
    let dsn = parse_dsn(dumped_message(&dumps[0]));
    assert_eq!(dsn["type"], "multipart/report", "{dsn:#}");
    let block = dsn["blocks"][1].clone();
    assert_eq!(block["Action"], "delayed", "{dsn:#}");
    assert!(
        block["Status"]
            .as_str()
            .is_some_and(|s| s.starts_with("4.")),
        "{dsn:#}"
    );
    assert!(block["Will-Retry-Until"].as_str().is_some(), "{dsn:#}");
    assert_eq!(recipients(&gw, &id)[0]["state"], "deferred");
    let metrics = gw.metrics();
    assert_eq!(
        metric(&metrics, "dimegate_dsns_total{kind=\"delay\"}"),
        Some(1.0),
        "{metrics}"
    );
}

/// A next hop that drops the connection: 421 at MAIL, silence after the end of data (the
/// message may or may not have been taken: deliver again rather than lose it).
#[test]
fn dropped_connections_defer_and_the_message_is_delivered_later() {
    for flags in [&["-Q", "MAIL"][..], &["-q", "."][..]] {
        let failing = Sink::start(flags);
        let addr = failing.addr;
        let gw = gateway(addr, r#"["1s", "2s"]"#, "1h", "");
        let id = send(
            &gw,
            "alice@example.test",
            &["bob@example.test"],
            &message("dropped", "x\r\n"),
        );
        wait_until(
            Duration::from_secs(10),
            || {
                recipients(&gw, &id)
                    .first()
                    .is_some_and(|r| r["attempts"].as_u64() >= Some(1))
            },
            || format!("{:#?}", gw.queue_json()),
        );
        let r = &recipients(&gw, &id)[0];
        assert_eq!(r["state"], "deferred", "{flags:?}: {r:#}");
        drop(failing);
        let sink = Sink::start_at(addr, &[]);
        wait_dumps(&sink, 1, Duration::from_secs(10), &gw);
        wait_queue_empty(&gw, Duration::from_secs(5));
        assert_eq!(sink.messages().len(), 1, "{flags:?}");
    }
}

/// SIGTERM while a delivery is in flight (the sink takes 3 s to answer the end of data): the
/// gateway finishes it and exits cleanly; after a restart nothing is delivered twice.
#[test]
fn sigterm_during_a_delivery_finishes_it_and_exits_cleanly() {
    let sink = Sink::start(&["-W", ".:3"]);
    let mut gw = gateway(sink.addr, r#"["1s", "2s"]"#, "1h", "");
    send(
        &gw,
        "alice@example.test",
        &["bob@example.test"],
        &message("slow", "x\r\n"),
    );
    wait_until(
        Duration::from_secs(10),
        || sink.count_in_log("DATA") >= 1,
        || gw.log_text(),
    );
    let stopping = Instant::now();
    let status = gw.stop();
    eprintln!("stopped {:?} after SIGTERM", stopping.elapsed());
    assert!(status.success(), "clean exit: {status}\n{}", gw.log_text());
    gw.spawn();
    wait_queue_empty(&gw, Duration::from_secs(15));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        sink.messages().len(),
        1,
        "delivered once\n{}",
        gw.log_text()
    );
}

/// `[[destination]] require_tls` for a domain whose MX offers no STARTTLS (smtp-sink): the mail
/// waits in the queue, it is not sent in clear text; another domain on the same MX is delivered.
#[test]
fn require_tls_keeps_mail_queued_when_the_mx_has_no_starttls() {
    let mut zone = test_zone();
    zone.push_str("dest     IN MX   10 mx1\nsecure   IN MX   10 mx1\n");
    let knot = Knot::start("example.test", &zone);
    let mx_sink = Sink::start(&[]);
    let gw = gateway(
        closed_addr(),
        r#"["2s", "3s"]"#,
        "1h",
        &format!(
            "mx_port = {}\n[[destination]]\ndomain = \"secure.example.test\"\nrequire_tls = true\n\
             [relay]\nnetworks = [\"127.0.0.0/8\"]\n\
             [dns]\nservers = [\"{}\"]\ntimeout = \"2s\"\n",
            mx_sink.addr.port(),
            knot.addr
        ),
    );
    let secure = send(
        &gw,
        "alice@example.test",
        &["bob@secure.example.test"],
        &message("secure", "secret\r\n"),
    );
    send(
        &gw,
        "alice@example.test",
        &["bob@dest.example.test"],
        &message("plain", "x\r\n"),
    );
    wait_dumps(&mx_sink, 1, Duration::from_secs(15), &gw);
    wait_until(
        Duration::from_secs(10),
        || {
            recipients(&gw, &secure)
                .first()
                .is_some_and(|r| r["attempts"].as_u64() >= Some(1))
        },
        || format!("{:#?}\n{}", gw.queue_json(), gw.log_text()),
    );
    let r = &recipients(&gw, &secure)[0];
    assert_eq!(r["state"], "deferred", "{r:#}");
    eprintln!("require_tls: {}", r["last_error"]);
    let dumps = mx_sink.messages();
    assert_eq!(dumps.len(), 1, "{dumps:#?}");
    assert!(dumps[0].contains("Subject: plain"));
    assert!(!dumps.iter().any(|d| d.contains("secret")));
}

/// NOTIFY=SUCCESS through the gateway into a real Postfix. While Postfix offers DSN, the NOTIFY
/// goes along and Postfix alone reports the delivery; with DSN switched off at Postfix, the
/// gateway reports `Action: relayed` itself (RFC 3461 §5.2.2, §5.2.3).
#[test]
fn notify_success_is_reported_once_by_whoever_knows() {
    let postfix = Postfix::start_with_tls();
    // Pooled connections idle out quickly: the second half needs a fresh EHLO.
    let gw = gateway(
        postfix.addr,
        r#"["2s", "3s"]"#,
        "1h",
        "idle_timeout = \"500ms\"\n",
    );
    // Waits for `count` messages, then gives stragglers (a second notice) a moment.
    let maildir = |count| -> Vec<String> {
        postfix.wait_for_messages(count);
        std::thread::sleep(Duration::from_secs(2));
        let new = postfix.dir.path().join("pf/mail/catchall/new");
        std::fs::read_dir(new)
            .unwrap()
            .map(|e| {
                String::from_utf8_lossy(&std::fs::read(e.unwrap().path()).unwrap()).into_owned()
            })
            .collect()
    };
    send(
        &gw,
        "alice@example.test",
        &["bob@example.test NOTIFY=SUCCESS,FAILURE"],
        &message("notify1", "x\r\n"),
    );
    // The message and Postfix's own success notice.
    let got = maildir(2);
    let reports: Vec<&String> = got
        .iter()
        .filter(|m| m.contains("report-type=delivery-status"))
        .collect();
    assert_eq!(
        reports.len(),
        1,
        "one success notice, from Postfix: {got:#?}\n{}",
        gw.log_text()
    );
    let dsn = parse_dsn(reports[0]);
    assert_eq!(dsn["blocks"][1]["Action"], "delivered", "{dsn:#}");
    assert!(
        !dsn["blocks"][0]["Reporting-MTA"]
            .as_str()
            .unwrap_or_default()
            .contains("mx.example.test"),
        "reported by Postfix, not the gateway: {dsn:#}"
    );
    let metrics = gw.metrics();
    assert!(
        metric(&metrics, "dimegate_dsns_total{kind=\"success\"}").is_none_or(|v| v == 0.0),
        "{metrics}"
    );

    // Postfix without DSN: the gateway reports "relayed".
    let etc = postfix.dir.path().join("pf/etc");
    let ok = Command::new(tool("postconf"))
        .arg("-c")
        .arg(&etc)
        .args(["-e", "smtpd_discard_ehlo_keywords = dsn"])
        .status()
        .unwrap();
    assert!(ok.success());
    let ok = Command::new(tool("postfix"))
        .arg("-c")
        .arg(&etc)
        .arg("reload")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success());
    // After the reload and after the gateway's idle connection (EHLO'd with DSN) has closed.
    std::thread::sleep(Duration::from_secs(2));
    send(
        &gw,
        "alice@example.test",
        &["carol@example.test NOTIFY=SUCCESS,FAILURE"],
        &message("notify2", "x\r\n"),
    );
    wait_queue_empty(&gw, Duration::from_secs(20));
    let got = maildir(4);
    assert_eq!(got.len(), 4, "{got:#?}");
    let relayed: Vec<serde_json::Value> = got
        .iter()
        .filter(|m| m.contains("report-type=delivery-status"))
        .map(|m| parse_dsn(m))
        .filter(|d| d["blocks"][1]["Action"] == "relayed")
        .collect();
    assert_eq!(relayed.len(), 1, "{got:#?}");
    let dsn = &relayed[0];
    assert!(
        dsn["blocks"][0]["Reporting-MTA"]
            .as_str()
            .is_some_and(|v| v.contains("mx.example.test")),
        "{dsn:#}"
    );
    assert!(
        dsn["blocks"][1]["Final-Recipient"]
            .as_str()
            .is_some_and(|v| v.contains("carol@example.test")),
        "{dsn:#}"
    );
    assert!(
        dsn["blocks"][1]["Status"]
            .as_str()
            .is_some_and(|v| v.starts_with("2.")),
        "{dsn:#}"
    );
}

/// Deliveries that queue up behind a busy next hop (one connection at a time, 1 s per
/// message) wait longer than the lease. The lease must not lapse under a delivery that is
/// merely waiting its turn: every message reaches the sink once.
#[test]
fn waiting_for_a_busy_hop_does_not_duplicate_deliveries() {
    let sink = Sink::start(&["-W", ".:1"]);
    let gw = Gateway::start(&format!(
        "[backend]\naddress = \"{}\"\n\
         [queue]\nretry = [\"1s\"]\njitter_percent = 0\nlease = \"3s\"\npoll_interval = \"100ms\"\n\
         [delivery]\nmax_connections_per_hop = 1\n",
        sink.addr
    ));
    const N: usize = 8;
    for i in 0..N {
        send(
            &gw,
            "alice@example.test",
            &["bob@example.test"],
            &message(&format!("busy{i}"), "x\r\n"),
        );
    }
    wait_queue_empty(&gw, Duration::from_secs(40));
    std::thread::sleep(Duration::from_secs(2));
    let dumps = sink.messages();
    let mut counts = HashMap::new();
    for d in &dumps {
        if let Some(l) = d.lines().find(|l| l.starts_with("Subject: ")) {
            *counts.entry(l.to_owned()).or_insert(0usize) += 1;
        }
    }
    assert_eq!(counts.len(), N, "{counts:?}");
    assert_eq!(
        dumps.len(),
        N,
        "no duplicates: {counts:?}\n{}",
        gw.log_text()
    );
}

/// `queue hold` while the message is in a delivery attempt cannot stop that attempt: the CLI
/// says so instead of claiming it held the message.
#[test]
fn hold_during_an_attempt_says_the_recipient_was_left_alone() {
    let sink = Sink::start(&["-W", ".:3"]);
    let gw = gateway(sink.addr, r#"["1s", "2s"]"#, "1h", "");
    let id = send(
        &gw,
        "alice@example.test",
        &["bob@example.test"],
        &message("inflight", "x\r\n"),
    );
    wait_until(
        Duration::from_secs(10),
        || sink.count_in_log("DATA") >= 1,
        || gw.log_text(),
    );
    let out = admin(&gw, &["hold", &id]);
    assert!(
        out.contains("1 recipient(s) in a delivery attempt right now were left alone"),
        "{out}"
    );
    wait_queue_empty(&gw, Duration::from_secs(10));
    assert_eq!(sink.messages().len(), 1);
}
