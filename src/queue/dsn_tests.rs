//! Table tests of the DSN rules; tests/dsn.rs runs the output through Python's `email` parser.

use super::*;
use crate::status::{DiagnosticCode, DiagnosticType};
use std::net::{Ipv4Addr, SocketAddr};

const ARRIVAL: UnixTime = UnixTime(1_700_000_000);
const NOW: UnixTime = UnixTime(1_700_003_600);
const MESSAGE: &[u8] = b"From: Alice <alice@example.org>\r\nTo: bob@other.example\r\nSubject: Hello\r\nMessage-ID: <m1@example.org>\r\n\r\nHi Bob,\r\nthe body.\r\n";

fn rcpt(address: &str, notify: Option<Notify>) -> Recipient {
    Recipient {
        address: address.into(),
        notify,
        orcpt: None,
    }
}

fn envelope(recipients: Vec<Recipient>, ret: Option<DsnReturn>) -> Envelope {
    Envelope {
        sender: "alice@example.org".into(),
        recipients,
        dsn_ret: ret,
        dsn_envid: None,
        body_8bit: false,
        smtputf8: false,
        helo: "client.example.org".into(),
        client: SocketAddr::from((Ipv4Addr::new(192, 0, 2, 1), 40000)),
        tls: None,
        auth_user: None,
        arrival_unix: ARRIVAL.0,
        require_tls: false,
        dime: None,
    }
}

/// An SMTP reply as a DSN's Diagnostic-Code carries it.
fn smtp(text: impl Into<String>) -> DiagnosticCode {
    DiagnosticCode::new(DiagnosticType::Smtp, text)
}

fn failed(reply: &str) -> ReportOutcome {
    ReportOutcome::Failed(Diagnosis {
        remote_mta: Some("mx.other.example".into()),
        reply: Some(smtp(reply)),
        ..Diagnosis::default()
    })
}

fn delayed(reply: &str) -> ReportOutcome {
    ReportOutcome::Delayed {
        diagnosis: Diagnosis {
            remote_mta: Some("mx.other.example".into()),
            reply: Some(smtp(reply)),
            ..Diagnosis::default()
        },
        will_retry_until: ARRIVAL.plus(std::time::Duration::from_secs(5 * 86_400)),
    }
}

fn delivered() -> ReportOutcome {
    ReportOutcome::Delivered(Diagnosis {
        remote_mta: Some("mx.other.example".into()),
        reply: Some(smtp("250 2.0.0 Ok: queued as 1234")),
        ..Diagnosis::default()
    })
}

fn report(recipient: usize, outcome: ReportOutcome) -> RecipientReport {
    RecipientReport {
        recipient,
        outcome,
        last_attempt: Some(NOW),
    }
}

fn build(envelope: &Envelope, message: &[u8], reports: &[RecipientReport]) -> Option<Dsn> {
    build_dsn(&DsnInput {
        queue_id: QueueId(0x0123_4567_89AB_CDEF),
        envelope,
        message,
        reporting_mta: "gw.example.org",
        now: NOW,
        message_id_seed: 42,
        reports,
        max_full_bytes: 2000,
    })
}

fn text(dsn: &Dsn) -> String {
    String::from_utf8_lossy(&dsn.message).into_owned()
}

/// The body of the part whose Content-Type starts with `content_type`, up to the next boundary.
fn part<'a>(dsn: &'a str, content_type: &str) -> Option<&'a str> {
    let start = dsn.find(&format!("Content-Type: {content_type}"))?;
    let body = start + dsn[start..].find("\r\n\r\n")? + 4;
    let end = body + dsn[body..].find("\r\n--=_dsn_")?;
    Some(&dsn[body..end])
}

fn notify(never: bool, success: bool, failure: bool, delay: bool) -> Option<Notify> {
    Some(Notify {
        never,
        success,
        failure,
        delay,
    })
}

#[test]
fn null_sender_never_gets_a_dsn() {
    let mut env = envelope(vec![rcpt("bob@other.example", None)], None);
    env.sender = String::new();
    assert_eq!(
        build(&env, MESSAGE, &[report(0, failed("550 5.1.1 no"))]),
        None
    );
}

