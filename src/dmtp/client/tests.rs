//! Scripted server transcripts for the client session, each fed whole and in pieces of 1, 2, 3,
//! 7 and 64 bytes.

use super::*;
use crate::dmtp::codec::Mailbox;

const SPLITS: &[usize] = &[usize::MAX, 1, 2, 3, 7, 64];
const BANNER: &[u8] = b"220 dx.dest.example DMTPv1 ready\r\n";
const EHLO_OK: &[u8] = b"250-dx.dest.example DMTPv1\r\n250 OK\r\n";
const MODE_OK: &[u8] = b"250 OK DMTPv1\r\n";

fn domain(s: &str) -> Domain {
    Domain::parse(s).expect("domain")
}

fn fp(seed: &str) -> Fingerprint {
    Fingerprint::of(seed.as_bytes())
}

fn delivery(message: &[u8]) -> Delivery {
    Delivery {
        origin: domain("origin.example"),
        origin_fingerprint: fp("origin"),
        destination: domain("dest.example"),
        destination_fingerprint: Some(fp("dest")),
        ret: None,
        data_type: None,
        message: message.to_vec(),
    }
}

enum Act {
    Server(Vec<u8>),
    Submit(Job),
    Quit,
    Tls,
    Closed,
    Timeout(u64),
}
use Act::*;

fn server(bytes: impl Into<Vec<u8>>) -> Act {
    Server(bytes.into())
}

fn ready() -> Act {
    Server([BANNER, EHLO_OK, MODE_OK].concat())
}

const READY: &str = "> EHLO <origin.example>\n> MODE\n[Ready]\n";

fn describe(event: &ClientEvent) -> String {
    match event {
        ClientEvent::Ready => "[Ready]".to_owned(),
        ClientEvent::Delivered { job, txid, commit } => {
            format!("[Delivered {} {txid:?} {commit}]", job.0)
        }
        ClientEvent::Signet { job, signet } => format!("[Signet {} {signet:?}]", job.0),
        ClientEvent::Verified { job, status } => format!("[Verified {} {status:?}]", job.0),
        ClientEvent::History { job, signets } => format!("[History {} {signets:?}]", job.0),
        ClientEvent::Failed { job, error } => format!(
            "[Failed {:?} {error} permanent={}]",
            job.map(|j| j.0),
            error.is_permanent()
        ),
    }
}

fn replay(new: &dyn Fn(Instant) -> ClientSession, acts: &[Act], split: usize) -> String {
    let start = Instant::now();
    let mut client = new(start);
    let mut transcript = String::new();
    let drain = |client: &mut ClientSession, transcript: &mut String| {
        while let Some(output) = client.poll_output() {
            match output {
                ClientOutput::Send(bytes) => {
                    let text = String::from_utf8_lossy(&bytes).replace("\r\n", "\n");
                    for line in text.lines() {
                        transcript.push_str(&format!("> {line}\n"));
                    }
                }
                ClientOutput::StartTls => transcript.push_str("[STARTTLS]\n"),
                ClientOutput::Event(event) => {
                    transcript.push_str(&describe(&event));
                    transcript.push('\n');
                }
                ClientOutput::Close => transcript.push_str("[CLOSE]\n"),
            }
        }
    };
    for act in acts {
        match act {
            Server(bytes) => {
                for chunk in bytes.chunks(split.min(bytes.len()).max(1)) {
                    client.handle_input(start, chunk);
                    drain(&mut client, &mut transcript);
                }
            }
            Submit(job) => {
                if let Err(error) = client.submit(start, job.clone()) {
                    transcript.push_str(&format!("[refused {error}]\n"));
                }
            }
            Quit => client.quit(start),
            Tls => client.handle_tls_established(start),
            Closed => client.handle_closed(),
            Timeout(secs) => client.handle_timeout(start + Duration::from_secs(*secs)),
        }
        drain(&mut client, &mut transcript);
        assert!(client.buffered_len() <= REPLY_LIMIT);
    }
    transcript
}

const REPLY_LIMIT: usize = crate::dmtp::codec::REPLY_MAX + crate::dmtp::codec::REPLY_LINE_MAX;

fn check_with(name: &str, new: &dyn Fn(Instant) -> ClientSession, acts: &[Act], expected: &str) {
    for &split in SPLITS {
        assert_eq!(
            replay(new, acts, split),
            expected,
            "row {name:?}, split {split}"
        );
    }
}

fn standard(now: Instant) -> ClientSession {
    ClientSession::new(ClientConfig::new(domain("origin.example")), now)
}

fn check(name: &str, acts: &[Act], expected: &str) {
    check_with(name, &standard, acts, expected);
}

