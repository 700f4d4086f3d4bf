//! Transcript tables for the server session, each replayed whole and in pieces of 1, 2, 3, 7 and
//! 64 bytes.

use super::*;
use crate::dime::Signet;
use crate::dmtp::test_signets;

const SPLITS: &[usize] = &[usize::MAX, 1, 2, 3, 7, 64];
const BANNER: &str = "220 dx.example.com DMTPv1 dimegate ready\n";
const EHLO: &str = "250-dx.example.com DMTPv1\n250-SIZE 100\n250 OK\n";

/// The org chain of example.com in these tests: an older signet, then the current one.
fn org_chain() -> Vec<Signet> {
    vec![
        test_signets::org("example.com", 1),
        test_signets::org("example.com", 2),
    ]
}

fn user_chain() -> Vec<Signet> {
    vec![
        test_signets::user("user@example.com", 11, 2),
        test_signets::user("user@example.com", 12, 2),
        test_signets::user("user@example.com", 13, 2),
    ]
}

fn org_fp() -> Fingerprint {
    org_chain()[1].crypto_fingerprint()
}

fn origin_fp() -> Fingerprint {
    Fingerprint::of(b"origin org signet")
}

fn policy() -> Policy {
    Policy {
        hostname: "dx.example.com".to_owned(),
        served: vec![ServedDomain {
            domain: Domain::parse("example.com").expect("domain"),
            org_fingerprints: vec![org_fp()],
        }],
    }
}

fn limits() -> Limits {
    Limits {
        max_message_size: 100,
        max_errors: 10,
        command_timeout: Duration::from_secs(300),
        data_timeout: Duration::from_secs(180),
    }
}