#[test]
fn notify_table() {
    let default = None;
    let never = notify(true, false, false, false);
    let success = notify(false, true, false, false);
    let failure = notify(false, false, true, false);
    let delay = notify(false, false, false, true);
    let all = notify(false, true, true, true);
    // (NOTIFY, outcome, reported?)
    let rows = [
        (default, failed("550 5.1.1 no"), true),
        (default, delayed("451 4.7.1 later"), true),
        (default, delivered(), false),
        (never, failed("550 5.1.1 no"), false),
        (never, delayed("451 4.7.1 later"), false),
        (never, delivered(), false),
        (success, failed("550 5.1.1 no"), false),
        (success, delivered(), true),
        (failure, failed("550 5.1.1 no"), true),
        (failure, delayed("451 4.7.1 later"), false),
        (delay, delayed("451 4.7.1 later"), true),
        (delay, failed("550 5.1.1 no"), false),
        (all, delivered(), true),
        (all, failed("550 5.1.1 no"), true),
        (all, delayed("451 4.7.1 later"), true),
    ];
    for (n, outcome, want) in rows {
        let env = envelope(vec![rcpt("bob@other.example", n)], None);
        let got = build(&env, MESSAGE, &[report(0, outcome.clone())]);
        assert_eq!(got.is_some(), want, "NOTIFY {n:?}, {outcome:?}");
    }
}

#[test]
fn only_recipients_that_asked_are_listed() {
    let env = envelope(
        vec![
            rcpt("never@other.example", notify(true, false, false, false)),
            rcpt("plain@other.example", None),
            rcpt("happy@other.example", notify(false, true, false, false)),
        ],
        None,
    );
    let dsn = build(
        &env,
        MESSAGE,
        &[
            report(0, failed("550 5.1.1 no")),
            report(1, failed("550 5.1.1 no")),
            report(2, delivered()),
            // Out of range: skipped, not a panic.
            report(7, failed("550 5.1.1 no")),
        ],
    )
    .unwrap();
    let status = part(&text(&dsn), "message/delivery-status")
        .unwrap()
        .to_owned();
    assert!(!status.contains("never@"), "{status}");
    assert!(status.contains("Final-Recipient: rfc822; plain@other.example\r\nAction: failed\r\n"));
    assert!(
        status.contains("Final-Recipient: rfc822; happy@other.example\r\nAction: delivered\r\n")
    );
    assert_eq!(status.matches("Final-Recipient:").count(), 2);
}

#[test]
fn returned_content_table() {
    let big: Vec<u8> = [MESSAGE, "x ".repeat(1500).as_bytes(), b"\r\n"].concat();
    let bare_lf: Vec<u8> = [MESSAGE, b"bare\nline\r\n"].concat();
    let long_line: Vec<u8> = [MESSAGE, "y".repeat(1200).as_bytes(), b"\r\n"].concat();
    // (RET, outcome, message, returned type, text in the human part)
    type Row<'a> = (
        Option<DsnReturn>,
        ReportOutcome,
        &'a [u8],
        &'a str,
        Option<&'a str>,
    );
    let rows: Vec<Row<'_>> = vec![
        (
            None,
            failed("550 5.1.1 no"),
            MESSAGE,
            "text/rfc822-headers",
            None,
        ),
        (
            Some(DsnReturn::Headers),
            failed("550 5.1.1 no"),
            MESSAGE,
            "text/rfc822-headers",
            None,
        ),
        (
            Some(DsnReturn::Full),
            failed("550 5.1.1 no"),
            MESSAGE,
            "message/rfc822",
            None,
        ),
        (
            Some(DsnReturn::Full),
            failed("550 5.1.1 no"),
            &big,
            "text/rfc822-headers",
            Some("larger than 2000 bytes"),
        ),
        (
            Some(DsnReturn::Full),
            failed("550 5.1.1 no"),
            &bare_lf,
            "text/rfc822-headers",
            Some("cannot be returned intact"),
        ),
        (
            Some(DsnReturn::Full),
            failed("550 5.1.1 no"),
            &long_line,
            "text/rfc822-headers",
            Some("cannot be returned intact"),
        ),
        // RFC 3461 §4.3: FULL is for failures; a delay warning carries headers.
        (
            Some(DsnReturn::Full),
            delayed("451 4.7.1 later"),
            MESSAGE,
            "text/rfc822-headers",
            None,
        ),
    ];
    for (ret, outcome, message, want_type, want_note) in rows {
        let env = envelope(vec![rcpt("bob@other.example", None)], ret);
        let dsn = build(&env, message, &[report(0, outcome.clone())]).unwrap();
        let t = text(&dsn);
        let returned = part(&t, want_type)
            .unwrap_or_else(|| panic!("{ret:?} {outcome:?}: no {want_type} part in\n{t}"));
        if want_type == "message/rfc822" {
            assert!(returned.contains("the body."), "{returned}");
        } else {
            assert!(returned.starts_with("From: Alice"), "{returned}");
            assert!(
                returned.ends_with("Message-ID: <m1@example.org>\r\n"),
                "{returned:?}"
            );
            assert!(!returned.contains("the body."));
        }
        let human = part(&t, "text/plain").unwrap().replace("\r\n", " ");
        match want_note {
            Some(note) => assert!(human.contains(note), "{ret:?}: {human}"),
            None => assert!(!human.contains("only its headers"), "{human}"),
        }
    }
}

