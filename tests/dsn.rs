//! Generated DSNs read back by an independent parser: Python's `email` package with the modern
//! policy, which knows multipart/report and message/delivery-status (RFC 3464) and records every
//! syntax problem it meets as a defect.

use dimegate::envelope::{DsnReturn, Envelope, Notify, QueueId, Recipient};
use dimegate::queue::{Diagnosis, DsnInput, RecipientReport, ReportOutcome, build_dsn};
use dimegate::store::UnixTime;
use serde_json::Value;
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};

const PARSE: &str = r#"
import sys, json, email, email.policy
msg = email.message_from_bytes(sys.stdin.buffer.read(), policy=email.policy.default)
def fields(m):
    return {k: str(v) for k, v in m.items()}
out = {
    "type": msg.get_content_type(),
    "report_type": msg.get_param("report-type"),
    "headers": fields(msg),
    "defects": [repr(d) for d in msg.defects],
    "parts": [],
}
for part in msg.iter_parts():
    p = {"type": part.get_content_type(), "defects": [repr(d) for d in part.defects]}
    if p["type"] == "message/delivery-status":
        blocks = part.get_payload()
        p["per_message"] = fields(blocks[0])
        p["recipients"] = [fields(b) for b in blocks[1:]]
    elif p["type"] == "message/rfc822":
        inner = part.get_payload()[0]
        p["headers"] = fields(inner)
        p["body"] = inner.get_content()
    else:
        p["content"] = part.get_content()
    out["parts"].append(p)
print(json.dumps(out))
"#;

