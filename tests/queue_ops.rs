//! `dimegate queue summary` and `dimegate queue drain` against the real binary: Postfix's
//! smtp-sink as a failing, a down and a healthy backend, a second gateway as the drain peer.

mod common;

use common::{
    Gateway, Sink, free_port, http_get, metric, queued_ids, smtp_send, swaks, wait_until,
};
use std::net::SocketAddr;
use std::time::Duration;

/// A gateway whose served domains go to `backend`, retrying only after an hour: a deferred
/// recipient stays deferred unless someone makes it due.
fn gateway(backend: SocketAddr) -> Gateway {
    Gateway::start(&format!(
        "[backend]\naddress = \"{backend}\"\n\
         [queue]\nretry = [\"1h\"]\njitter_percent = 0\nexpire = \"5d\"\n\
         delay_warning = \"off\"\npoll_interval = \"100ms\"\n\
         [delivery]\nconnect_timeout = \"2s\"\ncommand_timeout = \"10s\"\n"
    ))
}

fn closed_addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

fn send(gw: &Gateway, rcpts: &[&str], n: usize) -> String {
    let data = format!("From: a@client.test\r\nSubject: ops {n}\r\n\r\nbody {n}\r\n");
    let reply = smtp_send(gw.smtp, "alice@client.test", rcpts, &data)
        .unwrap_or_else(|e| panic!("gateway refused the message: {e}\nlog:\n{}", gw.log_text()));
    queued_ids(&reply).pop().expect("a queue id")
}