#[test]
fn headers_that_cannot_travel_are_not_returned() {
    let message = [
        b"X-Long: ".as_slice(),
        "z".repeat(1500).as_bytes(),
        b"\r\n\r\nbody\r\n",
    ]
    .concat();
    let env = envelope(vec![rcpt("bob@other.example", None)], None);
    let dsn = build(&env, &message, &[report(0, failed("550 5.1.1 no"))]).unwrap();
    let t = text(&dsn);
    assert!(part(&t, "text/rfc822-headers").is_none());
    assert!(t.contains("they are not included"));
    assert_lines_ok(&dsn.message);
}

#[test]
fn per_message_and_per_recipient_fields() {
    let mut env = envelope(
        vec![
            Recipient {
                address: "bob@other.example".into(),
                notify: None,
                orcpt: Some("rfc822;Bob+2BTag@Other.example".into()),
            },
            rcpt("carol@other.example", None),
            rcpt("dave@third.example", None),
            rcpt("erin@fourth.example", None),
        ],
        None,
    );
    env.dsn_envid = Some("QQ+3D314".into());
    let reports = [
        report(
            0,
            failed("550-5.1.1 The email account does not exist\r\n550 5.1.1 Try again"),
        ),
        report(1, delayed("421 service not available")),
        report(
            2,
            ReportOutcome::Failed(Diagnosis {
                local_reason: Some("no MX or address records for third.example".into()),
                status: Some(EnhancedStatus::new(5, 4, 4)),
                ..Diagnosis::default()
            }),
        ),
        RecipientReport {
            recipient: 3,
            outcome: ReportOutcome::Failed(Diagnosis {
                reply: Some(smtp("554 transaction failed")),
                ..Diagnosis::default()
            }),
            last_attempt: None,
        },
    ];
    let dsn = build(&env, MESSAGE, &reports).unwrap();
    let t = text(&dsn);
    let status = part(&t, "message/delivery-status").unwrap();
    let groups: Vec<&str> = status.trim_end().split("\r\n\r\n").collect();
    assert_eq!(groups.len(), 5, "{status}");
    assert_eq!(
        groups[0],
        "Reporting-MTA: dns; gw.example.org\r\nOriginal-Envelope-Id: QQ=314\r\nArrival-Date: Tue, 14 Nov 2023 22:13:20 +0000"
    );
    assert_eq!(
        groups[1],
        "Original-Recipient: rfc822; Bob+Tag@Other.example\r\n\
         Final-Recipient: rfc822; bob@other.example\r\n\
         Action: failed\r\n\
         Status: 5.1.1\r\n\
         Remote-MTA: dns; mx.other.example\r\n\
         Diagnostic-Code: smtp; 550-5.1.1 The email account does not exist 550 5.1.1\r\n Try again\r\n\
         Last-Attempt-Date: Tue, 14 Nov 2023 23:13:20 +0000"
    );
    assert_eq!(
        groups[2],
        "Final-Recipient: rfc822; carol@other.example\r\n\
         Action: delayed\r\n\
         Status: 4.0.0\r\n\
         Remote-MTA: dns; mx.other.example\r\n\
         Diagnostic-Code: smtp; 421 service not available\r\n\
         Last-Attempt-Date: Tue, 14 Nov 2023 23:13:20 +0000\r\n\
         Will-Retry-Until: Sun, 19 Nov 2023 22:13:20 +0000"
    );
    assert_eq!(
        groups[3],
        "Final-Recipient: rfc822; dave@third.example\r\n\
         Action: failed\r\n\
         Status: 5.4.4\r\n\
         Diagnostic-Code: X-Dimegate; no MX or address records for third.example\r\n\
         Last-Attempt-Date: Tue, 14 Nov 2023 23:13:20 +0000"
    );
    assert_eq!(
        groups[4],
        "Final-Recipient: rfc822; erin@fourth.example\r\n\
         Action: failed\r\n\
         Status: 5.0.0\r\n\
         Diagnostic-Code: smtp; 554 transaction failed"
    );
    // Top-level headers.
    assert!(t.starts_with("From: Mail Delivery System <MAILER-DAEMON@gw.example.org>\r\nTo: <alice@example.org>\r\nSubject: Undelivered Mail Returned to Sender\r\nDate: Tue, 14 Nov 2023 23:13:20 +0000\r\nMessage-ID: <000000000000002a.0123456789ABCDEF@gw.example.org>\r\nAuto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n"), "{t}");
    assert!(t.contains("Content-Type: multipart/report; report-type=delivery-status;\r\n boundary=\"=_dsn_000000000000002a_0123456789ABCDEF_0=\"\r\n"), "{t}");
    // The human part names each recipient and what the remote said.
    let human = part(&t, "text/plain").unwrap();
    assert!(
        human.contains("<bob@other.example>: failed\r\n    mx.other.example said: 550-5.1.1"),
        "{human}"
    );
    assert!(
        human.contains("keeps trying until Sun, 19 Nov 2023 22:13:20 +0000"),
        "{human}"
    );
    assert!(human.contains("0123456789ABCDEF"));
    assert_lines_ok(&dsn.message);
}