fn python_parse(message: &[u8]) -> Value {
    let mut child = Command::new("python3")
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 is needed for this test (apt-get install python3)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(message)
        .expect("write to python3");
    let output = child.wait_with_output().expect("python3 ran");
    assert!(
        output.status.success(),
        "python3 failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("python3 printed JSON")
}

const MESSAGE: &[u8] = b"From: Alice <alice@example.org>\r\n\
To: Bob <bob@other.example>, Carol <carol@third.example>\r\n\
Subject: Quarterly numbers\r\n\
Date: Tue, 14 Nov 2023 22:13:00 +0000\r\n\
Message-ID: <q3@example.org>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: text/plain; charset=us-ascii\r\n\
\r\n\
Bob, Carol,\r\n\
the numbers are in.\r\n";

fn envelope(ret: Option<DsnReturn>) -> Envelope {
    Envelope {
        sender: "alice@example.org".into(),
        recipients: vec![
            Recipient {
                address: "bob@other.example".into(),
                notify: None,
                orcpt: Some("rfc822;bob@other.example".into()),
            },
            Recipient {
                address: "carol@third.example".into(),
                notify: Some(Notify {
                    never: false,
                    success: true,
                    failure: true,
                    delay: true,
                }),
                orcpt: None,
            },
            Recipient {
                address: "dave@third.example".into(),
                notify: Some(Notify {
                    never: true,
                    ..Notify::default()
                }),
                orcpt: None,
            },
        ],
        dsn_ret: ret,
        dsn_envid: Some("Q3+2Bnumbers".into()),
        body_8bit: false,
        smtputf8: false,
        helo: "client.example.org".into(),
        client: SocketAddr::from(([192, 0, 2, 7], 41000)),
        tls: None,
        auth_user: None,
        arrival_unix: 1_700_000_000,
        require_tls: false,
    }
}

fn reports() -> Vec<RecipientReport> {
    vec![
        RecipientReport {
            recipient: 0,
            outcome: ReportOutcome::Failed(Diagnosis {
                remote_mta: Some("mx.other.example".into()),
                reply: Some("550 5.1.1 <bob@other.example>: Recipient address rejected".into()),
                ..Diagnosis::default()
            }),
            last_attempt: Some(UnixTime(1_700_000_100)),
        },
        RecipientReport {
            recipient: 1,
            outcome: ReportOutcome::Delayed {
                diagnosis: Diagnosis {
                    remote_mta: Some("mx.third.example".into()),
                    reply: Some("451 4.7.1 Greylisted, try again later".into()),
                    ..Diagnosis::default()
                },
                will_retry_until: UnixTime(1_700_432_000),
            },
            last_attempt: Some(UnixTime(1_700_000_100)),
        },
        RecipientReport {
            recipient: 2,
            outcome: ReportOutcome::Failed(Diagnosis::default()),
            last_attempt: None,
        },
    ]
}

fn build(ret: Option<DsnReturn>, max_full_bytes: u64) -> Vec<u8> {
    let envelope = envelope(ret);
    let reports = reports();
    let dsn = build_dsn(&DsnInput {
        queue_id: QueueId(0x0005_F2A1_0000_0001),
        envelope: &envelope,
        message: MESSAGE,
        reporting_mta: "gw.example.org",
        now: UnixTime(1_700_000_200),
        message_id_seed: 0xDEAD_BEEF,
        reports: &reports,
        max_full_bytes,
    })
    .expect("a DSN is owed");
    assert_eq!(dsn.recipient, "alice@example.org");
    dsn.message
}

fn check_report(parsed: &Value, returned_type: &str) {
    assert_eq!(parsed["type"], "multipart/report", "{parsed:#}");
    assert_eq!(parsed["report_type"], "delivery-status");
    assert_eq!(parsed["defects"], Value::Array(vec![]), "{parsed:#}");
    assert_eq!(parsed["headers"]["To"], "alice@example.org");
    assert_eq!(parsed["headers"]["Auto-Submitted"], "auto-replied");
    assert_eq!(
        parsed["headers"]["Subject"],
        "Undelivered Mail Returned to Sender"
    );
    let parts = parsed["parts"].as_array().expect("parts");
    let types: Vec<&str> = parts.iter().filter_map(|p| p["type"].as_str()).collect();
    assert_eq!(
        types,
        ["text/plain", "message/delivery-status", returned_type],
        "{parsed:#}"
    );
    for p in parts {
        assert_eq!(p["defects"], Value::Array(vec![]), "{p:#}");
    }
    assert!(
        parts[0]["content"]
            .as_str()
            .unwrap_or_default()
            .contains("<bob@other.example>: failed")
    );

    let status = &parts[1];
    assert_eq!(
        status["per_message"]["Reporting-MTA"],
        "dns; gw.example.org"
    );
    assert_eq!(status["per_message"]["Original-Envelope-Id"], "Q3+numbers");
    assert_eq!(
        status["per_message"]["Arrival-Date"],
        "Tue, 14 Nov 2023 22:13:20 +0000"
    );
    let recipients = status["recipients"].as_array().expect("recipients");
    // dave asked for NOTIFY=NEVER.
    assert_eq!(recipients.len(), 2, "{status:#}");
    let bob = &recipients[0];
    assert_eq!(bob["Original-Recipient"], "rfc822; bob@other.example");
    assert_eq!(bob["Final-Recipient"], "rfc822; bob@other.example");
    assert_eq!(bob["Action"], "failed");
    assert_eq!(bob["Status"], "5.1.1");
    assert_eq!(bob["Remote-MTA"], "dns; mx.other.example");
    assert_eq!(
        bob["Diagnostic-Code"],
        "smtp; 550 5.1.1 <bob@other.example>: Recipient address rejected"
    );
    assert_eq!(bob["Last-Attempt-Date"], "Tue, 14 Nov 2023 22:15:00 +0000");
    assert!(bob.get("Will-Retry-Until").is_none());
    let carol = &recipients[1];
    assert_eq!(carol["Final-Recipient"], "rfc822; carol@third.example");
    assert_eq!(carol["Action"], "delayed");
    assert_eq!(carol["Status"], "4.7.1");
    assert_eq!(carol["Will-Retry-Until"], "Sun, 19 Nov 2023 22:13:20 +0000");
}

#[test]
fn python_reads_a_headers_only_dsn() {
    for ret in [None, Some(DsnReturn::Headers)] {
        let parsed = python_parse(&build(ret, 1 << 20));
        check_report(&parsed, "text/rfc822-headers");
        let headers = parsed["parts"][2]["content"].as_str().unwrap_or_default();
        assert!(headers.contains("Subject: Quarterly numbers"), "{headers}");
        assert!(!headers.contains("the numbers are in"), "{headers}");
    }
}

#[test]
fn python_reads_a_full_dsn() {
    let bytes = build(Some(DsnReturn::Full), 1 << 20);
    let parsed = python_parse(&bytes);
    check_report(&parsed, "message/rfc822");
    let returned = &parsed["parts"][2];
    assert_eq!(returned["headers"]["Subject"], "Quarterly numbers");
    assert_eq!(returned["headers"]["Message-ID"], "<q3@example.org>");
    let body = returned["body"]
        .as_str()
        .unwrap_or_default()
        .replace("\r\n", "\n");
    assert_eq!(body, "Bob, Carol,\nthe numbers are in.\n");
}

#[test]
fn python_reads_a_full_dsn_cut_down_to_headers() {
    let parsed = python_parse(&build(Some(DsnReturn::Full), 100));
    check_report(&parsed, "text/rfc822-headers");
    let human = parsed["parts"][0]["content"].as_str().unwrap_or_default();
    assert!(
        human.replace('\n', " ").contains("larger than 100 bytes"),
        "{human}"
    );
}

#[test]
fn python_reads_a_utf8_dsn() {
    let mut envelope = envelope(None);
    envelope.sender = "álvaro@example.org".into();
    envelope.smtputf8 = true;
    envelope.recipients[0].address = "δοκιμή@other.example".into();
    envelope.recipients[0].orcpt = None;
    let reports = reports();
    let dsn = build_dsn(&DsnInput {
        queue_id: QueueId(1),
        envelope: &envelope,
        message: MESSAGE,
        reporting_mta: "gw.example.org",
        now: UnixTime(1_700_000_200),
        message_id_seed: 1,
        reports: &reports,
        max_full_bytes: 1 << 20,
    })
    .expect("a DSN is owed");
    let parsed = python_parse(&dsn.message);
    assert_eq!(parsed["type"], "multipart/report");
    assert_eq!(parsed["headers"]["To"], "álvaro@example.org");
    let bob = &parsed["parts"][1]["recipients"][0];
    assert_eq!(
        bob["Final-Recipient"],
        "utf-8; \\x{3B4}\\x{3BF}\\x{3BA}\\x{3B9}\\x{3BC}\\x{3AE}@other.example"
    );
    let human = parsed["parts"][0]["content"].as_str().unwrap_or_default();
    assert!(human.contains("<δοκιμή@other.example>: failed"), "{human}");
}