#[test]
fn delivery_step_by_step() {
    let (o, d) = (fp("origin"), fp("dest"));
    check(
        "delivery and quit",
        &[
            Submit(Job::Deliver(delivery(b"\0sealed\r\n.\r\n"))),
            ready(),
            server("250 OK\r\n"),
            server("250 OK\r\n"),
            server("354 CONTINUE [abc]\r\n"),
            server("250 OK [q1]\r\n"),
            Quit,
            server("221 BYE\r\n"),
        ],
        &format!(
            "{READY}> MAIL FROM: <origin.example> [{o}] SIZE=12\n> RCPT TO: <dest.example> [{d}]\n\
             > DATA\n> \0sealed\n> .\n> \n[Delivered 1 Some(TxId(q1)) abc]\n> QUIT\n[CLOSE]\n"
        ),
    );
}

#[test]
fn banner_and_greeting_failures() {
    check(
        "banner without DMTPv1 (magma's stub)",
        &[server("220 dest.example DSMTP Magma\r\n")],
        "[Failed None banner: unexpected reply 220: banner does not announce DMTPv1 permanent=false]\n[CLOSE]\n",
    );
    check(
        "DMTPv1 as the host name does not count",
        &[server("220 DMTPv1\r\n")],
        "[Failed None banner: unexpected reply 220: banner does not announce DMTPv1 permanent=false]\n[CLOSE]\n",
    );
    check(
        "banner refused, queued job fails with it",
        &[
            Submit(Job::Deliver(delivery(b"m"))),
            server("554 go away\r\n"),
        ],
        "[Failed None banner: server replied 554 go away permanent=true]\n\
         [Failed Some(1) banner: server replied 554 go away permanent=true]\n[CLOSE]\n",
    );
    check(
        "banner 250 is the wrong code",
        &[server("250 dx DMTPv1\r\n")],
        "[Failed None banner: unexpected reply 250: wrong reply class for this step permanent=false]\n[CLOSE]\n",
    );
    check(
        "ehlo refused",
        &[server([BANNER, b"501 who are you\r\n"].concat())],
        "> EHLO <origin.example>\n[Failed None EHLO: server replied 501 who are you permanent=true]\n[CLOSE]\n",
    );
    check(
        "mode is not DMTPv1",
        &[server([BANNER, EHLO_OK, b"250 OK SMTP\r\n"].concat())],
        "> EHLO <origin.example>\n> MODE\n[Failed None MODE: unexpected reply 250: MODE is not DMTPv1 permanent=false]\n[CLOSE]\n",
    );
    check(
        "garbage instead of a reply",
        &[server("HTTP/1.1 400 Bad Request\r\n")],
        "[Failed None banner: reply line does not start with a reply code permanent=false]\n[CLOSE]\n",
    );
    check(
        "bare LF",
        &[server("220 dx DMTPv1\n")],
        "[Failed None banner: reply line must end with CRLF permanent=false]\n[CLOSE]\n",
    );
}

#[test]
fn transaction_refusals_reset_and_go_on() {
    let (o, d) = (fp("origin"), fp("dest"));
    let mail = format!("> MAIL FROM: <origin.example> [{o}] SIZE=1\n");
    let rcpt = format!("> RCPT TO: <dest.example> [{d}]\n");
    check(
        "mail refused: no RSET needed",
        &[
            ready(),
            Submit(Job::Deliver(delivery(b"m"))),
            server("552 too large\r\n"),
        ],
        &format!(
            "{READY}{mail}[Failed Some(1) MAIL: server replied 552 too large permanent=true]\n"
        ),
    );
    check(
        "rcpt refused: RSET, then the next job",
        &[
            ready(),
            Submit(Job::Deliver(delivery(b"m"))),
            Submit(Job::Lookup(Lookup::Sgnt {
                name: SignetName::Org(domain("dest.example")),
                fingerprint: None,
            })),
            server("250 OK\r\n576 stale signet\r\n250 OK\r\n"),
            server("270 OK [AAEC]\r\n"),
        ],
        &format!(
            "{READY}{mail}{rcpt}[Failed Some(1) RCPT: server replied 576 stale signet permanent=true]\n\
             > RSET\n> SGNT <dest.example>\n[Signet 2 [0, 1, 2]]\n"
        ),
    );
    check(
        "data answered 250: wrong class, RSET",
        &[
            ready(),
            Submit(Job::Deliver(delivery(b"m"))),
            server("250 OK\r\n250 OK\r\n250 OK\r\n250 OK\r\n"),
        ],
        &format!(
            "{READY}{mail}{rcpt}> DATA\n\
             [Failed Some(1) DATA: unexpected reply 250: wrong reply class for this step permanent=false]\n> RSET\n"
        ),
    );
    check(
        "354 without the hash",
        &[
            ready(),
            Submit(Job::Deliver(delivery(b"m"))),
            server("250 OK\r\n250 OK\r\n354 go ahead\r\n250 OK\r\n"),
        ],
        &format!(
            "{READY}{mail}{rcpt}> DATA\n\
             [Failed Some(1) DATA: unexpected reply 354: no CONTINUE [hash] permanent=false]\n> RSET\n"
        ),
    );
    check(
        "final refusal, temporary",
        &[
            ready(),
            Submit(Job::Deliver(delivery(b"m"))),
            server("250 OK\r\n250 OK\r\n354 CONTINUE [h]\r\n470 try later\r\n"),
        ],
        &format!(
            "{READY}{mail}{rcpt}> DATA\n> m\n\
             [Failed Some(1) message: server replied 470 try later permanent=false]\n"
        ),
    );
    check(
        "2xx with an unreadable txid still counts as delivered",
        &[
            ready(),
            Submit(Job::Deliver(delivery(b"m"))),
            server("250 OK\r\n250 OK\r\n354 CONTINUE [h]\r\n250 stored\r\n"),
        ],
        &format!("{READY}{mail}{rcpt}> DATA\n> m\n[Delivered 1 None h]\n"),
    );
    check(
        "RSET refused ends the session",
        &[
            ready(),
            Submit(Job::Deliver(delivery(b"m"))),
            server("250 OK\r\n510 no\r\n503 what\r\n"),
        ],
        &format!(
            "{READY}{mail}{rcpt}[Failed Some(1) RCPT: server replied 510 no permanent=true]\n> RSET\n\
             [Failed None RSET: server replied 503 what permanent=true]\n[CLOSE]\n"
        ),
    );
}