#[test]
fn status_default_and_class_table() {
    let d = |reply: Option<&str>, status: Option<EnhancedStatus>| Diagnosis {
        reply: reply.map(smtp),
        status,
        ..Diagnosis::default()
    };
    let until = NOW;
    // (outcome, expected Status)
    let rows = [
        (ReportOutcome::Failed(d(None, None)), "5.0.0"),
        (
            ReportOutcome::Failed(d(Some("550 no such user"), None)),
            "5.0.0",
        ),
        (
            ReportOutcome::Failed(d(Some("550 5.1.1 no"), None)),
            "5.1.1",
        ),
        (
            ReportOutcome::Failed(d(Some("550 5.1.1 no"), Some(EnhancedStatus::new(5, 7, 1)))),
            "5.7.1",
        ),
        // Expired after temporary errors: the 4.x.x code stays.
        (
            ReportOutcome::Failed(d(Some("451 4.7.1 greylisted"), None)),
            "4.7.1",
        ),
        (
            ReportOutcome::Failed(d(None, Some(EnhancedStatus::EXPIRED))),
            "4.4.7",
        ),
        // A success code cannot describe a failure.
        (
            ReportOutcome::Failed(d(Some("250 2.0.0 ok"), None)),
            "5.0.0",
        ),
        (
            ReportOutcome::Delayed {
                diagnosis: d(None, None),
                will_retry_until: until,
            },
            "4.0.0",
        ),
        (
            ReportOutcome::Delayed {
                diagnosis: d(Some("452 4.2.2 mailbox full"), None),
                will_retry_until: until,
            },
            "4.2.2",
        ),
        (
            ReportOutcome::Delayed {
                diagnosis: d(Some("550 5.1.1 no"), None),
                will_retry_until: until,
            },
            "4.0.0",
        ),
        (ReportOutcome::Delivered(d(None, None)), "2.0.0"),
        (
            ReportOutcome::Delivered(d(Some("250 2.6.0 queued"), None)),
            "2.6.0",
        ),
    ];
    for (outcome, want) in rows {
        assert_eq!(outcome.status().to_string(), want, "{outcome:?}");
    }
}