fn run(gw: &Gateway, args: &[&str]) -> (i32, String, String) {
    let out = gw.queue(args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn summary_json(gw: &Gateway) -> serde_json::Value {
    let (code, out, err) = run(gw, &["summary", "--json"]);
    assert_eq!(code, 0, "queue summary: {out}{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Every recipient of the queue is deferred (or held).
fn wait_all_settled(gw: &Gateway, recipients: usize) {
    wait_until(
        Duration::from_secs(30),
        || {
            let q = gw.queue_json();
            let n = q
                .iter()
                .flat_map(|m| m["recipients"].as_array().cloned().unwrap_or_default())
                .filter(|r| r["state"] == "deferred" || r["state"] == "held")
                .count();
            n == recipients
        },
        || format!("queue: {:#?}\nlog:\n{}", gw.queue_json(), gw.log_text()),
    );
}

#[test]
fn summary_counts_pending_recipients_by_domain_and_ranks_deferral_reasons() {
    // smtp-sink -r RCPT answers every RCPT TO with a 4xx: everything is deferred.
    let failing = Sink::start(&["-r", "RCPT"]);
    let mut gw = gateway(failing.addr);
    send(&gw, &["b@example.test", "c@example.test"], 1);
    send(&gw, &["d@example.test"], 2);
    let held = send(&gw, &["e@localhost"], 3);
    wait_all_settled(&gw, 4);
    // Once deferred (not in an attempt), hold takes effect at once.
    let (code, out, err) = run(&gw, &["hold", &held]);
    assert_eq!(code, 0, "{out}{err}");

    for mode in ["through the server", "directly from the store"] {
        let s = summary_json(&gw);
        assert_eq!(s["messages"], 3, "{mode}: {s:#}");
        assert_eq!(s["pending_recipients"], 4, "{mode}: {s:#}");
        assert_eq!(s["by_state"]["deferred"], 3, "{mode}: {s:#}");
        assert_eq!(s["by_state"]["held"], 1, "{mode}: {s:#}");
        let domains = s["domains"].as_array().expect("domains");
        assert_eq!(domains.len(), 2, "{mode}: {s:#}");
        assert_eq!(domains[0]["domain"], "example.test");
        assert_eq!(domains[0]["total"], 3);
        // All of it arrived within the last five minutes: the first age bucket.
        assert_eq!(domains[0]["by_age"][0], 3);
        assert_eq!(domains[1]["domain"], "localhost");
        assert_eq!(domains[1]["total"], 1);
        let reasons = s["deferral_reasons"].as_array().expect("reasons");
        assert_eq!(reasons.len(), 1, "{mode}: {s:#}");
        assert_eq!(reasons[0]["recipients"], 3);
        let reason = reasons[0]["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("4"), "{mode}: a 4xx reason, got {reason:?}");

        let (code, text, err) = run(&gw, &["summary"]);
        assert_eq!(code, 0, "{text}{err}");
        let total = text
            .lines()
            .find(|l| l.trim_start().starts_with("TOTAL"))
            .unwrap_or_else(|| panic!("no TOTAL row: {text}"));
        let cols: Vec<&str> = total.split_whitespace().collect();
        assert_eq!(cols[1..3], ["4", "4"], "{text}");
        assert!(text.contains("example.test"), "{text}");
        assert!(text.contains("top deferral reasons:"), "{text}");
        // Second round: the same answers with the server stopped.
        if gw.child.is_some() {
            assert!(gw.stop().success());
        }
    }
}

#[test]
fn drain_stops_ingress_and_delivers_what_the_queue_holds() {
    let backend = closed_addr();
    let gw = gateway(backend);
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(send(&gw, &["bob@example.test"], n));
    }
    wait_all_settled(&gw, 5);
    // The backend comes back only now; with a one-hour retry nothing would move without drain.
    let sink = Sink::start_at(backend, &[]);
    let (code, out, err) = run(&gw, &["hold", &ids[0]]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains("left alone"), "{out}");

    let (code, out, err) = run(&gw, &["drain", "--timeout", "60s"]);
    assert_eq!(
        code, 1,
        "a held message is left for the operator: {out}{err}"
    );
    assert!(out.contains("held"), "{out}");
    wait_until(
        Duration::from_secs(10),
        || sink.messages().len() == 4,
        || format!("{} at the sink", sink.messages().len()),
    );

    // Draining: new connections get 421 4.3.2 at once, /readyz says 503.
    let (ok, transcript) = swaks(gw.smtp, &["--to", "bob@example.test"]);
    assert!(!ok, "{transcript}");
    assert!(transcript.contains("421 4.3.2"), "{transcript}");
    assert_eq!(http_get(gw.admin, "/readyz").unwrap().0, 503);
    assert_eq!(http_get(gw.admin, "/healthz").unwrap().0, 200);
    let m = gw.metrics();
    assert_eq!(metric(&m, "dimegate_draining"), Some(1.0), "{m}");
    assert_eq!(
        metric(
            &m,
            "dimegate_smtp_sessions_total{outcome=\"refused_draining\"}"
        ),
        Some(1.0),
        "{m}"
    );

    let (code, out, err) = run(&gw, &["release", &ids[0]]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = run(&gw, &["drain", "--timeout", "60s"]);
    assert_eq!(code, 0, "{out}{err}\nlog:\n{}", gw.log_text());
    assert!(out.contains("drained: the queue is empty"), "{out}");
    assert!(gw.queue_json().is_empty());
    assert_eq!(sink.messages().len(), 5, "each message exactly once");
}

#[test]
fn drain_with_a_peer_hands_the_queue_over_smtp_to_another_node() {
    let sink = Sink::start(&[]);
    // Node A's backend never comes up; node B delivers to the sink.
    let a = gateway(closed_addr());
    let b = gateway(sink.addr);
    for n in 0..3 {
        send(&a, &["bob@example.test", "carol@localhost"], n);
    }
    wait_all_settled(&a, 6);

    let (code, out, err) = run(&a, &["drain", "--peer", "[bad", "--timeout", "5s"]);
    assert_eq!(code, 2, "a bad peer is a usage error: {out}{err}");

    let peer = b.smtp.to_string();
    let (code, out, err) = run(&a, &["drain", "--peer", &peer, "--timeout", "60s"]);
    assert_eq!(code, 0, "{out}{err}\nA's log:\n{}", a.log_text());
    assert!(
        out.contains(&format!("handing the queue to {peer}")),
        "{out}"
    );
    assert!(a.queue_json().is_empty());
    // B took them over (250 = on its disk) and delivered them to the sink.
    wait_until(
        Duration::from_secs(30),
        || b.queue_json().is_empty() && sink.messages().len() >= 3,
        || format!("B: {:#?}\nB's log:\n{}", b.queue_json(), b.log_text()),
    );
    let got = sink.messages();
    for n in 0..3 {
        let subject = format!("Subject: ops {n}\n");
        let copies = got.iter().filter(|m| m.contains(&subject)).count();
        assert_eq!(copies, 1, "message {n} at the sink: {got:?}");
    }
    let m = a.metrics();
    assert_eq!(
        metric(
            &m,
            "dimegate_deliveries_total{route=\"peer\",outcome=\"delivered\"}"
        ),
        Some(6.0),
        "{m}"
    );
}

#[test]
fn drain_without_a_running_server_says_so() {
    let mut gw = gateway(closed_addr());
    assert!(gw.stop().success());
    let (code, out, err) = run(&gw, &["drain", "--timeout", "5s"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("needs the running server"), "{err}");
}