#[test]
fn lookup_replies() {
    let bob = SignetName::User(Mailbox::parse("bob@dest.example").expect("mailbox"));
    let new_fp = fp("new");
    let sgnt = |fingerprint| {
        Submit(Job::Lookup(Lookup::Sgnt {
            name: bob.clone(),
            fingerprint,
        }))
    };
    let vrfy = Submit(Job::Lookup(Lookup::Vrfy {
        name: bob.clone(),
        fingerprint: fp("old"),
    }));
    let hist = Submit(Job::Lookup(Lookup::Hist {
        name: bob.clone(),
        range: HistRange::All,
    }));
    check(
        "answers",
        &[
            ready(),
            sgnt(None),
            server("280 OK [AAEC]\r\n"),
            vrfy,
            server(format!("280 UPDATE {new_fp}\r\n")),
            Submit(Job::Lookup(Lookup::Vrfy {
                name: bob.clone(),
                fingerprint: new_fp,
            })),
            server("281 CURRENT\r\n"),
            hist,
            server("290-[AAEC]\r\n290-[AwQ=]\r\n290 OK\r\n"),
            Submit(Job::Lookup(Lookup::Vrfy {
                name: bob.clone(),
                fingerprint: new_fp,
            })),
            server(format!("280 UPDATE [{new_fp}]\r\n")),
        ],
        &format!(
            "{READY}> SGNT <bob@dest.example>\n[Signet 1 [0, 1, 2]]\n> VRFY <bob@dest.example> [{}]\n\
             [Verified 2 Update(Fingerprint({new_fp}))]\n> VRFY <bob@dest.example> [{new_fp}]\n[Verified 3 Current]\n\
             > HIST <bob@dest.example>\n[History 4 [[0, 1, 2], [3, 4]]]\n> VRFY <bob@dest.example> [{new_fp}]\n\
             [Verified 5 Update(Fingerprint({new_fp}))]\n",
            fp("old")
        ),
    );
    check(
        "malformed answers fail the job, not the session",
        &[
            ready(),
            sgnt(None),
            server("280 here it is\r\n"),
            sgnt(None),
            server("280 OK [not base64!]\r\n"),
            Submit(Job::Lookup(Lookup::Vrfy {
                name: bob.clone(),
                fingerprint: new_fp,
            })),
            server("281 MAYBE\r\n"),
            Submit(Job::Lookup(Lookup::Hist {
                name: bob.clone(),
                range: HistRange::All,
            })),
            server("290-[AAEC]\r\n290 DONE\r\n"),
            sgnt(Some(new_fp)),
            server("586 no such signet\r\n"),
        ],
        &format!(
            "{READY}> SGNT <bob@dest.example>\n[Failed Some(1) SGNT: unexpected reply 280: no OK [signet] permanent=false]\n\
             > SGNT <bob@dest.example>\n[Failed Some(2) SGNT: unexpected reply 280: signet is not base64 permanent=false]\n\
             > VRFY <bob@dest.example> [{new_fp}]\n[Failed Some(3) VRFY: unexpected reply 281: neither CURRENT nor UPDATE permanent=false]\n\
             > HIST <bob@dest.example>\n[Failed Some(4) HIST: unexpected reply 290: HIST reply does not end with OK permanent=false]\n\
             > SGNT <bob@dest.example> [{new_fp}]\n[Failed Some(5) SGNT: server replied 586 no such signet permanent=true]\n"
        ),
    );
}