#[test]
fn enhanced_status_parse_table() {
    let rows = [
        ("5.1.1", Some(EnhancedStatus::new(5, 1, 1))),
        ("4.4.7", Some(EnhancedStatus::new(4, 4, 7))),
        ("2.0.0", Some(EnhancedStatus::new(2, 0, 0))),
        ("5.123.999", Some(EnhancedStatus::new(5, 123, 999))),
        ("3.0.0", None),
        ("5.1", None),
        ("5.1.1.1", None),
        ("5.1234.1", None),
        ("5..1", None),
        ("5.a.1", None),
        ("", None),
    ];
    for (s, want) in rows {
        assert_eq!(EnhancedStatus::parse(s), want, "{s}");
    }
    let replies = [
        ("550 5.1.1 User unknown", Some(EnhancedStatus::new(5, 1, 1))),
        (
            "451-4.7.1 Greylisted\r\n451 4.7.1 come back",
            Some(EnhancedStatus::new(4, 7, 1)),
        ),
        ("550 User unknown", None),
        ("550", None),
        ("", None),
    ];
    for (reply, want) in replies {
        assert_eq!(EnhancedStatus::from_reply(reply), want, "{reply}");
    }
}

#[test]
fn the_dsn_envelope_is_null_sender_to_original_sender() {
    let env = envelope(vec![rcpt("bob@other.example", None)], None);
    let dsn = build(&env, MESSAGE, &[report(0, failed("550 5.1.1 no"))]).unwrap();
    assert_eq!(dsn.recipient, "alice@example.org");
    assert!(!dsn.body_8bit);
    assert!(!dsn.smtputf8);
    let e = dsn.envelope("gw.example.org", NOW);
    assert_eq!(e.sender, "");
    assert_eq!(e.recipients.len(), 1);
    assert_eq!(e.recipients[0].address, "alice@example.org");
    assert_eq!(e.arrival_unix, NOW.0);
    assert!(!e.require_tls);
    // RFC 8689 §5: the report on a REQUIRETLS message goes back under REQUIRETLS.
    let mut env = env;
    env.require_tls = true;
    let dsn = build(&env, MESSAGE, &[report(0, failed("550 5.1.1 no"))]).unwrap();
    assert!(dsn.envelope("gw.example.org", NOW).require_tls);
}

#[test]
fn long_diagnostics_are_folded_under_998() {
    let spaced = format!("550 5.7.1 {}", "word ".repeat(600));
    let unbroken = format!("550 5.7.1 {}", "x".repeat(3000));
    for reply in [spaced, unbroken] {
        let env = envelope(vec![rcpt("bob@other.example", None)], None);
        let dsn = build(&env, MESSAGE, &[report(0, failed(&reply))]).unwrap();
        assert_lines_ok(&dsn.message);
        let t = text(&dsn);
        // Unfolding gives the reply back (hard breaks of one long word add a space).
        let status = part(&t, "message/delivery-status")
            .unwrap()
            .replace("\r\n ", " ");
        assert!(
            status.contains("Diagnostic-Code: smtp; 550 5.7.1 "),
            "{status}"
        );
    }
}

#[test]
fn utf8_addresses_use_the_rfc6533_form_and_the_report_stays_ascii() {
    let mut env = envelope(vec![rcpt("δοκιμή@παράδειγμα.example", None)], None);
    env.sender = "άλφα@example.org".into();
    env.smtputf8 = true;
    let dsn = build(&env, MESSAGE, &[report(0, failed("550 5.1.1 no"))]).unwrap();
    let t = text(&dsn);
    let status = part(&t, "message/delivery-status")
        .unwrap()
        .replace("\r\n ", " ");
    assert!(status.is_ascii(), "{status}");
    assert!(
        status
            .contains("Final-Recipient: utf-8; \\x{3B4}\\x{3BF}\\x{3BA}\\x{3B9}\\x{3BC}\\x{3AE}@"),
        "{status}"
    );
    let human = part(&t, "text/plain; charset=utf-8").unwrap();
    assert!(
        human.contains("<δοκιμή@παράδειγμα.example>: failed"),
        "{human}"
    );
    assert!(dsn.body_8bit);
    assert!(dsn.smtputf8);
    assert_eq!(dsn.recipient, "άλφα@example.org");
    assert_lines_ok(&dsn.message);
}

