//! Replay tests: each conversation runs with the server's bytes whole and in 1-, 2-, 3-, 7- and
//! 64-byte pieces, and every split must give the same outputs; then the outputs are checked.

use super::*;
use crate::envelope::Notify;
use std::sync::OnceLock;

fn t0() -> Instant {
    static T0: OnceLock<Instant> = OnceLock::new();
    *T0.get_or_init(Instant::now)
}

const TIMEOUTS: Timeouts = Timeouts {
    greeting: Duration::from_secs(300),
    command: Duration::from_secs(60),
    data: Duration::from_secs(600),
};

fn config(lmtp: bool, tls: TlsPolicy) -> SessionConfig {
    SessionConfig {
        peer: Peer {
            host: "mx.test".into(),
            mta: "mx.test[192.0.2.1]:25".into(),
        },
        helo_name: "gw.test".into(),
        lmtp,
        tls,
        try_tls: true,
        relay: true,
        timeouts: TIMEOUTS,
    }
}

fn smtp() -> SessionConfig {
    config(false, TlsPolicy::Disabled)
}

fn envelope() -> Envelope {
    Envelope::for_test("a@example.org", &["b@example.net", "c@example.net"], 0)
}

fn rcpt(address: &str) -> Recipient {
    Recipient {
        address: address.into(),
        notify: None,
        orcpt: None,
    }
}

const GREETING: &[u8] = b"220 mx.test ESMTP\r\n";
const EHLO_PIPELINING: &[u8] =
    b"250-mx.test\r\n250-PIPELINING\r\n250-SIZE 100000\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n";
const EHLO_PLAIN: &[u8] = b"250-mx.test\r\n250 SIZE 100000\r\n";
const EHLO_STARTTLS: &[u8] = b"250-mx.test\r\n250-PIPELINING\r\n250 STARTTLS\r\n";
const EHLO_DSN: &[u8] = b"250-mx.test\r\n250-PIPELINING\r\n250 DSN\r\n";

/// One step of a conversation.
#[derive(Clone)]
#[allow(clippy::large_enum_variant)] // a test script: a few steps, built once
enum Step {
    Server(&'static [u8]),
    Start(Vec<Recipient>),
    StartWith(Envelope, Vec<Recipient>, usize),
    TlsOk,
    TlsFailed,
    Closed,
    /// Time since the start.
    Timeout(Duration),
    Reset,
    Quit,
}

use Step::*;

fn start(addresses: &[&str]) -> Step {
    Start(addresses.iter().map(|a| rcpt(a)).collect())
}

fn run(config: &SessionConfig, steps: &[Step], split: usize) -> Vec<Output> {
    let mut session = ClientSession::new(config.clone(), t0());
    let mut outputs = Vec::new();
    for step in steps {
        match step {
            Server(bytes) => {
                let size = if split == 0 {
                    bytes.len().max(1)
                } else {
                    split
                };
                for chunk in bytes.chunks(size) {
                    session.handle_input(chunk, t0());
                    assert!(
                        session.buffered_len()
                            <= super::super::reply::MAX_LINE + super::super::reply::MAX_REPLY
                    );
                }
            }
            Start(rcpts) => {
                let refs: Vec<&Recipient> = rcpts.iter().collect();
                session
                    .start_transaction(&envelope(), &refs, 10, t0())
                    .expect("ready");
            }
            StartWith(envelope, rcpts, len) => {
                let refs: Vec<&Recipient> = rcpts.iter().collect();
                session
                    .start_transaction(envelope, &refs, *len, t0())
                    .expect("ready");
            }
            TlsOk => session.handle_tls_established(t0()),
            TlsFailed => session.handle_tls_failed("bad certificate"),
            Closed => session.handle_closed(None),
            Timeout(after) => session.handle_timeout(t0() + *after),
            Reset => session.reset(t0()).expect("ready"),
            Quit => session.quit(t0()),
        }
        while let Some(output) = session.poll_output() {
            outputs.push(output);
        }
    }
    outputs
}

/// The outputs, the same in every split.
fn replay(config: &SessionConfig, steps: &[Step]) -> Vec<Output> {
    let whole = run(config, steps, 0);
    for split in [1, 2, 3, 7, 64] {
        assert_eq!(run(config, steps, split), whole, "{split}-byte pieces");
    }
    whole
}

/// Every byte written, as text, `<message>` where the message goes.
fn wire(outputs: &[Output]) -> String {
    let mut text = String::new();
    for output in outputs {
        match output {
            Output::Send(bytes) => text.push_str(&String::from_utf8_lossy(bytes)),
            Output::SendMessage => text.push_str("<message>"),
            _ => {}
        }
    }
    text
}

fn writes(outputs: &[Output]) -> Vec<String> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Send(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
            Output::SendMessage => Some("<message>".into()),
            _ => None,
        })
        .collect()
}

fn finished(outputs: &[Output]) -> &TransactionResult {
    outputs
        .iter()
        .rev()
        .find_map(|o| match o {
            Output::Finished(result) => Some(result),
            _ => None,
        })
        .expect("a transaction result")
}