#[test]
fn session_ends() {
    check(
        "421 mid-session fails everything as temporary",
        &[
            ready(),
            Submit(Job::Deliver(delivery(b"m"))),
            server("421 shutting down\r\n"),
        ],
        &format!(
            "{READY}> MAIL FROM: <origin.example> [{}] SIZE=1\n\
             [Failed None MAIL: server replied 421 shutting down permanent=false]\n\
             [Failed Some(1) MAIL: server replied 421 shutting down permanent=false]\n[CLOSE]\n",
            fp("origin")
        ),
    );
    check(
        "a reply nobody asked for",
        &[ready(), server("250 OK\r\n")],
        &format!(
            "{READY}[Failed None idle: unexpected reply 250: reply without a command permanent=false]\n[CLOSE]\n"
        ),
    );
    check(
        "timeouts: none while idle, then the banner's",
        &[Timeout(299), Timeout(300)],
        "[Failed None banner: no reply in time permanent=false]\n[CLOSE]\n",
    );
    check(
        "closed before the banner",
        &[Closed],
        "[Failed None connection closed during banner permanent=false]\n[CLOSE]\n",
    );
    check(
        "submit after the end",
        &[Closed, Submit(Job::Deliver(delivery(b"m")))],
        "[Failed None connection closed during banner permanent=false]\n[CLOSE]\n\
         [refused the session has ended]\n",
    );
    check(
        "quit when idle, then EOF",
        &[ready(), Quit, Closed],
        &format!("{READY}> QUIT\n[CLOSE]\n"),
    );
    let start = Instant::now();
    let mut client = standard(start);
    client.handle_input(start, [BANNER, EHLO_OK, MODE_OK].concat().as_slice());
    assert!(client.is_idle());
    assert_eq!(client.poll_timeout(), None, "no timer while idle");
}

#[test]
fn dual_mode_sequence() {
    let dual = |now| {
        ClientSession::new_dual_mode(
            ClientConfig::new(domain("origin.example")),
            domain("dx.dest.example"),
            now,
        )
    };
    check_with(
        "dual mode",
        &dual,
        &[
            server("220 mx.dest.example ESMTP Postfix\r\n"),
            server("220-2.0.0 Ready\r\n220 start TLS\r\n"),
            // Sent before the handshake: never read.
            server("250 OK DMTPv1\r\n"),
            Tls,
            server([b"250 OK DMTPv1\r\n".as_slice(), EHLO_OK, MODE_OK].concat()),
        ],
        "> STARTTLS <dx.dest.example> MODE=DMTPv1\n[STARTTLS]\n> EHLO <origin.example>\n> MODE\n[Ready]\n",
    );
    check_with(
        "dual mode refused",
        &dual,
        &[server("220 mx ESMTP\r\n"), server("502 not here\r\n")],
        "> STARTTLS <dx.dest.example> MODE=DMTPv1\n\
         [Failed None STARTTLS: server replied 502 not here permanent=true]\n[CLOSE]\n",
    );
    check_with(
        "no OK DMTPv1 after TLS",
        &dual,
        &[
            server("220 mx ESMTP\r\n"),
            server("220 go\r\n"),
            Tls,
            server("250 OK SMTP\r\n"),
        ],
        "> STARTTLS <dx.dest.example> MODE=DMTPv1\n[STARTTLS]\n\
         [Failed None dual-mode greeting: unexpected reply 250: no OK DMTPv1 after TLS permanent=false]\n[CLOSE]\n",
    );
}

#[test]
fn check_reply_is_the_one_class_table() {
    let reply = |n| Reply::new(ReplyCode::from_number(n).expect("code"), "x");
    assert!(check_reply(Step::Banner, &reply(220)).is_ok());
    assert!(check_reply(Step::Banner, &reply(221)).is_err());
    assert!(check_reply(Step::Data, &reply(354)).is_ok());
    assert!(check_reply(Step::Data, &reply(250)).is_err());
    for step in [
        Step::Ehlo,
        Step::Mode,
        Step::Mail,
        Step::Rcpt,
        Step::Message,
        Step::Sgnt,
        Step::Vrfy,
        Step::Hist,
        Step::Reset,
    ] {
        assert!(check_reply(step, &reply(250)).is_ok(), "{step}");
        assert!(check_reply(step, &reply(354)).is_err(), "{step}");
        assert!(
            !check_reply(step, &reply(451))
                .expect_err("4xx")
                .is_permanent()
        );
        assert!(
            check_reply(step, &reply(550))
                .expect_err("5xx")
                .is_permanent()
        );
    }
}