#[test]
fn utf8_addr_xtext_escapes_specials() {
    assert_eq!(
        utf8_addr_xtext("a+b=c\\d@é.x"),
        "a\\x{2B}b\\x{3D}c\\x{5C}d@\\x{E9}.x"
    );
    assert_eq!(typed_address("a+b@x"), "rfc822; a+b@x");
}

#[test]
fn xtext_and_orcpt_table() {
    let rows = [
        ("rfc822;bob@example.org", "rfc822; bob@example.org"),
        ("RFC822;a+2Bb@example.org", "RFC822; a+b@example.org"),
        // A malformed escape is kept as given.
        ("rfc822;a+zzb@example.org", "rfc822; a+zzb@example.org"),
        // Decodes to a control character: kept encoded.
        ("rfc822;a+0Ab@example.org", "rfc822; a+0Ab@example.org"),
        ("utf-8;\\x{E9}@example.org", "utf-8; \\x{E9}@example.org"),
        ("no-semicolon", "rfc822; no-semicolon"),
    ];
    for (orcpt, want) in rows {
        assert_eq!(orcpt_text(orcpt), want, "{orcpt}");
    }
    assert_eq!(envid_text("abc+2B+3D"), "abc+=");
    assert_eq!(envid_text("bad+0"), "bad+0");
}

#[test]
fn the_boundary_avoids_content_that_contains_it() {
    let prefix = "--=_dsn_000000000000002a_0123456789ABCDEF_";
    // (boundaries planted in the body, the counter chosen)
    let rows: [(&[&str], u64); 4] = [
        (&[], 0),
        (&["0="], 1),
        (&["0=", "1=", "3="], 2),
        // Not exact matches: `_0` without `=`, `_01=` and `_10=` do not clash with `_0=`/`_1=`.
        (&["0", "01=", "10="], 0),
    ];
    for (planted, want) in rows {
        let mut message = b"Subject: trick\r\n\r\n".to_vec();
        for p in planted {
            message.extend_from_slice(format!("{prefix}{p}\r\n").as_bytes());
        }
        let env = envelope(vec![rcpt("bob@other.example", None)], Some(DsnReturn::Full));
        let dsn = build(&env, &message, &[report(0, failed("550 5.1.1 no"))]).unwrap();
        let t = text(&dsn);
        let boundary = format!("=_dsn_000000000000002a_0123456789ABCDEF_{want}=");
        assert!(
            t.contains(&format!("boundary=\"{boundary}\"")),
            "{planted:?}\n{t}"
        );
        assert_eq!(
            t.matches(&format!("--{boundary}")).count(),
            4,
            "{planted:?}"
        );
    }
}

#[test]
fn subject_follows_the_most_serious_outcome() {
    let env = envelope(
        vec![
            rcpt("a@other.example", notify(false, true, true, true)),
            rcpt("b@other.example", notify(false, true, true, true)),
        ],
        None,
    );
    let rows = [
        (
            vec![report(0, delivered())],
            "Successful Mail Delivery Report",
        ),
        (
            vec![report(0, delivered()), report(1, delayed("451 later"))],
            "Delayed Mail (still being retried)",
        ),
        (
            vec![report(0, delayed("451 later")), report(1, failed("550 no"))],
            "Undelivered Mail Returned to Sender",
        ),
    ];
    for (reports, subject) in rows {
        let dsn = build(&env, MESSAGE, &reports).unwrap();
        assert!(
            text(&dsn).contains(&format!("\r\nSubject: {subject}\r\n")),
            "{subject}"
        );
    }
}

#[test]
fn header_block_table() {
    let rows: [(&[u8], &[u8]); 4] = [
        (b"A: 1\r\nB: 2\r\n\r\nbody\r\n", b"A: 1\r\nB: 2\r\n"),
        (b"A: 1\r\n", b"A: 1\r\n"),
        (b"\r\nbody only\r\n", b""),
        (b"", b""),
    ];
    for (message, want) in rows {
        assert_eq!(header_block(message), want);
    }
}