/// One step of a script.
enum Act {
    In(Vec<u8>),
    Signets(Vec<Signet>),
    LookupFails(LookupFailure),
    Stored(&'static str),
    Refused(TransferRefusal),
    Timeout(u64),
    Shutdown,
}
use Act::*;

fn input(text: impl Into<Vec<u8>>) -> Act {
    In(text.into())
}

struct Replay {
    transcript: String,
    transfers: Vec<Transfer>,
}

fn drain(session: &mut ServerSession, replay: &mut Replay, pending: &mut bool) {
    while let Some(output) = session.poll_output() {
        match output {
            Output::Reply(bytes) => {
                assert!(!*pending, "reply while the glue's answer is pending");
                let text = String::from_utf8(bytes).expect("replies are UTF-8");
                assert!(text.ends_with("\r\n"));
                assert!(!text.replace("\r\n", "").contains(['\r', '\n']));
                replay.transcript.push_str(&text.replace("\r\n", "\n"));
            }
            Output::LookupSignet(lookup) => {
                *pending = true;
                let fp = lookup.fingerprint.map(|f| f.to_string()[..8].to_owned());
                replay
                    .transcript
                    .push_str(&format!("[LOOKUP {} {fp:?}]\n", lookup.name));
            }
            Output::VerifyAndStore(transfer) => {
                *pending = true;
                replay.transcript.push_str(&format!(
                    "[STORE {} {} {}]\n",
                    transfer.origin,
                    transfer.destination,
                    transfer.body.len()
                ));
                replay.transfers.push(transfer);
            }
            Output::Close => replay.transcript.push_str("[CLOSE]\n"),
        }
    }
}

fn replay_with(limits: Limits, acts: &[Act], split: usize, dual: bool) -> Replay {
    let start = Instant::now();
    let mut session = if dual {
        ServerSession::after_dual_mode_upgrade(policy(), limits.clone(), start)
    } else {
        ServerSession::new(policy(), limits.clone(), start)
    };
    let mut replay = Replay {
        transcript: String::new(),
        transfers: Vec::new(),
    };
    let mut pending = false;
    drain(&mut session, &mut replay, &mut pending);
    let first = if dual { "250 OK DMTPv1\n" } else { BANNER };
    assert_eq!(replay.transcript, first);
    replay.transcript.clear();
    for act in acts {
        match act {
            In(bytes) => {
                for chunk in bytes.chunks(split.min(bytes.len()).max(1)) {
                    session.handle_input(start, chunk);
                    drain(&mut session, &mut replay, &mut pending);
                }
            }
            Signets(chain) => {
                pending = false;
                session.handle_signet_answer(Ok(chain.clone()));
            }
            LookupFails(failure) => {
                pending = false;
                session.handle_signet_answer(Err(*failure));
            }
            Stored(txid) => {
                pending = false;
                session.handle_stored(Ok(TxId::parse(txid).expect("txid")));
            }
            Refused(refusal) => {
                pending = false;
                session.handle_stored(Err(*refusal));
            }
            Timeout(secs) => session.handle_timeout(start + Duration::from_secs(*secs)),
            Shutdown => session.handle_shutdown(),
        }
        drain(&mut session, &mut replay, &mut pending);
        let bound =
            usize::try_from(limits.max_message_size).expect("small") + 2 + 512 + HELD_INPUT_MAX;
        assert!(session.buffered_len() <= bound);
        assert_eq!(
            session.is_closed(),
            replay.transcript.ends_with("[CLOSE]\n")
        );
    }
    replay
}

fn check_with(name: &str, limits: Limits, acts: &[Act], expected: &str) -> Replay {
    let mut first = None;
    for &split in SPLITS {
        let replay = replay_with(limits.clone(), acts, split, false);
        assert_eq!(replay.transcript, expected, "row {name:?}, split {split}");
        first.get_or_insert(replay);
    }
    first.expect("splits")
}

fn check(name: &str, acts: &[Act], expected: &str) -> Replay {
    check_with(name, limits(), acts, expected)
}

fn mail(size: usize) -> String {
    format!(
        "MAIL FROM: <origin.example> [{}] SIZE={size}\r\n",
        origin_fp()
    )
}

fn rcpt() -> String {
    format!("RCPT TO: <example.com> [{}]\r\n", org_fp())
}

fn hash_for(mail_line: &str, rcpt_line: &str) -> String {
    let m = Command::parse(mail_line.as_bytes()).expect("mail");
    let r = Command::parse(rcpt_line.as_bytes()).expect("rcpt");
    commit_hash(&m, &r)
}

#[test]
fn simple_commands() {
    check("ehlo", &[input("EHLO <origin.example>\r\n")], EHLO);
    check(
        "helo",
        &[input("HELO origin.example\r\n")],
        "250 dx.example.com\n",
    );
    check(
        "mode noop rset help stats unknown quit",
        &[input(
            "MODE\r\nNOOP\r\nRSET\r\nHELP\r\nSTATS\r\nEXPN x\r\nQUIT\r\nNOOP\r\n",
        )],
        "250 OK DMTPv1\n250 OK\n250 OK\n\
         214-Commands: EHLO HELO MODE MAIL RCPT DATA SGNT VRFY HIST NOOP RSET HELP QUIT\n214 OK\n\
         502 STATS is disabled\n500 unknown command \"EXPN\"\n221 BYE\n[CLOSE]\n",
    );
    check(
        "framing errors",
        &[input("NOOP\nNO\rOP\r\nNOOP\r\n")],
        "500 command line must end with CRLF\n500 bare CR in command line\n250 OK\n",
    );
    let long = format!("NOOP {}\r\nNOOP\r\n", "x".repeat(600));
    check(
        "line too long",
        &[input(long)],
        "500 line too long (at most 512 bytes)\n250 OK\n",
    );
}

#[test]
fn bad_sequences_are_503() {
    let m = mail(10);
    let r = rcpt();
    check(
        "before ehlo",
        &[input(format!("{m}{r}DATA\r\n"))],
        "503 send EHLO or HELO first\n503 send EHLO or HELO first\n503 send EHLO or HELO first\n",
    );
    check(
        "rcpt before mail, data before rcpt, nested mail, second rcpt",
        &[input(format!(
            "EHLO o.example\r\n{r}DATA\r\n{m}DATA\r\n{m}{r}{r}RSET\r\nDATA\r\n"
        ))],
        &format!(
            "{EHLO}503 need MAIL before RCPT\n503 need MAIL before DATA\n250 OK\n\
             503 need RCPT before DATA\n503 a transaction is already in progress\n250 OK\n\
             503 one RCPT per transaction: one destination per message\n250 OK\n\
             503 need MAIL before DATA\n"
        ),
    );
}

#[test]
fn mail_and_rcpt_refusals() {
    let fp = origin_fp();
    check(
        "mail arguments",
        &[input(format!(
            "EHLO o.example\r\nMAIL FROM: <o.example> SIZE=5\r\nMAIL FROM: <o.example> [{fp}]\r\n\
             MAIL FROM: <o.example> [{fp}] SIZE=0\r\nMAIL FROM: <o.example> [fingerprint] SIZE=5\r\n\
             MAIL FROM: <o.example> [{fp}] SIZE=101\r\nMAIL FROM: <o.example> [{fp}] SIZE=100\r\n"
        ))],
        &format!(
            "{EHLO}501 MAIL needs the origin signet fingerprint: MAIL FROM: <domain> [fp] SIZE=n\n\
             501 MAIL needs SIZE=n: the message is length-delimited\n501 SIZE must be at least 1\n\
             501 MAIL: not a signet fingerprint\n\
             552 message size exceeds the limit of 100 octets\n250 OK\n"
        ),
    );
    let wrong = Fingerprint::of(b"someone else");
    check(
        "rcpt refusals",
        &[input(format!(
            "EHLO o.example\r\n{}RCPT TO: <other.example>\r\nRCPT TO: <example.com> [{wrong}]\r\n\
             RCPT TO: <example.com>\r\n",
            mail(5)
        ))],
        &format!(
            "{EHLO}250 OK\n510 other.example is not a domain served here\n\
             576 [{wrong}] is not a current org signet of example.com\n250 OK\n"
        ),
    );
}

/// A message body with everything SMTP would mangle: dot lines, bare LF/CR, NUL, high bytes.
const BODY: &[u8] = b"\r\n.\r\n\n.\n\0\xff\r.DATA\r\n";

#[test]
fn transfer_in_both_syntaxes_waits_for_the_store() {
    let draft_mail = format!(
        "MAIL FROM=<origin.example> FINGERPRINT=[{}] SIZE={}\r\n",
        origin_fp(),
        BODY.len()
    );
    let draft_rcpt = format!("RCPT TO=<example.com> FINGERPRINT=[{}]\r\n", org_fp());
    for (m, r) in [(mail(BODY.len()), rcpt()), (draft_mail, draft_rcpt)] {
        let hash = hash_for(&m, &r);
        let message = [
            format!("EHLO <origin.example>\r\n{m}{r}DATA\r\n").as_bytes(),
            BODY,
            b"\r\n",
        ]
        .concat();
        let replay = check(
            "transfer",
            &[
                In(message),
                input("NOOP\r\n"),
                Stored("0000000000000001"),
                input("QUIT\r\n"),
            ],
            &format!(
                "{EHLO}250 OK\n250 OK\n354 CONTINUE [{hash}]\n[STORE origin.example example.com {}]\n\
                 250 OK [0000000000000001]\n250 OK\n221 BYE\n[CLOSE]\n",
                BODY.len()
            ),
        );
        let t = &replay.transfers[0];
        assert_eq!(t.body, BODY);
        assert_eq!(t.origin_fingerprint, origin_fp());
        assert_eq!(t.destination_fingerprint, Some(org_fp()));
        assert_eq!(t.commit, hash);
    }
}

#[test]
fn every_store_refusal_has_its_code() {
    let rows: &[(TransferRefusal, &str)] = &[
        (
            TransferRefusal::InvalidOriginSignet,
            "575 invalid origin signet",
        ),
        (
            TransferRefusal::InvalidOriginSignature,
            "578 invalid origin signature",
        ),
        (
            TransferRefusal::OriginSignetUnavailable,
            "470 origin signet temporarily unavailable, try again later",
        ),
        (
            TransferRefusal::OriginSignetMissing,
            "570 origin signet unavailable",
        ),
        (
            TransferRefusal::WrongDestinationSignet,
            "576 message is not sealed to our destination signet",
        ),
        (TransferRefusal::InvalidRecipient, "510 invalid recipient"),
        (
            TransferRefusal::Corrupted,
            "451 data corrupted: not a D/MIME message",
        ),
        (TransferRefusal::TooLarge, "552 message too large"),
        (
            TransferRefusal::StoreFull,
            "452 insufficient storage, try again later",
        ),
        (
            TransferRefusal::QueueFull,
            "431 destination limits exceeded: queue full, try again later",
        ),
        (
            TransferRefusal::StoreFailed,
            "451 local error in processing, try again later",
        ),
    ];
    let m = mail(3);
    let r = rcpt();
    let hash = hash_for(&m, &r);
    for &(refusal, line) in rows {
        assert_eq!(refusal.reply_code().number().to_string(), line[..3]);
        check(
            line,
            &[
                input(format!("EHLO o.example\r\n{m}{r}DATA\r\nabc\r\n")),
                Refused(refusal),
                input("NOOP\r\n"),
            ],
            &format!(
                "{EHLO}250 OK\n250 OK\n354 CONTINUE [{hash}]\n[STORE origin.example example.com 3]\n{line}\n250 OK\n"
            ),
        );
    }
}

#[test]
fn message_not_followed_by_crlf_is_451() {
    let m = mail(3);
    let r = rcpt();
    let hash = hash_for(&m, &r);
    check(
        "no crlf",
        &[input(format!(
            "EHLO o.example\r\n{m}{r}DATA\r\nabcdeNOOP\r\n"
        ))],
        &format!(
            "{EHLO}250 OK\n250 OK\n354 CONTINUE [{hash}]\n\
             451 data corrupted: the message must be followed by CRLF\n250 OK\n"
        ),
    );
}

#[test]
fn signet_lookups() {
    let org = org_chain();
    let users = user_chain();
    let b64 = |s: &Signet| s.to_base64_line();
    let (old_org, cur_org) = (org[0].crypto_fingerprint(), org[1].crypto_fingerprint());
    let (u0, u1, u2) = (
        users[0].crypto_fingerprint(),
        users[1].crypto_fingerprint(),
        users[2].crypto_fingerprint(),
    );
    let unknown = Fingerprint::of(b"nobody");
    let short = |f: &Fingerprint| format!("Some({:?})", &f.to_string()[..8]);
    check(
        "sgnt org before ehlo, current and by fingerprint",
        &[
            input("SGNT <example.com>\r\n"),
            Signets(org.clone()),
            input(format!(
                "SGNT DOMAIN=<example.com> FINGERPRINT=[{old_org}]\r\n"
            )),
            Signets(org.clone()),
            input(format!("SGNT <example.com> [{unknown}]\r\n")),
            Signets(org.clone()),
        ],
        &format!(
            "[LOOKUP example.com None]\n270 OK [{}]\n[LOOKUP example.com {}]\n270 OK [{}]\n\
             [LOOKUP example.com {}]\n576 example.com has no signet [{unknown}]\n",
            b64(&org[1]),
            short(&old_org),
            b64(&org[0]),
            short(&unknown),
        ),
    );
    check(
        "sgnt user, unknown name, unavailable, not served",
        &[
            input("SGNT <user@example.com>\r\n"),
            Signets(users.clone()),
            input(format!(
                "SGNT USER=<user@example.com> FINGERPRINT=[{unknown}]\r\n"
            )),
            Signets(users.clone()),
            input("SGNT <nobody@example.com>\r\n"),
            LookupFails(LookupFailure::UnknownName),
            input("SGNT <empty@example.com>\r\n"),
            Signets(Vec::new()),
            input("SGNT <user@example.com>\r\n"),
            LookupFails(LookupFailure::Unavailable),
            input("SGNT <user@elsewhere.example>\r\n"),
        ],
        &format!(
            "[LOOKUP user@example.com None]\n280 OK [{}]\n[LOOKUP user@example.com {}]\n\
             586 user@example.com has no signet [{unknown}]\n[LOOKUP nobody@example.com None]\n\
             510 no signet for nobody@example.com\n[LOOKUP empty@example.com None]\n\
             510 no signet for empty@example.com\n[LOOKUP user@example.com None]\n\
             476 signet temporarily unavailable, try again later\n\
             510 elsewhere.example is not a domain served here\n",
            b64(&users[2]),
            short(&unknown),
        ),
    );
    check(
        "vrfy",
        &[
            input(format!("VRFY <example.com> [{cur_org}]\r\n")),
            Signets(org.clone()),
            input(format!("VRFY <example.com> [{old_org}]\r\n")),
            Signets(org.clone()),
            input(format!(
                "VRFY USER=<user@example.com> FINGERPRINT=[{u2}]\r\n"
            )),
            Signets(users.clone()),
            input(format!("VRFY <user@example.com> [{u0}]\r\n")),
            Signets(users.clone()),
            input(format!("VRFY <user@example.com> [{unknown}]\r\n")),
            Signets(users.clone()),
        ],
        &format!(
            "[LOOKUP example.com {}]\n271 CURRENT\n[LOOKUP example.com {}]\n270 UPDATE {cur_org}\n\
             [LOOKUP user@example.com {}]\n281 CURRENT\n[LOOKUP user@example.com {}]\n280 UPDATE {u2}\n\
             [LOOKUP user@example.com {}]\n586 user@example.com has no signet [{unknown}]\n",
            short(&cur_org),
            short(&old_org),
            short(&u2),
            short(&u0),
            short(&unknown),
        ),
    );
    check(
        "hist",
        &[
            input("HIST <user@example.com>\r\n"),
            Signets(users.clone()),
            input(format!("HIST USER=<user@example.com> START=[{u1}]\r\n")),
            Signets(users.clone()),
            input(format!("HIST <user@example.com> [{u0}] [{u1}]\r\n")),
            Signets(users.clone()),
            input(format!("HIST <user@example.com> [{u2}] [{u0}]\r\n")),
            Signets(users.clone()),
            input(format!("HIST <user@example.com> [{unknown}]\r\n")),
            Signets(users.clone()),
        ],
        &format!(
            "[LOOKUP user@example.com None]\n290-[{}]\n290-[{}]\n290-[{}]\n290 OK\n\
             [LOOKUP user@example.com {}]\n290-[{}]\n290-[{}]\n290 OK\n\
             [LOOKUP user@example.com {}]\n290-[{}]\n290-[{}]\n290 OK\n\
             [LOOKUP user@example.com {}]\n501 the end of the range is older than its start\n\
             [LOOKUP user@example.com {}]\n586 user@example.com has no signet [{unknown}]\n",
            b64(&users[0]),
            b64(&users[1]),
            b64(&users[2]),
            short(&u1),
            b64(&users[1]),
            b64(&users[2]),
            short(&u0),
            b64(&users[0]),
            b64(&users[1]),
            short(&u2),
            short(&unknown),
        ),
    );
}

#[test]
fn lookup_mid_transaction_resumes_it() {
    let m = mail(2);
    let r = rcpt();
    let hash = hash_for(&m, &r);
    check(
        "sgnt between rcpt and data",
        &[
            input(format!(
                "EHLO o.example\r\n{m}{r}SGNT <example.com>\r\nDATA\r\nhi\r\n"
            )),
            Signets(org_chain()),
            Stored("7"),
        ],
        &format!(
            "{EHLO}250 OK\n250 OK\n[LOOKUP example.com None]\n270 OK [{}]\n354 CONTINUE [{hash}]\n\
             [STORE origin.example example.com 2]\n250 OK [7]\n",
            org_chain()[1].to_base64_line()
        ),
    );
}

#[test]
fn held_input_overflow_closes_after_the_answer() {
    let m = mail(2);
    let r = rcpt();
    let hash = hash_for(&m, &r);
    let flood = "NOOP\r\n".repeat(HELD_INPUT_MAX / 6 + 1);
    check(
        "flood while storing",
        &[
            input(format!("EHLO o.example\r\n{m}{r}DATA\r\nhi\r\n{flood}")),
            Stored("7"),
        ],
        &format!(
            "{EHLO}250 OK\n250 OK\n354 CONTINUE [{hash}]\n[STORE origin.example example.com 2]\n\
             250 OK [7]\n421 too much pipelined input\n[CLOSE]\n"
        ),
    );
}

#[test]
fn timeouts() {
    check(
        "command timeout",
        &[
            input("EHLO o.example\r\n"),
            Timeout(299),
            Timeout(300),
            input("NOOP\r\n"),
        ],
        &format!("{EHLO}421 timeout waiting for a command, closing\n[CLOSE]\n"),
    );
    let m = mail(5);
    let r = rcpt();
    let hash = hash_for(&m, &r);
    check(
        "data timeout",
        &[
            input(format!("EHLO o.example\r\n{m}{r}DATA\r\nab")),
            Timeout(179),
            Timeout(180),
        ],
        &format!(
            "{EHLO}250 OK\n250 OK\n354 CONTINUE [{hash}]\n421 timeout while reading the message, closing\n[CLOSE]\n"
        ),
    );
    check(
        "no timer while the glue works",
        &[
            input("SGNT <example.com>\r\n"),
            Timeout(10_000),
            LookupFails(LookupFailure::Unavailable),
        ],
        "[LOOKUP example.com None]\n476 signet temporarily unavailable, try again later\n",
    );
    let start = Instant::now();
    let mut session = ServerSession::new(policy(), limits(), start);
    assert_eq!(
        session.poll_timeout(),
        Some(start + Duration::from_secs(300))
    );
    let later = start + Duration::from_secs(100);
    session.handle_input(later, b"NO");
    assert_eq!(
        session.poll_timeout(),
        Some(later + Duration::from_secs(300))
    );
    session.handle_input(later, b"OP\r\nSGNT <example.com>\r\n");
    assert_eq!(session.poll_timeout(), None);
}

#[test]
fn too_many_errors_close() {
    let mut l = limits();
    l.max_errors = 3;
    check_with(
        "errors",
        l,
        &[input("FOO\r\nBAR\r\nNOOP\r\nBAZ\r\nNOOP\r\n")],
        "500 unknown command \"FOO\"\n500 unknown command \"BAR\"\n250 OK\n500 unknown command \"BAZ\"\n\
         421 too many errors, closing\n[CLOSE]\n",
    );
}

#[test]
fn shutdown_waits_for_the_message() {
    check(
        "idle",
        &[Shutdown],
        "421 dx.example.com shutting down\n[CLOSE]\n",
    );
    let m = mail(2);
    let r = rcpt();
    let hash = hash_for(&m, &r);
    check(
        "mid-message",
        &[
            input(format!("EHLO o.example\r\n{m}{r}DATA\r\nh")),
            Shutdown,
            input("i\r\n"),
            Stored("9"),
        ],
        &format!(
            "{EHLO}250 OK\n250 OK\n354 CONTINUE [{hash}]\n[STORE origin.example example.com 2]\n\
             250 OK [9]\n421 dx.example.com shutting down\n[CLOSE]\n"
        ),
    );
}

#[test]
fn dual_mode_upgrade_greets_with_ok_dmtpv1() {
    for &split in SPLITS {
        let replay = replay_with(
            limits(),
            &[input("EHLO o.example\r\nMODE\r\n")],
            split,
            true,
        );
        assert_eq!(replay.transcript, format!("{EHLO}250 OK DMTPv1\n"));
    }
}

#[test]
fn answers_nobody_asked_for_are_ignored() {
    let start = Instant::now();
    let mut session = ServerSession::new(policy(), limits(), start);
    while session.poll_output().is_some() {}
    session.handle_stored(Ok(TxId::parse("1").expect("txid")));
    session.handle_signet_answer(Ok(org_chain()));
    assert_eq!(session.poll_output(), None);
    assert!(
        !session.is_closed(),
        "a stray answer must not end the session"
    );
    session.handle_input(start, b"NOOP\r\n");
    assert_eq!(
        session.poll_output(),
        Some(Output::Reply(b"250 OK\r\n".to_vec()))
    );
}
