//! Transcript tables for the session, each replayed whole and in several splits (byte by byte
//! included), as smtp-proto's own tests do.

use super::*;
use crate::queue::Pressure;
use std::net::{IpAddr, Ipv4Addr};

const CLIENT: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)), 40000);
const GREETING: &str = "220 mx.example.org ESMTP dimegate\n";
/// libdime's dual-mode client wants `DMTPv1` as a token after the host name (DIME.md §10.1).
const DUAL_MODE_GREETING: &str = "220 mx.example.org ESMTP DMTPv1 dimegate\n";
/// Splits every input is replayed in; `usize::MAX` is "whole".
const SPLITS: &[usize] = &[usize::MAX, 1, 2, 3, 7, 64];

fn policy() -> Policy {
    Policy {
        hostname: "mx.example.org".to_owned(),
        served_domains: vec!["example.org".to_owned(), "example.net".to_owned()],
        relay_allowed: false,
        tls_available: true,
        auth_available: true,
        dmtp_dual_mode: false,
    }
}

fn limits() -> Limits {
    Limits {
        max_message_size: 200,
        max_recipients: 3,
        max_errors: 10,
        max_line: 512,
        recipient_overshoot: 1000,
        idle_timeout: Duration::from_secs(300),
        session_timeout: Duration::from_secs(1800),
        shutdown_grace: Duration::from_secs(10),
    }
}