/// Every line ends in CRLF and is at most 998 bytes.
fn assert_lines_ok(message: &[u8]) {
    assert!(message.ends_with(b"\r\n"));
    for (i, line) in message.split(|&b| b == b'\n').enumerate() {
        if i + 1 == message.split(|&b| b == b'\n').count() {
            assert!(line.is_empty());
            continue;
        }
        assert!(line.ends_with(b"\r"), "line {i} without CR");
        assert!(
            line.len() - 1 <= MAX_LINE,
            "line {i} is {} bytes",
            line.len() - 1
        );
        assert!(
            !line[..line.len() - 1].contains(&b'\r'),
            "bare CR in line {i}"
        );
    }
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn outcome() -> impl Strategy<Value = ReportOutcome> {
        let diagnosis = (
            proptest::option::of(".{0,300}"),
            proptest::option::of(".{0,1500}"),
            proptest::option::of(".{0,300}"),
        )
            .prop_map(|(remote_mta, reply, local_reason)| Diagnosis {
                remote_mta,
                reply: reply.map(smtp),
                local_reason,
                status: None,
            });
        (diagnosis, 0u8..3).prop_map(|(d, kind)| match kind {
            0 => ReportOutcome::Failed(d),
            1 => ReportOutcome::Delayed {
                diagnosis: d,
                will_retry_until: NOW,
            },
            _ => ReportOutcome::Delivered(d),
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever the message, addresses and remote replies, the DSN is well-formed mail:
        /// CRLF only, lines within 998 bytes, an ASCII delivery report, no panic.
        #[test]
        fn any_input_gives_well_formed_mail(
            message in proptest::collection::vec(any::<u8>(), 0..3000),
            sender in ".{1,80}",
            address in ".{1,80}",
            orcpt in proptest::option::of(".{0,80}"),
            envid in proptest::option::of(".{0,80}"),
            ret in proptest::option::of(prop_oneof![Just(DsnReturn::Full), Just(DsnReturn::Headers)]),
            outcome in outcome(),
            mta in ".{0,40}",
        ) {
            let mut env = envelope(
                vec![Recipient {
                    address,
                    notify: notify(false, true, true, true),
                    orcpt,
                }],
                ret,
            );
            env.sender = sender;
            env.dsn_envid = envid;
            let reports = [report(0, outcome)];
            let dsn = build_dsn(&DsnInput {
                queue_id: QueueId(1),
                envelope: &env,
                message: &message,
                reporting_mta: &mta,
                now: NOW,
                message_id_seed: 9,
                reports: &reports,
                max_full_bytes: 2000,
            })
            .expect("a DSN is owed");
            assert_lines_ok(&dsn.message);
            let t = text(&dsn);
            let status = part(&t, "message/delivery-status").expect("a report part");
            prop_assert!(status.is_ascii());
        }
    }
}

/// A next hop without DSN took the message: NOTIFY=SUCCESS gets `Action: relayed` (RFC 3461
/// §5.2.3), a 2.x.x status and a human part that does not claim delivery into the mailbox.
#[test]
fn relayed_is_reported_as_relayed_only_on_notify_success() {
    let relayed = ReportOutcome::Relayed(Diagnosis {
        remote_mta: Some("mx.other.example".into()),
        reply: Some(smtp("250 2.0.0 Ok: queued as 1234")),
        ..Diagnosis::default()
    });
    for (n, want) in [
        (None, false),
        (notify(true, false, false, false), false),
        (notify(false, false, true, true), false),
        (notify(false, true, false, false), true),
    ] {
        let env = envelope(vec![rcpt("bob@other.example", n)], None);
        let got = build(&env, MESSAGE, &[report(0, relayed.clone())]);
        assert_eq!(got.is_some(), want, "NOTIFY {n:?}");
    }
    let env = envelope(
        vec![rcpt("bob@other.example", notify(false, true, false, false))],
        None,
    );
    let dsn = text(&build(&env, MESSAGE, &[report(0, relayed.clone())]).unwrap());
    let status = part(&dsn, "message/delivery-status").unwrap();
    assert!(
        status.contains(
            "Final-Recipient: rfc822; bob@other.example\r\nAction: relayed\r\nStatus: 2.0.0\r\n"
        ),
        "{status}"
    );
    let human = part(&dsn, "text/plain").unwrap();
    assert!(human.contains("marked \"relayed\""), "{human}");
    assert!(!human.contains("marked \"delivered\""), "{human}");
    assert_eq!(relayed.status().to_string(), "2.0.0");
}