fn done(outputs: &[Output]) -> (&[Outcome], bool) {
    match finished(outputs) {
        TransactionResult::Done { outcomes, reusable } => (outcomes, *reusable),
        other => panic!("expected Done, got {other:?}"),
    }
}

fn hop_failed(outputs: &[Output]) -> (&HopFailure, bool) {
    match finished(outputs) {
        TransactionResult::HopFailed { failure, reusable } => (failure, *reusable),
        other => panic!("expected HopFailed, got {other:?}"),
    }
}

fn open_failure(outputs: &[Output]) -> &HopFailure {
    outputs
        .iter()
        .find_map(|o| match o {
            Output::Failed(failure) => Some(failure),
            _ => None,
        })
        .expect("an open failure")
}

fn code(outcome: &Outcome) -> Option<u16> {
    match outcome {
        Outcome::Delivered { reply, .. }
        | Outcome::Deferred {
            reason: Reason::Reply(reply),
            ..
        }
        | Outcome::Failed {
            reason: Reason::Reply(reply),
            ..
        } => Some(reply.code),
        _ => None,
    }
}

fn closed(outputs: &[Output]) -> bool {
    outputs.last() == Some(&Output::Close)
}

fn ready_steps(ehlo: &'static [u8]) -> Vec<Step> {
    vec![Server(GREETING), Server(ehlo)]
}

fn with(mut steps: Vec<Step>, more: &[Step]) -> Vec<Step> {
    steps.extend_from_slice(more);
    steps
}

