//! Drives `smtp::Session` with arbitrary bytes in arbitrary splits and arbitrary glue answers.
//!
//! Asserts: no panic; buffered bytes stay bounded; while an `Enqueue` is unanswered nothing is
//! sent (so no `250` can precede durable storage); nothing is output after `Close`; and the
//! conversation is the same whether client input arrives whole or in the fuzzed split.
//!
//! Input layout: a stream of ops. Op byte `% 8`: 0-3 feed client bytes (a length byte, then that
//! many source bytes mapped partly onto SMTP tokens, then a split byte), 4 answer AUTH, 5 answer
//! the store, 6 TLS established, 7 time: the next byte 0xFF is a shutdown (so it stays rare),
//! 0x80..=0xFE toggles back-pressure, below 0x80 advances the fake clock by that many seconds
//! and calls `handle_timeout`.
#![no_main]

use dimegate::envelope::QueueId;
use dimegate::smtp::session::HELD_INPUT_MAX;
use dimegate::queue::Pressure;
use dimegate::smtp::{AuthResult, Limits, Output, Policy, Session, StoreFailure};
use std::time::{Duration, Instant};
use libfuzzer_sys::fuzz_target;

/// Tokens that get the fuzzer past verbs and parameters quickly.
const TOKENS: &[&[u8]] = &[
    b"EHLO c\r\n",
    b"HELO c\r\n",
    b"MAIL FROM:<a@remote.test>",
    b"MAIL FROM:<>",
    b"RCPT TO:<b@example.org>",
    b"RCPT TO:<b@remote.test>",
    b"RCPT TO:<Postmaster>",
    b"DATA\r\n",
    b"BDAT ",
    b" LAST",
    b"\r\n",
    b".\r\n",
    b"\r\n.\r\n",
    b"\n.\n",
    b"AUTH PLAIN ",
    b"AUTH LOGIN",
    b"AGFsaWNlAHNlY3JldA==",
    b"YWxpY2U=",
    b"STARTTLS\r\n",
    b"RSET\r\n",
    b"QUIT\r\n",
    b"NOOP\r\n",
    b" SIZE=",
    b" BODY=BINARYMIME",
    b" BODY=8BITMIME",
    b" SMTPUTF8",
    b" RET=HDRS ENVID=x+2B",
    b" NOTIFY=SUCCESS,DELAY ORCPT=rfc822;a+40b",
    b"\n",
    b"\r",
    b"\0",
    b"*",
    b"=",
    b" ",
    b"<",
    b">",
    b"@",
    b":",
    b"0",
    b"1",
    b"5",
    b"10",
    b"64",
    b"100",
    b"\xc3\xa9",
    b"\xff",
];

const MAX_MESSAGE: usize = 64;

