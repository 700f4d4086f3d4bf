//! Drives `deliver::client::ClientSession` with arbitrary server bytes in arbitrary splits and
//! arbitrary glue events (transactions, TLS results, timeouts, a closed connection).
//!
//! Asserts: no panic; buffered bytes stay bounded; the message is asked for (`SendMessage`) only
//! right after `DATA` was written and never more often than the server sent a final `354` line,
//! and nothing is written after it until the transaction's result; nothing is output after
//! `Close`; and the conversation is the same whether server input arrives whole or in the
//! fuzzed split.
//!
//! Input layout: a first byte picks LMTP and the TLS policy, then a stream of ops. Op byte `% 8`:
//! 0-3 feed server bytes (a length byte, then that many source bytes mapped partly onto reply
//! tokens, then a split byte), 4 start a transaction (a byte picks recipients and options),
//! 5 TLS established or failed, 6 a timeout (a byte says how far the clock moves) or, rarely, a
//! closed connection, 7 RSET or QUIT.
#![no_main]

use dimegate::deliver::TlsPolicy;
use dimegate::deliver::client::{
    ClientSession, Output, Peer, SessionConfig, Timeouts, TransactionResult,
};
use dimegate::envelope::{Envelope, Notify, Recipient};
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, Instant};

/// Reply lines and pieces that get the fuzzer into every state quickly.
const TOKENS: &[&[u8]] = &[
    b"220 mx ESMTP\r\n",
    b"250-mx\r\n",
    b"250-PIPELINING\r\n",
    b"250-STARTTLS\r\n",
    b"250-DSN\r\n",
    b"250-SIZE 100\r\n",
    b"250-8BITMIME\r\n",
    b"250 SMTPUTF8\r\n",
    b"250 ok\r\n",
    b"250 2.1.5 ok\r\n",
    b"354 go ahead\r\n",
    b"354-go\r\n",
    b"220 2.0.0 ready for TLS\r\n",
    b"421 4.3.2 closing\r\n",
    b"450 4.2.0 busy\r\n",
    b"451 4.3.0 later\r\n",
    b"452 4.2.2 full\r\n",
    b"500 what\r\n",
    b"502 5.5.2 no EHLO\r\n",
    b"503 5.5.1 bad sequence\r\n",
    b"550 5.1.1 no such user\r\n",
    b"554 5.7.1 go away\r\n",
    b"221 bye\r\n",
    b"\r\n",
    b"\n",
    b"\r",
    b"-",
    b" ",
    b"250",
    b"354",
    b"5.1.1 ",
];