#[test]
fn pipelined_transaction_groups_mail_and_rcpt_then_data_after_their_replies() {
    let out = replay(
        &smtp(),
        &with(
            ready_steps(EHLO_PIPELINING),
            &[
                start(&["b@example.net", "x@example.net", "c@example.net"]),
                Server(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550-5.1.1 no such\r\n550 5.1.1 user\r\n250 2.1.5 Ok\r\n"),
                Server(b"354 go ahead\r\n"),
                Server(b"250 2.0.0 Ok: queued as 1234\r\n"),
            ],
        ),
    );
    assert_eq!(
        writes(&out),
        [
            "EHLO gw.test\r\n",
            "MAIL FROM:<a@example.org> SIZE=10\r\nRCPT TO:<b@example.net>\r\n\
             RCPT TO:<x@example.net>\r\nRCPT TO:<c@example.net>\r\n",
            "DATA\r\n",
            "<message>",
        ]
    );
    assert!(out.contains(&Output::Ready));
    let (outcomes, reusable) = done(&out);
    assert!(reusable);
    assert!(outcomes[0].is_delivered() && outcomes[2].is_delivered());
    assert_eq!(outcomes[0].handoff(), Some(Handoff::Relayed));
    assert!(outcomes[1].is_permanent());
    assert_eq!(outcomes[1].status(), Some(EnhancedStatus::new(5, 1, 1)));
    assert_eq!(
        outcomes[1].reply_line().as_deref(),
        Some("550 5.1.1 no such user")
    );
    assert_eq!(outcomes[0].status(), Some(EnhancedStatus::new(2, 0, 0)));
    assert!(!closed(&out));
}

#[test]
fn without_pipelining_one_command_at_a_time() {
    let out = replay(
        &smtp(),
        &with(
            ready_steps(EHLO_PLAIN),
            &[
                start(&["b@example.net", "c@example.net"]),
                Server(b"250 ok\r\n"),
                Server(b"250 ok\r\n"),
                Server(b"451 4.3.0 later\r\n"),
                Server(b"354 go\r\n"),
                Server(b"250 ok\r\n"),
            ],
        ),
    );
    assert_eq!(
        writes(&out),
        [
            "EHLO gw.test\r\n",
            "MAIL FROM:<a@example.org> SIZE=10\r\n",
            "RCPT TO:<b@example.net>\r\n",
            "RCPT TO:<c@example.net>\r\n",
            "DATA\r\n",
            "<message>",
        ]
    );
    let (outcomes, _) = done(&out);
    assert!(outcomes[0].is_delivered());
    assert!(matches!(outcomes[1], Outcome::Deferred { .. }));
    assert_eq!(outcomes[1].status(), Some(EnhancedStatus::new(4, 3, 0)));
}

#[test]
fn all_recipients_refused_sends_no_data_and_stays_reusable() {
    for ehlo in [EHLO_PIPELINING, EHLO_PLAIN] {
        let out = replay(
            &smtp(),
            &with(
                ready_steps(ehlo),
                &[
                    start(&["b@example.net", "c@example.net"]),
                    Server(b"250 ok\r\n"),
                    Server(b"550 5.1.1 no\r\n"),
                    Server(b"450 4.2.0 busy\r\n"),
                ],
            ),
        );
        assert!(!wire(&out).contains("DATA"), "{}", wire(&out));
        let (outcomes, reusable) = done(&out);
        assert!(reusable);
        assert!(outcomes[0].is_permanent());
        assert!(matches!(outcomes[1], Outcome::Deferred { .. }));
    }
}

#[test]
fn ehlo_refused_falls_back_to_helo_without_extensions() {
    let mut env = envelope();
    env.dsn_ret = Some(crate::envelope::DsnReturn::Full);
    let out = replay(
        &smtp(),
        &[
            Server(GREETING),
            Server(b"502 5.5.2 what?\r\n"),
            Server(b"250 mx.test\r\n"),
            StartWith(env, vec![rcpt("b@example.net")], 10),
        ],
    );
    assert_eq!(
        writes(&out),
        [
            "EHLO gw.test\r\n",
            "HELO gw.test\r\n",
            // No SIZE, no RET: nothing is assumed after HELO; no pipelining either.
            "MAIL FROM:<a@example.org>\r\n",
        ]
    );
}

#[test]
fn ehlo_and_helo_refusals_and_554_are_non_permanent_open_failures() {
    for (steps, helo_sent, stage) in [
        (
            vec![Server(GREETING), Server(b"554 5.7.1 go away\r\n")],
            false,
            Stage::Hello,
        ),
        (
            vec![
                Server(GREETING),
                Server(b"500 no\r\n"),
                Server(b"550 5.7.1 no HELO either\r\n"),
            ],
            true,
            Stage::Hello,
        ),
        (
            vec![Server(b"554 5.3.2 not today\r\n")],
            false,
            Stage::Greeting,
        ),
    ] {
        let out = replay(&smtp(), &with(steps, &[Server(b"221 bye\r\n")]));
        let failure = open_failure(&out);
        assert_eq!(failure.stage, stage);
        assert!(!failure.permanent, "a 5xx before MAIL FROM defers");
        assert_eq!(wire(&out).contains("HELO "), helo_sent);
        assert!(wire(&out).ends_with("QUIT\r\n"), "{}", wire(&out));
        assert!(closed(&out), "closed after the QUIT reply");
    }
}

#[test]
fn a_421_greeting_closes_without_quit() {
    let out = replay(&smtp(), &[Server(b"421 4.3.2 busy\r\n")]);
    let failure = open_failure(&out);
    assert_eq!(
        (failure.stage, failure.status),
        (Stage::Greeting, EnhancedStatus::new(4, 3, 2))
    );
    assert_eq!(wire(&out), "");
    assert!(closed(&out));
}

#[test]
fn lmtp_reads_one_end_of_data_reply_per_accepted_recipient() {
    let out = replay(
        &config(true, TlsPolicy::Disabled),
        &[
            Server(GREETING),
            Server(EHLO_PIPELINING),
            start(&["b@example.net", "x@example.net", "c@example.net"]),
            Server(b"250 ok\r\n250 ok\r\n550 5.1.1 no\r\n250 ok\r\n354 go\r\n"),
            Server(b"250 2.0.0 b delivered\r\n"),
            Server(b"452 4.2.2 c over quota\r\n"),
        ],
    );
    assert!(wire(&out).starts_with("LHLO gw.test\r\n"));
    let (outcomes, reusable) = done(&out);
    assert!(reusable);
    assert_eq!(outcomes[0].handoff(), Some(Handoff::Delivered));
    assert!(outcomes[1].is_permanent());
    assert_eq!(outcomes[2].status(), Some(EnhancedStatus::new(4, 2, 2)));
    assert!(matches!(outcomes[2], Outcome::Deferred { .. }));
}

#[test]
fn lmtp_has_no_helo_fallback() {
    let out = replay(
        &config(true, TlsPolicy::Disabled),
        &[Server(GREETING), Server(b"500 what\r\n")],
    );
    assert_eq!(open_failure(&out).stage, Stage::Hello);
    assert!(!wire(&out).contains("HELO"));
}

#[test]
fn lmtp_session_lost_after_some_replies_keeps_them_and_defers_the_rest() {
    let out = replay(
        &config(true, TlsPolicy::Disabled),
        &[
            Server(GREETING),
            Server(EHLO_PIPELINING),
            start(&["b@example.net", "c@example.net"]),
            Server(b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n250 ok b\r\n"),
            Closed,
        ],
    );
    let (outcomes, reusable) = done(&out);
    assert!(!reusable);
    assert!(outcomes[0].is_delivered());
    assert!(
        outcomes[1]
            .to_string()
            .contains("may or may not have been delivered")
    );
    assert!(closed(&out));
}

#[test]
fn starttls_discards_injected_bytes_and_asks_ehlo_again() {
    for tls in [TlsPolicy::Opportunistic, TlsPolicy::Required] {
        let out = replay(
            &config(false, tls),
            &[
                Server(GREETING),
                Server(EHLO_STARTTLS),
                // A man in the middle appends a reply to the 220: it must not count.
                Server(b"220 2.0.0 go ahead\r\n250 injected\r\n"),
                Server(b"250 still before the handshake\r\n"),
                TlsOk,
                Server(b"250-mx.test\r\n250 SIZE 5\r\n"),
            ],
        );
        assert_eq!(
            writes(&out),
            ["EHLO gw.test\r\n", "STARTTLS\r\n", "EHLO gw.test\r\n"]
        );
        let tls_at = out.iter().position(|o| *o == Output::StartTls).unwrap();
        let ready_at = out.iter().position(|o| *o == Output::Ready).unwrap();
        assert!(tls_at < ready_at, "{tls:?}");
    }
}

#[test]
fn capabilities_after_tls_replace_those_before() {
    let mut session = ClientSession::new(config(false, TlsPolicy::Opportunistic), t0());
    session.handle_input(GREETING, t0());
    session.handle_input(EHLO_STARTTLS, t0());
    assert!(session.capabilities().pipelining);
    session.handle_input(b"220 go\r\n", t0());
    session.handle_tls_established(t0());
    session.handle_input(b"250-mx.test\r\n250 SIZE 5\r\n", t0());
    let caps = session.capabilities();
    assert!(!caps.pipelining && !caps.starttls && caps.size == 5);
}

#[test]
fn starttls_policies_table() {
    for (tls, try_tls, ehlo, reply, expect_starttls, failure) in [
        // Offered and wanted.
        (
            TlsPolicy::Opportunistic,
            true,
            EHLO_STARTTLS,
            None,
            true,
            None,
        ),
        // The plain-text retry does not ask again.
        (
            TlsPolicy::Opportunistic,
            false,
            EHLO_STARTTLS,
            None,
            false,
            None,
        ),
        (TlsPolicy::Disabled, true, EHLO_STARTTLS, None, false, None),
        (
            TlsPolicy::Opportunistic,
            true,
            EHLO_PLAIN,
            None,
            false,
            None,
        ),
        // Required and not offered: a typed failure before any mail command.
        (
            TlsPolicy::Required,
            true,
            EHLO_PLAIN,
            None,
            false,
            Some((EnhancedStatus::new(4, 7, 4), false)),
        ),
        // Refused: opportunistic may retry in plain text, required may not.
        (
            TlsPolicy::Opportunistic,
            true,
            EHLO_STARTTLS,
            Some(&b"454 4.7.0 TLS not available\r\n"[..]),
            true,
            Some((EnhancedStatus::new(4, 7, 0), true)),
        ),
        (
            TlsPolicy::Required,
            true,
            EHLO_STARTTLS,
            Some(&b"454 4.7.0 TLS not available\r\n"[..]),
            true,
            Some((EnhancedStatus::new(4, 7, 0), false)),
        ),
    ] {
        let mut cfg = config(false, tls);
        cfg.try_tls = try_tls;
        let mut steps = vec![Server(GREETING), Server(ehlo)];
        if let Some(reply) = reply {
            steps.push(Server(reply));
        }
        let out = replay(&cfg, &steps);
        let case = format!(
            "{tls:?} try={try_tls} {:?}",
            reply.map(String::from_utf8_lossy)
        );
        assert_eq!(wire(&out).contains("STARTTLS"), expect_starttls, "{case}");
        match failure {
            None => {
                if expect_starttls {
                    assert!(!out.contains(&Output::Ready), "{case}");
                } else {
                    assert!(out.contains(&Output::Ready), "{case}");
                }
            }
            Some((status, retry)) => {
                let f = open_failure(&out);
                assert_eq!(f.stage, Stage::StartTls, "{case}");
                assert_eq!(f.status, status, "{case}");
                assert_eq!(f.retry_without_tls, retry, "{case}");
                assert!(!f.permanent, "{case}");
                assert!(wire(&out).ends_with("QUIT\r\n"), "{case}");
                assert!(!out.contains(&Output::Ready), "{case}");
            }
        }
    }
}

#[test]
fn a_failed_handshake_is_a_starttls_failure() {
    for (tls, retry) in [
        (TlsPolicy::Opportunistic, true),
        (TlsPolicy::Required, false),
    ] {
        let out = replay(
            &config(false, tls),
            &[
                Server(GREETING),
                Server(EHLO_STARTTLS),
                Server(b"220 go\r\n"),
                TlsFailed,
            ],
        );
        let failure = open_failure(&out);
        assert_eq!(failure.stage, Stage::StartTls);
        assert_eq!(failure.status, EnhancedStatus::new(4, 7, 5));
        assert_eq!(failure.retry_without_tls, retry);
        assert!(failure.reason.to_string().contains("bad certificate"));
        assert!(closed(&out));
    }
}

#[test]
fn refused_mail_from_is_a_hop_failure_after_draining_the_pipeline() {
    let out = replay(
        &smtp(),
        &with(
            ready_steps(EHLO_PIPELINING),
            &[
                start(&["b@example.net", "c@example.net"]),
                Server(b"550 5.7.1 sender refused\r\n503 5.5.1 need MAIL\r\n"),
                Server(b"503 5.5.1 need MAIL\r\n"),
            ],
        ),
    );
    let (failure, reusable) = hop_failed(&out);
    assert!(reusable);
    assert!(failure.permanent, "5xx from MAIL FROM on is permanent");
    assert_eq!(failure.stage, Stage::MailFrom);
    assert_eq!(failure.status, EnhancedStatus::new(5, 7, 1));
    assert!(!wire(&out).contains("DATA"));
    // The connection is back in step: a RSET works.
    let mut steps = with(
        ready_steps(EHLO_PIPELINING),
        &[
            start(&["b@example.net"]),
            Server(b"451 4.3.0 later\r\n503 5.5.1 need MAIL\r\n"),
            Reset,
            Server(b"250 2.0.0 ok\r\n"),
        ],
    );
    let out = replay(&smtp(), &steps);
    assert!(!hop_failed(&out).0.permanent);
    assert_eq!(out.last(), Some(&Output::Ready));
    assert!(wire(&out).ends_with("RSET\r\n"));
    // A 421 to MAIL FROM ends the session at once.
    steps = with(
        ready_steps(EHLO_PIPELINING),
        &[start(&["b@example.net"]), Server(b"421 4.3.2 closing\r\n")],
    );
    let out = replay(&smtp(), &steps);
    let (failure, reusable) = hop_failed(&out);
    assert!(!reusable && !failure.permanent);
    assert!(closed(&out));
}

#[test]
fn a_421_or_lost_session_before_the_message_fails_the_hop_unless_someone_was_refused() {
    for ehlo in [EHLO_PIPELINING, EHLO_PLAIN] {
        // Nobody refused: the hop failed as a whole (the next MX may take everybody).
        let out = replay(
            &smtp(),
            &with(
                ready_steps(ehlo),
                &[
                    start(&["b@example.net", "c@example.net"]),
                    Server(b"250 ok\r\n250 ok\r\n"),
                    Server(b"421 4.4.2 bye\r\n"),
                ],
            ),
        );
        let (failure, reusable) = hop_failed(&out);
        assert_eq!((failure.stage, reusable), (Stage::RcptTo, false));
        assert!(closed(&out));
        // One refused: the refusal stands, the other is deferred with the 421.
        let out = replay(
            &smtp(),
            &with(
                ready_steps(ehlo),
                &[
                    start(&["b@example.net", "c@example.net"]),
                    Server(b"250 ok\r\n550 5.1.1 no\r\n"),
                    Closed,
                ],
            ),
        );
        let (outcomes, reusable) = done(&out);
        assert!(!reusable);
        assert!(outcomes[0].is_permanent());
        assert!(matches!(outcomes[1], Outcome::Deferred { .. }));
        assert!(
            outcomes[1]
                .to_string()
                .contains("sending RCPT TO to mx.test[192.0.2.1]:25: connection closed"),
            "{}",
            outcomes[1]
        );
    }
}

#[test]
fn lost_while_waiting_names_the_command_waited_for() {
    for (steps, stage, text) in [
        (vec![Closed], Stage::Greeting, "waiting for the greeting of"),
        (
            vec![Server(GREETING), Closed],
            Stage::Hello,
            "saying EHLO to",
        ),
        (
            vec![Server(GREETING), Server(EHLO_STARTTLS), Closed],
            Stage::StartTls,
            "STARTTLS with",
        ),
        (
            vec![Server(b"220-mx\r\n"), Closed],
            Stage::Greeting,
            "closed",
        ),
    ] {
        let out = replay(&config(false, TlsPolicy::Opportunistic), &steps);
        let failure = open_failure(&out);
        assert_eq!(failure.stage, stage);
        assert!(
            failure.reason.to_string().contains(text),
            "{}",
            failure.reason
        );
        assert!(closed(&out));
    }
    let out = replay(
        &smtp(),
        &with(
            ready_steps(EHLO_PIPELINING),
            &[start(&["b@example.net"]), Server(b"250 ok\r\n"), Closed],
        ),
    );
    let (failure, _) = hop_failed(&out);
    assert_eq!(failure.stage, Stage::RcptTo);
    assert!(failure.reason.to_string().contains("sending RCPT TO to"));
    let out = replay(
        &smtp(),
        &with(
            ready_steps(EHLO_PIPELINING),
            &[
                start(&["b@example.net"]),
                Server(b"250 ok\r\n250 ok\r\n"),
                Closed,
            ],
        ),
    );
    assert_eq!(hop_failed(&out).0.stage, Stage::Data);
}

#[test]
fn data_replies_table() {
    for (reply, delivered, permanent, reusable, status) in [
        (&b"554 5.7.1 no\r\n"[..], false, true, true, (5, 7, 1)),
        (&b"451 4.3.0 later\r\n"[..], false, false, true, (4, 3, 0)),
        // A 2xx where 354 belongs: the server lost track. Deferred, not reused.
        (&b"250 2.0.0 huh\r\n"[..], false, false, false, (4, 5, 0)),
    ] {
        let out = replay(
            &smtp(),
            &with(
                ready_steps(EHLO_PIPELINING),
                &[
                    start(&["b@example.net"]),
                    Server(b"250 ok\r\n250 ok\r\n"),
                    Server(reply),
                ],
            ),
        );
        assert!(!out.contains(&Output::SendMessage));
        let (outcomes, r) = done(&out);
        assert_eq!(outcomes[0].is_delivered(), delivered);
        assert_eq!(outcomes[0].is_permanent(), permanent);
        assert_eq!(r, reusable);
        let (a, b, c) = status;
        assert_eq!(outcomes[0].status(), Some(EnhancedStatus::new(a, b, c)));
    }
    // 421 to DATA: the session is lost before the message; nobody refused, so the hop failed.
    let out = replay(
        &smtp(),
        &with(
            ready_steps(EHLO_PIPELINING),
            &[
                start(&["b@example.net"]),
                Server(b"250 ok\r\n250 ok\r\n421 4.3.0 bye\r\n"),
            ],
        ),
    );
    assert_eq!(hop_failed(&out).0.stage, Stage::Data);
    assert!(!out.contains(&Output::SendMessage));
}

#[test]
fn end_of_data_replies_and_losses() {
    let base = with(
        ready_steps(EHLO_PIPELINING),
        &[
            start(&["b@example.net", "c@example.net"]),
            Server(b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n"),
        ],
    );
    // 421 after the dot: a reply for everybody, and the end of the connection.
    let out = replay(
        &smtp(),
        &with(base.clone(), &[Server(b"421 4.4.2 bye\r\n")]),
    );
    let (outcomes, reusable) = done(&out);
    assert!(!reusable && closed(&out));
    assert!(outcomes.iter().all(|o| code(o) == Some(421)));
    // 554 after the dot fails everybody.
    let out = replay(
        &smtp(),
        &with(base.clone(), &[Server(b"554 5.6.0 bad\r\n")]),
    );
    assert!(done(&out).0.iter().all(Outcome::is_permanent));
    // Lost or timed out after the message: deferred, a duplicate is possible, a loss is not.
    for lose in [Closed, Timeout(TIMEOUTS.data)] {
        let out = replay(&smtp(), &with(base.clone(), &[lose]));
        let (outcomes, reusable) = done(&out);
        assert!(!reusable);
        for outcome in outcomes {
            assert!(matches!(outcome, Outcome::Deferred { .. }));
            assert_eq!(outcome.status(), Some(EnhancedStatus::new(4, 4, 2)));
            assert!(
                outcome
                    .to_string()
                    .contains("may or may not have been delivered")
            );
        }
    }
}

#[test]
fn timeouts_are_values_per_phase() {
    let mut session = ClientSession::new(smtp(), t0());
    assert_eq!(
        session.poll_timeout(),
        Some(Deadline {
            kind: TimerKind::Greeting,
            at: t0() + TIMEOUTS.greeting
        })
    );
    // Before the deadline nothing happens.
    session.handle_timeout(t0() + TIMEOUTS.greeting - Duration::from_millis(1));
    assert_eq!(session.poll_output(), None);
    session.handle_input(GREETING, t0());
    assert_eq!(
        session.poll_timeout().map(|d| d.kind),
        Some(TimerKind::Command)
    );
    session.handle_input(EHLO_PIPELINING, t0());
    assert_eq!(session.poll_timeout(), None, "idle while ready");
    let rcpts = [rcpt("b@example.net")];
    let refs: Vec<&Recipient> = rcpts.iter().collect();
    session
        .start_transaction(&envelope(), &refs, 10, t0())
        .unwrap();
    assert_eq!(
        session.poll_timeout().map(|d| d.kind),
        Some(TimerKind::Command)
    );
    session.handle_input(b"250 ok\r\n250 ok\r\n354 go\r\n", t0());
    assert_eq!(
        session.poll_timeout(),
        Some(Deadline {
            kind: TimerKind::Data,
            at: t0() + TIMEOUTS.data
        })
    );
    // Timeouts at each phase name the wait.
    for (steps, stage) in [
        (vec![Timeout(TIMEOUTS.greeting)], Stage::Greeting),
        (
            vec![Server(GREETING), Timeout(TIMEOUTS.command)],
            Stage::Hello,
        ),
    ] {
        let out = replay(&smtp(), &steps);
        let failure = open_failure(&out);
        assert_eq!(failure.stage, stage);
        assert!(failure.reason.to_string().ends_with("timed out"));
    }
    let out = replay(
        &smtp(),
        &with(
            ready_steps(EHLO_PIPELINING),
            &[
                start(&["b@example.net"]),
                Server(b"250 ok\r\n"),
                Timeout(TIMEOUTS.command),
            ],
        ),
    );
    let (failure, _) = hop_failed(&out);
    assert!(
        failure
            .reason
            .to_string()
            .contains("sending RCPT TO to mx.test[192.0.2.1]:25: timed out")
    );
    // QUIT waits at most QUIT_TIMEOUT.
    let out = replay(
        &smtp(),
        &with(ready_steps(EHLO_PIPELINING), &[Quit, Timeout(QUIT_TIMEOUT)]),
    );
    assert!(wire(&out).ends_with("QUIT\r\n") && closed(&out));
}

#[test]
fn dsn_parameters_and_handoff_follow_the_dsn_offer() {
    let mut with_notify = rcpt("b@example.net");
    with_notify.notify = Some(Notify {
        success: true,
        ..Notify::default()
    });
    for (ehlo, passes, handoff) in [
        (EHLO_DSN, true, Handoff::PassedOn),
        (EHLO_PIPELINING, false, Handoff::Relayed),
    ] {
        let out = replay(
            &smtp(),
            &with(
                ready_steps(ehlo),
                &[
                    StartWith(envelope(), vec![with_notify.clone()], 10),
                    Server(b"250 ok\r\n250 ok\r\n354 go\r\n250 ok\r\n"),
                ],
            ),
        );
        assert_eq!(wire(&out).contains("NOTIFY=SUCCESS"), passes);
        assert_eq!(done(&out).0[0].handoff(), Some(handoff));
    }
}

#[test]
fn unsendable_messages_and_recipients() {
    let mut eight = envelope();
    eight.body_8bit = true;
    let mut evil = envelope();
    evil.sender = "a@b>\r\nRCPT TO:<x@y".into();
    for (env, len, hop_specific, status) in [
        // Bigger than SIZE: another hop might take it.
        (envelope(), 100_001, true, EnhancedStatus::new(5, 3, 4)),
        // 8-bit body, 8BITMIME offered: fine; see the EHLO_PLAIN case below.
        (evil, 10, false, EnhancedStatus::new(5, 1, 7)),
    ] {
        let out = replay(
            &smtp(),
            &with(
                ready_steps(EHLO_PIPELINING),
                &[StartWith(env, vec![rcpt("b@example.net")], len)],
            ),
        );
        assert_eq!(writes(&out).len(), 1, "nothing sent after EHLO");
        match finished(&out) {
            TransactionResult::HopFailed { failure, reusable } => {
                assert!(hop_specific && *reusable);
                assert_eq!(failure.status, status);
            }
            TransactionResult::Done { outcomes, reusable } => {
                assert!(!hop_specific && *reusable);
                assert_eq!(outcomes[0].status(), Some(status));
            }
        }
    }
    let out = replay(
        &smtp(),
        &with(
            ready_steps(EHLO_PLAIN),
            &[StartWith(eight, vec![rcpt("b@example.net")], 10)],
        ),
    );
    assert_eq!(hop_failed(&out).0.status, EnhancedStatus::new(5, 6, 3));
    // One bad recipient address is refused locally; the other goes.
    let out = replay(
        &smtp(),
        &with(
            ready_steps(EHLO_PIPELINING),
            &[
                StartWith(
                    envelope(),
                    vec![rcpt("x@y>\r\nDATA"), rcpt("c@example.net")],
                    10,
                ),
                Server(b"250 ok\r\n250 ok\r\n354 go\r\n250 ok\r\n"),
            ],
        ),
    );
    assert!(!wire(&out).contains("x@y"));
    let (outcomes, _) = done(&out);
    assert_eq!(outcomes[0].status(), Some(EnhancedStatus::new(5, 1, 3)));
    assert!(outcomes[1].is_delivered());
}

#[test]
fn reset_reuse_and_quit() {
    let first = with(
        ready_steps(EHLO_PIPELINING),
        &[
            start(&["b@example.net"]),
            Server(b"250 ok\r\n250 ok\r\n354 go\r\n250 ok\r\n"),
            Reset,
        ],
    );
    let out = replay(
        &smtp(),
        &with(
            first.clone(),
            &[Server(b"250 2.0.0 ok\r\n"), start(&["c@example.net"])],
        ),
    );
    assert!(
        wire(&out)
            .ends_with("RSET\r\nMAIL FROM:<a@example.org> SIZE=10\r\nRCPT TO:<c@example.net>\r\n")
    );
    // A refused RSET (or a 421 from a server that timed us out) closes.
    let out = replay(
        &smtp(),
        &with(first.clone(), &[Server(b"421 4.4.2 idle too long\r\n")]),
    );
    assert!(closed(&out));
    let out = replay(&smtp(), &with(first, &[Closed]));
    assert!(closed(&out));
    // QUIT: closed on the reply.
    let out = replay(
        &smtp(),
        &with(
            ready_steps(EHLO_PIPELINING),
            &[Quit, Server(b"221 bye\r\n")],
        ),
    );
    assert!(wire(&out).ends_with("QUIT\r\n") && closed(&out));
}

#[test]
fn not_ready_is_refused() {
    let mut session = ClientSession::new(smtp(), t0());
    let refs: Vec<&Recipient> = Vec::new();
    assert_eq!(
        session.start_transaction(&envelope(), &refs, 1, t0()),
        Err(NotReady)
    );
    assert_eq!(session.reset(t0()), Err(NotReady));
}

#[test]
fn garbage_and_unasked_replies_end_the_session() {
    // Garbage in a transaction: the replies can no longer be matched.
    let out = replay(
        &smtp(),
        &with(
            ready_steps(EHLO_PIPELINING),
            &[
                start(&["b@example.net"]),
                Server(b"250 ok\r\nHTTP/1.1 400 Bad\r\n"),
            ],
        ),
    );
    let (failure, reusable) = hop_failed(&out);
    assert!(!reusable);
    assert!(failure.reason.to_string().contains("unusable reply"));
    assert!(closed(&out));
    // A reply while idle.
    let out = replay(
        &smtp(),
        &with(ready_steps(EHLO_PIPELINING), &[Server(b"250 surprise\r\n")]),
    );
    assert!(closed(&out));
    // A line without end.
    let long: &'static [u8] =
        Box::leak(vec![b'2'; super::super::reply::MAX_LINE + 1].into_boxed_slice());
    let out = replay(&smtp(), &[Server(long)]);
    assert!(
        open_failure(&out)
            .reason
            .to_string()
            .contains("unusable reply")
    );
    // Nothing is output after Close.
    let out = replay(
        &smtp(),
        &[
            Server(b"421 bye\r\n"),
            Server(b"220 hello again\r\n"),
            Closed,
        ],
    );
    assert_eq!(out.iter().filter(|o| **o == Output::Close).count(), 1);
    assert!(closed(&out));
}

#[test]
fn a_pipelined_group_names_its_first_unanswered_command_when_lost_and_its_last_on_timeout() {
    for (lose, stage, text) in [
        (Closed, Stage::MailFrom, "sending MAIL FROM to"),
        (
            Timeout(TIMEOUTS.command),
            Stage::RcptTo,
            "sending RCPT TO to",
        ),
    ] {
        let out = replay(
            &smtp(),
            &with(
                ready_steps(EHLO_PIPELINING),
                &[start(&["b@example.net", "c@example.net"]), lose],
            ),
        );
        let (failure, reusable) = hop_failed(&out);
        assert_eq!(failure.stage, stage);
        assert!(!reusable);
        assert!(
            failure.reason.to_string().contains(text),
            "{}",
            failure.reason
        );
    }
}

#[test]
fn requiretls_goes_only_over_tls_to_a_server_that_offers_it() {
    const EHLO_REQUIRETLS: &[u8] = b"250-mx.test\r\n250-PIPELINING\r\n250 REQUIRETLS\r\n";
    let mut env = envelope();
    env.require_tls = true;
    let rcpts = vec![rcpt("b@example.net")];
    let mandatory = config(false, TlsPolicy::Required);
    // Encrypted, offered: MAIL FROM carries REQUIRETLS.
    let out = replay(
        &mandatory,
        &[
            Server(GREETING),
            Server(EHLO_STARTTLS),
            Server(b"220 go ahead\r\n"),
            TlsOk,
            Server(EHLO_REQUIRETLS),
            StartWith(env.clone(), rcpts.clone(), 10),
            Server(b"250 ok\r\n250 ok\r\n"),
        ],
    );
    assert!(
        wire(&out).contains("MAIL FROM:<a@example.org> REQUIRETLS\r\nRCPT TO:<b@example.net>\r\n"),
        "{}",
        wire(&out)
    );
    // Encrypted, not offered (Postfix): a hop failure with 4.7.30 before any mail command.
    let out = replay(
        &mandatory,
        &[
            Server(GREETING),
            Server(EHLO_STARTTLS),
            Server(b"220 go ahead\r\n"),
            TlsOk,
            Server(EHLO_PIPELINING),
            StartWith(env.clone(), rcpts.clone(), 10),
        ],
    );
    assert!(!wire(&out).contains("MAIL FROM"), "{}", wire(&out));
    match finished(&out) {
        TransactionResult::HopFailed { failure, reusable } => {
            assert_eq!(failure.status, EnhancedStatus::new(4, 7, 30));
            assert!(!failure.permanent);
            assert!(*reusable);
        }
        other => panic!("{other:?}"),
    }
    // Offered but in plain text (it cannot be, but the session does not trust that): refused.
    let out = replay(
        &smtp(),
        &[
            Server(GREETING),
            Server(EHLO_REQUIRETLS),
            StartWith(env.clone(), rcpts.clone(), 10),
        ],
    );
    assert!(!wire(&out).contains("MAIL FROM"), "{}", wire(&out));
    // The backend (final delivery, not a relay) takes it without REQUIRETLS.
    let backend = SessionConfig {
        relay: false,
        ..smtp()
    };
    let out = replay(
        &backend,
        &[
            Server(GREETING),
            Server(EHLO_PIPELINING),
            StartWith(env, rcpts, 10),
        ],
    );
    assert!(
        wire(&out).contains("MAIL FROM:<a@example.org> SIZE=10\r\n"),
        "{}",
        wire(&out)
    );
}