/// One step of a script: client input or an answer from the glue.
#[derive(Clone, Copy)]
enum Act {
    In(&'static [u8]),
    Tls,
    AuthOk(&'static str),
    AuthFail,
    Stored(u64),
    Full,
    Failed,
    Shutdown,
    /// The AUTH back-off answer.
    AuthThrottled,
    /// The glue's back-pressure gauge, told before the next input.
    Pressed(Option<Pressure>),
    /// This many seconds pass on the fake clock, then the glue calls `handle_timeout`.
    Wait(u64),
}
use Act::*;

/// What a replay produced: the transcript (replies with CRLF shown as `\n`, events in brackets),
/// the messages handed to the glue, and the raw `Send` batches.
#[derive(Default)]
struct Replay {
    transcript: String,
    messages: Vec<(Envelope, Vec<u8>)>,
    sends: Vec<Vec<u8>>,
    /// Every `Close` reason, in order.
    closes: Vec<CloseReason>,
}

fn drain(session: &mut Session, replay: &mut Replay) {
    while let Some(output) = session.poll_output() {
        match output {
            Output::Send(bytes) => {
                assert!(bytes.ends_with(b"\r\n"), "reply without CRLF: {bytes:?}");
                let text = String::from_utf8(bytes.clone()).expect("replies are UTF-8");
                assert!(
                    !text.replace("\r\n", "").contains(['\r', '\n']),
                    "bare CR/LF in reply {text:?}"
                );
                replay.transcript.push_str(&text.replace("\r\n", "\n"));
                replay.sends.push(bytes);
            }
            Output::StartTls => replay.transcript.push_str("[STARTTLS]\n"),
            Output::UpgradeToDmtp { host } => {
                replay.transcript.push_str(&format!("[DMTP {host}]\n"))
            }
            Output::Authenticate { username, password } => replay
                .transcript
                .push_str(&format!("[AUTH {username} {password}]\n")),
            Output::Enqueue { envelope, body } => {
                let to: Vec<&str> = envelope
                    .recipients
                    .iter()
                    .map(|r| r.address.as_str())
                    .collect();
                replay.transcript.push_str(&format!(
                    "[ENQUEUE <{}> {} {}]\n",
                    envelope.sender,
                    to.join(","),
                    body.len()
                ));
                replay.messages.push((envelope, body));
            }
            Output::Close(reason) => {
                replay.closes.push(reason);
                replay.transcript.push_str("[CLOSE]\n");
            }
        }
    }
}

fn replay_with(policy: Policy, limits: Limits, acts: &[Act], split: usize) -> Replay {
    let mut now = Instant::now();
    let greeting = if policy.dmtp_dual_mode {
        DUAL_MODE_GREETING
    } else {
        GREETING
    };
    let mut session = Session::new(policy, limits, CLIENT, now, 1_700_000_000);
    let mut replay = Replay::default();
    drain(&mut session, &mut replay);
    assert_eq!(replay.transcript, greeting);
    replay.transcript.clear();
    replay.sends.clear();
    for act in acts {
        match *act {
            In(bytes) => {
                for chunk in bytes.chunks(split.min(bytes.len()).max(1)) {
                    session.handle_input(now, chunk);
                    drain(&mut session, &mut replay);
                }
            }
            Tls => session.handle_tls_established(now, "TLSv1.3 TLS_AES_256_GCM_SHA384".to_owned()),
            AuthOk(user) => {
                session.handle_auth_result(now, AuthResult::Authenticated(user.to_owned()))
            }
            AuthFail => session.handle_auth_result(now, AuthResult::Invalid),
            AuthThrottled => session.handle_auth_result(now, AuthResult::Throttled),
            Stored(id) => session.handle_stored(now, Ok(QueueId(id))),
            Full => session.handle_stored(now, Err(StoreFailure::Full)),
            Failed => session.handle_stored(now, Err(StoreFailure::Failed)),
            Shutdown => session.handle_shutdown(now),
            Pressed(pressure) => session.handle_pressure(pressure),
            Wait(secs) => {
                now += Duration::from_secs(secs);
                // As the glue does: it wakes at the deadline, never before.
                if session.poll_timeout().is_some_and(|d| d <= now) {
                    session.handle_timeout(now);
                }
            }
        }
        drain(&mut session, &mut replay);
        assert!(session.buffered_len() <= 200 + 2 + AUTH_LINE_MAX + HELD_INPUT_MAX);
    }
    replay
}

/// Replays `acts` in every split and checks each transcript; returns the whole-input replay.
fn check_with(
    name: &str,
    tweak: fn(&mut Policy, &mut Limits),
    acts: &[Act],
    expected: &str,
) -> Replay {
    let (mut p, mut l) = (policy(), limits());
    tweak(&mut p, &mut l);
    let mut first = None;
    for &split in SPLITS {
        let replay = replay_with(p.clone(), l.clone(), acts, split);
        assert_eq!(replay.transcript, expected, "row {name:?}, split {split}");
        first.get_or_insert(replay);
    }
    first.expect("SPLITS is not empty")
}

fn check(name: &str, acts: &[Act], expected: &str) -> Replay {
    check_with(name, |_, _| {}, acts, expected)
}

const EHLO_PLAIN: &str = "250-mx.example.org\n250-PIPELINING\n250-SIZE 200\n250-8BITMIME\n\
250-SMTPUTF8\n250-ENHANCEDSTATUSCODES\n250-STARTTLS\n250-CHUNKING\n250 DSN\n";
const EHLO_TLS: &str = "250-mx.example.org\n250-PIPELINING\n250-SIZE 200\n250-8BITMIME\n\
250-SMTPUTF8\n250-ENHANCEDSTATUSCODES\n250-AUTH PLAIN LOGIN\n250-REQUIRETLS\n250-CHUNKING\n250 DSN\n";
const HELO: &str = "250 mx.example.org\n";
const TLS_READY: &str = "220 2.0.0 Ready to start TLS\n[STARTTLS]\n";
const QUEUED_1: &str = "250 2.0.0 Ok: queued as 0000000000000001\n";
const TOO_BIG_REPLY: &str = "552 5.3.4 Message size exceeds fixed maximum message size\n";
/// Base64 of `\0alice\0secret`.
const PLAIN_ALICE: &[u8] = b"AGFsaWNlAHNlY3JldA==";

#[test]
fn greeting_and_simple_commands() {
    check("helo", &[In(b"HELO client.test\r\n")], HELO);
    check(
        "ehlo before tls",
        &[In(b"EHLO client.test\r\n")],
        EHLO_PLAIN,
    );
    check(
        "ehlo after tls offers AUTH, not STARTTLS",
        &[In(b"EHLO c\r\nSTARTTLS\r\n"), Tls, In(b"EHLO c\r\n")],
        &format!("{EHLO_PLAIN}{TLS_READY}{EHLO_TLS}"),
    );
    check_with(
        "ehlo without tls or auth configured",
        |p, _| {
            p.tls_available = false;
            p.auth_available = false;
        },
        &[In(b"EHLO c\r\n")],
        "250-mx.example.org\n250-PIPELINING\n250-SIZE 200\n250-8BITMIME\n250-SMTPUTF8\n\
         250-ENHANCEDSTATUSCODES\n250-CHUNKING\n250 DSN\n",
    );
    check(
        "noop rset vrfy help unknown expn quit",
        &[In(
            b"HELO c\r\nNOOP\r\nRSET\r\nVRFY bob\r\nHELP\r\nFOO bar\r\nEXPN list\r\nQUIT\r\nNOOP\r\n",
        )],
        &format!(
            "{HELO}250 2.0.0 Ok\n250 2.0.0 Ok\n\
             252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery\n\
             214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS AUTH\n\
             500 5.5.1 Unknown command\n502 5.5.1 Command not implemented\n221 2.0.0 Bye\n[CLOSE]\n"
        ),
    );
    check(
        "commands are case-insensitive",
        &[In(b"ehlo c\r\nnoop\r\nquit\r\n")],
        &format!("{EHLO_PLAIN}250 2.0.0 Ok\n221 2.0.0 Bye\n[CLOSE]\n"),
    );
}

#[test]
fn bad_sequences_are_503() {
    let rows: &[(&str, &[u8], &str)] = &[
        (
            "mail before helo",
            b"MAIL FROM:<a@remote.test>\r\n",
            "503 5.5.1 Send EHLO or HELO first\n",
        ),
        (
            "rcpt before mail",
            b"HELO c\r\nRCPT TO:<b@example.org>\r\n",
            "250 mx.example.org\n503 5.5.1 Need MAIL before RCPT\n",
        ),
        (
            "data before mail",
            b"HELO c\r\nDATA\r\n",
            "250 mx.example.org\n503 5.5.1 Need MAIL before DATA\n",
        ),
        (
            "data before rcpt",
            b"HELO c\r\nMAIL FROM:<a@remote.test>\r\nDATA\r\n",
            "250 mx.example.org\n250 2.1.0 Ok\n503 5.5.1 Need RCPT before DATA\n",
        ),
        (
            "mail twice",
            b"HELO c\r\nMAIL FROM:<a@remote.test>\r\nMAIL FROM:<a@remote.test>\r\n",
            "250 mx.example.org\n250 2.1.0 Ok\n503 5.5.1 Nested MAIL command\n",
        ),
        (
            "rset ends the transaction",
            b"HELO c\r\nMAIL FROM:<a@remote.test>\r\nRSET\r\nRCPT TO:<b@example.org>\r\n",
            "250 mx.example.org\n250 2.1.0 Ok\n250 2.0.0 Ok\n503 5.5.1 Need MAIL before RCPT\n",
        ),
        (
            "helo resets the transaction",
            b"HELO c\r\nMAIL FROM:<a@remote.test>\r\nHELO c\r\nRCPT TO:<b@example.org>\r\n",
            "250 mx.example.org\n250 2.1.0 Ok\n250 mx.example.org\n503 5.5.1 Need MAIL before RCPT\n",
        ),
        (
            "rcpt after failed rcpt still needs a recipient for data",
            b"HELO c\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<b@remote.test>\r\nDATA\r\n",
            "250 mx.example.org\n250 2.1.0 Ok\n554 5.7.1 Relay access denied\n\
             503 5.5.1 Need RCPT before DATA\n",
        ),
    ];
    for (name, input, expected) in rows {
        check(name, &[In(input)], expected);
    }
}

#[test]
fn syntax_errors() {
    let rows: &[(&str, &[u8], &str)] = &[
        (
            "mail without brackets",
            b"MAIL FROM:a@remote.test\r\n",
            "501 5.5.4 Syntax: MAIL FROM:<reverse-path> [parameters]\n",
        ),
        (
            "rcpt without domain or at",
            b"MAIL FROM:<>\r\nRCPT TO:<bob>\r\n",
            "250 2.1.0 Ok\n501 5.1.3 Bad recipient address syntax\n",
        ),
        (
            "helo without name",
            b"HELO\r\n",
            "501 5.5.4 Syntax: HELO domain\n",
        ),
        (
            "unknown mail parameter",
            b"MAIL FROM:<a@remote.test> FOO=1\r\n",
            "555 5.5.4 Unsupported parameter FOO=1\n",
        ),
        (
            "unsupported but known mail parameter",
            b"MAIL FROM:<a@remote.test> REQUIRETLS\r\n",
            "555 5.5.4 Unsupported MAIL parameter\n",
        ),
        (
            "AUTH= on MAIL is ignored",
            b"MAIL FROM:<a@remote.test> AUTH=<>\r\n",
            "250 2.1.0 Ok\n",
        ),
        (
            "unsupported but known rcpt parameter",
            b"MAIL FROM:<>\r\nRCPT TO:<b@example.org> CONNEG\r\n",
            "250 2.1.0 Ok\n555 5.5.4 Unsupported RCPT parameter\n",
        ),
        (
            "bad BODY value",
            b"MAIL FROM:<a@remote.test> BODY=9BIT\r\n",
            "501 5.5.4 Invalid BODY parameter\n",
        ),
        (
            "ENVID decoding to a control character",
            b"MAIL FROM:<a@remote.test> ENVID=a+0D+0Ab\r\n",
            "501 5.5.4 Invalid ENVID parameter\n",
        ),
        (
            "ORCPT decoding to a control character",
            b"MAIL FROM:<>\r\nRCPT TO:<b@example.org> ORCPT=rfc822;b+0A@x\r\n",
            "250 2.1.0 Ok\n501 5.5.4 Invalid ORCPT parameter\n",
        ),
        (
            "helo with a control character",
            b"HELO a\x01b\r\n",
            "501 5.5.4 Invalid domain name\n",
        ),
    ];
    for (name, input, expected) in rows {
        let mut acts = vec![In(b"HELO c\r\n")];
        if name.starts_with("helo") {
            acts.clear();
        }
        acts.push(In(input));
        let prefix = if name.starts_with("helo") { "" } else { HELO };
        check(name, &acts, &format!("{prefix}{expected}"));
    }
}

#[test]
fn bare_lf_and_cr_in_command_lines_are_refused() {
    check(
        "bare LF ends a command: not executed",
        &[In(b"HELO c\nHELO c\r\nNOOP\n")],
        "500 5.5.2 Bare LF in command line; lines must end with CRLF\n250 mx.example.org\n\
         500 5.5.2 Bare LF in command line; lines must end with CRLF\n",
    );
    check(
        "bare CR inside a command",
        &[In(b"HELO c\r\nNO\rOP\r\nMA\rIL FROM:<a@b.test>\r\n")],
        &format!("{HELO}500 5.5.2 Bare CR in command line\n500 5.5.2 Bare CR in command line\n"),
    );
}

#[test]
fn long_lines_get_500_and_are_skipped() {
    let mut long = b"NOOP ".to_vec();
    long.extend(std::iter::repeat_n(b'x', 600));
    long.extend_from_slice(b"\r\nNOOP\r\n");
    let long: &'static [u8] = long.leak();
    check(
        "over 512",
        &[In(b"HELO c\r\n"), In(long)],
        &format!("{HELO}500 5.5.2 Line too long\n250 2.0.0 Ok\n"),
    );
    // Exactly 512 bytes with CRLF is allowed.
    let mut exact = b"NOOP ".to_vec();
    exact.extend(std::iter::repeat_n(b'x', 512 - 7));
    exact.extend_from_slice(b"\r\n");
    assert_eq!(exact.len(), 512);
    check("exactly 512", &[In(exact.leak())], "250 2.0.0 Ok\n");
    // AUTH lines may be longer (RFC 4954: 12288).
    let mut auth = b"AUTH PLAIN ".to_vec();
    auth.extend(std::iter::repeat_n(b'A', 1000));
    auth.extend_from_slice(b"\r\n");
    check(
        "long auth line is read, then refused as base64",
        &[
            In(b"EHLO c\r\nSTARTTLS\r\n"),
            Tls,
            In(b"EHLO c\r\n"),
            In(auth.leak()),
        ],
        &format!("{EHLO_PLAIN}{TLS_READY}{EHLO_TLS}501 5.5.2 Malformed authentication data\n"),
    );
}

#[test]
fn too_many_errors_closes() {
    check_with(
        "three errors with max_errors = 3",
        |_, l| l.max_errors = 3,
        &[In(b"FOO\r\nBAR\r\nBAZ\r\nNOOP\r\n")],
        "500 5.5.1 Unknown command\n500 5.5.1 Unknown command\n500 5.5.1 Unknown command\n\
         421 4.7.0 Too many errors\n[CLOSE]\n",
    );
}

#[test]
fn a_message_is_acknowledged_only_after_storage() {
    let replay = check(
        "message then another on the same connection",
        &[
            In(b"EHLO c\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n"),
            In(b"Subject: hi\r\n\r\n..dot\r\nbody\r\n.\r\n"),
            Stored(1),
            In(b"MAIL FROM:<>\r\nRCPT TO:<c@EXAMPLE.NET>\r\nDATA\r\n.\r\n"),
            Stored(2),
        ],
        &format!(
            "{EHLO_PLAIN}250 2.1.0 Ok\n250 2.1.5 Ok\n354 End data with <CR><LF>.<CR><LF>\n\
             [ENQUEUE <a@remote.test> b@example.org 27]\n{QUEUED_1}\
             250 2.1.0 Ok\n250 2.1.5 Ok\n354 End data with <CR><LF>.<CR><LF>\n\
             [ENQUEUE <> c@EXAMPLE.NET 0]\n250 2.0.0 Ok: queued as 0000000000000002\n"
        ),
    );
    assert_eq!(replay.messages[0].1, b"Subject: hi\r\n\r\n.dot\r\nbody\r\n");
    assert_eq!(replay.messages[1].1, b"");

    check(
        "disk full",
        &[
            In(b"HELO c\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<b@example.org>\r\nDATA\r\nx\r\n.\r\n"),
            Full,
            In(b"NOOP\r\n"),
        ],
        &format!(
            "{HELO}250 2.1.0 Ok\n250 2.1.5 Ok\n354 End data with <CR><LF>.<CR><LF>\n\
             [ENQUEUE <a@remote.test> b@example.org 3]\n\
             452 4.3.1 Insufficient system storage\n250 2.0.0 Ok\n"
        ),
    );
    check(
        "store failed, transaction reset",
        &[
            In(b"HELO c\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<b@example.org>\r\nDATA\r\nx\r\n.\r\n"),
            Failed,
            In(b"RCPT TO:<b@example.org>\r\n"),
        ],
        &format!(
            "{HELO}250 2.1.0 Ok\n250 2.1.5 Ok\n354 End data with <CR><LF>.<CR><LF>\n\
             [ENQUEUE <a@remote.test> b@example.org 3]\n\
             451 4.3.0 Local error in processing, try again later\n503 5.5.1 Need MAIL before RCPT\n"
        ),
    );
}

/// The durability promise as a property of the machine: whatever the client pipelines after the
/// final dot, nothing is answered until `handle_stored`, and then the 250 comes first.
#[test]
fn no_250_before_handle_stored() {
    for &split in SPLITS {
        let mut session = Session::new(policy(), limits(), CLIENT, Instant::now(), 0);
        let mut replay = Replay::default();
        let input = b"HELO c\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n\
            hello\r\n.\r\nMAIL FROM:<x@remote.test>\r\nNOOP\r\nQUIT\r\n";
        for chunk in input.chunks(split.min(input.len())) {
            session.handle_input(Instant::now(), chunk);
            drain(&mut session, &mut replay);
        }
        let (before, after) = replay
            .transcript
            .split_once("[ENQUEUE")
            .expect("message enqueued");
        assert!(!before.contains("queued"), "split {split}");
        assert!(after.ends_with("7]\n"), "nothing after Enqueue: {after:?}");
        assert!(!session.wants_input());
        // A confused glue that keeps feeding: still held, still silent.
        session.handle_input(Instant::now(), b"NOOP\r\n");
        assert_eq!(session.poll_output(), None);
        session.handle_stored(Instant::now(), Ok(QueueId(9)));
        drain(&mut session, &mut replay);
        assert!(
            replay.transcript.ends_with(
                "[ENQUEUE <a@remote.test> b@example.org 7]\n\
                 250 2.0.0 Ok: queued as 0000000000000009\n250 2.1.0 Ok\n250 2.0.0 Ok\n\
                 221 2.0.0 Bye\n[CLOSE]\n"
            ),
            "split {split}: {}",
            replay.transcript
        );
    }
}

#[test]
fn pipelined_replies_come_in_order_and_in_one_write() {
    let replay = replay_with(
        policy(),
        limits(),
        &[In(
            b"EHLO c\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<b@example.org>\r\n\
            RCPT TO:<x@remote.test>\r\nRCPT TO:<c@example.net>\r\nDATA\r\n",
        )],
        usize::MAX,
    );
    assert_eq!(replay.sends.len(), 1, "one batch for one pipelined group");
    assert_eq!(
        replay.transcript,
        format!(
            "{EHLO_PLAIN}250 2.1.0 Ok\n250 2.1.5 Ok\n554 5.7.1 Relay access denied\n250 2.1.5 Ok\n\
             354 End data with <CR><LF>.<CR><LF>\n"
        )
    );
}

#[test]
fn relay_control() {
    let mail = "HELO c\r\nMAIL FROM:<a@remote.test>\r\n";
    let rows: &[(&str, bool, &str, &str)] = &[
        ("served domain", false, "b@example.org", "250 2.1.5 Ok"),
        (
            "served domain, other case",
            false,
            "B@ExAmPlE.OrG",
            "250 2.1.5 Ok",
        ),
        (
            "second served domain",
            false,
            "b@example.net",
            "250 2.1.5 Ok",
        ),
        (
            "foreign domain",
            false,
            "b@remote.test",
            "554 5.7.1 Relay access denied",
        ),
        (
            "look-alike domain",
            false,
            "b@example.org.evil.test",
            "554 5.7.1 Relay access denied",
        ),
        (
            "subdomain",
            false,
            "b@sub.example.org",
            "554 5.7.1 Relay access denied",
        ),
        // smtp-proto does not parse address literals.
        (
            "address literal",
            false,
            "b@[192.0.2.1]",
            "501 5.1.3 Bad recipient address syntax",
        ),
        (
            "percent hack",
            false,
            "b%remote.test@example.org",
            "554 5.7.1 Relay access denied",
        ),
        (
            "bang path",
            false,
            "remote.test!b@example.org",
            "554 5.7.1 Relay access denied",
        ),
        (
            "quoted at",
            false,
            "\"b@remote.test\"@example.org",
            "554 5.7.1 Relay access denied",
        ),
        (
            "source route to served",
            false,
            "@remote.test:b@example.org",
            "250 2.1.5 Ok",
        ),
        (
            "foreign, relay network",
            true,
            "b@remote.test",
            "250 2.1.5 Ok",
        ),
        (
            "percent hack, relay network",
            true,
            "b%remote.test@example.org",
            "250 2.1.5 Ok",
        ),
        (
            "no domain",
            false,
            "b@",
            "501 5.1.3 Recipient address needs a domain",
        ),
        (
            "trailing dot",
            false,
            "b@example.org.",
            "501 5.1.3 Recipient address needs a domain",
        ),
        (
            "null recipient",
            false,
            "",
            "501 5.1.3 Recipient address needs a domain",
        ),
        ("postmaster", false, "Postmaster", "250 2.1.5 Ok"),
    ];
    for (name, relay_allowed, rcpt, reply) in rows {
        let input = format!("{mail}RCPT TO:<{rcpt}>\r\n");
        let acts = [In(input.into_bytes().leak())];
        let expected = format!("{HELO}250 2.1.0 Ok\n{reply}\n");
        if *relay_allowed {
            check_with(name, |p, _| p.relay_allowed = true, &acts, &expected);
        } else {
            check(name, &acts, &expected);
        }
    }
    let replay = check(
        "postmaster maps to the first served domain; null sender allowed",
        &[In(
            b"HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<postmaster>\r\nDATA\r\n.\r\n",
        )],
        &format!(
            "{HELO}250 2.1.0 Ok\n250 2.1.5 Ok\n354 End data with <CR><LF>.<CR><LF>\n\
             [ENQUEUE <> postmaster@example.org 0]\n"
        ),
    );
    assert_eq!(replay.messages[0].0.sender, "");
    check(
        "authenticated clients may relay",
        &[
            In(b"EHLO c\r\nSTARTTLS\r\n"),
            Tls,
            In(b"EHLO c\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n"),
            AuthOk("alice"),
            In(b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<b@remote.test>\r\n"),
        ],
        &format!(
            "{EHLO_PLAIN}{TLS_READY}{EHLO_TLS}[AUTH alice secret]\n\
             235 2.7.0 Authentication successful\n250 2.1.0 Ok\n250 2.1.5 Ok\n"
        ),
    );
    check(
        "mail from postmaster without domain is not a null sender",
        &[In(b"HELO c\r\nMAIL FROM:<postmaster>\r\n")],
        &format!("{HELO}501 5.1.7 Sender address needs a domain\n"),
    );
}

#[test]
fn address_encodings() {
    let rows: &[(&str, &[u8], &str)] = &[
        (
            "non-ascii sender without SMTPUTF8",
            "MAIL FROM:<jösé@remote.test>\r\n".as_bytes(),
            "553 5.6.7 Non-ASCII address requires SMTPUTF8\n",
        ),
        (
            "non-ascii sender with SMTPUTF8",
            "MAIL FROM:<jösé@remote.test> SMTPUTF8\r\n".as_bytes(),
            "250 2.1.0 Ok\n",
        ),
        (
            "non-ascii recipient without SMTPUTF8",
            "MAIL FROM:<a@remote.test>\r\nRCPT TO:<jösé@example.org>\r\n".as_bytes(),
            "250 2.1.0 Ok\n553 5.6.7 Non-ASCII address requires SMTPUTF8\n",
        ),
        (
            "non-ascii recipient with SMTPUTF8",
            "MAIL FROM:<a@remote.test> SMTPUTF8\r\nRCPT TO:<jösé@example.org>\r\n".as_bytes(),
            "250 2.1.0 Ok\n250 2.1.5 Ok\n",
        ),
        (
            "non-utf8 sender",
            b"MAIL FROM:<a\xff@remote.test>\r\n",
            "553 5.6.7 Address is not valid UTF-8\n",
        ),
        (
            "non-utf8 sender even with SMTPUTF8",
            b"MAIL FROM:<a\xff@remote.test> SMTPUTF8\r\n",
            "553 5.6.7 Address is not valid UTF-8\n",
        ),
        (
            "non-utf8 recipient with SMTPUTF8",
            b"MAIL FROM:<a@remote.test> SMTPUTF8\r\nRCPT TO:<b\xc3@example.org>\r\n",
            "250 2.1.0 Ok\n553 5.6.7 Address is not valid UTF-8\n",
        ),
        (
            "control character in quoted local part",
            b"MAIL FROM:<\"a\x01b\"@remote.test>\r\n",
            "501 5.1.7 Sender address contains control characters\n",
        ),
        (
            "non-utf8 in a parameter",
            b"MAIL FROM:<> ENVID=a\xffb\r\n",
            "501 5.5.4 Parameters are not valid UTF-8\n",
        ),
        (
            "non-utf8 in another command",
            b"NOOP \xff\r\n",
            "500 5.5.2 Invalid characters in command\n",
        ),
    ];
    for (name, input, expected) in rows {
        check(
            name,
            &[In(b"HELO c\r\n"), In(input)],
            &format!("{HELO}{expected}"),
        );
    }
}

#[test]
fn limits_on_size_and_recipients() {
    check(
        "declared SIZE over the limit",
        &[In(b"HELO c\r\nMAIL FROM:<a@remote.test> SIZE=201\r\nMAIL FROM:<a@remote.test> SIZE=200\r\n")],
        &format!("{HELO}{TOO_BIG_REPLY}250 2.1.0 Ok\n"),
    );
    check(
        "fourth recipient with max_recipients = 3",
        &[In(
            b"HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<a@example.org>\r\nRCPT TO:<b@example.org>\r\n\
            RCPT TO:<c@example.org>\r\nRCPT TO:<d@example.org>\r\n",
        )],
        &format!(
            "{HELO}250 2.1.0 Ok\n250 2.1.5 Ok\n250 2.1.5 Ok\n250 2.1.5 Ok\n\
             452 4.5.3 Too many recipients\n"
        ),
    );
    let mut big = b"HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<a@example.org>\r\nDATA\r\n".to_vec();
    for _ in 0..100 {
        big.extend_from_slice(b"0123456789\r\n");
    }
    big.extend_from_slice(b".\r\nNOOP\r\n");
    check(
        "DATA over the limit is read to the end and refused",
        &[In(big.leak())],
        &format!(
            "{HELO}250 2.1.0 Ok\n250 2.1.5 Ok\n354 End data with <CR><LF>.<CR><LF>\n\
             {TOO_BIG_REPLY}250 2.0.0 Ok\n"
        ),
    );
    // 198 bytes of lines + CRLF: exactly 200.
    let mut exact = b"HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<a@example.org>\r\nDATA\r\n".to_vec();
    for _ in 0..18 {
        exact.extend_from_slice(b"012345678\r\n");
    }
    exact.extend_from_slice(b"\r\n.\r\n");
    check(
        "DATA of exactly the limit is accepted",
        &[In(exact.leak())],
        &format!(
            "{HELO}250 2.1.0 Ok\n250 2.1.5 Ok\n354 End data with <CR><LF>.<CR><LF>\n\
             [ENQUEUE <> a@example.org 200]\n"
        ),
    );
}

#[test]
fn data_content_rules() {
    let head = "HELO c\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n";
    let intro = format!("{HELO}250 2.1.0 Ok\n250 2.1.5 Ok\n354 End data with <CR><LF>.<CR><LF>\n");
    let bare_lf = "550 5.6.0 Message contains bare LF; lines must end with CRLF\n";
    let rows: &[(&str, &[u8], String)] = &[
        ("bare LF", b"a\nb\r\n.\r\n", bare_lf.to_owned()),
        (
            "smuggling with LF.LF",
            b"hi\r\n\n.\nMAIL FROM:<x@evil.test>\r\nRCPT TO:<v@example.org>\r\nDATA\r\nfake\r\n.\r\nNOOP\r\n",
            format!("{bare_lf}250 2.0.0 Ok\n"),
        ),
        (
            "smuggling with LF.CRLF",
            b"hi\n.\r\nMAIL FROM:<x@evil.test>\r\n.\r\n",
            bare_lf.to_owned(),
        ),
        (
            "smuggling with CRLF.LF",
            b"hi\r\n.\nMAIL FROM:<x@evil.test>\r\n.\r\n",
            bare_lf.to_owned(),
        ),
        (
            "bare CR",
            b"a\rb\r\n.\r\n",
            "550 5.6.0 Message contains bare CR; lines must end with CRLF\n".to_owned(),
        ),
        (
            "smuggling with CR.CR",
            b"hi\r.\rMAIL FROM:<x@evil.test>\r\n.\r\n",
            "550 5.6.0 Message contains bare CR; lines must end with CRLF\n".to_owned(),
        ),
        (
            "NUL",
            b"a\0b\r\n.\r\n",
            "550 5.6.0 Message contains NUL characters\n".to_owned(),
        ),
        (
            "8-bit text is fine",
            "Grüße\r\n.\r\n".as_bytes(),
            "[ENQUEUE <a@remote.test> b@example.org 9]\n".to_owned(),
        ),
        (
            "dot alone on the first line ends an empty message",
            b".\r\n",
            "[ENQUEUE <a@remote.test> b@example.org 0]\n".to_owned(),
        ),
    ];
    for (name, data, expected) in rows {
        let mut input = head.as_bytes().to_vec();
        input.extend_from_slice(data);
        check(name, &[In(input.leak())], &format!("{intro}{expected}"));
    }
    // Issue 11: BINARYMIME is not advertised, so it is refused at MAIL (RFC 3030 §3), and the
    // transaction never starts.
    check(
        "BODY=BINARYMIME is refused at MAIL",
        &[In(
            b"HELO c\r\nMAIL FROM:<> BODY=BINARYMIME\r\nRCPT TO:<b@example.org>\r\nDATA\r\n",
        )],
        &format!(
            "{HELO}555 5.5.4 BODY=BINARYMIME is not supported\n\
             503 5.5.1 Need MAIL before RCPT\n503 5.5.1 Need MAIL before DATA\n"
        ),
    );
}

#[test]
fn bdat() {
    let head: &[u8] = b"EHLO c\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<b@example.org>\r\n";
    let intro = format!("{EHLO_PLAIN}250 2.1.0 Ok\n250 2.1.5 Ok\n");
    let replay = check(
        "chunks, with command-like bytes inside",
        &[
            In(head),
            In(b"BDAT 6\r\nQUIT\r\nBDAT 10\r\n.\r\nhello\r\nBDAT 0 LAST\r\n"),
            Stored(1),
        ],
        &format!(
            "{intro}250 2.0.0 6 octets received\n250 2.0.0 16 octets received\n\
             [ENQUEUE <a@remote.test> b@example.org 16]\n{QUEUED_1}"
        ),
    );
    assert_eq!(replay.messages[0].1, b"QUIT\r\n.\r\nhello\r\n");
    assert!(replay.messages[0].0.body_8bit);
    check(
        "single LAST chunk",
        &[In(head), In(b"BDAT 7 LAST\r\nhi!\r\n\r\n")],
        &format!("{intro}[ENQUEUE <a@remote.test> b@example.org 7]\n"),
    );
    check(
        "BDAT before MAIL: the chunk is consumed, not executed",
        &[In(b"HELO c\r\nBDAT 6\r\nQUIT\r\nNOOP\r\n")],
        &format!("{HELO}503 5.5.1 Need MAIL before BDAT\n250 2.0.0 Ok\n"),
    );
    check(
        "BDAT before RCPT",
        &[In(b"HELO c\r\nMAIL FROM:<>\r\nBDAT 4 LAST\r\nNOOPNOOP\r\n")],
        &format!("{HELO}250 2.1.0 Ok\n503 5.5.1 Need RCPT before BDAT\n250 2.0.0 Ok\n"),
    );
    check(
        "BDAT before HELO",
        &[In(b"BDAT 2\r\nxxNOOP\r\n")],
        "503 5.5.1 Send EHLO or HELO first\n250 2.0.0 Ok\n",
    );
    check(
        "DATA after BDAT",
        &[
            In(head),
            In(b"BDAT 2\r\nxxDATA\r\nRCPT TO:<c@example.org>\r\nRSET\r\n"),
        ],
        &format!(
            "{intro}250 2.0.0 2 octets received\n503 5.5.1 DATA not allowed after BDAT\n\
             503 5.5.1 RCPT not allowed during BDAT\n250 2.0.0 Ok\n"
        ),
    );
    check(
        "BDAT over the limit at once",
        &[
            In(head),
            In(b"BDAT 201 LAST\r\n"),
            In(&[b'x'; 201]),
            In(b"NOOP\r\n"),
        ],
        &format!("{intro}{TOO_BIG_REPLY}250 2.0.0 Ok\n"),
    );
    check(
        "BDAT crossing the limit: later chunks consumed with the same answer",
        &[
            In(head),
            In(b"BDAT 150\r\n"),
            In(&[b'x'; 150]),
            In(b"BDAT 100\r\n"),
            In(&[b'x'; 100]),
            In(b"BDAT 10 LAST\r\n0123456789NOOP\r\n"),
        ],
        &format!(
            "{intro}250 2.0.0 150 octets received\n{TOO_BIG_REPLY}{TOO_BIG_REPLY}250 2.0.0 Ok\n"
        ),
    );
    check(
        "bare LF in BDAT is refused",
        &[In(head), In(b"BDAT 4 LAST\r\na\nb\n")],
        &format!("{intro}550 5.6.0 Message contains bare LF; lines must end with CRLF\n"),
    );
    // Issue 11: without BINARYMIME, BDAT carries text like DATA: NUL and bare LF are refused,
    // and a BINARYMIME transaction never starts (its chunk is consumed, not executed).
    check(
        "NUL and bare LF over BDAT are refused; BINARYMIME is not offered",
        &[
            In(b"HELO c\r\nMAIL FROM:<> BODY=BINARYMIME\r\nRCPT TO:<b@example.org>\r\nBDAT 4 LAST\r\n\0\n\r\0"),
            In(b"MAIL FROM:<>\r\nRCPT TO:<b@example.org>\r\nBDAT 4 LAST\r\n\0\n\r\0"),
        ],
        &format!(
            "{HELO}555 5.5.4 BODY=BINARYMIME is not supported\n503 5.5.1 Need MAIL before RCPT\n\
             503 5.5.1 Need MAIL before BDAT\n250 2.1.0 Ok\n250 2.1.5 Ok\n\
             550 5.6.0 Message contains NUL characters\n"
        ),
    );
}

#[test]
fn starttls() {
    check(
        "bytes pipelined after STARTTLS are discarded and state is reset",
        &[
            In(b"EHLO c\r\nMAIL FROM:<a@remote.test>\r\nRSET\r\nSTARTTLS\r\nMAIL FROM:<evil@remote.test>\r\n"),
            In(b"RCPT TO:<x@example.org>\r\n"),
            Tls,
            In(b"MAIL FROM:<a@remote.test>\r\nEHLO c\r\n"),
        ],
        &format!(
            "{EHLO_PLAIN}250 2.1.0 Ok\n250 2.0.0 Ok\n{TLS_READY}\
             503 5.5.1 Send EHLO or HELO first\n{EHLO_TLS}"
        ),
    );
    check(
        "STARTTLS twice",
        &[
            In(b"EHLO c\r\nSTARTTLS\r\n"),
            Tls,
            In(b"EHLO c\r\nSTARTTLS\r\n"),
        ],
        &format!("{EHLO_PLAIN}{TLS_READY}{EHLO_TLS}503 5.5.1 Already in TLS\n"),
    );
    check(
        "STARTTLS during a transaction",
        &[In(b"EHLO c\r\nMAIL FROM:<>\r\nSTARTTLS\r\n")],
        &format!(
            "{EHLO_PLAIN}250 2.1.0 Ok\n503 5.5.1 STARTTLS not allowed during a mail transaction\n"
        ),
    );
    check_with(
        "STARTTLS without a certificate",
        |p, _| p.tls_available = false,
        &[In(b"STARTTLS\r\n")],
        "502 5.5.1 STARTTLS not available\n",
    );
    let replay = check(
        "tls info reaches the envelope",
        &[
            In(b"STARTTLS\r\n"),
            Tls,
            In(b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n.\r\n"),
        ],
        &format!(
            "{TLS_READY}{EHLO_TLS}250 2.1.0 Ok\n250 2.1.5 Ok\n354 End data with <CR><LF>.<CR><LF>\n\
             [ENQUEUE <> b@example.org 0]\n"
        ),
    );
    assert_eq!(
        replay.messages[0].0.tls.as_deref(),
        Some("TLSv1.3 TLS_AES_256_GCM_SHA384")
    );
}

#[test]
fn auth() {
    let tls: &[Act] = &[In(b"EHLO c\r\nSTARTTLS\r\n"), Tls, In(b"EHLO c\r\n")];
    let intro = format!("{EHLO_PLAIN}{TLS_READY}{EHLO_TLS}");
    let rows: &[(&str, &[Act], &str)] = &[
        (
            "PLAIN with initial response",
            &[In(b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n"), AuthOk("alice")],
            "[AUTH alice secret]\n235 2.7.0 Authentication successful\n",
        ),
        (
            "PLAIN with continuation",
            &[
                In(b"AUTH PLAIN\r\n"),
                In(PLAIN_ALICE),
                In(b"\r\n"),
                AuthOk("alice"),
            ],
            "334 \n[AUTH alice secret]\n235 2.7.0 Authentication successful\n",
        ),
        (
            "LOGIN",
            &[
                In(b"AUTH LOGIN\r\nYWxpY2U=\r\nc2VjcmV0\r\n"),
                AuthOk("alice"),
            ],
            "334 VXNlcm5hbWU6\n334 UGFzc3dvcmQ6\n[AUTH alice secret]\n\
             235 2.7.0 Authentication successful\n",
        ),
        (
            "LOGIN with initial response",
            &[In(b"auth login YWxpY2U=\r\nc2VjcmV0\r\n"), AuthOk("alice")],
            "334 UGFzc3dvcmQ6\n[AUTH alice secret]\n235 2.7.0 Authentication successful\n",
        ),
        (
            "bad credentials",
            &[In(b"AUTH PLAIN AGFsaWNlAHdyb25n\r\n"), AuthFail],
            "[AUTH alice wrong]\n535 5.7.8 Authentication credentials invalid\n",
        ),
        (
            "bad base64",
            &[In(b"AUTH PLAIN !!!!\r\nNOOP\r\n")],
            "501 5.5.2 Invalid base64 data\n250 2.0.0 Ok\n",
        ),
        (
            "cancel",
            &[In(b"AUTH LOGIN\r\n*\r\nNOOP\r\n")],
            "334 VXNlcm5hbWU6\n501 5.0.0 Authentication cancelled\n250 2.0.0 Ok\n",
        ),
        (
            "proxy authorization refused",
            &[In(b"AUTH PLAIN Ym9iAGFsaWNlAHNlY3JldA==\r\n")],
            "535 5.7.8 Authentication credentials invalid\n",
        ),
        (
            "one AUTH per session",
            &[
                In(b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n"),
                AuthOk("alice"),
                In(b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n"),
            ],
            "[AUTH alice secret]\n235 2.7.0 Authentication successful\n\
             503 5.5.1 Already authenticated\n",
        ),
        (
            "unknown mechanism",
            &[In(b"AUTH CRAM-MD5\r\n")],
            "504 5.5.4 Unrecognized authentication type\n",
        ),
        (
            "AUTH inside a transaction",
            &[In(b"MAIL FROM:<>\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n")],
            "250 2.1.0 Ok\n503 5.5.1 AUTH not allowed during a mail transaction\n",
        ),
        (
            "a bare LF ends the SASL exchange",
            &[In(b"AUTH LOGIN\r\nYWxpY2U=\nNOOP\r\n")],
            "334 VXNlcm5hbWU6\n500 5.5.2 Bare LF in command line; lines must end with CRLF\n\
             250 2.0.0 Ok\n",
        ),
        (
            "pipelined commands wait for the answer",
            &[
                In(b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\nMAIL FROM:<alice@example.org>\r\n"),
                AuthOk("alice"),
            ],
            "[AUTH alice secret]\n235 2.7.0 Authentication successful\n250 2.1.0 Ok\n",
        ),
    ];
    for (name, acts, expected) in rows {
        let mut all = tls.to_vec();
        all.extend_from_slice(acts);
        check(name, &all, &format!("{intro}{expected}"));
    }
    check(
        "AUTH without TLS",
        &[In(b"EHLO c\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n")],
        &format!(
            "{EHLO_PLAIN}538 5.7.11 Encryption required for requested authentication mechanism\n"
        ),
    );
    check_with(
        "AUTH with no users configured",
        |p, _| p.auth_available = false,
        &[In(b"STARTTLS\r\n"), Tls, In(b"EHLO c\r\nAUTH LOGIN\r\n")],
        "220 2.0.0 Ready to start TLS\n[STARTTLS]\n250-mx.example.org\n250-PIPELINING\n\
         250-SIZE 200\n250-8BITMIME\n250-SMTPUTF8\n250-ENHANCEDSTATUSCODES\n250-REQUIRETLS\n\
         250-CHUNKING\n250 DSN\n503 5.5.1 Authentication not available\n",
    );
}

#[test]
fn shutdown() {
    check(
        "idle",
        &[In(b"HELO c\r\nMAIL FROM:<>\r\n"), Shutdown, In(b"NOOP\r\n")],
        &format!("{HELO}250 2.1.0 Ok\n421 4.3.0 mx.example.org Server shutting down\n[CLOSE]\n"),
    );
    check(
        "inside DATA: the message may finish and is acknowledged, then 421",
        &[
            In(b"HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<b@example.org>\r\nDATA\r\npart"),
            Shutdown,
            In(b" two\r\n.\r\nNOOP\r\n"),
            Stored(1),
        ],
        &format!(
            "{HELO}250 2.1.0 Ok\n250 2.1.5 Ok\n354 End data with <CR><LF>.<CR><LF>\n\
             [ENQUEUE <> b@example.org 10]\n{QUEUED_1}\
             421 4.3.0 mx.example.org Server shutting down\n[CLOSE]\n"
        ),
    );
    check(
        "inside a refused DATA: 421 right after the refusal",
        &[
            In(b"HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<b@example.org>\r\nDATA\r\nbare\n"),
            Shutdown,
            In(b"x\r\n.\r\n"),
        ],
        &format!(
            "{HELO}250 2.1.0 Ok\n250 2.1.5 Ok\n354 End data with <CR><LF>.<CR><LF>\n\
             550 5.6.0 Message contains bare LF; lines must end with CRLF\n\
             421 4.3.0 mx.example.org Server shutting down\n[CLOSE]\n"
        ),
    );
    check(
        "while authenticating",
        &[
            In(b"STARTTLS\r\n"),
            Tls,
            In(b"EHLO c\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n"),
            Shutdown,
            AuthOk("alice"),
        ],
        &format!(
            "{TLS_READY}{EHLO_TLS}[AUTH alice secret]\n235 2.7.0 Authentication successful\n\
             421 4.3.0 mx.example.org Server shutting down\n[CLOSE]\n"
        ),
    );
}

#[test]
fn envelope_fields() {
    let now = Instant::now();
    let mut session = Session::new(policy(), limits(), CLIENT, now, 100);
    session.handle_input(now, b"EHLO client.test\r\nSTARTTLS\r\n");
    session.handle_tls_established(now, "TLSv1.2 ECDHE-RSA-AES256-GCM-SHA384".to_owned());
    session.handle_input(
        now,
        b"EHLO client.test\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n",
    );
    session.handle_auth_result(now, AuthResult::Authenticated("alice".to_owned()));
    session.set_now_unix(1234);
    session.handle_input(
        now,
        b"MAIL FROM:<alice@example.org> RET=HDRS ENVID=q+2B1 BODY=8BITMIME SMTPUTF8 SIZE=10\r\n\
          RCPT TO:<b@remote.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+40remote+2Etest\r\n\
          RCPT TO:<c@example.org> NOTIFY=NEVER\r\nRCPT TO:<d@example.org>\r\nDATA\r\nx\r\n.\r\n",
    );
    let mut enqueued = None;
    while let Some(output) = session.poll_output() {
        if let Output::Enqueue { envelope, .. } = output {
            enqueued = Some(envelope);
        }
    }
    let envelope = enqueued.expect("enqueued");
    assert_eq!(
        envelope,
        Envelope {
            sender: "alice@example.org".to_owned(),
            recipients: vec![
                Recipient {
                    address: "b@remote.test".to_owned(),
                    notify: Some(Notify {
                        never: false,
                        success: true,
                        failure: true,
                        delay: false
                    }),
                    orcpt: Some("rfc822;b@remote.test".to_owned()),
                },
                Recipient {
                    address: "c@example.org".to_owned(),
                    notify: Some(Notify {
                        never: true,
                        ..Notify::default()
                    }),
                    orcpt: None,
                },
                Recipient {
                    address: "d@example.org".to_owned(),
                    notify: None,
                    orcpt: None,
                },
            ],
            dsn_ret: Some(DsnReturn::Headers),
            dsn_envid: Some("q+2B1".to_owned()),
            body_8bit: true,
            smtputf8: true,
            helo: "client.test".to_owned(),
            client: CLIENT,
            tls: Some("TLSv1.2 ECDHE-RSA-AES256-GCM-SHA384".to_owned()),
            auth_user: Some("alice".to_owned()),
            arrival_unix: 1234,
            require_tls: false,
            dime: None,
        }
    );
}

#[test]
fn held_input_is_bounded() {
    let now = Instant::now();
    let mut session = Session::new(policy(), limits(), CLIENT, now, 0);
    session.handle_input(
        now,
        b"HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<b@example.org>\r\nDATA\r\nx\r\n.\r\n",
    );
    let flood = vec![b'N'; HELD_INPUT_MAX + 1];
    session.handle_input(now, &flood);
    assert!(session.buffered_len() <= HELD_INPUT_MAX);
    while session.poll_output().is_some() {}
    session.handle_stored(now, Ok(QueueId(1)));
    let mut transcript = Vec::new();
    while let Some(output) = session.poll_output() {
        transcript.push(output);
    }
    assert_eq!(
        transcript,
        vec![
            Output::Send(
                b"250 2.0.0 Ok: queued as 0000000000000001\r\n421 4.7.0 Too much pipelined input\r\n"
                    .to_vec()
            ),
            Output::Close(CloseReason::TooMuchPipelinedInput)
        ]
    );
    assert!(session.is_closed());
}

#[test]
fn implicit_tls_before_any_input() {
    let now = Instant::now();
    let mut session = Session::new(policy(), limits(), CLIENT, now, 0);
    session.handle_tls_established(now, "TLSv1.3".to_owned());
    session.handle_input(now, b"EHLO c\r\n");
    let mut replay = Replay::default();
    drain(&mut session, &mut replay);
    assert_eq!(replay.transcript, format!("{GREETING}{EHLO_TLS}"));
}

#[test]
fn answers_nobody_asked_for_are_ignored() {
    let now = Instant::now();
    let mut session = Session::new(policy(), limits(), CLIENT, now, 0);
    while session.poll_output().is_some() {}
    session.handle_input(now, b"NOOP\r\n");
    while session.poll_output().is_some() {}
    session.handle_stored(now, Ok(QueueId(1)));
    session.handle_auth_result(now, AuthResult::Authenticated("mallory".to_owned()));
    // After plaintext input, a late "TLS established" must not mark the session encrypted.
    session.handle_tls_established(now, "fake".to_owned());
    assert_eq!(session.poll_output(), None);
    session.handle_input(now, b"EHLO c\r\n");
    // Still not authenticated and not in TLS: STARTTLS offered, AUTH not.
    assert_eq!(
        session.poll_output(),
        Some(Output::Send(EHLO_PLAIN.replace('\n', "\r\n").into_bytes()))
    );
}

// ---- issue 7 item 5 and issue 11: timers, typed close reasons, back-pressure, edge cases ----

const HEAD_DATA: &[u8] = b"HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n";
const INTRO_DATA: &str = "250 mx.example.org\n250 2.1.0 Ok\n250 2.1.5 Ok\n\
                          354 End data with <CR><LF>.<CR><LF>\n";
const SHUTTING_DOWN: &str = "421 4.3.0 mx.example.org Server shutting down\n[CLOSE]\n";
const IDLE_421: &str = "421 4.4.2 mx.example.org Timeout, closing connection\n[CLOSE]\n";

#[test]
fn shutdown_deadline_is_fixed_and_not_moved_by_dribbled_bytes() {
    let replay = check(
        "a client dribbling bytes inside DATA gets 421 at the grace deadline",
        &[
            In(HEAD_DATA),
            In(b"part"),
            Shutdown,
            Wait(3),
            In(b"x"),
            Wait(3),
            In(b"y"),
            Wait(3),
            In(b"z"),
            // 9 s into a 10 s grace: nothing yet, whatever arrived.
            Wait(1),
            In(b"more"),
        ],
        &format!("{INTRO_DATA}{SHUTTING_DOWN}"),
    );
    assert_eq!(replay.closes, [CloseReason::Shutdown]);
    assert!(replay.messages.is_empty(), "no message, no 250");
    check(
        "a second shutdown signal does not extend the grace",
        &[
            In(HEAD_DATA),
            Shutdown,
            Wait(6),
            Shutdown,
            In(b"x"),
            Wait(4),
        ],
        &format!("{INTRO_DATA}{SHUTTING_DOWN}"),
    );
    check(
        "before the deadline nothing is sent",
        &[In(HEAD_DATA), Shutdown, Wait(9), In(b"x")],
        INTRO_DATA,
    );
    check_with(
        "a zero grace closes at once inside DATA",
        |_, l| l.shutdown_grace = Duration::ZERO,
        &[In(HEAD_DATA), Shutdown, Wait(0)],
        &format!("{INTRO_DATA}{SHUTTING_DOWN}"),
    );
}

#[test]
fn idle_and_session_timeouts_are_the_sessions() {
    let replay = check(
        "idle between commands",
        &[In(b"HELO c\r\n"), Wait(299), Wait(1), In(b"NOOP\r\n")],
        &format!("{HELO}{IDLE_421}"),
    );
    assert_eq!(replay.closes, [CloseReason::IdleTimeout]);
    check(
        "input restarts the idle timer",
        &[
            In(b"HELO c\r\n"),
            Wait(200),
            In(b"NOOP\r\n"),
            Wait(200),
            In(b"NO"),
            Wait(299),
            Wait(1),
        ],
        &format!("{HELO}250 2.0.0 Ok\n{IDLE_421}"),
    );
    check(
        "idle inside DATA",
        &[In(HEAD_DATA), In(b"half a line"), Wait(300)],
        &format!("{INTRO_DATA}{IDLE_421}"),
    );
    let replay = check(
        "the idle timer waits while the glue stores, and restarts at its answer",
        &[
            In(HEAD_DATA),
            In(b"x\r\n.\r\n"),
            Wait(400),
            Stored(1),
            Wait(299),
            In(b"NOOP\r\n"),
            Wait(300),
        ],
        &format!("{INTRO_DATA}[ENQUEUE <> b@example.org 3]\n{QUEUED_1}250 2.0.0 Ok\n{IDLE_421}"),
    );
    assert_eq!(replay.closes, [CloseReason::IdleTimeout]);
    let mut acts = vec![In(b"HELO c\r\n")];
    for _ in 0..8 {
        acts.extend([Wait(200), In(b"NOOP\r\n")]);
    }
    acts.push(Wait(200));
    let mut expected = HELO.to_owned();
    expected.push_str(&"250 2.0.0 Ok\n".repeat(8));
    expected.push_str(
        "421 4.4.2 mx.example.org Session time limit exceeded, closing connection\n[CLOSE]\n",
    );
    let replay = check(
        "a busy session still ends at session_timeout",
        &acts,
        &expected,
    );
    assert_eq!(replay.closes, [CloseReason::SessionTimeout]);
}

#[test]
fn poll_timeout_is_the_earliest_deadline() {
    let t0 = Instant::now();
    let s = |n| t0 + Duration::from_secs(n);
    let mut session = Session::new(policy(), limits(), CLIENT, t0, 0);
    assert_eq!(session.poll_timeout(), Some(s(300)));
    session.handle_input(s(1700), b"HELO c\r\n");
    assert_eq!(
        session.poll_timeout(),
        Some(s(1800)),
        "the session limit comes first"
    );
    session.handle_input(s(10), b"NOOP\r\n");
    assert_eq!(
        session.poll_timeout(),
        Some(s(1800)),
        "a clock that goes back does not move a deadline"
    );
    session.handle_shutdown(s(1701));
    assert_eq!(session.poll_timeout(), None, "closed between commands");
    let mut session = Session::new(policy(), limits(), CLIENT, t0, 0);
    session.handle_input(t0, HEAD_DATA);
    session.handle_shutdown(s(5));
    assert_eq!(session.poll_timeout(), Some(s(15)));
    session.handle_input(s(6), b"x\r\n.\r\n");
    assert_eq!(session.poll_timeout(), Some(s(15)), "waiting for the store");
    session.handle_timeout(s(20));
    assert!(!session.is_closed(), "the clock does not cut a store short");
    session.handle_stored(s(21), Ok(QueueId(1)));
    assert!(
        session.is_closed(),
        "closed at the command boundary after the 250"
    );
    // Durations that would overflow an Instant mean "never", not a panic.
    let mut forever = Session::new(
        policy(),
        Limits {
            idle_timeout: Duration::MAX,
            session_timeout: Duration::MAX,
            shutdown_grace: Duration::MAX,
            ..limits()
        },
        CLIENT,
        t0,
        0,
    );
    assert_eq!(forever.poll_timeout(), None);
    forever.handle_input(t0, HEAD_DATA);
    forever.handle_shutdown(t0);
    forever.handle_timeout(s(1_000_000));
    assert!(!forever.is_closed());
}

#[test]
fn close_reasons_are_typed() {
    let (p, mut l) = (policy(), limits());
    l.max_errors = 2;
    let replay = replay_with(p, l, &[In(b"FOO\r\nBAR\r\n")], usize::MAX);
    assert_eq!(replay.closes, [CloseReason::TooManyErrors]);
    let replay = check("quit", &[In(b"QUIT\r\n")], "221 2.0.0 Bye\n[CLOSE]\n");
    assert_eq!(replay.closes, [CloseReason::Quit]);
    let replay = check("shutdown", &[Shutdown], SHUTTING_DOWN);
    assert_eq!(replay.closes, [CloseReason::Shutdown]);
    assert_eq!(CloseReason::TooManyErrors.label(), "too_many_errors");
    assert_eq!(CloseReason::IdleTimeout.label(), "timeout");
}

#[test]
fn notify_never_only_alone() {
    let rows: &[(&str, &[u8], &str)] = &[
        (
            "NEVER alone",
            b"RCPT TO:<b@example.org> NOTIFY=NEVER\r\n",
            "250 2.1.5 Ok\n",
        ),
        (
            "NEVER first, then SUCCESS",
            b"RCPT TO:<b@example.org> NOTIFY=NEVER,SUCCESS\r\n",
            "501 5.5.4 Invalid NOTIFY parameter\n",
        ),
        (
            "DELAY, then NEVER",
            b"RCPT TO:<b@example.org> NOTIFY=DELAY,NEVER\r\n",
            "501 5.5.4 Invalid NOTIFY parameter\n",
        ),
        (
            "NEVER among three",
            b"RCPT TO:<b@example.org> NOTIFY=FAILURE,NEVER,DELAY\r\n",
            "501 5.5.4 Invalid NOTIFY parameter\n",
        ),
        (
            "the others together are fine",
            b"RCPT TO:<b@example.org> NOTIFY=SUCCESS,FAILURE,DELAY\r\n",
            "250 2.1.5 Ok\n",
        ),
    ];
    for (name, rcpt, expected) in rows {
        check(
            name,
            &[In(b"HELO c\r\nMAIL FROM:<a@remote.test>\r\n"), In(rcpt)],
            &format!("{HELO}250 2.1.0 Ok\n{expected}"),
        );
    }
}

#[test]
fn excess_recipients_get_452_and_the_session_goes_on() {
    // 150 against 100, scaled: 15 recipients against max_recipients = 3, with max_errors = 3.
    let mut input = b"EHLO c\r\nMAIL FROM:<a@remote.test>\r\n".to_vec();
    for i in 0..15 {
        input.extend_from_slice(format!("RCPT TO:<u{i}@example.org>\r\n").as_bytes());
    }
    input.extend_from_slice(b"DATA\r\nhi\r\n.\r\n");
    let mut expected = format!("{EHLO_PLAIN}250 2.1.0 Ok\n");
    expected.push_str(&"250 2.1.5 Ok\n".repeat(3));
    expected.push_str(&"452 4.5.3 Too many recipients\n".repeat(12));
    expected.push_str(
        "354 End data with <CR><LF>.<CR><LF>\n\
         [ENQUEUE <a@remote.test> u0@example.org,u1@example.org,u2@example.org 4]\n",
    );
    expected.push_str(QUEUED_1);
    // The client sends the rest in the next transaction (RFC 5321 §4.5.3.1.10).
    expected.push_str("250 2.1.0 Ok\n250 2.1.5 Ok\n");
    let replay = check_with(
        "pipelined excess",
        |_, l| l.max_errors = 3,
        &[
            In(input.leak()),
            Stored(1),
            In(b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<u3@example.org>\r\n"),
        ],
        &expected,
    );
    assert!(replay.closes.is_empty());
    assert_eq!(replay.messages[0].0.recipients.len(), 3);
    // Past the tolerated overshoot each excess recipient counts as an error again.
    check_with(
        "overshoot beyond the tolerance",
        |_, l| {
            l.max_errors = 2;
            l.max_recipients = 1;
            l.recipient_overshoot = 2;
        },
        &[In(
            b"HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<a@example.org>\r\nRCPT TO:<b@example.org>\r\n\
              RCPT TO:<c@example.org>\r\nRCPT TO:<d@example.org>\r\nRCPT TO:<e@example.org>\r\n",
        )],
        &format!(
            "{HELO}250 2.1.0 Ok\n250 2.1.5 Ok\n{}421 4.7.0 Too many errors\n[CLOSE]\n",
            "452 4.5.3 Too many recipients\n".repeat(4)
        ),
    );
}

const QUEUE_FULL: Pressure = Pressure::QueueFull {
    messages: 10,
    max: 10,
};

#[test]
fn back_pressure_is_answered_at_mail_from() {
    let disk_low = Pressure::DiskLow {
        free_bytes: 1,
        min_bytes: 2,
    };
    check_with(
        "452 4.3.1 at MAIL FROM, not counted as an error, gone when the gauge clears",
        |_, l| l.max_errors = 2,
        &[
            In(b"HELO c\r\n"),
            Pressed(Some(QUEUE_FULL)),
            In(b"MAIL FROM:<a@remote.test>\r\nMAIL FROM:<a@remote.test>\r\n"),
            Pressed(Some(disk_low)),
            In(b"MAIL FROM:<a@remote.test>\r\n"),
            Pressed(None),
            In(b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<b@example.org>\r\n"),
        ],
        &format!(
            "{HELO}{0}{0}452 4.3.1 Insufficient system storage, try again later\n\
             250 2.1.0 Ok\n250 2.1.5 Ok\n",
            "452 4.3.1 Queue full, try again later\n"
        ),
    );
    check(
        "a malformed MAIL still gets its own answer under pressure",
        &[
            In(b"HELO c\r\n"),
            Pressed(Some(QUEUE_FULL)),
            In(b"MAIL FROM:<a@remote.test> BODY=9BIT\r\n"),
        ],
        &format!("{HELO}501 5.5.4 Invalid BODY parameter\n"),
    );
    check(
        "a transaction already under way is not cut short",
        &[
            In(b"HELO c\r\nMAIL FROM:<>\r\n"),
            Pressed(Some(QUEUE_FULL)),
            In(b"RCPT TO:<b@example.org>\r\nDATA\r\nx\r\n.\r\n"),
            Stored(1),
        ],
        &format!(
            "{HELO}250 2.1.0 Ok\n250 2.1.5 Ok\n354 End data with <CR><LF>.<CR><LF>\n\
             [ENQUEUE <> b@example.org 3]\n{QUEUED_1}"
        ),
    );
}

#[test]
fn requiretls_only_inside_tls_and_recorded() {
    let replay = check(
        "REQUIRETLS under TLS is accepted and lands in the envelope",
        &[
            In(b"EHLO c\r\nSTARTTLS\r\n"),
            Tls,
            In(
                b"EHLO c\r\nMAIL FROM:<a@remote.test> REQUIRETLS\r\nRCPT TO:<b@example.org>\r\n\
                 DATA\r\nx\r\n.\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<b@example.org>\r\n\
                 DATA\r\ny\r\n.\r\n",
            ),
            Stored(1),
            Stored(2),
        ],
        &format!(
            "{EHLO_PLAIN}{TLS_READY}{EHLO_TLS}250 2.1.0 Ok\n250 2.1.5 Ok\n\
             354 End data with <CR><LF>.<CR><LF>\n[ENQUEUE <a@remote.test> b@example.org 3]\n\
             {QUEUED_1}250 2.1.0 Ok\n250 2.1.5 Ok\n354 End data with <CR><LF>.<CR><LF>\n\
             [ENQUEUE <a@remote.test> b@example.org 3]\n250 2.0.0 Ok: queued as 0000000000000002\n"
        ),
    );
    assert!(replay.messages[0].0.require_tls);
    assert!(!replay.messages[1].0.require_tls, "per transaction");
    assert!(EHLO_TLS.contains("REQUIRETLS") && !EHLO_PLAIN.contains("REQUIRETLS"));
    check(
        "without TLS it is not offered and refused like any unadvertised parameter",
        &[In(b"EHLO c\r\nMAIL FROM:<a@remote.test> REQUIRETLS\r\n")],
        &format!("{EHLO_PLAIN}555 5.5.4 Unsupported MAIL parameter\n"),
    );
    check_with(
        "implicit TLS offers it too",
        |_, _| {},
        &[Tls, In(b"EHLO c\r\nMAIL FROM:<> REQUIRETLS\r\n")],
        &format!("{EHLO_TLS}250 2.1.0 Ok\n"),
    );
}

#[test]
fn auth_back_off_answers_454_and_counts_as_an_error() {
    check_with(
        "throttled AUTH",
        |_, l| l.max_errors = 2,
        &[
            In(b"STARTTLS\r\n"),
            Tls,
            In(b"EHLO c\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n"),
            AuthThrottled,
            In(b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n"),
            AuthThrottled,
        ],
        &format!(
            "{TLS_READY}{EHLO_TLS}[AUTH alice secret]\n\
             454 4.7.0 Too many authentication failures, try again later\n[AUTH alice secret]\n\
             454 4.7.0 Too many authentication failures, try again later\n\
             421 4.7.0 Too many errors\n[CLOSE]\n"
        ),
    );
}

const DMTP_READY: &str = "220 2.0.0 Ready to start TLS for DMTPv1\n";

fn dual_mode(p: &mut Policy, _: &mut Limits) {
    p.dmtp_dual_mode = true;
}

#[test]
fn dmtp_dual_mode_hands_the_connection_over() {
    let replay = check_with(
        "libdime's form after EHLO; plaintext pipelined after it is dropped",
        dual_mode,
        &[
            In(b"EHLO c\r\nSTARTTLS <mx.example.org> MODE=DMTPv1\r\nSGNT <example.org>\r\n"),
            In(b"NOOP\r\n"),
            Wait(100_000),
            Shutdown,
        ],
        &format!("{EHLO_PLAIN}{DMTP_READY}[DMTP mx.example.org]\n"),
    );
    assert!(replay.closes.is_empty(), "handed over, not closed by SMTP");
    check_with(
        "the draft formatter's form, before EHLO, mode case-insensitive",
        dual_mode,
        &[In(b"starttls HOST=mx.example.org mode=dmtp\r\n")],
        &format!("{DMTP_READY}[DMTP mx.example.org]\n"),
    );
    check_with(
        "plain STARTTLS stays SMTP's",
        dual_mode,
        &[In(b"EHLO c\r\nSTARTTLS\r\n")],
        &format!("{EHLO_PLAIN}{TLS_READY}"),
    );
    check(
        "without a DMTP server behind the listener",
        &[In(b"STARTTLS <mx.example.org> MODE=DMTPv1\r\nNOOP\r\n")],
        "502 5.5.1 DMTP dual mode not available\n250 2.0.0 Ok\n",
    );
    check_with(
        "a malformed host",
        dual_mode,
        &[In(b"STARTTLS <mx..example.org> MODE=DMTPv1\r\n")],
        "501 5.5.4 Syntax: STARTTLS <host> MODE=DMTPv1\n",
    );
    check_with(
        "inside a mail transaction",
        dual_mode,
        &[In(
            b"EHLO c\r\nMAIL FROM:<>\r\nSTARTTLS <mx.example.org> MODE=DMTPv1\r\n",
        )],
        &format!(
            "{EHLO_PLAIN}250 2.1.0 Ok\n503 5.5.1 STARTTLS not allowed during a mail transaction\n"
        ),
    );
    check_with(
        "after SMTP's own STARTTLS",
        dual_mode,
        &[
            In(b"STARTTLS\r\n"),
            Tls,
            In(b"STARTTLS <mx.example.org> MODE=DMTPv1\r\n"),
        ],
        &format!("{TLS_READY}503 5.5.1 Already in TLS\n"),
    );
    check_with(
        "a bare LF ending it is refused like any command line",
        dual_mode,
        &[In(b"STARTTLS <mx.example.org> MODE=DMTPv1\n")],
        "500 5.5.2 Bare LF in command line; lines must end with CRLF\n",
    );
}