/// The reply parser's bounds (`MAX_LINE` + `MAX_REPLY` in `deliver/reply.rs`).
const MAX_BUFFERED: usize = 4096 + 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let mut bytes = data.iter().copied();
    let first = bytes.next().unwrap_or(0);
    let config = SessionConfig {
        peer: Peer {
            host: "mx.test".to_owned(),
            mta: "mx.test[192.0.2.1]:25".to_owned(),
        },
        helo_name: "gw.test".to_owned(),
        lmtp: first & 1 == 1,
        tls: match (first >> 1) % 3 {
            0 => TlsPolicy::Disabled,
            1 => TlsPolicy::Opportunistic,
            _ => TlsPolicy::Required,
        },
        try_tls: first & 8 == 0,
        relay: true,
        timeouts: Timeouts {
            greeting: Duration::from_secs(300),
            command: Duration::from_secs(60),
            data: Duration::from_secs(600),
        },
    };
    let start = Instant::now();
    let mut clock = start;
    let mut whole = Driver::new(ClientSession::new(config.clone(), start));
    let mut split = Driver::new(ClientSession::new(config, start));
    let mut finals_354 = LineCounter::default();

    while let Some(op) = bytes.next() {
        match op % 8 {
            0..=3 => {
                let count = usize::from(bytes.next().unwrap_or(0));
                let mut input = Vec::new();
                for b in bytes.by_ref().take(count) {
                    match TOKENS.get(usize::from(b)) {
                        Some(token) => input.extend_from_slice(token),
                        None => input.push(b),
                    }
                }
                let size = usize::from(bytes.next().unwrap_or(0)).max(1);
                finals_354.feed(&input);
                whole.session.handle_input(&input, clock);
                whole.drain(finals_354.count);
                for chunk in input.chunks(size) {
                    split.session.handle_input(chunk, clock);
                    split.drain(finals_354.count);
                }
            }
            4 => {
                let pick = bytes.next().unwrap_or(0);
                let recipients: Vec<Recipient> = (0..=(pick % 4))
                    .map(|i| Recipient {
                        address: if pick & 0x40 != 0 && i == 1 {
                            "bad>\r\nDATA@x".to_owned()
                        } else {
                            format!("r{i}@example.net")
                        },
                        notify: (pick & 0x10 != 0).then(|| Notify {
                            success: true,
                            ..Notify::default()
                        }),
                        orcpt: None,
                    })
                    .collect();
                let envelope = Envelope {
                    sender: "a@example.org".to_owned(),
                    recipients: recipients.clone(),
                    dsn_ret: None,
                    dsn_envid: None,
                    body_8bit: pick & 0x20 != 0,
                    smtputf8: pick & 0x80 != 0,
                    helo: "client".to_owned(),
                    client: "192.0.2.7:40000".parse().expect("literal address"),
                    tls: None,
                    auth_user: None,
                    arrival_unix: 0,
                    require_tls: false,
                    dime: None,
                };
                let refs: Vec<&Recipient> = recipients.iter().collect();
                let len = usize::from(pick % 8) * 30;
                for d in [&mut whole, &mut split] {
                    let result = d.session.start_transaction(&envelope, &refs, len, clock);
                    d.transcript
                        .extend_from_slice(format!("[start {:?}]", result.is_ok()).as_bytes());
                }
            }
            5 => {
                let ok = bytes.next().unwrap_or(0) & 1 == 1;
                for d in [&mut whole, &mut split] {
                    if ok {
                        d.session.handle_tls_established(clock);
                    } else {
                        d.session.handle_tls_failed("handshake failed");
                    }
                }
            }
            6 => {
                let step = bytes.next().unwrap_or(0);
                if step == 0xFF {
                    for d in [&mut whole, &mut split] {
                        d.session.handle_closed(None);
                    }
                } else {
                    clock += Duration::from_secs(u64::from(step) * 5);
                    for d in [&mut whole, &mut split] {
                        d.session.handle_timeout(clock);
                    }
                }
            }
            _ => {
                let quit = bytes.next().unwrap_or(0) & 1 == 1;
                for d in [&mut whole, &mut split] {
                    if quit {
                        d.session.quit(clock);
                    } else {
                        let result = d.session.reset(clock);
                        d.transcript
                            .extend_from_slice(format!("[reset {:?}]", result.is_ok()).as_bytes());
                    }
                }
            }
        }
        for d in [&mut whole, &mut split] {
            d.drain(finals_354.count);
            assert!(
                d.session.buffered_len() <= MAX_BUFFERED,
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

/// Counts final `354` reply lines in the server's bytes, independently of the session's parser.
#[derive(Default)]
struct LineCounter {
    line: Vec<u8>,
    count: usize,
}

impl LineCounter {
    fn feed(&mut self, input: &[u8]) {
        for &b in input {
            if b == b'\n' {
                let line = self.line.strip_suffix(b"\r").unwrap_or(&self.line);
                if line.starts_with(b"354") && matches!(line.get(3), None | Some(b' ')) {
                    self.count += 1;
                }
                self.line.clear();
            } else if self.line.len() < 8 {
                self.line.push(b);
            }
        }
    }
}

/// One session plus what the glue has seen of it.
struct Driver {
    session: ClientSession,
    closed: bool,
    last_write: Vec<u8>,
    messages_sent: usize,
    /// `SendMessage` was output and the transaction's result has not come yet.
    in_message: bool,
    transcript: Vec<u8>,
}

impl Driver {
    fn new(session: ClientSession) -> Driver {
        Driver {
            session,
            closed: false,
            last_write: Vec::new(),
            messages_sent: 0,
            in_message: false,
            transcript: Vec::new(),
        }
    }

    fn drain(&mut self, finals_354: usize) {
        while let Some(output) = self.session.poll_output() {
            assert!(!self.closed, "output after Close: {output:?}");
            match output {
                Output::Send(bytes) => {
                    assert!(!self.in_message, "a command written after the message: {bytes:?}");
                    assert!(bytes.ends_with(b"\r\n"));
                    self.transcript.extend_from_slice(&bytes);
                    self.last_write = bytes;
                }
                Output::SendMessage => {
                    assert_eq!(self.last_write, b"DATA\r\n", "the message only after DATA");
                    self.messages_sent += 1;
                    assert!(
                        self.messages_sent <= finals_354,
                        "the message without a 354 for it"
                    );
                    self.in_message = true;
                    self.last_write = b"<message>".to_vec();
                    self.transcript.extend_from_slice(b"[message]");
                }
                Output::Finished(result) => {
                    self.in_message = false;
                    let outcomes = match &result {
                        TransactionResult::Done { outcomes, .. } => outcomes.len(),
                        TransactionResult::HopFailed { .. } => 0,
                    };
                    self.transcript
                        .extend_from_slice(format!("[finished {outcomes} {result:?}]").as_bytes());
                }
                Output::Close => {
                    self.closed = true;
                    self.transcript.extend_from_slice(b"[close]");
                }
                other => self
                    .transcript
                    .extend_from_slice(format!("[{other:?}]").as_bytes()),
            }
        }
    }
}