fuzz_target!(|data: &[u8]| {
    let policy = Policy {
        hostname: "mx.example.org".to_owned(),
        served_domains: vec!["example.org".to_owned()],
        relay_allowed: data.first().is_some_and(|b| b & 1 == 1),
        tls_available: true,
        auth_available: true,
        dmtp_dual_mode: data.first().is_some_and(|b| b & 2 == 2),
    };
    let limits = Limits {
        max_message_size: MAX_MESSAGE,
        max_recipients: 3,
        max_errors: 30,
        max_line: 512,
        recipient_overshoot: 5,
        idle_timeout: Duration::from_secs(300),
        session_timeout: Duration::from_secs(1800),
        shutdown_grace: Duration::from_secs(10),
    };
    let mut now = Instant::now();
    let mut pressed = false;
    let client = "192.0.2.1:25".parse().expect("literal address");
    // Two sessions get the same ops; one reads each client input whole, the other in the fuzzed
    // split. Their transcripts must match: the machine may not depend on how reads fall.
    let mut whole = Driver::new(Session::new(
        policy.clone(),
        limits.clone(),
        client,
        now,
        0,
    ));
    let mut split = Driver::new(Session::new(policy, limits, client, now, 0));
    let mut bytes = data.iter().copied();

    while let Some(op) = bytes.next() {
        match op % 8 {
            0..=3 => {
                let count = usize::from(bytes.next().unwrap_or(0));
                let mut input = Vec::new();
                for b in bytes.by_ref().take(count) {
                    if usize::from(b) < TOKENS.len() {
                        input.extend_from_slice(TOKENS[usize::from(b)]);
                    } else {
                        input.push(b);
                    }
                }
                let size = usize::from(bytes.next().unwrap_or(0)).max(1);
                // The glue never reads zero bytes as input (EOF closes); an empty read would
                // restart the whole side's idle timer and not the split side's.
                if input.is_empty() {
                    continue;
                }
                whole.session.handle_input(now, &input);
                whole.drain();
                for chunk in input.chunks(size) {
                    split.session.handle_input(now, chunk);
                    split.drain();
                }
            }
            4 => {
                let pick = bytes.next().unwrap_or(0) % 3;
                for d in [&mut whole, &mut split] {
                    d.session.handle_auth_result(
                        now,
                        match pick {
                            0 => AuthResult::Authenticated("alice".to_owned()),
                            1 => AuthResult::Invalid,
                            _ => AuthResult::Throttled,
                        },
                    );
                }
            }
            5 => {
                let pick = bytes.next().unwrap_or(0) % 3;
                for d in [&mut whole, &mut split] {
                    d.session.handle_stored(now, match pick {
                        0 => Ok(QueueId(1)),
                        1 => Err(StoreFailure::Full),
                        _ => Err(StoreFailure::Failed),
                    });
                    d.awaiting_store = false;
                }
            }
            6 => {
                for d in [&mut whole, &mut split] {
                    d.session.handle_tls_established(now, "TLSv1.3".to_owned());
                }
            }
            _ => match bytes.next() {
                Some(0xFF) => {
                    for d in [&mut whole, &mut split] {
                        d.session.handle_shutdown(now);
                    }
                }
                Some(0x80..=0xFE) => {
                    pressed = !pressed;
                    let pressure = pressed.then_some(Pressure::QueueFull {
                        messages: 1,
                        max: 1,
                    });
                    for d in [&mut whole, &mut split] {
                        d.session.handle_pressure(pressure);
                    }
                }
                Some(secs) => {
                    now += Duration::from_secs(u64::from(secs));
                    for d in [&mut whole, &mut split] {
                        d.session.handle_timeout(now);
                    }
                }
                None => {}
            },
        }
        for d in [&mut whole, &mut split] {
            d.drain();
            assert!(
                d.session.buffered_len() <= MAX_MESSAGE + 2 + 12288 + HELD_INPUT_MAX,
                "buffered {}",
                d.session.buffered_len()
            );
        }
        assert_eq!(
            whole.transcript, split.transcript,
            "split changed the conversation"
        );
    }
});

/// One session plus what the glue has seen of it.
struct Driver {
    session: Session,
    awaiting_store: bool,
    closed: bool,
    /// Replies and events in order (replies byte for byte, events as markers).
    transcript: Vec<u8>,
}

impl Driver {
    fn new(session: Session) -> Driver {
        let mut driver = Driver {
            session,
            awaiting_store: false,
            closed: false,
            transcript: Vec::new(),
        };
        driver.drain();
        driver
    }

    fn drain(&mut self) {
        while let Some(output) = self.session.poll_output() {
            assert!(!self.closed, "output after Close: {output:?}");
            match output {
                Output::Send(bytes) => {
                    assert!(!self.awaiting_store, "reply while a message awaits storage");
                    assert!(bytes.ends_with(b"\r\n"));
                    self.transcript.extend_from_slice(&bytes);
                }
                Output::Enqueue { envelope, body } => {
                    assert!(body.len() <= MAX_MESSAGE);
                    self.awaiting_store = true;
                    self.transcript
                        .extend_from_slice(format!("[enqueue {envelope:?} {body:?}]").as_bytes());
                }
                Output::Close(_) => {
                    self.closed = true;
                    self.transcript.extend_from_slice(b"[close]");
                }
                Output::StartTls => self.transcript.extend_from_slice(b"[starttls]"),
                Output::UpgradeToDmtp { host } => {
                    // The connection belongs to DMTP now: nothing more from this session.
                    self.closed = true;
                    self.transcript
                        .extend_from_slice(format!("[dmtp {host}]").as_bytes());
                }
                Output::Authenticate { username, password } => self
                    .transcript
                    .extend_from_slice(format!("[auth {username:?} {password:?}]").as_bytes()),
            }
        }
        assert_eq!(self.closed, self.session.is_closed());
    }
}
